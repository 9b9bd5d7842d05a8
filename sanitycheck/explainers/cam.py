"""Class activation maps, backed by captum.

* :class:`GradCAM` — Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks
  via Gradient-based Localization" (captum ``LayerGradCam``), upsampled to the input size.
* :class:`GuidedGradCAM` — the same paper's Guided Grad-CAM: Guided Backprop (Springenberg et
  al. 2015) times the upsampled Grad-CAM map.
* :class:`ViTGradCAM` — the same Grad-CAM on a CLIP image tower: on a ViT, the tokens entering a
  block (its first LayerNorm's output) reshaped to the patch grid by :class:`TokenGrid` (the
  reshape step of pytorch-grad-cam's ``reshape_transform``), class token dropped; on an open_clip
  ``ModifiedResNet``, the output of ``layer4``. Not the *output* of the last ViT block: only the
  class token of that output reaches the embedding, so the patch tokens' gradients are exactly
  zero there (REFERENCES.md, pytorch-grad-cam #513).

Reshape step: ``GradCAM(reshape=TokenGrid(...))`` lays the layer's tokens ``(B, N, D)`` and their
gradients out as a grid ``(B, D, h, w)`` (as pytorch-grad-cam's ``reshape_transform`` does) before
:func:`grad_cam`: channel weights = mean gradient over the grid, map = ReLU(Σ_d weight_d ·
activation_d). One Grad-CAM for convolutional and token layers; the layer's gradients and activations
come from captum (``compute_layer_gradients_and_eval``, what its ``LayerGradCam`` uses).

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

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum.attr import LayerAttribution
from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from ..targets import Target
from .base import Explainer, captum_forward_args
from .gradients import GuidedBackprop

__all__ = ["GradCAM", "GuidedGradCAM", "ViTGradCAM", "TokenGrid", "grad_cam", "find_last_conv", "resolve_cam_layer"]

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


class TokenGrid:
    """Reshape step for a layer that outputs transformer tokens ``(B, N, D)`` (pytorch-grad-cam's
    ``reshape_transform``): the ``prefix`` leading tokens (a ViT's class token) are dropped and the
    rest laid out as the ``grid`` ``(h, w)`` of patches, channels first: ``(B, D, h, w)``.
    :meth:`to_tokens` puts a grid back among the prefix tokens, values unchanged."""

    def __init__(self, grid: Tuple[int, int], prefix: int = 1):
        if len(tuple(grid)) != 2 or not all(isinstance(g, int) and g >= 1 for g in grid):
            raise ConfigError(f"TokenGrid: grid must be two positive integers (h, w), got {grid!r}")
        if not (isinstance(prefix, int) and prefix >= 0):
            raise ConfigError(f"TokenGrid: prefix must be a non-negative integer, got {prefix!r}")
        self.grid, self.prefix = (int(grid[0]), int(grid[1])), prefix

    def config(self) -> Dict[str, Any]:
        return {"grid": list(self.grid), "prefix": self.prefix}

    def __repr__(self) -> str:
        return f"TokenGrid(grid={self.grid}, prefix={self.prefix})"

    def to_grid(self, tokens: Tensor) -> Tensor:
        """(B, N, D) -> (B, D, h, w), a view of the patch tokens (activations or their gradients)."""
        gh, gw = self.grid
        if tokens.dim() != 3 or tokens.shape[1] != gh * gw + self.prefix:
            raise NotApplicableError(f"the layer has {tuple(tokens.shape[1:2])} tokens, expected {self.prefix} "
                                     f"class token(s) + {gh}x{gw} patches (shape {tuple(tokens.shape)})")
        return tokens[:, self.prefix:].transpose(1, 2).unflatten(2, (gh, gw))

    def to_tokens(self, tokens: Tensor, grid: Tensor) -> Tensor:
        """The inverse: ``tokens`` with its patch tokens replaced by ``grid`` (B, D, h, w)."""
        return torch.cat([tokens[:, :self.prefix], grid.flatten(2).transpose(1, 2)], dim=1)


def grad_cam(activations: Tensor, gradients: Tensor, relu: bool = True) -> Tensor:
    """Grad-CAM from a layer's activations and the target's gradients, both ``(B, C, *spatial)``:
    channel weights = mean gradient over the spatial positions, map = (ReLU of) Σ_c weight_c · activation_c,
    ``(B, 1, *spatial)``. The operations and their order are captum ``LayerGradCam``'s (same floats)."""
    if gradients.dim() > 2:
        weights = torch.mean(gradients, dim=tuple(range(2, gradients.dim())), keepdim=True)
    else:
        weights = gradients
    cam = torch.sum(weights * activations, dim=1, keepdim=True)
    return F.relu(cam) if relu else cam


class GradCAM(Explainer):
    """Grad-CAM (Selvaraju et al. 2017) at a convolutional layer, upsampled to the input size.

    Parameters: ``layer`` (module name; default the model's ``sanitycheck_cam_layer`` or its last
    ``nn.Conv2d``), ``relu`` (apply the ReLU of the paper, default True), ``upsample``
    (interpolation mode to the input size: ``"bilinear"`` (default), ``"bicubic"``, ``"nearest"``,
    ``"area"``), ``reshape`` (a :class:`TokenGrid` for a layer that outputs tokens, default None).
    The layer actually used on the last call is in ``last_layer``.
    """

    name = "gradcam"

    def __init__(self, layer: Optional[str] = None, relu: bool = True, upsample: str = "bilinear",
                 reshape: Optional["TokenGrid"] = None):
        if upsample not in UPSAMPLE_MODES:
            raise ConfigError(f"{self.name}: upsample {upsample!r} is unknown; use one of {UPSAMPLE_MODES}")
        if layer is not None and not isinstance(layer, str):
            raise ConfigError(f"{self.name}: layer must be a module name (str) or None, got {layer!r}")
        if reshape is not None and not isinstance(reshape, TokenGrid):
            raise ConfigError(f"{self.name}: reshape must be a TokenGrid or None, got {reshape!r}")
        self.layer, self.relu, self.upsample, self.reshape = layer, bool(relu), upsample, reshape
        self.last_layer: Optional[str] = None

    def config(self) -> Dict[str, Any]:
        config = {"layer": self.layer, "relu": self.relu, "upsample": self.upsample}
        if self.reshape is not None:  # absent when unused: the convolutional configs (and cache keys) stay as they were
            config["reshape"] = self.reshape.config()
        return config

    def cam_layer(self, model: nn.Module, x: Tensor) -> Tuple[str, nn.Module, Optional["TokenGrid"]]:
        """``(name, module, reshape step or None)`` of the layer Grad-CAM reads on ``model``."""
        name, layer = resolve_cam_layer(model, x, self.layer)
        return name, layer, self.reshape

    def layer_maps(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        """Grad-CAM at the layer's resolution, ``(B, 1, h, w)``."""
        name, layer, reshape = self.cam_layer(model, x)
        self.last_layer = name
        forward, kwargs = captum_forward_args(model, target, x)
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():  # captum's layer gradients and activations, as in its LayerGradCam
            grads, acts = compute_layer_gradients_and_eval(
                forward, layer, (xg,), kwargs.get("target"),
                _format_additional_forward_args(kwargs.get("additional_forward_args")))
        grads, acts = grads[0], acts[0]
        if reshape is not None:  # tokens -> grid, on the activations and the gradients alike
            grads, acts = reshape.to_grid(grads), reshape.to_grid(acts)
        cam = grad_cam(acts, grads, self.relu)
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


class ViTGradCAM(GradCAM):
    """Grad-CAM for CLIP image towers: :class:`GradCAM` at a layer found in the tower.

    ViT: the activations are the tokens *entering* block ``block`` (default the last): the output
    of its first LayerNorm ``ln_1`` (B, N, D), reshaped by :class:`TokenGrid` to the patch grid (CLS
    dropped); channel weights α_d = mean over patch tokens of ∂s/∂a_d; map = ReLU(Σ_d α_d a_d),
    upsampled. ResNet tower (open_clip ``ModifiedResNet``): the output of ``layer4`` (B, C, h, w),
    classic Grad-CAM. ``relu=False`` keeps the sign. The module used on the last call is in ``last_layer``.
    """

    name = "vit_gradcam"
    input_kind: str = "image_text"

    def __init__(self, block: int = -1, relu: bool = True, upsample: str = "bilinear"):
        if not isinstance(block, int):
            raise ConfigError(f"{self.name}: block must be an integer, got {block!r}")
        super().__init__(layer=None, relu=relu, upsample=upsample)
        self.block = block

    def config(self) -> Dict[str, Any]:
        return {"block": self.block, "relu": self.relu, "upsample": self.upsample}

    def cam_layer(self, model: nn.Module, x: Tensor) -> Tuple[str, nn.Module, Optional[TokenGrid]]:
        from .attention_flow import _is_vit, find_visual

        vname, visual = find_visual(model)
        prefix = f"{vname}." if vname else ""
        if not _is_vit(visual):
            return f"{prefix}layer4", visual.layer4, None
        blocks = visual.transformer.resblocks
        if not (-len(blocks) <= self.block < len(blocks)):
            raise ConfigError(f"{self.name}: block {self.block} is out of range for {len(blocks)} blocks")
        idx = self.block % len(blocks)
        return f"{prefix}transformer.resblocks.{idx}.ln_1", blocks[idx].ln_1, TokenGrid(tuple(int(v) for v in visual.grid_size), prefix=1)  # the patch grid, one class token
