"""Superpixels shared by :mod:`~sanitycheck.explainers.lime` and :mod:`~sanitycheck.explainers.kernel_shap`.

The segmentation is computed on the input image alone (never the model), so every model state of a
randomization check perturbs the same regions. Two scikit-image algorithms:

* ``quickshift`` (Vedaldi & Soatto 2008) with the LIME image explainer's defaults (``lime_image.py``:
  ``kernel_size=4, max_dist=200, ratio=0.2``), on the image rescaled to [0, 1] per sample (quickshift
  works in Lab colour, which expects [0, 1] RGB); one-channel images are replicated to RGB first.
  About 30 superpixels on a 224x224 photo.
* ``slic`` (Achanta et al. 2012): ``n_segments`` (default 25) and ``compactness`` (default: 10 for RGB,
  which slic converts to Lab; 0.3 for one channel, intensities in [0, 1]). 18-26 (mean 23) superpixels on a
  28x28 Fashion-MNIST image (0.1 merges noise-like images into one segment).

``segmentation="auto"`` (the default) is quickshift when the image's smaller side is at least 64 pixels and
slic otherwise: on 28x28 images quickshift with LIME's ``kernel_size=4`` returns one or two segments (a
Gaussian of sigma 4 covers the whole item), which explain nothing. A segmentation with one superpixel is a
:class:`~sanitycheck.errors.ConfigError`.

Labels are relabelled to ``0 .. n-1`` in raster order of first appearance. Segmentations are cached per
image content and parameters (a small LRU), since the same images are explained under every model state.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..seeding import sample_keys

__all__ = ["SEGMENTATIONS", "Superpixels", "segment_batch"]

SEGMENTATIONS = ("auto", "quickshift", "slic")
#: smaller image side from which ``auto`` uses quickshift
AUTO_QUICKSHIFT_MIN_SIDE = 64

_CACHE: "OrderedDict[Tuple, np.ndarray]" = OrderedDict()
_CACHE_SIZE = 4096


class Superpixels:
    """A segmentation method with its parameters: ``Superpixels(...)(x)`` -> list of ``(H, W)`` int64 label
    tensors (labels ``0 .. n_i-1``), one per sample of ``x`` ``(B, C, H, W)``.

    Parameters: ``segmentation`` (``"auto"``, ``"quickshift"``, ``"slic"``), ``kernel_size`` (4),
    ``max_dist`` (200), ``ratio`` (0.2) for quickshift, ``n_segments`` (25) and ``compactness`` (None:
    10 for RGB, 0.3 for one channel) for slic.
    """

    def __init__(self, segmentation: str = "auto", kernel_size: float = 4, max_dist: float = 200,
                 ratio: float = 0.2, n_segments: int = 25, compactness: Optional[float] = None):
        if segmentation not in SEGMENTATIONS:
            raise ConfigError(f"segmentation {segmentation!r} is unknown; use one of {SEGMENTATIONS}")
        if not (isinstance(n_segments, int) and n_segments >= 2):
            raise ConfigError(f"n_segments must be an integer >= 2, got {n_segments!r}")
        for label, v in (("kernel_size", kernel_size), ("max_dist", max_dist), ("ratio", ratio)):
            if not float(v) > 0:
                raise ConfigError(f"quickshift {label} must be > 0, got {v!r}")
        if compactness is not None and not float(compactness) > 0:
            raise ConfigError(f"slic compactness must be > 0 or None, got {compactness!r}")
        self.segmentation = segmentation
        self.kernel_size, self.max_dist, self.ratio = float(kernel_size), float(max_dist), float(ratio)
        self.n_segments = int(n_segments)
        self.compactness = None if compactness is None else float(compactness)

    def config(self) -> Dict[str, Any]:
        return {"segmentation": self.segmentation, "kernel_size": self.kernel_size, "max_dist": self.max_dist,
                "ratio": self.ratio, "n_segments": self.n_segments, "compactness": self.compactness}

    def method_for(self, shape: Tuple[int, ...]) -> str:
        if self.segmentation != "auto":
            return self.segmentation
        return "quickshift" if min(shape[-2:]) >= AUTO_QUICKSHIFT_MIN_SIDE else "slic"

    def segment_image(self, img: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` float array -> ``(H, W)`` labels ``0 .. n-1``."""
        from skimage.segmentation import quickshift, slic

        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ConfigError(f"superpixels need a (C, H, W) image with 1 or 3 channels, got shape {img.shape}")
        lo, hi = float(img.min()), float(img.max())
        unit = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        hwc = np.ascontiguousarray(unit.transpose(1, 2, 0), dtype=np.float64)
        method = self.method_for(img.shape)
        if method == "quickshift":
            rgb = np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else hwc
            seg = quickshift(rgb, kernel_size=self.kernel_size, max_dist=self.max_dist, ratio=self.ratio,
                             rng=42)
        else:
            gray = hwc.shape[2] == 1
            compactness = self.compactness if self.compactness is not None else (0.3 if gray else 10.0)
            seg = slic(hwc[..., 0] if gray else hwc, n_segments=self.n_segments, compactness=compactness,
                       channel_axis=None if gray else -1, start_label=0)
        _, first, inverse = np.unique(seg.ravel(), return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))  # relabel in raster order of first appearance
        labels = order[inverse].reshape(seg.shape).astype(np.int64)
        n = int(labels.max()) + 1
        if n < 2:
            raise ConfigError(
                f"{method} segmentation of a {img.shape[-2]}x{img.shape[-1]} image yielded {n} superpixel: nothing "
                f"to attribute between; parameters {self.config()}. Use segmentation='slic' with a larger "
                "n_segments, or a smaller quickshift kernel_size / max_dist")
        return labels

    def __call__(self, x: Tensor) -> List[Tensor]:
        keys = sample_keys(x)
        arr = x.detach().to("cpu", torch.float32).numpy()
        params = tuple(sorted(self.config().items()))
        out = []
        for i, key in enumerate(keys):
            ck = (key, tuple(arr.shape[1:]), params)
            seg = _CACHE.get(ck)
            if seg is None:
                seg = self.segment_image(arr[i])
                _CACHE[ck] = seg
                if len(_CACHE) > _CACHE_SIZE:
                    _CACHE.popitem(last=False)
            else:
                _CACHE.move_to_end(ck)
            out.append(torch.from_numpy(seg).to(x.device))
        return out


def segment_batch(x: Tensor, **params: Any) -> List[Tensor]:
    """``Superpixels(**params)(x)``."""
    return Superpixels(**params)(x)


def paint(values: Tensor, segments: Tensor) -> Tensor:
    """``values`` (n,) painted over the ``(H, W)`` label map: ``values[segments]``."""
    return values[segments]


def evaluate_masks(model: torch.nn.Module, x: Tensor, target: Any, segments: List[Tensor], masks: List[Tensor],
                   fills: Tensor, max_batch: int) -> List[Tensor]:
    """Target scores of the perturbed images, in batches of at most ``max_batch`` across all samples.

    ``masks[i]`` ``(S_i, n_i)`` in {0, 1}: superpixel ``j`` of image ``i`` is kept where 1 and replaced by
    ``fills[i]`` ``(C, H, W)`` where 0. Returns one ``(S_i,)`` score tensor per image (forward passes only).
    """
    pairs = [(i, s) for i, m in enumerate(masks) for s in range(m.shape[0])]
    scores: List[List[Tensor]] = [[] for _ in masks]
    with torch.no_grad():
        for start in range(0, len(pairs), max_batch):
            chunk = pairs[start:start + max_batch]
            parts, owners = [], []
            j = 0
            while j < len(chunk):  # runs of one image
                i, s0 = chunk[j]
                k = j
                while k < len(chunk) and chunk[k][0] == i:
                    k += 1
                keep = masks[i][s0:s0 + (k - j)].to(torch.bool)[:, segments[i]]   # (s, H, W)
                parts.append(torch.where(keep[:, None], x[i][None], fills[i][None]))
                owners.append((i, k - j))
                j = k
            batch = torch.cat(parts)
            index = torch.cat([torch.full((c,), i, dtype=torch.long) for i, c in owners])
            tgt = target.select(index.to(x.device) if _index_on_device(target) else index) if len(target) else target
            out = tgt(model(batch))
            if out.shape != (batch.shape[0],):
                raise ConfigError(f"target returned shape {tuple(out.shape)} for a batch of {batch.shape[0]}")
            pos = 0
            for i, c in owners:
                scores[i].append(out[pos:pos + c].detach())
                pos += c
    return [torch.cat(s) for s in scores]


def _index_on_device(target: Any) -> bool:
    return bool(target.per_sample) and target.per_sample[0].device.type != "cpu"
