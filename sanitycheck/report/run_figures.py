"""All figures of a run, drawn from its documents: ``results.json`` and the figure maps it names.

The engine calls :func:`write_figures` after writing ``results.json``; ``sanitycheck figures <out>`` calls it
on an old run, without the model (nothing here imports the engine or runs an explainer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ..errors import ConfigError
from ..io import read_json
from .figure_maps import FigureMaps, load_figure_maps

__all__ = ["draw_image", "draw_image_text", "draw_text", "write_figures"]


def _image(out_dir: Path, results: Dict[str, Any], fm: Optional[FigureMaps]) -> Dict[str, List[str]]:
    from .figures import write_run_figures

    return write_run_figures(out_dir, results, fm)


def _image_text(out_dir: Path, results: Dict[str, Any], fm: Optional[FigureMaps]) -> Dict[str, List[str]]:
    from .clip_figures import write_clip_figures

    files = _image(out_dir, results, fm)
    files.update(write_clip_figures(out_dir, results, fm))  # CLIP suites: maps for two queries per scene
    return files


def _text(out_dir: Path, results: Dict[str, Any], fm: Optional[FigureMaps]) -> Dict[str, List[str]]:
    from .text_figures import write_text_figures

    return write_text_figures(out_dir, results, fm)


draw_image, draw_image_text, draw_text = _image, _image_text, _text


def write_figures(out_dir: Union[str, Path], results: Optional[Mapping[str, Any]] = None) -> Dict[str, List[str]]:
    """Draw every figure of the run in ``out_dir`` into ``out_dir`` and return ``{check: [file names]}``.

    ``results``: the run's results document (default: ``<out_dir>/results.json``). The maps come from the file
    it names under ``files.figure_maps``; a run without one gets the figures that need no maps (curves,
    histograms)."""
    out_dir = Path(out_dir)
    if results is None:
        path = out_dir / "results.json"
        if not path.is_file():
            raise ConfigError(f"{out_dir} holds no results.json; give the --out directory of a run")
        try:
            results = read_json(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read {path} ({err}); give the directory of a finished run") from err
        if not isinstance(results, dict):
            raise ConfigError(f"{path} is a JSON {type(results).__name__}, not a results document")
    results = dict(results)
    from ..modalities import modality_for
    from ..registry import load_object

    writer = load_object(modality_for(results.get("input_kind") or "image").figures)  # the kind's figure set
    return writer(out_dir, results, load_figure_maps(out_dir, results))
