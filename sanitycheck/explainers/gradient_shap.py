"""GradientSHAP (expected gradients).

* :class:`GradientShap` — Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions" (NeurIPS);
  Erion, Janizek, Sturmfels, Lundberg & Lee 2021, "Improving performance of deep learning models with axiomatic
  attribution priors and expected gradients" (Nature Machine Intelligence). captum's ``GradientShap`` with
  ``stdevs=0`` (SHAP's ``GradientExplainer`` with ``local_smoothing=0``) computes the same estimator.

The estimator: ``mean_k grad f(b_k + a_k (x - b_k)) * (x - b_k)`` over ``n_samples`` draws of a baseline ``b_k``
and an interpolation point ``a_k ~ U[0, 1]``. Written here rather than called from captum, which draws from the
global RNG per batch: the baselines (uniform noise in the sample's value range, as
:class:`~sanitycheck.explainers.deeplift_shap.DeepLiftShap`) and the points ``a_k`` are drawn with
:func:`sanitycheck.seeding.per_sample_draw` keyed on ``(seed, content of x[i])``, and the ``B * n_samples``
gradients are computed in batches of ``max_batch``. Maps are deterministic, batch-invariant, and drawn from the
same samples in every model state.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor, nn

from ..seeding import per_sample_draw
from ..targets import Target
from .deeplift_shap import BaselineSampledExplainer, uniform_baselines

__all__ = ["GradientShap"]


class GradientShap(BaselineSampledExplainer):
    """Expected gradients over ``n_samples`` (baseline, point) draws (Lundberg & Lee 2017; Erion et al. 2021).

    Parameters: ``n_samples`` (default 16), ``seed`` (0), ``max_batch`` (at most this many interpolated inputs per
    forward/backward pass, default 128; not in :meth:`config`), ``channel_reduction``. Cost: ``n_samples`` model
    evaluations per map (a forward + backward pass counted as one). On a linear model the map is
    ``w * (x - mean_k b_k)`` exactly.
    """

    name = "gradient_shap"

    def evaluations_per_map(self, x_shape: Any = None) -> int:
        """``n_samples``: one forward (+ backward) pass per interpolated input."""
        return self.n_samples

    def baselines(self, x: Tensor) -> Tensor:
        """The ``(B, n_samples, C, H, W)`` baselines of ``x``."""
        return uniform_baselines(x, self.n_samples, self.seed, "gradient_shap")

    def alphas(self, x: Tensor) -> Tensor:
        """The ``(B, n_samples)`` interpolation points in [0, 1)."""
        return per_sample_draw(x.detach(), (self.n_samples,), "gradient_shap_alpha", self.seed, kind="uniform")

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        b, n = x.shape[0], self.n_samples
        x = x.detach()
        base = self.baselines(x).reshape(b * n, *x.shape[1:])
        alpha = self.alphas(x).reshape(b * n, *([1] * (x.ndim - 1)))
        inputs = x.repeat_interleave(n, dim=0)
        delta = inputs - base
        points = base + alpha * delta
        big_target = target.repeat_interleave(n)
        grads = []
        for start in range(0, b * n, self.max_batch):
            stop = min(start + self.max_batch, b * n)
            part = big_target.select(slice(start, stop)) if len(big_target) else big_target
            p = points[start:stop].clone().requires_grad_(True)
            with torch.enable_grad():
                score = part.score(model(p), *part.per_sample)
                (grad,) = torch.autograd.grad(score.sum(), p)
            grads.append(grad.detach())
        return (torch.cat(grads) * delta).reshape(b, n, *x.shape[1:]).mean(dim=1)
