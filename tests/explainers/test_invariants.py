"""Invariants every registered explainer must satisfy (parametrized over the registry)."""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch

from sanitycheck.errors import ModelError
from sanitycheck.explainers import Explainer, get_explainer
from sanitycheck.registry import EXPLAINERS

#: the explainers of images (image and image-text suites); those of text models: test_token_invariants.py
ALL_NAMES = sorted(set(EXPLAINERS.names("image")) | set(EXPLAINERS.names("image_text")))
#: the CLIP explainers (input_kind "image_text") need a CLIP image tower: tests/clip/test_clip_invariants.py
NAMES = [n for n in ALL_NAMES if getattr(EXPLAINERS.get(n), "input_kind", "image") == "image"]


@pytest.fixture(params=NAMES)
def explainer(request) -> Explainer:
    return get_explainer(request.param)


def test_registry_has_builtins():
    assert {"gradient", "gradient_x_input", "integrated_gradients", "guided_backprop", "smoothgrad", "vargrad",
            "gradcam", "guided_gradcam", "sobel", "noise"} <= set(NAMES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_class_contract(name):
    cls = EXPLAINERS.get(name)
    assert issubclass(cls, Explainer)
    assert cls.name == name, "class attribute `name` must equal the registry name"
    assert cls.__doc__ and cls.__doc__.strip()
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        assert p.default is not inspect.Parameter.empty, f"{name}: parameter {p.name} has no default"
        assert p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    explainer = cls()
    json.dumps(explainer.config())  # recorded with results: must be JSON-serializable
    assert len(explainer.code_hash()) == 16


def test_shape_and_finite(explainer, tiny_cnn, tiny_batch):
    x, y = tiny_batch
    maps = explainer(tiny_cnn, x, y)
    assert maps.shape == (x.shape[0], *x.shape[2:])
    assert maps.dtype == x.dtype and maps.device == x.device
    assert torch.isfinite(maps).all()
    assert not maps.requires_grad


def test_deterministic(explainer, tiny_cnn, tiny_batch):
    x, y = tiny_batch
    assert torch.equal(explainer(tiny_cnn, x, y), explainer(tiny_cnn, x, y))


def test_batch_invariance(explainer, tiny_cnn, tiny_batch):
    x, y = tiny_batch
    small = explainer(tiny_cnn, x[:3], y[:3])
    big = explainer(tiny_cnn, x[:8], y[:8])[:3]
    scale = big.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(small / scale, big / scale, atol=1e-5, rtol=0)
    torch.testing.assert_close(small, big, atol=1e-5, rtol=1e-4)
    # and the order of the batch does not matter
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(explainer(tiny_cnn, x[:3][perm], y[:3][perm]), small[perm], atol=1e-5, rtol=1e-4)


def test_leaves_model_and_input_untouched(explainer, tiny_cnn, tiny_batch, snapshot, same_snapshot):
    x, y = tiny_batch
    x_before = x.clone()
    before = snapshot(tiny_cnn)
    explainer(tiny_cnn, x, y)
    same_snapshot(before, snapshot(tiny_cnn))
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None


def test_hooks_released_after_error(explainer, tiny_cnn, tiny_batch, snapshot, same_snapshot):
    """A target that fails inside the backward machinery must not leave hooks behind."""
    x, _ = tiny_batch
    before = snapshot(tiny_cnn)

    def bad_target(out):
        raise RuntimeError("boom")

    try:
        explainer(tiny_cnn, x, bad_target)
    except RuntimeError:
        pass
    same_snapshot(before, snapshot(tiny_cnn))


def test_works_under_no_grad(explainer, tiny_cnn, tiny_batch):
    x, y = tiny_batch
    expected = explainer(tiny_cnn, x[:2], y[:2])
    with torch.no_grad():
        torch.testing.assert_close(explainer(tiny_cnn, x[:2], y[:2]), expected)


def test_works_on_deep_copy(explainer, tiny_cnn, tiny_batch):
    """Checks pass deep copies of the model; an explainer built once must work on each."""
    x, y = tiny_batch
    expected = explainer(tiny_cnn, x[:2], y[:2])
    torch.testing.assert_close(explainer(copy.deepcopy(tiny_cnn), x[:2], y[:2]), expected)


def test_train_mode(explainer, tiny_cnn, tiny_batch, snapshot, same_snapshot):
    x, y = tiny_batch
    tiny_cnn.train()
    before = snapshot(tiny_cnn)
    if explainer.requires_model:
        with pytest.raises(ModelError, match="train mode"):
            explainer(tiny_cnn, x, y)
    else:
        explainer(tiny_cnn, x, y)
    same_snapshot(before, snapshot(tiny_cnn))
    assert tiny_cnn.training
