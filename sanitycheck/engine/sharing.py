"""Explanations that share a backward pass share it.

Some explainers finish their maps from the same intermediate result — a *factor*:

* ``input_gradient``: :class:`~sanitycheck.explainers.gradients.Gradient` is the input gradient of the target
  (captum ``Saliency(abs=False)``); :class:`~sanitycheck.explainers.gradients.GradientXInput` is the input times
  that gradient (captum ``InputXGradient`` computes ``input * gradient`` from the same gradient function);
* ``gradcam_upsampled``: :class:`~sanitycheck.explainers.cam.GradCAM` is the upsampled Grad-CAM map (channel 0);
  :class:`~sanitycheck.explainers.cam.GuidedGradCAM` is Guided Backprop times the same upsampled (ReLU'd)
  Grad-CAM map.

A :class:`Factor` declares, per explainer *class* (exact type, so a subclass that changes ``attribute`` never
shares by accident), the factor's key (its name and the parameters it depends on), how to compute it and how to
finish the map from it. The declarations live here, outside the class bodies, so the explainers' source — and the
``code_hash`` every published leaderboard file carries — is unchanged.

The engine opens a :func:`scope` around the work of one model state (the trained model's original maps; each
state of a state check): a memo of factors keyed by (factor key, model state, rows of the batch, target). A factor
is kept only when at least two explainers of the scope consume it, handed to each consumer, dropped after the
last one took it, and every factor left is freed when the scope closes — so factors never cross states. Without
an open scope (a Ray worker, a check calling ``ctx.explain`` directly) every explainer computes its own maps.

The maps are bit-identical to the unshared ones: the factor is computed by the same code the explainer runs, and
the finishing step is the explainer's own last operation in the same order and dtype (tested with ``torch.equal``
on ``fmnist_cnn``, trained and randomized). ``SANITYCHECK_SHARE_FACTORS=0`` turns sharing off.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Iterable, Iterator, List, Optional, Tuple

from torch import Tensor, nn

__all__ = ["Factor", "FACTORS", "register_factor", "factor_of", "scope", "per_state", "shared", "current_memo",
           "enabled"]


@dataclass(frozen=True)
class Factor:
    """How one explainer class uses a shared factor.

    ``key(explainer)``: the factor's identity (name and parameters), or None when this instance cannot share
    (e.g. a non-default captum argument); ``compute(explainer, model, x, target)``: the factor of a batch;
    ``finish(explainer, model, x, target, factor)``: the map before channel reduction, where ``factor()``
    returns the (shared) factor — a thunk, so the finishing step keeps the explainer's own order of work."""

    key: Callable[[Any], Optional[Hashable]]
    compute: Callable[[Any, nn.Module, Tensor, Any], Tensor]
    finish: Callable[[Any, nn.Module, Tensor, Any, Callable[[], Tensor]], Tensor]


#: explainer class -> its factor declaration
FACTORS: Dict[type, Factor] = {}


def register_factor(klass: type, factor: Factor) -> None:
    """Declare that instances of exactly ``klass`` finish their maps from ``factor``."""
    FACTORS[klass] = factor


def enabled() -> bool:
    return os.environ.get("SANITYCHECK_SHARE_FACTORS", "1").strip().lower() not in ("0", "false", "no", "off")


def factor_of(explainer: Any) -> Optional[Tuple[Factor, Hashable]]:
    """``(declaration, factor key)`` for ``explainer``, or None when it shares nothing."""
    from ..explainers.base import Explainer

    decl = FACTORS.get(type(explainer))
    if decl is None or type(explainer).__call__ is not Explainer.__call__:
        return None
    key = decl.key(explainer)
    return None if key is None else (decl, key)


class FactorMemo:
    """Factors of one model state, each kept until all its declared consumers took it."""

    def __init__(self, explainers: Iterable[Any]):
        self.consumers: Dict[Hashable, int] = {}
        for e in explainers:
            found = factor_of(e)
            if found is not None:
                self.consumers[found[1]] = self.consumers.get(found[1], 0) + 1
        #: full key -> [factor, times taken, (model, target) kept alive so their ids stay unique]
        self.entries: Dict[Tuple[Any, ...], List[Any]] = {}
        self.computed = 0
        self.reused = 0

    def shares(self, fkey: Hashable) -> bool:
        return self.consumers.get(fkey, 0) >= 2

    def take(self, fkey: Hashable, state: Tuple[Any, ...], model: nn.Module, rows: Tuple[int, int], target: Any,
             compute: Callable[[], Tensor]) -> Tensor:
        """The factor ``fkey`` for ``model`` in state ``state`` (its weights' checksum), rows ``rows`` and
        ``target``: the stored one when another consumer computed it, else computed (and stored for the others)."""
        full = (fkey, id(model), state, rows, id(target))
        entry = self.entries.get(full)
        if entry is not None and entry[2][0] is model and entry[2][1] is target:
            entry[1] += 1
            self.reused += 1
            if entry[1] >= self.consumers.get(fkey, 0):
                del self.entries[full]
            return entry[0]
        value = compute().detach()
        self.computed += 1
        self.entries[full] = [value, 1, (model, target)]
        return value

    def close(self) -> None:
        self.entries.clear()


_LOCAL = threading.local()


def current_memo() -> Optional[FactorMemo]:
    return getattr(_LOCAL, "memo", None)


@contextmanager
def scope(explainers: Iterable[Any]) -> Iterator[Optional[FactorMemo]]:
    """A memo for one model state, shared by ``explainers`` (the explainers that will run in it); freed on exit.
    Yields None (and shares nothing) when sharing is off or no factor has two consumers."""
    memo = FactorMemo(explainers) if enabled() else None
    if memo is not None and not any(memo.shares(k) for k in memo.consumers):
        memo = None
    previous = current_memo()
    _LOCAL.memo = memo
    try:
        yield memo
    finally:
        _LOCAL.memo = previous
        if memo is not None:
            memo.close()


def per_state(states: Iterable[Any], explainers: Iterable[Any]) -> Iterator[Any]:
    """``states``, each yielded inside its own :func:`scope`: the factors of one state are freed before the next
    state is built."""
    explainers = list(explainers)
    for state in states:
        with scope(explainers):
            yield state


class _Shared:
    """``explainer`` whose ``attribute`` finishes from the memo's factor; the rest of the explainer's call (eval
    check, target, channel reduction, shape and finiteness checks) is :class:`Explainer`'s own ``__call__``."""

    def __init__(self, explainer: Any, attribute: Callable[[nn.Module, Tensor, Any], Tensor]):
        self._explainer = explainer
        self.attribute = attribute

    def __getattr__(self, name: str) -> Any:
        return getattr(self._explainer, name)

    def __call__(self, model: nn.Module, x: Tensor, target: Any) -> Tensor:
        from ..explainers.base import Explainer

        return Explainer.__call__(self, model, x, target)  # type: ignore[arg-type]


def shared(explainer: Any, state: Tuple[Any, ...], rows: Tuple[int, int], target: Any) -> Any:
    """``explainer``, or a stand-in that takes its factor from the open memo (model state ``state``, batch rows
    ``rows`` of the audited inputs, the whole run's ``target`` object)."""
    memo = current_memo()
    if memo is None:
        return explainer
    found = factor_of(explainer)
    if found is None or not memo.shares(found[1]):
        return explainer
    decl, fkey = found

    def attribute(model: nn.Module, x: Tensor, batch_target: Any) -> Tensor:
        def factor() -> Tensor:
            return memo.take(fkey, state, model, rows, target,
                             lambda: decl.compute(explainer, model, x, batch_target))

        return decl.finish(explainer, model, x, batch_target, factor)

    return _Shared(explainer, attribute)


# ---------------------------------------------------------------- the declarations
def _register_builtin() -> None:
    import captum.attr

    from ..explainers.base import CaptumExplainer
    from ..explainers.cam import GradCAM, GuidedGradCAM
    from ..explainers.gradients import Gradient, GradientXInput

    def plain(explainer: Any, method: type, kwargs: Dict[str, Any]) -> bool:
        return explainer.method is method and not explainer.init_kwargs and explainer.attribute_kwargs == kwargs

    def input_gradient(model: nn.Module, x: Tensor, target: Any) -> Tensor:
        # exactly Gradient.attribute: captum Saliency(abs=False) through CaptumExplainer.attribute
        return CaptumExplainer(captum.attr.Saliency, abs=False).attribute(model, x, target)

    register_factor(Gradient, Factor(
        key=lambda e: ("input_gradient",) if plain(e, captum.attr.Saliency, {"abs": False}) else None,
        compute=lambda e, model, x, target: input_gradient(model, x, target),
        finish=lambda e, model, x, target, factor: factor()))
    # captum InputXGradient: `input * gradient` with the same gradient function as Saliency
    register_factor(GradientXInput, Factor(
        key=lambda e: ("input_gradient",) if plain(e, captum.attr.InputXGradient, {}) else None,
        compute=lambda e, model, x, target: input_gradient(model, x, target),
        finish=lambda e, model, x, target, factor: x * factor()))

    def cam_key(cam: Any) -> Optional[Hashable]:
        if type(cam) is not GradCAM or cam.reshape is not None or not cam.relu:
            return None
        return ("gradcam_upsampled", cam.layer, cam.upsample)

    # GradCAM.attribute is upsampled(...)[:, 0]; GuidedGradCAM.attribute is guided * gradcam.upsampled(...)
    register_factor(GradCAM, Factor(
        key=cam_key,
        compute=lambda e, model, x, target: e.upsampled(model, x, target),
        finish=lambda e, model, x, target, factor: factor()[:, 0]))

    def guided_finish(e: Any, model: nn.Module, x: Tensor, target: Any, factor: Callable[[], Tensor]) -> Tensor:
        guided = e.guided.attribute(model, x, target).detach()  # first, as GuidedGradCAM.attribute does
        return guided * factor()

    register_factor(GuidedGradCAM, Factor(
        key=lambda e: cam_key(e.gradcam),
        compute=lambda e, model, x, target: e.gradcam.upsampled(model, x, target),
        finish=guided_finish))


_register_builtin()
