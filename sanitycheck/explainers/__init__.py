"""Explainers: one module per family. ``get_explainer`` turns a name, an import path,
a captum ``Attribution`` class or a plain callable into an :class:`Explainer`."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Union

from ..errors import ConfigError
from ..registry import EXPLAINERS
from . import costs  # noqa: F401 - attaches evaluations_per_map to Occlusion (issue 14)
from .base import (CaptumExplainer, Explainer, ExplainerError, FunctionExplainer, ModelWatch, call_explainer,
                   check_eval_mode, check_maps_tensor, reduce_channels, state_checksum, target_forward)


def _is_captum_attribution(obj: Any) -> bool:
    try:
        from captum.attr import Attribution
    except ImportError:  # pragma: no cover - captum is a core dependency
        return False
    return inspect.isclass(obj) and issubclass(obj, Attribution)


def as_explainer(obj: Any, name: Optional[str] = None, **params: Any) -> Explainer:
    """Wrap ``obj`` — an Explainer (instance or class), a captum Attribution class or a callable."""
    if isinstance(obj, Explainer):
        if params:
            raise ConfigError(f"explainer instance {obj!r} given with extra parameters {sorted(params)}")
        return obj
    if inspect.isclass(obj) and issubclass(obj, Explainer):
        try:
            explainer = obj(**params)
        except TypeError as err:
            raise ConfigError(f"bad parameters {params} for explainer {name or obj.__name__}: {err}") from err
        if name:
            explainer.name = name
        return explainer
    if _is_captum_attribution(obj):
        init_kwargs = params.pop("init_kwargs", None)
        return CaptumExplainer(obj, name=name, init_kwargs=init_kwargs, **params)
    if callable(obj):
        return FunctionExplainer(obj, name=name, **params)
    raise ConfigError(f"cannot use {obj!r} as an explainer: expected an Explainer, a captum Attribution class "
                      "or a callable (model, x, target) -> maps")


def as_token_explainer(obj: Any, spec: Any = None, **params: Any) -> Any:
    """A token explainer ``(model, TextBatch, target classes) -> (B, L)``: a class is built with ``params``, a
    callable instance is used as it is."""
    spec = obj if spec is None else spec
    if inspect.isclass(obj):
        try:
            obj = obj(**params)
        except TypeError as err:
            raise ConfigError(f"bad parameters {params} for token explainer {spec!r}: {err}") from err
    elif params:
        raise ConfigError(f"token explainer {spec!r} is an instance: it takes no parameters ({params})")
    if not callable(obj):
        raise ConfigError(f"token explainer {spec!r} is not callable as (model, TextBatch, classes) -> (B, L)")
    return obj


def _as_image_explainer(obj: Any, name: Optional[str], spec: Any, params: Dict[str, Any]) -> Any:
    return as_explainer(obj, name=name, **params)


#: how a resolved object becomes an explainer, per modality (default, image and image-text: :func:`as_explainer`)
_BUILDERS = {"text": lambda obj, name, spec, params: as_token_explainer(obj, spec, **params)}


def explainer_from(obj: Any, modality: Optional[str] = None, name: Optional[str] = None, spec: Any = None,
                   **params: Any) -> Any:
    """``obj`` (a class, instance or callable, already resolved) as an explainer of ``modality``'s inputs."""
    build = _BUILDERS.get(modality, _as_image_explainer) if modality else _as_image_explainer
    return build(obj, name, obj if spec is None else spec, params)


def get_explainer(spec: Union[str, Any], modality: Optional[str] = None, **params: Any) -> Any:
    """By registry name or import path (``package.module:attr``, ``file.py:attr``), or any object.

    ``modality`` picks the implementation of a name that has several (``"text"``: the token explainer of
    text models, e.g. the embedding ``gradient``); without it, the image one. An image explainer is an
    :class:`Explainer`; a text one is any callable ``(model, TextBatch, target classes) -> (B, L)``."""
    if isinstance(spec, str):
        obj = EXPLAINERS.get(spec, modality=modality)
        name = spec if ":" not in spec else spec.rpartition(":")[2]
        return explainer_from(obj, modality, name, spec, **params)
    return explainer_from(spec, modality, None, spec, **params)


# Built-in explainer classes, imported on first access (``from sanitycheck.explainers import Gradient``)
# so that importing this package does not import captum.
_LAZY = {
    "Gradient": "gradients", "GradientXInput": "gradients", "IntegratedGradients": "gradients",
    "GuidedBackprop": "gradients", "NoiseTunnel": "noise_tunnel", "SmoothGrad": "noise_tunnel",
    "VarGrad": "noise_tunnel", "GradCAM": "cam", "GuidedGradCAM": "cam", "find_last_conv": "cam",
    "SobelEdges": "controls", "UniformNoise": "controls",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Explainer", "CaptumExplainer", "FunctionExplainer", "as_explainer", "as_token_explainer",
           "explainer_from", "get_explainer", "ExplainerError",
           "ModelWatch", "call_explainer", "check_maps_tensor", "state_checksum",
           "check_eval_mode", "reduce_channels", "target_forward", *_LAZY]
