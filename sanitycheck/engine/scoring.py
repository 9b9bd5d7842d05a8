"""Map storage and per-sample scoring helpers shared by the modalities and the engine."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..explainers.base import ExplainerError

_F32 = torch.finfo(torch.float32)


def to_float32_maps(maps: Tensor, name: str, where: str = "") -> Tuple[Tensor, int]:
    """``(maps as float32 on the CPU, number of maps rescaled)``.

    A float64 map whose largest |value| lies outside float32's normal range (below ~1.2e-38 or above ~3.4e38) is
    multiplied by an exact power of two that brings its largest |value| into [1, 2): order, signs and ratios are
    kept, so a scale factor cannot change a rank-based verdict (casting would flush it to zeros or infinities).
    Maps in the normal range are never rescaled (infidelity and other metrics depend on scale). A map of a
    narrower type whose non-zero values are all below the float32 normal range has lost its precision already
    and is refused."""
    at = f" ({where})" if where else ""
    maps = maps.detach()
    flat = maps.reshape(maps.shape[0], -1) if maps.ndim > 1 else maps.reshape(1, -1)
    rescaled = 0
    if maps.dtype == torch.float64:
        amax = flat.abs().amax(1) if flat.shape[1] else torch.zeros(flat.shape[0], dtype=torch.float64)
        out = (amax > 0) & ((amax < _F32.tiny) | (amax > _F32.max))
        if out.any():
            exp = -torch.floor(torch.log2(amax[out]))  # 2**exp * amax lies in [1, 2)
            half = torch.floor(exp / 2)  # two exact steps: 2**exp alone overflows for float64 subnormals
            view = (-1,) + (1,) * (maps.ndim - 1)
            maps = maps.clone()
            maps[out] = maps[out] * torch.pow(2.0, half).reshape(view) * torch.pow(2.0, exp - half).reshape(view)
            rescaled = int(out.sum())
        return maps.to("cpu", torch.float32), rescaled
    maps = maps.to("cpu", torch.float32)
    amax = maps.reshape(maps.shape[0], -1).abs().amax(1) if maps.numel() else torch.zeros(0)
    tiny = (amax > 0) & (amax < _F32.tiny)
    if tiny.any():
        bad = tiny.nonzero().flatten().tolist()
        raise ExplainerError(
            f"explainer {name!r} returned maps whose non-zero values are all subnormal in float32 (largest |value| "
            f"{float(amax[tiny].max()):.3g} < {_F32.tiny:.3g}) for samples {bad[:10]} of the batch{at}: their "
            "ranking is already lost to rounding. Return unscaled maps, or float64 maps (rescaled here by an exact "
            "power of two)")
    return maps, rescaled


def undefined_reason(ref: Tensor, other: Tensor, scores: Tensor) -> Optional[str]:
    """Why some of ``scores`` are NaN: constant maps in either set, or another reason (None when none are)."""
    nan = torch.isnan(scores)
    if not nan.any():
        return None
    flat_r, flat_o = ref.flatten(1), other.flatten(1)
    const_r = (flat_r.amax(1) == flat_r.amin(1)) & nan
    const_o = (flat_o.amax(1) == flat_o.amin(1)) & nan
    parts = []
    if const_o.any():
        zero = int(((flat_o.abs().amax(1) == 0) & const_o).sum())
        parts.append(f"{int(const_o.sum())} constant maps in this state" + (f" ({zero} all zero)" if zero else ""))
    if const_r.any():
        parts.append(f"{int(const_r.sum())} constant maps of the original model")
    other_nan = int((nan & ~const_r & ~const_o).sum())
    if other_nan:
        parts.append(f"{other_nan} scores undefined for another reason")
    return "; ".join(parts) + " (a constant map has no ranks and no [0,1] normalization)"


def bootstrap_label(name: str) -> str:
    """The explainer's part of its bootstrap seed: the attribute of an import path (``../m.py:fn`` -> ``fn``), so
    that absolute, relative and ``../`` spellings of one explainer get the same CIs; a plain name is unchanged."""
    return name.rpartition(":")[2] if ":" in name else name
