"""DeepLIFT-SHAP: DeepLIFT averaged over a distribution of baselines.

* :class:`DeepLiftShap` — Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions" (NeurIPS),
  DeepSHAP; Shrikumar et al. 2017 for DeepLIFT's Rescale rule. captum's ``DeepLiftShap`` computes the same mean
  (DeepLIFT of the input against each baseline, averaged) for one baseline set shared by the whole batch.

**Baselines.** SHAP's ``DeepExplainer`` takes a background sample of the training data; an explainer here sees
only the batch, so the baselines are drawn: ``n_samples`` images of uniform noise in the sample's own value range,
``b ~ U[min(x_i), max(x_i)]`` per pixel and channel (the "uniform" baseline of Sturmfels, Lundberg & Lee 2020,
"Visualizing the Impact of Feature Attribution Baselines", Distill). They are drawn by
:func:`sanitycheck.seeding.per_sample_draw` keyed on ``(seed, content of x[i])`` exactly as ``NoiseTunnel`` draws
its noise: maps are deterministic, batch-invariant, and use the same baselines in every model state.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..seeding import per_sample_draw
from ..targets import Target
from .base import Explainer, check_channel_reduction
from .deeplift import check_has_nonlinearity, deeplift_with_baselines

__all__ = ["DeepLiftShap", "uniform_baselines"]


def uniform_baselines(x: Tensor, n: int, seed: int, purpose: str) -> Tensor:
    """``(B, n, *x.shape[1:])`` baselines, uniform in ``[min(x_i), max(x_i)]``; row ``i`` keyed on
    ``(purpose, seed, content of x[i])``."""
    x = x.detach()
    b = x.shape[0]
    flat = x.reshape(b, -1)
    low = flat.amin(dim=1).reshape(b, *([1] * x.ndim))
    high = flat.amax(dim=1).reshape(b, *([1] * x.ndim))
    u = per_sample_draw(x, (n, *x.shape[1:]), purpose, seed, kind="uniform")
    return low + (high - low) * u


def check_sampling(name: str, n_samples: Any, max_batch: Any) -> None:
    if int(n_samples) < 1:
        raise ConfigError(f"{name}: n_samples must be >= 1, got {n_samples}")
    if int(max_batch) < 1:
        raise ConfigError(f"{name}: max_batch must be >= 1, got {max_batch}")


class BaselineSampledExplainer(Explainer):
    """Shared parameters of the explainers that average over ``n_samples`` seeded, content-keyed baseline draws
    (:class:`DeepLiftShap`, :class:`~sanitycheck.explainers.gradient_shap.GradientShap`): ``n_samples``, ``seed``,
    ``max_batch`` (inputs per model call; not part of the config: it changes no number) and the channel reduction."""

    def __init__(self, n_samples: int = 16, seed: int = 0, max_batch: int = 128, channel_reduction: str = "sum"):
        check_sampling(type(self).name, n_samples, max_batch)
        self.n_samples, self.seed, self.max_batch = int(n_samples), int(seed), int(max_batch)
        self.channel_reduction = check_channel_reduction(channel_reduction)

    def config(self) -> Dict[str, Any]:
        return {"n_samples": self.n_samples, "seed": self.seed, "channel_reduction": self.channel_reduction}


class DeepLiftShap(BaselineSampledExplainer):
    """Mean of DeepLIFT (Rescale) maps of each input against ``n_samples`` drawn baselines (Lundberg & Lee 2017).

    Parameters: ``n_samples`` (baselines per input, default 16), ``seed`` (0), ``max_batch`` (at most this many
    input-baseline pairs per forward/backward pass, default 128; it does not change the maps and is not in
    :meth:`config`), ``channel_reduction``. Cost: ``2 * n_samples`` model evaluations per map (each pair is one
    forward + backward pass over the input and its baseline).
    """

    name = "deeplift_shap"
    modalities = ("image",)

    def evaluations_per_map(self, x_shape: Any = None) -> int:
        """``2 * n_samples``: each input-baseline pair is one forward (+ backward) pass over two inputs."""
        return 2 * self.n_samples

    def baselines(self, x: Tensor) -> Tensor:
        """The ``(B, n_samples, C, H, W)`` baselines of ``x``."""
        return uniform_baselines(x, self.n_samples, self.seed, "deeplift_shap")

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        check_has_nonlinearity(self.name, model)
        b, n = x.shape[0], self.n_samples
        base = self.baselines(x).reshape(b * n, *x.shape[1:])
        inputs = x.detach().repeat_interleave(n, dim=0)
        big_target = target.repeat_interleave(n)
        chunks = []
        for start in range(0, b * n, self.max_batch):
            stop = min(start + self.max_batch, b * n)
            part = big_target.select(slice(start, stop)) if len(big_target) else big_target
            chunks.append(deeplift_with_baselines(model, inputs[start:stop], base[start:stop], part))
        return torch.cat(chunks).reshape(b, n, *x.shape[1:]).mean(dim=1)
