"""Modalities: everything that differs between input kinds (images, token sequences, image-text pairs).

The engine (:mod:`sanitycheck.engine`) asks a suite's modality to load the audited inputs and model, to
explain in batches, to compare two sets of maps (with a mask where maps have variable length), and to
describe the inputs in ``results.json``. Nothing else in the package asks which kind of input it has: a new
input kind is one module here plus one line in :data:`MODALITIES`.
"""

from __future__ import annotations

from typing import Dict

from ..errors import ConfigError
from ..registry import load_object
from .base import AuditInputs, Modality

__all__ = ["MODALITIES", "AuditInputs", "Modality", "modality_for"]

#: a suite's ``input_kind`` -> import path of its modality (imported on first use)
MODALITIES: Dict[str, str] = {
    "image": "sanitycheck.modalities.image:ImageModality",
    "text": "sanitycheck.modalities.text:TextModality",
    "image_text": "sanitycheck.modalities.image_text:ImageTextModality",
    "activations": "sanitycheck.modalities.activations:ActivationsModality",
}

_instances: Dict[str, Modality] = {}


def modality_for(input_kind: str) -> Modality:
    """The modality of ``input_kind`` (``"image"``, ``"text"`` or ``"image_text"``), one instance per kind."""
    if input_kind not in _instances:
        path = MODALITIES.get(input_kind)
        if path is None:
            raise ConfigError(f"no modality for input_kind {input_kind!r}; known input kinds: "
                              f"{', '.join(sorted(MODALITIES))}. Set the suite's input_kind to one of them.")
        _instances[input_kind] = load_object(path)()
    return _instances[input_kind]
