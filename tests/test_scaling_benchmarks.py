"""benchmarks/scaling_estimate.py (the README's "Scaling on paper") and benchmarks/bench_memory.py (peak RSS at
large N): the arithmetic is reproducible and the memory benchmark measures a real run."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_scaling_estimate_adds_up():
    est = load("scaling_estimate")
    doc = est.estimate(dict(est.MEASURED_DEFAULT))
    per_image = sum(v["fwd_bwd"] + est.FWD_FRACTION * v["fwd_only"] for v in doc["passes_per_image"].values())
    assert doc["fwd_bwd_equivalent_passes_per_image"] == round(per_image)
    hours = per_image * est.N_IMAGES / est.H100_IMG_PER_S / 3600
    assert doc["gpu_hours_1xH100"] == pytest.approx(hours, abs=0.1)
    assert sum(doc["gpu_hours_1xH100_by_suite"].values()) == pytest.approx(hours, abs=0.5)
    assert doc["wall_hours_8xH100_ray"] == pytest.approx(hours / (8 * est.RAY_EFFICIENCY), abs=0.1)
    # one map of every explainer: 1+1+50+50+50+1+1+2 fwd+bwd passes (sobel and noise need no model)
    assert doc["passes_per_image"]["original maps (all suites share them)"]["fwd_bwd"] == 156
    cascade = doc["passes_per_image"]["adebayo2018/cascading_randomization"]["fwd_bwd"]
    assert cascade == est.MEASURED_DEFAULT["states"] * 156
    mem = doc["memory_per_worker"]
    assert mem["gpu_gib_for_256_rows"] < mem["gpu_gib_for_2048_rows (IG/SmoothGrad chunk)"]


def test_the_memory_benchmark_measures_a_run(tmp_path):
    bench = load("bench_memory")
    out = bench.measure("adebayo2018", 8, ["gradient"], ["cascading_randomization"], None)
    assert out["n"] == 8 and out["checks"] == ["cascading_randomization"]
    assert out["peak_rss_mb"] >= out["rss_before_run_mb"] > 0
    assert out["resources"]["batch_size"]["source"] == "suite"
