"""The SAE audit (issue 15) through the one engine, on a tiny LM: records, verdicts decided from what results.json
records and re-validated, a resumed run, an SAE from disk (--sae PATH), and the bad inputs the issue lists.

The real suite (``sae_features``: the review LM and MiniLM) runs in ``make run``'s audit and on the board; these tests
use a tiny one-layer LM (``tests/sae_lm_fixtures.py``) so they take seconds."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from sae_lm_fixtures import trained_tiny_source
from sanitycheck.errors import ConfigError, SAEFormatError
from sanitycheck.models.activation_sites import ActivationSites

SUITE = {
    "name": "sae_tiny", "version": "0.0.1", "description": "tiny SAE audit", "seed": 0, "batch_size": 16,
    "input_kind": "activations",
    "dataset": {"name": "review_words", "split": "test", "n": 16, "params": {"train_n": 48, "concepts_n": 96}},
    "model": {"name": "activation_sites", "params": {"sites": ["review_lm.mlp"]}},
    "explainers": [{"sae_relu": {"expansion": 2, "train_tokens": 3000, "batch_size": 256}},
                   {"sae_topk": {"expansion": 2, "k": 4, "train_tokens": 3000, "batch_size": 256}}],
    "metrics": ["fvu_relative_change"],
    "checks": [{"name": "sae_reconstruction"}, {"name": "sae_seed_similarity"},
               {"name": "sae_splitting", "params": {"expansions": [1, 2]}},
               {"name": "sae_randomized_control"}, {"name": "sae_baselines", "params": {"k": 2}}],
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from sanitycheck.engine import run_suite

    root = tmp_path_factory.mktemp("saetiny")
    (root / "suites").mkdir()
    (root / "suites" / "sae_tiny.yaml").write_text(yaml.safe_dump(SUITE))
    mp = pytest.MonkeyPatch()
    mp.setenv("SANITYCHECK_SUITES", str(root / "suites"))
    mp.setenv("SANITYCHECK_CACHE", str(root / "cache"))
    sites = ActivationSites({"tiny_lm.mlp": trained_tiny_source()})
    results = run_suite("sae_tiny", out=root / "run", model=sites, progress=False, figures=False)
    yield root, sites, results
    mp.undo()


def test_every_check_records_under_each_dictionary_with_cis(tiny_run):
    _, _, results = tiny_run
    recs = [r for r in results["records"] if r["check"] == "sae_reconstruction" and r["metric"] == "fvu"]
    assert {r["explainer"] for r in recs} == {"sae_relu", "sae_topk"}
    assert all(r["n"] + r["n_undefined"] == 16 and r["ci_low"] <= r["mean"] <= r["ci_high"] for r in recs)
    assert results["checks"]["sae_seed_similarity"]["sample_unit"] == "latents"
    summaries = results["summaries"]["sae_reconstruction"]
    assert {s["statistic"] for s in summaries} >= {"loss_recovered", "dead_fraction", "dense_fraction"}
    steps = results["checks"]["sae_randomized_control"]["steps"]
    assert steps == ["tiny_lm.mlp|trained", "tiny_lm.mlp|randomized_all", "tiny_lm.mlp|randomized_keep_embeddings"]


def test_the_audits_verdicts_state_threshold_value_and_reason_and_are_revalidated(tiny_run, monkeypatch):
    from sanitycheck.suites import load_suite
    from sanitycheck.validation import aggregate_problems, schema_problems, size_problems, verdict_problems

    root, _, results = tiny_run
    monkeypatch.setenv("SANITYCHECK_SUITES", str(root / "suites"))
    verdicts = {(v["explainer"], v["check"]): v for v in results["verdicts"]}
    for name in ("sae_relu", "sae_topk"):
        for check in ("sae_randomized_control", "sae_baselines"):
            v = verdicts[(name, check)]
            assert v["status"] in ("pass", "fail", "undefined")
            assert v["threshold"] == (-0.01 if check == "sae_baselines" else 0.0)
            assert v["reason"].startswith(v["status"].upper())
    suite = load_suite("sae_tiny")
    assert schema_problems(results) == [] and size_problems(results) == [] and aggregate_problems(results) == []
    assert verdict_problems(results, suite) == []
    forged = json.loads(json.dumps(results))
    v = next(v for v in forged["verdicts"] if v["check"] == "sae_baselines")
    flipped = "pass" if v["status"] != "pass" else "fail"
    v.update(status=flipped, passed=flipped == "pass")
    assert any("tampered" in p for p in verdict_problems(forged, suite))
    # a forged summary moves the recomputed verdict too: the decision reads only what is recorded
    forged = json.loads(json.dumps(results))
    for s in forged["summaries"]["sae_randomized_control"]:
        if s["explainer"] == "sae_relu" and s["statistic"].endswith("_difference"):
            s.update(ci_low=0.5, ci_high=0.6, separates=True)
    fresh = {(v["explainer"], v["check"]): v for v in results["verdicts"]}
    if fresh[("sae_relu", "sae_randomized_control")]["status"] != "pass":
        assert verdict_problems(forged, suite)


def test_a_second_run_into_the_same_out_resumes_with_the_same_numbers(tiny_run, monkeypatch):
    from sanitycheck.engine import run_suite

    root, sites, results = tiny_run
    monkeypatch.setenv("SANITYCHECK_SUITES", str(root / "suites"))
    monkeypatch.setenv("SANITYCHECK_CACHE", str(root / "cache"))
    again = run_suite("sae_tiny", out=root / "run", model=sites, progress=False, figures=False)
    assert again["records"] == results["records"] and again["verdicts"] == results["verdicts"]


def test_an_sae_from_disk_is_audited_and_a_wrong_width_is_refused(tiny_run, tmp_path, monkeypatch):
    from sanitycheck.engine import run_suite
    from sanitycheck.models.sae import SAEConfig, SparseAutoencoder, save_sae

    root, sites, _ = tiny_run
    monkeypatch.setenv("SANITYCHECK_SUITES", str(root / "suites"))
    monkeypatch.setenv("SANITYCHECK_CACHE", str(root / "cache"))
    d_in = sites.sources["tiny_lm.mlp"].d_in
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=2 * d_in, architecture="topk", k=4, train_tokens=3000,
                                      batch_size=256))
    with torch.no_grad():  # a dictionary whose every latent is dead: recorded as undefined, with the reason
        sae.W_enc.normal_(generator=torch.Generator().manual_seed(0))
        sae.W_dec.copy_(sae.W_enc.T)
        sae.b_enc.fill_(-1e6)
    path = save_sae(sae, tmp_path / "dead_sae")
    results = run_suite("sae_tiny", out=tmp_path / "run", model=sites, progress=False, figures=False,
                        checks=["sae_reconstruction", "sae_randomized_control"],
                        explainer_params={"sae_file": {"path": str(path)}})
    assert results["explainers"]["sae_file"]["config"]["d_sae"] == 2 * d_in
    control = next(v for v in results["verdicts"] if v["explainer"] == "sae_file"
                   and v["check"] == "sae_randomized_control")
    assert control["status"] == "undefined" and "dead" in control["reason"]
    wide = SparseAutoencoder(SAEConfig(d_in=d_in + 1, d_sae=8, architecture="topk", k=2))
    bad = save_sae(wide, tmp_path / "wide_sae")
    with pytest.raises(ConfigError, match="width"):
        run_suite("sae_tiny", out=tmp_path / "run_wide", model=sites, progress=False, figures=False,
                  checks=["sae_reconstruction"], explainer_params={"sae_file": {"path": str(bad)}})
    (bad / "cfg.json").write_text(json.dumps({"architecture": "topk"}))
    with pytest.raises(SAEFormatError, match="d_in"):
        run_suite("sae_tiny", out=tmp_path / "run_cfg", model=sites, progress=False, figures=False,
                  checks=["sae_reconstruction"], explainer_params={"sae_file": {"path": str(bad)}})


def test_the_shipped_suite_parses_and_names_registered_parts():
    from sanitycheck.checks.base import get_check
    from sanitycheck.suites import load_suite

    suite = load_suite("sae_features")
    assert suite.input_kind == "activations" and set(suite.explainer_names) == {"sae_relu", "sae_topk"}
    for spec in suite.checks:
        assert get_check(spec.name, **spec.params).unit == "check"


def test_unknown_site_names_close_matches():
    from sanitycheck.models.activation_sites import site_source

    with pytest.raises(ConfigError, match="did you mean minilm.layer2"):
        site_source("minilm.layr2")
