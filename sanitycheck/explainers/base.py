"""Base classes of explainers (captum style: one method per module, a small family of bases).

An explainer maps ``(model, x, target)`` to attribution maps of shape ``(B, H, W)``:
the input's spatial shape, channels reduced by a named rule (``channel_reduction``,
recorded in results). Explainers are batched, run on the model's device, register
hooks only inside a context manager, and never change the model.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import AttributionError, ConfigError, ModelError
from ..targets import Target, as_target

CHANNEL_REDUCTIONS = ("sum", "abs_sum", "max_abs", "none")


def reduce_channels(maps: Tensor, rule: str, spatial_ndim: int) -> Tensor:
    """Reduce ``(B, C, *spatial)`` to ``(B, *spatial)`` by ``rule``; ``(B, *spatial)`` passes through."""
    if maps.ndim == spatial_ndim + 1:
        return maps
    if rule == "sum":
        return maps.sum(dim=1)
    if rule == "abs_sum":
        return maps.abs().sum(dim=1)
    if rule == "max_abs":
        return maps.abs().amax(dim=1)
    raise AttributionError(f"unknown channel reduction {rule!r}; use one of {CHANNEL_REDUCTIONS}")


def check_eval_mode(model: nn.Module) -> None:
    """Explanations of a model in train mode depend on dropout/batch-norm state: refuse them."""
    if model.training:
        raise ModelError(
            f"{type(model).__name__} is in train mode; dropout and batch-norm statistics would make the "
            "explanation random or batch-dependent. Call model.eval() first."
        )


def class_source_hash(klass: type) -> str:
    """16 hex digits of SHA-256 over the source of ``klass`` and its bases (their names where no source)."""
    parts = []
    for cls in klass.__mro__:
        if cls is object:
            continue
        try:
            parts.append(inspect.getsource(cls))
        except (OSError, TypeError):
            parts.append(cls.__qualname__)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class Explainer:
    """Base class. Subclasses implement :meth:`attribute`, returning ``(B, C, H, W)`` or ``(B, H, W)``."""

    #: registry name; set by subclasses
    name: str = "explainer"
    #: False for control explainers that ignore the model (edge detector, noise)
    requires_model: bool = True
    #: how channels are reduced to one map
    channel_reduction: str = "sum"

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def config(self) -> Dict[str, Any]:
        """The parameters that determine the maps (recorded with results, part of cache keys)."""
        return {}

    def code_hash(self) -> str:
        """Hash of the source of this explainer's class (and its bases in sanitycheck)."""
        return class_source_hash(type(self))

    def __call__(self, model: nn.Module, x: Tensor, target: Union[Target, Tensor, int, Callable]) -> Tensor:
        if self.requires_model:
            check_eval_mode(model)
        if x.ndim < 3:
            raise AttributionError(f"{self.name}: expected a batch of inputs (B, C, ...), got shape {tuple(x.shape)}")
        target = as_target(target)
        if len(target) not in (0, x.shape[0]):
            raise AttributionError(f"{self.name}: {len(target)} targets for a batch of {x.shape[0]} inputs")
        maps = self.attribute(model, x, target)
        spatial = tuple(x.shape[2:])
        maps = reduce_channels(maps, self.channel_reduction, len(spatial))
        if tuple(maps.shape) != (x.shape[0], *spatial):
            raise AttributionError(
                f"{self.name}: maps have shape {tuple(maps.shape)}, expected {(x.shape[0], *spatial)} "
                "(batch, *spatial) — an explainer must return one map per input at the input's resolution"
            )
        if not torch.isfinite(maps).all():
            bad = (~torch.isfinite(maps)).flatten(1).any(1).nonzero().flatten().tolist()
            raise AttributionError(f"{self.name}: maps contain NaN or inf for samples {bad[:10]} of the batch")
        return maps.detach()

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({cfg})"


def target_forward(model: nn.Module, target: Target) -> Callable[..., Tensor]:
    """``forward(x, *per_sample) -> (B,)``: the model composed with the target, for captum."""

    def forward(inputs: Tensor, *per_sample: Tensor) -> Tensor:
        return target.score(model(inputs), *per_sample)

    return forward


class TargetModule(nn.Module):
    """``model`` composed with ``target`` as an ``nn.Module`` (``forward(x, *per_sample) -> (B,)``),
    for captum methods that need a module (Guided Backprop) and a target that is not a class index.
    Wrapping does not touch ``model``: its train/eval flag is copied, not set recursively."""

    def __init__(self, model: nn.Module, target: Target):
        super().__init__()
        self.model = model
        self.target = target
        self.training = model.training

    def forward(self, inputs: Tensor, *per_sample: Tensor) -> Tensor:
        return self.target.score(self.model(inputs), *per_sample)


def captum_forward_args(model: nn.Module, target: Target, x: Tensor,
                        needs_module: bool = False) -> Tuple[Callable[..., Tensor], Dict[str, Any]]:
    """``(forward_func, attribute kwargs)`` for a captum method.

    A class-logit target is passed to captum as class indices (``target=``); any other
    target becomes part of the forward function, its per-sample tensors passed as
    ``additional_forward_args`` so that batch-expanding methods (IG, internal
    batching) expand them alongside the inputs.
    """
    classes = target.class_indices()
    if classes is not None:
        return model, {"target": classes.to(x.device)}
    forward = TargetModule(model, target) if needs_module else target_forward(model, target)
    return forward, {"additional_forward_args": tuple(target.per_sample) or None}


def check_channel_reduction(rule: str) -> str:
    if rule not in CHANNEL_REDUCTIONS or rule == "none":
        raise ConfigError(f"unknown channel_reduction {rule!r}; use one of {[r for r in CHANNEL_REDUCTIONS if r != 'none']}")
    return rule


class CaptumExplainer(Explainer):
    """Adapter for any captum ``Attribution`` class: ``CaptumExplainer(captum.attr.Saliency, abs=False)``.

    ``init_kwargs`` go to the captum constructor (after the forward function; a
    ``layer`` given as a module *name* is resolved on each model, so the explainer
    works on randomized copies), ``attribute_kwargs`` to ``attribute``.
    """

    def __init__(self, method: type, name: Optional[str] = None, init_kwargs: Optional[dict] = None,
                 channel_reduction: str = "sum", **attribute_kwargs: Any):
        self.method = method
        self.name = name or getattr(method, "__name__", "captum").lower()
        self.init_kwargs = dict(init_kwargs or {})
        self.attribute_kwargs = attribute_kwargs
        self.channel_reduction = channel_reduction

    def config(self) -> Dict[str, Any]:
        return {"method": f"{self.method.__module__}.{self.method.__qualname__}",
                **{k: repr(v) for k, v in self.init_kwargs.items()},
                **{k: repr(v) for k, v in self.attribute_kwargs.items()}}

    def code_hash(self) -> str:
        try:
            src = inspect.getsource(self.method)
        except (OSError, TypeError):
            src = self.method.__qualname__
        return hashlib.sha256((super().code_hash() + src).encode()).hexdigest()[:16]

    def batch_attribute_kwargs(self, x: Tensor) -> Dict[str, Any]:
        """Keyword arguments of captum's ``attribute`` for this batch (subclasses may adapt them)."""
        return dict(self.attribute_kwargs)

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        init = dict(self.init_kwargs)
        if isinstance(init.get("layer"), str):
            init["layer"] = model.get_submodule(init["layer"])
        needs_model = "model" in inspect.signature(self.method.__init__).parameters
        forward, kwargs = captum_forward_args(model, target, x, needs_module=needs_model)
        method = self.method(forward, **init)
        x = x.detach().clone().requires_grad_(True)
        kwargs.update(self.batch_attribute_kwargs(x))
        with torch.enable_grad():
            return method.attribute(x, **kwargs)


class FunctionExplainer(Explainer):
    """Wrap a plain callable ``(model, x, target) -> maps``; ``target`` is passed as class indices
    when the callable's target parameter is not annotated as :class:`Target`."""

    def __init__(self, fn: Callable, name: Optional[str] = None, requires_model: bool = True,
                 channel_reduction: str = "sum"):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")
        self.requires_model = requires_model
        self.channel_reduction = channel_reduction

    def config(self) -> Dict[str, Any]:
        return {"function": f"{getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', self.name)}"}

    def code_hash(self) -> str:
        try:
            src = inspect.getsource(self.fn)
        except (OSError, TypeError):
            src = repr(self.fn)
        return hashlib.sha256(src.encode()).hexdigest()[:16]

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        passes_target_object = False
        try:
            ann = list(inspect.signature(self.fn).parameters.values())[2].annotation
            passes_target_object = ann is Target or getattr(ann, "__name__", "") == "Target" or ann == "Target"
        except (ValueError, TypeError, IndexError):
            pass
        arg = target if passes_target_object or not target.per_sample else target.per_sample[0]
        with torch.enable_grad():
            return self.fn(model, x, arg)
