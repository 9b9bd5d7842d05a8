"""Wall time of deletion and insertion (28 steps) on 256 images of 1x28x28, LeNet (``fmnist_cnn``,
untrained: timing does not depend on the weights), gradient maps, CPU.

Three numbers per family, measured in the same process (best of ``REPEATS``):

* ``batched``: :class:`~sanitycheck.metrics.curves.Deletion` / ``Insertion`` ``.evaluate``;
* ``floor``: the model's forward alone over the same 256 * 29 perturbed inputs, pre-built, in the
  same chunks (the CPU default of 128 states, and 4096) — no curve can be faster than this;
* ``per_image_loop``: the RISE reference style, one image at a time and one state at a time
  (pixels copied in place step by step, one forward per state);
* ``per_image_batched``: one image at a time, its 29 states in one forward (a stronger baseline).
  Both loops run on the first 32 images and are scaled by 256 / 32 (their time is linear in images).

Batched and floor runs are interleaved (best of 5) so that load from other processes hits them
alike. Ratios go to ``benchmark.extra_info``: ``batched_over_floor`` (target <= 1.5) and
``loop_over_batched`` (target >= 5).

Run: ``python -m pytest benchmarks/bench_curves.py --benchmark-enable -q -s``
(without ``--benchmark-enable`` each case runs once, as a smoke test; the ratios are measured anyway).
"""

from __future__ import annotations

import time

import pytest
import torch

from sanitycheck.metrics.curves import (
    Deletion,
    Insertion,
    default_batch_size,
    make_substrate,
    relevance_order,
    step_counts,
)
from sanitycheck.models.zoo import build

N_IMAGES, N_STEPS, REPEATS = 256, 28, 5
#: the per-image loops run on the first LOOP_IMAGES images and are scaled to N_IMAGES (linear in images)
LOOP_IMAGES = 32


@pytest.fixture(scope="module")
def setup():
    model = build("fmnist_cnn", seed=0).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N_IMAGES, 1, 28, 28, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    xg = x.clone().requires_grad_(True)
    model(xg).gather(1, y[:, None]).sum().backward()
    maps = xg.grad.abs()[:, 0].detach()  # gradient (saliency) maps
    return model, x, y, maps


def _best(fn, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _best_interleaved(fns, repeats=REPEATS):
    """Best time of each function, the runs interleaved so load drifts hit them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[j] = min(best[j], time.perf_counter() - t0)
    return best


def _states(family, x, maps, seed=0):
    """All (B * (S + 1)) perturbed inputs, pre-built, for the forward-pass floor."""
    b, c, h, w = x.shape
    idx, _, _ = relevance_order(maps, x, family.order, (seed, family.name))
    rank = torch.empty_like(idx).scatter_(1, idx, torch.arange(h * w).expand(b, h * w))
    counts = step_counts(h * w, family.n_steps, family.pixels_per_step)
    mask = (rank[:, None, :] < counts[None, :, None]).view(b, -1, 1, h, w)
    sub = make_substrate(x, family.substrate, family.blur_kernel, family.blur_sigma)
    fill, base = (sub, x) if family.mode == "delete" else (x, sub)
    return torch.where(mask, fill[:, None], base[:, None]).reshape(-1, c, h, w)


def _floor(model, states, batch_size):
    with torch.no_grad():
        for i in range(0, states.shape[0], batch_size):
            model(states[i : i + batch_size]).softmax(1)


def _per_image_loop(model, family, x, y, maps):
    """RISE's single_run per image: one forward per state, pixels copied step by step."""
    b, c, h, w = x.shape
    counts = step_counts(h * w, family.n_steps, family.pixels_per_step).tolist()
    sub = make_substrate(x, family.substrate, family.blur_kernel, family.blur_sigma)
    out = torch.empty(b, len(counts))
    with torch.no_grad():
        for i in range(b):
            order = maps[i].reshape(-1).argsort(descending=True)
            start, finish = (x[i].clone(), sub[i]) if family.mode == "delete" else (sub[i].clone(), x[i])
            start, finish = start.reshape(c, -1), finish.reshape(c, -1)
            for k in range(len(counts)):
                out[i, k] = model(start.reshape(1, c, h, w)).softmax(1)[0, y[i]]
                if k + 1 < len(counts):
                    coords = order[counts[k] : counts[k + 1]]
                    start[:, coords] = finish[:, coords]
    return out


def _per_image_batched(model, family, x, y, maps):
    """One image at a time, its S + 1 states in one forward."""
    with torch.no_grad():
        return torch.stack([
            model(_states(family, x[i : i + 1], maps[i : i + 1])).softmax(1)[:, y[i]] for i in range(x.shape[0])
        ])  # fmt: skip


@pytest.mark.parametrize("family_cls", [Deletion, Insertion], ids=["deletion", "insertion"])
def test_curve_speed(benchmark, family_cls, setup):
    model, x, y, maps = setup
    family = family_cls(n_steps=N_STEPS)
    big = family_cls(n_steps=N_STEPS, batch_size=4096)
    bs = default_batch_size(torch.device("cpu"))
    benchmark.group = f"curves: {N_IMAGES} x 1x28x28, {N_STEPS} steps, LeNet, CPU"

    def run():
        return family.evaluate(model, x, y, maps, seed=0)

    ev = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert ev.curve.shape == (N_IMAGES, N_STEPS + 1)

    states = _states(family, x, maps)
    assert states.shape[0] == N_IMAGES * (N_STEPS + 1)
    t_batched, t_floor, t_big, t_floor_big = _best_interleaved([
        run,
        lambda: _floor(model, states, bs),
        lambda: big.evaluate(model, x, y, maps, seed=0),
        lambda: _floor(model, states, 4096),
    ])  # fmt: skip
    scale = N_IMAGES / LOOP_IMAGES
    xs, ys, ms = x[:LOOP_IMAGES], y[:LOOP_IMAGES], maps[:LOOP_IMAGES]
    t_loop = scale * _best(lambda: _per_image_loop(model, family, xs, ys, ms), repeats=2)
    t_img = scale * _best(lambda: _per_image_batched(model, family, xs, ys, ms), repeats=2)

    info = {
        "batch_size": bs,
        "batched_s": round(t_batched, 4),
        "floor_s": round(t_floor, 4),
        "batched_4096_s": round(t_big, 4),
        "floor_4096_s": round(t_floor_big, 4),
        "per_image_loop_s": round(t_loop, 3),
        "per_image_batched_s": round(t_img, 3),
        "batched_over_floor": round(t_batched / t_floor, 3),
        "batched_over_floor_4096": round(t_big / t_floor_big, 3),
        "loop_over_batched": round(t_loop / t_batched, 2),
        "per_image_batched_over_batched": round(t_img / t_batched, 2),
        "threads": torch.get_num_threads(),
    }
    benchmark.extra_info.update(info)
    print(f"\n{family.name}: {info}")
