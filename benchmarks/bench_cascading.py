"""Cascading randomization check: explanations of every model state + all four metrics, 128 images.

Untrained ``fmnist_cnn`` architecture (the timing does not depend on the weights), real digit images
upsampled to 28x28. Run: ``make bench`` or
``python -m pytest benchmarks/bench_cascading.py --benchmark-enable``.
"""

import sys
from pathlib import Path

import pytest

from sanitycheck.data import ImageDataset
from sanitycheck.models.zoo import build
from sanitycheck.runner import AuditRun
from sanitycheck.suites import parse_suite

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import digits_batch  # noqa: E402


def _suite(explainers):
    return parse_suite({
        "name": "bench", "version": "0.0.1", "description": "benchmark",
        "dataset": {"name": "digits"}, "model": {"name": "fmnist_cnn"},
        "explainers": explainers, "metrics": ["spearman_abs", "spearman", "ssim", "hog"], "batch_size": 128,
        "checks": [{"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}}],
    })


@pytest.fixture(scope="module")
def inputs():
    model = build("fmnist_cnn", seed=0).eval()  # untrained: timing does not depend on the weights
    x, y = digits_batch(128, size=28)
    return model, ImageDataset("digits28", x, y, [str(i) for i in range(10)], "sklearn", "bench")


@pytest.mark.parametrize("explainers", [["gradient"], ["guided_backprop"], ["gradcam"],
                                        [{"smoothgrad": {"n_samples": 50}}],
                                        [{"integrated_gradients": {"n_steps": 50}}]],
                         ids=lambda e: e[0] if isinstance(e[0], str) else next(iter(e[0])))
def test_cascading_check_128_images(benchmark, inputs, tmp_path, explainers):
    model, dataset = inputs
    counter = iter(range(10 ** 6))

    def run():
        out = tmp_path / f"run{next(counter)}"  # fresh directory: no cache hits
        return AuditRun(_suite(explainers), out_dir=out, model=model, dataset=dataset, n=128, progress=False,
                        figures=False).execute()

    results = benchmark.pedantic(run, rounds=3, iterations=1)
    assert results["checks"]["cascading_randomization"]["steps"] == ["fc2", "fc1", "conv2", "conv1"]
