"""Saliency methods for CLIP image towers that the generic image explainers do not cover.

* :class:`ViTAttentionRollout` — Abnar & Zuidema 2020, "Quantifying Attention Flow in
  Transformers": per block Â = (1 − α)·fuse_h(A) + α·I (rows renormalized), R = Â_L ⋯ Â_1; the map
  is R[CLS, patches]. Class-agnostic: the target is ignored (the same map for every prompt).
* :class:`ViTGradientWeightedAttention` — Chefer, Gur & Wolf 2021, "Generic Attention-model
  Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV): R = I, then per
  block R ← R + mean_h (∇A ⊙ A)⁺ · R, with ∇A the gradient of the target score with respect to
  the block's attention probabilities; the map is R[CLS, patches].
* :class:`ViTGradCAM` — Grad-CAM (Selvaraju et al. 2017) on the tokens entering the last visual
  block (its first LayerNorm's output), CLS dropped, channel weights = mean gradient over the
  patch tokens; on a ResNet tower (open_clip ``ModifiedResNet``) on the output of ``layer4``.
  Not the *output* of the last block: only the CLS token of that output reaches the embedding,
  so the patch tokens' gradients are exactly zero there (REFERENCES.md, pytorch-grad-cam #513).
* :class:`Occlusion` — Zeiler & Fergus 2014: the drop of the target score when a window (default:
  one ViT patch) is replaced by a baseline value, every window of every image batched.

All are :class:`~sanitycheck.explainers.base.Explainer` subclasses: ``explainer(model, x, target)``
with ``x`` images in [0, 1] ``(B, 3, H, W)`` and ``target`` a prompt index per sample (or any
:class:`~sanitycheck.targets.Target`), returning maps ``(B, H, W)``; token-level maps are upsampled
(bilinear by default) from the patch grid to the image. The model is any module containing
exactly one open_clip ``VisionTransformer`` (e.g. :class:`~sanitycheck.clip.model.ClipSimilarity`);
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
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from ..explainers.base import Explainer
from ..targets import Target, as_target

__all__ = [
    "find_visual",
    "AttentionCapture",
    "attention_maps",
    "ViTAttentionRollout",
    "ViTGradientWeightedAttention",
    "ViTGradCAM",
    "Occlusion",
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
                                 "(wrap the CLIP model in sanitycheck.clip.ClipSimilarity)")
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
    FUSIONS = ("mean", "max", "min")

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
        attentions = cap.attentions
        n = attentions[0].shape[-1]
        grid = _grid(visual, n)
        eye = torch.eye(n, dtype=attentions[0].dtype, device=x.device)
        rollout = eye.expand(x.shape[0], n, n)
        for a in attentions:
            fused = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[self.head_fusion]
            if self.discard_ratio > 0:
                flat = fused.flatten(1)
                k = int(flat.shape[1] * self.discard_ratio)
                if k > 0:
                    low = flat.topk(k, dim=1, largest=False).indices
                    keep = torch.ones_like(flat, dtype=torch.bool).scatter(1, low, False)
                    keep = keep.reshape_as(fused)
                    keep[:, :, 0] = True
                    fused = fused * keep
            a_hat = (1 - self.residual) * fused + self.residual * eye
            a_hat = a_hat / a_hat.sum(-1, keepdim=True)
            rollout = a_hat @ rollout
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
        n = attentions[0].shape[-1]
        grid = _grid(visual, n)
        rel = torch.eye(n, dtype=attentions[0].dtype, device=x.device).expand(x.shape[0], n, n)
        for a, g in list(zip(attentions, grads))[start:]:
            if g is None:
                g = torch.zeros_like(a)
            cam = (g * a).clamp(min=0).mean(1).detach()
            rel = rel + cam @ rel
        return rel, grid

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        rel, grid = self.relevance(model, x, target)
        return self._to_image(rel[:, 0, 1:], grid, x)


@contextmanager
def _capture_output(module: nn.Module) -> Iterator[Dict[str, Tensor]]:
    store: Dict[str, Tensor] = {}

    def hook(_m, _inp, out):
        store["out"] = out[0] if isinstance(out, (tuple, list)) else out

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


class ViTGradCAM(_TokenMapExplainer):
    """Grad-CAM for CLIP image towers.

    ViT: the activations are the tokens *entering* block ``block`` (default the last): the output
    of its first LayerNorm ``ln_1`` (B, N, D). Channel weights α_d = mean over patch tokens of
    ∂s/∂a_d; map = ReLU(Σ_d α_d a_d) over the patch tokens (CLS dropped), reshaped to the grid and
    upsampled. ResNet tower (open_clip ``ModifiedResNet``): the output of ``layer4`` (B, C, h, w),
    classic Grad-CAM. ``relu=False`` keeps the sign. The module used on the last call is in ``last_layer``.
    """

    name = "vit_gradcam"

    def __init__(self, block: int = -1, relu: bool = True, upsample: str = "bilinear"):
        if not isinstance(block, int):
            raise ConfigError(f"{self.name}: block must be an integer, got {block!r}")
        self.block, self.relu = block, bool(relu)
        self.upsample = _check_upsample(self.name, upsample)
        self.last_layer: Optional[str] = None

    def config(self) -> Dict[str, Any]:
        return {"block": self.block, "relu": self.relu, "upsample": self.upsample}

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        vname, visual = find_visual(model)
        prefix = f"{vname}." if vname else ""
        if _is_vit(visual):
            blocks = visual.transformer.resblocks
            if not (-len(blocks) <= self.block < len(blocks)):
                raise ConfigError(f"{self.name}: block {self.block} is out of range for {len(blocks)} blocks")
            idx = self.block % len(blocks)
            layer = blocks[idx].ln_1
            self.last_layer = f"{prefix}transformer.resblocks.{idx}.ln_1"
        else:
            layer = visual.layer4
            self.last_layer = f"{prefix}layer4"
        x = x.detach()
        with torch.enable_grad(), _capture_output(layer) as store:
            scores = _score(model, x, target)
            act = store["out"]
            (grad,) = torch.autograd.grad(scores.sum(), act)
        act, grad = act.detach(), grad.detach()
        if act.dim() == 3:  # ViT tokens (B, N, D)
            grid = _grid(visual, act.shape[1])
            weights = grad[:, 1:].mean(1)                         # (B, D)
            cam = (act[:, 1:] * weights[:, None, :]).sum(-1)      # (B, N-1)
            if self.relu:
                cam = cam.clamp(min=0)
            return self._to_image(cam, grid, x)
        weights = grad.mean(dim=(2, 3), keepdim=True)             # (B, C, 1, 1)
        cam = (act * weights).sum(1)                              # (B, h, w)
        if self.relu:
            cam = cam.clamp(min=0)
        return _upsample(cam, tuple(x.shape[-2:]), self.upsample)


class Occlusion(Explainer):
    """Patch occlusion (Zeiler & Fergus 2014): map = target score drop when a window is occluded.

    Parameters: ``window`` (side in pixels; default the ViT's patch size, else 8), ``stride``
    (default = ``window``: non-overlapping windows aligned with the patches), ``baseline`` (the value
    the window is filled with, in the model's input space [0, 1]; default 0 = black, the scenes'
    background), ``batch_size`` (occluded images per forward pass; bounds memory, does not change
    the maps). A pixel's value is the mean drop over the windows covering it (0 where none does).
    Positive = occluding the region lowers the score. Forward passes only, no gradients.
    """

    name = "occlusion"

    def __init__(self, window: Optional[int] = None, stride: Optional[int] = None, baseline: float = 0.0,
                 batch_size: int = 1024):
        for label, v in (("window", window), ("stride", stride)):
            if v is not None and not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"{self.name}: {label} must be a positive integer or None, got {v!r}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError(f"{self.name}: batch_size must be a positive integer, got {batch_size!r}")
        self.window, self.stride, self.baseline, self.batch_size = window, stride, float(baseline), batch_size
        self.last_window: Optional[int] = None

    def config(self) -> Dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "baseline": self.baseline}

    @staticmethod
    def _starts(size: int, window: int, stride: int) -> List[int]:
        starts = list(range(0, max(size - window, 0) + 1, stride))
        if starts[-1] + window < size:
            starts.append(size - window)
        return starts

    def window_masks(self, model: nn.Module, x: Tensor) -> Tensor:
        """(n_windows, H, W) bool masks of the occluded windows."""
        window = self.window
        if window is None:
            try:
                _, visual = find_visual(model)
                window = int(visual.patch_size[0]) if _is_vit(visual) else 8
            except NotApplicableError:
                window = 8
        self.last_window = window
        stride = self.stride or window
        h, w = x.shape[-2:]
        ys, xs = self._starts(h, min(window, h), stride), self._starts(w, min(window, w), stride)
        masks = torch.zeros(len(ys) * len(xs), h, w, dtype=torch.bool, device=x.device)
        k = 0
        for y0 in ys:
            for x0 in xs:
                masks[k, y0:y0 + window, x0:x0 + window] = True
                k += 1
        return masks

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        masks = self.window_masks(model, x)                     # (M, H, W)
        n_win = masks.shape[0]
        b = x.shape[0]
        x = x.detach()
        with torch.no_grad():
            base = _score(model, x, target)                     # (B,)
            drops = torch.empty(b, n_win, dtype=base.dtype, device=x.device)
            per_chunk = max(1, self.batch_size // max(1, b))    # windows per pass, all samples at once
            for start in range(0, n_win, per_chunk):
                m = masks[start:start + per_chunk]              # (c, H, W)
                c = m.shape[0]
                occluded = torch.where(m[None, :, None], torch.as_tensor(self.baseline, dtype=x.dtype,
                                                                         device=x.device), x[:, None])
                scores = target.repeat_interleave(c)(model(occluded.reshape(b * c, *x.shape[1:])))
                drops[:, start:start + c] = base[:, None] - scores.reshape(b, c)
        flat = masks.flatten(1).to(drops.dtype)                 # (M, H*W)
        counts = flat.sum(0).clamp(min=1)
        return ((drops @ flat) / counts).reshape(b, *x.shape[-2:])
