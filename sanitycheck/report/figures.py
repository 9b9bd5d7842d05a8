"""Figures of a run: the maps of each check's model states (after Adebayo et al.'s Figure 2)
and similarity versus step, one curve per explainer with its 95 % CI band.

Every figure is a function of the run's documents (``results.json`` and the figure maps it names, see
:mod:`sanitycheck.report.figure_maps`), never of the live run: ``sanitycheck figures <out>`` redraws them."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..results import Record
from .figure_maps import FigureMaps

_RECORD_FIELDS = {f.name for f in fields(Record)}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _image_for_display(x: Tensor):
    x = x.detach().cpu().float()
    if x.shape[0] == 1:
        return x[0].numpy(), "gray"
    return x.permute(1, 2, 0).clamp(0, 1).numpy(), None


#: at most this many model-state columns in a maps figure; longer cascades show every k-th step and the last
MAX_STEP_COLUMNS = 12


def shown_steps(steps: Sequence[str], max_columns: int = MAX_STEP_COLUMNS) -> Tuple[List[int], str]:
    """Indices of the steps a maps figure draws, and a note saying which (empty when all are drawn): all of
    them up to ``max_columns``, else every k-th (from the first) and the last, at most ``max_columns``."""
    n = len(steps)
    if n <= max_columns:
        return list(range(n)), ""
    k = -(-(n - 1) // (max_columns - 1))
    idx = list(range(0, n - 1, k)) + [n - 1]
    return idx, f"steps shown: 1 in {k} of the {n} steps from the first, and the last"


def plot_state_maps(path: Path, title: str, image: Tensor, explainers: Sequence[str], steps: Sequence[str],
                    maps: Dict[str, List[Tensor]]) -> Path:
    """Rows: explainers; columns: the input, the original model, then each step (every k-th and the last
    when there are more than :data:`MAX_STEP_COLUMNS`; the title says so).

    Each |map| is divided by its own 99th percentile and clipped to [0, 1], as in Adebayo et al.'s
    figures: randomized models' gradients are orders of magnitude smaller, and the rank metrics
    being plotted ignore scale, so a shared scale would show black squares instead of structure.
    """
    plt = _plt()
    idx, note = shown_steps(steps)
    if note:
        steps = [steps[i] for i in idx]
        maps = {name: [ms[0]] + [ms[1 + i] for i in idx] for name, ms in maps.items()}
        title = f"{title}\n{note}"
    # photographs (e.g. 224 x 224) get larger panels than 28-pixel digits, so that their maps stay legible
    panel = 1.25 if int(image.shape[-1]) < 100 else 1.6
    cols = 2 + len(steps)
    fig, axes = plt.subplots(len(explainers), cols, figsize=(panel * cols + 1.2, panel * len(explainers) + 0.8),
                             squeeze=False)
    img, cmap = _image_for_display(image)
    for r, name in enumerate(explainers):
        axes[r, 0].imshow(img, cmap=cmap)
        for c, m in enumerate(maps[name], start=1):
            m = m.abs()
            scale = max(float(torch.quantile(m.flatten(), 0.99)), 1e-12)
            axes[r, c].imshow((m / scale).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    for c, label in enumerate(["input", "original", *steps]):
        axes[0, c].set_title(label, fontsize=8, rotation=30 if len(label) > 8 else 0)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_similarity_curves(path: Path, title: str, metric: str, steps: Sequence[str], explainers: Sequence[str],
                           records: Sequence[Any], threshold: float | None = None) -> Path:
    """Mean similarity per step with its 95 % bootstrap CI band; one curve per explainer."""
    plt = _plt()
    labels = ["original", *steps]
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(labels) + 3), 4))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(explainers):
        by_step = {r.step: r for r in records if r.explainer == name and r.metric == metric}
        xs, ys, lo, hi = [], [], [], []
        for j, step in enumerate(labels):
            r = by_step.get(step)
            if r is not None and r.mean is not None:
                xs.append(j), ys.append(r.mean), lo.append(r.ci_low), hi.append(r.ci_high)
        style = "--" if name in ("sobel", "noise") else "-"
        ax.plot(xs, ys, style, marker="o", ms=3, color=cmap(i % 10), label=name)
        ax.fill_between(xs, lo, hi, color=cmap(i % 10), alpha=0.18, linewidth=0)
    if threshold is not None:
        ax.axhline(threshold, color="k", lw=0.8, ls=":", label=f"threshold {threshold:g}")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(-0.25, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_evaluation_curves(path: Path, title: str, steps: Sequence[str], explainers: Sequence[str],
                           records: Sequence[Any], ylabel: str) -> Path:
    """A faithfulness curve (e.g. class probability vs fraction of pixels deleted) per explainer, 95 % CI bands."""
    plt = _plt()
    curve_steps = [s for s in steps if s.isdigit()]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    cmap = plt.get_cmap("tab10")
    denom = max(len(curve_steps) - 1, 1)
    for i, name in enumerate(explainers):
        by_step = {r.step: r for r in records if r.explainer == name and r.step in curve_steps}
        pts = [(int(s) / denom, by_step[s]) for s in curve_steps if s in by_step and by_step[s].mean is not None]
        if not pts:
            continue
        xs = [p for p, _ in pts]
        summary = [r for r in records if r.explainer == name and not r.step.isdigit() and r.mean is not None]
        label = name + (f" ({summary[0].metric} {summary[0].mean:.3f})" if summary else "")
        style = "--" if name in ("sobel", "noise") else "-"
        ax.plot(xs, [r.mean for _, r in pts], style, color=cmap(i % 10), label=label, lw=1.4)
        ax.fill_between(xs, [r.ci_low for _, r in pts], [r.ci_high for _, r in pts], color=cmap(i % 10),
                        alpha=0.15, linewidth=0)
    ax.set_xlabel("fraction of pixels perturbed (in order of the map)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_perturbation_sequence(path: Path, title: str, x: Tensor, maps: Dict[str, Tensor], family: Any,
                               curves: Dict[str, Tensor], seed: int, n_columns: int = 7) -> Path:
    """An image as each explainer's map deletes (or inserts) its pixels, with the class probability per panel."""
    from ..metrics.curves import make_substrate, relevance_order, step_counts

    plt = _plt()
    x0 = x[:1].float()
    h, w = x0.shape[-2:]
    counts = step_counts(h * w, family.n_steps, family.pixels_per_step)
    picks = sorted({round(i * (len(counts) - 1) / (n_columns - 1)) for i in range(n_columns)})
    substrate = make_substrate(x0, family.substrate, family.blur_kernel, family.blur_sigma)
    names = list(maps)
    fig, axes = plt.subplots(len(names), len(picks), figsize=(1.1 * len(picks) + 1.3, 1.15 * len(names) + 0.6),
                             squeeze=False)
    for r, name in enumerate(names):
        order, _, _ = relevance_order(maps[name][:1].float(), x0, family.order, (seed, family.name))
        for c, k in enumerate(picks):
            chosen = torch.zeros(h * w, dtype=torch.bool)
            chosen[order[0, : int(counts[k])]] = True
            chosen = chosen.view(1, 1, h, w)
            img = torch.where(chosen, substrate, x0) if family.mode == "delete" else torch.where(chosen, x0, substrate)
            shown, cmap = _image_for_display(img[0])
            axes[r, c].imshow(shown, cmap=cmap, vmin=0, vmax=1)
            p = curves.get(name)
            label = f"{int(counts[k])} px" + (f"\np={float(p[k]):.2f}" if p is not None else "")
            axes[r, c].set_title(label, fontsize=6, pad=2)
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _records(results: Dict[str, Any]) -> List[Record]:
    return [Record(**{k: v for k, v in r.items() if k in _RECORD_FIELDS}) for r in results.get("records") or []]


def _scope(results: Dict[str, Any], figure_maps: Optional[FigureMaps]) -> Tuple[List[str], List[str]]:
    """``(checks, explainers)`` the figures show: those the run computed (the figure maps' scope; a run merged
    into an earlier ``--out`` carries others), else every check and every explainer not skipped."""
    skipped = {s.get("explainer") for s in results.get("skipped") or [] if isinstance(s, dict)}
    scope = figure_maps.scope if figure_maps is not None else {}
    checks = list(scope.get("checks") or results.get("checks") or {})
    explainers = list(scope.get("explainers") or [n for n in results.get("explainers") or {} if n not in skipped])
    return checks, explainers


def _threshold(info: Dict[str, Any], metric: str) -> Optional[float]:
    rule = info.get("verdict_rule")
    return rule["threshold"] if rule and rule.get("metric") == metric else None


def _per_image(results: Dict[str, Any], explainer: str, check: str, step: str) -> List[Optional[float]]:
    """The per-image scores of the first metric of (explainer, check, step) in ``results["per_sample"]``."""
    by_metric = (((results.get("per_sample") or {}).get(explainer) or {}).get(check) or {}).get(step) or {}
    return next(iter(by_metric.values()), [])


def _own_figures(check: str) -> Any:
    """The figure writer ``(out_dir, results, check) -> [file names]`` a check names in its ``figures``
    attribute (an import path), for audits whose statistics are not curves over model states; else None."""
    from ..errors import SanityCheckError
    from ..registry import CHECKS, load_object

    try:
        path = getattr(CHECKS.get(check), "figures", None)
    except SanityCheckError:
        return None
    return load_object(path) if isinstance(path, str) else None


def write_run_figures(out_dir: Path, results: Dict[str, Any],
                      figure_maps: Optional[FigureMaps] = None) -> Dict[str, List[str]]:
    """All figures of an image run into ``out_dir`` from its documents: ``results`` and its ``figure_maps``
    (figures that need maps are left out when there are none). Returns {check: [file names]}."""
    out_dir = Path(out_dir)
    out: Dict[str, List[str]] = {}
    check_names, explainers = _scope(results, figure_maps)
    records = _records(results)
    n = (results.get("dataset") or {}).get("n")
    model_name = (results.get("model") or {}).get("name")
    seed = int(results.get("seed") or 0)
    for check in check_names:
        own = _own_figures(check)
        if own is not None:  # an audit that draws its own figures from the results document (e.g. TCAV)
            out[check] = list(own(out_dir, results, check))
            continue
        info = (results.get("checks") or {}).get(check) or {}
        steps = list(info.get("steps") or [])
        files = []
        check_records = [r for r in records if r.check == check]
        if info.get("kind") == "evaluation":
            if any(s.isdigit() for s in steps):
                curve_metric = next(r.metric for r in check_records if r.step.isdigit())
                p = plot_evaluation_curves(out_dir / f"{check}_curves.png",
                                           f"{check} on {model_name} (n={n}, mean, 95% CI)",
                                           steps, explainers, check_records, curve_metric)
                files.append(p.name)
            family = _family(check, info)
            if figure_maps is not None and family is not None and hasattr(family, "n_steps") and hasattr(family, "mode"):
                curve_steps = [st for st in steps if st.isdigit()]
                for i in range(min(3, figure_maps.k)):  # a few images, one figure each
                    kept = figure_maps.extras.get("curves", {}).get(check, {})
                    curves = {name: torch.tensor([float(kept[name][st][i]) if st in kept.get(name, {}) else
                                                  _nan(_per_image(results, name, check, st), i) for st in curve_steps])
                              for name in explainers}
                    p = plot_perturbation_sequence(
                        out_dir / f"{check}_sequence_{i}.png",
                        f"{check}: image {i} in order of each map ({family.mode}, substrate {family.substrate})",
                        figure_maps.inputs[i:i + 1], {e: figure_maps.originals[e][i:i + 1] for e in explainers},
                        family, curves, seed)
                    files.append(p.name)
            out[check] = files
            continue
        if figure_maps is not None and figure_maps.k:
            refs = figure_maps.originals_of(check)
            names = [e for e in explainers if e in refs]
            by_step = figure_maps.states.get(check, {})
            for i in range(figure_maps.k):  # one figure per figure image; image 0 keeps the name it always had
                maps = {name: [refs[name][i]] + [by_step[s][name][i] for s in steps] for name in names}
                p = plot_state_maps(out_dir / (f"{check}_maps.png" if i == 0 else f"{check}_maps_{i}.png"),
                                    f"{results.get('suite')} — {check} on {model_name} (image {i}; |map| scaled to "
                                    "[0, 1] by its 99th percentile)", figure_maps.inputs[i], names, steps, maps)
                files.append(p.name)
            names_for_curves = names
        else:
            names_for_curves = [e for e in explainers if any(r.explainer == e for r in check_records)]
        for metric in results.get("metrics") or {}:
            p = plot_similarity_curves(out_dir / f"{check}_{metric}.png",
                                       f"{check}: {metric} to the original maps (n={n}, 95% CI)",
                                       metric, steps, names_for_curves, check_records, _threshold(info, metric))
            files.append(p.name)
        out[check] = files
    return out


def _nan(values: Sequence[Optional[float]], i: int) -> float:
    """``values[i]`` as a float; NaN where it is missing or undefined (null)."""
    v = values[i] if i < len(values) else None
    return float("nan") if v is None else float(v)


def _family(check: str, info: Dict[str, Any]) -> Any:
    """The metric of an evaluation check, rebuilt from the check's registry name and the parameters in
    ``results.json`` (the perturbation-sequence figure needs its substrate and steps); None if it cannot be."""
    from ..checks.base import get_check
    from ..errors import SanityCheckError

    try:
        built = get_check(check, **dict(info.get("params") or {}))
    except SanityCheckError:
        return None
    return getattr(built, "metric", built)
