"""Reliability of saliency metrics (Tomsett et al. 2020) and Krippendorff's alpha."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from sanitycheck.errors import ConfigError
from sanitycheck.metrics.reliability import (Reliability, inter_method_reliability, inter_rater_reliability,
                                             internal_consistency, krippendorff_alpha, ranking_agreement)

nan = float("nan")
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 observers, 12 units, missing data
KRIPPENDORFF_2011 = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
    [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
])


@pytest.mark.parametrize("level, expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                             ("ratio", 0.797)])
def test_krippendorff_worked_example(level, expected):
    out = krippendorff_alpha(KRIPPENDORFF_2011, level)
    assert round(out.value, 3) == expected
    assert (out.n_raters, out.n_units) == (4, 11)  # unit 12 has a single rating: not pairable
    assert "dropped" in out.note


def test_krippendorff_accepts_torch_and_perfect_agreement_is_one():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, nan, 4.0]])
    for level in ("nominal", "ordinal", "interval", "ratio"):
        assert krippendorff_alpha(r, level).value == pytest.approx(1.0)


def test_krippendorff_undefined_cases():
    assert math.isnan(krippendorff_alpha(np.ones((3, 5))).value)  # no variation
    out = krippendorff_alpha(np.array([[1.0, nan], [nan, 2.0]]))
    assert math.isnan(out.value) and "two raters" in out.note
    with pytest.raises(ConfigError):
        krippendorff_alpha(np.ones((2, 2)), level="bogus")
    with pytest.raises(ConfigError):
        krippendorff_alpha(np.ones(3))


def test_krippendorff_matches_the_krippendorff_package_on_random_data():
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(0)
    for t in range(40):
        n_raters, n_units, k = rng.integers(2, 7), rng.integers(3, 30), rng.integers(2, 6)
        base = rng.integers(0, k, n_units)
        r = np.where(rng.random((n_raters, n_units)) < 0.7, base, rng.integers(0, k, (n_raters, n_units)))
        r = r.astype(float) + (t % 2) * np.round(rng.random((n_raters, n_units)), 1)
        r[rng.random(r.shape) < 0.2] = nan
        for level in ("nominal", "ordinal", "interval", "ratio"):
            ours = krippendorff_alpha(r, level).value
            with np.errstate(all="ignore"):
                ref = krippendorff.alpha(reliability_data=r, level_of_measurement=level)
            assert ours == pytest.approx(ref, abs=1e-9, nan_ok=True)


# ----------------------------------------------------------------------------- Tomsett et al.

def test_inter_rater_reliability_identical_rankings_is_one():
    # 4 methods, 50 images; every image orders the methods the same way (scores differ per image)
    rng = np.random.default_rng(1)
    scores = np.array([1.0, 2.0, 3.0, 4.0])[:, None] * (1 + rng.random(50))[None, :]
    out = inter_rater_reliability(scores)
    assert out.value == pytest.approx(1.0)
    assert (out.n_raters, out.n_units) == (50, 4)
    assert inter_rater_reliability(scores, higher_is_better=False).value == pytest.approx(1.0)


def test_inter_rater_reliability_of_random_scores_is_near_zero():
    rng = np.random.default_rng(2)
    out = inter_rater_reliability(rng.random((6, 400)))
    assert abs(out.value) < 0.1


def test_inter_rater_reliability_drops_incomplete_images_and_handles_few_methods():
    scores = np.tile(np.arange(3.0)[:, None], (1, 10))
    scores[1, 3] = nan
    out = inter_rater_reliability(scores)
    assert out.value == pytest.approx(1.0) and out.n_raters == 9 and "1 image" in out.note
    one = inter_rater_reliability(np.ones((1, 10)))
    assert isinstance(one, Reliability) and math.isnan(one.value) and "method" in one.note
    assert math.isnan(inter_rater_reliability(np.array([[1.0, nan], [2.0, 3.0]])).value)


def test_inter_method_reliability_is_spearman_across_images():
    rng = np.random.default_rng(3)
    a = rng.random(30)
    b = a + 0.3 * rng.random(30)
    out = inter_method_reliability(a, b)
    assert out.value == pytest.approx(spearmanr(a, b).statistic)
    assert (out.n_raters, out.n_units) == (30, 2)
    b[[0, 5]] = nan
    out = inter_method_reliability(torch.tensor(a), torch.tensor(b))
    ok = ~np.isnan(b)
    assert out.value == pytest.approx(spearmanr(a[ok], b[ok]).statistic) and out.n_raters == 28
    assert math.isnan(inter_method_reliability(np.ones(5), a[:5]).value)
    with pytest.raises(ConfigError):
        inter_method_reliability(a, a[:5])


def test_internal_consistency_mean_pairwise_spearman_per_method():
    rng = np.random.default_rng(4)
    m1 = rng.random((3, 40))
    m2 = m1 * 2 + 1  # same ordering of images for every method
    m3 = -m1  # a lower-is-better metric measuring the same thing
    out = internal_consistency({"a": m1, "b": m2, "c": m3}, higher_is_better={"c": False})
    assert out.value == pytest.approx(1.0) and out.n_units == 9  # 3 pairs x 3 methods
    assert set(out.details["per_pair"]) == {"a|b", "a|c", "b|c"}
    noise = rng.random((3, 40))
    out = internal_consistency({"a": m1, "noise": noise})
    expected = np.mean([spearmanr(m1[i], noise[i]).statistic for i in range(3)])
    assert out.value == pytest.approx(expected)
    m2_nan = m2.copy()
    m2_nan[0, :5] = nan
    out = internal_consistency({"a": m1, "b": m2_nan})
    assert out.value == pytest.approx(1.0)
    assert math.isnan(internal_consistency({"a": m1}).value)


def test_ranking_agreement_of_method_rankings():
    rng = np.random.default_rng(5)
    a = rng.random((4, 25))
    assert ranking_agreement(a, a * 3).value == pytest.approx(1.0)
    assert ranking_agreement(a, -a).value == pytest.approx(-1.0)
    assert ranking_agreement(a, -a, higher_is_better_b=False).value == pytest.approx(1.0)
    b = rng.random((4, 25))
    expected = np.mean([spearmanr(a[:, j], b[:, j]).statistic for j in range(25)])
    assert ranking_agreement(a, b).value == pytest.approx(expected)
    assert math.isnan(ranking_agreement(a[:1], b[:1]).value)
