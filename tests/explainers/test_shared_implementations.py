"""The CLIP explainers use the package's one Grad-CAM and one attention-flow implementation (issue 11)."""

import pytest
import torch

from sanitycheck.explainers import attention_flow, transformer
from sanitycheck.explainers.attention_flow import attention_rollout, chefer_relevance
from sanitycheck.explainers.cam import GradCAM, TokenGrid, ViTGradCAM, grad_cam
from sanitycheck.registry import EXPLAINERS


def test_vit_gradcam_is_the_one_gradcam():
    assert issubclass(EXPLAINERS.get("vit_gradcam"), GradCAM)
    assert ViTGradCAM.layer_maps is GradCAM.layer_maps and ViTGradCAM.attribute is GradCAM.attribute
    assert not hasattr(attention_flow, "ViTGradCAM")  # no second Grad-CAM beside the attention flow


def test_text_and_vit_share_attention_flow():
    assert transformer.attention_rollout is attention_rollout
    assert transformer.chefer_relevance is chefer_relevance


def test_vit_explainers_call_the_shared_functions(monkeypatch, sim, batch):
    calls = []
    for name in ("attention_rollout", "chefer_relevance"):
        real = getattr(attention_flow, name)
        monkeypatch.setattr(attention_flow, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    x, y = batch
    EXPLAINERS.get("vit_attention_rollout")()(sim, x, y)
    EXPLAINERS.get("vit_chefer")()(sim, x, y)
    assert calls == ["attention_rollout", "chefer_relevance"]


def test_rollout_hand_computed():
    # one sample, 2 heads, 2 tokens, 2 layers; residual 0.5, mean over heads
    a1 = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]]])   # mean: [[.5,.5],[.5,.5]]
    a2 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]])   # mean: identity
    r = attention_rollout([a1, a2], residual=0.5)
    # layer 1: 0.5*[[.5,.5],[.5,.5]] + 0.5*I = [[.75,.25],[.25,.75]] (rows sum to 1); layer 2: I -> unchanged
    torch.testing.assert_close(r, torch.tensor([[[0.75, 0.25], [0.25, 0.75]]]), rtol=0, atol=1e-7)
    rmax = attention_rollout([a1], residual=0.0, head_fusion="max")  # max over heads [[1,1],[.5,.5]], rows renormalized
    torch.testing.assert_close(rmax, torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]), rtol=0, atol=1e-7)
    with pytest.raises(Exception, match="head_fusion"):
        attention_rollout([a1], head_fusion="median")


def test_chefer_none_gradient_reads_as_zero():
    a = torch.rand(1, 2, 3, 3).softmax(-1)
    torch.testing.assert_close(chefer_relevance([a], [None]), torch.eye(3)[None])


def test_token_grid_reshape_gradcam_by_hand():
    grid = TokenGrid((2, 2), prefix=1)
    tokens = torch.arange(1 * 5 * 3, dtype=torch.float32).reshape(1, 5, 3)   # (B, 1 cls + 4 patches, D=3)
    g = grid.to_grid(tokens)
    assert g.shape == (1, 3, 2, 2) and torch.equal(g[0, :, 0, 1], tokens[0, 2])  # patch 1 = token 2
    assert torch.equal(grid.to_tokens(tokens, g), tokens)
    grads = torch.ones_like(tokens)
    cam = grad_cam(g, grid.to_grid(grads), relu=True)  # weights 1 per channel: map = channel sum
    assert torch.equal(cam[0, 0].flatten(), tokens[0, 1:].sum(-1))
    with pytest.raises(Exception, match="class token"):
        grid.to_grid(tokens[:, :4])
