"""The one load-or-train pipeline of every trained model: spec -> content-hash key -> cached checkpoint.

Every model the package trains (the Fashion-MNIST CNNs and their random-label twins, the Jain & Wallace
attention classifiers, the fine-tuned MiniLM, the tiny CLIP, and the models Wiegreffe & Pinter's checks train:
seed variants, adversaries, diagnostic MLPs) goes through :func:`load_or_train`:

1. the shipped reference weights (:mod:`sanitycheck.models.weights`) are consulted first, by cache key:
   when a reference exists it is loaded (both hashes verified) and nothing is trained;
2. else the cache file ``<cache_dir>/models/<stem>-<key>.pt`` (:func:`checkpoint_file`), when it holds
   the same key (an unreadable or mismatched file is warned about and retrained);
3. else the model is built, trained, and saved atomically with a JSON sidecar (spec, key, info).

The caller owns what differs between models: the key (a :func:`sanitycheck.provenance.content_key` over
the spec and the source of the code that trains it), how to build an untrained model, how to train it,
which tensors to save and how to load them. The returned model is in eval mode and carries
``sanitycheck_spec`` and ``sanitycheck_info`` (with ``from_cache``, ``cache_key``, ``checkpoint``,
``reference`` and ``weights_sha256``).

The source of this module is part of no cache key: changing it retrains nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["checkpoint_file", "load_or_train", "same_training_data"]

PathLike = Union[str, Path]


def checkpoint_file(stem: str, key: str, cache_dir: Optional[PathLike] = None) -> Path:
    """``<cache_dir>/models/<stem>-<key>.pt``; ``cache_dir`` defaults to :func:`sanitycheck.io.cache_dir`."""
    from ..io import cache_dir as default_cache_dir

    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "models" / f"{stem}-{key}.pt"


def same_training_data(checksum: str, data_key: str) -> Callable[[Dict[str, Any], str], None]:
    """A ``verify`` for :func:`load_or_train`: a loaded model must have been trained on tensors with
    ``checksum`` (the key names the data only through the spec's ``data_key``); else :class:`ConfigError`."""
    from ..errors import ConfigError

    def verify(info: Dict[str, Any], checkpoint: str) -> None:
        stored = info.get("train_data_checksum")
        if stored is not None and stored != checksum:
            raise ConfigError(f"cached model {checkpoint} was trained on different data (checksum {stored}, now "
                              f"{checksum}) under the same data_key {data_key!r}: make data_key hash the "
                              f"training data")

    return verify


def _strict_load(model: nn.Module, state: Mapping[str, Tensor], reference: Optional[Dict[str, Any]]) -> None:
    model.load_state_dict(state)


def _read_checkpoint(path: Path, key: str) -> Optional[Dict[str, Any]]:
    """The checkpoint at ``path`` when it holds ``key``; None (with a warning) when it is unreadable."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("key") != key:
            raise ValueError(f"checkpoint key {ckpt.get('key') if isinstance(ckpt, dict) else None!r} != {key!r}")
        return ckpt
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is retrained
        warnings.warn(f"cached model {path} is unreadable ({type(err).__name__}: {err}); retraining it", stacklevel=4)
        return None


def load_or_train(
    key: str,
    path: Path,
    *,
    spec: Any,
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module], Dict[str, Any]],
    load_state: Callable[[nn.Module, Mapping[str, Tensor], Optional[Dict[str, Any]]], None] = _strict_load,
    saved_state: Optional[Callable[[nn.Module], Dict[str, Tensor]]] = None,
    verify: Optional[Callable[[Dict[str, Any], str], None]] = None,
    info_prefix: Optional[Callable[[nn.Module], Dict[str, Any]]] = None,
) -> nn.Module:
    """The model of ``spec`` under cache ``key``: the shipped reference, the cached checkpoint at ``path``, or
    trained and cached (atomically) there.

    Args:
        key: the content-hash cache key (also how the reference weights are found).
        path: the cache file (:func:`checkpoint_file`); a JSON sidecar is written beside it.
        spec: the training spec (``as_dict()`` is saved; it becomes ``model.sanitycheck_spec``).
        build: a fresh untrained model (seeded; the global RNG untouched).
        train: trains the model in place (on the CPU when it returns) and returns its info (JSON-safe).
        load_state: ``(model, state, reference_entry_or_None)`` loads saved tensors; it raises to refuse them
            (from the cache: warned about and retrained; from a reference: the error propagates).
        saved_state: the tensors to save (default: the whole ``state_dict``).
        verify: ``(info, checkpoint)`` of a loaded model (reference or cache); raises to refuse it (e.g. a
            different training-data checksum under the same key).
        info_prefix: entries that come before the training info in ``sanitycheck_info`` (e.g. what
            ``build`` recorded on the model).
    """
    from ..io import atomic_torch_save, atomic_write_json

    from . import weights as W

    reference = W.reference_state(key)  # shipped weights: verified, never retrained
    model: Optional[nn.Module] = None
    checkpoint = str(path)
    if reference is not None:
        model = build()
        load_state(model, reference[0], reference[1])
        info = dict(reference[1].get("info") or {})
        checkpoint = W.shipped_as(reference[1])  # recorded as "checkpoint"
    elif not W.forcing() and path.is_file():
        ckpt = _read_checkpoint(path, key)
        if ckpt is not None:
            model = build()
            try:
                load_state(model, ckpt["state_dict"], None)
                info = dict(ckpt.get("info") or {})
            except Exception as err:  # noqa: BLE001 - tensors that do not fit are retrained
                warnings.warn(f"cached model {path} is unreadable ({type(err).__name__}: {err}); retraining it",
                              stacklevel=3)
                model = None
    if model is not None:
        if verify is not None:
            verify(info, checkpoint)
        info["from_cache"] = True
    else:
        model = build()
        info = train(model)
        state = saved_state(model) if saved_state is not None else model.state_dict()
        atomic_torch_save(path, {"key": key, "spec": spec.as_dict(), "state_dict": state, "info": info})
        atomic_write_json(path.with_suffix(".json"), {"spec": spec.as_dict(), "key": key, **info})
        info["from_cache"] = False
    info.update({"cache_key": key, "checkpoint": checkpoint})
    model = model.eval()
    model.sanitycheck_spec = spec
    model.sanitycheck_info = {**info_prefix(model), **info} if info_prefix is not None else info
    return W.mark(model, reference[1] if reference is not None else None)  # reference, weights_sha256
