"""Figures of a run: the maps of each check's model states (after Adebayo et al.'s Figure 2)
and similarity versus step, one curve per explainer with its 95 % CI band."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
from torch import Tensor


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


def plot_state_maps(path: Path, title: str, image: Tensor, explainers: Sequence[str], steps: Sequence[str],
                    maps: Dict[str, List[Tensor]]) -> Path:
    """Rows: explainers; columns: the input, the original model, then each step.

    Each |map| is divided by its own 99th percentile and clipped to [0, 1], as in Adebayo et al.'s
    figures: randomized models' gradients are orders of magnitude smaller, and the rank metrics
    being plotted ignore scale, so a shared scale would show black squares instead of structure.
    """
    plt = _plt()
    cols = 2 + len(steps)
    fig, axes = plt.subplots(len(explainers), cols, figsize=(1.25 * cols + 1.2, 1.25 * len(explainers) + 0.8),
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


def write_run_figures(run: Any, originals: Dict[str, Tensor], scored: Dict[Any, Dict[str, Any]],
                      records: Sequence[Any]) -> Dict[str, List[str]]:
    """All figures of a run into ``run.out_dir``; returns {check: [file names]}."""
    out: Dict[str, List[str]] = {}
    explainers = [n for n in run.explainers if n not in run.skipped]
    for spec in run.check_specs:
        steps = run.steps.get(spec.name, [])
        files = []
        check_records = [r for r in records if r.check == spec.name]
        if run.check_kinds.get(spec.name) == "evaluation":
            if any(s.isdigit() for s in steps):
                curve_metric = next(r.metric for r in check_records if r.step.isdigit())
                p = plot_evaluation_curves(run.out_dir / f"{spec.name}_curves.png",
                                           f"{spec.name} on {run.model_name} (n={len(run.x)}, mean, 95% CI)",
                                           steps, explainers, check_records, curve_metric)
                files.append(p.name)
            family = run.families.get(spec.name)
            if family is not None and hasattr(family, "n_steps") and hasattr(family, "mode"):
                curve_steps = [st for st in steps if st.isdigit()]
                for i in range(min(run.suite.figure_images, 3, len(run.x))):  # a few images, one figure each
                    curves = {name: torch.tensor([float(next(iter(scored[(spec.name, st)][name]["scores"].values()))[i])
                                                  for st in curve_steps]) for name in explainers}
                    p = plot_perturbation_sequence(
                        run.out_dir / f"{spec.name}_sequence_{i}.png",
                        f"{spec.name}: image {i} in order of each map ({family.mode}, substrate {family.substrate})",
                        run.x[i:i + 1], {n: originals[n][i:i + 1] for n in explainers}, family, curves, run.seed)
                    files.append(p.name)
            out[spec.name] = files
            continue
        refs = run.originals_of(spec.name, originals)
        names = [n for n in explainers if n in refs]
        maps = {name: [refs[name][0]] + [scored[(spec.name, s)][name]["examples"][0] for s in steps]
                for name in names}
        p = plot_state_maps(run.out_dir / f"{spec.name}_maps.png",
                            f"{run.suite.name} — {spec.name} on {run.model_name} (image 0; |map| scaled to [0, 1] by its 99th percentile)",
                            run.x[0], names, steps, maps)
        files.append(p.name)
        for metric in run.metrics:
            thr = spec.verdict.threshold if spec.verdict is not None and metric == spec.verdict.metric else None
            p = plot_similarity_curves(run.out_dir / f"{spec.name}_{metric}.png",
                                       f"{spec.name}: {metric} to the original maps (n={len(run.x)}, 95% CI)",
                                       metric, steps, names, check_records, thr)
            files.append(p.name)
        out[spec.name] = files
    return out
