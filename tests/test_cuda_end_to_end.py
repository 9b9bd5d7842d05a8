"""`--device cuda` end to end (issue 12, deliverable 5). These run only where torch can use a CUDA GPU; elsewhere
they skip with the reason (the CPU path is covered by every other test, and a cuda request without a GPU is a
clear error before any work: tests/test_resources.py)."""

import json

import pytest
import torch

from sanitycheck.cli import main
from sanitycheck.validation import schema_problems

NO_GPU = not torch.cuda.is_available()
pytestmark = pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")


def run(tmp_path, device, *extra):
    out = tmp_path / device.replace(":", "_")
    code = main(["run", "adebayo2018", "--device", device, "--n", "8", "--explainers", "gradient,gradcam,sobel",
                 "--out", str(out), "--no-progress", "--no-figures", *extra])
    assert code in (0, 1)  # 1: a verdict failed (sobel fails by design), not a crash
    return json.loads((out / "results.json").read_text())


def test_cuda_runs_the_default_suite_end_to_end_and_matches_the_cpu(tmp_path):
    gpu = run(tmp_path, "cuda")
    assert schema_problems(gpu) == []
    assert gpu["resources"]["gpu_peak_mb"] > 0  # the model and inputs were on the GPU
    cpu = run(tmp_path, "cpu")
    assert [(v["explainer"], v["check"]) for v in gpu["verdicts"]] == \
        [(v["explainer"], v["check"]) for v in cpu["verdicts"]]
    # maps come back to the CPU for caching and scoring; GPU kernels differ in rounding, not in substance
    for e in ("gradient", "gradcam", "sobel"):
        g = gpu["per_sample"][e]["cascading_randomization"]
        c = cpu["per_sample"][e]["cascading_randomization"]
        assert g.keys() == c.keys()
        for step in g:
            a = torch.tensor([x if x is not None else float("nan") for x in g[step]["spearman_abs"]])
            b = torch.tensor([x if x is not None else float("nan") for x in c[step]["spearman_abs"]])
            assert torch.allclose(a, b, atol=0.05, equal_nan=True), (e, step)


def test_cuda_auto_batch_size_reads_the_gpu_free_memory(tmp_path):
    doc = run(tmp_path, "cuda", "--batch-size", "auto", "--checks", "cascading_randomization")
    choice = doc["resources"]["batch_size"]
    assert choice["source"] == "auto" and choice["value"] >= 1 and "cuda" in choice["why"]
