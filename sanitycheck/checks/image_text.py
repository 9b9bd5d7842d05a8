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

from ..data.scenes import scene_truth
from ..errors import ConfigError, ModelError
from ..metrics.localization import PointingGameScores
from ..seeding import generator, sample_keys
from ..targets import ClassTarget, Target
from .base import DATASET, MODEL_STATES, ModelState
from .evaluation import DatasetEvaluationCheck
from .refined import RandomLogit

__all__ = ["TextRandomization", "PointingGame", "unrelated_classes"]



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

    needs = frozenset({MODEL_STATES, DATASET})

    def state_target(self, ctx: Any) -> Target:
        return self.transform_target(ctx.target, ctx.logits, seed=ctx.seed, x=ctx.x, dataset=ctx.dataset)

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


class PointingGame(DatasetEvaluationCheck):
    """The pointing game and energy pointing game (:class:`~sanitycheck.metrics.localization.PointingGameScores`)
    of every explainer's trained-model maps on the captioned item's box; needs the scenes' ground truth."""

    metric_class = PointingGameScores
