import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sanitycheck.explainers.attention_flow import (AttentionCapture, ViTAttentionRollout, ViTGradientWeightedAttention,
                                                   attention_maps)
from sanitycheck.explainers.cam import ViTGradCAM
from sanitycheck.explainers.occlusion import Occlusion
from sanitycheck.errors import NotApplicableError
from sanitycheck.explainers.cam import GradCAM
from sanitycheck.explainers.gradients import Gradient, GradientXInput, IntegratedGradients
from sanitycheck.explainers.noise_tunnel import SmoothGrad

CLIP_EXPLAINERS = [ViTAttentionRollout(), ViTGradientWeightedAttention(), ViTGradientWeightedAttention(start_layer=-1),
                   ViTGradCAM(), Occlusion()]
GENERIC = [Gradient(), GradientXInput(), IntegratedGradients(n_steps=8), SmoothGrad(n_samples=4),
           GradCAM(layer="visual.conv1")]


@pytest.mark.parametrize("explainer", CLIP_EXPLAINERS + GENERIC, ids=lambda e: repr(e)[:40])
def test_shape_finite_deterministic(sim, batch, explainer):
    x, target = batch
    a = explainer(sim, x, target)
    b = explainer(sim, x, target)
    assert a.shape == (4, 64, 64)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert a.abs().sum() > 0


def test_capture_matches_torch_attention_and_is_released(sim, batch):
    x, _ = batch
    visual = sim.visual
    inputs = []
    hooks = [blk.ln_1.register_forward_hook(lambda m, i, o: inputs.append(o.detach()))
             for blk in visual.transformer.resblocks]
    try:
        with torch.no_grad():
            plain = sim(x)
            inputs_plain = list(inputs)
            inputs.clear()
            with AttentionCapture(visual) as cap:
                captured = sim(x)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=1e-4)
    for blk, y, a in zip(visual.transformer.resblocks, inputs_plain, cap.attentions):
        with torch.no_grad():
            _, w = blk.attn(y, y, y, need_weights=True, average_attn_weights=False)
        assert a.shape == w.shape == (4, blk.attn.num_heads, 65, 65)
        torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-4)
    assert all("forward" not in blk.attn.__dict__ for blk in visual.transformer.resblocks)
    with pytest.raises(RuntimeError):
        with AttentionCapture(visual):
            raise RuntimeError("boom")
    assert all("forward" not in blk.attn.__dict__ for blk in visual.transformer.resblocks)
    maps = attention_maps(sim, x)
    assert len(maps) == 4 and torch.allclose(maps[0].sum(-1), torch.ones(()))


def _naive_chefer(sim, x1, prompt):
    """Per sample, per head, with an explicit forward pass of the ViT and retain_grad."""
    v = sim.visual
    t = v.conv1(sim.normalize(x1[None])).flatten(2).transpose(1, 2)
    t = torch.cat([v.class_embedding[None, None], t], 1) + v.positional_embedding
    t = v.ln_pre(t)
    per_block = []
    for blk in v.transformer.resblocks:
        y = blk.ln_1(t)[0]
        mha = blk.attn
        e, h = mha.embed_dim, mha.num_heads
        d = e // h
        w, b = mha.in_proj_weight, mha.in_proj_bias
        q, k, vv = (y @ w[i * e:(i + 1) * e].t() + b[i * e:(i + 1) * e] for i in range(3))
        heads, attns = [], []
        for j in range(h):
            sl = slice(j * d, (j + 1) * d)
            a = torch.softmax(q[:, sl] @ k[:, sl].t() / d ** 0.5, dim=-1)
            a.retain_grad()
            attns.append(a)
            heads.append(a @ vv[:, sl])
        t = t + mha.out_proj(torch.cat(heads, -1))[None]
        t = t + blk.mlp(blk.ln_2(t))
        per_block.append(attns)
    pooled = v.ln_post(t[:, 0]) @ sim.projection.weight  # the tower's proj, held by ClipSimilarity
    score = (F.normalize(pooled, dim=-1) @ sim.text_features[prompt]).sum()
    score.backward()
    n = t.shape[1]
    rel = torch.eye(n)
    for attns in per_block:
        cam = sum((a.grad * a).clamp(min=0) for a in attns) / len(attns)
        rel = rel + cam @ rel
    return rel[0, 1:], score.detach()


def test_chefer_equals_a_naive_loop(sim, batch):
    x, target = batch
    rel, grid = ViTGradientWeightedAttention().relevance(sim, x, torch.as_tensor(target))
    assert grid == (8, 8)
    with torch.no_grad():
        scores = sim(x).gather(1, target[:, None])[:, 0]
    for i in range(x.shape[0]):
        expected, score = _naive_chefer(sim, x[i], int(target[i]))
        torch.testing.assert_close(score, scores[i], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rel[i, 0, 1:], expected, atol=1e-6, rtol=1e-4)


def test_rollout_equals_a_naive_product(sim, batch):
    x, target = batch
    maps = attention_maps(sim, x)
    n = maps[0].shape[-1]
    r = torch.eye(n).expand(4, n, n)
    for a in maps:
        a_hat = 0.5 * a.mean(1) + 0.5 * torch.eye(n)
        r = (a_hat / a_hat.sum(-1, keepdim=True)) @ r
    expected = F.interpolate(r[:, 0, 1:].reshape(4, 1, 8, 8), size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ViTAttentionRollout()(sim, x, target), expected[:, 0])


class OnePatch(nn.Module):
    """Prompt 0's score is the sum of the pixels of one 8x8 patch (rows 16-23, columns 40-47)."""

    def forward(self, x):
        return torch.stack([x[:, :, 16:24, 40:48].sum((1, 2, 3)), x.mean((1, 2, 3))], 1)


def test_occlusion_finds_the_patch():
    model = OnePatch().eval()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) + 0.1
    maps = Occlusion(window=8, batch_size=7)(model, x, torch.zeros(3, dtype=torch.long))
    for m in maps:
        y, xx = divmod(int(m.argmax()), 64)
        assert 16 <= y < 24 and 40 <= xx < 48
        assert (m[16:24, 40:48] > 0).all()
        outside = m.clone()
        outside[16:24, 40:48] = 0
        assert outside.abs().max() < 1e-4 * m.max()
    # chunking does not change the maps; overlapping windows average
    torch.testing.assert_close(Occlusion(window=8, batch_size=10_000)(model, x, torch.zeros(3, dtype=torch.long)), maps)
    overlap = Occlusion(window=8, stride=4)(model, x, torch.zeros(3, dtype=torch.long))
    assert overlap.shape == (3, 64, 64) and overlap[:, 20, 44].gt(0).all()


def test_occlusion_window_defaults_to_the_patch(sim, batch):
    x, target = batch
    occ = Occlusion()
    occ(sim, x, target)
    assert occ.last_window == 8


def test_vit_gradcam_uses_the_last_block_input(sim, batch):
    x, target = batch
    cam = ViTGradCAM()
    maps = cam(sim, x, target)
    assert cam.last_layer == "visual.transformer.resblocks.3.ln_1"
    assert (maps >= 0).all() and maps.flatten(1).amax(1).gt(0).all()
    signed = ViTGradCAM(relu=False)(sim, x, target)
    assert (signed < 0).any()


@pytest.fixture(scope="module")
def resnet_sim():
    from sanitycheck.data.scenes import class_prompts
    from sanitycheck.models.clip import ClipSimilarity, WordTokenizer, import_open_clip

    oc = import_open_clip()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = oc.model.CLIP(embed_dim=32, vision_cfg=dict(layers=[1, 1, 1, 1], width=8, image_size=64, head_width=8),
                              text_cfg=dict(context_length=16, vocab_size=24, width=32, heads=2, layers=1)).eval()
    return ClipSimilarity(model, class_prompts(), tokenizer=WordTokenizer())


def test_resnet_tower(resnet_sim, batch):
    x, target = batch
    cam = ViTGradCAM()
    maps = cam(resnet_sim, x, target)
    assert maps.shape == (4, 64, 64) and torch.isfinite(maps).all()
    assert cam.last_layer == "visual.layer4"
    with pytest.raises(NotApplicableError, match="ViT"):
        ViTGradientWeightedAttention()(resnet_sim, x, target)
    assert Occlusion(window=16)(resnet_sim, x, target).shape == (4, 64, 64)


def test_not_a_clip_model(tiny_cnn):
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(NotApplicableError, match="ClipSimilarity"):
        ViTAttentionRollout()(tiny_cnn, x, torch.zeros(2, dtype=torch.long))
