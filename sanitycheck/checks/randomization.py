"""Model parameter randomization tests (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

*Cascading*: re-initialize layers from the logits down, in forward-execution order,
one more layer per step. *Independent*: re-initialize one layer at a time, the rest
trained. The original model is never mutated: states are built on a deep copy.

A "layer" is a module with parameters of its own (``recurse=False``). Forward
order is the order in which each layer's parameters are *first used* by a torch
operation during one forward pass, traced with a ``TorchFunctionMode``: this
also orders parameters that live directly on a container module (raw positional
or class embeddings, packed attention in-projections), which module hooks alone
cannot place.

Re-initialization draws every parameter of the layer from a generator seeded from
(run seed, layer name) — not ``reset_parameters``, which misses
``nn.MultiheadAttention``'s packed in-projection and raw embedding parameters and
would use the global RNG:

* tensors with ≥ 2 dimensions (weights, embeddings, in-projections):
  U(−1/√fan_in, 1/√fan_in), PyTorch's default for Linear and Conv weights;
* 1-D biases of a layer that has such a weight: U(−1/√fan_in, 1/√fan_in) of that
  weight, PyTorch's default bias;
* any other parameter (norm affine parameters, class tokens, scalars): a normal
  with the trained tensor's mean and standard deviation (floored at 0.02 so that
  constant tensors change too) — the learned values are destroyed, the scale kept.

Buffers (batch-norm running statistics) are left as trained.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..errors import ConfigError, ModelError
from ..seeding import generator
from .base import StateCheck, ModelState


class _FirstUse(TorchFunctionMode):
    def __init__(self, owner_of: Dict[int, str]):
        super().__init__()
        self.owner_of = owner_of
        self.order: List[str] = []
        self.seen: set = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for leaf in tree_flatten((args, kwargs or {}))[0]:
            owner = self.owner_of.get(id(leaf)) if isinstance(leaf, Tensor) else None
            if owner is not None and owner not in self.seen:
                self.seen.add(owner)
                self.order.append(owner)
        return func(*args, **(kwargs or {}))


ROOT = "(root)"  # step name of parameters held directly by the model itself


def layer_module(model: nn.Module, name: str) -> nn.Module:
    return model if name == ROOT else model.get_submodule(name)


def parameter_layers(model: nn.Module, example_input: Tensor) -> List[str]:
    """Names of modules with parameters of their own, in forward-execution order (first use).

    Parameters held by the model itself are named ``(root)``. Modules whose parameters
    are never used in the forward pass are left out.
    """
    owner_of = {}
    for name, module in model.named_modules():
        name = name or ROOT
        for p in module.parameters(recurse=False):
            owner_of.setdefault(id(p), name)
    if not owner_of:
        raise ModelError(f"{type(model).__name__} has no parameters to randomize")
    mode = _FirstUse(owner_of)
    with torch.no_grad(), mode:
        model(example_input)
    return mode.order


def randomize_layer_(module: nn.Module, *, seed: int, layer_name: str) -> None:
    """Re-initialize every parameter of ``module`` (its own, not its children's) in place."""
    g = generator(seed, "randomize", layer_name)
    params = dict(module.named_parameters(recurse=False))
    weight_fan_in = None
    for p in params.values():
        if p.dim() >= 2:
            weight_fan_in = p[0].numel()
            break
    with torch.no_grad():
        for pname, p in params.items():
            if p.dim() >= 2:
                bound = 1.0 / math.sqrt(max(p[0].numel(), 1))
                fresh = torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 * bound - bound
            elif "bias" in pname and weight_fan_in is not None:
                bound = 1.0 / math.sqrt(max(weight_fan_in, 1))
                fresh = torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 * bound - bound
            else:
                mean = p.detach().double().mean()
                std = p.detach().double().std() if p.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
                fresh = mean + max(float(std), 0.02) * torch.randn(p.shape, generator=g, dtype=torch.float64)
            p.copy_(fresh.to(dtype=p.dtype, device=p.device))


def _resolve_layers(model: nn.Module, example_input: Tensor, layers: Optional[List[str]]) -> List[str]:
    order = parameter_layers(model, example_input)
    if layers is None:
        return order
    unknown = [l for l in layers if l not in order]
    if unknown:
        raise ConfigError(f"layers {unknown} are not parameterized layers of {type(model).__name__}; "
                          f"known, in forward order: {order}")
    return [l for l in order if l in layers]


class _LayerwiseRandomization(StateCheck):
    """Shared parts of the two parameter randomizations: the layers, in the order the steps take them.

    ``layers``: randomize only these (default: every parameterized layer). ``group_depth``: one step per
    group of layers sharing their first ``group_depth`` dotted name components (e.g. ``3`` makes
    ``bert.encoder.layer.5.attention.self.query`` part of step ``bert.encoder.layer.5`` with depth 4: a whole
    transformer block per step); groups are ordered by their first layer's first use. Without it, every layer is its own step.
    """

    def __init__(self, layers: Optional[List[str]] = None, group_depth: Optional[int] = None):
        if group_depth is not None and (not isinstance(group_depth, int) or group_depth < 1):
            raise ConfigError(f"group_depth must be a positive integer or None, got {group_depth!r}")
        self.layers = layers
        self.group_depth = group_depth

    def config(self) -> Dict[str, Any]:
        return {"layers": self.layers, "group_depth": self.group_depth}

    def groups(self, model: nn.Module, example_input: Tensor) -> List[Tuple[str, List[str]]]:
        """(step name, its layers) in forward order."""
        out: Dict[str, List[str]] = {}
        for name in _resolve_layers(model, example_input, self.layers):
            key = name if self.group_depth is None or name == ROOT else ".".join(name.split(".")[: self.group_depth])
            out.setdefault(key, []).append(name)
        return list(out.items())

    def steps(self, model: nn.Module, example_input: Tensor) -> List[str]:
        """Step names (layer or group names, logits first) in the order ``states`` yields them."""
        return [g for g, _ in reversed(self.groups(model, example_input))]


class CascadingRandomization(_LayerwiseRandomization):
    """Cascading parameter randomization: logits first, then one more layer per step, down to the input."""

    name = "cascading_randomization"
    description = ("Re-initialize layers from the logits down, cumulatively; the maps of a model-dependent "
                   "explainer should lose their similarity to the trained model's maps (Adebayo et al. 2018).")

    def states(self, model: nn.Module, *, seed: int, example_input: Tensor,
               context: Optional[Dict[str, Any]] = None) -> Iterator[ModelState]:
        work = copy.deepcopy(model)
        for group, names in reversed(self.groups(model, example_input)):
            for name in names:
                randomize_layer_(layer_module(work, name), seed=seed, layer_name=name)
            yield ModelState(group, work)


class IndependentRandomization(_LayerwiseRandomization):
    """Independent parameter randomization: one layer at a time, the others trained."""

    name = "independent_randomization"
    description = ("Re-initialize one layer at a time, the others kept trained; measures which layers "
                   "a map depends on (Adebayo et al. 2018).")

    def states(self, model: nn.Module, *, seed: int, example_input: Tensor,
               context: Optional[Dict[str, Any]] = None) -> Iterator[ModelState]:
        work = copy.deepcopy(model)
        for group, names in reversed(self.groups(model, example_input)):
            modules = [layer_module(work, name) for name in names]
            saved = [{k: v.detach().clone() for k, v in m.named_parameters(recurse=False)} for m in modules]
            for name, module in zip(names, modules):
                randomize_layer_(module, seed=seed, layer_name=name)
            yield ModelState(group, work)
            with torch.no_grad():
                for module, kept in zip(modules, saved):
                    for k, p in module.named_parameters(recurse=False):
                        p.copy_(kept[k])
