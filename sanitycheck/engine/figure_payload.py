"""What a run keeps for its figures: the one place that reads the live run to build the figure-maps file
(:func:`sanitycheck.report.figure_maps.save_figure_maps`). The figures themselves read only the run's
documents (``results.json`` and that file), see :mod:`sanitycheck.report.run_figures`. What differs between
input kinds (token strings, CLIP's extra queries) comes from the run's modality."""

from __future__ import annotations

from typing import Any, Dict, Tuple

from torch import Tensor

__all__ = ["collect", "figure_inputs"]


def figure_inputs(run: Any) -> int:
    """How many inputs the figures show: the suite's ``figure_images``, at most the audited inputs."""
    return min(int(run.suite.figure_images), len(run.inputs))


def collect(run: Any, originals: Dict[str, Tensor], scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Any]:
    """The keyword arguments of :func:`~sanitycheck.report.figure_maps.save_figure_maps` for ``run``: its first
    k inputs, each explainer's original maps and maps in every model state of those inputs, the variant
    originals of checks that transform explainers, the run's scope and the extras of its modality and audits."""
    k = figure_inputs(run)
    live = {n: e for n, e in run.explainers.items() if n not in run.skipped}
    states: Dict[str, Dict[str, Dict[str, Tensor]]] = {}
    for (check, step), by_explainer in scored.items():
        for name, entry in by_explainer.items():
            ex = entry.get("examples")
            if ex is not None:
                states.setdefault(check, {}).setdefault(step, {})[name] = ex[:k]
    variants = {c: {n: m[:k] for n, m in refs.items()} for c, refs in run.log.variant_originals.items()}
    shown = run.modality.figure_inputs(run.inputs, k)
    extras: Dict[str, Any] = dict(run.modality.figure_extras(
        run.inputs, {n: e for n, e in live.items() if n in originals}, k, run.settings))
    if run.log.audits:
        # audits' figure data, and the per-instance scores the histograms draw at full precision (results'
        # per_sample rounds to 7 digits, which moves automatic bin edges by a pixel)
        scores: Dict[str, Dict[str, Dict[str, Dict[str, Tensor]]]] = {}
        for name, out in run.log.audits.items():
            for (step, explainer), by_metric in out.scores.items():
                scores.setdefault(name, {}).setdefault(explainer, {})[step] = dict(by_metric)
        extras.update({"classes": [str(c) for c in getattr(run.dataset, "classes", []) or []],
                       "text_checks": {name: dict(out.figure) for name, out in run.log.audits.items() if out.figure},
                       "text_scores": scores})
    # the curve values the perturbation-sequence figures print under each panel, at full precision for the k
    # inputs (results' per_sample rounds to 7 digits)
    curves: Dict[str, Dict[str, Dict[str, Tensor]]] = {}
    per_explainer = {c for c, check in run.log.checks.items() if check.unit == "explainer"}
    for (check, step), by_explainer in scored.items():
        if check in per_explainer and step.isdigit():
            for name, entry in by_explainer.items():
                first = next(iter(entry["scores"].values()), None)
                if first is not None:
                    curves.setdefault(check, {}).setdefault(name, {})[step] = first[:k]
    if curves:
        extras["curves"] = curves
    return {"inputs": shown["inputs"], "tokens": shown.get("tokens"),
            "originals": {n: m[:k] for n, m in originals.items()}, "states": states, "variant_originals": variants,
            "scope": {"checks": [s.name for s in run.check_specs], "explainers": [n for n in live if n in originals]},
            "extras": extras}
