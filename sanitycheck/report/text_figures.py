"""Figures of a text audit: token heat maps, Jain & Wallace's Figure 1 and histograms, W&P's trade-off.

* ``<check>_texts.png`` (randomization checks): a few texts with each explainer's importances, original model
  and every randomized state (cf. Adebayo et al.'s cascade figure, one row per state).
* ``adversarial_attention_examples.png``: the model's attention over a text beside the adversarial attention
  found for it, with both output distributions (Jain & Wallace, Figure 1).
* ``importance_agreement_hist.png``: per reference, the histogram of Kendall τ (Jain & Wallace, Figure 2).
* ``attention_permutation_hist.png``: median output change under permutation vs the attention's largest
  weight (Jain & Wallace, Figure 3).
* ``adversarial_training_tradeoff.png``: TVD(ŷ_adv, ŷ_base) against JSD(α_adv, α_base) over λ
  (Wiegreffe & Pinter, Figure 4).
* ``<check>_<metric>.png``: similarity to the original importances per randomization step, mean and 95 % CI.

Every figure is a function of the run's documents: ``results.json`` (records, steps, thresholds, per-instance
scores) and the figure maps it names (tokens, importances, the checks' figure data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .figure_maps import FigureMaps
from .figures import _plt, _records, _scope, _threshold, plot_similarity_curves

__all__ = ["write_text_figures", "plot_token_rows", "plot_adversarial_examples"]


def _draw_tokens(ax: Any, tokens: Sequence[str], weights: Sequence[float], *, cmap: str = "Reds",
                 max_tokens: int = 40, fontsize: float = 8) -> None:
    """Tokens left to right, each on a box coloured by its weight scaled to [0, 1] by the row's maximum."""
    plt = _plt()
    w = torch.as_tensor(list(weights), dtype=torch.float64)[:max_tokens].abs()
    scale = float(w.max()) if w.numel() and float(w.max()) > 0 else 1.0
    colors = plt.get_cmap(cmap)
    # a monospace character is about 0.6 em wide: its share of this axes' width, so tokens never overlap
    axes_inches = ax.figure.get_figwidth() * ax.get_position().width
    char = 0.62 * fontsize / 72.0 / max(axes_inches, 1e-6)
    x = 0.0
    for tok, v in zip(tokens[:max_tokens], (w / scale).tolist()):
        width = char * (len(tok) + 1.3)
        ax.text(x, 0.5, tok, fontsize=fontsize, va="center", ha="left", family="monospace",
                bbox=dict(boxstyle="square,pad=0.15", fc=colors(0.85 * v), ec="none"),
                color="white" if v > 0.6 else "black")
        x += width
    if len(tokens) > max_tokens:
        ax.text(x, 0.5, f"… (+{len(tokens) - max_tokens})", fontsize=7, va="center")
    ax.set_xlim(0, max(1.0, x))
    ax.axis("off")


def plot_token_rows(path: Path, title: str, rows: Sequence[tuple]) -> Path:
    """One text per row: ``rows`` of (label, tokens, weights)."""
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 0.42 * len(rows) + 0.8), squeeze=False)
    for ax, (label, tokens, weights) in zip(axes[:, 0], rows):
        _draw_tokens(ax, tokens, weights)
        ax.text(-0.005, 0.5, label, fontsize=7, va="center", ha="right", transform=ax.transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0.12, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt_output(p: Sequence[float], classes: Sequence[str]) -> str:
    k = int(torch.as_tensor(p).argmax())
    return f"{classes[k] if k < len(classes) else k} {float(p[k]):.3f}"


def plot_adversarial_examples(path: Path, title: str, instances: Sequence[Dict[str, Any]],
                              classes: Sequence[str]) -> Path:
    """Jain & Wallace's Figure 1: original attention (blue) and adversarial attention (red) per text."""
    rows = []
    for inst in instances:
        toks = inst.get("tokens") or [str(i) for i in range(len(inst["attention"]))]
        rows.append((f"#{inst['index']} original\n{_fmt_output(inst['original_output'], classes)}",
                     toks, inst["attention"], "Blues"))
        rows.append((f"adversarial JSD {inst['jsd']:.2f}\n{_fmt_output(inst['adversarial_output'], classes)}"
                     f" (Δ {inst['output_change']:.3f})", toks, inst["adversarial"], "Reds"))
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 0.5 * len(rows) + 0.8), squeeze=False)
    for ax, (label, toks, w, cmap) in zip(axes[:, 0], rows):
        _draw_tokens(ax, toks, w, cmap=cmap)
        ax.text(-0.005, 0.5, label, fontsize=7, va="center", ha="right", transform=ax.transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0.16, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _hist(path: Path, title: str, series: Dict[str, Tensor], xlabel: str, bins: int = 30,
          xlim: Optional[tuple] = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, values in series.items():
        v = values[~torch.isnan(values)].numpy()
        if v.size:
            ax.hist(v, bins=bins, range=xlim, alpha=0.55, label=f"{name} (n={v.size}, mean {v.mean():.2f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("instances")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_tradeoff(path: Path, title: str, points: Sequence[Dict[str, Any]]) -> Path:
    """W&P Figure 4: mean TVD of outputs (y) against mean JSD of attention (x), one point per λ, with CIs."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    xs = [p["jsd"] for p in points]
    ys = [p["tvd"] for p in points]
    ax.errorbar(xs, ys, xerr=[[p["jsd"] - p["jsd_low"] for p in points], [p["jsd_high"] - p["jsd"] for p in points]],
                yerr=[[p["tvd"] - p["tvd_low"] for p in points], [p["tvd_high"] - p["tvd"] for p in points]],
                fmt="o-", capsize=3)
    for p in points:
        ax.annotate(p["label"], (p["jsd"], p["tvd"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("JSD(attention adversary, base) [nats]")
    ax.set_ylabel("TVD(output adversary, base)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series(results: Dict[str, Any], explainer: str, check: str, step: str, metric: str,
            extras: Optional[Dict[str, Any]] = None) -> Tensor:
    """Per-instance scores as float64, NaN where undefined: the full-precision copy in the figure maps' extras
    (``text_scores``) where there is one, else ``results["per_sample"]`` (rounded to 7 digits)."""
    kept = ((((extras or {}).get("text_scores") or {}).get(check) or {}).get(explainer) or {}).get(step) or {}
    if isinstance(kept.get(metric), Tensor):
        return kept[metric].to(torch.float64)
    values = ((((results.get("per_sample") or {}).get(explainer) or {}).get(check) or {}).get(step) or {}).get(metric)
    return torch.tensor([float("nan") if v is None else float(v) for v in values or []], dtype=torch.float64)


def write_text_figures(out_dir: Path, results: Dict[str, Any],
                       figure_maps: Optional[FigureMaps] = None) -> Dict[str, List[str]]:
    """All figures of a text run into ``out_dir`` from its documents: ``results`` and its ``figure_maps`` (token
    heat maps and the checks' figure data; left out when there are none). Returns {check: [file names]}."""
    out_dir = Path(out_dir)
    out: Dict[str, List[str]] = {}
    check_names, names = _scope(results, figure_maps)
    records = _records(results)
    n = (results.get("dataset") or {}).get("n")
    model_name = (results.get("model") or {}).get("name")
    not_applicable = results.get("not_applicable") or {}
    extras = figure_maps.extras if figure_maps is not None else {}
    text_checks = extras.get("text_checks") or {}
    for check in check_names:
        info = (results.get("checks") or {}).get(check) or {}
        files: List[str] = []
        steps = list(info.get("steps") or [])
        check_records = [r for r in records if r.check == check]
        if info.get("kind") != "evaluation":
            if figure_maps is not None:
                by_step = figure_maps.states.get(check, {})
                for i in range(min(figure_maps.k, 2)):
                    toks = list(figure_maps.tokens[i])
                    L = len(toks)
                    rows = []
                    for name in names:
                        if name not in figure_maps.originals:
                            continue
                        rows.append((f"{name}: original", toks, figure_maps.originals[name][i, :L].tolist()))
                        for s in steps:
                            ex = by_step.get(s, {}).get(name)
                            if ex is not None and i < len(ex):
                                rows.append((f"  after {s}", toks, ex[i, :L].tolist()))
                    p = plot_token_rows(out_dir / f"{check}_text{i}.png",
                                        f"{check} on {model_name}: text {i}, |importance| scaled per row", rows)
                    files.append(p.name)
            for metric in results.get("metrics") or {}:
                live = [x for x in names if any(r.explainer == x and r.metric == metric for r in check_records)]
                p = plot_similarity_curves(out_dir / f"{check}_{metric}.png",
                                           f"{check}: {metric} to the original importances (n={n}, 95% CI)",
                                           metric, steps, live, check_records, _threshold(info, metric))
                files.append(p.name)
            out[check] = files
            continue
        if check in not_applicable:
            continue
        figure = text_checks.get(check) or {}
        if check == "importance_agreement":
            per_sample = results.get("per_sample") or {}
            for audited in sorted(a for a in per_sample if check in (per_sample[a] or {})):
                series = {f"{audited} vs {r}": _series(results, audited, check, r, "kendall_tau", extras)
                          for r in per_sample[audited][check]}
                p = _hist(out_dir / f"importance_agreement_{audited}_hist.png",
                          f"Kendall τ of {audited} with other importances ({model_name}, n={n})", series,
                          "Kendall τ-b", xlim=(-1, 1))
                files.append(p.name)
        elif check == "attention_permutation":
            med = _series(results, "attention", check, "score", "median_output_change", extras)
            p = _hist(out_dir / "attention_permutation_hist.png",
                      f"median output change under attention permutation ({model_name}, n={n})",
                      {"median TVD": med}, "median |Δŷ| (TVD)")
            files.append(p.name)
        elif check == "adversarial_attention" and figure.get("instances"):
            p = plot_adversarial_examples(out_dir / "adversarial_attention_examples.png",
                                          f"attention (blue) vs adversarial attention (red) on {model_name}",
                                          figure["instances"], extras.get("classes") or [])
            files.append(p.name)
            mj = _series(results, "attention", check, "score", "max_jsd", extras)
            p = _hist(out_dir / "adversarial_attention_hist.png",
                      f"max JSD within ε of adversarial attention ({model_name}, n={n}; ln 2 = 0.69)",
                      {"max JSD": mj}, "JSD [nats]", xlim=(0, 0.7))
            files.append(p.name)
        elif figure.get("tradeoff"):
            p = plot_tradeoff(out_dir / f"{check}_tradeoff.png",
                              f"model-consistent adversarial training on {model_name} (n={n})", figure["tradeoff"])
            files.append(p.name)
        out[check] = files
    return out
