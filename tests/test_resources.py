"""The memory a run used (results.json's ``resources`` block) and the device check before any work (issue 12)."""

import json

import pytest
import torch

from helpers import digits_batch, make_tiny_cnn
from sanitycheck import devices
from sanitycheck.cli import main
from sanitycheck.data import ImageDataset
from sanitycheck.errors import ConfigError
from sanitycheck.explainers import get_explainer
from sanitycheck.results import split_by_explainer
from sanitycheck.runner import AuditRun
from sanitycheck.suites import parse_suite
from sanitycheck.validation import schema_problems

NO_GPU = not torch.cuda.is_available()


def tiny_suite():
    return parse_suite({
        "name": "unit", "version": "0.0.1", "description": "resources unit tests",
        "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 2,
        "explainers": ["gradient", "sobel"], "metrics": ["spearman_abs", "ssim"],
        "checks": [{"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}}],
    })


@pytest.fixture
def results(tmp_path):
    x, y = digits_batch(8)
    dataset = ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")
    objects = {"gradient": get_explainer("gradient"), "sobel": get_explainer("sobel")}
    return AuditRun(tiny_suite(), out_dir=tmp_path / "out", model=make_tiny_cnn(0), dataset=dataset,
                    explainer_objects=objects, progress=False, figures=False).execute()


def test_a_run_records_its_memory_in_results_json(results, tmp_path):
    res = results["resources"]
    assert res["peak_rss_mb"] >= res["rss_at_end_mb"] > 0
    assert res["rss_at_start_mb"] > 0
    assert "gpu_peak_mb" not in res  # a CPU run says nothing about GPU memory
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["resources"] == res


def test_the_schema_accepts_the_resources_block_and_refuses_a_malformed_one(results):
    assert schema_problems(results) == []
    bad = dict(results, resources={"peak_rss_mb": -1})
    assert any("resources" in p for p in schema_problems(bad))
    missing = dict(results, resources={"rss_at_end_mb": 3.0})
    assert any("peak_rss_mb" in p for p in schema_problems(missing))


def test_leaderboard_files_do_not_carry_the_machine_dependent_resources(results):
    docs = split_by_explainer(results)
    assert set(docs) == {"gradient", "sobel"}
    assert all("resources" not in d for d in docs.values())
    assert all(schema_problems(d) == [] for d in docs.values())


def test_rss_readings_are_positive_and_the_peak_bounds_them():
    now = devices.rss_mb()
    assert now is not None and now > 0
    assert devices.peak_rss_mb() >= now * 0.99  # ru_maxrss (KiB) vs statm pages: same memory, other rounding


@pytest.mark.skipif(not NO_GPU, reason="this test is about a machine without a GPU; one is present")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cuda_without_a_gpu_fails_in_the_cli_before_loading_anything(device, monkeypatch, tmp_path, capsys):
    def must_not_run(*a, **k):
        raise AssertionError("data, models or explainers were loaded before the device was checked")

    monkeypatch.setattr(AuditRun, "load_inputs", must_not_run)
    monkeypatch.setattr("sanitycheck.explainers.get_explainer", must_not_run)
    code = main(["run", "adebayo2018", "--device", device, "--n", "8", "--out", str(tmp_path / "out"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"device '{device}'" in err
    assert "torch.cuda.is_available() = False" in err and "torch.cuda.device_count() = 0" in err
    assert "--device cpu" in err  # what to do
    assert not (tmp_path / "out").exists()


def test_a_gpu_index_beyond_the_gpus_present_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"'cuda:3' asked for, but only 1 CUDA device exists .*cuda:N with N < 1"):
        devices.check_device("cuda:3")
    assert devices.check_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("device, message", [("gpu", "is not a torch device"), ("meta", "holds no data")])
def test_devices_torch_cannot_use_are_config_errors(device, message):
    with pytest.raises(ConfigError, match=message):
        devices.check_device(device)


def test_cpu_is_unchanged():
    assert devices.check_device("cpu") == torch.device("cpu")
    assert devices.check_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_a_cuda_run_records_its_gpu_peak(tmp_path):
    x, y = digits_batch(8)
    dataset = ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")
    objects = {"gradient": get_explainer("gradient"), "sobel": get_explainer("sobel")}
    res = AuditRun(tiny_suite(), out_dir=tmp_path / "out", model=make_tiny_cnn(0).cuda(), dataset=dataset,
                   explainer_objects=objects, progress=False, figures=False, device="cuda").execute()["resources"]
    assert res["gpu_peak_mb"] > 0


def _four_metric_run(tmp_path, name):
    x, y = digits_batch(24)
    dataset = ImageDataset("digits24", x, y, [str(i) for i in range(10)], "sklearn", "test")
    suite = parse_suite({
        "name": "unit", "version": "0.0.1", "description": "scoring in chunks", "dataset": {"name": "digits"},
        "model": {"name": "digits_cnn"}, "batch_size": 24, "figure_images": 2,
        "explainers": ["gradient", "gradcam", "sobel"], "metrics": ["spearman_abs", "spearman", "ssim", "hog"],
        "checks": [{"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}}],
    })
    objects = {e: get_explainer(e) for e in ("gradient", "gradcam", "sobel")}
    return AuditRun(suite, out_dir=tmp_path / name, model=make_tiny_cnn(0), dataset=dataset,
                    explainer_objects=objects, progress=False, figures=False).execute()


def test_scoring_in_chunks_of_rows_changes_no_score(tmp_path, monkeypatch):
    """Maps stream through the metrics a chunk of rows at a time (bounded memory at N = 10,000): every metric is
    per row, so the per-sample scores, records and verdicts are bit-identical to scoring all rows at once."""
    from sanitycheck.engine import run as engine_run

    from sanitycheck.modalities.base import Modality

    whole = _four_metric_run(tmp_path, "whole")
    rows_seen = []
    compare = Modality.compare

    def spy(self, metric, reference, other, inputs, rows=slice(None)):
        rows_seen.append(reference.shape[0])
        return compare(self, metric, reference, other, inputs, rows=rows)

    monkeypatch.setattr(Modality, "compare", spy)
    monkeypatch.setattr(engine_run, "SCORE_CHUNK_ROWS", 5)  # 24 rows -> chunks of 5, 5, 5, 5, 4
    chunked = _four_metric_run(tmp_path, "chunked")
    assert rows_seen and max(rows_seen) == 5 and 4 in rows_seen
    assert chunked["per_sample"] == whole["per_sample"]
    strip = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]  # noqa: E731
    assert strip(chunked["records"]) == strip(whole["records"]) and chunked["verdicts"] == whole["verdicts"]
