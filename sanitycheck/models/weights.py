"""Reference weights: the trained models of the built-in suites, shipped as fixed, hashed artifacts.

Retraining a model on another CPU gives other weights (float rounding differs between machines), so the
leaderboard cannot rest on retraining. Every model a built-in suite trains ships in
``sanitycheck/weights/`` as a safetensors file, listed in ``manifest.json`` with the sha256 of the file,
the sha256 of the state_dict it loads into (:func:`state_dict_sha256`), the training cache key it stands
for, its spec, dtype, parameter count and how it was produced.

The one training pipeline (:func:`sanitycheck.models.training.load_or_train`, behind ``zoo.train_or_load``,
``attention.train_text_model``, ``transformer.train_transformer_model``, ``models.clip.train_tiny_clip`` and the models
Wiegreffe & Pinter's checks train) asks :func:`reference_state` for the cache key first: when a reference
exists it is loaded (both hashes verified) and never retrained.
A model loaded this way carries ``sanitycheck_info["reference"] = True``; any other (trained here, from
the cache) ``False``; both carry ``"weights_sha256"``.

Files stored as float16 are upcast to float32 on load: the upcast model IS the reference (its
``weights_sha256`` is the manifest's), so results are reproducible from the file bit for bit.

Set ``SANITYCHECK_REFERENCE_WEIGHTS=0`` to ignore the shipped weights (models are then trained and
cached as before, and marked ``reference: False``); ``sanitycheck train NAME`` retrains one model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import ModelError

__all__ = [
    "WEIGHTS_DIR",
    "state_dict_sha256",
    "file_sha256",
    "manifest",
    "reference_entry",
    "reference_path",
    "load_reference",
    "reference_state",
    "export_reference",
    "mark",
    "references_enabled",
    "retraining",
    "capture",
]

#: The package directory of the shipped weights (package data).
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST_NAME = "manifest.json"
ENV_VAR = "SANITYCHECK_REFERENCE_WEIGHTS"

_state: Dict[str, Any] = {"disabled": 0, "force": 0, "captured": None}


# --------------------------------------------------------------------------- hashes


def _as_state(obj: Union[nn.Module, Mapping[str, Tensor]]) -> Mapping[str, Tensor]:
    return obj.state_dict() if isinstance(obj, nn.Module) else obj


def state_dict_sha256(model: Union[nn.Module, Mapping[str, Tensor]]) -> str:
    """sha256 (64 hex) over the state_dict in key order: each tensor's name, dtype, shape and raw bytes.

    Buffers are included (they are part of ``state_dict``). Two models hash alike exactly when they hold
    the same tensors under the same names, in the same dtypes.
    """
    h = hashlib.sha256()
    for name, t in _as_state(model).items():
        if not isinstance(t, Tensor):  # e.g. extra state
            h.update(f"{name}|{type(t).__name__}|{t!r}|".encode())
            continue
        t = t.detach()
        if t.device.type == "meta":
            raise ModelError(f"cannot hash tensor {name!r}: it is on the meta device (no data)")
        t = t.cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # raw bytes through a uint8 view: works for every dtype numpy lacks (bfloat16, ...)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- manifest


def _dir(directory: Optional[Union[str, Path]]) -> Path:
    return Path(directory) if directory is not None else WEIGHTS_DIR


def manifest(directory: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """The manifest (``{"format": 1, "models": {name: entry}}``); empty when none is shipped."""
    path = _dir(directory) / MANIFEST_NAME
    if not path.is_file():
        return {"format": 1, "models": {}}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"the reference weights manifest {path} is unreadable ({err}); reinstall sanitycheck "
                         f"or restore the file from git") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise ModelError(f"the reference weights manifest {path} has no 'models' object; restore it from git")
    return doc


def reference_entry(name_or_key: str, directory: Optional[Union[str, Path]] = None) -> Optional[Dict[str, Any]]:
    """The manifest entry named ``name_or_key``, or the one whose training ``cache_key`` it is; else None."""
    models = manifest(directory)["models"]
    if name_or_key in models:
        return {"name": name_or_key, **models[name_or_key]}
    for name, entry in models.items():
        if entry.get("cache_key") == name_or_key:
            return {"name": name, **entry}
    return None


def _entry(name_or_key: str, directory: Optional[Union[str, Path]]) -> Dict[str, Any]:
    entry = reference_entry(name_or_key, directory)
    if entry is None:
        known = ", ".join(sorted(manifest(directory)["models"])) or "none"
        raise ModelError(f"no reference weights named {name_or_key!r} (nor with that cache key) in "
                         f"{_dir(directory) / MANIFEST_NAME}; known: {known}")
    return entry


def reference_path(name_or_key: str, directory: Optional[Union[str, Path]] = None) -> Path:
    """The safetensors file of the reference ``name_or_key`` (a manifest name or a training cache key)."""
    return _dir(directory) / _entry(name_or_key, directory)["file"]


def load_reference(name_or_key: str, directory: Optional[Union[str, Path]] = None
                   ) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """``(state_dict, manifest entry)`` of a reference, float16 tensors upcast to float32.

    Verifies the file's sha256 and the loaded state's :func:`state_dict_sha256` against the manifest;
    a mismatch raises :class:`ModelError` naming both hashes and the file.
    """
    from safetensors.torch import load_file

    entry = _entry(name_or_key, directory)
    path = _dir(directory) / entry["file"]
    if not path.is_file():
        raise ModelError(f"reference weights {entry['name']!r}: file {path} is missing; reinstall sanitycheck or "
                         f"restore it from git (or set {ENV_VAR}=0 to train the model instead)")
    found = file_sha256(path)
    if found != entry["sha256"]:
        raise ModelError(f"reference weights {entry['name']!r}: file {path} has sha256 {found}, the manifest says "
                         f"{entry['sha256']}; the file is corrupt or was replaced: restore it from git "
                         f"(a maintainer re-exports with `sanitycheck train {entry['name']} --export-reference`)")
    state = load_file(str(path))
    if entry.get("dtype") == "float16":
        state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}
    # safetensors sorts names: restore the state_dict order the hash was computed in
    order = entry.get("keys")
    if order:
        if sorted(order) != sorted(state):
            raise ModelError(f"reference weights {entry['name']!r}: {path} holds other tensors than the manifest lists")
        state = {k: state[k] for k in order}
    got = state_dict_sha256(state)
    if entry.get("weights_sha256") and entry.get("state_sha256", entry["weights_sha256"]) != got:
        raise ModelError(f"reference weights {entry['name']!r}: the state loaded from {path} hashes to {got}, the "
                         f"manifest says {entry.get('state_sha256', entry['weights_sha256'])}")
    return state, entry


def shipped_as(entry: Dict[str, Any]) -> str:
    """How results name a shipped file: package-relative, the same on every machine."""
    return f"sanitycheck/weights/{entry['file']}"


def references_enabled() -> bool:
    if _state["disabled"]:
        return False
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def forcing() -> bool:
    """True inside ``retraining(force=True)``: pipelines skip their cache and train."""
    return bool(_state["force"])


@contextlib.contextmanager
def retraining(force: bool = False) -> Iterator[None]:
    """Ignore the reference weights inside the block (and with ``force``, the model cache too)."""
    _state["disabled"] += 1
    _state["force"] += int(bool(force))
    try:
        yield
    finally:
        _state["disabled"] -= 1
        _state["force"] -= int(bool(force))


def reference_state(cache_key: str, directory: Optional[Union[str, Path]] = None
                    ) -> Optional[Tuple[Dict[str, Tensor], Dict[str, Any]]]:
    """The verified reference for a training ``cache_key``, or None (none shipped, or references disabled)."""
    if not references_enabled():
        return None
    for name, entry in manifest(directory)["models"].items():
        if entry.get("cache_key") == cache_key:
            return load_reference(name, directory)
    return None


def mark(model: nn.Module, entry: Optional[Dict[str, Any]] = None) -> nn.Module:
    """Record ``reference`` and ``weights_sha256`` in ``model.sanitycheck_info`` (``entry``: the reference's)."""
    info = dict(getattr(model, "sanitycheck_info", {}) or {})
    sha = state_dict_sha256(model)
    if entry is not None:
        if entry.get("weights_sha256") and sha != entry["weights_sha256"]:
            raise ModelError(f"reference weights {entry['name']!r}: the loaded model hashes to {sha}, the manifest "
                             f"says {entry['weights_sha256']}; the architecture (or, for a fine-tuned model, its "
                             f"pretrained "
                             f"base weights: {entry.get('base_weights', {}).get('package', 'none')}) differs from the "
                             f"one exported. Reinstall the pinned versions (requirements.lock), or set {ENV_VAR}=0 "
                             f"to train the model here (its results are then not comparable with the board)")
        info.update({"reference": True, "reference_name": entry["name"], "reference_file_sha256": entry["sha256"]})
    else:
        info["reference"] = False
    info["weights_sha256"] = sha
    model.sanitycheck_info = info
    if _state["captured"] is not None:
        # a snapshot: the caller may cast the model later (text runs analyse a float64 copy, in place)
        model._sanitycheck_exported_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        _state["captured"].append(model)
    return model


@contextlib.contextmanager
def capture() -> Iterator[list]:
    """Collect every model a training pipeline returns inside the block (for ``--export-reference``)."""
    previous, _state["captured"] = _state["captured"], []
    try:
        yield _state["captured"]
    finally:
        _state["captured"] = previous


# --------------------------------------------------------------------------- export (maintainers)


def export_reference(model: Union[nn.Module, Mapping[str, Tensor]], name: str, *, cache_key: str,
                     spec: Optional[Dict[str, Any]] = None, dtype: str = "float32",
                     full_state: Optional[Mapping[str, Tensor]] = None, produced: Optional[Dict[str, Any]] = None,
                     extra: Optional[Dict[str, Any]] = None, directory: Optional[Union[str, Path]] = None
                     ) -> Dict[str, Any]:
    """Write ``<directory>/<name>.safetensors`` and its manifest entry; return the entry.

    ``model``: the module, or the state_dict to ship (e.g. only the fine-tuned tensors of a model built on
    pretrained weights, with ``full_state`` the whole state_dict they load into). ``dtype="float16"`` rounds
    floating tensors to float16; the entry's ``weights_sha256`` is then that of the upcast model, which is
    what loaders return. Maintainer tool: ``sanitycheck train NAME --export-reference``.
    """
    from safetensors.torch import save

    from ..io import atomic_write_bytes, atomic_write_json

    if dtype not in ("float32", "float16"):
        raise ModelError(f"export_reference: dtype must be 'float32' or 'float16', got {dtype!r}")
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ModelError(f"export_reference: name must be [A-Za-z0-9._-]+, got {name!r}")
    state = {k: v.detach().cpu().contiguous() for k, v in _as_state(model).items()}
    if dtype == "float16":
        stored = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    else:
        stored = state
    upcast = {k: v.float() if v.dtype == torch.float16 and dtype == "float16" else v for k, v in stored.items()}
    directory = _dir(directory)
    fname = f"{name}.safetensors"
    payload = save({k: v.clone() for k, v in stored.items()}, metadata={"name": name, "cache_key": cache_key})
    atomic_write_bytes(directory / fname, payload)
    if full_state is not None:
        # the full model with the shipped tensors (rounded as stored) in place
        weights_sha = state_dict_sha256({k: upcast.get(k, v) for k, v in full_state.items()})
    else:
        weights_sha = state_dict_sha256(upcast)
    entry = {
        "file": fname,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "cache_key": cache_key,
        "dtype": dtype,
        "parameters": int(sum(v.numel() for v in state.values() if v.is_floating_point())),
        "bytes": len(payload),
        "keys": list(state),
        "state_sha256": state_dict_sha256(upcast),
        "weights_sha256": weights_sha,
        "spec": spec,
        "produced": {"torch_version": str(torch.__version__), **(produced or {})},
        **(extra or {}),
    }
    doc = manifest(directory)
    doc["models"][name] = entry
    doc["models"] = dict(sorted(doc["models"].items()))
    atomic_write_json(directory / MANIFEST_NAME, doc)
    return {"name": name, **entry}
