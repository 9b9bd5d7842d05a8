"""Occlusion (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks"): a
perturbation explainer. The map is the drop of the target score when a window of the image is
replaced by a baseline value; every window of every image is batched, forward passes only.

Works on any image model; on a model containing a CLIP ViT image tower the default window is one
ViT patch (:func:`~sanitycheck.explainers.attention_flow.find_visual`), else 8 pixels.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from ..targets import Target
from .attention_flow import _is_vit, _score, find_visual
from .base import Explainer

__all__ = ["Occlusion"]


class Occlusion(Explainer):
    """Patch occlusion (Zeiler & Fergus 2014): map = target score drop when a window is occluded.

    Parameters: ``window`` (side in pixels; default the ViT's patch size, else 8), ``stride``
    (default = ``window``: non-overlapping windows aligned with the patches), ``baseline`` (the value
    the window is filled with, in the model's input space [0, 1]; default 0 = black, the scenes'
    background), ``batch_size`` (occluded images per forward pass; bounds memory, does not change
    the maps). A pixel's value is the mean drop over the windows covering it (0 where none does).
    Positive = occluding the region lowers the score. Forward passes only, no gradients.
    """

    name = "occlusion"

    def __init__(self, window: Optional[int] = None, stride: Optional[int] = None, baseline: float = 0.0,
                 batch_size: int = 1024):
        for label, v in (("window", window), ("stride", stride)):
            if v is not None and not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"{self.name}: {label} must be a positive integer or None, got {v!r}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError(f"{self.name}: batch_size must be a positive integer, got {batch_size!r}")
        self.window, self.stride, self.baseline, self.batch_size = window, stride, float(baseline), batch_size
        self.last_window: Optional[int] = None

    def config(self) -> Dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "baseline": self.baseline}

    @staticmethod
    def _starts(size: int, window: int, stride: int) -> List[int]:
        starts = list(range(0, max(size - window, 0) + 1, stride))
        if starts[-1] + window < size:
            starts.append(size - window)
        return starts

    def window_masks(self, model: nn.Module, x: Tensor) -> Tensor:
        """(n_windows, H, W) bool masks of the occluded windows."""
        window = self.window
        if window is None:
            try:
                _, visual = find_visual(model)
                window = int(visual.patch_size[0]) if _is_vit(visual) else 8
            except NotApplicableError:
                window = 8
        self.last_window = window
        stride = self.stride or window
        h, w = x.shape[-2:]
        ys, xs = self._starts(h, min(window, h), stride), self._starts(w, min(window, w), stride)
        masks = torch.zeros(len(ys) * len(xs), h, w, dtype=torch.bool, device=x.device)
        k = 0
        for y0 in ys:
            for x0 in xs:
                masks[k, y0:y0 + window, x0:x0 + window] = True
                k += 1
        return masks

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        masks = self.window_masks(model, x)                     # (M, H, W)
        n_win = masks.shape[0]
        b = x.shape[0]
        x = x.detach()
        with torch.no_grad():
            base = _score(model, x, target)                     # (B,)
            drops = torch.empty(b, n_win, dtype=base.dtype, device=x.device)
            per_chunk = max(1, self.batch_size // max(1, b))    # windows per pass, all samples at once
            for start in range(0, n_win, per_chunk):
                m = masks[start:start + per_chunk]              # (c, H, W)
                c = m.shape[0]
                occluded = torch.where(m[None, :, None], torch.as_tensor(self.baseline, dtype=x.dtype,
                                                                         device=x.device), x[:, None])
                scores = target.repeat_interleave(c)(model(occluded.reshape(b * c, *x.shape[1:])))
                drops[:, start:start + c] = base[:, None] - scores.reshape(b, c)
        flat = masks.flatten(1).to(drops.dtype)                 # (M, H*W)
        counts = flat.sum(0).clamp(min=1)
        return ((drops @ flat) / counts).reshape(b, *x.shape[-2:])
