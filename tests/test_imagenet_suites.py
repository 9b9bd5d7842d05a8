"""The ImageNet suites state the protocols the papers ran (issue 13), checked against the model they run on.

These read the suite files and a seeded random EfficientNet-Lite0 (same architecture and normalization as the
pretrained one), so they are cheap; the published numbers come from `sanitycheck run <suite>`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sanitycheck.checks.randomization import CascadingRandomization, IndependentRandomization
from sanitycheck.models import load_model
from sanitycheck.suites import load_suite

IMAGENET_SUITES = ("adebayo2018_imagenet", "petsiuk2018_imagenet", "faithfulness_imagenet")


@pytest.fixture(scope="module")
def model():
    return load_model("efficientnet_lite0", weights=None)


def _normalized_zero(model) -> float:
    """The [0, 1] pixel value that the model's own normalization maps to 0 (the same for the three channels)."""
    mean = model.normalize.mean.flatten()
    assert torch.all(mean == mean[0]), "EfficientNet-Lite normalizes every channel alike"
    return float(mean[0])


def _check(suite, name):
    (spec,) = [c for c in suite.checks if c.name == name]
    return spec


@pytest.mark.parametrize("name", IMAGENET_SUITES)
def test_each_imagenet_suite_runs_the_pretrained_model_on_the_photos(name):
    suite = load_suite(name)
    assert suite.model["name"] == "efficientnet_lite0" and not suite.model.get("params")
    assert suite.dataset["name"] == "photos"
    assert suite.input_kind == "image" and suite.target == "predicted"


def test_adebayo_imagenet_cascades_one_block_per_step_from_the_logits(model):
    suite = load_suite("adebayo2018_imagenet")
    x = torch.rand(1, 3, 224, 224)
    for check_cls in (CascadingRandomization, IndependentRandomization):
        params = _check(suite, check_cls.name).params
        steps = check_cls(**params).steps(model, x)
        assert steps[0] == "net.fc" and steps[1] == "net.head" and steps[-1] == "net.stem"
        assert steps[2:-1] == [f"net.block{i}" for i in range(15, -1, -1)]
    # the paper's comparison: Guided Backprop and guided Grad-CAM are on it, with the model-independent controls
    assert {"guided_backprop", "guided_gradcam", "gradcam", "gradient", "sobel", "noise"} <= set(suite.explainer_names)
    assert set(suite.metrics) == {"spearman_abs", "spearman", "ssim", "hog"}


def test_petsiuk_imagenet_is_rises_reference_protocol(model):
    suite = load_suite("petsiuk2018_imagenet")
    deletion, insertion = _check(suite, "deletion").params, _check(suite, "insertion").params
    for p in (deletion, insertion):
        # 224 x 8 pixels per step, through the whole 224 x 224 image
        assert p["pixels_per_step"] == 224 * 8 and p["pixels_per_step"] * p["n_steps"] == 224 * 224
    # deletion to 0 in the model's normalized space
    assert deletion["substrate"] == pytest.approx(_normalized_zero(model), abs=1e-7)
    x = torch.full((1, 3, 8, 8), float(deletion["substrate"]))
    assert model.normalize(x).abs().max() < 1e-6
    assert (insertion["substrate"], insertion["blur_kernel"], insertion["blur_sigma"]) == ("blur", 11, 5.0)


def test_faithfulness_imagenet_removes_pixels_to_the_normalized_zero(model):
    suite = load_suite("faithfulness_imagenet")
    zero = _normalized_zero(model)
    for name in ("aopc_morf", "aopc_lerf"):
        assert _check(suite, name).params["substrate"] == pytest.approx(zero, abs=1e-7)
    assert _check(suite, "faithfulness_correlation").params["baseline"] == pytest.approx(zero, abs=1e-7)
    occlusion = dict(suite.explainers)["occlusion"]
    assert occlusion["baseline"] == pytest.approx(zero, abs=1e-7)


@pytest.mark.parametrize("name", ["petsiuk2018_imagenet", "faithfulness_imagenet"])
def test_imagenet_suites_bound_the_images_per_forward(name):
    """At 224x224 the CPU defaults (128 curve states, 1024 occluded images per forward) ran out of 24 GB."""
    suite = load_suite(name)
    assert dict(suite.explainers)["occlusion"]["batch_size"] <= 16
    for spec in suite.checks:
        if spec.name in ("deletion", "insertion", "aopc_morf", "aopc_lerf"):
            assert spec.params["batch_size"] <= 16, spec.name


BOARD = Path(__file__).resolve().parent.parent / "leaderboard" / "submissions"


@pytest.mark.parametrize("name", IMAGENET_SUITES)
def test_each_imagenet_suite_is_on_the_board_with_the_pinned_pretrained_weights(name):
    from sanitycheck.models.efficientnet_lite import WEIGHTS_SHA256

    files = sorted(BOARD.glob(f"*/{name}.json"))
    assert files, f"no leaderboard file for {name}"
    for f in files:
        doc = json.loads(f.read_text())
        assert doc["model"]["name"] == "efficientnet_lite0" and doc["model"]["reference_weights"] is True, f
        assert doc["model"]["weights_sha256"] == WEIGHTS_SHA256, f
        assert doc["dataset"]["name"] == "photos" and doc["dataset"]["n"] == 14, f
        assert "/" not in doc["model"]["info"]["weights_file"].split("==")[0], "no local path in published files"
