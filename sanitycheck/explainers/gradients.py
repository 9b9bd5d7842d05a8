"""Gradient-based explainers, backed by captum.

* :class:`Gradient` — Simonyan, Vedaldi & Zisserman 2014, "Deep Inside Convolutional
  Networks: Visualising Image Classification Models and Saliency Maps" (signed gradient).
* :class:`GradientXInput` — Shrikumar et al. 2016/2017 ("Not Just a Black Box"; DeepLIFT paper),
  gradient times input.
* :class:`IntegratedGradients` — Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for
  Deep Networks".
* :class:`GuidedBackprop` — Springenberg et al. 2015, "Striving for Simplicity: The All
  Convolutional Net".

All are batched (one backward pass per batch, or per internal chunk for IG), keep the
sign of the attribution (post-processing such as ``abs`` is an explicit, recorded step
elsewhere) and reduce channels by ``channel_reduction`` (default ``"sum"``).
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

import captum.attr
from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from ..targets import Target
from .base import CaptumExplainer, check_channel_reduction

__all__ = ["Gradient", "GradientXInput", "IntegratedGradients", "GuidedBackprop"]


class Gradient(CaptumExplainer):
    """Vanilla gradient of the target score with respect to the input (Simonyan et al. 2014).

    captum ``Saliency(abs=False)``: the sign is kept. Parameters: ``channel_reduction``.
    """

    name = "gradient"

    def __init__(self, channel_reduction: str = "sum"):
        super().__init__(captum.attr.Saliency, name=type(self).name,
                         channel_reduction=check_channel_reduction(channel_reduction), abs=False)

    def config(self) -> Dict[str, Any]:
        return {"channel_reduction": self.channel_reduction}


class GradientXInput(CaptumExplainer):
    """Gradient times input (Shrikumar et al. 2016), captum ``InputXGradient``."""

    name = "gradient_x_input"

    def __init__(self, channel_reduction: str = "sum"):
        super().__init__(captum.attr.InputXGradient, name=type(self).name,
                         channel_reduction=check_channel_reduction(channel_reduction))

    def config(self) -> Dict[str, Any]:
        return {"channel_reduction": self.channel_reduction}


class IntegratedGradients(CaptumExplainer):
    """Integrated Gradients (Sundararajan et al. 2017), captum ``IntegratedGradients``.

    Parameters: ``n_steps`` (default 50), ``method`` (captum's quadrature rule, default
    ``"gausslegendre"``), ``baseline`` (a constant input value, default 0: the black image),
    ``internal_batch_size`` (at most this many scaled inputs per forward/backward pass, to
    bound memory; it does not change the maps, so it is not part of :meth:`config`).
    Completeness: the attributions of a sample sum to ``f(x) - f(baseline)`` up to the
    quadrature error of ``n_steps`` points.
    """

    name = "integrated_gradients"

    def __init__(self, n_steps: int = 50, method: str = "gausslegendre", baseline: float = 0.0,
                 internal_batch_size: Optional[int] = 2048, channel_reduction: str = "sum"):
        if int(n_steps) < 1:
            raise ConfigError(f"integrated_gradients: n_steps must be >= 1, got {n_steps}")
        if internal_batch_size is not None and int(internal_batch_size) < 1:
            raise ConfigError(f"integrated_gradients: internal_batch_size must be >= 1 or None, got {internal_batch_size}")
        self.n_steps, self.method_name, self.baseline = int(n_steps), str(method), float(baseline)
        self.internal_batch_size = None if internal_batch_size is None else int(internal_batch_size)
        super().__init__(captum.attr.IntegratedGradients, name=type(self).name,
                         channel_reduction=check_channel_reduction(channel_reduction),
                         baselines=self.baseline, n_steps=self.n_steps)

    def batch_attribute_kwargs(self, x: Tensor) -> Dict[str, Any]:
        kwargs = super().batch_attribute_kwargs(x)
        kwargs["method"] = self.method_name  # not in attribute_kwargs: CaptumExplainer's own first argument is `method`
        # captum needs room for at least one step of the whole batch; more steps per pass when possible
        ibs = self.internal_batch_size
        kwargs["internal_batch_size"] = None if ibs is None else max(ibs, x.shape[0])
        return kwargs

    def config(self) -> Dict[str, Any]:
        return {"n_steps": self.n_steps, "method": self.method_name, "baseline": self.baseline,
                "channel_reduction": self.channel_reduction}


def _has_relu_module(model: nn.Module) -> bool:
    return any(isinstance(m, nn.ReLU) for m in model.modules())


class GuidedBackprop(CaptumExplainer):
    """Guided Backpropagation (Springenberg et al. 2015), captum ``GuidedBackprop``.

    The backward pass of every ``nn.ReLU`` module also zeroes negative gradients. captum
    overrides ``nn.ReLU`` *modules* only; a model that applies ``torch.relu``/``F.relu``
    functionally would silently get a plain gradient, so a model without any ``nn.ReLU``
    module raises :class:`~sanitycheck.errors.NotApplicableError`.
    Adebayo et al. 2018 find its maps nearly invariant to randomizing the higher layers.
    """

    name = "guided_backprop"

    def __init__(self, channel_reduction: str = "sum"):
        super().__init__(captum.attr.GuidedBackprop, name=type(self).name,
                         channel_reduction=check_channel_reduction(channel_reduction))

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        if not _has_relu_module(model):
            raise NotApplicableError(
                f"{self.name}: {type(model).__name__} has no nn.ReLU module; Guided Backprop overrides the "
                "backward pass of nn.ReLU modules (a functional relu would leave a plain gradient)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
            return super().attribute(model, x, target)

    def config(self) -> Dict[str, Any]:
        return {"channel_reduction": self.channel_reduction}
