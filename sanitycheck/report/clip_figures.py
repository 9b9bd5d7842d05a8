"""Figures of CLIP text-to-image saliency: each method's map for two queries on a few scenes (computed at run
time by :func:`clip_query_maps`, kept in the run's figure maps, drawn with the other figures of a CLIP suite's
run by :func:`write_clip_figures`), and the maps of one image and one query (the
``sanitycheck clip-saliency`` command).

Maps are drawn as ``|map|`` divided by its own 99th percentile and clipped to [0, 1] (as the run's
other figures: scales differ by orders of magnitude between methods), as a heat map over the
dimmed image; the queried item's box, where known, is outlined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..targets import ClassTarget

__all__ = ["display_map", "plot_query_maps", "clip_query_maps", "write_clip_figures", "save_overlay_png",
           "plot_method_grid"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def display_map(m: Tensor) -> Tensor:
    """``|m|`` scaled by its 99th percentile, clipped to [0, 1] (float32, CPU)."""
    m = m.detach().to("cpu", torch.float32).abs()
    scale = max(float(torch.quantile(m.flatten(), 0.99)), 1e-12)
    return (m / scale).clamp(0, 1)


def _rgb(image: Tensor):
    x = image.detach().to("cpu", torch.float32)
    if x.dim() == 3 and x.shape[0] in (1, 3):
        x = x.expand(3, -1, -1) if x.shape[0] == 1 else x
        return x.permute(1, 2, 0).clamp(0, 1).numpy()
    return x.clamp(0, 1).numpy()


def _overlay(ax, image: Tensor, m: Optional[Tensor], box: Optional[Sequence[int]] = None, alpha: float = 0.6) -> None:
    ax.imshow(_rgb(image) * (0.55 if m is not None else 1.0), vmin=0, vmax=1)
    if m is not None:
        ax.imshow(display_map(m).numpy(), cmap="inferno", vmin=0, vmax=1, alpha=alpha)
    if box is not None and min(box) >= 0:
        from matplotlib.patches import Rectangle

        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="#37d67a", lw=1.1))
    ax.set_xticks([]), ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def plot_query_maps(path: Path, title: str, images: Tensor, rows: List[Dict[str, Any]],
                    maps: Dict[str, Tensor]) -> Path:
    """One row per (scene, query), one column per method after the image.

    ``rows[r]``: ``{"image": index into images, "label": str, "box": (x0, y0, x1, y1) or None}``;
    ``maps[name]``: ``(len(rows), H, W)``.
    """
    plt = _plt()
    names = list(maps)
    cols = 1 + len(names)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.15 * cols + 1.6, 1.2 * len(rows) + 0.9), squeeze=False)
    for r, row in enumerate(rows):
        img = images[row["image"]]
        _overlay(axes[r, 0], img, None, row.get("box"))
        axes[r, 0].set_ylabel(row["label"], rotation=0, ha="right", va="center", fontsize=7)
        for c, name in enumerate(names, start=1):
            _overlay(axes[r, c], img, maps[name][r], row.get("box"))
    for c, label in enumerate(["scene", *names]):
        axes[0, c].set_title(label, fontsize=7, rotation=30 if len(label) > 9 else 0)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _other_item(classes: Tensor, caption_cell: int) -> Optional[int]:
    """The cell of the first occupied cell (row-major) other than the captioned one."""
    for cell in range(classes.shape[0]):
        if cell != caption_cell and int(classes[cell]) >= 0:
            return cell
    return None


def clip_query_maps(model: Any, explainers: Dict[str, Any], x: Tensor, dataset: Any, k: int) -> Dict[str, Any]:
    """The figure data of ``clip_query_maps.png``, computed with the model at run time: for the first ``k``
    scenes, each explainer's map by ``model`` for the captioned item's prompt and for another item present in
    the scene. Returns ``{"images": (R, C, H, W), "rows": [{"image", "label", "box"}], "maps": {name: (R, H, W)}}``
    (one entry of ``rows`` per scene and query), or ``{}`` when the dataset has no scene ground truth."""
    from ..errors import SanityCheckError
    from ..data.scenes import scene_truth

    try:
        truth = scene_truth(dataset, len(x), who="the CLIP query figure")
    except SanityCheckError:
        return {}
    prompts = list(getattr(dataset, "classes", []) or [])
    rows, image_index, classes = [], [], []
    for i in range(min(k, len(x))):
        cap = int(truth.caption_cell[i])
        for cell, kind in ((cap, "caption"), (_other_item(truth.classes[i], cap), "other item")):
            if cell is None:
                continue
            c = int(truth.classes[i, cell])
            text = prompts[c] if c < len(prompts) else f"prompt {c}"
            rows.append({"image": len(image_index), "label": f"{text}\n({kind})", "box": truth.boxes[i, cell].tolist()})
            image_index.append(i)
            classes.append(c)
    if not rows:
        return {}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    xq = x[image_index].to(device)
    target = ClassTarget(torch.tensor(classes))
    maps = {name: explainer(model, xq, target).to("cpu", torch.float32) for name, explainer in explainers.items()}
    return {"images": x[image_index].detach().cpu(), "rows": rows, "maps": maps}


def write_clip_figures(out_dir: Path, results: Dict[str, Any], figure_maps: Any) -> Dict[str, List[str]]:
    """``clip_query_maps.png`` in ``out_dir`` from the run's documents: the two-query maps that
    :func:`clip_query_maps` stored in the figure maps' ``extras["clip_queries"]``. Returns
    ``{"clip_queries": [file]}`` (nothing when the run stored none)."""
    query = (figure_maps.extras if figure_maps is not None else {}).get("clip_queries")
    if not query or not query.get("rows"):
        return {}
    model_name = (results.get("model") or {}).get("name")
    path = plot_query_maps(Path(out_dir) / "clip_query_maps.png",
                           f"{results.get('suite')}: maps of {model_name} for the caption and another item "
                           "(|map| scaled by its 99th percentile; box: the queried item)",
                           query["images"], query["rows"], query["maps"])
    return {"clip_queries": [path.name]}


# --------------------------------------------------------------------------- one image, one query


def _resize_for_display(image: Tensor, m: Optional[Tensor], size: int) -> Tuple[Tensor, Optional[Tensor]]:
    import torch.nn.functional as F

    img = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0]
    if m is None:
        return img, None
    mm = F.interpolate(m[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return img, mm


def save_overlay_png(path: Path, image: Tensor, m: Tensor, size: int, title: Optional[str] = None) -> Path:
    """``image`` (3, H, W) in [0, 1] with ``|m|`` (H, W) as a heat map over it, drawn at ``size`` x ``size`` pixels."""
    plt = _plt()
    img, mm = _resize_for_display(image, m, size)
    dpi = 100
    fig = plt.figure(figsize=(size / dpi, size / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    _overlay(ax, img, mm)
    if title:
        ax.text(0.02, 0.02, title, transform=ax.transAxes, fontsize=max(5, size // 40), color="white",
                va="bottom", ha="left", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_method_grid(path: Path, image: Tensor, maps: Dict[str, Tensor], query: str, size: int,
                     subtitle: Optional[str] = None, title: Optional[str] = None) -> Path:
    """The image and each method's map over it, one panel each, ``size`` pixels per panel side; titled
    ``title`` (default ``query: '<query>'``) and ``subtitle``."""
    plt = _plt()
    names = list(maps)
    n = 1 + len(names)
    cols = min(n, 5)
    rows = -(-n // cols)
    panel = max(size / 100.0, 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols, panel * rows + 0.6), squeeze=False)
    img, _ = _resize_for_display(image, None, size)
    _overlay(axes[0, 0], img, None)
    axes[0, 0].set_title("image", fontsize=8)
    for j, name in enumerate(names, start=1):
        ax = axes[j // cols, j % cols]
        im, mm = _resize_for_display(image, maps[name], size)
        _overlay(ax, im, mm)
        ax.set_title(name, fontsize=8)
    for j in range(n, rows * cols):
        axes[j // cols, j % cols].axis("off")
    title = f"query: {query!r}" if title is None else title
    fig.suptitle(title + (f" — {subtitle}" if subtitle else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
