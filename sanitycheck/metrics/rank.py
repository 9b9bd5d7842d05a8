"""Batched rank statistics between two token-importance vectors per instance (Jain & Wallace 2019).

Inputs are ``(B, L)`` tensors ``a`` and ``b`` with per-row ``lengths`` (B,) or a bool ``mask`` (B, L): only the
first ``lengths[i]`` positions of row ``i`` (the mask's True positions) count (padding is ignored whatever it
holds). Everything is
computed in float64, after dividing each row by its largest magnitude over its real positions (a zero
row stays zero and undefined), so the scale of the importances cannot change a statistic.

* :func:`kendall_tau` — Kendall's τ-b (ties corrected) by the exact pairwise count, vectorized over
  the batch in O(B·L²) memory, with the two-sided p-value of the normal approximation using the
  tie-corrected variance, exactly as ``scipy.stats.kendalltau(method="asymptotic", variant="b")``.
  τ and p are NaN for a row shorter than 2 or where either vector is constant (as scipy).
  Values within 1e-9 of the row's largest magnitude of each other are ties (``TIE_TOLERANCE``).
* :func:`topk_overlap` — the fraction of the top-k positions of ``a`` that are also top-k in ``b``.
"""

from __future__ import annotations

import math
from typing import Any, Tuple, Union

import torch
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = ["kendall_tau", "topk_overlap"]


def _prepare(a: Any, b: Any, lengths: Any, mask: Any = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    a = torch.as_tensor(a)
    b = torch.as_tensor(b)
    if a.dim() != 2 or a.shape != b.shape:
        raise DataError(f"a and b must be (B, L) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.detach().to(torch.float64)
    b = b.detach().to(device=a.device, dtype=torch.float64)
    if mask is not None:  # the valid positions themselves (True at the real tokens), in place of lengths
        if lengths is not None:
            raise ConfigError("pass lengths or mask, not both")
        valid = torch.as_tensor(mask)
        if valid.dtype != torch.bool or valid.shape != a.shape:
            raise DataError(f"mask must be a bool tensor of shape {tuple(a.shape)}, got {valid.dtype} "
                            f"{tuple(valid.shape)}")
        valid = valid.to(a.device)
        lengths = valid.sum(1)
    else:
        valid = None
    if lengths is None:
        lengths = torch.full((a.shape[0],), a.shape[1], dtype=torch.long, device=a.device)
    lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise DataError(f"lengths must be integers, got dtype {lengths.dtype}")
    lengths = lengths.to(device=a.device, dtype=torch.long)
    if lengths.shape != (a.shape[0],):
        raise DataError(f"lengths must have shape ({a.shape[0]},), got {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > a.shape[1]):
        raise DataError(f"lengths must be in [0, {a.shape[1]}], got [{int(lengths.min())}, {int(lengths.max())}]")
    if valid is None:
        valid = torch.arange(a.shape[1], device=a.device)[None, :] < lengths[:, None]
    if bool((~torch.isfinite(a) & valid).any() or (~torch.isfinite(b) & valid).any()):
        raise DataError("a and b must be finite at the real positions (NaN/inf found)")
    return _snap(_normalize(a, valid), valid), _snap(_normalize(b, valid), valid), lengths, valid


def _normalize(x: Tensor, valid: Tensor) -> Tensor:
    """Each row divided by its largest magnitude over the real positions (float64); zero rows stay zero."""
    if x.numel() == 0:
        return x
    scale = x.abs().masked_fill(~valid, 0.0).amax(dim=1, keepdim=True)
    return torch.where(scale > 0, x / torch.where(scale > 0, scale, torch.ones_like(scale)), x)


#: values closer than this share of a row's largest magnitude are ties
TIE_TOLERANCE = 1e-9


def _snap(x: Tensor, valid: Tensor) -> Tensor:
    """Round each row to multiples of ``TIE_TOLERANCE`` × its largest magnitude over the real positions.

    Importances that are equal in exact arithmetic (two deletions that change the output equally, a
    saturated output) come out of float64 a few ulps apart, and which of them is larger then depends on
    the batch the instance was computed in; a rank statistic would flip with it. Snapping makes such
    near-ties exact ties, so per-instance scores do not depend on batch composition.
    """
    scale = x.abs().masked_fill(~valid, 0.0).amax(dim=1, keepdim=True)
    step = torch.where(scale > 0, scale * TIE_TOLERANCE, torch.ones_like(scale))
    return torch.where(valid, torch.round(x / step) * step, x)


def _tie_stats(x: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Per row: tied pairs Σ t(t-1)/2, Σ t(t-1)(t-2) and Σ t(t-1)(2t+5) over the tie groups (sizes t)."""
    pair_valid = valid[:, :, None] & valid[:, None, :]
    g = ((x[:, :, None] == x[:, None, :]) & pair_valid).sum(-1).to(torch.float64)  # group size of each element
    v = valid.to(torch.float64)
    # a sum over groups of f(t) is a sum over elements of f(t)/t
    ties = ((g - 1) / 2 * v).sum(-1)
    s0 = ((g - 1) * (g - 2) * v).sum(-1)
    s1 = ((g - 1) * (2 * g + 5) * v).sum(-1)
    return ties, s0, s1


def kendall_tau(a: Any, b: Any, lengths: Any = None, *, mask: Any = None) -> Tuple[Tensor, Tensor]:
    """Kendall's τ-b and its two-sided asymptotic p-value per row: ``(tau (B,), p_value (B,))``, float64.

    τ-b = (C − D) / sqrt((n0 − n1)(n0 − n2)), n0 = n(n−1)/2, n1 and n2 the pairs tied in a and in b.
    p = 2·(1 − Φ(|C − D| / sqrt(var))) with var = (n(n−1)(2n+5) − Σ t(t−1)(2t+5) − Σ u(u−1)(2u+5))/18
    + 2·n1·n2 / (n(n−1)) + Σ t(t−1)(t−2)·Σ u(u−1)(u−2) / (9·n(n−1)(n−2)), as scipy
    (t, u the tie-group sizes of a and b).
    NaN for rows with fewer than 2 positions or a constant ``a`` or ``b``. ``mask`` (bool (B, L), True at the
    real positions) may replace ``lengths``: the same numbers for ``mask = arange(L) < lengths[:, None]``.
    """
    a, b, lengths, valid = _prepare(a, b, lengths, mask)
    B, L = a.shape
    if B == 0:
        empty = torch.empty(0, dtype=torch.float64, device=a.device)
        return empty, empty.clone()
    upper = torch.triu(torch.ones(L, L, dtype=torch.bool, device=a.device), diagonal=1)
    pairs = valid[:, :, None] & valid[:, None, :] & upper
    sa = torch.sign(a[:, None, :] - a[:, :, None])
    sb = torch.sign(b[:, None, :] - b[:, :, None])
    s = (sa * sb * pairs).sum((1, 2))  # concordant minus discordant pairs
    n = lengths.to(torch.float64)
    n0 = n * (n - 1) / 2
    xtie, x0, x1 = _tie_stats(a, valid)
    ytie, y0, y1 = _tie_stats(b, valid)
    undefined = (lengths < 2) | (xtie == n0) | (ytie == n0)
    nan = torch.full_like(n, float("nan"))
    denom = torch.sqrt((n0 - xtie).clamp_min(0)) * torch.sqrt((n0 - ytie).clamp_min(0))
    tau = torch.where(undefined, nan, s / torch.where(undefined, torch.ones_like(denom), denom)).clamp(-1.0, 1.0)
    m = n * (n - 1)
    m_safe = torch.where(m > 0, m, torch.ones_like(m))
    n2_safe = torch.where(n > 2, n - 2, torch.ones_like(n))
    # x0 = y0 = 0 whenever n <= 2 (no tie group has 3 members): the last term is 0 there
    var = (m * (2 * n + 5) - x1 - y1) / 18 + 2 * xtie * ytie / m_safe + x0 * y0 / (9 * m_safe * n2_safe)
    var_safe = torch.where(undefined | (var <= 0), torch.ones_like(var), var)
    z = s / torch.sqrt(var_safe)
    p = torch.special.erfc(z.abs() / math.sqrt(2.0))
    p = torch.where(undefined, nan, p.clamp(0.0, 1.0))
    return tau, p


def topk_overlap(a: Any, b: Any, lengths: Any = None, k: Union[int, float] = 0.1, *, mask: Any = None) -> Tensor:
    """Fraction (B,) of the top-k positions of ``a`` (largest values) that are top-k positions of ``b``.

    ``k``: an int ≥ 1 (a count, capped at each row's length) or a float in (0, 1] (a share of each row's
    length, rounded up, at least 1 position). Ties are broken by position (the earlier position first),
    deterministically. Pass ``a.abs()`` and ``b.abs()`` to rank by magnitude. NaN for empty rows. ``mask``
    (bool (B, L), True at the real positions) may replace ``lengths``.
    """
    a, b, lengths, valid = _prepare(a, b, lengths, mask)
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ConfigError(f"k must be an int >= 1 or a float in (0, 1], got {k!r}")
    n = lengths.to(torch.float64)
    if isinstance(k, int):
        if k < 1:
            raise ConfigError(f"k must be >= 1 as a count, got {k}")
        kk = torch.clamp(torch.full_like(n, float(k)), max=n)
    else:
        if not 0.0 < k <= 1.0:
            raise ConfigError(f"k as a share must be in (0, 1], got {k}")
        kk = torch.minimum(torch.clamp(torch.ceil(k * n - 1e-9), min=1.0), n)

    def in_topk(x: Tensor) -> Tensor:
        order = torch.argsort(x.masked_fill(~valid, float("-inf")), dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(x.shape[1], device=x.device).expand_as(order).contiguous())
        return (rank.to(torch.float64) < kk[:, None]) & valid

    shared = (in_topk(a) & in_topk(b)).sum(1).to(torch.float64)
    return torch.where(kk > 0, shared / kk.clamp_min(1.0), torch.full_like(n, float("nan")))


# ----------------------------------------------------------------------------- registered token metrics
# Similarity of two token-importance vectors (B, L) over each row's real tokens, for the randomization
# checks of attention models (the text analogue of ``spearman_abs``). Called ``metric(ref, other, mask=mask)``,
# mask True at the real tokens (``token_mask(lengths, L)``).
from .base import MetricInfo, TokenMetric  # noqa: E402  (after the functions they wrap)

_JW = "Jain & Wallace, Attention is not Explanation, NAACL 2019"


def _kendall_abs(reference: Tensor, other: Tensor, mask: Tensor) -> Tensor:
    return kendall_tau(reference.abs(), other.abs(), mask=mask)[0]


def _kendall(reference: Tensor, other: Tensor, mask: Tensor) -> Tensor:
    return kendall_tau(reference, other, mask=mask)[0]


def _topk_abs(reference: Tensor, other: Tensor, mask: Tensor) -> Tensor:
    return topk_overlap(reference.abs(), other.abs(), k=0.2, mask=mask)


token_kendall_abs = TokenMetric(_kendall_abs, MetricInfo(
    "token_kendall_abs", True, "similarity", "Kendall tau-b of absolute token importances (real tokens only)", _JW))
token_kendall = TokenMetric(_kendall, MetricInfo(
    "token_kendall", True, "similarity", "Kendall tau-b of signed token importances (real tokens only)", _JW))
token_topk_overlap = TokenMetric(_topk_abs, MetricInfo(
    "token_topk_overlap", True, "similarity",
    "share of the top 20% tokens by |importance| that stay in the top 20%", _JW))
