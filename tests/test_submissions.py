"""Submissions end to end on a tiny suite (digits CNN, 24 images): sandboxed runs, validation, gating."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from sanitycheck.cli import main
from sanitycheck.errors import AttributionError
from sanitycheck.stats import bootstrap_ci
from sanitycheck.sandbox import bwrap_problem
from sanitycheck.submissions import SubmissionError, submit, validate_file

# where bubblewrap cannot run, submit refuses unless trusted (tests/test_sandbox.py covers that refusal)
TRUST = bwrap_problem() is not None

SUITE = """\
name: tinydigits
version: 0.1.0
description: digits CNN, 24 images, for tests
input_kind: image
seed: 0
batch_size: 32
dataset: {name: digits, split: test, n: 24}
model: {name: digits_cnn}
explainers: [gradient]
metrics: [spearman_abs, ssim]
checks:
  - name: cascading_randomization
    verdict: {metric: spearman_abs, threshold: 0.5}
  - name: data_randomization
    verdict: {metric: spearman_abs, threshold: 0.5, rule: final_step}
"""

METHODS = '''\
import time
import torch

def gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    out = model(x).gather(1, target.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(out, x)
    return g.sum(1)

def ignores_model(model, x, target):
    return x.sum(1)

def writes_outside(model, x, target):
    open(OUTSIDE, "w").write("escaped")
    return x.sum(1)

def runs_a_process(model, x, target):
    import subprocess
    subprocess.run(["true"])
    return x.sum(1)

def sleeps(model, x, target):
    time.sleep(60)
    return x.sum(1)

def hogs_memory(model, x, target):
    blocks = [bytearray(256 * 2**20) for _ in range(64)]
    return x.sum(1)
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("author")
    (root / "suites").mkdir()
    (root / "suites" / "tinydigits.yaml").write_text(SUITE)
    outside = root / "outside.txt"
    (root / "methods.py").write_text(f"OUTSIDE = {str(outside)!r}\n" + METHODS)
    mp = pytest.MonkeyPatch()
    mp.setenv("SANITYCHECK_SUITES", str(root / "suites"))
    mp.setenv("SANITYCHECK_CACHE", str(root / "cache"))
    mp.chdir(root)

    docs = {m: submit(f"methods.py:{m}", suites=["tinydigits"], root=root / "leaderboard",
                      work_root=root / "runs", progress=False, trust_code=TRUST)["tinydigits"] for m in ("gradient", "ignores_model")}
    yield root, docs
    mp.undo()


def _file(root, method):
    return root / "leaderboard" / "submissions" / method / "tinydigits.json"


def test_submission_files_record_provenance(project):
    root, docs = project
    doc = json.loads(_file(root, "gradient").read_text())
    assert doc["method"]["name"] == "gradient" and doc["method"]["source"] == "methods.py:gradient"
    assert len(doc["method"]["source_sha256"]) == 64
    assert doc["method"]["sandbox"] == ("audit-hook only" if TRUST else "bwrap")
    for key in ("schema_version", "suite_version", "seed", "versions", "git_hash"):
        assert key in doc
    assert list(doc["explainers"]) == ["gradient"]


def test_model_dependent_method_passes_and_model_ignoring_method_fails(project):
    _, docs = project
    assert all(v["passed"] for v in docs["gradient"]["verdicts"])
    assert not any(v["passed"] for v in docs["ignores_model"]["verdicts"])


def test_untouched_files_validate_with_a_rerun(project):
    root, _ = project
    assert validate_file(_file(root, "gradient"), work_root=root / "val") == []
    assert validate_file(_file(root, "ignores_model"), work_root=root / "val") == []


def test_hand_edited_aggregate_is_rejected(project, tmp_path):
    root, _ = project
    doc = json.loads(_file(root, "ignores_model").read_text())
    verdict = next(v for v in doc["verdicts"] if v["check"] == "cascading_randomization")
    verdict["passed"] = True
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    problems = validate_file(edited, rerun=False)
    assert problems and "tampered: verdict ignores_model/cascading_randomization" in problems[0]
    assert main(["validate", str(edited), "--no-rerun"]) == 1


def _consistent_forgery(root):
    """ignores_model's file with every per-image score lowered and aggregates and verdicts recomputed to match."""
    from dataclasses import asdict

    from sanitycheck.results import Record, VerdictRule, clean_json, decide

    doc = json.loads(_file(root, "ignores_model").read_text())
    scores = doc["per_sample"]["ignores_model"]
    for check, steps in scores.items():
        for step, metrics in steps.items():
            for metric, values in metrics.items():
                metrics[metric] = [None if v is None else v - 0.8 for v in values]
    for r in doc["records"]:
        if r["step"] == "original":
            continue
        s = bootstrap_ci(torch.tensor(scores[r["check"]][r["step"]][r["metric"]], dtype=torch.float64),
                         seed_parts=(doc["seed"], "bootstrap", r["check"], r["explainer"]))
        r.update(mean=s.mean, ci_low=s.ci_low, ci_high=s.ci_high)
    for i, v in enumerate(doc["verdicts"]):
        rule = doc["checks"][v["check"]]["verdict_rule"]
        recs = [Record(**r) for r in doc["records"] if r["check"] == v["check"]]
        d = decide(VerdictRule(**rule), v["explainer"], v["check"], recs)
        v.update(clean_json(asdict(d)))  # a forger rewrites every field of the verdict
    return doc


def test_consistent_forgery_of_scores_is_caught_by_the_seeded_rerun(project, tmp_path):
    """Lower every per-image score and recompute aggregates and verdicts so the file is self-consistent."""
    root, _ = project
    doc = _consistent_forgery(root)
    assert all(v["passed"] for v in doc["verdicts"])  # the forgery would put a control on the board as passing
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    assert validate_file(forged, rerun=False) == []  # self-consistent: only running the method can tell
    problems = validate_file(forged, work_root=root / "val")
    # the 16 inputs are drawn at validation time from fresh randomness (no longer seeded by the file's bytes)
    assert problems and problems[0].startswith("tampered or irreproducible: re-running 16 inputs sampled with seed")


def test_changed_method_source_makes_a_result_stale(project, tmp_path):
    root, _ = project
    copy = tmp_path / "methods.py"
    shutil.copy(root / "methods.py", copy)
    doc = json.loads(_file(root, "gradient").read_text())
    doc["method"]["source"] = f"{copy}:gradient"
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(doc))
    copy.write_text(copy.read_text() + "\n# changed\n")
    problems = validate_file(moved, work_root=root / "val")
    assert problems and problems[0].startswith("stale: the source of gradient")


def test_a_new_suite_version_makes_a_result_stale(project, tmp_path):
    root, _ = project
    doc = json.loads(_file(root, "gradient").read_text())
    doc["suite_version"] = "0.0.9"
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    problems = validate_file(old, rerun=False)
    assert problems == ["stale: written for suite tinydigits v0.0.9, the current version is v0.1.0; "
                        "re-run the submission"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "malformed: cannot read"),
    ('{"schema_version": "1.0"}', "schema: at (top level): 'suite' is a required property"),
])
def test_malformed_files_are_rejected(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    problems = validate_file(bad)
    assert problems and problems[0].startswith(message)


@pytest.mark.parametrize("method, error, message", [
    ("writes_outside", AttributionError, "is outside the output directory"),
    ("runs_a_process", AttributionError, "subprocess.Popen is not allowed"),
])
def test_the_sandbox_refuses_writes_and_processes(project, method, error, message):
    root, _ = project
    with pytest.raises(error, match=message):
        submit(f"methods.py:{method}", suites=["tinydigits"], root=root / "leaderboard", work_root=root / "runs",
               progress=False, trust_code=TRUST)
    assert not (root / "outside.txt").exists()
    assert not _file(root, method).exists()


def test_the_sandbox_enforces_time_and_memory_limits(project):
    root, _ = project
    with pytest.raises(SubmissionError, match="exceeded its time limit of 8 s"):
        submit("methods.py:sleeps", suites=["tinydigits"], root=root / "leaderboard", work_root=root / "runs",
               progress=False, trust_code=TRUST, timeout_s=8)
    with pytest.raises((SubmissionError, AttributionError), match="MemoryError"):
        submit("methods.py:hogs_memory", suites=["tinydigits"], root=root / "leaderboard", work_root=root / "runs",
               progress=False, trust_code=TRUST, memory_mb=3072)


def test_cli_submit_strict_gates_on_verdicts(project, capsys):
    root, _ = project
    args = ["--suites", "tinydigits", "--dir", str(root / "leaderboard"), "--no-progress", "--strict"] + (
        ["--trust-code"] if TRUST else [])
    assert main(["submit", "methods.py:gradient"] + args) == 0
    assert "tinydigits: wrote" in capsys.readouterr().out   # the gate did not refuse it: the full run is written
    published = _file(root, "ignores_model").read_bytes()
    # the suite's 24 images are too few for the anytime-valid sequence to decide; a budget of 64 is enough
    assert main(["submit", "methods.py:ignores_model", "--n", "64"] + args) == 1
    captured = capsys.readouterr()
    assert "ignores_model FAILED cascading_randomization" in captured.err
    # --strict runs the sequential gate first: a failure it decides refuses the claim without a full run,
    # and the board's file is left exactly as it was
    assert "refused by the sequential gate, nothing written to the board" in captured.out
    assert "decided" in captured.out
    assert _file(root, "ignores_model").read_bytes() == published


def test_a_run_of_builtin_explainers_publishes_valid_leaderboard_files(project):
    root, _ = project
    from sanitycheck.engine import run_suite
    from sanitycheck.submissions import publish_run

    results = run_suite("tinydigits", out=root / "run", progress=False, figures=False)
    paths = publish_run(results, root=root / "published")
    assert [p.relative_to(root / "published").as_posix() for p in paths] == ["submissions/gradient/tinydigits.json"]
    doc = json.loads(paths[0].read_text())
    assert doc["method"]["source"] == "gradient" and doc["method"]["source_file"].endswith("gradients.py")
    assert validate_file(paths[0], work_root=root / "val") == []


def test_published_schema_file_is_the_schema_the_code_validates_with():
    from sanitycheck.schema import RESULT_SCHEMA

    published = Path(__file__).resolve().parent.parent / "leaderboard" / "schema.json"
    assert json.loads(published.read_text()) == RESULT_SCHEMA


def test_the_board_flags_the_model_ignoring_submission_and_passes_the_gradient(project):
    root, _ = project
    from sanitycheck.report.leaderboard import build_leaderboard

    summary = build_leaderboard(root / "leaderboard")
    assert sorted(summary["suites"]["tinydigits"]) == ["gradient", "ignores_model"] and not summary["rejected"]
    rows = {line.split("|")[1].strip(): line for line in (root / "leaderboard" / "LEADERBOARD.md").read_text().splitlines()
            if line.startswith("| ") and ("gradient" in line or "ignores_model" in line)}
    gradient = next(v for k, v in rows.items() if "gradient" in k and "ignores" not in k)
    ignores = next(v for k, v in rows.items() if "ignores_model" in k)
    assert "fail" not in gradient and gradient.count("pass") == 2
    assert ignores.count("fail") == 2 and "1.000 @ fc2" in ignores


def test_validate_files_reruns_a_suite_once_and_still_judges_each_file(project, tmp_path):
    """The board's grouped re-validation: both files of one suite re-run together on one fresh sample; a
    self-consistent forgery in one file is caught by the shared re-run without failing the other."""
    from sanitycheck.submissions import validate_files

    root, _ = project
    good, forged = _file(root, "gradient"), tmp_path / "ignores_model" / "tinydigits.json"
    forged.parent.mkdir()
    forged.write_text(json.dumps(_consistent_forgery(root)))
    assert validate_file(forged, rerun=False) == []  # only running the method can tell
    found = validate_files([good, forged], sample=4, work_root=root / "val-group")
    assert found[str(good)] == []
    assert found[str(forged)] and found[str(forged)][0].startswith(
        "tampered or irreproducible: re-running 4 inputs sampled with seed"), found[str(forged)]
    found = validate_files([good, _file(root, "ignores_model")], sample=4, work_root=root / "val-group2")
    assert found == {str(good): [], str(_file(root, "ignores_model")): []}


def test_only_this_packages_own_explainers_are_rerun_outside_the_sandbox(tmp_path):
    from sanitycheck.submissions import _is_builtin

    assert _is_builtin("gradient") and _is_builtin("guided_gradcam")
    method = tmp_path / "gradient.py"  # a file that borrows a built-in's name is still submitted code
    method.write_text("def gradient(model, x, target):\n    return x.sum(1)\n")
    assert not _is_builtin(f"{method}:gradient")
    assert not _is_builtin("no_such_method")


def test_a_discontinuous_metric_gets_its_own_rerun_tolerance_and_the_others_keep_1e_4():
    """eMPRT's histogram entropy can jump when a float-level difference moves a pixel across a bin edge (a board
    build once failed an honest integrated-gradients file on 1.03e-4): entropy_increase is compared within 1e-2,
    every continuous metric still within 1e-4, and a forgery beyond its tolerance is still caught and named."""
    from sanitycheck.submissions import METRIC_RERUN_TOLERANCE, RERUN_TOLERANCE, _compare_rerun

    weights = {"model": {"name": "m", "weights_sha256": "ab" * 32}}

    def docs(entropy_new, spearman_new):
        stored = {"smooth_mprt": {"s1": {"entropy_increase": [0.5, 0.25], "spearman_abs": [0.3, 0.4]}}}
        fresh = {"smooth_mprt": {"s1": {"entropy_increase": [0.5, entropy_new], "spearman_abs": [0.3, spearman_new]}}}
        return ({**weights, "per_sample": {"ig": stored}}, {**weights, "per_sample": {"ig": fresh}})

    assert METRIC_RERUN_TOLERANCE["entropy_increase"] == 1e-2 and RERUN_TOLERANCE == 1e-4
    report = {}
    assert _compare_rerun(*docs(0.25 + 1.03e-4, 0.4), "ig", [0, 1], 0, RERUN_TOLERANCE, report) == []
    assert report["max_abs_diff"] > 1e-4
    problems = _compare_rerun(*docs(0.25 + 0.05, 0.4), "ig", [0, 1], 0, RERUN_TOLERANCE, {})
    assert problems and "entropy_increase" in problems[0] and "tolerance 0.01" in problems[0]
    problems = _compare_rerun(*docs(0.25 + 1e-3, 0.4 + 2e-4), "ig", [0, 1], 0, RERUN_TOLERANCE, {})
    assert problems and "spearman_abs" in problems[0] and "tolerance 0.0001" in problems[0]
