"""End to end: the CLI on a tiny zoo model (digits CNN) and 16 real images, all checks and explainers."""

import json
import re
import struct

import pytest
import yaml

from sanitycheck.cli import main
from sanitycheck.registry import EXPLAINERS

LAYERS = None  # filled from results


def tiny_suite(tmp_path, **overrides):
    data = {
        "name": "tiny", "version": "0.0.1", "description": "end-to-end test suite",
        "seed": 0, "batch_size": 8, "figure_images": 2,
        "dataset": {"name": "digits", "split": "test", "n": 16},
        "model": {"name": "digits_cnn"},
        "explainers": ["gradient", "gradient_x_input", {"smoothgrad": {"n_samples": 4}},
                       {"vargrad": {"n_samples": 4}}, {"integrated_gradients": {"n_steps": 8}},
                       "guided_backprop", "gradcam", "guided_gradcam", "sobel", "noise"],
        "metrics": ["spearman_abs", "spearman", "ssim", "hog"],
        "checks": [
            {"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}},
            {"name": "independent_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}},
            {"name": "data_randomization",
             "verdict": {"metric": "spearman_abs", "threshold": 0.5, "rule": "final_step"}},
        ],
    }
    data.update(overrides)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    mp = pytest.MonkeyPatch()
    mp.setenv("SANITYCHECK_CACHE", str(tmp / "cache"))
    suite = tiny_suite(tmp)
    out = tmp / "out"
    code = main(["run", str(suite), "--out", str(out), "--no-progress"])
    yield code, out, suite, mp
    mp.undo()


def test_run_writes_results_in_the_documented_schema(tiny_run):
    code, out, suite, _ = tiny_run
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    for key in ("schema_version", "suite", "suite_version", "model", "dataset", "seed", "versions", "git_hash",
                "records", "verdicts", "explainers"):
        assert key in res
    assert res["suite"] == "tiny" and res["dataset"]["n"] == 16 and res["seed"] == 0
    assert res["versions"]["torch"].startswith("2.")
    names = {r["explainer"] for r in res["records"]}
    listed = {e if isinstance(e, str) else next(iter(e)) for e in yaml.safe_load(suite.read_text())["explainers"]}
    assert names == listed and listed <= set(EXPLAINERS.names())  # every explainer of the suite (CLIP ones excluded)
    checks = {r["check"] for r in res["records"]}
    assert checks == {"cascading_randomization", "independent_randomization", "data_randomization"}
    steps = {r["step"] for r in res["records"] if r["check"] == "data_randomization"}
    assert steps == {"original", "random_labels"}
    for r in res["records"]:
        assert set(r) >= {"explainer", "check", "metric", "step", "mean", "ci_low", "ci_high", "n"}
        assert r["n"] + r["n_undefined"] == 16
        if r["mean"] is None:
            assert r["n"] == 0 and r["undefined_reason"]
        else:
            assert r["ci_low"] <= r["mean"] <= r["ci_high"]
    assert len(res["verdicts"]) == 10 * 3
    for v in res["verdicts"]:
        assert isinstance(v["passed"], bool) and "threshold" in v["reason"]
        assert v["threshold"] == 0.5
    for name in ("explainers",):
        for e in res[name].values():
            assert len(e["code_hash"]) == 16


def test_controls_that_ignore_the_model_fail_every_check(tiny_run):
    _, out, _, _ = tiny_run
    res = json.loads((out / "results.json").read_text())
    for v in res["verdicts"]:
        if v["explainer"] in ("sobel", "noise"):
            assert not v["passed"], v
    for r in res["records"]:
        if r["explainer"] in ("sobel", "noise") and r["metric"] == "spearman_abs":
            assert r["mean"] == pytest.approx(1.0)


def test_cascade_steps_go_from_the_logits_down(tiny_run):
    _, out, _, _ = tiny_run
    res = json.loads((out / "results.json").read_text())
    steps = res["checks"]["cascading_randomization"]["steps"]
    assert steps[0] == "fc2" and steps[-1] == "conv1"


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_figures_are_written(tiny_run):
    _, out, _, _ = tiny_run
    for check in ("cascading_randomization", "independent_randomization", "data_randomization"):
        w, h = _png_size(out / f"{check}_maps.png")
        assert w > 200 and h > 200
        for metric in ("spearman_abs", "spearman", "ssim", "hog"):
            _png_size(out / f"{check}_{metric}.png")


def test_rerun_into_the_same_out_resumes_and_gives_the_same_numbers(tiny_run, monkeypatch):
    code, out, suite, _ = tiny_run
    first = json.loads((out / "results.json").read_text())
    (out / "results.json").unlink()
    calls = []
    from sanitycheck.engine import run as runner

    real = runner.explain_maps
    monkeypatch.setattr(runner, "explain_maps", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--no-figures"]) == 0
    assert calls == [], "a resumed run recomputed cached maps"
    again = json.loads((out / "results.json").read_text())
    assert again["records"] == first["records"] and again["verdicts"] == first["verdicts"]


def test_a_suite_re_versioned_to_add_an_explainer_resumes_the_shared_units(tmp_path, monkeypatch):
    """Units are keyed by their check's config and their explainer's spec, not by the suite's version: adding a
    method to a suite (a new version) explains only the new method; the others' records are unchanged."""
    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "cache"))
    base = dict(explainers=["gradient", "sobel"], checks=[
        {"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}}],
        dataset={"name": "digits", "split": "test", "n": 8}, metrics=["spearman_abs"])
    out = tmp_path / "out"
    assert main(["run", str(tiny_suite(tmp_path, **base)), "--out", str(out), "--no-progress", "--no-figures"]) == 0
    first = json.loads((out / "results.json").read_text())
    from sanitycheck.engine import run as runner

    explained = []
    real = runner.explain_maps
    monkeypatch.setattr(runner, "explain_maps", lambda *a, **k: explained.append(k["name"]) or real(*a, **k))
    bumped = tiny_suite(tmp_path, **{**base, "version": "0.0.2", "explainers": ["gradient", "sobel", "gradcam"]})
    assert main(["run", str(bumped), "--out", str(out), "--no-progress", "--no-figures"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert explained and set(explained) == {"gradcam"}, explained
    assert again["suite_version"] == "0.0.2"
    old = [r for r in again["records"] if r["explainer"] != "gradcam"]
    assert old == first["records"]
    # another seed is another run: refused, not mixed
    assert main(["run", str(bumped), "--out", str(out), "--seed", "3", "--no-progress"]) == 2


def test_a_different_run_into_the_same_out_is_refused(tiny_run, capsys):
    _, out, suite, _ = tiny_run
    assert main(["run", str(suite), "--out", str(out), "--seed", "7", "--no-progress"]) == 2
    assert "different settings" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["run", "adebayo2019"], "Did you mean 'adebayo2018'"),
    (["run", "--explainers", "gradient,guided_backprob", "--n", "4"], "Did you mean 'guided_backprop'"),
])
def test_bad_names_exit_2_with_a_clear_message(args, message, capsys, tmp_path):
    assert main(args + ["--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_ls_lists_every_kind_of_part(capsys):
    assert main(["ls"]) == 0
    text = capsys.readouterr().out
    for word in ("suites:", "adebayo2018", "explainers:", "guided_gradcam", "models:", "fmnist_cnn",
                 "datasets:", "fashion_mnist"):
        assert word in text


def test_model_override_without_weights_fails_offline_with_the_file_to_fetch(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SANITYCHECK_OFFLINE", "1")
    code = main(["run", "petsiuk2018", "--model", "resnet18", "--dataset", "image_folder", "--data-root",
                 str(tmp_path / "missing"), "--n", "2", "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing" in err  # the dataset path is checked first, and named


def test_model_override_reaches_the_torchvision_adapter(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SANITYCHECK_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code = main(["run", "petsiuk2018", "--model", "resnet18", "--n", "2", "--out", str(tmp_path / "o"),
                 "--no-progress"])
    assert code == 2
    assert "resnet18-f37072fd.pth" in capsys.readouterr().err


def test_ls_lists_the_clip_parts_and_the_clip_saliency_command(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ("clip_text2img", "clip_scenes", "clip_similarity", "vit_gradcam", "vit_chefer",
                 "vit_attention_rollout", "occlusion", "text_randomization", "pointing_game"):
        assert re.search(rf"^  {name}( .*)?$", out, re.M), name  # explainers and metrics: a modalities column
    with pytest.raises(SystemExit):
        main(["clip-saliency", "--help"])
    assert "--pretrained" in capsys.readouterr().out


def test_verdicts_carry_a_status_the_summary_and_the_gate_show_it(tiny_run, capsys):
    import argparse

    import jsonschema

    from sanitycheck.cli import _gate, _print_summary
    from sanitycheck.options import add_gate_options
    from sanitycheck.results import STATUS_WORDS, VERDICT_STATUSES
    from sanitycheck.schema import RESULT_SCHEMA

    _, out, _, _ = tiny_run
    res = json.loads((out / "results.json").read_text())
    jsonschema.validate(res, RESULT_SCHEMA)
    for v in res["verdicts"]:
        assert v["status"] in VERDICT_STATUSES and v["passed"] == (v["status"] == "pass")
        assert v["reason"].startswith(STATUS_WORDS[v["status"]] + ": ") and v["min_n"] == 10
    capsys.readouterr()
    _print_summary(res, out)
    table = capsys.readouterr().out
    cells = {"pass": "PASS (", "fail": "FAIL (", "inconclusive": "INCONCL (", "undefined": "UNDEF (",
             "insufficient_data": "LOW-N ("}
    for status in {v["status"] for v in res["verdicts"]}:
        assert cells[status] in table
    parser = argparse.ArgumentParser()
    add_gate_options(parser)
    not_passed = [v for v in res["verdicts"] if v["status"] != "pass"]
    assert _gate(res, parser.parse_args(["--strict"])) == (1 if not_passed else 0)
    gated = capsys.readouterr().err
    assert gated.count("sanitycheck: ") == len(not_passed)
    strict_but_lenient = [v for v in not_passed if v["status"] != "inconclusive"]
    assert _gate(res, parser.parse_args(["--strict", "--inconclusive", "pass"])) == (1 if strict_but_lenient else 0)


def test_every_subcommand_help_renders(capsys):
    """argparse formats help strings with %: a stray '%' in an option's help crashes `--help`."""
    from sanitycheck.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        text = sub.format_help()
        assert f"sanitycheck {name}" in text
    assert "95% CI" in commands["run"].format_help()
