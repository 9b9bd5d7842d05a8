"""Figures of an SAE audit (issue 15, ``input_kind: activations``), drawn from the run's documents only.

Every figure is a function of ``results.json`` (records, summaries, per-latent scores) and the figure maps it names
(the checks' ``figure`` dicts under ``extras["text_checks"][check]``, full-precision per-latent scores under
``extras["text_scores"]``), never of the live run: ``sanitycheck figures <out>`` redraws them without a model.
A figure whose check the run did not compute (or whose data the documents lack) is left out.

* ``sae_reconstruction_frontier.png``: L0 against the fraction of variance unexplained, one panel per site, one
  point per SAE variant with 95 % CIs on both axes, labelled with its loss recovered.
* ``sae_randomized_control_contexts_<site>_<sae>.png``: each feature's top-activating contexts, the trained model's
  dictionary beside the randomized models' (Heap et al. 2025), token in bold red, activation to the left.
* ``sae_randomized_control_differences.png``: forest plot of trained - randomized for each interpretability
  measure, with 95 % CIs and the 0 line, coloured by whether the CI excludes 0.
* ``sae_randomized_control_share_<site>.png``: per-latent token-identity share, trained against randomized.
* ``sae_splitting_tree_<site>_<sae>.png``: latents of the small dictionary (left) and the latents they split into
  in the larger ones (right), edges shaded by decoder cosine; ``sae_splitting_children_<site>.png``: histogram of
  children per latent.
* ``sae_baselines_auroc_<site>.png``: detection AUROC per concept, the SAE's best latent and k-sparse probe against
  difference-in-means and a logistic probe on the raw activations (hatched), with 95 % CIs and chance at 0.5.
* ``sae_seed_similarity_<site>.png``: per-latent max cosine to another seed's dictionary, the deck's 0.7 marked.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..io import atomic_write_bytes
from .figure_maps import FigureMaps
from .figures import _plt, _records, _scope
from .text_figures import _series

__all__ = ["draw_sae", "plot_frontier", "plot_top_contexts", "plot_control_forest", "plot_splitting_tree",
           "plot_auroc_bars", "SAE_CHECKS", "SEED_SIMILARITY_REFERENCE"]

#: the five SAE checks, in the order their figures are drawn
SAE_CHECKS = ("sae_reconstruction", "sae_randomized_control", "sae_splitting", "sae_baselines",
              "sae_seed_similarity")
#: Bricken et al. 2023: features correlate at about 0.7 between dictionaries trained on the same data
SEED_SIMILARITY_REFERENCE = 0.7
#: the model states of the randomized-model control, in column order (others follow, sorted)
STATE_ORDER = ("trained", "randomized_all", "randomized_keep_embeddings")
BASELINES = ("difference_in_means", "logistic_probe")
SAE_METHODS = ("best_latent", "k_sparse_probe")


# ---------------------------------------------------------------------------------------------------- helpers
def _save(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically (a reader never sees half a figure)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _slug(name: Any) -> str:
    """A file-name-safe form of a site or SAE name (``blocks.0.mlp/out`` -> ``blocks.0.mlp_out``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return s or "x"


def _plain(s: Any) -> str:
    """Text drawn as is: no mathtext (``$``), no stray newlines."""
    return str(s).replace("$", r"\$").replace("\n", " ")


def _num(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _fmt(v: Any, digits: int = 2) -> str:
    f = _num(v)
    return "–" if f is None else f"{f:.{digits}f}"


def _err(value: Optional[float], lo: Any, hi: Any) -> Tuple[float, float]:
    """Asymmetric error-bar lengths (0 where a bound is missing)."""
    if value is None:
        return 0.0, 0.0
    lo_, hi_ = _num(lo), _num(hi)
    return (max(0.0, value - lo_) if lo_ is not None else 0.0, max(0.0, hi_ - value) if hi_ is not None else 0.0)


def _summaries(results: Dict[str, Any], check: str) -> List[Dict[str, Any]]:
    rows = (results.get("summaries") or {}).get(check) or []
    return [r for r in rows if isinstance(r, dict)]


def _site_of(step: Any) -> str:
    return str(step).split("|", 1)[0]


def _after_bar(step: Any) -> str:
    parts = str(step).split("|", 1)
    return parts[1] if len(parts) > 1 else ""


def _sample_steps(results: Dict[str, Any], extras: Dict[str, Any], check: str, explainer: str) -> List[str]:
    """The steps with per-sample scores of (explainer, check), in the documents' order."""
    kept = list((((extras.get("text_scores") or {}).get(check) or {}).get(explainer) or {}))
    rec = list((((results.get("per_sample") or {}).get(explainer) or {}).get(check) or {}))
    return kept + [s for s in rec if s not in kept]


def _sample_explainers(results: Dict[str, Any], extras: Dict[str, Any], check: str) -> List[str]:
    names = [e for e, by in (results.get("per_sample") or {}).items() if check in (by or {})]
    names += [e for e in ((extras.get("text_scores") or {}).get(check) or {}) if e not in names]
    return names


def _state_key(state: str) -> Tuple[int, str]:
    return (STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER), state)


def _hist_axes(ax: Any, series: Dict[str, Tensor], *, bins: Any = 30, xlim: Optional[tuple] = None,
               integer: bool = False) -> int:
    """Overlaid histograms of ``series`` (NaN dropped); returns how many series had values."""
    drawn = 0
    width = 0.8 / max(1, len(series))
    for j, (label, values) in enumerate(series.items()):
        v = values[~torch.isnan(values)]
        if not v.numel():
            continue
        text = f"{label} (n={v.numel()}, mean {float(v.mean()):.2f})"
        if integer:  # counts side by side at each integer
            counts = torch.bincount(v.round().long().clamp_min(0))
            ax.bar([i - 0.4 + width * (j + 0.5) for i in range(counts.numel())], counts.tolist(), width * 0.95,
                   alpha=0.85, label=text)
        else:
            ax.hist(v.numpy(), bins=bins, range=xlim, alpha=0.55, label=text)
        drawn += 1
    if drawn:
        ax.legend(fontsize=7)
    return drawn


# ---------------------------------------------------------------------------------------------------- 1. frontier
def frontier_points(results: Dict[str, Any], extras: Dict[str, Any]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``{site: {sae: {l0, l0_ci, fvu, fvu_ci, loss_recovered, loss_recovered_ci, d_sae, dead_fraction}}}``: the
    records' means and CIs (check ``sae_reconstruction``, metrics ``l0`` and ``fvu``, step = site), the summaries'
    loss recovered, and the figure data's frontier (used alone where the records lack a point)."""
    check = "sae_reconstruction"
    pts: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in _records(results):
        if r.check == check and r.metric in ("l0", "fvu"):
            p = pts.setdefault(r.step, {}).setdefault(r.explainer, {})
            p[r.metric], p[f"{r.metric}_ci"] = _num(r.mean), (r.ci_low, r.ci_high)
    fm_frontier = (((extras.get("text_checks") or {}).get(check) or {}).get("frontier") or {})
    for site, by in fm_frontier.items():
        for name, d in (by or {}).items():
            p = pts.setdefault(site, {}).setdefault(name, {})
            for key in ("l0", "fvu", "loss_recovered"):
                if p.get(key) is None and _num((d or {}).get(key)) is not None:
                    p[key] = _num(d[key])
            for key in ("d_sae", "dead_fraction"):
                if (d or {}).get(key) is not None:
                    p[key] = d[key]
    for s in _summaries(results, check):
        if s.get("statistic") == "loss_recovered" and s.get("explainer") is not None:
            p = pts.setdefault(str(s.get("step")), {}).setdefault(str(s["explainer"]), {})
            p["loss_recovered"] = _num(s.get("value"))
            p["loss_recovered_ci"] = (s.get("ci_low"), s.get("ci_high"))
    return {site: {n: p for n, p in by.items() if p.get("l0") is not None and p.get("fvu") is not None}
            for site, by in pts.items() if any(p.get("l0") is not None and p.get("fvu") is not None
                                               for p in by.values())}


def plot_frontier(path: Path, title: str, points: Dict[str, Dict[str, Dict[str, Any]]]) -> Path:
    """One panel per site: x = L0 (active latents per token), y = FVU, one labelled point per SAE variant with
    its 95 % CIs on both axes."""
    plt = _plt()
    sites = list(points)
    fig, axes = plt.subplots(1, len(sites), figsize=(5.4 * len(sites), 4.4), squeeze=False)
    colors = plt.get_cmap("tab10")
    names = sorted({n for by in points.values() for n in by})
    for ax, site in zip(axes[0], sites):
        for name, p in points[site].items():
            c = colors(names.index(name) % 10)
            xe, ye = _err(p["l0"], *p.get("l0_ci", (None, None))), _err(p["fvu"], *p.get("fvu_ci", (None, None)))
            ax.errorbar([p["l0"]], [p["fvu"]], xerr=[[xe[0]], [xe[1]]], yerr=[[ye[0]], [ye[1]]], fmt="o", color=c,
                        capsize=3, label=_plain(name))
            label = _plain(name)
            if p.get("d_sae") is not None:
                label += f" (d={p['d_sae']})"
            if p.get("loss_recovered") is not None:
                lo, hi = p.get("loss_recovered_ci", (None, None))
                label += f"\nloss rec. {_fmt(p['loss_recovered'])}"
                if _num(lo) is not None and _num(hi) is not None:
                    label += f" [{_fmt(lo)}, {_fmt(hi)}]"
            if _num(p.get("dead_fraction")) is not None:
                label += f"\ndead {100 * float(p['dead_fraction']):.0f} %"
            ax.annotate(label, (p["l0"], p["fvu"]), fontsize=7, xytext=(5, 4), textcoords="offset points")
        l0s = [p["l0"] for p in points[site].values() if p["l0"] > 0]
        if len(l0s) == len(points[site]) and l0s and max(l0s) / min(l0s) > 20:
            ax.set_xscale("log")
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel("fraction of variance unexplained")
        ax.set_title(_plain(site), fontsize=9)
        ax.grid(alpha=0.3)
        ax.margins(0.25)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _draw_frontier(out_dir: Path, results: Dict[str, Any], extras: Dict[str, Any], ctx: Dict[str, Any]
                   ) -> List[str]:
    points = frontier_points(results, extras)
    if not points:
        return []
    p = plot_frontier(out_dir / "sae_reconstruction_frontier.png",
                      f"L0 against FVU on {ctx['model']} (n={ctx['n']} texts; 95% CIs; lower left is better)",
                      points)
    return [p.name]


# ---------------------------------------------------------------------------------------------------- 2. contexts
def _clip_left(s: str, width: int) -> str:
    return s if len(s) <= width else "…" + s[-(width - 1):]


def _clip_right(s: str, width: int) -> str:
    return s if len(s) <= width else s[:width - 1] + "…"


def _context_line(ax: Any, x: float, y: float, c: Dict[str, Any], fontsize: float) -> None:
    """``activation  left [token] right`` at (x, y) in axes coordinates, the token bold and red: three text
    artists, each placed after the previous one's rendered extent."""
    act = f"{_fmt(c.get('activation'))}  "
    left = _clip_left(_plain(c.get("left") or ""), 38)
    tok = _plain(c.get("token") or "")
    right = _clip_right(_plain(c.get("right") or ""), 26)
    t = ax.text(x, y, act, fontsize=fontsize, family="monospace", color="0.35", transform=ax.transAxes,
                va="top", ha="left")
    t = ax.annotate((left + " ") if left else "", xycoords=t, xy=(1, 0), va="bottom", ha="left",
                    fontsize=fontsize)
    t = ax.annotate(tok or "∅", xycoords=t, xy=(1, 0), va="bottom", ha="left", fontsize=fontsize,
                    fontweight="bold", color="#c0392b")
    if right:
        ax.annotate(" " + right, xycoords=t, xy=(1, 0), va="bottom", ha="left", fontsize=fontsize)


def plot_top_contexts(path: Path, title: str, by_state: Dict[str, Dict[str, Any]], fontsize: float = 8) -> Path:
    """Columns: model states (trained first); rows: that state's most frequent features. Each cell: the latent,
    its firing frequency and token-identity share, then its top-activating contexts (activation, words before,
    the token in bold red, words after)."""
    plt = _plt()
    states = sorted(by_state, key=_state_key)
    feats = {s: list((by_state[s] or {}).get("features") or []) for s in states}
    n_rows = max(1, max((len(f) for f in feats.values()), default=0))
    n_ctx = max([len(f.get("contexts") or []) for fs in feats.values() for f in fs] or [1])
    line = fontsize * 1.45 / 72.0  # inches per text line
    cell_h = line * (n_ctx + 1.6)
    fig, axes = plt.subplots(n_rows, len(states), figsize=(5.6 * len(states), cell_h * n_rows + 0.9),
                             squeeze=False)
    for col, state in enumerate(states):
        for row in range(n_rows):
            ax = axes[row, col]
            ax.set_axis_off()
            if row == 0:
                ax.set_title(_plain(state), fontsize=fontsize + 1, fontweight="bold")
            if row >= len(feats[state]):
                continue
            f = feats[state][row]
            share = f.get("token_identity_share")
            header = (f"latent {f.get('latent', '?')}   freq {_fmt(f.get('frequency'), 3)}   "
                      f"token-identity share {_fmt(share)}")
            ax.text(0.0, 1.0, header, fontsize=fontsize, fontweight="bold", transform=ax.transAxes, va="top",
                    color="#1f3a93")
            step = 1.0 / (n_ctx + 1.6)
            for i, c in enumerate(f.get("contexts") or []):
                _context_line(ax, 0.0, 1.0 - (i + 1.3) * step, c if isinstance(c, dict) else {}, fontsize)
    fig.suptitle(title, fontsize=fontsize + 1, y=1 - 0.12 / fig.get_figheight(), va="top")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.75 / fig.get_figheight(), wspace=0.04,
                        hspace=0.25)
    return _save(fig, path, dpi=100)


def _draw_contexts(out_dir: Path, results: Dict[str, Any], extras: Dict[str, Any], ctx: Dict[str, Any]
                   ) -> List[str]:
    top = (((extras.get("text_checks") or {}).get("sae_randomized_control") or {}).get("top_contexts") or {})
    files = []
    for site, by_sae in top.items():
        for name, by_state in (by_sae or {}).items():
            if not by_state or not any((v or {}).get("features") for v in by_state.values()):
                continue
            p = plot_top_contexts(out_dir / f"sae_randomized_control_contexts_{_slug(site)}_{_slug(name)}.png",
                                  f"{name} at {site}: top-activating contexts, trained model against randomized "
                                  f"(Heap et al. 2025); token in red, activation at left", by_state)
            files.append(p.name)
    return files


# ---------------------------------------------------------------------------------------------------- 3. control
def plot_control_forest(path: Path, title: str, rows: Sequence[Dict[str, Any]]) -> Path:
    """One panel per SAE: each (measure, site, control) difference trained - randomized with its 95 % CI, green
    where the CI excludes 0 (the measure separates them), red where it does not, grey where undefined."""
    plt = _plt()
    by: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(str(r.get("explainer")), []).append(r)
    names = list(by)
    height = max(len(v) for v in by.values())
    fig, axes = plt.subplots(1, len(names), figsize=(6.4 * len(names), 0.62 * height + 1.6), squeeze=False)
    color = {True: "#2e8b57", False: "#c0392b", None: "0.55"}
    for ax, name in zip(axes[0], names):
        labels = []
        for i, r in enumerate(by[name]):
            v = _num(r.get("value"))
            sep = r.get("separates")
            sep = sep if isinstance(sep, bool) else None
            measure = r.get("measure") or str(r.get("statistic", "")).replace("_difference", "")
            control = _after_bar(r.get("step")) or (r.get("control") if isinstance(r.get("control"), str) else "")
            site = r.get("site") or _site_of(r.get("step"))
            labels.append(_plain(f"{measure}\n{site} vs {control}"))
            if v is None:
                ax.text(0, i, " undefined", va="center", fontsize=7, color=color[None])
                continue
            lo, hi = _err(v, r.get("ci_low"), r.get("ci_high"))
            ax.errorbar([v], [i], xerr=[[lo], [hi]], fmt="o", color=color[sep], capsize=3)
            tr, co = _num(r.get("trained_mean", r.get("trained"))), _num(r.get("control_mean", r.get("control")))
            note = f"{v:+.3f}" + (f"\ntrained {tr:.3f}, control {co:.3f}" if tr is not None and co is not None
                                  else "")
            ax.annotate(note, (v, i), fontsize=6.5, xytext=(0, -5), textcoords="offset points", ha="center",
                        va="top")
        ax.axvline(0.0, color="black", lw=0.8, ls="--")
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_ylim(-0.6, len(labels) - 0.1)
        ax.invert_yaxis()
        ax.margins(x=0.3)
        ax.set_xlabel("trained - randomized (95% CI)")
        ax.set_title(_plain(name), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=color[k], label=t) for k, t in
               ((True, "separates (CI excludes 0)"), (False, "cannot separate"), (None, "undefined"))]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    return _save(fig, path)


def _draw_control(out_dir: Path, results: Dict[str, Any], extras: Dict[str, Any], ctx: Dict[str, Any]
                  ) -> List[str]:
    check = "sae_randomized_control"
    files = []
    rows = [s for s in _summaries(results, check) if str(s.get("statistic", "")).endswith("_difference")]
    if rows:
        p = plot_control_forest(out_dir / f"{check}_differences.png",
                                f"Randomized-model control on {ctx['model']}: does each interpretability measure "
                                "separate the trained model's SAE from the randomized models'?", rows)
        files.append(p.name)
    # per-latent token-identity share, trained against randomized: one figure per site, a panel per SAE
    by_site: Dict[str, Dict[str, Dict[str, Tensor]]] = {}
    for name in _sample_explainers(results, extras, check):
        for step in _sample_steps(results, extras, check, name):
            values = _series(results, name, check, step, "token_identity_share", extras)
            if values.numel():
                by_site.setdefault(_site_of(step), {}).setdefault(name, {})[_after_bar(step) or step] = values
    plt = _plt()
    for site, by_name in by_site.items():
        fig, axes = plt.subplots(1, len(by_name), figsize=(5.6 * len(by_name), 3.8), squeeze=False)
        drawn = 0
        for ax, (name, series) in zip(axes[0], by_name.items()):
            ordered = {s: series[s] for s in sorted(series, key=_state_key)}
            drawn += _hist_axes(ax, ordered, xlim=(0.0, 1.0))
            ax.set_xlabel("share of a latent's variance explained by the token's identity")
            ax.set_ylabel("latents")
            ax.set_title(_plain(name), fontsize=9)
        if not drawn:
            plt.close(fig)
            continue
        fig.suptitle(f"token-identity share per latent at {site}: trained against randomized (Heap et al. trace "
                     "random-model 'interpretability' to single-token features)", fontsize=9)
        fig.tight_layout()
        files.append(_save(fig, out_dir / f"{check}_share_{_slug(site)}.png").name)
    return files


# ---------------------------------------------------------------------------------------------------- 4. splitting
def _parent_entries(level: Dict[str, Any]) -> List[Tuple[int, List[Tuple[int, Optional[float]]]]]:
    """``[(parent, [(child, cosine), ...]), ...]`` of one level of a splitting tree, tolerant of its two shapes:
    children as ``[{"child", "similarity"}]`` (:func:`sanitycheck.metrics.sae.splitting_tree`) or as ints with a
    parallel ``cosines`` list; entries without a parent id are skipped."""
    out = []
    for p in (level or {}).get("parents") or []:
        if not isinstance(p, dict):
            continue
        pid = p.get("parent", p.get("latent"))
        if pid is None:
            continue
        cos = list(p.get("cosines") or p.get("similarities") or [])
        kids: List[Tuple[int, Optional[float]]] = []
        for i, k in enumerate(p.get("children") or []):
            if isinstance(k, dict):
                cid = k.get("child", k.get("latent"))
                sim = k.get("similarity", k.get("cosine"))
            else:
                cid, sim = k, cos[i] if i < len(cos) else None
            if cid is not None:
                kids.append((int(cid), _num(sim)))
        out.append((int(pid), kids))
    return out


def _level_order(levels: Dict[str, Any]) -> List[str]:
    """``x2->x4``, ``x4->x8``, ... sorted by the smaller expansion factor."""
    def key(s: str) -> Tuple[float, str]:
        m = re.match(r"x?(\d+(?:\.\d+)?)", s)
        return (float(m.group(1)) if m else math.inf, s)

    return sorted(levels, key=key)


def plot_splitting_tree(path: Path, title: str, levels: Dict[str, Any], *, threshold: Optional[float] = None,
                        max_roots: int = 8, max_children: int = 5, max_extra_roots: int = 4) -> Path:
    """A layered tree: the smallest dictionary's latents on the left, the latents they split into in each larger
    dictionary to the right (the children of one level are the parents of the next: x2 -> x4 -> x8), edges
    shaded by decoder cosine. Parents of a later level that are not children drawn are added as roots there."""
    plt = _plt()
    order = _level_order(levels)
    cols = [order[0].split("->")[0]] + [lv.split("->")[-1] for lv in order]
    entries = [dict((p, kids[:max_children]) for p, kids in _parent_entries(levels[lv])) for lv in order]
    # the forest: a node is (column, latent); roots are the first level's parents and unreached later parents
    children: Dict[Tuple[int, int], List[Tuple[Tuple[int, int], Optional[float]]]] = {}
    roots: List[Tuple[int, int]] = [(0, p) for p in list(entries[0])[:max_roots]]
    reached = set(roots)
    for c, level in enumerate(entries):
        col_nodes = [n for n in reached if n[0] == c]
        for node in col_nodes:
            for child, sim in level.get(node[1], []):
                children.setdefault(node, []).append(((c + 1, child), sim))
                reached.add((c + 1, child))
        if c > 0:
            extra = [(c, p) for p in level if (c, p) not in reached][:max_extra_roots]
            for node in extra:
                roots.append(node)
                reached.add(node)
                for child, sim in level[node[1]]:
                    children.setdefault(node, []).append(((c + 1, child), sim))
                    reached.add((c + 1, child))
    y: Dict[Tuple[int, int], float] = {}
    next_leaf = [0.0]

    def place(node: Tuple[int, int], seen: frozenset) -> float:
        kids = [k for k, _ in children.get(node, []) if k not in seen and k not in y]
        if not kids:
            y[node] = next_leaf[0]
            next_leaf[0] += 1.0
        else:
            ys = [place(k, seen | {node}) for k in kids]
            y[node] = sum(ys) / len(ys)
        return y[node]

    for r in roots:
        if r not in y:
            place(r, frozenset())
            next_leaf[0] += 0.6  # a gap between trees
    n_leaves = max(1.0, next_leaf[0])
    fig, ax = plt.subplots(figsize=(2.6 * len(cols) + 1.6, max(3.0, 0.24 * n_leaves + 1.2)))
    sims = [s for kids in children.values() for _, s in kids if s is not None]
    lo = threshold if threshold is not None else (min(sims) if sims else 0.0)
    norm = plt.Normalize(vmin=min(lo, 0.99), vmax=1.0)
    cmap = plt.get_cmap("viridis")
    for node, kids in children.items():
        for k, sim in kids:
            if node in y and k in y:
                ax.plot([node[0], k[0]], [y[node], y[k]], color=cmap(norm(sim)) if sim is not None else "0.6",
                        lw=1.6, zorder=1)
    for (c, latent), yy in y.items():
        ax.scatter([c], [yy], s=28, color="white", edgecolor="black", zorder=2)
        first, last = c == 0, c == len(cols) - 1
        ax.annotate(str(latent), (c, yy), fontsize=7, textcoords="offset points",
                    xytext=(-5, 0) if first else (5, 0) if last else (0, 4),
                    ha="right" if first else "left" if last else "center", va="center" if first or last else "bottom")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([f"{_plain(c)} dictionary" for c in cols], fontsize=8)
    ax.set_xlim(-0.6, len(cols) - 0.4)
    ax.set_ylim(n_leaves, -1.0)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, fraction=0.04, pad=0.02).set_label("decoder cosine (parent, child)", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _draw_splitting(out_dir: Path, results: Dict[str, Any], extras: Dict[str, Any], ctx: Dict[str, Any]
                    ) -> List[str]:
    check = "sae_splitting"
    fig_data = ((extras.get("text_checks") or {}).get(check) or {})
    threshold = _num(fig_data.get("threshold"))
    files = []
    for site, by_sae in (fig_data.get("trees") or {}).items():
        for name, levels in (by_sae or {}).items():
            levels = {lv: d for lv, d in (levels or {}).items() if _parent_entries(d)}
            if not levels:
                continue
            n_parents = [str((levels[lv] or {}).get("n_parents", "?")) for lv in _level_order(levels)]
            p = plot_splitting_tree(
                out_dir / f"{check}_tree_{_slug(site)}_{_slug(name)}.png",
                f"feature splitting of {name} at {site} (latents with most children; of "
                f"{' / '.join(n_parents)} parent latents; edges: cosine >= {_fmt(threshold)})", levels,
                threshold=threshold)
            files.append(p.name)
    # children per latent, per level: a figure per site, a panel per SAE
    by_site: Dict[str, Dict[str, Dict[str, Tensor]]] = {}
    for name in _sample_explainers(results, extras, check):
        for step in _sample_steps(results, extras, check, name):
            values = _series(results, name, check, step, "n_children", extras)
            if values.numel():
                by_site.setdefault(_site_of(step), {}).setdefault(name, {})[_after_bar(step) or step] = values
    plt = _plt()
    for site, by_name in by_site.items():
        fig, axes = plt.subplots(1, len(by_name), figsize=(5.2 * len(by_name), 3.6), squeeze=False)
        drawn = 0
        for ax, (name, series) in zip(axes[0], by_name.items()):
            drawn += _hist_axes(ax, series, integer=True)
            ax.set_xlabel("children in the larger dictionary (decoder cosine above threshold)")
            ax.set_ylabel("latents of the smaller")
            ax.set_title(_plain(name), fontsize=9)
        if not drawn:
            plt.close(fig)
            continue
        fig.suptitle(f"feature splitting at {site}: children per latent (alive latents)", fontsize=9)
        fig.tight_layout()
        files.append(_save(fig, out_dir / f"{check}_children_{_slug(site)}.png").name)
    return files


# ---------------------------------------------------------------------------------------------------- 5. baselines
def plot_auroc_bars(path: Path, title: str, rows: Sequence[Dict[str, Any]],
                    worse: Optional[Dict[Tuple[str, str], Dict[str, Any]]] = None) -> Path:
    """Grouped bars per concept: baselines on the raw activations (hatched, grey) and each SAE's best latent and
    k-sparse probe, with 95 % CI error bars and chance at 0.5; ``worse[(step, sae)]``: the probe-minus-best-baseline
    row, marking (▼) the probes significantly worse than the best baseline."""
    plt = _plt()
    concepts = list(dict.fromkeys(str(r.get("step")) for r in rows))
    saes = sorted({str(r["explainer"]) for r in rows if r.get("explainer") is not None})
    series: List[Tuple[Optional[str], str]] = [(None, m) for m in BASELINES
                                               if any(r.get("explainer") is None and r.get("method") == m
                                                      for r in rows)]
    series += [(None, m) for m in sorted({str(r.get("method")) for r in rows if r.get("explainer") is None})
               if (None, m) not in series]
    series += [(s, m) for s in saes for m in SAE_METHODS
               if any(r.get("explainer") == s and r.get("method") == m for r in rows)]
    series += [(s, m) for s in saes for m in sorted({str(r.get("method")) for r in rows if r.get("explainer") == s})
               if (s, m) not in series]
    table = {(str(r.get("step")), r.get("explainer"), str(r.get("method"))): r for r in rows}
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(series) * len(concepts) + 2.5) + 2.6, 4.6))
    tab = plt.get_cmap("tab10")
    greys = ["0.55", "0.8", "0.4", "0.7"]
    for j, (sae, method) in enumerate(series):
        xs, vs, errs = [], [], [[], []]
        for i, concept in enumerate(concepts):
            r = table.get((concept, sae, method))
            v = _num((r or {}).get("value"))
            if v is None:
                continue
            lo, hi = _err(v, r.get("ci_low"), r.get("ci_high"))
            xs.append(i - 0.4 + width * (j + 0.5))
            vs.append(v)
            errs[0].append(lo)
            errs[1].append(hi)
            if sae is not None and method == "k_sparse_probe" and (worse or {}).get((concept, sae), {}).get("worse"):
                ax.annotate("▼", (xs[-1], v + hi), fontsize=9, color="#c0392b", ha="center", va="bottom")
        if not xs:
            continue
        if sae is None:
            kw = dict(color=greys[j % len(greys)], hatch="//", edgecolor="black", label=f"{method} (raw)")
        else:
            c = tab(saes.index(sae) % 10)
            kw = dict(color=c, alpha=0.55 if method == "best_latent" else 0.95, edgecolor="black",
                      label=f"{_plain(sae)}: {method}")
        ax.bar(xs, vs, width * 0.95, yerr=errs, capsize=2, **kw)
    ax.axhline(0.5, color="black", ls="--", lw=0.8)
    ax.text(-0.45, 0.5, "chance", fontsize=7, va="bottom", ha="left")
    ax.set_xticks(range(len(concepts)))
    ax.set_xticklabels([_plain(_after_bar(c) or c) for c in concepts], fontsize=8, rotation=15)
    lows = [_num(r.get("ci_low")) for r in rows if _num(r.get("ci_low")) is not None]
    ax.set_ylim(min([0.4] + [v - 0.02 for v in lows]), 1.05)
    ax.set_ylabel("detection AUROC (test half, 95% CI)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _draw_baselines(out_dir: Path, results: Dict[str, Any], extras: Dict[str, Any], ctx: Dict[str, Any]
                    ) -> List[str]:
    check = "sae_baselines"
    rows = _summaries(results, check)
    aurocs = [r for r in rows if r.get("statistic") == "auroc"]
    worse = {(str(r.get("step")), str(r.get("explainer"))): r for r in rows
             if r.get("statistic") == "probe_minus_best_baseline"}
    files = []
    for site in dict.fromkeys(_site_of(r.get("step")) for r in aurocs):
        mine = [r for r in aurocs if _site_of(r.get("step")) == site]
        p = plot_auroc_bars(out_dir / f"{check}_auroc_{_slug(site)}.png",
                            f"concept detection at {site} on {ctx['model']}: SAE latents against baselines on the raw "
                            "activations\n(hatched: baselines; ▼: k-sparse probe significantly worse than the best "
                            "baseline)",
                            mine, worse)
        files.append(p.name)
    return files


# ---------------------------------------------------------------------------------------------------- 6. seeds
def _draw_seeds(out_dir: Path, results: Dict[str, Any], extras: Dict[str, Any], ctx: Dict[str, Any]) -> List[str]:
    check = "sae_seed_similarity"
    by_site: Dict[str, Dict[str, Tensor]] = {}
    for name in _sample_explainers(results, extras, check):
        for step in _sample_steps(results, extras, check, name):
            values = _series(results, name, check, step, "max_cosine", extras)
            if values.numel():
                by_site.setdefault(step, {})[name] = values
    plt = _plt()
    files = []
    for site, series in by_site.items():
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        if not _hist_axes(ax, series, xlim=(0.0, 1.0)):
            plt.close(fig)
            continue
        ax.axvline(SEED_SIMILARITY_REFERENCE, color="black", ls="--", lw=1)
        ax.text(SEED_SIMILARITY_REFERENCE, ax.get_ylim()[1] * 0.97, " Bricken et al. ≈ 0.7", fontsize=7, va="top")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("max cosine of a latent's decoder direction to another seed's dictionary")
        ax.set_ylabel("latents (alive)")
        ax.set_title(f"seed similarity at {site} on {ctx['model']}", fontsize=9)
        fig.tight_layout()
        files.append(_save(fig, out_dir / f"{check}_{_slug(site)}.png").name)
    return files


# ---------------------------------------------------------------------------------------------------- entry point
_DRAWERS: Dict[str, Sequence[Callable[..., List[str]]]] = {
    "sae_reconstruction": (_draw_frontier,),
    "sae_randomized_control": (_draw_contexts, _draw_control),
    "sae_splitting": (_draw_splitting,),
    "sae_baselines": (_draw_baselines,),
    "sae_seed_similarity": (_draw_seeds,),
}


def draw_sae(out_dir: Any, results: Dict[str, Any], fm: Optional[FigureMaps] = None) -> Dict[str, List[str]]:
    """Every figure of an SAE run into ``out_dir`` from its documents (``results`` and its figure maps ``fm``,
    which may be None: then the figures that need the checks' figure data are left out). A check the run did not
    compute, or whose data the documents lack, gets no figure. Returns ``{check: [file names]}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    checks, _ = _scope(results, fm)
    checks = [c for c in checks if c not in (results.get("not_applicable") or {})]
    extras = dict(fm.extras) if fm is not None else {}
    ctx = {"model": (results.get("model") or {}).get("name") or "the model",
           "n": (results.get("dataset") or {}).get("n")}
    out: Dict[str, List[str]] = {}
    for check in checks:
        files = [f for draw in _DRAWERS.get(check, ()) for f in draw(out_dir, results, extras, ctx)]
        if files:
            out[check] = files
    return out
