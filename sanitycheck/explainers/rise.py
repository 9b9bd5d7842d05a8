"""RISE — Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for Explanation of Black-box
Models" (BMVC). A perturbation explainer: forward passes only, no gradients.

Masks, as in the paper and its reference code (``generate_masks``): ``N`` binary grids of ``s x s``
cells, each cell kept with probability ``p``; each grid is upsampled bilinearly to ``(s + 1) * cell``
pixels (``cell = ceil(H / s)``, ``ceil(W / s)``) and a ``H x W`` window is cropped at a random shift
``(dy, dx)``, ``0 <= dy < cell_h``, ``0 <= dx < cell_w``. The saliency of pixel ``u`` is the
Monte-Carlo estimate of ``E[score(x ⊙ M) | M(u) = 1]``::

    S(u) = 1 / (N * p) * Σ_i score(x ⊙ M_i) * M_i(u)

The paper's score is the class probability (softmax), ``probability=True`` here: a class target
(``ClassTarget`` with logits) is scored through the softmax; any other target (an already-softmaxed
class target, the CLIP similarity) is scored as it is.

Random draws. The reference code draws one set of masks shared by every image. Here, as for every
sampled explainer of this package (:class:`~sanitycheck.explainers.noise_tunnel.NoiseTunnel`), the
grids and shifts of sample ``i`` are drawn from a generator keyed on ``(seed, content of x[i])``
(:func:`sanitycheck.seeding.per_sample_draw`): maps are deterministic, do not depend on the rest of the
batch, and every model state sees the same masks (common random numbers). Per image the estimator is
the paper's exactly (N masks from the same distribution); across images the masks are independent
rather than shared, which only makes averages over images less correlated.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..seeding import per_sample_draw
from ..targets import ClassTarget, Target
from .base import Explainer

__all__ = ["Rise", "rise_masks", "probability_target"]


def probability_target(target: Target) -> Target:
    """``target`` scored as a class probability: a class-logit target becomes the softmax probability of the
    same classes; any other target (already a probability, a similarity, a custom callable) is returned as is."""
    classes = target.class_indices()
    if classes is None:
        return target
    return ClassTarget(classes, softmax=True)


def linear_upsampling(n_out: int, n_in: int, device: Optional[torch.device] = None) -> Tensor:
    """The ``(n_out, n_in)`` matrix of 1-D linear interpolation from ``n_in`` to ``n_out`` samples, as
    scikit-image's ``resize(order=1, mode="reflect")`` (the RISE reference code) does it: half-pixel
    centres, ``src = (j + 0.5) * n_in / n_out - 0.5``, reflected about the edge samples."""
    src = (torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5
    if n_in > 1:
        src = src.abs()                                           # mirror about sample 0
        src = torch.where(src > n_in - 1, 2 * (n_in - 1) - src, src)  # and about sample n_in - 1
    else:
        src = torch.zeros_like(src)
    lo = src.floor().clamp(0, max(n_in - 2, 0)).long()
    frac = src - lo
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights[rows, lo] += 1 - frac
    if n_in > 1:
        weights[rows, lo + 1] += frac
    return weights.to(device=device, dtype=torch.float32)


def rise_masks(grids: Tensor, shifts: Tensor, size: Tuple[int, int]) -> Tensor:
    """RISE masks ``(n, H, W)`` in [0, 1] from binary ``grids`` ``(n, s, s)`` and integer ``shifts`` ``(n, 2)``:
    each grid upsampled bilinearly to ``(s + 1) * cell`` pixels (``cell = ceil(size / s)``, as
    :func:`linear_upsampling`) and cropped to ``size`` at its shift. Only the cropped rows and columns are
    computed: ``mask = Uh[rows] @ grid @ Uw[cols]^T``."""
    h, w = size
    s = grids.shape[-1]
    ch, cw = math.ceil(h / s), math.ceil(w / s)
    uh = linear_upsampling((s + 1) * ch, s, grids.device)
    uw = linear_upsampling((s + 1) * cw, s, grids.device)
    rows = shifts[:, 0, None] + torch.arange(h, device=grids.device)[None]      # (n, H)
    cols = shifts[:, 1, None] + torch.arange(w, device=grids.device)[None]      # (n, W)
    return uh[rows] @ grids.float() @ uw[cols].transpose(1, 2)


class Rise(Explainer):
    """RISE (Petsiuk et al. 2018): saliency = Σ_i score(x ⊙ M_i) · M_i / (N · p) over random smooth masks.

    Parameters: ``n_samples`` (N masks per image, default 4000: the paper's ImageNet setting; suites set
    smaller counts for the CPU), ``grid`` (s, cells per side, default 7 as in the paper; at 28x28 a cell is
    4 pixels, at 224x224 32), ``p`` (probability of keeping a cell, default 0.5), ``probability`` (score the
    class by its softmax probability as the paper does, default True; see :func:`probability_target`),
    ``seed``, ``max_batch`` (masked inputs per forward pass, default 256; bounds memory, does not change the
    maps, so it is not in :meth:`config`). Masked inputs are ``x * M`` (a black baseline, as in the paper).
    Positive maps; forward passes only.
    """

    name = "rise"

    def __init__(self, n_samples: int = 4000, grid: int = 7, p: float = 0.5, probability: bool = True,
                 seed: int = 0, max_batch: int = 256):
        if not (isinstance(n_samples, int) and n_samples >= 1):
            raise ConfigError(f"{self.name}: n_samples must be a positive integer, got {n_samples!r}")
        if not (isinstance(grid, int) and grid >= 1):
            raise ConfigError(f"{self.name}: grid must be a positive integer (cells per side), got {grid!r}")
        if not (0.0 < float(p) <= 1.0):
            raise ConfigError(f"{self.name}: p (probability of keeping a cell) must be in (0, 1], got {p!r}")
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ConfigError(f"{self.name}: max_batch must be a positive integer, got {max_batch!r}")
        self.n_samples, self.grid, self.p = int(n_samples), int(grid), float(p)
        self.probability, self.seed, self.max_batch = bool(probability), int(seed), int(max_batch)

    def config(self) -> Dict[str, Any]:
        return {"n_samples": self.n_samples, "grid": self.grid, "p": self.p, "probability": self.probability,
                "seed": self.seed}

    def evaluations_per_map(self, x_shape: Sequence[int]) -> int:
        """Forward passes per map: one per mask (``n_samples``), whatever the input shape."""
        return self.n_samples

    def draws(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(grids (B, N, s, s) bool, shifts (B, N, 2) long)``; sample ``i``'s rows depend only on
        ``(seed, content of x[i])``."""
        b, s, n = x.shape[0], self.grid, self.n_samples
        h, w = x.shape[-2:]
        if h < s or w < s:
            raise ConfigError(f"{self.name}: grid {s} has more cells per side than the input has pixels "
                              f"({h}x{w}); use grid <= {min(h, w)}")
        u = per_sample_draw(x.float(), (n, s * s + 2), "rise", self.seed, kind="uniform").cpu()  # float32 draws, same keys
        grids = (u[..., :s * s] < self.p).reshape(b, n, s, s)
        cells = torch.tensor([math.ceil(h / s), math.ceil(w / s)], dtype=torch.float32)
        shifts = torch.minimum((u[..., s * s:] * cells).floor(), cells - 1).long()
        return grids.to(x.device), shifts.to(x.device)

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        x = x.detach()
        b, n = x.shape[0], self.n_samples
        h, w = x.shape[-2:]
        if self.probability:
            target = probability_target(target)
        grids, shifts = self.draws(x)
        grids, shifts = grids.reshape(b * n, *grids.shape[2:]), shifts.reshape(b * n, 2)
        big_target = target.repeat_interleave(n)
        sal = torch.zeros(b, h * w, dtype=torch.float64, device=x.device)  # a sum of N terms: float64
        owner = torch.arange(b, device=x.device).repeat_interleave(n)
        with torch.no_grad():
            for start in range(0, b * n, self.max_batch):
                stop = min(start + self.max_batch, b * n)
                masks = rise_masks(grids[start:stop], shifts[start:stop], (h, w))           # (c, H, W)
                who = owner[start:stop]
                masked = x[who] * masks[:, None].to(x.dtype)
                part = big_target.select(slice(start, stop)) if len(big_target) else big_target
                scores = part(model(masked)).double()                                      # (c,)
                sal.index_add_(0, who, scores[:, None] * masks.reshape(stop - start, h * w).double())
        return (sal / (n * self.p)).reshape(b, h, w).to(x.dtype)
