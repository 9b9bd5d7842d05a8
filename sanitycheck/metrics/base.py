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
    #: the score of a map compared with itself (1 for similarities, 0 for entropy increase)
    identity: float = 1.0


class Metric:
    """A named, stateless metric with metadata; call it like the function it wraps."""

    input_kind = "image"

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


class TokenMetric(Metric):
    """A metric of two token-importance batches (B, L) that reads only each row's first ``lengths`` tokens."""

    input_kind = "text"

    def __call__(self, reference: Tensor, other: Tensor, lengths: Tensor = None) -> Tensor:  # type: ignore[override]
        if reference.shape != other.shape:
            from ..errors import AttributionError

            raise AttributionError(
                f"{self.name}: cannot compare importances of shapes {tuple(reference.shape)} and {tuple(other.shape)}")
        if lengths is None:
            from ..errors import DataError

            raise DataError(f"{self.name} compares token importances: pass the lengths of the texts")
        return self.fn(reference, other, lengths)


def metric(name: str, *, higher_is_better: bool, category: str, description: str, reference: str = "",
           identity: float = 1.0):
    """Decorator: ``@metric("spearman", higher_is_better=True, category="similarity", description=...)``."""

    def wrap(fn: Callable[..., Tensor]) -> Metric:
        return Metric(fn, MetricInfo(name, higher_is_better, category, description, reference, identity))

    return wrap


# ----------------------------------------------------------------------------- faithfulness
@dataclass
class Evaluation:
    """What a faithfulness family returns for one batch of maps.

    ``scores``: named per-sample scores, each ``(B,)`` (NaN where undefined, e.g. a constant map
    for a correlation) — become records with ``step`` = ``summary_step`` (e.g. ``"auc"``).
    ``curve``: optional ``(B, S)`` per-step values (e.g. the class probability after each deletion
    step) — become records with ``metric`` = ``curve_metric`` and ``step`` = ``str(i)``.
    ``notes``: facts to record with the results (e.g. how many maps had ties broken at random).
    """

    scores: "dict"
    curve: "Tensor | None" = None
    curve_metric: str = "probability"
    summary_step: str = "auc"
    notes: "dict | None" = None


class FaithfulnessFamily:
    """Base of faithfulness evaluations (deletion, insertion, ROAD, faithfulness correlation, ...).

    Stateless apart from its parameters; ``evaluate`` is batched over the whole batch (all
    perturbation steps of all images go through the model in large batches), runs on the model's
    device, never changes the model, and draws randomness only from generators derived from
    ``seed`` (``sanitycheck.seeding``), keyed per sample where batch invariance matters.
    """

    name: str = "faithfulness"
    #: per score name: True when higher is better
    higher_is_better: "dict" = {}
    description: str = ""
    reference: str = ""

    def evaluate(self, model, x: Tensor, target, maps: Tensor, *, seed: int) -> Evaluation:  # pragma: no cover
        raise NotImplementedError

    def config(self) -> "dict":
        return {}
