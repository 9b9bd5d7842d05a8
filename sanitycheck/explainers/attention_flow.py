"""Attention flow: attention rollout and Chefer relevance, one implementation for every transformer.

* :func:`attention_rollout` — Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers": per
  layer Â = (1 − α)·fuse_h(A) + α·I (rows renormalized), R = Â_L ⋯ Â_1.
* :func:`chefer_relevance` — Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV): R = I, then per layer
  R ← R + mean_h (∇A ⊙ A)⁺ · R, with ∇A the gradient of the target score with respect to the layer's
  attention probabilities.

Both take per-layer attention probabilities ``(B, heads, T, T)`` from any source: the text transformers'
``self_attentions`` (:mod:`~sanitycheck.explainers.transformer`: ``attention_rollout``,
``chefer_relevance``) and, here, a CLIP ViT image tower through :class:`AttentionCapture`:

* :class:`ViTAttentionRollout` (``vit_attention_rollout``) — the map is R[CLS, patches].
  Class-agnostic: the target is ignored (the same map for every prompt).
* :class:`ViTGradientWeightedAttention` (``vit_chefer``) — the map is R[CLS, patches].

Grad-CAM on the ViT's tokens is :class:`~sanitycheck.explainers.cam.ViTGradCAM` (the one Grad-CAM with
a token-grid reshape step) and occlusion is :class:`~sanitycheck.explainers.occlusion.Occlusion`.

The ViT explainers are :class:`~sanitycheck.explainers.base.Explainer` subclasses: ``explainer(model, x,
target)`` with ``x`` images in [0, 1] ``(B, 3, H, W)`` and ``target`` a prompt index per sample (or any
:class:`~sanitycheck.targets.Target`), returning maps ``(B, H, W)``; token-level maps are upsampled
(bilinear by default) from the patch grid to the image. The model is any module containing
exactly one open_clip ``VisionTransformer`` (e.g. :class:`~sanitycheck.models.clip.ClipSimilarity`);
everything is batched, hooks and attention wrappers live only inside a context manager, and the
model is never changed.

Attention probabilities: open_clip's ``ResidualAttentionBlock`` calls ``nn.MultiheadAttention``
with ``need_weights=False``, and torch returns ``need_weights=True`` weights as a view made *after*
they were used, so no gradient reaches them. :class:`AttentionCapture` therefore swaps each block's
``attn.forward`` (an instance attribute, removed on exit) for an explicit computation with the
module's own parameters — in-projection, scaled dot product, softmax → A ``(B, heads, N, N)``,
``A @ V``, out-projection — whose A is in the autograd graph and equals torch's
``need_weights=True, average_attn_weights=False`` weights (tested).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from .base import Explainer
from ..targets import Target, as_target

__all__ = [
    "attention_rollout",
    "chefer_relevance",
    "find_visual",
    "AttentionCapture",
    "attention_maps",
    "ViTAttentionRollout",
    "ViTGradientWeightedAttention",
]

UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest", "area")


def _is_vit(m: nn.Module) -> bool:
    return (hasattr(m, "transformer") and hasattr(getattr(m, "transformer"), "resblocks")
            and hasattr(m, "conv1") and hasattr(m, "class_embedding") and hasattr(m, "positional_embedding"))


def _is_modified_resnet(m: nn.Module) -> bool:
    return type(m).__name__ == "ModifiedResNet" and hasattr(m, "layer4") and hasattr(m, "attnpool")


def find_visual(model: nn.Module) -> Tuple[str, nn.Module]:
    """``(name, module)`` of the single open_clip image tower (ViT or ModifiedResNet) inside ``model``."""
    found = [(n, m) for n, m in model.named_modules() if _is_vit(m) or _is_modified_resnet(m)]
    if len(found) != 1:
        what = "no open_clip VisionTransformer or ModifiedResNet" if not found else \
            f"{len(found)} image towers ({', '.join(n or '(root)' for n, _ in found)})"
        raise NotApplicableError(f"{type(model).__name__} has {what}; CLIP explainers need exactly one "
                                 "(wrap the CLIP model in sanitycheck.models.clip.ClipSimilarity)")
    return found[0]


def _vit(model: nn.Module, method: str) -> nn.Module:
    name, visual = find_visual(model)
    if not _is_vit(visual):
        raise NotApplicableError(f"{method} needs a ViT image tower; {name or 'the model'} is a "
                                 f"{type(visual).__name__} (use ViTGradCAM, which handles ResNet towers, or Occlusion)")
    return visual


def _grid(visual: nn.Module, n_tokens: int) -> Tuple[int, int]:
    gh, gw = (int(v) for v in visual.grid_size)
    if n_tokens != gh * gw + 1:
        raise NotApplicableError(f"the ViT has {n_tokens} tokens, expected 1 class token + {gh}x{gw} patches")
    return gh, gw


def _check_tok_pool(visual: nn.Module, method: str) -> None:
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        pooler = " and an attentional pooler" if getattr(visual, "attn_pool", None) is not None else ""
        raise NotApplicableError(f"{method} reads the class token's row of the relevance matrix, but this ViT "
                                 f"pools with {getattr(visual, 'pool_type', '?')!r}{pooler}")


def _upsample(maps: Tensor, size: Tuple[int, int], mode: str) -> Tensor:
    """(B, h, w) -> (B, H, W)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps[:, None], size=size, mode=mode, **kwargs)[:, 0]


def _check_upsample(name: str, upsample: str) -> str:
    if upsample not in UPSAMPLE_MODES:
        raise ConfigError(f"{name}: upsample {upsample!r} is unknown; use one of {UPSAMPLE_MODES}")
    return upsample


# --------------------------------------------------------------------------- attention flow (BERT and ViT)

HEAD_FUSIONS = ("mean", "max", "min")


def attention_rollout(attentions: Sequence[Tensor], residual: float = 0.5, head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> Tensor:
    """R = Â_L ⋯ Â_1 (B, T, T) with Â_l = (1 − residual)·fuse_h A_l + residual·I, rows renormalized.

    ``attentions``: per layer, first to last, (B, heads, T, T) row-stochastic over the real keys.
    ``head_fusion``: ``"mean"`` (default, the paper), ``"max"`` or ``"min"`` over heads. ``discard_ratio``:
    share of the lowest fused attentions per layer and sample set to 0 before the residual, column 0 (the
    class token) kept (default 0: nothing discarded). Used by the text transformers' ``attention_rollout``
    and the ViT's ``vit_attention_rollout``.
    Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers", ACL.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ConfigError(f"attention_rollout: head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    rollout = None
    for a in attentions:
        T = a.shape[-1]
        eye = torch.eye(T, dtype=a.dtype, device=a.device)
        fused = {"mean": a.mean, "max": a.amax, "min": a.amin}[head_fusion](dim=1)
        if discard_ratio > 0:
            fused = _discard_lowest(fused, discard_ratio)
        a_hat = (1.0 - residual) * fused + residual * eye
        a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True)
        rollout = a_hat if rollout is None else torch.bmm(a_hat, rollout)
    if rollout is None:
        raise ConfigError("attention_rollout needs at least one layer of attention")
    return rollout


def _discard_lowest(fused: Tensor, ratio: float) -> Tensor:
    """``fused`` (B, T, T) with its lowest ``ratio`` share per sample set to 0, column 0 kept."""
    flat = fused.flatten(1)
    k = int(flat.shape[1] * ratio)
    if k == 0:
        return fused
    low = flat.topk(k, dim=1, largest=False).indices
    keep = torch.ones_like(flat, dtype=torch.bool).scatter(1, low, False).reshape_as(fused)
    keep[:, :, 0] = True
    return fused * keep


def chefer_relevance(attentions: Sequence[Tensor], gradients: Sequence[Optional[Tensor]]) -> Tensor:
    """Chefer et al. (2021) self-attention relevance R (B, T, T): R ← R + mean_h (∇A ⊙ A)⁺ · R, R₀ = I.

    ``attentions`` and ``gradients`` (∂ target / ∂ A; ``None`` = no gradient reached the layer, read as 0):
    per layer, first to last, (B, heads, T, T). Used by the text transformers' ``chefer_relevance`` and the
    ViT's ``vit_chefer`` (which passes the layers from its ``start_layer`` on).
    Chefer, Gur & Wolf (2021), "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers", ICCV, eq. 5–6.
    """
    if len(attentions) == 0 or len(attentions) != len(gradients):
        raise ConfigError(f"chefer_relevance needs one gradient per attention layer, got {len(attentions)} "
                          f"attentions and {len(gradients)} gradients")
    B, _, T, _ = attentions[0].shape
    rel = torch.eye(T, dtype=attentions[0].dtype, device=attentions[0].device).expand(B, T, T).clone()
    for a, g in zip(attentions, gradients):
        if g is None:
            g = torch.zeros_like(a)
        a_bar = (g * a).clamp(min=0).mean(dim=1)
        rel = rel + torch.bmm(a_bar, rel)
    return rel


# --------------------------------------------------------------------------- attention capture


def _explicit_mha(mha: nn.MultiheadAttention, store: List[Optional[Tensor]], index: int, query: Tensor, key: Tensor,
                  value: Tensor, key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
                  attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True, is_causal: bool = False):
    """Self-attention of ``mha`` computed explicitly; stores A (B, heads, N, N) in ``store[index]``."""
    if not (key is query and value is query):
        raise NotApplicableError("attention capture supports self-attention only (key and value are the query)")
    if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
        raise NotApplicableError("attention capture needs nn.MultiheadAttention with a packed in-projection")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise NotApplicableError("attention capture does not support bias_k/bias_v or add_zero_attn")
    if mha.training and mha.dropout > 0:
        raise NotApplicableError("attention capture needs attention dropout off (call model.eval())")
    x = query if mha.batch_first else query.transpose(0, 1)  # (B, N, E)
    b, n, e = x.shape
    h = mha.num_heads
    d = e // h
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    q, k, v = (t.reshape(b, n, h, d).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # (B, H, N, d)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
    if is_causal and attn_mask is None:
        attn_mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
    if attn_mask is not None:
        mask = attn_mask
        if mask.dim() == 3:
            mask = mask.reshape(b, h, n, n)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    if key_padding_mask is not None:
        kpm = key_padding_mask[:, None, None, :]
        scores = scores.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool else scores + kpm.to(scores.dtype)
    attn = scores.softmax(dim=-1)
    store[index] = attn
    out = (attn @ v).transpose(1, 2).reshape(b, n, e)
    out = mha.out_proj(out)
    if not mha.batch_first:
        out = out.transpose(0, 1)
    weights = None
    if need_weights:
        weights = attn.mean(1) if average_attn_weights else attn
    return out, weights


class AttentionCapture:
    """Context manager: inside it, each block of ``visual`` computes attention explicitly and
    ``self.attentions[l]`` holds block l's probabilities ``(B, heads, N, N)`` of the last forward
    pass, in the autograd graph (differentiate a score with respect to them). On exit every
    wrapper is removed, even after an exception."""

    def __init__(self, visual: nn.Module):
        self.blocks = list(visual.transformer.resblocks)
        for i, blk in enumerate(self.blocks):
            if not isinstance(getattr(blk, "attn", None), nn.MultiheadAttention):
                raise NotApplicableError(f"block {i} of the ViT has {type(getattr(blk, 'attn', None)).__name__} "
                                         "attention, not nn.MultiheadAttention (open_clip's custom blocks are "
                                         "not supported)")
        self.attentions: List[Optional[Tensor]] = [None] * len(self.blocks)
        self._saved: List[Tuple[nn.Module, Any]] = []

    def __enter__(self) -> "AttentionCapture":
        for i, blk in enumerate(self.blocks):
            mha = blk.attn
            previous = mha.__dict__.get("forward", None)

            def forward(*args, _mha=mha, _i=i, **kwargs):
                return _explicit_mha(_mha, self.attentions, _i, *args, **kwargs)

            self._saved.append((mha, previous))
            mha.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        for mha, previous in self._saved:
            if previous is None:
                mha.__dict__.pop("forward", None)
            else:
                mha.forward = previous
        self._saved.clear()


def attention_maps(model: nn.Module, x: Tensor) -> List[Tensor]:
    """Per-block attention probabilities ``(B, heads, N, N)`` of the model's ViT on ``x`` (no grad)."""
    visual = _vit(model, "attention_maps")
    with torch.no_grad(), AttentionCapture(visual) as cap:
        model(x)
    return [a.detach() for a in cap.attentions]


def _score(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    out = model(x)
    scores = as_target(target)(out)
    if scores.shape != (x.shape[0],):
        raise ConfigError(f"target returned shape {tuple(scores.shape)} for a batch of {x.shape[0]}")
    return scores


# --------------------------------------------------------------------------- explainers


class _TokenMapExplainer(Explainer):
    """Shared: patch-grid maps upsampled to the input size.

    ``input_kind = "image_text"``: these methods need a CLIP image tower, so ``sanitycheck submit``
    runs them on the suites of that kind (``clip_text2img``), not on the CNN suites."""

    upsample: str = "bilinear"
    input_kind: str = "image_text"

    def _to_image(self, tokens: Tensor, grid: Tuple[int, int], x: Tensor) -> Tensor:
        maps = tokens.reshape(tokens.shape[0], *grid)
        return _upsample(maps, tuple(x.shape[-2:]), self.upsample)


class ViTAttentionRollout(_TokenMapExplainer):
    """Attention rollout (Abnar & Zuidema 2020). Class-agnostic: the target does not change the map.

    Parameters: ``head_fusion`` (``"mean"`` (default), ``"max"`` or ``"min"`` over heads),
    ``residual`` α (weight of the identity for the skip connection, default 0.5 as in the paper),
    ``discard_ratio`` (share of the lowest fused attentions per block set to 0, the CLS column kept,
    default 0), ``upsample`` (default ``"bilinear"``).
    """

    name = "vit_attention_rollout"
    FUSIONS = HEAD_FUSIONS

    def __init__(self, head_fusion: str = "mean", residual: float = 0.5, discard_ratio: float = 0.0,
                 upsample: str = "bilinear"):
        if head_fusion not in self.FUSIONS:
            raise ConfigError(f"{self.name}: head_fusion must be one of {self.FUSIONS}, got {head_fusion!r}")
        if not (0.0 <= residual <= 1.0):
            raise ConfigError(f"{self.name}: residual must be in [0, 1], got {residual!r}")
        if not (0.0 <= discard_ratio < 1.0):
            raise ConfigError(f"{self.name}: discard_ratio must be in [0, 1), got {discard_ratio!r}")
        self.head_fusion, self.residual, self.discard_ratio = head_fusion, float(residual), float(discard_ratio)
        self.upsample = _check_upsample(self.name, upsample)

    def config(self) -> Dict[str, Any]:
        return {"head_fusion": self.head_fusion, "residual": self.residual, "discard_ratio": self.discard_ratio,
                "upsample": self.upsample}

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        visual = _vit(model, self.name)
        _check_tok_pool(visual, self.name)
        with torch.no_grad(), AttentionCapture(visual) as cap:
            model(x)
        attentions = [t.detach() for t in cap.attentions]
        grid = _grid(visual, attentions[0].shape[-1])
        rollout = attention_rollout(attentions, residual=self.residual, head_fusion=self.head_fusion,
                                    discard_ratio=self.discard_ratio)
        return self._to_image(rollout[:, 0, 1:], grid, x)


class ViTGradientWeightedAttention(_TokenMapExplainer):
    """Gradient-weighted attention relevance (Chefer et al. 2021, the rule for self-attention).

    R starts as the identity (N x N per sample); for each block l ≥ ``start_layer`` in forward order,
    R ← R + mean_heads((∂s/∂A_l ⊙ A_l)⁺) · R, with s the target score (e.g. the cosine similarity to
    the prompt) and A_l the block's attention probabilities. The map is R[CLS, 1:] on the patch grid,
    upsampled. ``start_layer=-1`` uses only the last block (the default of the authors' CLIP notebook);
    ``start_layer=0`` (default) every block, as in the paper.
    """

    name = "vit_chefer"

    def __init__(self, start_layer: int = 0, upsample: str = "bilinear"):
        if not isinstance(start_layer, int):
            raise ConfigError(f"{self.name}: start_layer must be an integer, got {start_layer!r}")
        self.start_layer = start_layer
        self.upsample = _check_upsample(self.name, upsample)

    def config(self) -> Dict[str, Any]:
        return {"start_layer": self.start_layer, "upsample": self.upsample}

    def relevance(self, model: nn.Module, x: Tensor, target: Target) -> Tuple[Tensor, Tuple[int, int]]:
        """The full relevance matrices ``(B, N, N)`` and the patch grid."""
        visual = _vit(model, self.name)
        _check_tok_pool(visual, self.name)
        x = x.detach()
        with torch.enable_grad(), AttentionCapture(visual) as cap:
            scores = _score(model, x, target)
            attentions = list(cap.attentions)
            grads = torch.autograd.grad(scores.sum(), attentions, allow_unused=True)
        n_blocks = len(attentions)
        start = self.start_layer if self.start_layer >= 0 else n_blocks + self.start_layer
        if not (0 <= start < n_blocks):
            raise ConfigError(f"{self.name}: start_layer {self.start_layer} is out of range for {n_blocks} blocks")
        grid = _grid(visual, attentions[0].shape[-1])
        rel = chefer_relevance([a.detach() for a in attentions[start:]],
                               [None if g is None else g.detach() for g in grads[start:]])
        return rel, grid

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        rel, grid = self.relevance(model, x, target)
        return self._to_image(rel[:, 0, 1:], grid, x)
