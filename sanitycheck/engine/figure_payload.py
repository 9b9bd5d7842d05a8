"""What a run keeps for its figures: the one place that reads the live run to build the figure-maps file
(:func:`sanitycheck.report.figure_maps.save_figure_maps`). The figures themselves read only the run's
documents (``results.json`` and that file), see :mod:`sanitycheck.report.run_figures`."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from torch import Tensor

__all__ = ["collect", "figure_inputs"]


def figure_inputs(run: Any) -> int:
    """How many inputs the figures show: the suite's ``figure_images``, at most the audited inputs."""
    return min(int(run.suite.figure_images), len(run.x))


def _text_tokens(run: Any, i: int) -> List[str]:
    pieces = getattr(run.batch, "pieces", None)
    return list(pieces[i]) if pieces else [str(t) for t in run.batch.ids[i, : int(run.batch.lengths[i])].tolist()]


def _text_extras(run: Any, k: int, live: Dict[str, Any], originals: Dict[str, Tensor]) -> Tuple[Any, Dict[str, Any]]:
    """Text runs: each text's tokens, the dataset's class names and the text checks' figure data."""
    tokens = [_text_tokens(run, i) for i in range(k)]
    outputs = getattr(run, "text_outputs", {}) or {}
    # the per-instance scores the histograms draw, at full precision (results' per_sample rounds to 7 digits,
    # which moves automatic bin edges by a pixel)
    scores: Dict[str, Dict[str, Dict[str, Dict[str, Tensor]]]] = {}
    for name, out in outputs.items():
        for (step, explainer), by_metric in out.scores.items():
            scores.setdefault(name, {}).setdefault(explainer, {})[step] = dict(by_metric)
    extras = {"classes": [str(c) for c in getattr(run.dataset, "classes", []) or []],
              "text_checks": {name: dict(out.figure) for name, out in outputs.items() if out.figure},
              "text_scores": scores}
    return tokens, extras


def _clip_extras(run: Any, k: int, live: Dict[str, Any], originals: Dict[str, Tensor]) -> Tuple[Any, Dict[str, Any]]:
    """Image-text (CLIP) runs: each method's maps of two queries per scene, computed here with the model."""
    from ..report.clip_figures import clip_query_maps

    explainers = {n: e for n, e in live.items() if n in originals}
    query = clip_query_maps(run.model, explainers, run.x, run.dataset, min(3, k))
    return None, ({"clip_queries": query} if query else {})


#: input kind -> the figure data that only that kind has (the integrator moves these into the modalities)
_EXTRAS: Dict[str, Callable[..., Tuple[Any, Dict[str, Any]]]] = {"text": _text_extras, "image_text": _clip_extras}


def collect(run: Any, originals: Dict[str, Tensor], scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Any]:
    """The keyword arguments of :func:`~sanitycheck.report.figure_maps.save_figure_maps` for ``run``: its first
    k inputs, each explainer's original maps and maps in every model state of those inputs, the variant
    originals of checks that transform explainers, the run's scope and its input kind's extras."""
    k = figure_inputs(run)
    live = {n: e for n, e in run.explainers.items() if n not in run.skipped}
    states: Dict[str, Dict[str, Dict[str, Tensor]]] = {}
    for (check, step), by_explainer in scored.items():
        for name, entry in by_explainer.items():
            ex = entry.get("examples")
            if ex is not None:
                states.setdefault(check, {}).setdefault(step, {})[name] = ex[:k]
    variants = {c: {n: m[:k] for n, m in refs.items()} for c, refs in (run.variant_originals or {}).items()}
    tokens, extras = None, {}
    extra = _EXTRAS.get(run.suite.input_kind)
    if extra is not None:
        tokens, extras = extra(run, k, live, originals)
    # the curve values the perturbation-sequence figures print under each panel, at full precision for the k
    # inputs (results' per_sample rounds to 7 digits)
    curves: Dict[str, Dict[str, Dict[str, Tensor]]] = {}
    for (check, step), by_explainer in scored.items():
        if check in (getattr(run, "families", None) or {}) and step.isdigit():
            for name, entry in by_explainer.items():
                first = next(iter(entry["scores"].values()), None)
                if first is not None:
                    curves.setdefault(check, {}).setdefault(name, {})[step] = first[:k]
    if curves:
        extras = {**extras, "curves": curves}
    return {"inputs": run.x[:k], "originals": {n: m[:k] for n, m in originals.items()}, "states": states,
            "variant_originals": variants, "tokens": tokens,
            "scope": {"checks": [s.name for s in run.check_specs], "explainers": [n for n in live if n in originals]},
            "extras": extras}
