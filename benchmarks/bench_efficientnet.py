"""Wall time of each image explainer on EfficientNet-Lite0 (issue 13): 4 images of 3x224x224, CPU.

The floor, a batched forward+backward of the same 4 images timed in the same run, is in ``extra_info``
(``floor_fwd_bwd_s``; the gradient w.r.t. the input only, as the explainers take it), beside the per-image
seconds of the explainer (``s_per_image``) and their ratio (``x_floor``). The parameters are the smallest
sensible ones (SmoothGrad/VarGrad 10 samples, IG 16 steps, occlusion 32-pixel windows), each also with small
chunks (``_chunked``), which on a CPU at 224x224 run 2-3x faster per image than the default large batches.

Run: ``python -m pytest benchmarks/bench_efficientnet.py --benchmark-enable -q``
(without ``--benchmark-enable`` each explainer runs once, as a smoke test).
"""

from __future__ import annotations

import time

import pytest
import torch

from sanitycheck.explainers import get_explainer
from sanitycheck.models.efficientnet_lite import efficientnet_lite0

N = 4
PARAMS = {
    "gradient": {},
    "gradient_x_input": {},
    "smoothgrad": {"n_samples": 10},
    "vargrad": {"n_samples": 10},
    "integrated_gradients": {"n_steps": 16},
    "guided_backprop": {},
    "gradcam": {},
    "guided_gradcam": {},
    "occlusion": {"window": 32, "batch_size": 64},
    "sobel": {},
    "noise": {},
}
# the same with small chunks: at 224x224 on a CPU, batches of 40-64 images run 2-3x slower per image than batches
# of 8-16 (cache), so the suites should set these
CHUNKED = {
    "smoothgrad": {"n_samples": 10, "max_batch": 8},
    "vargrad": {"n_samples": 10, "max_batch": 8},
    "integrated_gradients": {"n_steps": 16, "internal_batch_size": 16},
    "occlusion": {"window": 32, "batch_size": 16},
}
CASES = [(n, p) for n, p in PARAMS.items()] + [(n, p) for n, p in CHUNKED.items()]


@pytest.fixture(scope="module")
def effnet_batch():
    model = efficientnet_lite0(weights=None, seed=0)  # random init: timing does not depend on the weights
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, 3, 224, 224, generator=g)
    y = torch.randint(0, 1000, (N,), generator=g)
    times = []
    for _ in range(6):  # the floor: one batched forward + backward of the target logits
        xi = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        torch.autograd.grad(model(xi).gather(1, y[:, None]).sum(), xi)  # input gradient only, as explainers do
        times.append(time.perf_counter() - t0)
    floor = min(times[1:])  # best of 5 after a warm-up (the machine is shared: the minimum is the cost)
    return model, x, y, floor


@pytest.mark.parametrize("name,params", CASES, ids=[n + ("_chunked" if i >= len(PARAMS) else "")
                                                     for i, (n, _) in enumerate(CASES)])
def test_explainer_speed_effnet(benchmark, name, params, effnet_batch):
    model, x, y, floor = effnet_batch
    explainer = get_explainer(name, **params)
    benchmark.group = f"explainers: {N} x 3x224x224, EfficientNet-Lite0, CPU"
    benchmark.extra_info["config"] = explainer.config()
    benchmark.extra_info["floor_fwd_bwd_s"] = floor
    benchmark.extra_info["floor_s_per_image"] = floor / N
    t0 = time.perf_counter()
    maps = benchmark.pedantic(explainer, args=(model, x, y), rounds=2, iterations=1, warmup_rounds=0)
    per_call = (time.perf_counter() - t0) / 2
    benchmark.extra_info["s_per_image"] = per_call / N
    benchmark.extra_info["x_floor"] = per_call / floor
    print(f"\n{name} {params}: {per_call / N:.3f} s/image, {per_call / floor:.1f}x the floor ({floor / N:.3f} s/image)")
    assert maps.shape == (N, 224, 224)
    assert torch.isfinite(maps).all()
