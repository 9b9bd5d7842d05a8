"""DeepLIFT, backed by captum.

* :class:`DeepLift` — Shrikumar, Greenside & Kundaje 2017, "Learning Important Features Through Propagating
  Activation Differences" (ICML), the Rescale rule, as implemented by captum's ``DeepLift``.

captum finds the nonlinearities whose multipliers it replaces by the *exact* type of each module
(``type(module) in SUPPORTED_NON_LINEAR``): a subclass such as the ``ReLU6(nn.ReLU)`` of ``efficientnet_lite0``
would silently keep its plain gradient. :class:`RescaleDeepLift` (a small captum subclass) recognizes subclasses
of the supported modules and the other elementwise activations (``ReLU6``, ``Hardtanh``, ``SiLU``, ``GELU``,
``Hardswish``, ``Hardsigmoid``, ``Mish``), all with captum's Rescale rule
``grad * (out - out_ref) / (in - in_ref)``. Nonlinearities applied as functions (``F.relu``) are invisible to any
hook: a model without a single recognized nonlinearity module raises
:class:`~sanitycheck.errors.NotApplicableError` instead of returning gradient times ``x - baseline``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional

import captum.attr
import torch
from captum.attr._core import deep_lift as _captum_deep_lift
from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from ..targets import Target
from .base import CaptumExplainer, check_channel_reduction

__all__ = ["DeepLift", "RescaleDeepLift", "deeplift_rule", "check_has_nonlinearity"]

#: elementwise activations captum does not list, given the Rescale rule (captum's ``nonlinear``)
EXTRA_ELEMENTWISE = (nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Mish)


def deeplift_rule(module: nn.Module) -> Optional[Callable[..., Tensor]]:
    """captum's multiplier function for ``module``: by its type, else its nearest supported base class, else
    the Rescale rule for an elementwise activation of :data:`EXTRA_ELEMENTWISE`; None when not a nonlinearity."""
    table = _captum_deep_lift.SUPPORTED_NON_LINEAR
    for klass in type(module).__mro__:
        if klass in table:
            return table[klass]
    if isinstance(module, EXTRA_ELEMENTWISE):
        return _captum_deep_lift.nonlinear
    return None


def check_has_nonlinearity(name: str, model: nn.Module) -> None:
    if not any(deeplift_rule(m) is not None for m in model.modules()):
        raise NotApplicableError(
            f"{name}: {type(model).__name__} has no nonlinearity module DeepLIFT recognizes (nn.ReLU, nn.Sigmoid, "
            "nn.MaxPool2d, ... or a subclass); a nonlinearity applied as a function (F.relu) cannot be hooked, so "
            "the map would be gradient x (input - baseline), not DeepLIFT. Use nn.ReLU modules, one per use.")


class RescaleDeepLift(captum.attr.DeepLift):
    """captum's ``DeepLift`` whose nonlinearities are found by :func:`deeplift_rule` (subclasses included)."""

    def attribute(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """captum's ``attribute``; the attributes it sets on modules (``input``, ``output``, ``input_ref``) are
        removed afterwards even when the forward or the target raised (captum removes only its hooks then)."""
        modules = list(self.model.modules()) if isinstance(self.model, nn.Module) else []
        own = [set(vars(m)) for m in modules]
        try:
            return super().attribute(inputs, *args, **kwargs)
        finally:
            for m, keys in zip(modules, own):
                for key in set(vars(m)) - keys:
                    delattr(m, key)

    def _is_non_linear(self, module: nn.Module) -> bool:
        return deeplift_rule(module) is not None

    def _backward_hook(self, module: nn.Module, grad_input: Tensor, grad_output: Tensor) -> Tensor:
        if not self.satisfies_attribute_criteria(module):
            raise RuntimeError(
                f"DeepLIFT: module {module} lacks the input/output it records in the forward pass; it is probably "
                "called more than once in the network. Use one module per use.")
        multipliers = deeplift_rule(module)(module, module.input, module.output, grad_input, grad_output,
                                            eps=self.eps)
        del module.input
        del module.output
        return multipliers


class DeepLift(CaptumExplainer):
    """DeepLIFT with the Rescale rule (Shrikumar et al. 2017), captum ``DeepLift`` (:class:`RescaleDeepLift`).

    Parameters: ``baseline`` (a constant input value in the model's input space, default 0: the black image for
    [0, 1] images), ``channel_reduction``. Summation-to-delta: the attributions of a sample sum to
    ``f(x) - f(baseline)`` (exactly for a ReLU network, up to captum's ``eps``). Cost: one forward and one backward
    pass over the input and its baseline, i.e. 2 model evaluations per map.
    """

    name = "deeplift"
    #: hooks nn.Module nonlinearities: image models (not the CLIP similarity, whose activations it does not cover)
    modalities = ("image",)

    def __init__(self, baseline: float = 0.0, channel_reduction: str = "sum"):
        if isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or baseline != baseline:
            raise ConfigError(
                f"deeplift: baseline must be one number, the constant input value of the reference image (e.g. 0.0, "
                f"the black image); got {baseline!r}. A per-pixel or sampled baseline is deeplift_shap.")
        self.baseline = float(baseline)
        super().__init__(RescaleDeepLift, name=type(self).name,
                         channel_reduction=check_channel_reduction(channel_reduction), baselines=self.baseline)

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        check_has_nonlinearity(self.name, model)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            return super().attribute(model, x, target)

    def evaluations_per_map(self, x_shape: Any = None) -> int:
        """2: the input and its baseline each go through one forward (+ backward) pass."""
        return 2

    def config(self) -> Dict[str, Any]:
        return {"baseline": self.baseline, "channel_reduction": self.channel_reduction}


def deeplift_with_baselines(model: nn.Module, x: Tensor, baselines: Tensor, target: Target) -> Tensor:
    """DeepLIFT maps ``(N, C, H, W)`` of ``x`` against a baseline per row (``baselines`` of ``x``'s shape)."""
    from .base import captum_forward_args

    forward, kwargs = captum_forward_args(model, target, x, needs_module=True)
    method = RescaleDeepLift(forward)
    xg = x.detach().clone().requires_grad_(True)
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        return method.attribute(xg, baselines=baselines.detach(), **kwargs).detach()
