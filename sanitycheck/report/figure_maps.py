"""The example maps a run keeps for its figures: one checksummed file beside ``results.json``, which names it.

Figures are functions of a run's documents (``results.json`` and this file), never of the live run: the
records, steps, kinds, thresholds, per-sample scores and check parameters come from ``results.json``; the maps,
which ``results.json`` does not hold at full precision, come from here. ``sanitycheck figures <out>`` redraws
every figure of an old run from these two files alone, without the model.

Content (``figure_maps.pt``, written by :func:`save_figure_maps` with :func:`sanitycheck.io.save_checked`):

* ``inputs``: the first ``k`` audited inputs (images ``(k, C, H, W)``, or token ids ``(k, L)`` of a text run)
  and, for text, ``tokens``: their token strings;
* ``originals``: ``{explainer: (k, ...)}`` the trained model's maps of those inputs;
* ``states``: ``{check: {step: {explainer: (k, ...)}}}`` the maps in each model state;
* ``variant_originals``: ``{check: {explainer: (k, ...)}}`` the trained model's maps by a check's transformed
  explainers (smooth MPRT);
* ``scope``: the checks and explainers this run computed (a run merged into an earlier ``--out`` carries
  results whose maps are not here);
* ``extras``: check- or modality-specific figure data (JSON-able values or tensors), e.g. a text check's
  ``figure`` dict under ``extras["text_checks"][check]`` or the CLIP two-query maps under
  ``extras["clip_queries"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from torch import Tensor

from ..errors import SanityCheckError
from ..io import CorruptCacheError, load_checked, save_checked

__all__ = ["FIGURE_MAPS_FILE", "FIGURE_MAPS_FORMAT", "FigureMaps", "FigureMapsError", "save_figure_maps",
           "load_figure_maps"]

#: the file name results.json names under ``files.figure_maps``
FIGURE_MAPS_FILE = "figure_maps.pt"
#: the layout version stored in the file
FIGURE_MAPS_FORMAT = 1


class FigureMapsError(SanityCheckError):
    """A figure-maps file is missing, corrupt, or not of this layout."""


@dataclass
class FigureMaps:
    """The example maps of a run (see the module docstring)."""

    inputs: Optional[Tensor] = None
    tokens: Optional[List[List[str]]] = None
    originals: Dict[str, Tensor] = field(default_factory=dict)
    states: Dict[str, Dict[str, Dict[str, Tensor]]] = field(default_factory=dict)
    variant_originals: Dict[str, Dict[str, Tensor]] = field(default_factory=dict)
    scope: Dict[str, List[str]] = field(default_factory=dict)
    extras: Dict[str, Any] = field(default_factory=dict)

    def originals_of(self, check: str) -> Dict[str, Tensor]:
        """The reference maps of ``check``: its transformed explainers' (smooth MPRT), else the trained model's."""
        return self.variant_originals.get(check, self.originals)

    @property
    def k(self) -> int:
        return 0 if self.inputs is None else int(self.inputs.shape[0])


def _cpu(x: Any) -> Any:
    """Tensors detached on the CPU (their dtype kept), containers recursively, numbers and strings as is."""
    if isinstance(x, Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, Mapping):
        return {str(k): _cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_cpu(v) for v in x]
    if x is None or isinstance(x, (str, bool, int, float)):
        return x
    if hasattr(x, "tolist"):  # numpy arrays and scalars
        return x.tolist()
    raise FigureMapsError(f"figure data of type {type(x).__name__} ({x!r:.80}) cannot be stored; give tensors, "
                          "numbers, strings, lists or dicts of them")


def save_figure_maps(out_dir: Union[str, Path], *, inputs: Tensor, originals: Mapping[str, Tensor],
                     states: Mapping[str, Mapping[str, Mapping[str, Tensor]]],
                     variant_originals: Optional[Mapping[str, Mapping[str, Tensor]]] = None,
                     tokens: Optional[Sequence[Sequence[str]]] = None,
                     scope: Optional[Mapping[str, Sequence[str]]] = None,
                     extras: Optional[Mapping[str, Any]] = None) -> str:
    """Write ``<out_dir>/figure_maps.pt`` (checksummed, atomic) and return its name, for ``results["files"]``.

    ``inputs`` are the first k inputs; every map tensor holds the maps of those k inputs (its first dimension).
    Stored on the CPU in their own dtype: the figures draw the maps exactly as the run computed them."""
    k = int(inputs.shape[0])
    for where, maps in [("originals", originals),
                        *((f"variant_originals[{c!r}]", m) for c, m in (variant_originals or {}).items()),
                        *((f"states[{c!r}][{s!r}]", m) for c, by in states.items() for s, m in by.items())]:
        for name, m in maps.items():
            if not isinstance(m, Tensor) or m.shape[0] != k:
                raise FigureMapsError(f"{where}[{name!r}] must hold the maps of the {k} figure inputs (first "
                                      f"dimension {k}), got {getattr(m, 'shape', type(m).__name__)}; slice the "
                                      "maps to the first k inputs")
    if tokens is not None and len(tokens) != k:
        raise FigureMapsError(f"tokens must list the {k} figure inputs' tokens, got {len(tokens)} lists")
    doc = {"format": FIGURE_MAPS_FORMAT, "inputs": _cpu(inputs),
           "tokens": [list(map(str, t)) for t in tokens] if tokens is not None else None,
           "originals": _cpu(originals), "states": _cpu(states), "variant_originals": _cpu(variant_originals or {}),
           "scope": {k_: list(v) for k_, v in (scope or {}).items()}, "extras": _cpu(extras or {})}
    save_checked(Path(out_dir) / FIGURE_MAPS_FILE, doc)
    return FIGURE_MAPS_FILE


def load_figure_maps(out_dir: Union[str, Path], results: Mapping[str, Any]) -> Optional[FigureMaps]:
    """The figure maps ``results`` names (``files.figure_maps``) in ``out_dir``; None when it names none (a run
    written before this file existed: its figures that need maps cannot be redrawn)."""
    name = (results.get("files") or {}).get("figure_maps")
    if not name:
        return None
    if Path(name).name != name or name in (".", ".."):
        raise FigureMapsError(f"results.json names figure maps {name!r}: expected a file name in the run "
                              "directory, not a path")
    path = Path(out_dir) / name
    if not path.is_file():
        raise FigureMapsError(f"results.json names figure maps {name!r}, but {path} does not exist; copy the "
                              "run directory with it, or re-run the suite")
    try:
        doc = load_checked(path, weights_only=True)
    except CorruptCacheError as err:
        raise FigureMapsError(f"figure maps {path} are corrupt: {err}; re-run the suite into this "
                              "directory to rewrite them") from err
    if not isinstance(doc, dict) or doc.get("format") != FIGURE_MAPS_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise FigureMapsError(f"figure maps {path} have format {got!r}; this version reads format "
                              f"{FIGURE_MAPS_FORMAT}. Re-run the suite to rewrite them")
    return FigureMaps(inputs=doc["inputs"], tokens=doc.get("tokens"), originals=doc.get("originals") or {},
                      states=doc.get("states") or {}, variant_originals=doc.get("variant_originals") or {},
                      scope=doc.get("scope") or {}, extras=doc.get("extras") or {})
