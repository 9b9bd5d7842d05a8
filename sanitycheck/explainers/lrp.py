"""Layer-wise relevance propagation, backed by captum's ``LRP``.

* :class:`LRP` — Bach, Binder, Montavon, Klauschen, Müller & Samek 2015, "On Pixel-Wise Explanations for
  Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation" (PLoS ONE); rule sets after Montavon,
  Binder, Lapuschkin, Samek & Müller 2019, "Layer-Wise Relevance Propagation: An Overview" and zennit's
  composites (Anders et al. 2021).

**Why captum and not zennit.** zennit 0.5.1 (pinned) imports ``torchvision`` at package import
(``zennit/__init__.py`` -> ``zennit.torchvision``), and the installed torchvision 0.28.0 does not load with the
pinned torch 2.13.0+cpu (``RuntimeError: operator torchvision::nms does not exist``), so ``import zennit`` fails.
captum 0.9's ``LRP`` has the same modified-gradient formulation and rules (epsilon, alpha1-beta0 / z+, identity).

**Rule sets** (``rules``): ``"epsilon"`` — LRP-epsilon on every layer with weights and every pooling layer
(captum's default); ``"epsilon_plus"`` (default) — captum's ``Alpha1_Beta0_Rule`` (positive weights only,
z+ for non-negative inputs) on convolutions, LRP-epsilon elsewhere, like zennit's ``EpsilonPlus``. Activations
(``nn.ReLU`` and subclasses, ``nn.Dropout``, ``nn.Tanh``) pass relevance unchanged; ``nn.Flatten``/``nn.Identity``
are reshapes and let it through; the model's own input ``Normalize`` gets the identity rule. Layers are matched by
``isinstance`` (captum matches exact types only, so the ``Conv2dSame``/``ReLU6`` of ``efficientnet_lite0`` would
be refused). Batch norm is refused (LRP needs it merged into the layer before it, and
networks with batch norm here have residual sums, which captum's LRP duplicates relevance across; on
``efficientnet_lite0`` the relevance sums reached 1e17-1e20 for logits of 6 and 9; with its 9 residual sums made
captum ``Addition_Module``s (proportional split, via ``torch.fx``) they were -11.2 and -2.9 under LRP-epsilon and
-1e5 under epsilon-plus: batch norm would have to be folded into the bias-free ``Conv2dSame`` convolutions first). Any other leaf module — a layer type
no rule supports (``LayerNorm``, ``MultiheadAttention``,
``GELU``, a custom layer) — is a :class:`~sanitycheck.errors.NotApplicableError` naming the layer, never a silent
gradient. Operations done as functions are not hooked, and captum passes relevance itself (not relevance per unit
of activation) between layers, so a functional sum of two activations (a residual ``y + x``) would copy the
relevance into both terms: a model whose ``torch.fx`` trace (leaf modules kept whole) has such a sum is refused,
naming it (a model that cannot be traced is not checked for sums).

captum's LRP writes rules into the modules and changes weights in place during the pass; it runs here on a
``copy.deepcopy`` of the model, so the model is never touched.
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from typing import Any, Dict, Optional

import captum.attr
import torch
from captum.attr._utils.custom_modules import Addition_Module
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, IdentityRule, PropagationRule
from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from ..targets import Target
from .base import Explainer, captum_forward_args, check_channel_reduction

__all__ = ["LRP", "RULE_SETS", "lrp_layer_rules", "functional_sum"]

RULE_SETS = ("epsilon_plus", "epsilon")

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_EPSILON = (nn.Linear, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
            nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d, Addition_Module)
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PASS = (nn.ReLU, nn.Dropout, nn.Tanh)  # relevance passes unchanged (captum's activation rule)
_RESHAPE = (nn.Flatten, nn.Unflatten, nn.Identity)  # not hooked: the gradient of a reshape is the reshape


def _is_identity_layer(module: nn.Module) -> bool:
    from ..models.layers import Normalize

    return isinstance(module, Normalize)


_SKIP = object()


def lrp_layer_rules(name: str, model: nn.Module, rules: str, epsilon: float) -> Dict[nn.Module, Any]:
    """Leaf module -> its rule (a ``PropagationRule``, None for pass-through); a leaf no rule supports raises
    :class:`NotApplicableError` naming it."""
    out: Dict[nn.Module, Any] = {}
    for mod_name, module in model.named_modules():
        if next(iter(module.children()), None) is not None:
            continue  # a container: its leaves get the rules
        if isinstance(module, _CONV):
            out[module] = Alpha1_Beta0_Rule() if rules == "epsilon_plus" else EpsilonRule(epsilon=epsilon)
        elif isinstance(module, _EPSILON):
            out[module] = EpsilonRule(epsilon=epsilon)
        elif isinstance(module, _PASS):
            out[module] = None
        elif isinstance(module, _RESHAPE):
            out[module] = _SKIP
        elif _is_identity_layer(module):
            out[module] = IdentityRule()
        elif isinstance(module, _BATCH_NORM):
            raise NotApplicableError(
                f"{name}: layer {mod_name!r} is a {type(module).__name__}; LRP needs batch norm merged into the "
                "layer before it (a canonizer, Montavon et al. 2019) and a residual sum split in proportion to its "
                "terms. captum's LRP has neither (zennit's canonizers cannot be imported here, see the module "
                "docstring): on a batch-norm network with skip connections (efficientnet_lite0) its relevance "
                "duplicates at every skip and is not conserved. Use deeplift or integrated_gradients for this model.")
        else:
            raise NotApplicableError(
                f"{name}: layer {mod_name or '(model)'!r} of type {type(module).__name__} has no LRP rule "
                f"(rule set {rules!r} covers convolutions, linear, batch-norm and pooling layers, ReLU/Dropout/Tanh "
                "activations and flatten/identity); LRP would pass a plain gradient through it. Use another "
                "explainer for this model, or replace the layer.")
    return {m: r for m, r in out.items() if r is not _SKIP}


def functional_sum(model: nn.Module) -> Optional[str]:
    """The first sum of two activations in ``model``'s forward outside any leaf module (``"y + x in <code>"``),
    from a ``torch.fx`` trace that keeps leaf modules whole; None when there is none or the model cannot be traced."""
    import operator

    import torch.fx

    class _LeafTracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return next(iter(m.children()), None) is None

    try:
        graph = _LeafTracer().trace(model)
    except Exception:  # noqa: BLE001 - data-dependent control flow etc.: nothing to say about sums
        return None
    for node in graph.nodes:
        is_sum = (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)) or \
            (node.op == "call_method" and node.target in ("add", "add_"))
        activations = [a for a in node.args[:2] if isinstance(a, torch.fx.Node) and a.op != "get_attr"]
        if is_sum and len(activations) == 2:  # a parameter or constant added is a bias, not a sum of relevances
            return f"{node.args[0]} + {node.args[1]} (fx node {node.name!r})"
    return None


class _RuleMapLRP(captum.attr.LRP):
    """captum's ``LRP`` with the rule of each leaf module given (matched by ``isinstance`` beforehand)."""

    def __init__(self, model: nn.Module, layer_rules: Dict[nn.Module, Optional[PropagationRule]]):
        self._layer_rules = layer_rules
        super().__init__(model)

    def _get_layers(self, model: nn.Module) -> None:
        self.layers.extend(self._layer_rules)

    def _check_and_attach_rules(self) -> None:
        for layer, rule in self._layer_rules.items():
            layer.rule = rule
            if rule is not None:
                layer.activations = {}
                rule.relevance_input = defaultdict(list)
                rule.relevance_output = {}

    def _register_forward_hooks(self) -> None:
        from captum.attr._core.lrp import _register_backward_hook

        for layer in self.layers:
            if layer.rule is None:
                self.backward_handles.extend(
                    _register_backward_hook(layer, PropagationRule.backward_hook_activation, self))
            else:
                self.forward_handles.append(layer.register_forward_hook(layer.rule.forward_hook))


class LRP(Explainer):
    """Layer-wise relevance propagation (Bach et al. 2015) with a rule set, on captum's ``LRP``.

    Parameters: ``rules`` (``"epsilon_plus"``, default, or ``"epsilon"``), ``epsilon`` (the stabilizer of
    LRP-epsilon, default 1e-6 as in zennit), ``channel_reduction``. The relevance of a sample sums to its target
    score where every layer conserves it (bias-free layers, epsilon -> 0); with ``rules="epsilon"`` on a bias-free
    ReLU network it equals gradient x input. Cost: 2 model evaluations per map (captum runs two forward passes and
    one backward pass).
    """

    name = "lrp"
    modalities = ("image",)

    def __init__(self, rules: str = "epsilon_plus", epsilon: float = 1e-6, channel_reduction: str = "sum"):
        if rules not in RULE_SETS:
            raise ConfigError(f"lrp: unknown rule set {rules!r}; use one of {RULE_SETS}")
        if not float(epsilon) >= 0:
            raise ConfigError(f"lrp: epsilon must be >= 0, got {epsilon}")
        self.rules, self.epsilon = rules, float(epsilon)
        self.channel_reduction = check_channel_reduction(channel_reduction)

    def config(self) -> Dict[str, Any]:
        return {"rules": self.rules, "epsilon": self.epsilon, "channel_reduction": self.channel_reduction}

    def evaluations_per_map(self, x_shape: Any = None) -> int:
        """2: captum's LRP runs two forward passes (weights, then relevance) and one backward pass."""
        return 2

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        lrp_layer_rules(self.name, model, self.rules, self.epsilon)  # refuse before copying
        found = functional_sum(model)
        if found is not None:
            raise NotApplicableError(
                f"{self.name}: {type(model).__name__} adds two activations outside a module ({found}); captum's LRP "
                "would copy the relevance into both terms. Make the sum a captum.attr._utils.custom_modules."
                "Addition_Module (one per sum) or use another explainer.")
        work = copy.deepcopy(model)
        layer_rules = lrp_layer_rules(self.name, work, self.rules, self.epsilon)
        forward, kwargs = captum_forward_args(work, target, x, needs_module=True)
        method = _RuleMapLRP(forward, layer_rules)
        xg = x.detach().clone().requires_grad_(True)
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            return method.attribute(xg, **kwargs).detach()
