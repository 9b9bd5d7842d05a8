"""Metrics of an activations audit's maps: per text, the fraction of variance each site's dictionary leaves
unexplained (``(N, n_sites)``, :mod:`sanitycheck.modalities.activations`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Metric, MetricInfo

__all__ = ["fvu_relative_change"]


def _relative_change(reference: Tensor, other: Tensor) -> Tensor:
    """Per text, the mean over sites of ``|other - reference| / reference``: how far another dictionary's (or
    another model state's) unexplained variance moves from the reference's. 0 for identical maps; NaN where the
    reference explains a text perfectly (FVU 0: no scale to compare against)."""
    ref, oth = reference.double().flatten(1), other.double().flatten(1)
    rel = (oth - ref).abs() / ref
    rel = torch.where(ref > 0, rel, torch.full_like(rel, float("nan")))
    return rel.mean(1)


fvu_relative_change = Metric(_relative_change, MetricInfo(
    "fvu_relative_change", False, "similarity",
    "per text, the mean over sites of |FVU(other) - FVU(reference)| / FVU(reference)", identity=0.0),
    modalities=("activations",))
