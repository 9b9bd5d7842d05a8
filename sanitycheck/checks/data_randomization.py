"""Data randomization test (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, §4).

The same architecture is trained on *permuted* labels until it fits them (high train
accuracy: it memorized, it learned nothing about the classes). A map that depends on
the relationship between inputs and labels must differ between this model and the
normally trained one.

The model must come from the zoo (it carries a ``sanitycheck_spec``), since the check
retrains it; for other models pass ``random_label_model=`` (an ``nn.Module`` or a
callable returning one) in the context.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional

from torch import Tensor, nn

from ..errors import ModelError
from .base import MODEL_STATES, TWIN_MODEL, ModelState, StateCheck


class DataRandomization(StateCheck):
    name = "data_randomization"
    description = ("Compare maps of the trained model with those of the same architecture trained on "
                   "permuted labels (Adebayo et al. 2018): a model-faithful map must differ.")

    def __init__(self, train_subset: Optional[int] = None, epochs: Optional[int] = None,
                 lr: Optional[float] = None, min_train_accuracy: float = 0.9):
        self.train_subset, self.epochs, self.lr = train_subset, epochs, lr
        self.min_train_accuracy = min_train_accuracy

    def config(self) -> Dict[str, Any]:
        return {"train_subset": self.train_subset, "epochs": self.epochs, "lr": self.lr,
                "min_train_accuracy": self.min_train_accuracy}

    needs = frozenset({MODEL_STATES, TWIN_MODEL})

    def model_states(self, ctx: Any) -> Iterator[ModelState]:
        context = {"cache_dir": ctx.cache_dir, "device": ctx.device, "progress": ctx.progress}
        if ctx.twin_model is not None:
            context["random_label_model"] = ctx.twin_model
        return self.states(ctx.model, seed=ctx.seed, example_input=ctx.example_input, context=context)

    def random_label_model(self, model: nn.Module, *, context: Dict[str, Any]) -> nn.Module:
        given = context.get("random_label_model")
        if given is not None:
            return given() if callable(given) and not isinstance(given, nn.Module) else given
        spec = getattr(model, "sanitycheck_spec", None)
        if spec is None:
            raise ModelError(
                f"data_randomization needs to retrain {type(model).__name__} on permuted labels, but it is not "
                "a zoo model (no sanitycheck_spec). Use a zoo model, or pass random_label_model=... "
                "(a model of the same architecture trained on permuted labels).")
        from ..models.zoo import DEFAULT_RANDOM_LABEL_PARAMS, train_or_load

        params = dict(DEFAULT_RANDOM_LABEL_PARAMS.get(spec.arch, {}))
        for key in ("train_subset", "epochs", "lr"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        rl_spec = spec.with_random_labels(**params)
        return train_or_load(rl_spec, cache_dir=context.get("cache_dir"), device=context.get("device", "cpu"),
                             progress=context.get("progress", True))

    def states(self, model: nn.Module, *, seed: int, example_input: Tensor,
               context: Optional[Dict[str, Any]] = None) -> Iterator[ModelState]:
        rl_model = self.random_label_model(model, context=dict(context or {}))
        rl_model.eval()
        info = dict(getattr(rl_model, "sanitycheck_info", {}) or {})
        train_acc = info.get("train_accuracy")
        if train_acc is not None and train_acc < self.min_train_accuracy:
            raise ModelError(
                f"the random-label model reached train accuracy {train_acc:.3f} < {self.min_train_accuracy}: "
                "it did not memorize its labels, so the test would compare against an untrained-like model. "
                "Raise epochs or lower train_subset.")
        yield ModelState("random_labels", rl_model, {k: info[k] for k in
                                                     ("train_accuracy", "test_accuracy", "cache_key") if k in info})
