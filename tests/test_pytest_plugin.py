"""The pytest plugin (entry point ``pytest11``): fixture, assertions and their message, -m sanity, the gate.

Inner test sessions run with ``pytester`` on an untrained tiny CNN and 12 real digits (no training);
the options themselves are unit-tested here too, since the CLI shares them.
"""

import argparse
import json
from pathlib import Path

import pytest

from sanitycheck.options import (GATE_OPTIONS, add_gate_options, fail_on_expr, failing_verdicts, format_verdict,
                                 gate_expr, gate_messages, parse_fail_on)

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent

CONFTEST = '''
import pytest
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(32, n_classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


@pytest.fixture
def model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = TinyCNN()
    return m.eval()


@pytest.fixture
def data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:12], dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.tensor(d.target[:12], dtype=torch.long)


def gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    out = model(x).gather(1, target[:, None]).sum()
    return torch.autograd.grad(out, x)[0]


def identity(model, x, target):
    """Ignores the model: the input itself."""
    return x.clone()
'''

SUITE = '''
name: tiny
version: 0.1.0
description: cascading randomization on a tiny CNN
seed: 0
batch_size: 6
dataset: {name: digits}
model: {name: digits_cnn}
explainers: [gradient]
metrics: [spearman_abs]
checks:
  - name: cascading_randomization
    verdict: {metric: spearman_abs, threshold: 0.5, rule: all_steps}
'''

TESTS = '''
import pytest
from conftest import gradient, identity


def test_gradient_passes(sanity, model, data):
    report = sanity.run(gradient, model, data)
    report.assert_passes()
    assert report.passed("cascading_randomization")
    assert report.record("cascading_randomization", "original")["mean"] == pytest.approx(1.0)


def test_identity_fails_with_the_message(sanity, model, data, tmp_path_factory):
    report = sanity.check("cascading_randomization", identity, model, data)
    with pytest.raises(AssertionError) as err:
        report.assert_passes()
    with open("identity_message.txt", "w") as fh:
        fh.write(str(err.value))
    report.assert_fails("cascading_randomization", "identity")


def test_identity_no_assertion(sanity, model, data):
    sanity.run(identity, model, data, name="ignores_model")


@pytest.mark.sanity
def test_marked_without_fixture():
    pass


def test_plain():
    pass
'''


@pytest.fixture(scope="module")
def warm_imports(tmp_path_factory):
    """Inner sessions run in this process, and pytester removes the modules each one imported; C extensions
    (numpy.fft, ...) cannot be loaded twice, so import everything an audit with figures needs once, here."""
    import sklearn.datasets  # noqa: F401

    from helpers import digits_batch, make_tiny_cnn
    from sanitycheck.data import ImageDataset
    from sanitycheck.runner import AuditRun
    from sanitycheck.suites import parse_suite
    import yaml

    x, y = digits_batch(4)
    AuditRun(parse_suite(yaml.safe_load(SUITE)), out_dir=tmp_path_factory.mktemp("warm"), model=make_tiny_cnn(0),
             dataset=ImageDataset("d", x, y, [str(i) for i in range(10)], "sklearn", "x"),
             explainer_objects={"gradient": __import__("sanitycheck").get_explainer("gradient")},
             progress=False, figures=True).execute()


@pytest.fixture
def project(pytester, warm_imports):
    pytester.makeconftest(CONFTEST)
    pytester.makefile(".yaml", tiny=SUITE)
    pytester.makepyfile(test_claims=TESTS)
    return pytester


def expected_message(results, explainer, check):
    """The documented format, built by hand from results.json (not with format_verdict)."""
    v = next(v for v in results["verdicts"] if v["explainer"] == explainer and v["check"] == check)
    r = next(r for r in results["records"] if r["explainer"] == explainer and r["check"] == check
             and r["metric"] == v["metric"] and r["step"] == v["step"])
    return (f"sanitycheck: {explainer} FAILED {check} (suite {results['suite']} v{results['suite_version']}): "
            f"{v['metric']} at {v['step']} = {r['mean']:.3f} [95% CI {r['ci_low']:.3f}, {r['ci_high']:.3f}], "
            f"n={r['n']}; threshold: upper CI bound < {v['threshold']:.2f} ({v['rule']})\n"
            f"  reason: {v['reason']}")


def test_fixture_assertions_message_and_save(project):
    save = project.path / "saved"
    result = project.runpytest("--sanity-suite", "tiny.yaml", "--sanity-save", str(save), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    # --sanity-save: one directory per test and explainer, results.json and figures
    ident = save / "test_claims.py_test_identity_fails_with_the_message" / "identity"
    grad = json.loads((save / "test_claims.py_test_gradient_passes" / "gradient" / "results.json").read_text())
    assert grad["suite"] == "tiny" and grad["verdicts"][0]["passed"]
    assert grad["model"]["name"] == "TinyCNN" and grad["dataset"]["n"] == 12
    assert sorted(p.name for p in ident.glob("*.png"))  # figures when saving
    assert (save / "test_claims.py_test_identity_no_assertion" / "ignores_model" / "results.json").is_file()
    # the message, word for word
    results = json.loads((ident / "results.json").read_text())
    message = (project.path / "identity_message.txt").read_text()
    assert message == expected_message(results, "identity", "cascading_randomization")
    assert message.startswith("sanitycheck: identity FAILED cascading_randomization (suite tiny v0.1.0): "
                              "spearman_abs at fc2 = 1.000 [95% CI 1.000, 1.000], n=12; "
                              "threshold: upper CI bound < 0.50 (all_steps)\n  reason: FAIL: spearman_abs stays high")


def test_marker_selects_audit_tests(project):
    result = project.runpytest("-m", "sanity", "--collect-only", "-q")
    selected = sorted(line.split("::")[1] for line in result.outlines if "::" in line)
    assert selected == ["test_gradient_passes", "test_identity_fails_with_the_message", "test_identity_no_assertion",
                        "test_marked_without_fixture"]
    result = project.runpytest("-m", "not sanity", "--collect-only", "-q")
    assert [line.split("::")[1] for line in result.outlines if "::" in line] == ["test_plain"]


@pytest.mark.parametrize("expr, failed", [
    ("cascading_randomization", ["test_identity_no_assertion"]),
    ("ignores_model:cascading*", ["test_identity_no_assertion"]),
    ("gradient:*", []),
    ("none", []),
])
def test_fail_on_gates_unasserted_failures(project, expr, failed):
    args = ["--sanity-suite", "tiny.yaml", "--sanity-fail-on", expr, "-k", "identity or gradient"]
    result = project.runpytest(*args)
    reports = result.reprec.getreports("pytest_runtest_logreport")
    got = sorted(r.nodeid.split("::")[1] for r in reports if r.when == "call" and r.failed)
    assert got == failed  # assert_fails() acknowledged the identity control in the other test
    if failed:
        result.stdout.fnmatch_lines([
            "*sanitycheck: ignores_model FAILED cascading_randomization (suite tiny v0.1.0): spearman_abs at fc2 = "
            "1.000 [[]95% CI 1.000, 1.000[]], n=12; threshold: upper CI bound < 0.50 (all_steps)",
            "*reason: FAIL: spearman_abs stays high under cascading_randomization*",
            f"*(failed by --sanity-fail-on {expr}; assert_fails() marks an expected failure)*"])


def test_strict_fails_any_failing_verdict(project):
    result = project.runpytest("--sanity-suite", "tiny.yaml", "--sanity-strict", "-k", "no_assertion")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*(failed by --sanity-strict;*"])


def test_method_author_example_is_collected_with_marker(pytester):
    example = REPO / "examples" / "method_author"
    result = pytester.runpytest_subprocess(str(example / "tests"), "-m", "sanity", "--collect-only", "-q",
                                           "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    names = [line.split("::")[-1] for line in result.outlines if "::" in line]
    assert "test_my_method_depends_on_the_model" in names and "test_edge_baseline_is_caught" in names


# ------------------------------------------------------------------ the options the CLI shares
VERDICTS = {"suite": "s", "suite_version": "1.0.0", "verdicts": [
    {"explainer": "gradient", "check": "cascading_randomization", "passed": False, "reason": "FAIL: r1",
     "metric": "spearman_abs", "rule": "all_steps", "threshold": 0.5, "measured": 0.533, "step": "fc2"},
    {"explainer": "sobel", "check": "data_randomization", "passed": False, "reason": "FAIL: r2",
     "metric": "spearman_abs", "rule": "final_step", "threshold": 0.5, "measured": None, "step": "random_labels"},
    {"explainer": "sobel", "check": "cascading_randomization", "passed": True, "reason": "PASS: r3",
     "metric": "spearman_abs", "rule": "all_steps", "threshold": 0.5, "measured": 0.1, "step": "conv1"}],
    "records": [{"explainer": "gradient", "check": "cascading_randomization", "metric": "spearman_abs", "step": "fc2",
                 "step_index": 1, "mean": 0.5071, "ci_low": 0.48149, "ci_high": 0.5331, "n": 32, "n_undefined": 0,
                 "undefined_reason": None}]}


@pytest.mark.parametrize("expr, expected", [
    ("none", []), ("any", ["gradient", "sobel"]), ("*", ["gradient", "sobel"]),
    ("cascading_randomization", ["gradient"]), ("sobel:*", ["sobel"]), ("*:data_*", ["sobel"]),
    ("gradient:data_randomization", []), ("data_randomization, gradient:cascading_randomization", ["gradient", "sobel"]),
])
def test_fail_on_expressions(expr, expected):
    assert [v["explainer"] for v in failing_verdicts(VERDICTS, expr)] == expected
    # the predicate selects verdicts whether or not they failed (sobel passed cascading_randomization)
    assert parse_fail_on(expr)(VERDICTS["verdicts"][2]) == (expr in ("any", "*", "sobel:*", "cascading_randomization"))


@pytest.mark.parametrize("bad", ["", " , ", "a:b:c", ":x", "none,gradient"])
def test_bad_fail_on_expression_is_an_argparse_error(bad):
    with pytest.raises(argparse.ArgumentTypeError):
        fail_on_expr(bad)


def test_format_verdict_word_for_word():
    assert format_verdict(VERDICTS["verdicts"][0], VERDICTS) == (
        "sanitycheck: gradient FAILED cascading_randomization (suite s v1.0.0): spearman_abs at fc2 = 0.507 "
        "[95% CI 0.481, 0.533], n=32; threshold: upper CI bound < 0.50 (all_steps)\n  reason: FAIL: r1")
    assert format_verdict(VERDICTS["verdicts"][1], VERDICTS) == (
        "sanitycheck: sobel FAILED data_randomization (suite s v1.0.0): spearman_abs at random_labels = undefined "
        "[95% CI undefined, undefined], n=0; threshold: upper CI bound < 0.50 (final_step)\n  reason: FAIL: r2")


def test_cli_gate_options_are_the_same_definitions():
    parser = argparse.ArgumentParser()
    add_gate_options(parser)
    assert {a.dest for a in parser._actions} >= {o.dest for o in GATE_OPTIONS}
    assert gate_expr(parser.parse_args([])) == "none" and gate_messages(VERDICTS, parser.parse_args([])) == []
    assert gate_expr(parser.parse_args(["--strict"])) == "any"
    ns = parser.parse_args(["--fail-on", "sobel:* , gradient:nothing"])
    assert gate_expr(ns) == "sobel:*,gradient:nothing"
    assert [m.split("\n")[0] for m in gate_messages(VERDICTS, ns)] == [
        "sanitycheck: sobel FAILED data_randomization (suite s v1.0.0): spearman_abs at random_labels = undefined "
        "[95% CI undefined, undefined], n=0; threshold: upper CI bound < 0.50 (final_step)"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--fail-on", "a:b:c"])


def test_random_label_model_reaches_data_randomization(sanity, tiny_cnn):
    """The fixture in this very session: a dict suite, x alone (labels: predictions), random_label_model=."""
    import yaml

    from helpers import digits_batch, make_tiny_cnn

    suite = yaml.safe_load(SUITE)
    suite["checks"] = [{"name": "data_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5,
                                                                  "rule": "final_step"}}]
    suite["min_n"] = 4  # 8 images: below the default min_n (10), which would decide "insufficient data"
    x, _ = digits_batch(8)
    report = sanity.run("gradient", tiny_cnn, x, suite=suite, random_label_model=make_tiny_cnn(1))
    assert report.checks == ["data_randomization"] and report.explainers == ["gradient"]
    assert report.record("data_randomization", "random_labels")["n"] == 8
    assert report.record("data_randomization", 1) == report.record("data_randomization", "random_labels")
    assert report.verdict()["step"] == "random_labels"
    with pytest.raises(Exception, match="no check 'cascading_randomization'"):
        report.assert_passes("cascading_randomization")


POLICY_TEST = '''
from conftest import gradient


def test_policy_reaches_the_report(sanity, model, data, request):
    report = sanity.run(gradient, model, data)
    assert report.inconclusive == request.config.getoption("sanity_inconclusive")
    assert report.status("cascading_randomization") == "pass"
'''


@pytest.mark.parametrize("policy", ["fail", "pass", "ignore"])
def test_sanity_inconclusive_option_reaches_the_fixture(project, policy):
    project.makepyfile(test_policy=POLICY_TEST)
    result = project.runpytest("--sanity-suite", "tiny.yaml", "--sanity-inconclusive", policy, "test_policy.py")
    result.assert_outcomes(passed=1)


def test_bad_sanity_inconclusive_is_a_usage_error(project):
    result = project.runpytest("--sanity-inconclusive", "maybe", "--collect-only")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--inconclusive must be one of fail, pass, ignore*"])


def test_the_sanity_fixture_audits_a_text_suite(sanity, tmp_path):
    """The plugin picks the run class by the suite's input kind: a text suite, a text model and a text dataset
    are audited like an image suite, token explainers resolved by name."""
    import sanitycheck as sc

    tiny = {"encoder": "bilstm", "attention": "additive", "embed_dim": 16, "hidden": 8, "epochs": 2,
            "dataset_params": {}}
    model = sc.load_model("text_attention", dataset="synthetic_sentiment", cache_dir=str(tmp_path / "models"),
                          progress=False, **tiny)
    data = sc.load_dataset("synthetic_sentiment", split="test")
    suite = {"name": "plugin_text", "version": "0.0.1", "description": "test", "input_kind": "text", "seed": 0,
             "batch_size": 16, "dataset": {"name": "synthetic_sentiment", "split": "test", "n": 16},
             "model": {"name": "text_attention", "params": tiny}, "explainers": ["gradient", "random_tokens"],
             "metrics": ["token_kendall_abs"],
             "checks": [{"name": "cascading_randomization", "verdict": {"metric": "token_kendall_abs", "threshold": 0.5}}]}
    report = sanity.run({"gradient": "gradient", "random_tokens": "random_tokens"}, model, data, suite=suite, n=16)
    assert report.results["input_kind"] == "text" and report.results["dataset"]["n"] == 16
    assert sorted(report.explainers) == ["gradient", "random_tokens"]
    report.assert_fails("cascading_randomization", "random_tokens")  # the control ignores the model
    assert report.status("cascading_randomization", "gradient") in {"pass", "fail", "inconclusive"}
