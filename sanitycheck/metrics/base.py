"""Metric metadata (after Quantus: name, higher-is-better, category) on stateless, batched functions.

A similarity metric maps two batches of maps ``(B, H, W)`` to per-sample scores
``(B,)``. Where a score is undefined (a constant map has no ranks and no
normalization) the value is NaN; callers turn NaNs into explicit "undefined"
counts with reasons (see :mod:`sanitycheck.results`), never into silent numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    category: str
    description: str
    reference: str = ""


class Metric:
    """A named, stateless metric with metadata; call it like the function it wraps."""

    def __init__(self, fn: Callable[..., Tensor], info: MetricInfo):
        self.fn, self.info = fn, info
        self.name = info.name
        self.__doc__ = fn.__doc__

    def __call__(self, reference: Tensor, other: Tensor) -> Tensor:
        if reference.shape != other.shape:
            from ..errors import AttributionError

            raise AttributionError(
                f"{self.name}: cannot compare maps of shapes {tuple(reference.shape)} and {tuple(other.shape)}")
        return self.fn(reference, other)

    def __repr__(self) -> str:
        return f"Metric({self.info.name!r}, higher_is_better={self.info.higher_is_better})"


def metric(name: str, *, higher_is_better: bool, category: str, description: str, reference: str = ""):
    """Decorator: ``@metric("spearman", higher_is_better=True, category="similarity", description=...)``."""

    def wrap(fn: Callable[..., Tensor]) -> Metric:
        return Metric(fn, MetricInfo(name, higher_is_better, category, description, reference))

    return wrap
