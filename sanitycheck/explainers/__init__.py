"""Explainers: one module per family. ``get_explainer`` turns a name, an import path,
a captum ``Attribution`` class or a plain callable into an :class:`Explainer`."""

from __future__ import annotations

import inspect
from typing import Any, Optional, Union

from ..errors import ConfigError
from ..registry import EXPLAINERS
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


def get_explainer(spec: Union[str, Any], **params: Any) -> Explainer:
    """By registry name or import path (``package.module:attr``, ``file.py:attr``), or any object."""
    if isinstance(spec, str):
        obj = EXPLAINERS.get(spec)
        name = spec if ":" not in spec else spec.rpartition(":")[2]
        return as_explainer(obj, name=name, **params)
    return as_explainer(spec, **params)


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


__all__ = ["Explainer", "CaptumExplainer", "FunctionExplainer", "as_explainer", "get_explainer", "ExplainerError",
           "ModelWatch", "call_explainer", "check_maps_tensor", "state_checksum",
           "check_eval_mode", "reduce_channels", "target_forward", *_LAZY]
