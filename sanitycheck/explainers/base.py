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

from ..errors import AttributionError, ConfigError, ModelError, NotApplicableError, SanityCheckError
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


def check_maps_tensor(maps: Any, name: str, where: str = "") -> Tensor:
    """``maps`` if it is a real floating-point tensor holding data; else an :class:`AttributionError` naming
    the explainer (and ``where``: check, step, inputs). Complex maps are refused, never silently made real."""
    at = f" ({where})" if where else ""
    if not isinstance(maps, Tensor):
        kind = "None" if maps is None else f"a {type(maps).__module__}.{type(maps).__qualname__}".replace("builtins.", "")
        raise AttributionError(
            f"explainer {name!r} returned {kind}{at}; an explainer must return a real floating-point torch.Tensor "
            "of maps (B, H, W) or (B, C, H, W) — convert with torch.as_tensor(..., dtype=torch.float32)")
    if maps.device.type == "meta":
        raise AttributionError(f"explainer {name!r} returned maps on the meta device{at}: they hold no values; "
                               "compute the maps on the model's device")
    if maps.is_complex():
        raise AttributionError(f"explainer {name!r} returned complex maps ({maps.dtype}){at}; they are refused, not "
                               "truncated to their real part: return maps.real or maps.abs() explicitly")
    if not maps.is_floating_point():
        raise AttributionError(f"explainer {name!r} returned {maps.dtype} maps{at}; only real floating-point maps "
                               "are accepted (integer or boolean maps lose the ranking): return float maps")
    if maps.is_sparse:
        raise AttributionError(f"explainer {name!r} returned sparse maps{at}; return a dense tensor (maps.to_dense())")
    return maps


_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def state_checksum(model: nn.Module) -> Tuple[int, ...]:
    """A cheap checksum of every parameter and buffer of ``model``: per tensor, the sum of its bit patterns
    (an int64 sum of the values viewed as integers of the same width). Any in-place change of one value
    changes it; it is not a cryptographic hash."""
    sums = []
    with torch.no_grad():
        for t in model.state_dict(keep_vars=False).values():
            if not isinstance(t, Tensor) or t.device.type == "meta" or t.numel() == 0:
                continue
            flat = t.detach().reshape(-1)
            if flat.dtype == torch.bool:
                flat = flat.to(torch.int8)
            else:
                flat = flat.contiguous().view(_INT_OF_SIZE.get(flat.element_size(), torch.uint8))
            sums.append(flat.sum(dtype=torch.int64))
    return tuple(torch.stack(sums).cpu().tolist()) if sums else ()


def module_modes(model: nn.Module) -> Tuple[bool, ...]:
    return tuple(m.training for m in model.modules())


class ExplainerError(AttributionError):
    """An explainer raised, returned something that is not maps, or changed the model; the message names the
    explainer, the check, the step and the inputs."""


class ModelWatch:
    """The model's train/eval flags and :func:`state_checksum`, taken once; :meth:`verify` after each explainer
    call (one checksum per call: a loop of calls on one model shares one watch)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modes = module_modes(model)
        self.checksum = state_checksum(model)

    def verify(self, name: str, where: str) -> None:
        model = self.model
        if module_modes(model) != self.modes:
            changed = [n or "(model)" for (n, m), was in zip(model.named_modules(), self.modes) if m.training != was]
            for m, was in zip(model.modules(), self.modes):  # put it back as it was
                m.training = was
            raise ExplainerError(
                f"explainer {name!r} changed the model's train/eval mode ({where}; modules {changed[:5]}); an "
                "explainer must not call model.train() or change module.training — the model is not at fault")
        if state_checksum(model) != self.checksum:
            raise ExplainerError(
                f"explainer {name!r} changed the model's weights or buffers in place ({where}); an explainer must "
                "not modify the model (copy it first, e.g. copy.deepcopy(model)) — the model is not at fault")


def call_explainer(explainer: Callable, name: str, where: str, model: nn.Module, *args: Any,
                   watch: Optional[ModelWatch] = None) -> Tensor:
    """``explainer(model, *args)``, checked: an exception inside it, an output that is not a real floating
    tensor, or a change of ``model``'s weights (in place) or train/eval mode is an error naming the explainer
    and ``where`` (check, step, inputs). :class:`NotApplicableError` passes through. ``watch``: a
    :class:`ModelWatch` of ``model`` shared by a loop of calls (default: a new one, two checksums per call)."""
    watch = watch if watch is not None else ModelWatch(model)
    try:
        maps = explainer(model, *args)
    except NotApplicableError:
        raise
    except ExplainerError:
        raise
    except SanityCheckError as err:  # a deliberate error (sandbox limit, bad maps): same type, with the place
        try:
            named = type(err)(f"explainer {name!r} failed ({where}): {err}")
        except Exception:  # noqa: BLE001 - a class with another constructor: as raised
            raise err from None
        raise named from err
    except Exception as err:  # noqa: BLE001 - named and re-raised with the explainer and the step
        raise ExplainerError(f"explainer {name!r} failed ({where}): {type(err).__name__}: {err}") from err
    watch.verify(name, where)
    return check_maps_tensor(maps, name, where)


def class_source_hash(klass: type) -> str:
    """16 hex digits of SHA-256 over the source of ``klass`` and its bases (their names where no source)."""
    from ..provenance import source_key

    return source_key(*(cls for cls in klass.__mro__ if cls is not object))


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
        maps = check_maps_tensor(self.attribute(model, x, target), self.name)
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


#: the input kinds an explainer supports (registry lookups by modality, ``sanitycheck ls``): image explainers
#: also explain the image side of image-text (CLIP) suites. Set outside the class body, so that the class's
#: source, and with it every explainer's published ``code_hash``, stays as it was.
Explainer.modalities = ("image", "image_text")  # type: ignore[attr-defined]


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
        names = getattr(model, "sanitycheck_class_names", None)  # captum gathers the logits itself: check here
        if names:
            from ..targets import check_class_indices

            check_class_indices(classes, len(names))
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
