"""The invariants of tests/explainers/test_invariants.py for the CLIP explainers, on a ClipSimilarity
(those tests run on a CNN, which has no image tower for these methods)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.modules import module as torch_module

from sanitycheck.errors import ModelError
from sanitycheck.explainers import get_explainer

NAMES = ["vit_gradcam", "vit_chefer", "vit_attention_rollout", "occlusion"]
HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
         "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")


def _snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grad": {k: p.grad is None for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "attrs": {k: sorted(vars(m)) for k, m in model.named_modules()},
        "hooks": {(k, h): len(getattr(m, h, {}) or {}) for k, m in model.named_modules() for h in HOOKS},
        "global": len(torch_module._global_forward_hooks),
    }


def _same(a, b):
    for key in ("grad", "training", "attrs", "hooks", "global"):
        assert a[key] == b[key], key
    assert all(torch.equal(v, b["state"][k]) for k, v in a["state"].items())


@pytest.fixture(params=NAMES)
def explainer(request):
    return get_explainer(request.param)


def test_batch_invariance(explainer, sim, scenes):
    x = scenes.images[:6].contiguous()
    y = scenes.caption_classes[:6]
    small = explainer(sim, x[:3], y[:3])
    big = explainer(sim, x, y)[:3]
    torch.testing.assert_close(small, big, atol=1e-5, rtol=1e-4)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(explainer(sim, x[:3][perm], y[:3][perm]), small[perm], atol=1e-5, rtol=1e-4)


def test_leaves_model_and_input_untouched_even_after_an_error(explainer, sim, batch):
    x, y = batch
    x_before, before = x.clone(), _snapshot(sim)
    explainer(sim, x, y)
    _same(before, _snapshot(sim))
    assert torch.equal(x, x_before) and not x.requires_grad

    def bad_target(out):
        raise RuntimeError("boom")

    try:
        explainer(sim, x, bad_target)  # rollout ignores the target and does not raise
    except RuntimeError as err:
        assert "boom" in str(err)
    _same(before, _snapshot(sim))


def test_no_grad_deep_copy_and_train_mode(explainer, sim, batch):
    x, y = batch
    expected = explainer(sim, x[:2], y[:2])
    with torch.no_grad():
        torch.testing.assert_close(explainer(sim, x[:2], y[:2]), expected)
    torch.testing.assert_close(explainer(copy.deepcopy(sim), x[:2], y[:2]), expected)
    twin = copy.deepcopy(sim).train()
    with pytest.raises(ModelError, match="train mode"):
        explainer(twin, x[:2], y[:2])
