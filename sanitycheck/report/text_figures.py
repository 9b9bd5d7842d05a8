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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .figures import _plt, plot_similarity_curves

__all__ = ["write_text_figures", "plot_token_rows", "plot_adversarial_examples"]


def _tokens(run: Any, i: int) -> List[str]:
    pieces = getattr(run.batch, "pieces", None)
    return list(pieces[i]) if pieces else [str(t) for t in run.batch.ids[i, : int(run.batch.lengths[i])].tolist()]


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


def write_text_figures(run: Any, originals: Dict[str, Tensor], scored: Dict[Any, Dict[str, Any]],
                       records: Sequence[Any]) -> Dict[str, List[str]]:
    """All figures of a text run into ``run.out_dir``; returns {check: [file names]}."""
    out: Dict[str, List[str]] = {}
    k = min(run.suite.figure_images, len(run.x))
    names = [n for n in run.explainers if n in originals]
    n = len(run.x)
    for spec in run.check_specs:
        files: List[str] = []
        steps = run.steps.get(spec.name, [])
        check_records = [r for r in records if r.check == spec.name]
        if run.check_kinds.get(spec.name) != "evaluation":
            for i in range(min(k, 2)):
                toks = _tokens(run, i)
                L = len(toks)
                rows = []
                for name in names:
                    rows.append((f"{name}: original", toks, originals[name][i, :L].tolist()))
                    for s in steps:
                        entry = scored.get((spec.name, s), {}).get(name)
                        if entry is not None and entry["examples"] is not None and i < len(entry["examples"]):
                            rows.append((f"  after {s}", toks, entry["examples"][i, :L].tolist()))
                p = plot_token_rows(run.out_dir / f"{spec.name}_text{i}.png",
                                    f"{spec.name} on {run.model_name}: text {i}, |importance| scaled per row", rows)
                files.append(p.name)
            for metric in run.metrics:
                thr = spec.verdict.threshold if spec.verdict is not None and metric == spec.verdict.metric else None
                live = [x for x in names if any(r.explainer == x and r.metric == metric for r in check_records)]
                p = plot_similarity_curves(run.out_dir / f"{spec.name}_{metric}.png",
                                           f"{spec.name}: {metric} to the original importances (n={n}, 95% CI)",
                                           metric, steps, live, check_records, thr)
                files.append(p.name)
            out[spec.name] = files
            continue
        result = run.text_outputs.get(spec.name)
        if result is None:
            continue
        if spec.name == "importance_agreement":
            for audited in sorted({a for (_, a) in result.scores}):
                series = {f"{audited} vs {r}": result.scores[(r, a)]["kendall_tau"]
                          for (r, a) in result.scores if a == audited}
                p = _hist(run.out_dir / f"importance_agreement_{audited}_hist.png",
                          f"Kendall τ of {audited} with other importances ({run.model_name}, n={n})", series,
                          "Kendall τ-b", xlim=(-1, 1))
                files.append(p.name)
        elif spec.name == "attention_permutation":
            med = result.scores[("score", "attention")]["median_output_change"]
            p = _hist(run.out_dir / "attention_permutation_hist.png",
                      f"median output change under attention permutation ({run.model_name}, n={n})",
                      {"median TVD": med}, "median |Δŷ| (TVD)")
            files.append(p.name)
        elif spec.name == "adversarial_attention" and result.figure.get("instances"):
            p = plot_adversarial_examples(run.out_dir / "adversarial_attention_examples.png",
                                          f"attention (blue) vs adversarial attention (red) on {run.model_name}",
                                          result.figure["instances"], run.dataset.classes)
            files.append(p.name)
            mj = result.scores[("score", "attention")]["max_jsd"]
            p = _hist(run.out_dir / "adversarial_attention_hist.png",
                      f"max JSD within ε of adversarial attention ({run.model_name}, n={n}; ln 2 = 0.69)",
                      {"max JSD": mj}, "JSD [nats]", xlim=(0, 0.7))
            files.append(p.name)
        elif result.figure.get("tradeoff"):
            p = plot_tradeoff(run.out_dir / f"{spec.name}_tradeoff.png",
                              f"model-consistent adversarial training on {run.model_name} (n={n})",
                              result.figure["tradeoff"])
            files.append(p.name)
        out[spec.name] = files
    return out
