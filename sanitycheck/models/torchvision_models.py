"""torchvision ImageNet classifiers wrapped for audits: ``Sequential(Normalize(ImageNet), model)``.

Inputs are RGB images in [0, 1] (224x224, 299x299 for Inception v3). Every ``nn.ReLU`` is made
non-inplace (captum's Guided Backprop and hooks need that). ``weights`` is

* ``"DEFAULT"`` or a torchvision weights name (``"IMAGENET1K_V1"``): loaded from the torch hub
  cache (``<torch.hub.get_dir()>/checkpoints/<file>``), downloaded only when the machine is online;
  offline without the file, a :class:`~sanitycheck.errors.WeightsUnavailableError` is raised at once;
* a path to a local state_dict file (``.pth``/``.pt``);
* ``None``: random initialization (seeded by ``seed``; for tests and benchmarks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Union

import torch
from torch import nn

from ..errors import ModelError, WeightsUnavailableError
from .layers import Normalize

__all__ = ["resnet18", "resnet50", "vgg16", "inception_v3", "IMAGENET_MEAN", "IMAGENET_STD", "wrap"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Builder kwargs torchvision uses with pretrained weights / that we use for random init.
_PRETRAINED_KWARGS: Dict[str, Dict[str, Any]] = {
    "inception_v3": {"aux_logits": True, "transform_input": True, "init_weights": False},
}
_RANDOM_KWARGS: Dict[str, Dict[str, Any]] = {
    "inception_v3": {"aux_logits": False, "transform_input": False, "init_weights": True},
}
_INPUT_SIZE = {"inception_v3": 299}


def _tv():
    from .._compat import import_torchvision

    return import_torchvision()


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _is_path(weights: Any) -> bool:
    if isinstance(weights, os.PathLike):
        return True
    if not isinstance(weights, str):
        return False
    return os.sep in weights or "/" in weights or weights.endswith((".pth", ".pt", ".bin")) or Path(weights).exists()


def _resolve_enum(arch: str, weights: Any):
    tv = _tv()
    enum_cls = tv.models.get_model_weights(arch)
    try:
        return enum_cls.verify(weights)
    except (KeyError, ValueError, TypeError) as err:
        names = ", ".join(["DEFAULT"] + [w.name for w in enum_cls])
        raise ModelError(
            f"unknown weights {weights!r} for {arch}; use one of {names}, a path to a state_dict file, or None"
        ) from err


def _load_state_dict_file(arch: str, path: Path) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {str(path)!r} for {arch} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"cannot read weights file {path} for {arch}: {type(err).__name__}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ModelError(f"weights file {path} for {arch} holds a {type(obj).__name__}, expected a state_dict")
    return obj


def _build(arch: str, weights: Any, progress: bool, seed: int) -> nn.Module:
    tv = _tv()
    builder = getattr(tv.models, arch)
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return builder(weights=None, **_RANDOM_KWARGS.get(arch, {}))
    if _is_path(weights):
        path = Path(weights).expanduser()
        state = _load_state_dict_file(arch, path)
        kwargs = dict(_PRETRAINED_KWARGS.get(arch, {}))
        if arch == "inception_v3":
            kwargs["aux_logits"] = any(k.startswith("AuxLogits.") for k in state)
        fc = state.get("fc.weight", state.get("classifier.6.weight"))
        if fc is not None:
            kwargs["num_classes"] = int(fc.shape[0])
        model = builder(weights=None, **kwargs)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ModelError(f"weights file {path} does not fit torchvision's {arch}: {err}") from err
        return model
    w = _resolve_enum(arch, weights)
    file_name = os.path.basename(w.url)
    cached = _hub_checkpoints() / file_name
    if not cached.is_file():
        from ..data._net import reachable

        if not reachable(w.url):
            raise WeightsUnavailableError(
                f"pretrained weights {w} for {arch} are not on this machine and it cannot download them "
                f"(offline). Put the file {file_name} (from {w.url}) into {_hub_checkpoints()} "
                f"(torch hub checkpoints dir; set TORCH_HOME to move it), or pass weights='/path/to/{file_name}', "
                f"or weights=None for a randomly initialized model."
            )
    try:
        return builder(weights=w, progress=progress)
    except Exception as err:  # noqa: BLE001 - network or file errors
        raise WeightsUnavailableError(
            f"could not load pretrained weights {w} for {arch} ({type(err).__name__}: {err}). "
            f"Put {file_name} (from {w.url}) into {_hub_checkpoints()}, or pass a path."
        ) from err


def wrap(model: nn.Module, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> nn.Sequential:
    """``Sequential(Normalize(mean, std), model)`` in eval mode with every ReLU non-inplace."""
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    wrapped = nn.Sequential(Normalize(mean, std), model)
    wrapped.eval()
    wrapped.sanitycheck_input = {"channels": 3, "size": size}
    return wrapped


def _make(arch: str):
    def factory(
        weights: Union[str, os.PathLike, None, Any] = "DEFAULT",
        device: Union[str, torch.device] = "cpu",
        progress: bool = True,
        seed: int = 0,
    ) -> nn.Sequential:
        model = wrap(_build(arch, weights, progress, seed), size=_INPUT_SIZE.get(arch, 224)).to(device)
        model.sanitycheck_weights = None if weights is None else str(weights)
        return model

    factory.__name__ = factory.__qualname__ = arch
    factory.__doc__ = (
        f"torchvision {arch} behind ImageNet normalization, in eval mode, inputs in [0, 1] of size "
        f"{_INPUT_SIZE.get(arch, 224)}. ``weights``: 'DEFAULT'/a weights name, a state_dict path, or None."
    )
    return factory


resnet18 = _make("resnet18")
resnet50 = _make("resnet50")
vgg16 = _make("vgg16")
inception_v3 = _make("inception_v3")
