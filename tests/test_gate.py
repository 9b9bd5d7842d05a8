"""The sequential gate (gate mode, ``--strict``): verdicts stop when their betting confidence sequence decides
them, run to the budget and say so when it does not, record how they stopped; non-gate runs are unchanged;
a method sitting exactly at the threshold fails no more often than alpha through the gate's decision code."""

import json

import pytest
import torch

from sanitycheck.cli import main
from sanitycheck.engine.gate import gate_decision, round_bounds, run_gate
from sanitycheck.suites import load_suite
from sanitycheck.validation import schema_problems

from test_cli import tiny_suite


def test_rounds_cover_the_budget_once_in_fixed_steps():
    assert round_bounds(40, 16) == [(0, 16), (16, 32), (32, 40)]
    assert round_bounds(8, 16) == [(0, 8)]


def test_a_clearly_decided_stream_stops_after_the_first_rounds_that_decide_it():
    g = torch.Generator().manual_seed(0)
    consumed = []

    def rounds():  # 3 steps x 16 images per round, far below the threshold
        for r in range(8):
            consumed.append(r)
            yield 0.05 * torch.rand(3, 16, generator=g, dtype=torch.float64)

    d = gate_decision(rounds(), 0.5, "below", budget=128)
    assert d.status == "pass" and d.stop == "decided"
    assert d.n < 128 and len(consumed) == d.rounds < 8  # the later rounds were never evaluated
    assert d.ci_high < 0.5


def test_an_undecided_stream_runs_to_the_budget_and_says_so():
    g = torch.Generator().manual_seed(1)
    rounds = [0.5 + 0.4 * (2 * torch.rand(1, 16, generator=g, dtype=torch.float64) - 1) for _ in range(4)]
    d = gate_decision(rounds, 0.5, "below", budget=64)
    assert d.status == "undecided" and d.stop == "budget" and d.n == 64
    assert d.ci_low < 0.5 < d.ci_high


def test_nan_scores_are_dropped_image_wise_not_fed_to_the_sequence():
    x = torch.zeros(2, 16, dtype=torch.float64)
    x[1, 3] = float("nan")
    d = gate_decision([x], 0.5, "below", budget=16)
    assert d.n == 15


@pytest.mark.parametrize("steps", [1, 3])
def test_false_failures_of_a_method_exactly_at_the_threshold_stay_below_alpha(steps):
    """A method whose mean score is exactly the threshold (0.5) at every step should pass-or-not-fail: a
    decided ``fail`` is a false failure. Simulated through the gate's decision code, peeking after every round
    of 8 images up to 128: the rate stays at or below alpha = 0.05 (a bootstrap CI re-read after every peek
    does not)."""
    g = torch.Generator().manual_seed(2026)
    sims, fails = 300, 0
    for _ in range(sims):
        # scores in {0, 1} with mean 0.5: the hardest bounded distribution to be sure about
        x = torch.bernoulli(torch.full((steps, 128), 0.5, dtype=torch.float64), generator=g)
        d = gate_decision([x[:, i:i + 8] for i in range(0, 128, 8)], 0.5, "below", budget=128)
        fails += d.status == "fail"
    assert fails / sims <= 0.05


@pytest.fixture(scope="module")
def gate_docs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    suite_path = tiny_suite(tmp, explainers=["gradient", "sobel"],
                            checks=[{"name": "cascading_randomization",
                                     "verdict": {"metric": "spearman_abs", "threshold": 0.5}}],
                            dataset={"name": "digits", "split": "test", "n": 64})
    suite = load_suite(str(suite_path))
    decided = run_gate(suite, out_dir=tmp / "decided", progress=False)
    short = run_gate(suite, out_dir=tmp / "short", budget=16, progress=False)
    return decided, short, suite_path, tmp


def _verdict(doc, explainer):
    return next(v for v in doc["verdicts"] if v["explainer"] == explainer)


def test_the_gate_stops_a_decided_cell_early_and_records_why(gate_docs):
    decided, _, _, _ = gate_docs
    sobel = _verdict(decided, "sobel")  # a control: its maps ignore the model, similarity 1 at every step
    seq = sobel["sequential"]
    assert sobel["status"] == "fail" and seq["stop"] == "decided" and seq["stopped"] is True
    assert seq["n_images"] < 64 and seq["cs_low"] >= 0.5
    assert seq["reason"].startswith("decided: lower CS bound") and f"after {seq['n_images']} images" in seq["reason"]
    ev = decided["gate"]["model_evaluations"]
    assert ev["gate"] < ev["full_run"]  # decided cells cost nothing in later rounds
    assert schema_problems(decided) == []


def test_the_gate_runs_an_undecided_cell_to_the_budget_and_says_so(gate_docs):
    _, short, _, _ = gate_docs
    sobel = _verdict(short, "sobel")  # 16 images are too few for 95% family-wise confidence
    seq = sobel["sequential"]
    assert sobel["status"] == "inconclusive" and seq["stop"] == "budget" and seq["stopped"] is False
    assert seq["n_images"] == 16 and seq["cs_low"] < 0.5 < seq["cs_high"]
    assert seq["reason"].startswith("budget spent: CS [") and "straddles 0.5" in seq["reason"]
    assert "after 16 images" in seq["reason"]


def test_non_gate_runs_are_unchanged(gate_docs, capsys):
    _, _, suite_path, tmp = gate_docs
    assert main(["run", str(suite_path), "--out", str(tmp / "plain"), "--no-progress", "--no-figures"]) == 0
    plain = json.loads((tmp / "plain" / "results.json").read_text())
    assert "gate" not in plain and all("sequential" not in v for v in plain["verdicts"])
    assert not (tmp / "plain" / "gate").exists()
    decided = gate_docs[0]  # the gate's images are the plain run's: its per-image scores are a prefix of them
    for e in ("gradient", "sobel"):
        for step, by_metric in decided["per_sample"][e]["cascading_randomization"].items():
            full = plain["per_sample"][e]["cascading_randomization"][step]["spearman_abs"]
            got = by_metric["spearman_abs"]
            assert got == pytest.approx(full[:len(got)], abs=1e-6)


def test_cli_strict_runs_the_gate(gate_docs, capsys):
    _, _, suite_path, tmp = gate_docs
    code = main(["run", str(suite_path), "--out", str(tmp / "strict"), "--no-progress", "--strict", "--budget", "16"])
    doc = json.loads((tmp / "strict" / "results.json").read_text())
    assert doc["gate"]["budget"] == 16 and all("sequential" in v for v in doc["verdicts"])
    assert code == 1  # --strict: inconclusive and failing verdicts fail the command


def test_a_rounds_later_group_reuses_the_trained_maps_of_its_earlier_groups(tmp_path, monkeypatch):
    """Groups of one round differ only in checks/explainers, which the trained maps' cache key leaves out: maps
    linked from an earlier group are cache hits (nothing is explained again), and the gate counts them once."""
    from sanitycheck.engine import AuditRun
    from sanitycheck.engine.gate import _evaluations, _share_trained_maps

    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "models"))
    suite = load_suite(str(tiny_suite(tmp_path, explainers=["gradient", "sobel"],
                                      dataset={"name": "digits", "split": "test", "n": 32})))
    common = dict(n=32, indices=list(range(16, 32)), figures=False, progress=False)
    first = AuditRun(suite, out_dir=tmp_path / "round-1-0", checks=["cascading_randomization"], **common).execute()
    explained = []
    original = AuditRun._explain_unit

    def spy(self, name, explainer, model, target, check, step, rows):
        explained.append((name, check))
        return original(self, name, explainer, model, target, check, step, rows)

    monkeypatch.setattr(AuditRun, "_explain_unit", spy)
    _share_trained_maps([tmp_path / "round-1-0"], tmp_path / "round-1-1")
    second = AuditRun(suite, out_dir=tmp_path / "round-1-1", checks=["data_randomization"], **common).execute()
    assert explained and not [e for e in explained if e[1] == "original maps"]  # trained maps: all cache hits
    assert ("gradient", "data_randomization") in explained                       # the new check's state is not
    # the linked maps are the ones the first group computed, so the scores of a re-run without links agree
    fresh = AuditRun(suite, out_dir=tmp_path / "fresh", checks=["data_randomization"], **common).execute()
    assert second["per_sample"] == fresh["per_sample"]
    costs, free = {"gradient": 1, "sobel": 1}, {"gradient": False, "sobel": True}
    assert _evaluations(second, costs, free) - _evaluations(second, costs, free, ["gradient", "sobel"]) == 2 * 16
    assert first["dataset"]["n"] == 16


def test_the_gate_applies_the_noise_rule_with_ceilings_measured_on_the_images_it_gated(tmp_path, monkeypatch):
    """A suite with a noise ceiling: the gate runs the ceiling beside each explainer's undecided cells and applies
    the rule the full run and the board apply. SmoothGrad with 1 sample at noise 3.0 has maps so noisy that
    another seed already decorrelates them: its gated PASS is NOISE; the gradient (no sampling) keeps its verdict."""
    from sanitycheck.checks.sampling import noise_rule_checks
    from sanitycheck.results import Record, Verdict, apply_noise_ceiling

    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "models"))
    suite = load_suite(str(tiny_suite(
        tmp_path, explainers=["gradient", {"smoothgrad": {"n_samples": 1, "noise_level": 3.0}}],
        checks=[{"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}},
                {"name": "noise_ceiling"}],
        dataset={"name": "digits", "split": "test", "n": 32}, metrics=["spearman_abs"])))
    doc = run_gate(suite, out_dir=tmp_path / "gate", progress=False)
    got = {v["explainer"]: v for v in doc["verdicts"]}
    ceiling = {r["explainer"]: r for r in doc["records"] if r["check"] == "noise_ceiling" and r["step"] != "original"}
    assert set(ceiling) == {"gradient", "smoothgrad"} and ceiling["gradient"]["mean"] == 1.0
    assert ceiling["smoothgrad"]["ci_high"] < 0.5
    assert got["smoothgrad"]["status"] == "noise" and "sampling noise" in got["smoothgrad"]["reason"]
    assert got["gradient"]["status"] != "noise" and "sequential gate" in got["gradient"]["reason"]
    # the same rule as apply_noise_ceiling on the gate's own records
    fields = Verdict.__dataclass_fields__
    plain = [Verdict(**{k: v for k, v in x.items() if k in fields}) for x in doc["verdicts"]]
    records = [Record(**r) for r in doc["records"]]
    assert apply_noise_ceiling(plain, records, *noise_rule_checks(suite.checks)) == plain
    # the ceiling ran on the images its explainer's cells consumed, no more
    assert ceiling["smoothgrad"]["n"] + ceiling["smoothgrad"]["n_undefined"] == \
        max(v["sequential"]["n_images"] for v in doc["verdicts"] if v["explainer"] == "smoothgrad")
