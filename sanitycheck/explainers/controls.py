"""Model-independent control "explainers" of Adebayo et al. 2018, "Sanity Checks for Saliency Maps".

* :class:`SobelEdges` — an edge detector (Sobel gradient magnitude of the input). Adebayo et
  al. show that it resembles several saliency maps although it ignores the model: a method
  whose maps stay like it under model randomization explains the input, not the model.
* :class:`UniformNoise` — i.i.d. U(0, 1) maps, the floor of any similarity metric.

Both ignore the model and the target (``requires_model = False``), so they pass a train-mode
model without complaint and give the same maps under every model state.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import NotApplicableError
from ..seeding import per_sample_draw
from ..targets import Target
from .base import Explainer

__all__ = ["SobelEdges", "UniformNoise"]

_SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))


class SobelEdges(Explainer):
    """Sobel gradient magnitude ``sqrt(gx^2 + gy^2)`` of each input channel, summed over channels.

    A fixed depthwise 3x3 convolution with replicate padding (so the image border is not an edge).
    Needs 2-D images ``(B, C, H, W)``. No parameters.
    """

    name = "sobel"
    requires_model = False
    channel_reduction = "sum"

    def __init__(self):
        pass

    def config(self) -> Dict[str, Any]:
        return {"padding": "replicate"}

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        if x.ndim != 4:
            raise NotApplicableError(f"{self.name}: needs images of shape (B, C, H, W), got {tuple(x.shape)}")
        b, c, h, w = x.shape
        dtype = x.dtype if x.is_floating_point() else torch.float32
        kx = torch.tensor(_SOBEL_X, dtype=dtype, device=x.device)
        weight = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C, 1, 3, 3): gx, gy per channel
        with torch.no_grad():
            padded = F.pad(x.detach().to(dtype), (1, 1, 1, 1), mode="replicate")
            grads = F.conv2d(padded, weight, groups=c).reshape(b, c, 2, h, w)
            return grads.square().sum(dim=2).sqrt()  # (B, C, H, W), summed over channels by the base


class UniformNoise(Explainer):
    """U(0, 1) maps, keyed on ``(seed, content of each input)``: deterministic and batch-invariant.

    Parameters: ``seed`` (0).
    """

    name = "noise"
    requires_model = False

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def config(self) -> Dict[str, Any]:
        return {"seed": self.seed}

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        return per_sample_draw(x, tuple(x.shape[2:]), "uniform_noise_control", self.seed, kind="uniform")
