"""Wall time of each registered explainer: 128 images of 1x28x28, a LeNet-like CNN, CPU.

Run: ``python -m pytest benchmarks/bench_explainers.py --benchmark-enable -q``
(without ``--benchmark-enable`` each explainer runs once, as a smoke test).
"""

from __future__ import annotations

import pytest
import torch
from sanitycheck.explainers import get_explainer
from sanitycheck.models.zoo import build
from sanitycheck.registry import EXPLAINERS


@pytest.fixture(scope="module")
def lenet_batch():
    model = build("fmnist_cnn", seed=0).eval()  # untrained: timing does not depend on the weights
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (128,), generator=g)
    return model, x, y


@pytest.mark.parametrize("name", [n for n in EXPLAINERS.names()  # CLIP explainers: bench_clip.py
                                  if getattr(EXPLAINERS.get(n), "input_kind", "image") == "image"])
def test_explainer_speed(benchmark, name, lenet_batch):
    model, x, y = lenet_batch
    explainer = get_explainer(name)
    benchmark.group = "explainers: 128 x 1x28x28, LeNet, CPU"
    benchmark.extra_info["config"] = explainer.config()
    maps = benchmark.pedantic(explainer, args=(model, x, y), rounds=3, iterations=1, warmup_rounds=1)
    assert maps.shape == (128, 28, 28)
