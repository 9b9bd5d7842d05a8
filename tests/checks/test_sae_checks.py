"""The SAE checks' statistics and verdicts (issue 15), on synthetic numbers: the batched bootstrap AUROC against
scikit-learn, the grouped (per-text) resampling, the independent-samples difference, and ``decide`` recomputed from
recorded summaries alone."""

from __future__ import annotations

import json

import pytest
import torch

from sanitycheck.checks.base import RecordedAudit
from sanitycheck.checks.sae import (ALL_DEAD, SAEBaselines, SAERandomizedControl, grouped_resamples,
                                    independent_difference_ci, token_concept_labels, weighted_auroc)
from sanitycheck.errors import ConfigError


def test_weighted_auroc_with_unit_weights_is_sklearns_auroc_including_ties():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 7, (300,), generator=g).double()  # many ties
    labels = (torch.rand(300, generator=g) < 0.4).long()
    ours = weighted_auroc(scores, labels, torch.ones(1, 300, dtype=torch.float64))
    assert float(ours[0]) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)


def test_weighted_auroc_with_integer_weights_equals_auroc_of_the_repeated_sample():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(1)
    scores, labels = torch.randn(50, generator=g).double(), (torch.rand(50, generator=g) < 0.5).long()
    w = torch.randint(0, 3, (4, 50), generator=g).double()
    ours = weighted_auroc(scores, labels, w)
    for row in range(4):
        rep = w[row].long()
        s, y = scores.repeat_interleave(rep), labels.repeat_interleave(rep)
        assert float(ours[row]) == pytest.approx(roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)


def test_grouped_resamples_keep_a_texts_tokens_together():
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    w = grouped_resamples(groups, 200, seed_parts=(0, "t"))
    for g in groups.unique():
        cols = w[:, groups == g]
        assert bool((cols == cols[:, :1]).all())  # one count per text
    firsts = torch.tensor([0, 3, 5, 6])
    assert bool((w[:, firsts].sum(1) == 4).all())  # 4 texts drawn with replacement per resample
    assert torch.equal(w, grouped_resamples(groups, 200, seed_parts=(0, "t")))  # seeded


def test_independent_difference_ci_excludes_zero_only_for_a_real_difference():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(400, generator=g).double()
    same = independent_difference_ci(a, torch.rand(400, generator=g).double(), seed_parts=(0, "x"), n_boot=500)
    shifted = independent_difference_ci(a + 0.2, a, seed_parts=(0, "x"), n_boot=500)
    assert same["ci_low"] < 0 < same["ci_high"]
    assert shifted["ci_low"] > 0 and shifted["value"] == pytest.approx(0.2)
    nan = torch.full((5,), float("nan"), dtype=torch.float64)
    assert independent_difference_ci(nan, a, seed_parts=(0, "x"))["value"] is None


def _control_summary(name, measure, value, lo, hi, site="review_lm.mlp", control="randomized_all"):
    check = SAERandomizedControl()
    d = {"value": value, "ci_low": lo, "ci_high": hi, "n_a": 40, "n_b": 38}
    return json.loads(json.dumps(check.summary(name, site, control, measure, d, {})))


def test_randomized_control_verdicts_follow_the_recorded_intervals():
    check = SAERandomizedControl()
    rows = [_control_summary("sae_relu", "token_identity", -0.10, -0.15, -0.05),
            _control_summary("sae_relu", "sparse_probing", 0.04, -0.01, 0.09),
            _control_summary("sae_topk", "token_identity", 0.20, 0.10, 0.30),
            _control_summary("sae_topk", "sparse_probing", 0.10, 0.02, 0.18),
            _control_summary("dead", "token_identity", None, None, None)]
    verdicts = {v.explainer: v for v in check.decide(RecordedAudit("sae_randomized_control", [], rows, {}))}
    assert verdicts["sae_relu"].status == "fail" and "sparse_probing" in verdicts["sae_relu"].reason
    assert "token_identity" not in verdicts["sae_relu"].reason.split("cannot separate")[1].split(".")[0]
    assert verdicts["sae_topk"].status == "pass" and verdicts["sae_topk"].threshold == 0.0
    assert verdicts["dead"].status == "undefined" and ALL_DEAD in verdicts["dead"].reason


def test_baseline_verdict_fails_only_where_the_probe_is_significantly_worse():
    check = SAEBaselines()
    row = lambda name, step, lo, hi: {"check": "sae_baselines", "explainer": name, "step": step,  # noqa: E731
                                      "statistic": "probe_minus_best_baseline", "baseline": "logistic_probe",
                                      "a": 0.8, "b": 0.9, "value": (lo + hi) / 2, "ci_low": lo, "ci_high": hi,
                                      "n": 100, "worse": hi < 0}
    rows = [row("sae_relu", "s|negation_scope", -0.2, -0.05), row("sae_relu", "s|after_but", -0.05, 0.02),
            row("sae_topk", "s|negation_scope", -0.04, 0.01),
            # 0.99997 against 1.0: significantly lower, but within the non-inferiority margin (0.01)
            row("sae_topk", "s|babi_entity", -0.00005, -0.00001)]
    verdicts = {v.explainer: v for v in check.decide(RecordedAudit("sae_baselines", [], rows, {}))}
    assert verdicts["sae_relu"].status == "fail" and "negation_scope" in verdicts["sae_relu"].reason
    assert verdicts["sae_relu"].measured == pytest.approx(-0.05) and verdicts["sae_relu"].threshold == -0.01
    assert verdicts["sae_topk"].status == "pass"
    strict = SAEBaselines(margin=0.0).decide(RecordedAudit("sae_baselines", [], rows, {}))
    assert {v.explainer: v.status for v in strict}["sae_topk"] == "fail"


def test_checks_refuse_unknown_controls_and_measures():
    with pytest.raises(ConfigError, match="controls"):
        SAERandomizedControl(controls=["randomized_half"])
    with pytest.raises(ConfigError, match="measures"):
        SAERandomizedControl(measures=["autointerp"])


def test_token_concept_labels_follow_each_tokens_word():
    class Corpus:
        concepts = {"c": [[0, 1, 1], [1, 0]]}

    class Acts:
        doc = torch.tensor([0, 0, 0, 0, 1, 1, 1])
        word_index = torch.tensor([0, 1, 1, 2, -1, 0, 1])  # word pieces repeat a word; -1: a special token

    assert token_concept_labels(Corpus, Acts, "c").tolist() == [0, 1, 1, 1, -1, 1, 0]


def test_the_l1_coefficient_may_be_given_per_site():
    from sanitycheck.explainers.sae import ReluSAE

    sae = ReluSAE(l1_coefficient={"minilm.layer2": 1.0, "default": 3.0})
    assert sae.sae_config(384, hook_name="minilm.layer2").l1_coefficient == 1.0
    assert sae.sae_config(512, hook_name="review_lm.mlp").l1_coefficient == 3.0
    assert ReluSAE(l1_coefficient=2.0).sae_config(8, hook_name="x").l1_coefficient == 2.0
    with pytest.raises(ConfigError, match="l1_coefficient"):
        ReluSAE(l1_coefficient={"minilm.layer2": -1.0})
