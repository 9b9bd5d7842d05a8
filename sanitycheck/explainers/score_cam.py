"""Score-CAM — Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
Networks" (CVPR workshops). A class activation map whose channel weights come from forward passes, not
gradients.

For the activations ``A_k`` (k = 1..K) of the CAM layer on input ``x`` (the layer Grad-CAM uses:
:func:`~sanitycheck.explainers.cam.resolve_cam_layer`), rectified (``rectify=True``, see below):

1. ``H_k`` = ``A_k`` upsampled (bilinear) to the input size and min-max normalized to [0, 1];
2. ``C_k = f(x ⊙ H_k) - f(x_b)``, the "channel-wise increase of confidence" (CIC) of the target's score
   ``f`` (the softmax probability, ``probability=True``, as in the paper and its reference code);
3. ``α = softmax_k(C_k)``;
4. map = ``ReLU(Σ_k α_k · Up(A_k))``: the paper's ``ReLU(Σ_k α_k A_k)`` at the input's size (bilinear
   upsampling is linear, so it commutes with the weighted sum; the ReLU comes after it, as in the
   reference code, which sums the upsampled maps).

The baseline term ``f(x_b)`` is the same for every channel, and a softmax does not change when the same
constant is subtracted from all its inputs: it cancels, so no baseline forward pass is made. A channel
constant over the image (``max == min``, no normalization possible) takes no part: the reference code
skips it; here it gets weight 0 and the softmax is over the other channels. With ``max_channels`` only the
channels of highest mean (rectified) activation, per image, take part.

Rectification. The paper's activations are non-negative: VGG16's last convolutional features after their ReLU
(``features.29`` in the reference code). Grad-CAM's default layer here is the last ``nn.Conv2d`` itself, whose
output is a pre-activation; there the softmax weights, all close to 1/K for probabilities in [0, 1], average
mostly negative maps and the ReLU leaves an all-zero map (every Fashion-MNIST CNN map but one of 8 in a
trial). ``rectify=True`` (default) takes ``ReLU(A_k)``, the features the paper uses wherever the conv is followed
by a ReLU (fmnist_cnn: ``conv2`` rectified = ``relu2``); on a layer that is already non-negative (EfficientNet's
``net.head``, after its ReLU6) it changes nothing.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from ..targets import Target
from .base import Explainer
from .cam import resolve_cam_layer
from .rise import probability_target

__all__ = ["ScoreCAM", "layer_activations"]


def layer_activations(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """The output of ``layer`` on one no-grad forward pass of ``model`` on ``x`` (the hook is removed after)."""
    store: List[Tensor] = []

    def hook(_m, _i, out):
        store.append(out.detach() if isinstance(out, Tensor) else out)

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if not store:
        raise NotApplicableError(f"the CAM layer {type(layer).__name__} did not run in the forward pass")
    return store[-1]


class ScoreCAM(Explainer):
    """Score-CAM (Wang et al. 2020): CAM weighted by the softmax over channels of the target score of the
    input masked by each normalized, upsampled activation map.

    Parameters: ``layer`` (module name; default as Grad-CAM: the model's ``sanitycheck_cam_layer``, else
    its last ``nn.Conv2d`` executed), ``max_channels`` (use only the channels of highest mean activation
    per image; default None = all channels, the paper's method: 1280 forward passes per image on
    EfficientNet-Lite0's head), ``probability`` (score by the softmax probability, default True as in the
    paper; see :func:`~sanitycheck.explainers.rise.probability_target`), ``rectify`` (ReLU of the activations
    before use, default True: the paper's non-negative features; see the module docstring), ``max_batch`` (masked inputs per
    forward pass, default 256; bounds memory, does not change the maps, not in :meth:`config`).
    The layer used on the last call is in ``last_layer``, its channel count in ``last_channels``.
    """

    name = "score_cam"
    #: needs a convolutional feature map: images only (on a CLIP ViT the last Conv2d is the patch embedding)
    modalities = ("image",)

    def __init__(self, layer: Optional[str] = None, max_channels: Optional[int] = None, probability: bool = True,
                 rectify: bool = True, max_batch: int = 256):
        if layer is not None and not isinstance(layer, str):
            raise ConfigError(f"{self.name}: layer must be a module name (str) or None, got {layer!r}")
        if max_channels is not None and not (isinstance(max_channels, int) and max_channels >= 1):
            raise ConfigError(f"{self.name}: max_channels must be a positive integer or None, got {max_channels!r}")
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ConfigError(f"{self.name}: max_batch must be a positive integer, got {max_batch!r}")
        self.layer, self.max_channels, self.probability, self.max_batch = layer, max_channels, bool(probability), max_batch
        self.rectify = bool(rectify)
        self.last_layer: Optional[str] = None
        self.last_channels: Optional[int] = None

    def config(self) -> Dict[str, Any]:
        return {"layer": self.layer, "max_channels": self.max_channels, "probability": self.probability,
                "rectify": self.rectify}

    def cam_layer(self, model: nn.Module, x: Tensor):
        """``(name, module)`` of the layer, resolved as Grad-CAM does; a model without a convolutional layer
        (and no ``layer`` / ``sanitycheck_cam_layer``) is a :class:`NotApplicableError`."""
        if self.layer is None and getattr(model, "sanitycheck_cam_layer", None) is None \
                and not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            raise NotApplicableError(
                f"{self.name}: {type(model).__name__} has no nn.Conv2d layer, so there are no convolutional "
                "activation maps to mask the input with; pass layer='<module name>' of a layer with spatial "
                "output (B, C, h, w), set the model's 'sanitycheck_cam_layer' attribute, or use a "
                "model-agnostic explainer (rise, occlusion)")
        return resolve_cam_layer(model, x, self.layer)

    def activations(self, model: nn.Module, x: Tensor) -> Tensor:
        """The CAM layer's activations ``(B, K, h, w)`` on ``x``."""
        name, layer = self.cam_layer(model, x)
        self.last_layer = name
        acts = layer_activations(model, layer, x)
        if not isinstance(acts, Tensor) or acts.ndim != x.ndim or acts.shape[0] != x.shape[0]:
            shape = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
            raise NotApplicableError(
                f"{self.name}: layer {name!r} of {type(model).__name__} outputs {shape}, not spatial maps "
                f"(B, C, h, w) like the input's {tuple(x.shape)}; choose a convolutional layer")
        self.last_channels = int(acts.shape[1])
        return acts

    def n_channels_used(self, channels: int) -> int:
        return channels if self.max_channels is None else min(self.max_channels, channels)

    def evaluations_per_map(self, x_shape: Sequence[int], model: Optional[nn.Module] = None) -> int:
        """Forward passes per map: 1 (the activations) + one per channel used (``max_channels`` or the layer's
        channel count). The channel count is read from ``model`` (one forward pass of zeros of ``x_shape``),
        else from the last call; without either it is an error."""
        if model is not None:
            x = torch.zeros((1, *tuple(x_shape)[1:]), device=next(iter(model.parameters()), torch.zeros(0)).device)
            channels = int(self.activations(model, x).shape[1])
        elif self.last_channels is not None:
            channels = self.last_channels
        else:
            raise ConfigError(f"{self.name}: the number of channels of the CAM layer is not known yet; pass the "
                              "model (evaluations_per_map(x_shape, model)) or call the explainer once first")
        return 1 + self.n_channels_used(channels)

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        x = x.detach()
        b = x.shape[0]
        size = tuple(x.shape[2:])
        if self.probability:
            target = probability_target(target)
        acts = self.activations(model, x)                                    # (B, K, h, w)
        if self.rectify:
            acts = F.relu(acts)
        k = self.n_channels_used(acts.shape[1])
        if k < acts.shape[1]:  # top channels by mean activation, per image (ties: the lower index)
            order = acts.flatten(2).mean(2).argsort(dim=1, descending=True, stable=True)[:, :k]
            acts = acts.gather(1, order[:, :, None, None].expand(-1, -1, *acts.shape[2:]))
        up = F.interpolate(acts.float(), size=size, mode="bilinear", align_corners=False)  # (B, k, H, W)
        flat = up.flatten(2)
        lo, hi = flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)
        usable = (hi > lo)[:, :, 0]                                          # (B, k)
        norm = ((flat - lo) / (hi - lo).where(hi > lo, torch.ones_like(hi))).reshape(up.shape)
        big_target = target.repeat_interleave(k)
        scores = torch.empty(b * k, dtype=torch.float32, device=x.device)
        owner = torch.arange(b, device=x.device).repeat_interleave(k)
        chan = torch.arange(k, device=x.device).repeat(b)
        with torch.no_grad():
            for start in range(0, b * k, self.max_batch):
                stop = min(start + self.max_batch, b * k)
                who, which = owner[start:stop], chan[start:stop]
                masked = x[who] * norm[who, which][:, None].to(x.dtype)
                part = big_target.select(slice(start, stop)) if len(big_target) else big_target
                scores[start:stop] = part(model(masked)).float()
        cic = scores.reshape(b, k).masked_fill(~usable, float("-inf"))
        weights = torch.softmax(cic, dim=1).nan_to_num(0.0)                 # all channels constant: all 0
        cam = torch.einsum("bk,bkhw->bhw", weights, up)
        return F.relu(cam).to(x.dtype)
