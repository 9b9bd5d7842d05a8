"""Wall time of the similarity metrics and of the bootstrap, CPU.

Maps: 128 of 28x28 (Fashion-MNIST size) and 16 of 224x224 (ImageNet size), float32,
the second batch a noisy copy of the first (as a randomized model's maps would be).

Run: ``python -m pytest benchmarks/bench_metrics.py --benchmark-enable -q``
(without ``--benchmark-enable`` each case runs once, as a smoke test).
"""

from __future__ import annotations

import pytest
import torch

from sanitycheck.metrics.similarity import SIMILARITY_METRICS
from sanitycheck.stats import bootstrap_ci_many


def _maps(b: int, size: int):
    g = torch.Generator().manual_seed(size)
    a = torch.randn(b, size, size, generator=g)
    return a, a + torch.randn(b, size, size, generator=g)


CASES = {"128x28x28": (128, 28), "16x224x224": (16, 224)}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("m", SIMILARITY_METRICS, ids=lambda m: m.name)
def test_metric(benchmark, m, case):
    a, b = _maps(*CASES[case])
    out = benchmark(m, a, b)
    assert out.shape == (a.shape[0],) and torch.isfinite(out).all()


def test_bootstrap_many(benchmark):
    """40 (explainer, step) rows of 128 scores, 2000 resamples, a few undefined."""
    v = torch.rand(40, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v[::7, :5] = float("nan")
    out = benchmark(bootstrap_ci_many, v, seed_parts=(0, "bench"))
    assert len(out) == 40
