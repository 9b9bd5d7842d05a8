"""``sanitycheck explain IMAGE``: top-5 and maps of an image classifier (resnet18 with random weights, offline),
and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sanitycheck.cli import main
from sanitycheck.errors import ConfigError
from sanitycheck.report.saliency_grid import class_names, resolve_target

RANDOM_RESNET = ["--model", "resnet18", "--model-param", "weights=none", "--no-progress"]


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    arr = (rng.random((240, 300, 3)) * 255).astype("uint8")
    arr[60:160, 80:200] = (200, 120, 40)
    path = tmp_path / "photo.png"
    Image.fromarray(arr, "RGB").save(path)
    return path


def _run(capsys, *argv):
    code = main(["explain", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_top5_maps_grid_and_summary(capsys, photo, tmp_path):
    out = tmp_path / "ex"
    code, stdout, err = _run(capsys, str(photo), *RANDOM_RESNET, "--methods", "gradient,gradcam", "--out", str(out),
                             "--size", "96")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    top = summary["top5"]
    assert len(top) == 5 and [r["rank"] for r in top] == [1, 2, 3, 4, 5]
    probs = [r["probability"] for r in top]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-9
    assert all(0 <= r["class"] < 1000 for r in top)
    # ImageNet names for a 1000-class model without its own names; the default target is the top-1 class
    assert top[0]["name"] == class_names(torch.nn.Identity(), 1000)[top[0]["class"]]
    assert summary["target"]["class"] == top[0]["class"] and summary["target"]["how"] == "predicted (top-1)"
    assert summary["resize"] == 256 and summary["crop"] == 224 and summary["input_size"] == [224, 224]
    assert summary["model_params"] == {"weights": None} and summary["image_notes"] == ["upscaled"]  # 240 < 256: recorded
    for name in ("gradient", "gradcam"):
        assert (out / f"{name}.png").is_file() and summary["methods"][name]["file"] == f"{name}.png"
        with Image.open(out / f"{name}.png") as im:
            assert im.size == (96, 96)
    assert (out / "grid.png").is_file() and summary["grid"] == "grid.png"
    maps = torch.load(out / "maps.pt")
    assert set(maps["maps"]) == {"gradient", "gradcam"} and maps["maps"]["gradient"].shape == (224, 224)
    assert maps["image"].shape == (3, 224, 224) and maps["target"] == top[0]["class"]
    assert "top-5" in stdout and top[0]["name"] in stdout and "grid:" in stdout


def test_target_by_name_and_index(capsys, photo, tmp_path):
    code, stdout, err = _run(capsys, str(photo), *RANDOM_RESNET, "--methods", "sobel", "--target", "tabby",
                             "--out", str(tmp_path / "a"))
    assert code == 0, err
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["target"]["class"] == 281 and summary["target"]["how"] == "--target"
    assert "class 281 'tabby, tabby cat'" in stdout


@pytest.mark.parametrize("target, message", [
    ("1000", "class index 1000 is outside this model's classes 0..999"),
    ("-1", "outside this model's classes 0..999"),
    ("tabbby cat", "Did you mean 281 'tabby, tabby cat'"),
    ("terrier", "matches"),
])
def test_bad_targets(capsys, photo, tmp_path, target, message):
    code, _, err = _run(capsys, str(photo), *RANDOM_RESNET, "--methods", "gradient", "--target", target,
                        "--out", str(tmp_path / "o"))
    assert code == 2 and message in err
    assert not (tmp_path / "o").exists()


def test_bad_images(capsys, tmp_path):
    code, _, err = _run(capsys, str(tmp_path / "missing.jpg"), *RANDOM_RESNET, "--out", str(tmp_path / "m"))
    assert code == 2 and "does not exist" in err and "missing.jpg" in err
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((4, 6, 3), dtype="uint8"), "RGB").save(tiny)
    code, _, err = _run(capsys, str(tiny), *RANDOM_RESNET, "--methods", "gradient", "--out", str(tmp_path / "t"))
    assert code == 2 and "6x4 pixels" in err and "smaller than the minimum side" in err
    assert not (tmp_path / "t").exists()


def test_unknown_method_fails_before_the_model(capsys, photo, tmp_path):
    code, _, err = _run(capsys, str(photo), "--model", "no_such_model", "--methods", "gradient,gradcan",
                        "--out", str(tmp_path / "o"))
    assert code == 2 and "unknown explainer 'gradcan'" in err


def test_resolve_target_and_class_names():
    names = ["tabby, tabby cat", "tiger cat", "Egyptian cat", "espresso"]
    assert resolve_target(None, names, predicted=2) == 2
    assert resolve_target("3", names, 0) == 3 and resolve_target(1, names, 0) == 1
    assert resolve_target("TIGER CAT", names, 0) == 1  # exact, case-insensitive
    assert resolve_target("espr", names, 0) == 3  # unique substring
    with pytest.raises(ConfigError, match=r"matches 3 classes"):
        resolve_target("cat", names, 0)
    with pytest.raises(ConfigError, match=r"0\.\.3"):
        resolve_target(4, names, 0)
    model = torch.nn.Identity()
    assert class_names(model, 3) == ["class 0", "class 1", "class 2"]
    model.sanitycheck_class_names = ["a", "b", "c"]
    assert class_names(model, 3) == ["a", "b", "c"]
