"""The leaderboard's PNG thumbnails, drawn with matplotlib's Agg backend from a result document.

``assets/<suite>/<method>_maps.png`` (:func:`render_maps_png`: image 0 of the cascading check, input,
original and every step; a token strip for text suites) and ``assets/<suite>/<method>_curves.png``
(:func:`render_curves_png`: verdict metric vs step per check, 95 % CI bands, threshold). No metadata
that changes between builds (no timestamp, no software version), so an unchanged board rebuilds to
identical bytes.
"""

from __future__ import annotations

import io
from typing import Any, Dict, Optional

from ..results import ORIGINAL_STEP, decode_array


CASCADING = "cascading_randomization"
MAPS_HEIGHT_IN = 1.25   # x 100 dpi = 125 px
CURVES_SIZE_IN = (3.2, 2.0)  # x 100 dpi = 320 x 200 px
DPI = 100


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def maps_check(doc: Dict[str, Any]) -> Optional[str]:
    """The check whose maps the thumbnail shows: the cascading check, else the first with examples."""
    explainer = next(iter(doc["explainers"]))
    have = doc.get("examples", {}).get("explainers", {}).get(explainer, {})
    if CASCADING in have:
        return CASCADING
    return next((c for c in doc["checks"] if c in have), None)


def render_maps_png(doc: Dict[str, Any]) -> Optional[bytes]:
    """A strip: input image 0, then |map| of the original model and of every step of the cascading check.

    Each |map| is divided by its own 99th percentile and clipped to [0, 1], as in the run figures.
    """
    import numpy as np

    check = maps_check(doc)
    if check is not None and doc.get("examples", {}).get("text"):
        return render_token_maps_png(doc, check)
    image = doc.get("examples", {}).get("image")
    if check is None or image is None:
        return None
    explainer = next(iter(doc["explainers"]))
    maps = doc["examples"]["explainers"][explainer][check]
    steps = [ORIGINAL_STEP] + [s for s in doc["checks"][check]["steps"] if s in maps and s != ORIGINAL_STEP]
    img = decode_array(image)
    if img.ndim == 3 and img.shape[0] == 1:
        img, cmap = img[0], "gray"
    elif img.ndim == 3 and img.shape[0] in (3, 4):
        lo, hi = float(img.min()), float(img.max())
        img = np.transpose(img[:3], (1, 2, 0))
        img, cmap = (img if lo >= 0 and hi <= 1 else (img - lo) / max(hi - lo, 1e-12)), None
    elif img.ndim in (1, 2):
        img, cmap = img.reshape(1, -1) if img.ndim == 1 else img, "gray"
    else:
        return None
    panels = [("input", img, cmap)]
    for step in steps:
        m = np.abs(decode_array(maps[step]))
        if m.ndim == 3:
            m = m.sum(0)
        if m.ndim == 1:  # token maps: one row
            m = m.reshape(1, -1)
        if m.ndim != 2:
            return None
        scale = max(float(np.quantile(m, 0.99)), 1e-12)
        panels.append((step, np.clip(m / scale, 0, 1), "gray"))
    plt = _plt()
    side = MAPS_HEIGHT_IN - 0.3
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels) + 0.05 * (len(panels) + 1), MAPS_HEIGHT_IN),
                             squeeze=False)
    for ax, (label, arr, cm) in zip(axes[0], panels):
        kw = {"vmin": 0, "vmax": 1} if label != "input" else {}
        ax.imshow(arr, cmap=cm, interpolation="nearest", aspect="auto" if arr.shape[0] < 4 else "equal", **kw)
        ax.set_title(label if len(label) <= 12 else label[:11] + "…", fontsize=7, pad=2)
        ax.set_xticks([]), ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(label == "input")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.82, wspace=0.06)
    data = _png(fig)
    plt.close(fig)
    return data


def render_token_maps_png(doc: Dict[str, Any], check: str) -> Optional[bytes]:
    """Text 0 of a text suite, one row per state: |importance| of each token, original then every step."""
    from .text_figures import _draw_tokens

    explainer = next(iter(doc["explainers"]))
    maps = doc["examples"]["explainers"][explainer][check]
    steps = [ORIGINAL_STEP] + [s for s in doc["checks"][check]["steps"] if s in maps and s != ORIGINAL_STEP]
    tokens = list(doc["examples"]["text"])
    plt = _plt()
    fig, axes = plt.subplots(len(steps), 1, figsize=(5.2, 0.22 * len(steps) + 0.1), squeeze=False)
    fig.subplots_adjust(left=0.2, right=0.99, bottom=0.01, top=0.99, hspace=0.1)
    for ax, step in zip(axes[:, 0], steps):
        _draw_tokens(ax, tokens, decode_array(maps[step]).reshape(-1).tolist(), max_tokens=14, fontsize=6)
        ax.text(-0.01, 0.5, step if len(step) <= 14 else step[:13] + "…", fontsize=5, va="center", ha="right",
                transform=ax.transAxes)
    data = _png(fig)
    plt.close(fig)
    return data


def render_curves_png(doc: Dict[str, Any]) -> Optional[bytes]:
    """Verdict metric vs step (0 = original) per check, with 95 % CI bands and the threshold(s)."""
    explainer = next(iter(doc["explainers"]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=CURVES_SIZE_IN)
    colors = plt.get_cmap("tab10")
    control = doc["explainers"][explainer].get("requires_model") is False
    thresholds, metrics, most = set(), set(), 0
    drawn = False
    candidates = 0  # checks with a curve to draw (text checks with single-step scores have none)
    # a state check without a verdict rule (noise ceiling, n-vs-2n convergence) is one measurement beside the
    # curves, not a curve: the board shows it in the table
    drawable = {c: info for c, info in doc["checks"].items()
                if info.get("kind") == "evaluation" or info.get("verdict_rule")}
    evaluation_only = all(info.get("kind") == "evaluation" for info in drawable.values())
    for i, (check, info) in enumerate(drawable.items()):
        if info.get("kind") == "evaluation":
            # a score's curve (e.g. probability vs deletion step), when it has one
            curve = [r for r in doc["records"] if r["explainer"] == explainer and r["check"] == check
                     and r["step"].isdigit()]
            if not curve:
                continue
            candidates += 1
            metric = curve[0]["metric"]
            by_step = {r["step"]: r for r in curve}
            labels = [s for s in info["steps"] if s.isdigit()]
            rule = {"threshold": None}
        else:
            candidates += 1
            rule = info["verdict_rule"]
            metric = rule["metric"]
            by_step = {r["step"]: r for r in doc["records"]
                       if r["explainer"] == explainer and r["check"] == check and r["metric"] == metric}
            labels = [ORIGINAL_STEP] + list(info["steps"])
        most = max(most, len(labels))
        xs, ys, lo, hi = [], [], [], []
        for j, step in enumerate(labels):
            r = by_step.get(step)
            if r is not None and r["mean"] is not None:
                xs.append(j), ys.append(r["mean"])
                lo.append(r["ci_low"] if r["ci_low"] is not None else r["mean"])
                hi.append(r["ci_high"] if r["ci_high"] is not None else r["mean"])
        if not xs:
            continue
        drawn = True
        color = colors(i % 10)
        ax.plot(xs, ys, "--" if control else "-", marker="o", ms=2.5, lw=1.2, color=color,
                label=check.replace("_randomization", ""))
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
        if rule["threshold"] is not None:
            thresholds.add(float(rule["threshold"]))
        metrics.add(metric)
    if not candidates:
        plt.close(fig)
        return None
    for t in sorted(thresholds):
        ax.axhline(t, color="k", lw=0.8, ls=":", label=f"threshold {t:g}")
    if not drawn:
        ax.text(0.5, 0.5, "no defined scores", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    if evaluation_only:
        ticks = list(range(0, max(most, 1), max(1, most // 7)))
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(k) for k in ticks], fontsize=6)
    else:
        ax.set_xticks(range(max(most, 1)))
        ax.set_xticklabels(["orig"] + [str(k) for k in range(1, max(most, 1))], fontsize=6)
    ax.tick_params(axis="y", labelsize=6)
    ax.set_xlabel("perturbation step" if evaluation_only else "randomization step", fontsize=6, labelpad=1)
    ax.set_ylabel(" / ".join(sorted(metrics)) or "similarity", fontsize=6, labelpad=1)
    ax.set_ylim(-0.25, 1.05)
    ax.grid(alpha=0.3, lw=0.5)
    if drawn or thresholds:
        ax.legend(fontsize=5.5, loc="best", frameon=True, framealpha=0.8, handlelength=1.5,
                  borderpad=0.3, labelspacing=0.2)
    fig.subplots_adjust(left=0.14, right=0.98, bottom=0.17, top=0.97)
    data = _png(fig)
    plt.close(fig)
    return data
