"""Nothing lost, every failure named (issue 10): --out checks, merged reruns, checksummed cache files,
explainer failures with their place, output types, float32 underflow, explainers that change the model."""

import json
import os
import warnings

import numpy as np
import pytest
import torch

from helpers import digits_batch, make_tiny_cnn
from sanitycheck.cli import main
from sanitycheck.data import ImageDataset
from sanitycheck.errors import AttributionError, ConfigError, ModelError
from sanitycheck.explainers import ExplainerError, FunctionExplainer, get_explainer, state_checksum
from sanitycheck.runner import AuditRun, check_out_dir, to_float32_maps
from sanitycheck.suites import parse_suite


def suite():
    return parse_suite({
        "name": "unit", "version": "0.0.1", "description": "robustness tests",
        "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 2,
        "explainers": ["gradient", "sobel"], "metrics": ["spearman_abs", "ssim"],
        "checks": [{"name": c, "verdict": {"metric": "spearman_abs", "threshold": 0.5}}
                   for c in ("cascading_randomization", "independent_randomization")],
    })


@pytest.fixture
def dataset():
    x, y = digits_batch(8)
    return ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")


def run(out, dataset, explainers, checks=("cascading_randomization",), model=None):
    return AuditRun(suite(), out_dir=out, model=model or make_tiny_cnn(0), dataset=dataset,
                    explainer_objects=explainers, checks=list(checks), progress=False, figures=False).execute()


def gradient():
    return get_explainer("gradient")


# ---------------------------------------------------------------- --out
def test_out_naming_an_existing_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    with pytest.raises(ConfigError, match="is an existing file, not a directory"):
        check_out_dir(target)
    assert main(["run", "adebayo2018", "--out", str(target), "--n", "2", "--no-progress"]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_out_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="cannot create --out directory"):
        check_out_dir(tmp_path / "f" / "out")


def test_out_in_a_read_only_location_is_a_clear_error(tmp_path):
    # /sys is read-only in containers; as root a chmod-ed directory would still be writable
    target = "/sys/fs/sanitycheck-out-test"
    try:
        os.mkdir(target)
    except OSError:
        pass
    else:  # pragma: no cover - a writable /sys: nothing to test here
        os.rmdir(target)
        pytest.skip("/sys is writable on this machine")
    with pytest.raises(ConfigError, match="cannot create --out directory|is not writable"):
        check_out_dir(target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_out_in_a_read_only_directory_is_a_clear_error(tmp_path):  # pragma: no cover - not run as root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            check_out_dir(ro)
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------- merged reruns
def test_a_rerun_with_other_explainers_keeps_both(tmp_path, dataset):
    out = tmp_path / "out"
    first = run(out, dataset, {"gradient": gradient()})
    second = run(out, dataset, {"sobel": get_explainer("sobel")})
    doc = json.loads((out / "results.json").read_text())
    assert doc == second
    assert set(doc["explainers"]) == {"gradient", "sobel"}
    assert {v["explainer"] for v in doc["verdicts"]} == {"gradient", "sobel"}
    assert set(doc["per_sample"]) == {"gradient", "sobel"}
    kept = [r for r in doc["records"] if r["explainer"] == "gradient"]
    assert kept == first["records"]
    assert doc["merged"]["carried"] == ["gradient/cascading_randomization"]
    assert set(doc["examples"]["explainers"]) == {"gradient", "sobel"}


def test_a_rerun_with_other_checks_keeps_both(tmp_path, dataset):
    out = tmp_path / "out"
    first = run(out, dataset, {"gradient": gradient()}, checks=("cascading_randomization",))
    doc = run(out, dataset, {"gradient": gradient()}, checks=("independent_randomization",))
    assert set(doc["checks"]) == {"cascading_randomization", "independent_randomization"}
    assert {v["check"] for v in doc["verdicts"]} == {"cascading_randomization", "independent_randomization"}
    assert [r for r in doc["records"] if r["check"] == "cascading_randomization"] == first["records"]
    assert set(doc["per_sample"]["gradient"]) == {"cascading_randomization", "independent_randomization"}


def test_a_rerun_of_a_changed_explainer_drops_its_old_results(tmp_path, dataset):
    out = tmp_path / "out"
    run(out, dataset, {"g": gradient()}, checks=("cascading_randomization",))
    changed = get_explainer("gradient_x_input")
    doc = run(out, dataset, {"g": changed}, checks=("independent_randomization",))
    assert {v["check"] for v in doc["verdicts"]} == {"independent_randomization"}
    assert "merged" not in doc


def test_an_unreadable_earlier_results_json_is_kept_aside_not_lost(tmp_path, dataset):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{truncated")
    with pytest.warns(UserWarning, match="kept as"):
        run(out, dataset, {"gradient": gradient()})
    kept = list(out.glob("results.previous-*.json"))
    assert len(kept) == 1 and kept[0].read_text() == "{truncated"


# ---------------------------------------------------------------- checksummed cache files
def test_a_corrupt_cache_file_is_named_and_recomputed(tmp_path, dataset):
    out = tmp_path / "out"
    first = run(out, dataset, {"gradient": gradient()})
    victim = next((out / "cache" / "units" / "cascading_randomization" / "fc1").glob("gradient-*.pt"))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated
    original = next((out / "cache" / "units" / "original" / "original").glob("gradient-*.pt"))
    flipped = bytearray(original.read_bytes())
    flipped[-10] ^= 0xFF  # one altered byte
    original.write_bytes(bytes(flipped))
    (out / "results.json").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = run(out, dataset, {"gradient": gradient()})
    messages = [str(w.message) for w in caught]
    assert any(str(victim) in m and "corrupt" in m for m in messages), messages
    assert any(str(original) in m and "checksum mismatch" in m for m in messages), messages
    assert again["records"] == first["records"]
    assert sorted(again["cache_recomputed"]) == sorted(
        str(p.relative_to(out)) for p in (victim, original))


def test_a_cache_file_without_the_checksum_header_is_recomputed(tmp_path, dataset):
    out = tmp_path / "out"
    first = run(out, dataset, {"gradient": gradient()})
    victim = next((out / "cache" / "units" / "original" / "original").glob("gradient-*.pt"))
    torch.save(torch.zeros(8, 16, 16), victim)  # a plain (forged or old) file
    (out / "results.json").unlink()
    with pytest.warns(UserWarning, match="no checksum header"):
        again = run(out, dataset, {"gradient": gradient()})
    assert again["records"] == first["records"]


# ---------------------------------------------------------------- explainer failures
def test_an_explainer_that_raises_is_named_with_check_step_and_inputs_and_finished_work_resumes(tmp_path, dataset):
    calls = {"n": 0, "fail_at": 6}

    def flaky(model, x, target):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:  # original (2 batches), fc2 (2), then the 2nd batch of fc1
            raise RuntimeError("out of luck")
        return get_explainer("gradient")(model, x, target)

    out = tmp_path / "out"
    explainers = {"flaky": FunctionExplainer(flaky, name="flaky")}
    with pytest.raises(ExplainerError) as info:
        run(out, dataset, explainers)
    msg = str(info.value)
    for part in ("'flaky'", "check 'cascading_randomization'", "step 'fc1'", "inputs 4..7",
                 "RuntimeError: out of luck", "re-run with the same --out"):
        assert part in msg, msg
    assert isinstance(info.value, AttributionError) and not isinstance(info.value, ModelError)
    calls.update(n=0, fail_at=-1)
    done = run(out, dataset, explainers)
    assert calls["n"] == 3 * 2  # fc1, conv2, conv1 (2 batches each); original and fc2 came from the cache
    fresh = run(tmp_path / "fresh", dataset, {"flaky": gradient()})
    assert done["records"] == fresh["records"]


class RawCallable:
    """An explainer object that is not an Explainer (as sandboxed or plugin explainers may be)."""

    name = "raw"
    requires_model = True

    def __init__(self, value):
        self.value = value

    def config(self):
        return {}

    def code_hash(self):
        return "raw"

    def __call__(self, model, x, target):
        return self.value(x)


BAD_OUTPUTS = {
    "numpy": (lambda x: np.zeros((x.shape[0], 16, 16), dtype=np.float32), "returned a numpy.ndarray"),
    "list": (lambda x: [[0.0] * 16] * 16, "returned a list"),
    "none": (lambda x: None, "returned None"),
    "int": (lambda x: torch.ones(x.shape[0], 16, 16, dtype=torch.int64), "torch.int64 maps"),
    "bool": (lambda x: torch.ones(x.shape[0], 16, 16, dtype=torch.bool), "torch.bool maps"),
    "complex": (lambda x: torch.ones(x.shape[0], 16, 16, dtype=torch.complex64), "complex maps"),
    "meta": (lambda x: torch.empty(x.shape[0], 16, 16, device="meta"), "meta device"),
}


@pytest.mark.parametrize("kind", sorted(BAD_OUTPUTS))
@pytest.mark.parametrize("wrapper", ["function", "raw"])
def test_outputs_that_are_not_real_float_tensors_are_refused_naming_the_explainer(tmp_path, dataset, kind, wrapper):
    make, message = BAD_OUTPUTS[kind]
    explainer = (FunctionExplainer(lambda model, x, target: make(x), name="bad") if wrapper == "function"
                 else RawCallable(make))
    name = "bad" if wrapper == "function" else "raw"
    with pytest.raises(AttributionError) as info:
        run(tmp_path, dataset, {name: explainer})
    msg = str(info.value)
    assert message in msg and f"explainer {name!r}" in msg and "check 'original maps'" in msg, msg


# ---------------------------------------------------------------- float32 underflow
def scaled_gradient(scale, dtype):
    g = get_explainer("gradient")

    def fn(model, x, target):
        return g(model, x, target).to(dtype) * scale

    return FunctionExplainer(fn, name=f"g{scale}{dtype}")


def test_float64_maps_below_float32_range_give_the_verdicts_of_unscaled_maps(tmp_path, dataset):
    plain = run(tmp_path / "a", dataset, {"g": scaled_gradient(1.0, torch.float64)})
    with pytest.warns(UserWarning, match="rescaled by an exact power of two"):
        tiny = run(tmp_path / "b", dataset, {"g": scaled_gradient(1e-44, torch.float64)})
    with pytest.warns(UserWarning, match="rescaled"):
        huge = run(tmp_path / "c", dataset, {"g": scaled_gradient(1e300, torch.float64)})
    for other in (tiny, huge):
        assert [v["passed"] for v in other["verdicts"]] == [v["passed"] for v in plain["verdicts"]]
        for a, b in zip(plain["records"], other["records"]):
            assert a["step"] == b["step"] and b["mean"] == pytest.approx(a["mean"], abs=1e-5)


def test_float32_maps_that_are_already_subnormal_are_refused(tmp_path, dataset):
    with pytest.raises(AttributionError, match=r"subnormal in float32.*Return unscaled maps, or float64 maps"):
        run(tmp_path, dataset, {"g": scaled_gradient(1e-40, torch.float32)})


def test_maps_in_the_normal_range_are_never_rescaled():
    maps = torch.tensor([[[1e-30, -3e-31], [0.0, 2e-30]], [[5.0, 1.0], [0.0, -2.0]]], dtype=torch.float64)
    out, n = to_float32_maps(maps, "m")
    assert n == 0 and torch.equal(out, maps.float())
    tiny = maps * 1e-250
    out, n = to_float32_maps(tiny, "m")
    assert n == 2
    # an exact power of two per map: ratios kept, the largest |value| in [1, 2)
    assert out.abs().flatten(1).amax(1).ge(1).all() and out.abs().flatten(1).amax(1).lt(2).all()
    assert torch.allclose(out[1] / out[1, 0, 0], (maps[1] / maps[1, 0, 0]).float())
    assert (torch.sign(out) == torch.sign(maps.float())).all()


# ---------------------------------------------------------------- explainers that change the model
def test_an_explainer_that_changes_the_weights_is_named(tmp_path, dataset):
    def mutating(model, x, target):
        model.fc2.bias.data.add_(1e-3)
        return get_explainer("gradient")(model, x, target)

    with pytest.raises(ExplainerError, match=r"explainer 'mutating' changed the model's weights or buffers in place"
                                             r" \(check 'original maps', step 'original', inputs 0..3\)"):
        run(tmp_path, dataset, {"mutating": FunctionExplainer(mutating)})


def test_an_explainer_that_switches_to_train_mode_is_named_not_the_model(tmp_path, dataset):
    def trains(model, x, target):
        g = get_explainer("gradient")(model, x, target)
        model.train()
        return g

    model = make_tiny_cnn(0)
    with pytest.raises(ExplainerError, match="explainer 'trains' changed the model's train/eval mode") as info:
        run(tmp_path, dataset, {"trains": FunctionExplainer(trains)}, model=model)
    assert "the model is not at fault" in str(info.value)
    assert not model.training  # put back


def test_state_checksum_sees_a_single_changed_value():
    model = make_tiny_cnn(0)
    before = state_checksum(model)
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = torch.nextafter(model.conv1.weight[0, 0, 0, 0], torch.tensor(10.0))
    assert state_checksum(model) != before


def test_an_unreadable_cache_fingerprint_moves_the_cache_aside_and_recomputes(tmp_path, dataset):
    out = tmp_path / "out"
    first = run(out, dataset, {"gradient": gradient()})
    (out / "cache" / "fingerprint.json").write_text('{"suite": "un')
    (out / "results.json").unlink()
    with pytest.warns(UserWarning, match="fingerprint.json is unreadable"):
        again = run(out, dataset, {"gradient": gradient()})
    assert again["records"] == first["records"]
    aside = list(out.glob("cache.unverified-*"))
    assert len(aside) == 1 and (aside[0] / "fingerprint.json").read_text() == '{"suite": "un'
