"""Figures of the TCAV audits (issue 16), drawn from the results document only.

What they read: ``summaries[check]`` (per test: the concept's mean TCAV score with its bootstrap CI, the random
runs' mean, the p-value, the Bonferroni threshold, the runs' ``scores`` and the random-concept runs'
``random_scores``, the null distribution; ground truth: one p-value per model, concept and seed) and
``state_info[check]`` (the check's configuration).

* ``tcav_random_concepts``: per layer, each concept's mean score with its 95% CI beside the random-concept runs'
  scores (strip and box); a star marks significance after Bonferroni.
* ``tcav_model_randomization``: per (concept, layer), the same for the trained model and each cascade step.
* ``tcav_ground_truth``: detection rate (model where the texture decides the label) against the false-positive rate
  (the twin) with Wilson 95% intervals over seeds and the check's bounds; and every seed's p-value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

__all__ = ["write_tcav_figures", "plot_scores_beside_random", "plot_ground_truth"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _rows(results: Dict[str, Any], check: str) -> List[Dict[str, Any]]:
    return [r for r in (results.get("summaries") or {}).get(check) or [] if isinstance(r, dict) and "p_value" in r]


def _random_scores(row: Dict[str, Any]) -> List[float]:
    """The random-concept runs' scores of a test (its summary row's ``random_scores``): the null distribution."""
    return [float(v) for v in row.get("random_scores") or [] if v is not None]


def _jitter(n: int, width: float = 0.12) -> List[float]:
    """Deterministic horizontal offsets for a strip plot (no RNG: the figure is a function of the document)."""
    return [width * (((i * 0.618034) % 1.0) * 2 - 1) for i in range(n)]


def plot_scores_beside_random(ax: Any, groups: Sequence[Tuple[str, List[Dict[str, Any]], List[float]]],
                              threshold: float) -> None:
    """One x position per group (label, concept rows, random-run scores): the random scores as a strip and a box,
    each concept's mean with its CI to the right of them."""
    colours = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]
    for gx, (label, rows, randoms) in enumerate(groups):
        if randoms:
            ax.boxplot([randoms], positions=[gx - 0.2], widths=0.18, showfliers=False, manage_ticks=False,
                       medianprops={"color": "grey"})
            ax.scatter([gx - 0.2 + j for j in _jitter(len(randoms), 0.07)], randoms, s=6, color="grey", alpha=0.6,
                       label="random concepts (runs)" if gx == 0 else None)
        for k, r in enumerate(rows):
            x = gx + 0.08 + 0.1 * k
            mean, lo, hi = r.get("value"), r.get("ci_low"), r.get("ci_high")
            if mean is None:
                continue
            err = [[mean - (lo if lo is not None else mean)], [(hi if hi is not None else mean) - mean]]
            concept = str(r["step"]).split("|")[-1].split("@")[0]
            ax.errorbar([x], [mean], yerr=err, fmt="o", color=colours[k % len(colours)], capsize=3,
                        label=concept if gx == 0 else None)
            if float(r["p_value"]) < threshold:
                ax.annotate("*", (x, min(1.02, (hi if hi is not None else mean) + 0.02)), ha="center", fontsize=12)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups], rotation=30 if len(groups) <= 8 else 60, ha="right",
                       fontsize=8 if len(groups) <= 8 else 6)
    ax.set_ylim(-0.05, 1.1)
    ax.axhline(0.5, color="lightgrey", lw=0.8, zorder=0)
    ax.set_ylabel("TCAV score")


def _threshold(results: Dict[str, Any], check: str) -> float:
    notes = (results.get("state_info") or {}).get(check) or {}
    try:
        return float(notes["alpha"]) / (len(notes["concepts"]) * len(notes["layers"]))
    except (KeyError, TypeError, ZeroDivisionError):
        rows = _rows(results, check)
        return float(rows[0].get("threshold", 0.05)) if rows else 0.05


def _random_concepts(out_dir: Path, results: Dict[str, Any], check: str) -> List[str]:
    rows = _rows(results, check)
    if not rows:
        return []
    thr = _threshold(results, check)
    layers = list(dict.fromkeys(str(r["step"]).split("@", 1)[1] for r in rows))
    groups = []
    for layer in layers:
        mine = [r for r in rows if str(r["step"]).split("@", 1)[1] == layer]
        groups.append((layer, mine, _random_scores(mine[0])))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(groups), 3.6))
    plot_scores_beside_random(ax, groups, thr)
    ax.set_xlabel("layer")
    ax.set_title(f"{check} on {(results.get('model') or {}).get('name')}\nconcept mean [95% CI] beside the random "
                 f"runs (* p < {thr:.2g}, Bonferroni)", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = out_dir / f"{check}_scores.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def _model_randomization(out_dir: Path, results: Dict[str, Any], check: str) -> List[str]:
    rows = _rows(results, check)
    if not rows:
        return []
    thr = _threshold(results, check)
    tests: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        tests.setdefault(str(r["step"]).split("|", 1)[1], []).append(r)
    plt = _plt()
    files = []
    for key, steps in tests.items():
        groups = [(str(r["step"]).split("|", 1)[0], [r], _random_scores(r)) for r in steps]
        fig, ax = plt.subplots(figsize=(min(14.0, 1.8 + 1.2 * len(groups)), 3.6 if len(groups) <= 8 else 4.6))
        plot_scores_beside_random(ax, groups, thr)
        ax.set_xlabel("model state (cascade above the bottleneck,\nfrom the logits down)", fontsize=8)
        ax.set_title(f"{check}\n{key}, trained and randomized (* p < {thr:.2g})", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out_dir / f"{check}_{key.replace('@', '_at_').replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path.name)
    return files


def _wilson(k: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def plot_ground_truth(ax_rates: Any, ax_p: Any, rows: List[Dict[str, Any]], threshold: float,
                      min_detection: float, max_fpr: float) -> None:
    concepts = list(dict.fromkeys(str(r["step"]).split("|", 1)[1] for r in rows))
    for i, concept in enumerate(concepts):
        for j, (model, colour, label) in enumerate((("decides", "tab:green", "detection (texture decides)"),
                                                    ("independent", "tab:red", "false positives (twin)"))):
            ps = [float(r["p_value"]) for r in rows if r["step"] == f"{model}|{concept}"]
            k = sum(p < threshold for p in ps)
            rate = k / len(ps) if ps else float("nan")
            lo, hi = _wilson(k, len(ps))
            x = i + (j - 0.5) * 0.35
            ax_rates.bar([x], [rate], width=0.33, color=colour, label=label if i == 0 else None)
            ax_rates.errorbar([x], [rate], yerr=[[rate - lo], [hi - rate]], color="black", capsize=3)
            ax_p.scatter([x + o for o in _jitter(len(ps), 0.1)], [-math.log10(max(p, 1e-300)) for p in ps], s=12,
                         color=colour, label=label if i == 0 else None)
    ax_rates.axhline(min_detection, color="tab:green", ls="--", lw=0.8)
    ax_rates.axhline(max_fpr, color="tab:red", ls="--", lw=0.8)
    ax_rates.set_xticks(range(len(concepts)))
    ax_rates.set_xticklabels(concepts, fontsize=8)
    ax_rates.set_ylim(0, 1.05)
    ax_rates.set_ylabel("share of seeds significant (Wilson 95% CI)")
    ax_rates.legend(fontsize=7)
    ax_p.axhline(-math.log10(threshold), color="black", ls="--", lw=0.8)
    ax_p.set_xticks(range(len(concepts)))
    ax_p.set_xticklabels(concepts, fontsize=8)
    ax_p.set_ylabel("-log10 p (smallest over layers), per seed")


def _ground_truth(out_dir: Path, results: Dict[str, Any], check: str) -> List[str]:
    rows = _rows(results, check)
    if not rows:
        return []
    notes = (results.get("state_info") or {}).get(check) or {}
    thr = _threshold(results, check)
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.6))
    plot_ground_truth(a, b, rows, thr, float(notes.get("min_detection", 0.8)),
                      float(notes.get("max_false_positive_rate", 0.2)))
    fig.suptitle(f"{check}: detection vs false-positive rate over {len(notes.get('seeds') or [])} seeds "
                 f"(p < {thr:.2g})", fontsize=9)
    fig.tight_layout()
    path = out_dir / f"{check}_rates.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


_WRITERS = {"tcav_random_concepts": _random_concepts, "tcav_model_randomization": _model_randomization,
            "tcav_ground_truth": _ground_truth}


def write_tcav_figures(out_dir: Any, results: Dict[str, Any], check: str) -> List[str]:
    """The figures of TCAV audit ``check`` of the run documented by ``results``, into ``out_dir``; their names."""
    writer = _WRITERS.get(check)
    if writer is None:
        return []
    return writer(Path(out_dir), results, check)
