"""Model evaluations per second of the perturbation explainers (RISE, Score-CAM, occlusion; issue 14) against
the bare batched forward pass measured in the same run.

Two settings: 128 images of 1x28x28 on the Fashion-MNIST CNN (``fmnist_cnn``, untrained: timing does not depend
on the weights) and 2 photos at 3x224x224 on EfficientNet-Lite0 (random init; the package photos of
scikit-image, random images where they are not available). Per case, ``extra_info`` holds the model
evaluations of one call (``evaluations``: images x ``evaluations_per_map``), the explainer's evaluations per
second (``evals_per_s``), the floor's (``floor_evals_per_s``: best of 5 no-grad forward passes of a batch of the
explainer's ``max_batch`` / ``batch_size`` inputs) and their ratio (``of_floor``; the issue asks for 0.9 or more),
and the share of the call's time spent inside the model's forward passes (``forward_share``, from forward hooks:
unlike ``of_floor`` it does not move when another process takes the CPU between the floor and the call).

Run: ``python -m pytest benchmarks/bench_perturbation.py --benchmark-enable -q -s``
(without ``--benchmark-enable`` each case runs once, as a smoke test; the numbers are printed either way).
"""

from __future__ import annotations

import time

import pytest
import torch

from sanitycheck.explainers import get_explainer

FMNIST = [
    ("rise", {"n_samples": 500, "max_batch": 256}),
    ("score_cam", {"max_batch": 256}),
    ("occlusion", {"window": 4, "batch_size": 256}),
]
EFFNET = [
    ("rise", {"n_samples": 48, "max_batch": 16}),
    ("score_cam", {"max_channels": 48, "max_batch": 16}),
    ("occlusion", {"window": 32, "batch_size": 16}),
]


def forward_floor(model, x, batch: int, repeats: int = 5) -> float:
    """Evaluations per second of a bare no-grad forward pass of ``batch`` inputs (best of ``repeats`` after a
    warm-up: the machine is shared, the minimum is the cost)."""
    big = x.repeat((batch + x.shape[0] - 1) // x.shape[0], *([1] * (x.ndim - 1)))[:batch].contiguous()
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            model(big)
            times.append(time.perf_counter() - t0)
    return batch / min(times[1:])


def evaluations(explainer, model, x) -> int:
    epm = explainer.evaluations_per_map
    try:
        per_map = epm(tuple(x.shape), model)
    except TypeError:  # RISE: the count does not depend on the model
        per_map = epm(tuple(x.shape))
    return x.shape[0] * per_map


def run_case(benchmark, name, params, model, x, y, group):
    explainer = get_explainer(name, **params)
    batch = params.get("max_batch", params.get("batch_size"))
    floor = forward_floor(model, x, batch)
    n_eval = evaluations(explainer, model, x)
    benchmark.group = group
    inside = [0.0, 0.0]  # time inside the model's forward passes: robust to a shared, busy machine
    pre = model.register_forward_pre_hook(lambda *_: inside.__setitem__(1, time.perf_counter()))
    post = model.register_forward_hook(lambda *_: inside.__setitem__(0, inside[0] + time.perf_counter() - inside[1]))
    try:
        t0 = time.perf_counter()
        maps = benchmark.pedantic(explainer, args=(model, x, y), rounds=1, iterations=1, warmup_rounds=0)
        seconds = time.perf_counter() - t0
    finally:
        pre.remove()
        post.remove()
    info = {"config": explainer.config(), "batch": batch, "evaluations": n_eval, "seconds": seconds,
            "evals_per_s": n_eval / seconds, "floor_evals_per_s": floor, "of_floor": n_eval / seconds / floor,
            "forward_share": inside[0] / seconds}
    benchmark.extra_info.update(info)
    print(f"\n{group} | {name} {params}: {n_eval} evaluations in {seconds:.2f} s = {n_eval / seconds:.0f}/s; "
          f"floor {floor:.0f}/s (batch {batch}); {info['of_floor']:.2f} of the floor; "
          f"{info['forward_share']:.2f} of the time in the model's forward")
    assert maps.shape == (x.shape[0], *x.shape[2:]) and torch.isfinite(maps).all()


@pytest.fixture(scope="module")
def lenet_batch():
    from sanitycheck.models.zoo import build

    model = build("fmnist_cnn", seed=0).eval()
    g = torch.Generator().manual_seed(0)
    return model, torch.rand(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)


@pytest.fixture(scope="module")
def effnet_photos():
    from sanitycheck.models.efficientnet_lite import efficientnet_lite0

    model = efficientnet_lite0(weights=None, seed=0)
    try:
        from sanitycheck.data import load_dataset

        x = load_dataset("photos", sources=["scikit-image"]).images[:2].contiguous()
    except Exception:  # noqa: BLE001 - timing does not depend on the pixels
        x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return model, x, torch.tensor([1, 2])


@pytest.mark.parametrize("name,params", FMNIST, ids=[n for n, _ in FMNIST])
def test_perturbation_fmnist(benchmark, name, params, lenet_batch):
    model, x, y = lenet_batch
    run_case(benchmark, name, params, model, x, y, "perturbation: 128 x 1x28x28, fmnist_cnn, CPU")


@pytest.mark.parametrize("name,params", EFFNET, ids=[n for n, _ in EFFNET])
def test_perturbation_effnet(benchmark, name, params, effnet_photos):
    model, x, y = effnet_photos
    run_case(benchmark, name, params, model, x, y, "perturbation: 2 photos x 3x224x224, EfficientNet-Lite0, CPU")
