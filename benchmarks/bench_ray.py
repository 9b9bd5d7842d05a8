"""The Ray executor against the local one (issue 12): units per second, and the floor.

Workload: suite adebayo2018 at n = 32 (shipped ``fmnist_cnn`` weights), 3 explainers (gradient, integrated
gradients with the suite's 50 steps, guided backprop), the cascading and independent randomization checks,
16 rows per unit; each round into a fresh ``--out`` (no cache hits), figures off. A second case,
``test_ray_against_local_on_deletion``, times evaluation units on the workers: petsiuk2018's deletion (28 steps)
at n = 256 with 4 explainers.

* ``local``: the local executor with 2 torch threads;
* ``ray``: a local Ray cluster of 2 workers x 1 torch thread (``--executor ray --workers 2``). Ray's start-up
  (the cluster, once per process) is outside the timed round, as in a long-lived service; each round starts
  its two actors and ships the inputs and model states, which is inside.

The floor is the time the local executor spends inside the explainers' batched calls (every map of every
model state: the forward/backward passes the audit cannot avoid), measured in the same round as in
``bench_engine.py``; ``extra_info`` has ``units``, ``units_per_s``, ``floor_seconds`` and ``ratio_to_floor``.
Run: ``python -m pytest benchmarks/bench_ray.py --benchmark-enable -q`` (needs ``pip install 'sanitycheck[ray]'``;
without ``--benchmark-enable`` it runs once, as a smoke test).
"""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from sanitycheck.engine import run_suite

ray = pytest.importorskip("ray", reason="the Ray benchmark needs ray (pip install 'sanitycheck[ray]')")

CASE = dict(n=32, explainers=["gradient", "integrated_gradients", "guided_backprop"],
            checks=["cascading_randomization", "independent_randomization"], shard_size=16)
FLOOR = {}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _timed_explain_calls(monkeypatch, spent):
    from sanitycheck.engine import run as engine_run

    real = engine_run.explain_maps

    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            spent.append(time.perf_counter() - t0)

    monkeypatch.setattr(engine_run, "explain_maps", wrapper)


def _units(out) -> int:
    return sum(1 for _ in (out / "cache" / "units").rglob("*.pt"))


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_ray_against_local(benchmark, monkeypatch, tmp_path, cluster, executor):
    rounds = itertools.count()
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if executor == "local" else 1)
    options = {"executor": executor}
    if executor == "ray":
        options["executor_options"] = {"workers": 2, "threads": 1}
    spent: list = []
    if executor == "local":
        _timed_explain_calls(monkeypatch, spent)

    def run():
        spent.clear()
        out = tmp_path / f"r{next(rounds)}"
        return out, run_suite("adebayo2018", out=out, progress=False, figures=False, **CASE, **options)

    try:
        run_suite("adebayo2018", out=tmp_path / "warm", progress=False, figures=False,
                  **{**CASE, "n": 4}, **options)  # data, weights, imports and (ray) worker processes warmed
        out, results = benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
    seconds = benchmark.stats.stats.mean if benchmark.stats is not None else float("nan")
    units = _units(out)
    if executor == "local":
        FLOOR["seconds"] = sum(spent)
    floor = FLOOR.get("seconds")
    benchmark.extra_info.update(executor=executor, units=units, seconds=round(seconds, 3),
                                units_per_s=round(units / seconds, 3), workers=2 if executor == "ray" else 1,
                                threads_per_worker=1 if executor == "ray" else 2,
                                floor_seconds=round(floor, 3) if floor else None,
                                ratio_to_floor=round(seconds / floor, 2) if floor else None)
    print(f"\n{executor}: {units} units in {seconds:.2f} s = {units / seconds:.2f} units/s; floor (local explainer "
          f"calls, 2 threads) {floor:.2f} s; ratio {seconds / floor:.2f}" if floor else "")
    assert results["verdicts"] and units > 0


#: evaluation units on the workers: a deletion run (petsiuk2018's 28 steps of 28 pixels), one unit per explainer
DELETION = dict(n=256, explainers=["gradient", "gradient_x_input", "gradcam", "sobel"], checks=["deletion"])


@pytest.mark.parametrize("executor,threads", [("local", 2), ("local", 1), ("ray", 1)],
                         ids=["local-2-threads", "local-1-thread", "ray-2x1"])
def test_ray_against_local_on_deletion(benchmark, tmp_path, cluster, executor, threads):
    """Deletion curves scored on the workers (``--executor ray --workers 2 --worker-threads 1``) against the
    local executor with 2 threads (and with 1, which a loaded 2-core machine favours); ``extra_info`` has the
    check's own seconds (``deletion_seconds``: dispatch, transfers and the workers' forwards) and the maps
    scored per second."""
    rounds = itertools.count()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    options = {"executor": executor}
    if executor == "ray":
        options["executor_options"] = {"workers": 2, "threads": 1}

    def run():
        out = tmp_path / f"r{next(rounds)}"
        return run_suite("petsiuk2018", out=out, progress=False, figures=False, **DELETION, **options)

    try:
        run_suite("petsiuk2018", out=tmp_path / "warm", progress=False, figures=False,
                  **{**DELETION, "n": 4}, **options)  # data, weights, imports and (ray) worker processes warmed
        results = benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        torch.set_num_threads(saved)
    seconds = benchmark.stats.stats.mean if benchmark.stats is not None else float("nan")
    check_s = results["timing"]["deletion_seconds"]
    maps = DELETION["n"] * len(DELETION["explainers"])
    benchmark.extra_info.update(executor=executor, threads=threads, seconds=round(seconds, 3), deletion_seconds=round(check_s, 3),
                                maps_scored_per_s=round(maps / check_s, 1))
    where = "2 workers x 1 thread" if executor == "ray" else f"{threads} thread(s)"
    print(f"\n{executor} ({where}): run {seconds:.2f} s; deletion {check_s:.2f} s = {maps / check_s:.0f} maps/s")
    assert any(r["check"] == "deletion" for r in results["records"])
