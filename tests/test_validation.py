"""The validator trusts nothing in the file it checks (issue 10): the suite's current rules, verdicts recomputed
field by field, size limits before parsing, source and weights checked, a re-run sample drawn at validation time.

Static attacks work on copies of a committed leaderboard file (no numbers of it are assumed); re-run attacks on a
tiny digits suite (24 images)."""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from sanitycheck.results import Record, VerdictRule, decide
from sanitycheck.submissions import sample_indices, validate_file
from sanitycheck.validation import weights_problems

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "leaderboard" / "submissions" / "guided_backprop" / "adebayo2018.json"
WEIGHTS = hashlib.sha256(b"reference weights").hexdigest()


@pytest.fixture
def committed():
    doc = json.loads(COMMITTED.read_text())
    doc["model"].setdefault("weights_sha256", WEIGHTS)  # committed before weights were recorded
    doc["method"]["source_file"] = "(any)"
    return doc


def _write(tmp_path, doc, name="doc.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def _recompute_verdicts_with_the_files_rules(doc):
    """What a forger does after editing a rule: verdicts made consistent with the edited rule."""
    doc["verdicts"] = [v for v in doc["verdicts"] if v["check"] in doc["checks"]]
    doc["records"] = [r for r in doc["records"] if r["check"] in doc["checks"]]
    for steps in doc["per_sample"].values():
        for check in [c for c in steps if c not in doc["checks"]]:
            del steps[check]
    for v in doc["verdicts"]:
        rule = doc["checks"][v["check"]]["verdict_rule"]
        recs = [Record(**r) for r in doc["records"] if r["check"] == v["check"] and r["explainer"] == v["explainer"]]
        d = decide(VerdictRule(rule["metric"], rule["threshold"], rule["rule"], rule["direction"]),
                   v["explainer"], v["check"], recs)
        v.clear()
        v.update(json.loads(json.dumps(asdict(d))))


def test_the_committed_file_is_valid_statically(committed, tmp_path):
    assert validate_file(_write(tmp_path, committed), rerun=False) == []


def test_an_edited_threshold_with_verdicts_recomputed_to_match_is_rejected(committed, tmp_path):
    for info in committed["checks"].values():
        if info["verdict_rule"] is not None:  # the noise ceiling and convergence have none
            info["verdict_rule"]["threshold"] = 0.95
    _recompute_verdicts_with_the_files_rules(committed)
    assert any(v["passed"] for v in committed["verdicts"])  # the forgery would put guided backprop on the board as ✅
    problems = validate_file(_write(tmp_path, committed), rerun=False)
    assert ("rules: verdict_rule of guided_backprop/cascading_randomization says threshold 0.95, suite adebayo2018 "
            "v1.1.0 says threshold 0.5") in problems


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["checks"]["cascading_randomization"]["verdict_rule"].update(metric="ssim"),
     "verdict_rule of guided_backprop/cascading_randomization says metric 'ssim'"),
    (lambda d: d["checks"]["data_randomization"]["verdict_rule"].update(rule="all_steps", direction="above"),
     "says direction 'above', rule 'all_steps'"),
    (lambda d: d["checks"].pop("independent_randomization"), "missing ['independent_randomization']"),
    (lambda d: d["metrics"].pop("ssim"), "rules: the file's metrics"),
    (lambda d: d["metrics"]["spearman_abs"].update(identity=0.0), "rules: the description of metric spearman_abs"),
])
def test_a_changed_metric_rule_or_check_list_is_rejected(committed, tmp_path, edit, message):
    edit(committed)
    _recompute_verdicts_with_the_files_rules(committed)
    problems = validate_file(_write(tmp_path, committed), rerun=False)
    assert any(message in p for p in problems), problems


def test_deleted_verdicts_are_rejected(committed, tmp_path):
    committed["verdicts"] = []
    problems = validate_file(_write(tmp_path, committed), rerun=False)
    assert len(problems) == 3 and all("is missing; the suite's rule gives" in p for p in problems)


def test_a_verdict_differing_in_any_field_is_rejected(committed, tmp_path):
    committed["verdicts"][0]["reason"] = committed["verdicts"][0]["reason"].replace("FAIL", "PASS")
    problems = validate_file(_write(tmp_path, committed), rerun=False)
    assert problems and "verdict guided_backprop/cascading_randomization states reason" in problems[0]


def test_a_deleted_record_cannot_move_the_verdict(committed, tmp_path):
    """Dropping the deciding step's record (and deciding on the rest) leaves per-image scores without a record."""
    committed["records"] = [r for r in committed["records"] if r["step"] != "fc2"]
    _recompute_verdicts_with_the_files_rules(committed)
    problems = validate_file(_write(tmp_path, committed), rerun=False)
    assert any("per-image scores guided_backprop/cascading_randomization/fc2/spearman_abs have no record" in p
               for p in problems)


def test_no_rerun_rejects_a_changed_source_sha256(committed, tmp_path):
    committed["method"]["source_sha256"] = "0" * 64
    problems = validate_file(_write(tmp_path, committed), rerun=False)
    assert problems and problems[0].startswith("stale: the source of guided_backprop")


def test_the_board_rejects_a_changed_source_sha256(committed, tmp_path):
    from sanitycheck.report.leaderboard import build_leaderboard

    committed["method"]["source_sha256"] = "0" * 64
    root = tmp_path / "board"
    (root / "submissions" / "guided_backprop").mkdir(parents=True)
    _write(root / "submissions" / "guided_backprop", committed, "adebayo2018.json")
    summary = build_leaderboard(root, rerun=False)
    assert summary["suites"] == {}
    assert summary["rejected"]["submissions/guided_backprop/adebayo2018.json"][0].startswith("stale: the source")
    assert "static validation only" in (root / "LEADERBOARD.md").read_text()


def test_a_file_without_weights_is_rejected(committed, tmp_path):
    del committed["model"]["weights_sha256"]
    committed["model"]["info"].pop("weights_sha256", None)  # the hash the loader recorded in the model's info
    problems = validate_file(_write(tmp_path, committed), rerun=False)
    assert problems == ["weights: the file does not record model.weights_sha256 (written before weights were "
                        "recorded); re-run it on the reference weights"]


def test_other_weights_are_named_with_both_hashes():
    doc = {"model": {"weights_sha256": "a1b2" * 16}}
    assert weights_problems(doc, "a1b2" * 16) == []
    (problem,) = weights_problems(doc, "c3d4" * 16)
    assert "computed with other weights: file a1b2a1b2a1b2…, this installation's model c3d4c3d4c3d4…" in problem


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:  # sparse: 200 MiB of apparent size, nothing written
        fh.truncate(200 * 2**20)
    problems = validate_file(big)
    assert len(problems) == 1 and problems[0].startswith(f"too large: {big} is 200.0 MiB, more than the limit of 64 MiB")
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"x": "y" * 2000}))
    assert validate_file(small, max_bytes=1000)[0].startswith("too large:")


def test_absurd_list_lengths_are_refused_before_the_bootstrap(committed, tmp_path):
    committed["dataset"]["n"] = 10**9
    assert validate_file(_write(tmp_path, committed), rerun=False)[0].startswith("too large: dataset.n is 1000000000")


def test_a_fifo_or_deep_nesting_does_not_hang_or_crash(tmp_path):
    import os

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert validate_file(fifo)[0].endswith("is not a regular file")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200000 + "]" * 200000)
    assert validate_file(deep)[0].startswith("malformed: cannot read")


def test_the_sample_comes_from_fresh_randomness_not_from_the_file():
    seeds = {sample_indices(128, 16)[0] for _ in range(4)}
    assert len(seeds) == 4  # 63-bit seeds from the OS: equal ones would be a broken generator
    assert sample_indices(128, 16, seed=7) == sample_indices(128, 16, seed=7)
    assert sample_indices(10, None)[1] == list(range(10)) and sample_indices(10, 64)[1] == list(range(10))


# --------------------------------------------------------------------------- re-run attacks on a tiny suite
SUITE = """\
name: tinyval
version: 0.1.0
description: digits CNN, 24 images, for validation tests
input_kind: image
seed: 0
batch_size: 32
dataset: {name: digits, split: test, n: 24}
model: {name: digits_cnn}
explainers: [gradient]
metrics: [spearman_abs]
checks:
  - name: cascading_randomization
    verdict: {metric: spearman_abs, threshold: 0.5}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from sanitycheck.engine import run_suite
    from sanitycheck.submissions import publish_run

    root = tmp_path_factory.mktemp("tinyval")
    (root / "suites").mkdir()
    (root / "suites" / "tinyval.yaml").write_text(SUITE)
    mp = pytest.MonkeyPatch()
    mp.setenv("SANITYCHECK_SUITES", str(root / "suites"))
    mp.setenv("SANITYCHECK_CACHE", str(root / "cache"))
    results = run_suite("tinyval", out=root / "run", progress=False, figures=False)
    (path,) = publish_run(results, root=root / "board")
    yield root, path
    mp.undo()


def _forge_one(doc, index):
    """Change one per-image score, then make records and verdicts consistent with it (a self-consistent forgery)."""
    import torch

    from sanitycheck.stats import bootstrap_ci

    scores = doc["per_sample"]["gradient"]["cascading_randomization"]
    step = next(iter(scores))
    values = scores[step]["spearman_abs"]
    values[index] = -0.99 if values[index] is None or values[index] > 0 else 0.99
    for r in doc["records"]:
        if r["step"] == step:
            s = bootstrap_ci(torch.tensor([float("nan") if v is None else v for v in values], dtype=torch.float64),
                             seed_parts=(doc["seed"], "bootstrap", r["check"], r["explainer"]))
            r.update(mean=s.mean, ci_low=s.ci_low, ci_high=s.ci_high, n=s.n, n_undefined=s.n_undefined)
    _recompute_verdicts_with_the_files_rules(doc)


def test_full_rerun_catches_a_forgery_at_one_index(tiny, tmp_path):
    root, path = tiny
    doc = json.loads(path.read_text())
    _forge_one(doc, 17)
    forged = _write(tmp_path, doc)
    assert validate_file(forged, rerun=False) == []  # self-consistent
    report = {}
    problems = validate_file(forged, full=True, work_root=root / "val", report=report)
    assert report["indices"] == list(range(24)) and report["full"]
    assert problems and problems[0].startswith("tampered or irreproducible: re-running all 24 inputs, image 17")
    # a sample that misses index 17 (seed found here) accepts it: only fresh draws, repeated, or --full catch it
    seed = next(s for s in range(1000) if 17 not in sample_indices(24, 4, seed=s)[1])
    assert validate_file(forged, sample=4, seed=seed, work_root=root / "val") == []


def test_padding_the_file_no_longer_steers_the_sample(tiny, tmp_path):
    root, path = tiny
    doc = json.loads(path.read_text())
    _forge_one(doc, 5)
    text = json.dumps(doc)
    drawn = set()
    for pad in range(6):  # the old sample was a hash of these bytes: a forger padded until it missed the forgery
        padded = tmp_path / f"padded{pad}.json"
        padded.write_text(text + " " * pad)
        report = {}
        validate_file(padded, sample=4, work_root=root / "val", report=report)
        drawn.add(tuple(report["indices"]))
    assert len(drawn) > 1  # the same bytes draw different samples; sample_indices never reads the file


def test_a_rerun_on_other_weights_is_refused(tiny, tmp_path):
    root, path = tiny
    doc = json.loads(path.read_text())
    real = doc["model"]["weights_sha256"]
    doc["model"]["weights_sha256"] = "f" * 64
    report = {}
    problems = validate_file(_write(tmp_path, doc), sample=2, work_root=root / "val", report=report)
    assert problems == [f"weights: computed with other weights: file ffffffffffff…, this installation's model "
                        f"{real[:12]}…; re-run it on the reference weights"]
    assert report["fresh_weights_sha256"] == real


def test_cli_prints_the_sample_and_the_recomputed_verdicts(tiny, capsys):
    from sanitycheck.cli import main

    root, path = tiny
    assert main(["validate", str(path), "--sample", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 inputs drawn at random (seed" in out and "re-run sample: seed" in out
    assert "PASS cascading_randomization" in out or "FAIL cascading_randomization" in out
