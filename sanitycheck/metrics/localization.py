"""Localization metrics of saliency maps against ground-truth boxes, per sample and batched.

* :func:`pointing_game` — Zhang et al. 2018 ("Top-down Neural Attention by Excitation Backprop"):
  a hit when the map's maximum falls inside the queried item's box (optionally grown by
  ``tolerance`` pixels). Ties among maximal pixels count fractionally: the score is the share of
  the maximal pixels that lie in the box (1 or 0 when the maximum is unique), so a map cannot win by
  being flat. A constant map (including all-zero) has no maximum to point with: its score is NaN
  (undefined, reported as such — not a miss).
* :func:`energy_pointing_game` — Wang et al. 2020 (Score-CAM): the share of the map's positive
  energy Σ max(m, 0) that lies inside the box. NaN when the map has no positive value.
  Signed maps (gradients) should be passed as ``maps.abs()`` when magnitude is what they mean;
  the choice is the caller's, recorded with the results.
* :func:`chance_levels` — what a map that knows nothing scores: the pointing game of a random
  argmax is the box's share of the image (``area``); choosing a random *cell* of the grid is
  right 1/n_cells of the time (``cell``).
* :func:`random_maps_baseline` — both games on uniform-noise maps (seeded), as an empirical check.

Boxes are ``(B, 4)`` integer ``x0, y0, x1, y1`` pixel coordinates, end exclusive (as in
:class:`~sanitycheck.data.scenes.ClipScenes`).
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

from ..errors import ConfigError
from ..seeding import generator
from .base import Evaluation, FaithfulnessFamily

ZHANG_2018 = "Zhang, Bargal, Lin, Brandt, Shen & Sclaroff, Top-down Neural Attention by Excitation Backprop, IJCV 2018"
WANG_2020 = "Wang et al., Score-CAM: Score-Weighted Visual Explanations for CNNs, CVPR workshops 2020"

__all__ = ["box_masks", "pointing_game", "energy_pointing_game", "chance_levels", "random_maps_baseline",
           "localization_report"]


def _maps(maps: Tensor) -> Tensor:
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise ConfigError(f"maps must be (B, H, W) or (B, 1, H, W), got shape {tuple(maps.shape)}")
    return maps.detach().to(torch.float64)


def box_masks(boxes: Tensor, height: int, width: int, tolerance: int = 0) -> Tensor:
    """(B, H, W) bool: pixels inside each box grown by ``tolerance`` pixels on every side."""
    boxes = torch.as_tensor(boxes)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ConfigError(f"boxes must be (B, 4) x0, y0, x1, y1, got shape {tuple(boxes.shape)}")
    if bool((boxes < 0).any()):
        raise ConfigError("boxes contain negative coordinates (an empty cell's -1?); pass the queried items' boxes")
    b = boxes.long()
    ys = torch.arange(height, device=b.device)[None, :, None]
    xs = torch.arange(width, device=b.device)[None, None, :]
    t = int(tolerance)
    return ((ys >= b[:, 1, None, None] - t) & (ys < b[:, 3, None, None] + t)
            & (xs >= b[:, 0, None, None] - t) & (xs < b[:, 2, None, None] + t))


def pointing_game(maps: Tensor, boxes: Tensor, tolerance: int = 0) -> Tensor:
    """(B,) float64: 1 when the maximum is in the box, 0 when not, the in-box share of tied maxima,
    NaN for a constant map."""
    m = _maps(maps)
    b, h, w = m.shape
    inside = box_masks(torch.as_tensor(boxes).to(m.device), h, w, tolerance)
    if inside.shape[0] != b:
        raise ConfigError(f"{b} maps but {inside.shape[0]} boxes")
    flat = m.flatten(1)
    top = flat.amax(1, keepdim=True)
    is_max = flat == top
    score = (is_max & inside.flatten(1)).sum(1).double() / is_max.sum(1).double()
    constant = flat.amin(1) == flat.amax(1)
    return torch.where(constant, torch.full_like(score, float("nan")), score)


def energy_pointing_game(maps: Tensor, boxes: Tensor) -> Tensor:
    """(B,) float64: Σ_box max(m, 0) / Σ max(m, 0); NaN when the map has no positive value."""
    m = _maps(maps)
    b, h, w = m.shape
    inside = box_masks(torch.as_tensor(boxes).to(m.device), h, w)
    if inside.shape[0] != b:
        raise ConfigError(f"{b} maps but {inside.shape[0]} boxes")
    pos = m.clamp(min=0).flatten(1)
    total = pos.sum(1)
    share = (pos * inside.flatten(1)).sum(1) / total.clamp(min=torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, share, torch.full_like(share, float("nan")))


def chance_levels(boxes: Tensor, height: int, width: int, n_cells: int = 4) -> Dict[str, float]:
    """``area``: mean box share of the image (random argmax / uniform energy); ``cell``: 1 / n_cells."""
    inside = box_masks(boxes, height, width)
    return {"area": float(inside.flatten(1).double().mean(1).mean()), "cell": 1.0 / n_cells}


def random_maps_baseline(boxes: Tensor, height: int, width: int, seed: int = 0) -> Dict[str, float]:
    """Mean pointing game and energy pointing game of uniform-noise maps (generator from ``seed``)."""
    boxes = torch.as_tensor(boxes)
    maps = torch.rand(boxes.shape[0], height, width, generator=generator(seed, "random_maps_baseline"))
    return {"pointing_game": float(pointing_game(maps, boxes).nanmean()),
            "energy_pointing_game": float(energy_pointing_game(maps, boxes).nanmean())}


def localization_report(model, scenes, explainers, *, batch_size: int = 32, n: int = None,
                        progress: bool = False) -> Dict[str, Dict[str, float]]:
    """Pointing game and energy pointing game of each explainer on ``scenes`` (the first ``n``).

    ``model`` is a :class:`~sanitycheck.models.clip.ClipSimilarity` over :func:`~sanitycheck.data.scenes.class_prompts`;
    the target of scene i is its captioned item's class (unique in the scene, so the prompt names
    that item) and the ground truth its box. Each method is scored on its maps as returned and on
    their absolute values (``*_abs``); NaN scores (constant maps / no positive energy) are left out
    of the means and counted in ``undefined``. Also returns ``chance`` and ``random`` entries.
    """
    import time

    scenes = scenes if n is None else scenes.head(n)
    boxes = scenes.caption_boxes
    targets = scenes.caption_classes
    h = w = scenes.image_size
    out: Dict[str, Dict[str, float]] = {}
    for name, explainer in explainers.items():
        start = time.perf_counter()
        maps = []
        for i in range(0, len(scenes), batch_size):
            sl = slice(i, i + batch_size)
            maps.append(explainer(model, scenes.image_batch(sl).contiguous(), targets[sl]).cpu())
        maps_t = torch.cat(maps)
        row: Dict[str, float] = {"seconds": round(time.perf_counter() - start, 2)}
        for suffix, m in (("", maps_t), ("_abs", maps_t.abs())):
            pg, epg = pointing_game(m, boxes), energy_pointing_game(m, boxes)
            row[f"pointing{suffix}"] = float(pg.nanmean())
            row[f"energy{suffix}"] = float(epg.nanmean())
            row[f"undefined{suffix}"] = int(pg.isnan().sum() + epg.isnan().sum())
        out[name] = row
        if progress:
            print(name, row, flush=True)
    out["chance"] = chance_levels(boxes, h, w)
    out["random"] = random_maps_baseline(boxes, h, w)
    return out


class PointingGameScores(FaithfulnessFamily):
    """Pointing game and energy pointing game of the trained model's maps on the captioned item's box.

    Per image (``step`` ``"score"``): ``pointing`` — 1 when the map's maximum lies in the box (the
    in-box share of tied maxima; NaN for a constant map), and ``energy_pointing`` — the share of the
    map's positive mass inside the box (NaN without positive values); see
    :mod:`sanitycheck.metrics.localization`. ``absolute=True`` scores ``|map|`` instead of the signed map
    (signed by default: a positive value is evidence *for* the query for every built-in CLIP method;
    occlusion's negative values are regions whose removal *raises* the similarity, often another item).
    ``tolerance`` grows the box by that many pixels for the pointing game (Zhang et al. use 15 px on
    224 px images). Higher is better.

    Notes (recorded per explainer): ``chance_cell`` = mean over images of 1 / occupied cells (pointing
    at a random item), ``chance_area`` = mean box share of the image (a random pixel; the energy share
    of a uniform map), and ``random_maps`` = both games on seeded uniform-noise maps.
    """

    name = "pointing_game"
    higher_is_better = {"pointing": True, "energy_pointing": True}
    description = "does the map's maximum (and its positive mass) fall on the captioned item's box?"
    reference = f"{ZHANG_2018}; {WANG_2020}"

    def __init__(self, absolute: bool = False, tolerance: int = 0):
        if not (isinstance(tolerance, int) and not isinstance(tolerance, bool) and tolerance >= 0):
            raise ConfigError(f"pointing_game: tolerance must be a non-negative integer (pixels), got {tolerance!r}")
        self.absolute, self.tolerance = bool(absolute), tolerance

    def config(self) -> Dict[str, Any]:
        return {"absolute": self.absolute, "tolerance": self.tolerance, "box": "the captioned item's 28x28 box"}

    def evaluate(self, model, x: Tensor, target, maps: Tensor, *, seed: int, dataset: Any = None) -> Evaluation:
        if dataset is None:
            raise ConfigError("pointing_game needs the run's dataset (the captioned item's box of each scene); run it "
                              "through sanitycheck's runner, or call evaluate(..., dataset=...)")
        n = x.shape[0]
        if maps.shape[0] != n:
            raise ConfigError(f"pointing_game: {maps.shape[0]} maps for {n} images")
        from ..data.scenes import scene_truth

        truth = scene_truth(dataset, n, who="pointing_game")
        classes = getattr(target, "per_sample", None)
        if classes and torch.is_tensor(classes[0]) and not torch.equal(classes[0].cpu().long(), truth.caption_classes):
            raise ConfigError("pointing_game scores the captioned item's box, but the explained prompts are not the "
                              "captions' (suite target must be 'label')")
        boxes = truth.caption_boxes
        m = maps.detach().cpu().double()
        if self.absolute:
            m = m.abs()
        h, w = m.shape[-2:]
        pg = pointing_game(m, boxes, self.tolerance)
        epg = energy_pointing_game(m, boxes)
        area = box_masks(boxes, h, w).flatten(1).double().mean(1)
        notes = {
            "chance_cell": float((1.0 / truth.n_items.double()).mean()),
            "chance_area": float(area.mean()),
            "random_maps": random_maps_baseline(boxes, h, w, seed=seed),
            "undefined_pointing": int(pg.isnan().sum()),
            "undefined_energy_pointing": int(epg.isnan().sum()),
            "maps": "|map|" if self.absolute else "signed map",
        }
        return Evaluation(scores={"pointing": pg, "energy_pointing": epg}, curve=None, summary_step="score",
                          notes=notes)
