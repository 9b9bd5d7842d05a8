"""Models: registered factories (trained zoo, torchvision adapters) resolved through ``MODELS``."""

from __future__ import annotations

from torch import nn

from ..errors import ModelError
from .layers import Normalize

__all__ = ["load_model", "Normalize"]


def load_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model (``fmnist_cnn``, ``resnet18``, ... or an import path) in eval mode.

    The models of the built-in suites, with the suites' parameters, are the shipped reference weights
    (``sanitycheck/weights/``, verified by sha256; :mod:`sanitycheck.models.weights`), never retrained;
    ``model.sanitycheck_info`` says ``reference`` and ``weights_sha256``."""
    from ..registry import MODELS

    factory = MODELS.get(name)
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {name!r} returned {type(model).__name__}, expected torch.nn.Module")
    model.eval()
    if not hasattr(model, "sanitycheck_name"):
        try:
            model.sanitycheck_name = name
        except AttributeError:  # pragma: no cover - exotic modules
            pass
    return model
