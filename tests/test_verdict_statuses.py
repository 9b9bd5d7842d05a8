"""Verdicts that explaining nothing cannot earn (issue 10): undefined, insufficient data, inconclusive.

End to end on a tiny untrained CNN and 12 real digits (no training), and the gate's treatment of each status.
"""

import argparse

import pytest
import torch

from helpers import digits_batch, make_tiny_cnn
from sanitycheck.data import ImageDataset
from sanitycheck.errors import ConfigError
from sanitycheck.explainers import FunctionExplainer, get_explainer
from sanitycheck.options import add_gate_options, failing_verdicts, format_verdict, gate_messages, gate_outcome
from sanitycheck.pytest_plugin import SanityReport
from sanitycheck.results import DEFAULT_MIN_N, Record, Verdict, VerdictRule, decide
from sanitycheck.runner import AuditRun
from sanitycheck.suites import parse_suite

CHECKS = ("cascading_randomization", "independent_randomization", "data_randomization")


def suite(min_n=None, checks=CHECKS):
    data = {
        "name": "statuses", "version": "0.0.1", "description": "verdict statuses",
        "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 6, "figure_images": 2,
        "explainers": ["gradient"], "metrics": ["spearman_abs"],
        "checks": [{"name": c, "verdict": {"metric": "spearman_abs", "threshold": 0.5,
                                           "rule": "final_step" if c == "data_randomization" else "all_steps"}}
                   for c in checks],
    }
    if min_n is not None:
        data["min_n"] = min_n
    return parse_suite(data)


def audit(tmp_path, explainers, n=12, min_n=None, checks=CHECKS):
    x, y = digits_batch(n)
    ds = ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", f"test{n}")
    return AuditRun(suite(min_n, checks), out_dir=tmp_path / "out", model=make_tiny_cnn(0), dataset=ds,
                    explainer_objects=explainers, progress=False, figures=False,
                    context={"random_label_model": make_tiny_cnn(1)}).execute()


def by_check(results, explainer):
    return {v["check"]: v for v in results["verdicts"] if v["explainer"] == explainer}


# ------------------------------------------------------------------ explaining nothing
def test_constant_and_zero_maps_are_undefined_on_every_randomization_check(tmp_path):
    def zeros(model, x, target):
        return torch.zeros(x.shape[0], *x.shape[2:])

    def constant(model, x, target):
        return torch.full((x.shape[0], *x.shape[2:]), 0.25)

    res = audit(tmp_path, {"zeros": FunctionExplainer(zeros, name="zeros"),
                           "constant": FunctionExplainer(constant, name="constant")})
    for name in ("zeros", "constant"):
        verdicts = by_check(res, name)
        assert set(verdicts) == set(CHECKS)
        for check, v in verdicts.items():
            assert v["status"] == "undefined" and v["passed"] is False, (name, check, v)
            assert v["reason"].startswith("UNDEFINED: the maps carry no ranking"), v["reason"]
            assert v["step"] == "original" and v["n"] == 0 and v["measured"] is None
    # and the gate never counts them as passed, whatever --inconclusive says
    for policy in ("fail", "pass", "ignore"):
        assert len(failing_verdicts(res, "any", inconclusive=policy)) == 6


def test_maps_constant_only_when_randomized_still_count_as_dissimilar(tmp_path):
    trained = make_tiny_cnn(0)

    def flat_when_randomized(model, x, target):
        g = get_explainer("gradient")(model, x, target)
        same = all(torch.equal(p, q) for p, q in zip(model.parameters(), trained.parameters()))
        return g if same else torch.zeros_like(g)

    res = audit(tmp_path, {"flaky": FunctionExplainer(flat_when_randomized, name="flaky")},
                checks=("cascading_randomization",))
    v, = res["verdicts"]
    assert v["status"] == "pass" and v["passed"] and "every map was undefined" in v["reason"]


def test_one_image_is_insufficient_data_never_a_pass(tmp_path):
    res = audit(tmp_path, {"gradient": get_explainer("gradient")}, n=1)
    for check, v in by_check(res, "gradient").items():
        assert v["status"] == "insufficient_data" and not v["passed"], (check, v)
        assert v["reason"].startswith("INSUFFICIENT DATA: ") and f"min_n={DEFAULT_MIN_N}" in v["reason"]
        assert v["n"] == 1 and v["min_n"] == DEFAULT_MIN_N


def test_a_suite_may_lower_min_n_and_then_decides(tmp_path):
    res = audit(tmp_path, {"gradient": get_explainer("gradient")}, n=4, min_n=3,
                checks=("cascading_randomization",))
    v, = res["verdicts"]
    assert v["min_n"] == 3 and v["status"] in ("pass", "fail", "inconclusive")
    assert res["checks"]["cascading_randomization"]["verdict_rule"]["min_n"] == 3


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_scaled_maps_get_identical_verdicts(tmp_path, scale):
    def scaled(model, x, target):
        return get_explainer("gradient")(model, x, target) * scale

    base = audit(tmp_path / "base", {"m": get_explainer("gradient")})
    other = audit(tmp_path / "scaled", {"m": FunctionExplainer(scaled, name="m")})
    strip = lambda vs: [{k: v for k, v in d.items()} for d in vs]  # noqa: E731
    assert strip(other["verdicts"]) == strip(base["verdicts"])
    assert [r["mean"] for r in other["records"]] == [r["mean"] for r in base["records"]]


# ------------------------------------------------------------------ decide() on hand-made records
def rec(step, idx, lo, hi, n=100, n_undef=0, metric="spearman_abs", reason=None):
    mean = None if lo is None else (lo + hi) / 2
    return Record("g", "c", metric, step, idx, mean, lo, hi, n, n_undef, reason)


ORIG = rec("original", 0, 1.0, 1.0)


@pytest.mark.parametrize("records, status, step", [
    ([ORIG, rec("fc2", 1, 0.30, 0.45), rec("fc1", 2, 0.10, 0.20)], "pass", "fc2"),
    ([ORIG, rec("fc2", 1, 0.48, 0.51), rec("fc1", 2, 0.10, 0.20)], "inconclusive", "fc2"),  # straddles 0.5
    ([ORIG, rec("fc2", 1, 0.48, 0.51), rec("fc1", 2, 0.55, 0.60)], "fail", "fc1"),  # decisive fail wins
    ([ORIG, rec("fc2", 1, 0.50, 0.52)], "fail", "fc2"),  # lower bound at the threshold: not below it
    ([rec("original", 0, 1.0, 1.0, n=9, n_undef=91)], "insufficient_data", None),  # no step records
    ([rec("original", 0, 1.0, 1.0, n=9, n_undef=91), rec("fc2", 1, 0.1, 0.2, n=9, n_undef=91)],
     "insufficient_data", "original"),
    ([ORIG, rec("fc2", 1, 0.1, 0.2, n=5, n_undef=95)], "insufficient_data", "fc2"),
    ([rec("original", 0, None, None, n=0, n_undef=100, reason="100 constant maps"),
      rec("fc2", 1, None, None, n=0, n_undef=100, reason="100 constant maps")], "undefined", "original"),
])
def test_decide_statuses_below(records, status, step):
    v = decide(VerdictRule("spearman_abs", 0.5), "g", "c", records)
    assert v.status == status and v.passed == (status == "pass") and v.step == step
    word = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE", "undefined": "UNDEFINED",
            "insufficient_data": "INSUFFICIENT DATA"}[status]
    assert v.reason.startswith(word + ": ") and "0.50" in v.reason


def test_inconclusive_states_the_deciding_bound_and_the_step():
    v = decide(VerdictRule("spearman_abs", 0.5), "g", "cascading_randomization",
               [ORIG, rec("fc2", 1, 0.479, 0.511), rec("fc1", 2, 0.40, 0.42)])
    assert v.status == "inconclusive" and v.measured == pytest.approx(0.511)
    assert "straddles 0.50" in v.reason and "fc2 (step 1/2)" in v.reason and "0.511" in v.reason


@pytest.mark.parametrize("lo, hi, status", [(0.30, 0.40, "pass"), (0.05, 0.20, "inconclusive"),
                                            (-0.10, 0.10, "fail"), (0.0, 0.0, "fail")])
def test_decide_statuses_above(lo, hi, status):
    records = [rec("original", 0, 0.0, 0.0, metric="e"), rec("fully_randomized", 1, lo, hi, metric="e")]
    v = decide(VerdictRule("e", 0.1, "final_step", "above"), "g", "efficient_mprt", records)
    assert v.status == status and v.direction == "above"


def test_above_rule_with_an_all_undefined_step_is_undefined_not_a_pass():
    records = [rec("gradient", 1, 0.6, 0.7, metric="kendall_tau"),
               rec("leave_one_out", 2, None, None, n=0, n_undef=100, metric="kendall_tau", reason="constant")]
    v = decide(VerdictRule("kendall_tau", 0.5, "all_steps", "above"), "attention", "agreement", records)
    assert v.status == "undefined" and not v.passed


def test_verdict_passed_must_agree_with_status_and_min_n_is_checked():
    with pytest.raises(ConfigError, match="contradicts"):
        Verdict("g", "c", True, "PASS: x", "m", "all_steps", 0.5, 0.1, "fc2", "inconclusive", "below", 20, 10)
    for bad in (1, 0, True, 2.5):
        with pytest.raises(ConfigError, match="min_n"):
            VerdictRule("spearman_abs", 0.5, min_n=bad)


def test_suite_min_n_is_validated():
    with pytest.raises(ConfigError, match="min_n"):
        suite(min_n=1)


# ------------------------------------------------------------------ the gate and the plugin
def _verdict(explainer, status, check="cascading_randomization"):
    return {"explainer": explainer, "check": check, "passed": status == "pass", "reason": f"{status.upper()}: r",
            "metric": "spearman_abs", "rule": "all_steps", "threshold": 0.5, "measured": 0.51, "step": "fc2",
            "status": status, "direction": "below", "n": 32, "min_n": 10}


RESULTS = {"suite": "s", "suite_version": "1.0.0", "records": [], "verdicts": [
    _verdict("a", "pass"), _verdict("b", "fail"), _verdict("c", "inconclusive"), _verdict("d", "undefined"),
    _verdict("e", "insufficient_data")]}


@pytest.mark.parametrize("policy, failing", [("fail", ["b", "c", "d", "e"]), ("pass", ["b", "d", "e"]),
                                             ("ignore", ["b", "d", "e"])])
def test_gate_inconclusive_policy(policy, failing):
    parser = argparse.ArgumentParser()
    add_gate_options(parser)
    ns = parser.parse_args(["--strict", "--inconclusive", policy])
    assert [v["explainer"] for v in failing_verdicts(RESULTS, "any", inconclusive=policy)] == failing
    assert len(gate_messages(RESULTS, ns)) == len(failing)
    assert gate_outcome(RESULTS["verdicts"][2], policy) == policy


def test_gate_default_counts_inconclusive_as_not_passed_and_rejects_bad_policies():
    parser = argparse.ArgumentParser()
    add_gate_options(parser)
    ns = parser.parse_args(["--fail-on", "any"])
    assert ns.inconclusive == "fail"
    messages = gate_messages(RESULTS, ns)
    assert [m.split(" ")[2] for m in messages] == ["FAILED", "INCONCLUSIVE", "UNDEFINED", "INSUFFICIENT"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--inconclusive", "maybe"])


def test_format_verdict_names_the_status_and_direction():
    v = dict(_verdict("c", "inconclusive"), direction="above", threshold=0.1)
    text = format_verdict(v, RESULTS)
    assert text.startswith("sanitycheck: c INCONCLUSIVE cascading_randomization") and "lower CI bound > 0.10" in text


def test_report_assertions_by_status(tmp_path):
    inconclusive = {**RESULTS, "verdicts": [_verdict("c", "inconclusive")]}
    report = SanityReport(inconclusive, tmp_path)
    assert not report.passed() and report.status() == "inconclusive"
    with pytest.raises(AssertionError, match="c INCONCLUSIVE"):
        report.assert_passes()
    with pytest.raises(AssertionError, match="expected: FAILED"):  # an inconclusive control is no failure
        report.assert_fails()
    for policy in ("pass", "ignore"):
        relaxed = SanityReport(inconclusive, tmp_path, inconclusive=policy)
        assert relaxed.passed() and relaxed.assert_passes() is relaxed
        with pytest.raises(AssertionError):
            relaxed.assert_fails()
    for status in ("undefined", "insufficient_data"):
        doc = {**RESULTS, "verdicts": [_verdict("x", status)]}
        with pytest.raises(AssertionError):
            SanityReport(doc, tmp_path, inconclusive="pass").assert_passes()
        with pytest.raises(AssertionError):
            SanityReport(doc, tmp_path).assert_fails()
    SanityReport({**RESULTS, "verdicts": [_verdict("b", "fail")]}, tmp_path).assert_fails()


def test_min_n_per_verdict_overrides_the_suite_default():
    data = {"name": "m", "version": "0.0.1", "description": "min_n", "dataset": {"name": "digits"},
            "model": {"name": "digits_cnn"}, "explainers": ["gradient"], "metrics": ["spearman_abs"], "min_n": 20,
            "checks": [{"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}},
                       {"name": "independent_randomization",
                        "verdict": {"metric": "spearman_abs", "threshold": 0.5, "min_n": 5}}]}
    s = parse_suite(data)
    assert [c.verdict.min_n for c in s.checks] == [20, 5]
    del data["min_n"]
    assert parse_suite(data).checks[0].verdict.min_n == DEFAULT_MIN_N
