"""Checks of CLIP text-to-image saliency that need the scenes' ground truth.

* :class:`TextRandomization` — the text-side counterpart of the random-logit test (Sixt et al.
  2020): the map for the true caption's prompt is compared with the map, by the same trained
  model, for an *unrelated* prompt — one naming a class that is **absent** from the scene, drawn
  per image from the run seed. A map that explains the query must change when the query names
  nothing in the image; a map that only shows "where the objects are" (attention rollout is
  class-agnostic by construction; edge detectors and Gradient × Input are dominated by the image)
  stays the same. Registered as ``text_randomization``; decide with ``spearman_abs`` below a
  threshold, like ``random_logit``.
* :class:`PointingGame` — the pointing game (Zhang et al. 2018) and the energy-based pointing game
  (Wang et al. 2020, Score-CAM) of the trained model's maps against the captioned item's box, per
  image, as a faithfulness-style family (no model states). The chance levels are recorded in the
  notes of each explainer: pointing at a random occupied cell (mean of 1 / items in the scene),
  the box-area baseline (a random pixel, or a uniform map's energy share) and the scores of
  seeded uniform-noise maps.

Both read the ground truth from the run's dataset (:func:`sanitycheck.data.scenes.scene_truth`):
the runner passes ``dataset=`` to ``transform_target`` and ``evaluate`` when they accept it.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import Tensor, nn

from ..checks.base import ModelState
from ..checks.refined import RandomLogit
from ..errors import ConfigError, ModelError
from ..metrics.base import Evaluation, FaithfulnessFamily
from ..seeding import generator, sample_keys
from ..targets import ClassTarget, Target
from ..data.scenes import scene_truth
from ..metrics.localization import box_masks, energy_pointing_game, pointing_game, random_maps_baseline

__all__ = ["TextRandomization", "PointingGame", "unrelated_classes"]

ZHANG_2018 = "Zhang, Bargal, Lin, Brandt, Shen & Sclaroff, Top-down Neural Attention by Excitation Backprop, IJCV 2018"
WANG_2020 = "Wang et al., Score-CAM: Score-Weighted Visual Explanations for CNNs, CVPR workshops 2020"


def unrelated_classes(present: Tensor, keys: List[str], *, seed: int) -> Tensor:
    """For each scene, a class that is NOT in it, uniform over the absent classes.

    ``present`` (n, n_classes) bool; ``keys`` per-sample content hashes
    (:func:`sanitycheck.seeding.sample_keys`). Scene ``i``'s draw comes from a generator seeded from
    ``(seed, "text_randomization", keys[i])``: it depends only on the seed and that image, not on the
    batch it is in. Raises ConfigError when a scene holds every class.
    """
    present = torch.as_tensor(present, dtype=torch.bool)
    if len(keys) != present.shape[0]:
        raise ConfigError(f"text_randomization: {len(keys)} sample keys for {present.shape[0]} scenes")
    out = []
    for i, key in enumerate(keys):
        absent = (~present[i]).nonzero().flatten()
        if absent.numel() == 0:
            raise ConfigError(f"text_randomization: scene {i} contains every one of the {present.shape[1]} classes; "
                              "no prompt names something absent from it")
        r = int(torch.randint(0, absent.numel(), (), generator=generator(seed, "text_randomization", key)))
        out.append(int(absent[r]))
    return torch.tensor(out, dtype=torch.long)


class TextRandomization(RandomLogit):
    """Text randomization: explain, with the trained model, a prompt naming a class absent from the scene.

    One state, ``"unrelated_prompt"``: the trained model itself (a deep copy). Its maps are computed
    for the target :meth:`transform_target` returns: per image a prompt index whose class is not in
    the scene (uniform over the absent classes; seeded per image content), so the query names
    nothing in the image. The similarity of these maps to the maps of the true caption's prompt
    should be LOW for an explainer that explains the query. Differs from ``random_logit`` in that
    the other class is never one of the scene's other items (whose map would legitimately point
    elsewhere *in* the image); needs the scenes' ground truth, from the run's dataset.
    """

    name = "text_randomization"
    description = ("Explain, with the same trained CLIP, a prompt naming a class absent from the scene; a map that "
                   "explains the query should change (the text-side random-logit test).")
    reference = ("after Sixt, Granz & Landgraf 2020 (random logit), ICML; the query replaced by a prompt naming "
                 "nothing in the image")
    STEP = "unrelated_prompt"

    def __init__(self) -> None:
        super().__init__(n_classes=None)

    def config(self) -> Dict[str, Any]:
        return {"other_prompt": "uniform over the classes absent from the scene, seeded per image"}

    def steps(self, model: nn.Module, example_input: Tensor) -> List[str]:
        return [self.STEP]

    def states(self, model: nn.Module, *, seed: int, example_input: Tensor,
               context: Optional[Dict[str, Any]] = None) -> Iterator[ModelState]:
        yield ModelState(self.STEP, copy.deepcopy(model),
                         {"target": "a prompt naming a class absent from the scene (uniform over the absent classes)"})

    def transform_target(self, target: Target, logits: Tensor, *, seed: int, x: Optional[Tensor] = None,
                         dataset: Any = None) -> Target:
        """A :class:`ClassTarget` of unrelated prompts (same ``softmax`` flag as ``target``)."""
        base = target
        while not isinstance(base, ClassTarget) and isinstance(getattr(base, "base", None), Target):
            base = base.base
        if not isinstance(base, ClassTarget):
            raise ConfigError(f"text_randomization needs class (prompt index) targets, got {type(target).__name__}")
        if dataset is None:
            raise ConfigError("text_randomization needs the run's dataset (the classes present in each scene); "
                              "run it through sanitycheck's runner, or call transform_target(..., dataset=...)")
        if logits.ndim != 2:
            raise ModelError(f"text_randomization expects model output (batch, prompts), got {tuple(logits.shape)}")
        n = len(target)
        truth = scene_truth(dataset, n, who="text_randomization")
        present = truth.present()
        if present.shape[1] > logits.shape[1]:
            raise ConfigError(f"text_randomization: the scenes have {present.shape[1]} classes but the model scores "
                              f"only {logits.shape[1]} prompts")
        explained = target.per_sample[0].cpu()
        if not bool(present[torch.arange(n), explained].all()):
            bad = (~present[torch.arange(n), explained]).nonzero().flatten()[:5].tolist()
            raise ConfigError(f"text_randomization: the explained prompt of samples {bad} names a class absent from "
                              "the scene; explain the caption (suite target: label)")
        content = x if x is not None else logits
        others = unrelated_classes(present, sample_keys(content[:n]), seed=seed)
        return ClassTarget(others.to(explained.device), softmax=base.softmax)


class PointingGame(FaithfulnessFamily):
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
