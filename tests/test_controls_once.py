"""A model-independent control (Sobel) is explained once per run, not once per model state (issue 12)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_quantus.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quantus_controls", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sobel_is_explained_once_across_the_cascade_and_random_logit(bench, tmp_path, monkeypatch):
    from sanitycheck.explainers.controls import SobelEdges
    from sanitycheck.explainers.gradients import Gradient

    calls = {"sobel": 0, "gradient": 0}
    for cls, key in ((SobelEdges, "sobel"), (Gradient, "gradient")):
        real = cls.attribute

        def counted(self, *a, _real=real, _key=key, **k):
            calls[_key] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(cls, "attribute", counted)
    w = bench.Workload(n=8)
    results = bench.run_sanitycheck_audit(w, ["cascading_randomization"], ["gradient", "sobel"], tmp_path / "r")
    states = len(results["checks"]["cascading_randomization"]["steps"])
    assert states == w.n_layers == 4
    assert calls["gradient"] == 1 + states, "the model's explainer runs in the trained state and every step"
    assert calls["sobel"] == 1, "a control is computed once per run, whatever the number of model states"
