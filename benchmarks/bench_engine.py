"""The engine end to end, per built-in suite at a small n, against its floor: the explainer calls the suite needs.

Each round runs the suite into a fresh ``--out`` (no cache hits) on the shipped reference weights, figures off.
The floor is the time spent inside the explainers' batched calls in the same round (every map of every model
state; the forward/backward passes the audit cannot avoid); ``extra_info`` records it and the ratio
``total / floor`` — the engine's own overhead (planning, scoring, bootstrap, results) is the rest.
Run: ``make bench`` or ``python -m pytest benchmarks/bench_engine.py --benchmark-enable``.

The same file runs against the engine before issue 11 (it patches whichever explainer hook exists), which is how
the before/after figures in the closing note were measured.
"""

import time

import pytest

from sanitycheck.engine import run_suite

CASES = {
    "adebayo2018": dict(n=32),
    "petsiuk2018": dict(n=16),
    "jain_wallace2019": dict(n=16, checks=["cascading_randomization", "importance_agreement"]),
    "clip_text2img": dict(n=8),
    "faithfulness": dict(n=16, checks=["smooth_mprt", "max_sensitivity", "road"]),
    "wiegreffe_pinter2019": dict(n=200),
    "jain_wallace2019_minilm": dict(n=8, checks=["cascading_randomization", "importance_agreement"]),
}


def _patch_explainer_calls(monkeypatch, spent):
    """Time every batched explainer call, whichever engine is installed."""
    def timed(real):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                spent.append(time.perf_counter() - t0)
        return wrapper

    try:
        from sanitycheck.engine import run as engine_run

        monkeypatch.setattr(engine_run, "explain_maps", timed(engine_run.explain_maps))
    except (ImportError, AttributeError):  # the engine before issue 11: two run classes
        from sanitycheck import runner, text_runner

        monkeypatch.setattr(runner, "explain_batched", timed(runner.explain_batched))
        monkeypatch.setattr(text_runner.TextAuditRun, "explain", timed(text_runner.TextAuditRun.explain))


@pytest.mark.parametrize("suite", list(CASES))
def test_suite_against_its_floor(benchmark, monkeypatch, tmp_path, suite):
    spent, rounds = [], iter(range(10 ** 6))

    def run():
        spent.clear()
        return run_suite(suite, out=tmp_path / f"r{next(rounds)}", progress=False, figures=False, **CASES[suite])

    _patch_explainer_calls(monkeypatch, spent)
    run()  # warm-up: datasets, weights and imports loaded once, outside the timed rounds
    results = benchmark.pedantic(run, rounds=2, iterations=1)
    floor = sum(spent)
    benchmark.extra_info.update(floor_seconds=round(floor, 3), explainer_calls=len(spent),
                                ratio_to_floor=round(benchmark.stats.stats.mean / floor, 2) if floor else None)
    assert results["records"], "the suite produced no records"
