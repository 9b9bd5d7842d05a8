"""``sanitycheck clip-saliency``: maps as PNGs, and clear errors for bad input (no training, no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sanitycheck.cli import main


@pytest.fixture
def rgb_png(tmp_path):
    rng = np.random.default_rng(0)
    arr = (rng.random((48, 80, 3)) * 255).astype("uint8")
    arr[10:30, 20:40] = 255
    path = tmp_path / "photo.png"
    Image.fromarray(arr, "RGB").save(path)
    return path


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "cache"))  # the tiny CLIP is never trained here


def _run(capsys, *argv):
    code = main(["clip-saliency", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_writes_one_png_per_method_and_a_grid(capsys, rgb_png, tmp_path):
    out = tmp_path / "maps"
    code, stdout, err = _run(capsys, str(rgb_png), "a photo of a bag", "--model", "sanitycheck-tiny-vit",
                             "--pretrained", "none", "--methods", "gradient,vit_chefer,vit_attention_rollout,occlusion",
                             "--out", str(out), "--size", "96")
    assert code == 0, err
    for name in ("gradient", "vit_chefer", "vit_attention_rollout", "occlusion"):
        assert (out / f"{name}.png").is_file() and name in stdout
        with Image.open(out / f"{name}.png") as im:
            assert im.size == (96, 96)
    assert (out / "grid.png").is_file() and "cosine similarity to 'a photo of a bag'" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pretrained"] is None and summary["input_size"] == [64, 64]
    assert -1 <= summary["cosine_similarity"] <= 1
    maps = torch.load(out / "maps.pt")
    assert set(maps["maps"]) == {"gradient", "vit_chefer", "vit_attention_rollout", "occlusion"}
    assert maps["maps"]["vit_chefer"].shape == (64, 64) and maps["image"].shape == (3, 64, 64)


def test_default_model_without_weights_fails_fast_and_points_to_the_tiny_model(capsys, rgb_png, tmp_path):
    code, _, err = _run(capsys, str(rgb_png), "a photo of a cat", "--out", str(tmp_path / "o"))
    assert code == 2
    assert "'openai'" in err and "ViT-B-32" in err and "not on this machine" in err
    assert "--model sanitycheck-tiny-vit" in err and "--pretrained none" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("query, message", [
    ("a photo of an astronaut", "outside this model's vocabulary ['a', 'an', 'photo'"),
    ("", "empty query"),
    ("   ", "empty query"),
    (" ".join(["a photo of a bag"] * 4), "context length is 16"),
])
def test_bad_queries_fail_before_any_training(capsys, rgb_png, tmp_path, query, message):
    code, _, err = _run(capsys, str(rgb_png), query, "--model", "sanitycheck-tiny-vit", "--out", str(tmp_path / "o"))
    assert code == 2 and message in err
    assert not list((tmp_path / "cache").glob("models/*"))  # failed before training the tiny CLIP


def test_query_too_long_for_an_open_clip_tokenizer(capsys, rgb_png, tmp_path):
    code, _, err = _run(capsys, str(rgb_png), "cat " * 100, "--model", "RN50", "--pretrained", "none",
                        "--methods", "gradient", "--out", str(tmp_path / "o"))
    assert code == 2 and "context length is 77" in err


def test_bad_images(capsys, tmp_path, rgb_png):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((40, 40), 128, dtype="uint8"), "L").save(gray)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    common = ["a photo of a bag", "--model", "sanitycheck-tiny-vit", "--pretrained", "none", "--methods", "gradient"]
    code, _, err = _run(capsys, str(gray), *common, "--out", str(tmp_path / "g"))
    assert code == 2 and "grayscale" in err and "--convert-grayscale" in err
    with pytest.warns(UserWarning, match="replicated to RGB"):
        code, _, err = _run(capsys, str(gray), *common, "--out", str(tmp_path / "g2"), "--convert-grayscale")
    assert code == 0 and (tmp_path / "g2" / "gradient.png").is_file()
    code, _, err = _run(capsys, str(broken), *common, "--out", str(tmp_path / "b"))
    assert code == 2 and "cannot read image" in err
    code, _, err = _run(capsys, str(tmp_path / "missing.png"), *common, "--out", str(tmp_path / "m"))
    assert code == 2 and "does not exist" in err


def test_unknown_model_method_and_size(capsys, rgb_png, tmp_path):
    code, _, err = _run(capsys, str(rgb_png), "a cat", "--model", "ViT-B-33", "--out", str(tmp_path / "o"))
    assert code == 2 and "unknown open_clip model 'ViT-B-33'" in err and "ViT-B-32" in err
    code, _, err = _run(capsys, str(rgb_png), "a photo of a bag", "--model", "sanitycheck-tiny-vit",
                        "--methods", "gradient,vit_chefr", "--out", str(tmp_path / "o"))
    assert code == 2 and "unknown explainer 'vit_chefr'" in err and "vit_chefer" in err
    code, _, err = _run(capsys, str(rgb_png), "a photo of a bag", "--model", "sanitycheck-tiny-vit",
                        "--size", "4", "--out", str(tmp_path / "o"))
    assert code == 2 and "--size" in err
    code, _, err = _run(capsys, str(rgb_png), "a photo of a bag", "--model", "sanitycheck-tiny-vit",
                        "--pretrained", "nonsense", "--out", str(tmp_path / "o"))
    assert code == 2 and "'nonsense'" in err
