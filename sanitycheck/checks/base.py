"""Checks yield model states; the runner explains each state once and compares to the original."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Iterator, NamedTuple, Optional

from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import CHECKS


class ModelState(NamedTuple):
    """A step name and the model in that state (valid until the iterator advances)."""

    step: str
    model: nn.Module
    #: facts about the state worth recording (e.g. the random-label model's train accuracy)
    info: Optional[Dict[str, Any]] = None


class Check:
    """Base class. ``states`` yields :class:`ModelState`s and never mutates ``model``."""

    name: str = "check"
    #: the step at which the check's intervention is complete (used by verdict rules and figures)
    description: str = ""

    def states(self, model: nn.Module, *, seed: int, example_input: Tensor,
               context: Optional[Dict[str, Any]] = None) -> Iterator[ModelState]:  # pragma: no cover
        raise NotImplementedError

    def config(self) -> Dict[str, Any]:
        return {}

    def transform_explainer(self, explainer: Any) -> Any:
        """The explainer this check compares (for the original and every state); e.g. smoothed for smooth MPRT."""
        return explainer

    def transform_target(self, target: Any, logits: Tensor, *, seed: int, x: Optional[Tensor] = None) -> Any:
        """The target explained in the check's states (the original maps keep the original target)."""
        return target


def get_check(name: str, **params: Any) -> Check:
    cls = CHECKS.get(name)
    try:
        check = cls(**params) if inspect.isclass(cls) else cls
    except TypeError as err:
        raise ConfigError(f"bad parameters {params} for check {name!r}: {err}") from err
    if ":" not in name:
        check.name = name
    return check
