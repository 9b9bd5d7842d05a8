"""Text audits end to end on a tiny attention model trained here: records, verdicts, resume, bad input,
publishing and re-run validation — the same results.json contract as the image audits."""

from __future__ import annotations

import json

import pytest
import torch

from sanitycheck.errors import ConfigError, DataError
from sanitycheck.engine import audit_run_for
from sanitycheck.suites import parse_suite
from sanitycheck.data.text import text_subset
from sanitycheck.engine import AuditRun

TINY = {"encoder": "bilstm", "attention": "additive", "embed_dim": 16, "hidden": 8, "epochs": 2,
        "dataset_params": {}}


CHECKS = [
    {"name": "importance_agreement", "params": {"audited": ["attention", "gradient"],
                                                "references": ["gradient", "leave_one_out"]},
     "verdict": {"metric": "kendall_tau", "threshold": 0.5, "rule": "all_steps", "direction": "above"}},
    {"name": "attention_permutation", "params": {"n_permutations": 20},
     "verdict": {"metric": "median_output_change", "threshold": 0.05, "rule": "final_step", "direction": "above"}},
    {"name": "adversarial_attention", "params": {"k": 3, "steps": 30},
     "verdict": {"metric": "max_jsd", "threshold": 0.35, "rule": "final_step", "direction": "below"}},
    {"name": "cascading_randomization", "verdict": {"metric": "token_kendall_abs", "threshold": 0.5}},
]


def suite_data(checks=None, explainers=None, n=24, model=None):
    return {
        "name": "tiny_text", "version": "0.0.1", "description": "test", "input_kind": "text", "seed": 0,
        "batch_size": 16, "figure_images": 2,
        "dataset": {"name": "synthetic_sentiment", "split": "test", "n": n},
        "model": model or {"name": "text_attention", "params": TINY},
        "explainers": explainers or ["attention", "gradient", "leave_one_out", "random_tokens"],
        "metrics": ["token_kendall_abs", "token_topk_overlap"], "checks": checks or CHECKS}


def suite(**kw):
    return parse_suite(suite_data(**kw))


@pytest.fixture(scope="module", autouse=True)
def suite_dir(tmp_path_factory):
    """The default tiny suite as a file on SANITYCHECK_SUITES (validation and publishing look suites up by name)."""
    import os

    import yaml

    d = tmp_path_factory.mktemp("suites")
    (d / "tiny_text.yaml").write_text(yaml.safe_dump(suite_data()))
    old = os.environ.get("SANITYCHECK_SUITES")
    os.environ["SANITYCHECK_SUITES"] = str(d)
    yield d
    if old is None:
        os.environ.pop("SANITYCHECK_SUITES", None)
    else:
        os.environ["SANITYCHECK_SUITES"] = old


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def results(tmp_path_factory, cache):
    from sanitycheck.suites import load_suite

    out = tmp_path_factory.mktemp("run")
    return out, audit_run_for(load_suite("tiny_text"), out_dir=out, cache_dir=cache, progress=False).execute()


def _record(res, explainer, check, step, metric):
    return next(r for r in res["records"] if (r["explainer"], r["check"], r["step"], r["metric"]) ==
                (explainer, check, step, metric))


def test_a_text_suite_runs_through_the_engine_and_writes_the_common_schema(results):
    from sanitycheck.validation import static_problems

    out, res = results
    assert res["input_kind"] == "text" and res["dataset"]["n"] == 24
    assert static_problems(res) == []
    assert (out / "results.json").is_file()
    assert res["examples"]["text"] and "image" not in res["examples"]
    assert {f for files in res["figures"].values() for f in files} >= {
        "adversarial_attention_examples.png", "importance_agreement_attention_hist.png",
        "attention_permutation_hist.png", "cascading_randomization_text0.png"}


def test_agreement_records_pair_the_audited_method_with_each_reference(results):
    _, res = results
    agree = {(r["explainer"], r["step"]) for r in res["records"] if r["check"] == "importance_agreement"}
    assert agree == {("attention", "gradient"), ("attention", "leave_one_out"), ("gradient", "leave_one_out")}
    sig = _record(res, "attention", "importance_agreement", "gradient", "significant")
    assert 0.0 <= sig["mean"] <= 1.0 and sig["n"] + sig["n_undefined"] == 24


def test_agreement_scores_are_scipy_kendall_tau_of_magnitudes(tmp_path, cache):
    from scipy.stats import kendalltau

    run = AuditRun(suite(checks=[{"name": "importance_agreement", "params": {"references": ["gradient"]}}]),
                       out_dir=tmp_path, cache_dir=cache, progress=False, figures=False)
    res = run.execute()
    originals = run.original_maps()
    taus = res["per_sample"]["attention"]["importance_agreement"]["gradient"]["kendall_tau"]
    for i in (0, 5, 11):
        n = int(run.inputs.batch.lengths[i])
        a, g = originals["attention"][i, :n].abs().numpy(), originals["gradient"][i, :n].abs().numpy()
        assert taus[i] == pytest.approx(kendalltau(a, g).statistic, abs=1e-6)


def test_attention_level_checks_record_only_the_attention(results):
    _, res = results
    for check in ("attention_permutation", "adversarial_attention"):
        assert {r["explainer"] for r in res["records"] if r["check"] == check} == {"attention"}
    jsd = _record(res, "attention", "adversarial_attention", "score", "max_jsd")
    assert jsd["mean"] is None or 0.0 <= jsd["mean"] <= 0.6932


def test_verdicts_state_threshold_and_direction(results):
    _, res = results
    v = next(v for v in res["verdicts"] if v["check"] == "adversarial_attention")
    assert "0.35" in v["reason"] and "upper 95% CI bound" in v["reason"]
    v = next(v for v in res["verdicts"] if v["check"] == "importance_agreement" and v["explainer"] == "attention")
    assert "lower 95% CI bound" in v["reason"] and "above 0.50" in v["reason"]


def test_the_model_independent_control_fails_cascading_randomization(results):
    _, res = results
    v = next(v for v in res["verdicts"] if v["check"] == "cascading_randomization" and v["explainer"] == "random_tokens")
    assert not v["passed"] and v["measured"] == pytest.approx(1.0)
    g = next(v for v in res["verdicts"] if v["check"] == "cascading_randomization" and v["explainer"] == "gradient")
    assert g["measured"] < 1.0


def test_an_interrupted_text_run_resumes_from_its_cache(tmp_path, cache, monkeypatch):
    import sanitycheck.checks.adversarial_attention as adv

    s = suite()
    first = audit_run_for(s, out_dir=tmp_path, cache_dir=cache, progress=False, figures=False).execute()

    def boom(*a, **k):
        raise AssertionError("recomputed a cached check")

    monkeypatch.setattr(adv, "adversarial_attention", boom)
    monkeypatch.setattr(adv, "permutation_test", boom)
    again = audit_run_for(s, out_dir=tmp_path, cache_dir=cache, progress=False, figures=False).execute()
    assert again["records"] == first["records"]


def test_a_suite_without_the_attention_explainer_is_refused_for_attention_checks(tmp_path, cache):
    s = suite(explainers=["gradient"], checks=[{"name": "attention_permutation"}])
    with pytest.raises(ConfigError, match="list the explainer 'attention'"):
        audit_run_for(s, out_dir=tmp_path, cache_dir=cache, progress=False, figures=False).execute()


def test_a_model_without_attention_is_not_applicable_and_recorded(tmp_path, cache):
    from sanitycheck.models.text_zoo import text_attention

    model = text_attention("synthetic_sentiment", cache_dir=cache, progress=False,
                           **{k: v for k, v in TINY.items() if k != "dataset_params"})
    model.has_attention = False
    s = suite(explainers=["attention", "gradient"], checks=[{"name": "attention_permutation"}])
    res = AuditRun(s, out_dir=tmp_path, model=model, progress=False, figures=False).execute()
    assert "has no attention" in res["not_applicable"]["attention_permutation"]
    assert not [r for r in res["records"] if r["check"] == "attention_permutation"]


def test_labels_unseen_in_training_are_refused(tmp_path, cache):
    from sanitycheck.data.text import load_babi1

    with pytest.raises(DataError, match="unseen in training"):
        AuditRun(suite(checks=[{"name": "attention_permutation"}]), out_dir=tmp_path, cache_dir=cache,
                     dataset=load_babi1("test", n=30), progress=False, figures=False).execute()


def test_an_image_metric_in_a_text_suite_is_a_clear_error():
    with pytest.raises(ConfigError, match="token metrics"):
        parse_suite({**suite_data(checks=[{"name": "cascading_randomization",
                                           "verdict": {"metric": "spearman_abs", "threshold": 0.5}}]),
                     "metrics": ["spearman_abs"]})


def test_text_subset_keeps_queries_and_rationales_aligned():
    from sanitycheck.data.text import load_babi1

    ds = load_babi1("test", n=6)
    sub = text_subset(ds, [4, 1])
    assert sub.texts == [ds.texts[4], ds.texts[1]] and sub.queries == [ds.queries[4], ds.queries[1]]
    assert sub.labels.tolist() == [int(ds.labels[4]), int(ds.labels[1])]
    with pytest.raises(DataError):
        text_subset(ds, [6])


def test_published_text_results_validate_and_a_forged_score_is_caught(tmp_path, results, cache):
    # the re-run loads the model from the run's own cache: a model trained elsewhere has other weights, refused
    from sanitycheck.submissions import publish_run, validate_file

    out, res = results
    doc = json.loads((out / "results.json").read_text())
    paths = publish_run(doc, root=tmp_path / "lb")
    gradient = next(p for p in paths if p.parent.name == "gradient")
    assert validate_file(gradient, work_root=tmp_path / "val", cache_dir=cache) == []
    forged = json.loads(gradient.read_text())
    scores = forged["per_sample"]["gradient"]["cascading_randomization"]["decoder"]["token_kendall_abs"]
    forged["per_sample"]["gradient"]["cascading_randomization"]["decoder"]["token_kendall_abs"] = [
        None if v is None else min(1.0, v + 0.3) for v in scores]
    from sanitycheck.stats import bootstrap_ci

    # keep the forgery self-consistent: records recomputed from the forged scores
    vals = torch.tensor([float("nan") if v is None else v for v in
                         forged["per_sample"]["gradient"]["cascading_randomization"]["decoder"]["token_kendall_abs"]],
                        dtype=torch.float64)
    rec = next(r for r in forged["records"] if r["step"] == "decoder" and r["metric"] == "token_kendall_abs"
               and r["check"] == "cascading_randomization")
    s = bootstrap_ci(vals, seed_parts=(0, "bootstrap", "cascading_randomization", "gradient"))
    rec.update(mean=s.mean, ci_low=s.ci_low, ci_high=s.ci_high)
    gradient.write_text(json.dumps(forged))
    problems = validate_file(gradient, work_root=tmp_path / "val2", cache_dir=cache)
    assert problems and ("tampered" in problems[0] or "irreproducible" in problems[0])


WP_CHECKS = [
    {"name": "uniform_attention",
     "verdict": {"metric": "accuracy_drop", "threshold": 0.0, "rule": "final_step", "direction": "above"}},
    {"name": "seed_variance", "params": {"seeds": [1]}},
    {"name": "diagnostic_mlp", "params": {"adversary_lambda": 0.0001},
     "verdict": {"metric": "gain_over_uniform", "threshold": 0.0, "rule": "final_step", "direction": "above"}},
    {"name": "adversarial_training", "params": {"lambdas": [0.0, 0.01]}},
]


@pytest.fixture(scope="module")
def wp_results(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("wp")
    s = suite(checks=WP_CHECKS, explainers=["attention"], n=40)
    return out, audit_run_for(s, out_dir=out, cache_dir=cache, progress=False).execute()


def test_uniform_attention_drop_is_the_difference_of_the_two_accuracies(wp_results):
    _, res = wp_results
    per = res["per_sample"]["attention"]["uniform_attention"]["score"]
    assert per["accuracy_drop"] == pytest.approx([a - b for a, b in zip(per["correct"], per["correct_uniform"])])
    stats = {s["step"]: s for s in res["summaries"]["uniform_attention"]}
    assert set(stats) == {"trained attention", "uniform attention"}
    for s in stats.values():
        assert s["n"] == 40 and s["ci_low"] <= s["value"] <= s["ci_high"]


def test_diagnostic_guides_run_in_order_and_gain_is_relative_to_uniform(wp_results):
    _, res = wp_results
    info = res["checks"]["diagnostic_mlp"]
    assert info["steps"] == ["uniform", "trained_mlp", "adversary", "base"]
    per = res["per_sample"]["attention"]["diagnostic_mlp"]
    assert per["uniform"]["gain_over_uniform"] == [0.0] * 40
    assert per["base"]["gain_over_uniform"] == pytest.approx(
        [a - b for a, b in zip(per["base"]["correct"], per["uniform"]["correct"])])
    assert [s["step"] for s in res["summaries"]["diagnostic_mlp"]] == info["steps"]


def test_lambda_sweep_records_each_lambda_and_draws_the_tradeoff(wp_results):
    out, res = wp_results
    assert res["checks"]["adversarial_training"]["steps"] == ["lambda=0", "lambda=0.01"]
    jsd = {r["step"]: r["mean"] for r in res["records"] if r["metric"] == "attention_jsd"
           and r["check"] == "adversarial_training"}
    assert all(0.0 <= v <= 0.6932 for v in jsd.values())
    assert (out / "adversarial_training_tradeoff.png").is_file()
    assert res["checks"]["seed_variance"]["steps"] == ["seed=1"]


def test_checks_that_retrain_need_a_jain_wallace_model(tmp_path, cache):
    from sanitycheck.models.text_zoo import text_attention

    model = text_attention("synthetic_sentiment", cache_dir=cache, progress=False,
                           **{k: v for k, v in TINY.items() if k != "dataset_params"})
    model.sanitycheck_spec = None  # as for the MiniLM classifier
    s = suite(checks=[{"name": "seed_variance"}], explainers=["attention"])
    res = AuditRun(s, out_dir=tmp_path, model=model, progress=False, figures=False).execute()
    assert "text_attention" in res["not_applicable"]["seed_variance"]


def test_a_text_rerun_with_other_explainers_recomputes_the_text_checks_and_keeps_both(tmp_path, cache):
    """A text check's cache file holds every explainer's results: it is keyed by the explainers' specs, so a
    rerun with another set of explainers into the same --out does not read the first set's file."""
    s = suite()
    checks = ["importance_agreement", "cascading_randomization"]
    kw = dict(cache_dir=cache, progress=False, figures=False, checks=checks)
    audit_run_for(s, out_dir=tmp_path / "out", explainers=["attention", "gradient", "leave_one_out"], **kw).execute()
    both = audit_run_for(s, out_dir=tmp_path / "out", explainers=["attention", "gradient", "leave_one_out",
                                                                  "random_tokens"], **kw).execute()
    fresh = audit_run_for(s, out_dir=tmp_path / "fresh", explainers=["attention", "gradient", "leave_one_out",
                                                                     "random_tokens"], **kw).execute()
    assert len(list((tmp_path / "out" / "cache" / "units" / "importance_agreement" / "all").glob("all-*.pt"))) == 2
    assert both["records"] == fresh["records"] and both["verdicts"] == fresh["verdicts"]
    assert "random_tokens" in both["per_sample"]


def test_a_text_run_is_redrawn_from_its_documents_alone(results, wp_results, tmp_path, monkeypatch):
    """Token heat maps, histograms, adversarial examples and the W&P trade-off come back byte for byte from
    results.json and the figure maps, with no model (loading one, or running an explainer, fails here)."""
    import shutil

    import sanitycheck.explainers.base as explainer_base
    import sanitycheck.models as models
    from sanitycheck.cli import main

    def refuse(*a, **k):
        raise AssertionError("figures must not load a model or run an explainer")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(explainer_base, "call_explainer", refuse)
    for i, (out, res) in enumerate((results, wp_results)):
        assert res["files"] == {"figure_maps": "figure_maps.pt"}
        before = {p.name: p.read_bytes() for p in out.glob("*.png")}
        assert set(before) == {f for files in res["figures"].values() for f in files}
        copy = tmp_path / f"copy{i}"
        shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.png", "cache"))
        assert main(["figures", str(copy)]) == 0
        assert {p.name: p.read_bytes() for p in copy.glob("*.png")} == before
