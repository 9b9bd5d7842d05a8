"""LIME (Ribeiro, Singh & Guestrin 2016, "'Why Should I Trust You?': Explaining the Predictions of Any
Classifier"), image version as in the ``lime`` package's ``LimeImageExplainer`` (lime 0.2.0.1):

* superpixels of the input (:mod:`~sanitycheck.explainers.superpixels`; quickshift with LIME's defaults on
  images of side >= 64, slic on smaller ones);
* ``n_samples`` binary masks over the superpixels, each superpixel kept with probability 1/2, the first mask
  all ones (the image itself), as ``LimeImageExplainer.data_labels``;
* hidden superpixels filled with the superpixel's mean colour (LIME's ``hide_color=None``) or a constant;
* sample weights: LIME's exponential kernel ``sqrt(exp(-d^2 / w^2))`` on the cosine distance ``d`` of the
  mask to the all-ones mask, kernel width ``w = 0.25`` (``LimeImageExplainer``'s default);
* a weighted ridge regression (``alpha = 1``, intercept unpenalized: sklearn's ``Ridge(alpha=1)``, LIME's
  default surrogate) of the target score on the masks; the map paints each superpixel's coefficient over
  its pixels.

The target score is the explained target (a logit for class targets), where ``lime`` regresses whatever its
``classifier_fn`` returns. Masks are drawn from a generator keyed on ``(seed, content of x[i])``
(:func:`sanitycheck.seeding.per_sample_draw`), so maps are deterministic, batch-invariant and use the same
masks under every model state. The perturbed images of all inputs go through the model in batches of
``max_batch``; the ridge solves are one batched ``torch.linalg.solve`` in float64.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..seeding import per_sample_draw
from ..targets import Target
from .base import Explainer
from .superpixels import Superpixels, evaluate_masks

__all__ = ["Lime", "lime_kernel_weights", "weighted_ridge", "segment_means"]


def lime_kernel_weights(masks: Tensor, kernel_width: float) -> Tensor:
    """LIME's weights of masks ``(..., S, n)``: ``sqrt(exp(-d^2 / w^2))``, ``d`` the cosine distance to the
    all-ones mask (``1 - sqrt(k / n)`` for ``k`` kept superpixels; 1 for the empty mask, as sklearn)."""
    m = masks.to(torch.float64)
    n = m.shape[-1]
    d = 1.0 - torch.sqrt(m.sum(-1) / n)
    return torch.sqrt(torch.exp(-(d ** 2) / kernel_width ** 2))


def weighted_ridge(X: Tensor, y: Tensor, w: Tensor, alpha: float) -> Tuple[Tensor, Tensor]:
    """Batched weighted ridge with an unpenalized intercept (sklearn ``Ridge(alpha).fit(X, y, sample_weight=w)``):
    ``X`` (B, S, d), ``y`` (B, S), ``w`` (B, S) -> ``(coef (B, d), intercept (B,))``, in float64. Columns that
    are all zero (padding) get coefficient 0."""
    X, y, w = X.to(torch.float64), y.to(torch.float64), w.to(torch.float64)
    sw = w.sum(-1, keepdim=True)
    xm = (w[..., None] * X).sum(-2) / sw                          # (B, d)
    ym = (w * y).sum(-1) / sw[..., 0]                             # (B,)
    Xc, yc = X - xm[:, None], y - ym[:, None]
    A = Xc.transpose(-1, -2) @ (w[..., None] * Xc)
    A = A + alpha * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    b = (Xc.transpose(-1, -2) @ (w * yc)[..., None])[..., 0]
    coef = torch.linalg.solve(A, b)
    return coef, ym - (xm * coef).sum(-1)


def segment_means(x: Tensor, segments: Tensor) -> Tensor:
    """``(C, H, W)`` image with every superpixel filled with its per-channel mean colour."""
    n = int(segments.max()) + 1
    flat = segments.reshape(-1)
    sums = torch.zeros(x.shape[0], n, dtype=x.dtype, device=x.device).index_add_(1, flat, x.reshape(x.shape[0], -1))
    counts = torch.bincount(flat, minlength=n).to(x.dtype)
    return (sums / counts)[:, segments]


class Lime(Explainer):
    """LIME for images (Ribeiro et al. 2016), as ``lime.lime_image.LimeImageExplainer``.

    Parameters: ``n_samples`` (1000 masks per image, the first all ones), ``seed`` (0), ``kernel_width``
    (0.25), ``alpha`` (ridge penalty, 1.0; must be > 0), ``hide_color`` (None: the superpixel's mean colour,
    LIME's default; a number: that constant in the model's input space), the segmentation
    (``segmentation``, ``kernel_size``, ``max_dist``, ``ratio``, ``n_segments``, ``compactness``: see
    :class:`~sanitycheck.explainers.superpixels.Superpixels`), ``max_batch`` (perturbed images per forward
    pass, 256; bounds memory, does not change the maps, so it is not in :meth:`config`).
    Forward passes only: ``n_samples`` model evaluations per map.
    """

    name = "lime"

    def __init__(self, n_samples: int = 1000, seed: int = 0, kernel_width: float = 0.25, alpha: float = 1.0,
                 hide_color: Optional[float] = None, segmentation: str = "auto", kernel_size: float = 4,
                 max_dist: float = 200, ratio: float = 0.2, n_segments: int = 25,
                 compactness: Optional[float] = None, max_batch: int = 256):
        if not (isinstance(n_samples, int) and n_samples >= 2):
            raise ConfigError(f"lime: n_samples must be an integer >= 2, got {n_samples!r}")
        if not float(kernel_width) > 0:
            raise ConfigError(f"lime: kernel_width must be > 0, got {kernel_width!r}")
        if not float(alpha) > 0:
            raise ConfigError(f"lime: alpha (ridge penalty) must be > 0, got {alpha!r}")
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ConfigError(f"lime: max_batch must be a positive integer, got {max_batch!r}")
        if hide_color is not None and not isinstance(hide_color, (int, float)):
            raise ConfigError(f"lime: hide_color must be None (superpixel mean colour) or a number, got {hide_color!r}")
        self.n_samples, self.seed = n_samples, int(seed)
        self.kernel_width, self.alpha = float(kernel_width), float(alpha)
        self.hide_color = None if hide_color is None else float(hide_color)
        self.superpixels = Superpixels(segmentation, kernel_size, max_dist, ratio, n_segments, compactness)
        self.max_batch = max_batch

    def config(self) -> Dict[str, Any]:
        return {"n_samples": self.n_samples, "seed": self.seed, "kernel_width": self.kernel_width,
                "alpha": self.alpha, "hide_color": self.hide_color, **self.superpixels.config()}

    def evaluations_per_map(self, x_shape: Tuple[int, ...]) -> int:
        """Forward passes per map: ``n_samples`` (the first mask is the unperturbed image)."""
        return self.n_samples

    def masks(self, x: Tensor, segments: List[Tensor]) -> List[Tensor]:
        """Per image ``(n_samples, n_i)`` {0, 1} masks, row 0 all ones; keyed on (seed, content of x[i])."""
        out = []
        for i, seg in enumerate(segments):
            n_seg = int(seg.max()) + 1
            u = per_sample_draw(x[i:i + 1], (self.n_samples, n_seg), "lime", self.seed, kind="uniform")[0]
            m = (u < 0.5).to(torch.float32)
            m[0] = 1.0
            out.append(m)
        return out

    def fills(self, x: Tensor, segments: List[Tensor]) -> Tensor:
        if self.hide_color is not None:
            return torch.full_like(x, self.hide_color)
        return torch.stack([segment_means(x[i], seg) for i, seg in enumerate(segments)])

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        x = x.detach()
        segments = self.superpixels(x)
        masks = self.masks(x, segments)
        scores = evaluate_masks(model, x, target, segments, masks, self.fills(x, segments), self.max_batch)
        d = max(m.shape[1] for m in masks)
        X = torch.zeros(len(masks), self.n_samples, d, dtype=torch.float64, device=x.device)
        for i, m in enumerate(masks):
            X[i, :, :m.shape[1]] = m.to(torch.float64)
        weights = torch.stack([lime_kernel_weights(m, self.kernel_width) for m in masks]).to(x.device)
        coef, _ = weighted_ridge(X, torch.stack(scores), weights, self.alpha)
        return torch.stack([coef[i][seg] for i, seg in enumerate(segments)]).to(x.dtype)
