"""Metric metadata (after Quantus: name, higher-is-better, category) on stateless, batched functions.

A similarity metric maps two batches of maps ``(B, H, W)`` to per-sample scores
``(B,)``. Where a score is undefined (a constant map has no ranks and no
normalization) the value is NaN; callers turn NaNs into explicit "undefined"
counts with reasons (see :mod:`sanitycheck.results`), never into silent numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
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


def token_mask(lengths: Tensor, width: int) -> Tensor:
    """``(N, width)`` bool: True at each row's first ``lengths[i]`` positions (the real tokens), False at padding."""
    lengths = torch.as_tensor(lengths)
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def _check_mask(name: str, mask: Any, reference: Tensor) -> Tensor:
    from ..errors import DataError

    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise DataError(f"{name}: mask must be a bool tensor (True at the valid entries), got dtype {mask.dtype}; "
                        "build one from text lengths with sanitycheck.metrics.base.token_mask(lengths, width)")
    if tuple(mask.shape) != tuple(reference.shape):
        raise DataError(f"{name}: mask has shape {tuple(mask.shape)}, expected the maps' shape "
                        f"{tuple(reference.shape)}")
    return mask.to(reference.device)


class Metric:
    """A named, stateless metric with metadata; call it like the function it wraps.

    ``metric(reference, other, mask=None) -> (N,)``: ``mask`` (bool, the maps' shape) marks the valid entries,
    e.g. the real tokens of variable-length texts (padding False). A metric that compares whole maps
    (``uses_mask`` False: the image similarities) refuses a mask that hides anything; one that reads it
    (``uses_mask`` True: the token rank statistics) needs it. ``modalities``: the input kinds whose maps it
    compares (the suite parser refuses it elsewhere)."""

    modalities: Tuple[str, ...] = ("image", "image_text")
    #: True when ``fn`` takes ``mask=`` and compares only the valid entries
    uses_mask: bool = False

    def __init__(self, fn: Callable[..., Tensor], info: MetricInfo, *, modalities: Optional[Sequence[str]] = None,
                 uses_mask: Optional[bool] = None):
        self.fn, self.info = fn, info
        self.name = info.name
        self.__doc__ = fn.__doc__
        if modalities is not None:
            self.modalities = tuple(modalities)
        if uses_mask is not None:
            self.uses_mask = bool(uses_mask)

    @property
    def input_kind(self) -> str:
        """The first modality (what code written before modalities read)."""
        return self.modalities[0]

    def __call__(self, reference: Tensor, other: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if reference.shape != other.shape:
            from ..errors import AttributionError

            raise AttributionError(
                f"{self.name}: cannot compare maps of shapes {tuple(reference.shape)} and {tuple(other.shape)}")
        if mask is not None:
            mask = _check_mask(self.name, mask, reference)
        if self.uses_mask:
            if mask is None:
                from ..errors import DataError

                raise DataError(f"{self.name} compares only the valid entries of the maps: pass mask= (True at "
                                "the real tokens; token_mask(lengths, width) builds it from the texts' lengths)")
            return self.fn(reference, other, mask=mask)
        if mask is not None and not bool(mask.all()):
            from ..errors import AttributionError

            raise AttributionError(f"{self.name} compares whole maps and cannot leave out masked entries "
                                   f"({int((~mask).sum())} masked); use a metric of the suite's input kind")
        return self.fn(reference, other)

    def __repr__(self) -> str:
        return f"Metric({self.info.name!r}, higher_is_better={self.info.higher_is_better})"


class TokenMetric(Metric):
    """A metric of two token-importance batches (B, L) that reads only each row's real tokens (``mask``).

    Kept for code written before one metric contract: the third argument may still be the texts' ``lengths``
    (an integer tensor (B,)), turned into the mask ``arange(L) < lengths[:, None]``."""

    modalities = ("text",)
    uses_mask = True

    def __call__(self, reference: Tensor, other: Tensor, mask: Optional[Tensor] = None, *,  # type: ignore[override]
                 lengths: Optional[Tensor] = None) -> Tensor:
        if mask is not None and not isinstance(mask, bool) and torch.as_tensor(mask).dtype != torch.bool \
                and torch.as_tensor(mask).dim() == 1:  # the lengths, as before the mask
            mask, lengths = None, mask
        if lengths is not None and mask is None and reference.dim() == 2:
            mask = token_mask(torch.as_tensor(lengths).to(reference.device), reference.shape[1])
        return super().__call__(reference, other, mask)


def metric(name: str, *, higher_is_better: bool, category: str, description: str, reference: str = "",
           identity: float = 1.0, modalities: Optional[Sequence[str]] = None, uses_mask: bool = False):
    """Decorator: ``@metric("spearman", higher_is_better=True, category="similarity", description=...)``.

    ``modalities`` (default image and image-text): the input kinds whose maps it compares. ``uses_mask``: the
    function takes ``mask=`` (bool, the maps' shape, True at the valid entries) and reads only those."""

    def wrap(fn: Callable[..., Tensor]) -> Metric:
        return Metric(fn, MetricInfo(name, higher_is_better, category, description, reference, identity),
                      modalities=modalities, uses_mask=uses_mask)

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
    """Base of model-based metrics of maps (deletion, insertion, ROAD, faithfulness correlation, the pointing
    game, ...): ``evaluate(model, x, target, maps, seed=...) -> Evaluation``, a pure function of tensors. A suite
    runs one through an evaluation check (:mod:`sanitycheck.checks.evaluation`), which applies it to each
    explainer's maps of the trained model.

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
