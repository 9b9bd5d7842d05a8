"""Targets: small callables mapping model output to the scalar being explained (as in pytorch-grad-cam).

A target carries its per-sample parameters (``per_sample``) separately from the
function that uses them, so batch-expanding methods (Integrated Gradients,
SmoothGrad, captum's internal batching) can expand those parameters alongside
the inputs: captum receives them as ``additional_forward_args``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .errors import ConfigError


def check_class_indices(classes: Tensor, num_classes: int, what: str = "target class") -> None:
    """Refuse class indices outside ``0 .. num_classes - 1`` (a ``ConfigError`` naming the valid range)."""
    classes = torch.as_tensor(classes).reshape(-1)
    if classes.numel() == 0:
        return
    bad = classes[(classes < 0) | (classes >= num_classes)]
    if bad.numel():
        raise ConfigError(
            f"{what} {sorted(set(bad.tolist()))[:8]} out of range: the model has {num_classes} classes, so a class "
            f"index must be in 0..{num_classes - 1}; use a class of this model (its output has {num_classes} logits)")


class Target:
    """Maps a model output of batch size B to B scalars."""

    per_sample: Tuple[Tensor, ...] = ()
    description: str = "target"

    def score(self, output: Tensor, *per_sample: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, output: Tensor) -> Tensor:
        return self.score(output, *self.per_sample)

    def repeat_interleave(self, repeats: int) -> "Target":
        """This target for a batch in which each sample is repeated ``repeats`` times in a row."""
        return _Rebound(self, tuple(p.repeat_interleave(repeats, dim=0) for p in self.per_sample))

    def select(self, index: Tensor | slice) -> "Target":
        """This target for ``x[index]``."""
        return _Rebound(self, tuple(p[index] for p in self.per_sample))

    def __len__(self) -> int:
        return len(self.per_sample[0]) if self.per_sample else 0

    def class_indices(self) -> Optional[Tensor]:
        """Class indices when this target is exactly "the logit of class c_i" (so captum can take
        them as its ``target``); None for any other target."""
        return None


class _Rebound(Target):
    def __init__(self, base: Target, per_sample: Tuple[Tensor, ...]):
        self.base, self.per_sample, self.description = base, per_sample, base.description

    def score(self, output: Tensor, *per_sample: Tensor) -> Tensor:
        return self.base.score(output, *per_sample)

    def class_indices(self) -> Optional[Tensor]:
        return self.per_sample[0] if self.base.class_indices() is not None else None


class ClassTarget(Target):
    """The logit (or, with ``softmax=True``, the probability) of one class per sample."""

    def __init__(self, classes: Union[Tensor, Sequence[int], int], softmax: bool = False):
        self.per_sample = (torch.as_tensor(classes, dtype=torch.long).reshape(-1),)
        self.softmax = softmax
        self.description = "class probability" if softmax else "class logit"

    @property
    def classes(self) -> Tensor:
        return self.per_sample[0]

    def class_indices(self) -> Optional[Tensor]:
        return None if self.softmax else self.per_sample[0]

    def score(self, output: Tensor, classes: Tensor) -> Tensor:
        if output.ndim != 2:
            raise ValueError(f"ClassTarget expects model output of shape (batch, classes), got {tuple(output.shape)}")
        check_class_indices(classes, output.shape[1])
        if self.softmax:
            output = output.softmax(dim=1)
        return output.gather(1, classes.to(output.device).reshape(-1, 1)).squeeze(1)


class CallableTarget(Target):
    """Wrap a plain ``output -> (B,)`` callable with no per-sample state."""

    def __init__(self, fn: Callable[[Tensor], Tensor], description: str = "custom target"):
        self.fn, self.description = fn, description

    def score(self, output: Tensor) -> Tensor:
        return self.fn(output)

    def repeat_interleave(self, repeats: int) -> "Target":
        return self

    def select(self, index) -> "Target":
        return self


def as_target(target: Union[Target, Tensor, Sequence[int], int, Callable]) -> Target:
    """Accept a Target, class indices, or a plain callable."""
    if isinstance(target, Target):
        return target
    if callable(target) and not isinstance(target, Tensor):
        return CallableTarget(target)
    return ClassTarget(target)
