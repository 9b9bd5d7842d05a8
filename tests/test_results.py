import pytest

from sanitycheck.errors import ConfigError
from sanitycheck.io import atomic_write_json, read_json
from sanitycheck.results import Record, VerdictRule, clean_json, decide


def rec(step, idx, mean, hi, n=100, n_undef=0, reason=None, metric="spearman_abs"):
    lo = None if mean is None else mean - 0.05
    return Record("gb", "cascading_randomization", metric, step, idx, mean, lo, hi, n, n_undef, reason)


CASCADE = [rec("original", 0, 1.0, 1.0), rec("fc2", 1, 0.78, 0.80), rec("fc1", 2, 0.40, 0.45),
           rec("conv1", 3, 0.20, 0.25)]


def test_all_steps_rule_catches_a_failure_at_the_top_of_the_cascade():
    v = decide(VerdictRule("spearman_abs", 0.5, "all_steps"), "gb", "cascading_randomization", CASCADE)
    assert not v.passed
    assert v.step == "fc2" and v.measured == pytest.approx(0.80)
    assert "FAIL" in v.reason and "0.50" in v.reason and "0.780" in v.reason and "fc2" in v.reason


def test_final_step_rule_reads_only_the_fully_randomized_model():
    v = decide(VerdictRule("spearman_abs", 0.5, "final_step"), "gb", "cascading_randomization", CASCADE)
    assert v.passed and v.step == "conv1" and v.measured == pytest.approx(0.25)
    assert v.reason.startswith("PASS")


def test_upper_ci_bound_decides_not_the_mean():
    records = [rec("fc2", 1, 0.45, 0.55)]
    assert not decide(VerdictRule("spearman_abs", 0.5), "g", "c", records).passed


def test_fully_undefined_step_counts_as_dissimilar_and_is_explained():
    records = [rec("fc2", 1, 0.2, 0.3), rec("conv1", 2, None, None, n=0, n_undef=128, reason="128 constant maps")]
    v = decide(VerdictRule("spearman_abs", 0.5), "gradcam", "c", records)
    assert v.passed and "conv1" in v.reason and "constant maps" in v.reason


def test_partly_undefined_steps_are_reported():
    records = [rec("fc2", 1, 0.2, 0.3, n=73, n_undef=55, reason="55 constant maps in this state")]
    v = decide(VerdictRule("spearman_abs", 0.5), "gradcam", "c", records)
    assert "55 of 128" in v.reason


def test_missing_records_cannot_pass():
    v = decide(VerdictRule("ssim", 0.5), "g", "c", CASCADE)
    assert not v.passed and "cannot decide" in v.reason


@pytest.mark.parametrize("bad", [dict(rule="sometimes"), dict(threshold=30.0), dict(threshold="high"),
                                 dict(threshold=True), dict(direction="sideways")])
def test_bad_verdict_rules_are_rejected(bad):
    kwargs = dict(metric="spearman_abs", threshold=0.5, rule="all_steps") | bad
    with pytest.raises(ConfigError):
        VerdictRule(**kwargs)


def test_json_never_holds_nan(tmp_path):
    data = clean_json({"mean": float("nan"), "xs": [1.0, float("inf")]})
    path = atomic_write_json(tmp_path / "r.json", data)
    assert read_json(path) == {"mean": None, "xs": [1.0, None]}
    assert "NaN" not in path.read_text()
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "bad.json", {"x": float("nan")})
    assert not (tmp_path / "bad.json").exists() and not list(tmp_path.glob(".bad.json*"))


def test_above_rule_passes_only_when_the_lower_bound_clears_the_threshold():
    records = [rec("all", 1, 0.30, 0.35, metric="entropy_increase")]
    rule = VerdictRule("entropy_increase", 0.1, "final_step", "above")
    v = decide(rule, "g", "efficient_mprt", records)
    assert v.passed and v.measured == pytest.approx(0.25) and "lower 95% CI bound" in v.reason
    v = decide(VerdictRule("entropy_increase", 0.27, "final_step", "above"), "g", "efficient_mprt", records)
    assert not v.passed and "not above 0.27" in v.reason


def test_thumbnails_of_huge_maps_stay_finite_and_keep_their_ratios():
    import numpy as np
    import torch

    from sanitycheck.results import decode_array, encode_array

    small = torch.tensor([[0.25, -1.0], [0.5, 0.0]])
    assert np.array_equal(decode_array(encode_array(small)), small.numpy())  # normal maps are untouched
    huge = decode_array(encode_array(small.double() * 1e30))
    assert np.isfinite(huge).all()
    assert np.allclose(huge / np.abs(huge).max(), small.numpy())
