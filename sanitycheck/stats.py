"""Aggregation of per-sample scores: mean with a percentile-bootstrap confidence interval.

NaN scores are undefined (e.g. a constant map has no rank correlation): they are
dropped from the mean and the interval and *counted* in ``n_undefined``, never
turned into numbers. Resampling is deterministic: the indices come from
:func:`sanitycheck.seeding.generator` seeded with ``seed_parts`` and depend only on
``(seed_parts, n_resamples, n)`` where ``n`` is the number of defined values, so a
row gets the same interval (up to float rounding, ~1e-16) alone
(:func:`bootstrap_ci`) or among others (:func:`bootstrap_ci_many`), on any device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor

from .errors import ConfigError
from .seeding import generator

__all__ = ["Summary", "bootstrap_ci", "bootstrap_ci_many"]

_CHUNK_ELEMENTS = 1 << 22  # resample indices drawn per chunk (bounds memory for large n)


@dataclass(frozen=True)
class Summary:
    """Mean of the defined values and its bootstrap interval; ``None`` when nothing is defined."""

    mean: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    n: int  # defined (non-NaN) values used
    n_undefined: int  # NaN values dropped

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def _check_args(n_resamples: int, confidence: float, seed_parts) -> None:
    if not isinstance(seed_parts, tuple):
        raise ConfigError(f"seed_parts must be a tuple (e.g. (run_seed, 'bootstrap', name)), got {seed_parts!r}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ConfigError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ConfigError(f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")


def bootstrap_ci_many(values: Tensor, *, seed_parts: tuple, n_resamples: int = 2000,
                      confidence: float = 0.95) -> List[Summary]:
    """One :class:`Summary` per row of ``values`` ``(K, n)``; NaN entries are undefined.

    Percentile bootstrap of the mean: for the ``m`` defined values of a row,
    ``randint(0, m, (n_resamples, m))`` from ``generator(*seed_parts)`` (drawn in
    chunks of resamples only when ``n_resamples * m`` exceeds 2**22); the
    resample means come from a count matrix times the values (one matmul for all
    rows that share ``m``, so the resample indices are reused across those rows);
    the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles (linear interpolation, as ``numpy.quantile``) of those means.
    ``m == 1``, or all defined values equal to ``v``, gives the interval ``(v, v)``; ``m == 0`` gives ``None`` for mean and
    interval. Computed in float64 (float32 on MPS) on the values' device.
    """
    _check_args(n_resamples, confidence, seed_parts)
    values = torch.as_tensor(values)
    if values.dim() != 2:
        raise ConfigError(f"bootstrap_ci_many expects values of shape (K, n), got {tuple(values.shape)}")
    device = values.device
    wd = torch.float32 if device.type == "mps" else torch.float64
    v = values.to(wd)
    k, n = v.shape
    if bool(torch.isinf(v).any()):
        raise ConfigError("bootstrap: scores contain inf; only NaN (undefined) is allowed besides finite values")
    if n == 0:
        return [Summary(None, None, None, 0, 0) for _ in range(k)]
    defined = ~torch.isnan(v)
    counts = defined.sum(1)
    # defined values first, in their original order (stable sort of the NaN flag)
    order = torch.sort((~defined).to(torch.uint8), dim=1, stable=True).indices
    packed = torch.gather(v, 1, order)
    means = torch.where(counts > 0, torch.where(defined, v, torch.zeros_like(v)).sum(1) / counts.clamp(min=1),
                        torch.full((k,), float("nan"), dtype=wd, device=device))
    # a row whose defined values are all equal has exactly that mean and interval (no rounding)
    big = torch.finfo(wd).max
    vmin = torch.where(defined, v, torch.full_like(v, big)).amin(1)
    vmax = torch.where(defined, v, torch.full_like(v, -big)).amax(1)
    constant = (counts > 0) & (vmin == vmax)
    means = torch.where(constant, vmin, means)
    low = means.clone()
    high = means.clone()
    q = torch.tensor([(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0], dtype=wd, device=device)
    for m in sorted({int(c) for c in counts[~constant].tolist()} - {0, 1}):  # per distinct count, not per row
        rows = ((counts == m) & ~constant).nonzero().flatten()
        g = generator(*seed_parts)
        target = packed[rows, :m].T  # (m, rows)
        resampled = torch.empty(n_resamples, rows.numel(), dtype=wd, device=device)
        step = max(1, _CHUNK_ELEMENTS // m)  # depends on m only, so the draws do too
        for start in range(0, n_resamples, step):
            r = min(step, n_resamples - start)
            idx = torch.randint(0, m, (r, m), generator=g).to(device)
            weights = torch.zeros(r, m, dtype=wd, device=device)
            weights.scatter_add_(1, idx, torch.ones(r, m, dtype=wd, device=device))
            resampled[start:start + r] = weights @ target / m
        bounds = torch.quantile(resampled, q, dim=0)  # (2, rows)
        low[rows], high[rows] = bounds[0], bounds[1]
    out: List[Summary] = []
    for mean, lo, hi, c in zip(means.tolist(), low.tolist(), high.tolist(), counts.tolist()):
        if c == 0:
            out.append(Summary(None, None, None, 0, n))
        else:
            out.append(Summary(float(mean), float(lo), float(hi), int(c), n - int(c)))
    return out


def bootstrap_ci(values: Tensor, *, seed_parts: tuple, n_resamples: int = 2000,
                 confidence: float = 0.95) -> Summary:
    """:class:`Summary` of a 1-D tensor of scores (NaN = undefined); see :func:`bootstrap_ci_many`."""
    values = torch.as_tensor(values)
    if values.dim() != 1:
        raise ConfigError(f"bootstrap_ci expects a 1-D tensor of scores, got shape {tuple(values.shape)}")
    return bootstrap_ci_many(values.unsqueeze(0), seed_parts=seed_parts, n_resamples=n_resamples,
                             confidence=confidence)[0]
