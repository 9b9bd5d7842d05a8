"""Class activation maps, backed by captum.

* :class:`GradCAM` — Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks
  via Gradient-based Localization" (captum ``LayerGradCam``), upsampled to the input size.
* :class:`GuidedGradCAM` — the same paper's Guided Grad-CAM: Guided Backprop (Springenberg et
  al. 2015) times the upsampled Grad-CAM map.

The layer is given by module *name* and resolved on each model passed in, so an explainer
built once works on the randomized deep copies that checks produce. Default layer: the
model's ``sanitycheck_cam_layer`` attribute if it has one, else the last ``nn.Conv2d`` in
forward-execution order (:func:`find_last_conv`).

A randomized model can legitimately give an all-zero Grad-CAM map (every channel weight
negative after the ReLU); such maps are returned as they are, and metrics decide what
an all-zero map means.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Tuple

import captum.attr
import torch
from captum.attr import LayerAttribution
from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from ..targets import Target
from .base import Explainer, captum_forward_args
from .gradients import GuidedBackprop

__all__ = ["GradCAM", "GuidedGradCAM", "find_last_conv", "resolve_cam_layer"]

UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest", "area")

#: (model type, names of its Conv2d modules, input shape) -> name of the last Conv2d executed
_LAST_CONV_CACHE: Dict[Tuple[type, Tuple[str, ...], Tuple[int, ...]], str] = {}


def find_last_conv(model: nn.Module, x: Tensor) -> str:
    """Name of the last ``nn.Conv2d`` module executed in ``model``'s forward pass on ``x``.

    Found with forward hooks on one no-grad forward pass of ``x[:1]`` (removed afterwards),
    cached per model type, set of conv names and input shape. Raises
    :class:`~sanitycheck.errors.NotApplicableError` when the model has no ``nn.Conv2d``
    (or runs none).
    """
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise NotApplicableError(
            f"{type(model).__name__} has no nn.Conv2d layer, so there is no convolutional feature map for "
            "Grad-CAM; pass layer='<module name>' for another spatial layer, or set the model's "
            "'sanitycheck_cam_layer' attribute")
    key = (type(model), tuple(name for name, _ in convs), tuple(x.shape[1:]))
    if key in _LAST_CONV_CACHE:
        return _LAST_CONV_CACHE[key]
    order: List[str] = []
    handles = []
    try:
        for name, module in convs:
            handles.append(module.register_forward_hook(
                lambda _m, _i, _o, name=name: order.append(name)))
        with torch.no_grad():
            model(x[:1].detach())
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise NotApplicableError(
            f"{type(model).__name__} has nn.Conv2d modules but its forward pass on an input of shape "
            f"{tuple(x.shape[1:])} ran none; pass layer='<module name>' to Grad-CAM")
    _LAST_CONV_CACHE[key] = order[-1]
    return order[-1]


def resolve_cam_layer(model: nn.Module, x: Tensor, layer: Optional[str] = None) -> Tuple[str, nn.Module]:
    """``(name, module)`` of the Grad-CAM layer: ``layer``, else ``model.sanitycheck_cam_layer``,
    else :func:`find_last_conv`."""
    name = layer if layer is not None else getattr(model, "sanitycheck_cam_layer", None)
    if name is None:
        name = find_last_conv(model, x)
    try:
        return name, model.get_submodule(name)
    except AttributeError as err:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        raise ConfigError(f"Grad-CAM layer {name!r} is not a module of {type(model).__name__} ({err}); "
                          f"its Conv2d modules are {convs}") from err


class GradCAM(Explainer):
    """Grad-CAM (Selvaraju et al. 2017) at a convolutional layer, upsampled to the input size.

    Parameters: ``layer`` (module name; default the model's ``sanitycheck_cam_layer`` or its last
    ``nn.Conv2d``), ``relu`` (apply the ReLU of the paper, default True), ``upsample``
    (interpolation mode to the input size: ``"bilinear"`` (default), ``"bicubic"``, ``"nearest"``,
    ``"area"``). The layer actually used on the last call is in ``last_layer``.
    """

    name = "gradcam"

    def __init__(self, layer: Optional[str] = None, relu: bool = True, upsample: str = "bilinear"):
        if upsample not in UPSAMPLE_MODES:
            raise ConfigError(f"{self.name}: upsample {upsample!r} is unknown; use one of {UPSAMPLE_MODES}")
        if layer is not None and not isinstance(layer, str):
            raise ConfigError(f"{self.name}: layer must be a module name (str) or None, got {layer!r}")
        self.layer, self.relu, self.upsample = layer, bool(relu), upsample
        self.last_layer: Optional[str] = None

    def config(self) -> Dict[str, Any]:
        return {"layer": self.layer, "relu": self.relu, "upsample": self.upsample}

    def layer_maps(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        """Grad-CAM at the layer's resolution, ``(B, 1, h, w)``."""
        name, layer = resolve_cam_layer(model, x, self.layer)
        self.last_layer = name
        forward, kwargs = captum_forward_args(model, target, x)
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            cam = captum.attr.LayerGradCam(forward, layer).attribute(
                xg, relu_attributions=self.relu, **kwargs)
        if isinstance(cam, tuple):
            cam = cam[0]
        if cam.ndim != x.ndim:
            raise NotApplicableError(
                f"{self.name}: layer {name!r} of {type(model).__name__} has output of shape "
                f"{tuple(cam.shape[2:])} per channel, not a spatial map like the input's {tuple(x.shape[2:])}; "
                "choose a convolutional layer")
        return cam.detach()

    def upsampled(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        cam = self.layer_maps(model, x, target)
        if tuple(cam.shape[2:]) != tuple(x.shape[2:]):
            cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=self.upsample)
        return cam

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        return self.upsampled(model, x, target)[:, 0]


class GuidedGradCAM(Explainer):
    """Guided Grad-CAM (Selvaraju et al. 2017): Guided Backprop times the upsampled (ReLU'd) Grad-CAM.

    Composed from :class:`~sanitycheck.explainers.gradients.GuidedBackprop` and :class:`GradCAM`
    (rather than captum's ``GuidedGradCam``, which takes only class indices as targets).
    Parameters: ``layer``, ``upsample`` as for :class:`GradCAM`; channels reduced by
    ``channel_reduction`` (default ``"sum"``) after the product.
    Adebayo et al. 2018 find it, like Guided Backprop, insensitive to model randomization.
    """

    name = "guided_gradcam"

    def __init__(self, layer: Optional[str] = None, upsample: str = "bilinear", channel_reduction: str = "sum"):
        self.gradcam = GradCAM(layer=layer, relu=True, upsample=upsample)
        self.guided = GuidedBackprop(channel_reduction=channel_reduction)
        self.channel_reduction = self.guided.channel_reduction

    @property
    def last_layer(self) -> Optional[str]:
        return self.gradcam.last_layer

    def config(self) -> Dict[str, Any]:
        return {"layer": self.gradcam.layer, "upsample": self.gradcam.upsample,
                "channel_reduction": self.channel_reduction}

    def code_hash(self) -> str:
        parts = super().code_hash() + self.gradcam.code_hash() + self.guided.code_hash()
        return hashlib.sha256(parts.encode()).hexdigest()[:16]

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        guided = self.guided.attribute(model, x, target).detach()  # (B, C, H, W)
        cam = self.gradcam.upsampled(model, x, target)  # (B, 1, H, W)
        return guided * cam
