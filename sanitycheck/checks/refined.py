"""Refinements of the randomization checks.

* :class:`RandomLogit` — Sixt, Granz, Landgraf, "When Explanations Lie: Why Many Modified BP
  Attributions Fail", ICML 2020 (the random-logit test): the map explaining a *different*,
  randomly chosen class should differ from the map of the explained class. A class-insensitive
  explainer (one that explains the input, not the decision) gives nearly the same map.
* :class:`SmoothMPRT` and :class:`EfficientMPRT` — Hedström, Weber, Bareeva, Krakowczyk, Motzkus,
  Samek, Lapuschkin, Höhne, "Sanity Checks Revisited: An Exploration to Repair the Model
  Parameter Randomisation Test", XAI in Action workshop, NeurIPS 2023. Smooth MPRT is the
  cascading MPRT with every map (original and randomized) averaged over N noisy copies of the
  input, which removes the shattered-gradient noise that otherwise dominates the comparison.
  Efficient MPRT compares only the original and the fully randomized model, by the relative
  rise of the maps' complexity (the ``entropy_increase`` metric,
  :func:`sanitycheck.metrics.similarity.entropy_increase`), not by a pairwise similarity.

These checks use two optional hooks that the runner calls on every check:
``transform_explainer(explainer)`` (the explainer used for the original maps *and* every
state's maps) and ``transform_target(target, logits, *, seed)`` (the target used for the
states' maps only; the original maps keep the explained class).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelError
from ..explainers.base import Explainer
from ..seeding import generator, sample_keys
from ..targets import ClassTarget, Target
from .base import StateCheck, ModelState
from .randomization import CascadingRandomization, _LayerwiseRandomization, layer_module, randomize_layer_

__all__ = ["RandomLogit", "SmoothMPRT", "EfficientMPRT", "random_other_classes"]

SIXT_2020 = 'Sixt, Granz, Landgraf 2020, "When Explanations Lie: Why Many Modified BP Attributions Fail", ICML'
HEDSTROM_2023 = ('Hedström et al. 2023, "Sanity Checks Revisited: An Exploration to Repair the Model '
                 'Parameter Randomisation Test", XAI in Action workshop, NeurIPS')


def random_other_classes(classes: Tensor, n_classes: int, keys: List[str], *, seed: int) -> Tensor:
    """For each sample a class != ``classes[i]``, uniform over the other ``n_classes - 1`` classes.

    Sample ``i``'s draw comes from a generator seeded from ``(seed, "random_logit", keys[i])``
    (``keys``: per-sample content hashes, :func:`sanitycheck.seeding.sample_keys`), so it depends
    only on the seed and that sample's content, not on the batch it is in. An integer ``r`` is
    drawn uniformly from ``[0, n_classes - 2]`` and mapped to the ``r``-th class other than the
    explained one (``r + (r >= c)``), exactly uniform over the others.
    """
    classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    if n_classes < 2:
        raise ConfigError(f"random_logit needs at least 2 classes, got n_classes={n_classes}")
    if len(keys) != classes.numel():
        raise ConfigError(f"random_logit: {len(keys)} sample keys for {classes.numel()} targets")
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= n_classes):
        raise ConfigError(f"random_logit: explained classes must lie in [0, {n_classes - 1}], got "
                          f"[{int(classes.min())}, {int(classes.max())}]")
    draws = [int(torch.randint(0, n_classes - 1, (), generator=generator(seed, "random_logit", key)))
             for key in keys]
    r = torch.tensor(draws, dtype=torch.long).reshape(-1)
    c = classes.cpu()
    return (r + (r >= c).long()).to(classes.device)


class RandomLogit(StateCheck):
    """Random-logit test (Sixt et al. 2020): explain a random *other* class with the same model.

    One state, ``"random_logit"``: the trained model itself (a deep copy, so that nothing the
    runner does to the state can reach the caller's model). Its maps are computed for the target
    that :meth:`transform_target` returns: per sample a class different from the explained one,
    uniformly at random among the other ``n_classes - 1`` classes. The similarity of these maps to
    the original maps should be LOW for a class-sensitive explainer; Sixt et al. show that many
    modified-backprop explainers (Guided Backprop, LRP-αβ, DeepTaylor, ...) give nearly the same
    map for every class.

    ``n_classes``: the number of classes to draw from (default: the width of the model's output,
    ``logits.shape[1]``); set it lower when only the first ``n_classes`` outputs are classes.

    Randomness: the class of sample ``i`` comes from a generator seeded from ``(seed,
    "random_logit", content hash of sample i)``. The content hashed is the input ``x[i]`` when
    the runner passes ``x=`` to :meth:`transform_target` (exactly batch-invariant), else the row
    ``logits[i]`` (batch-invariant as long as the model's logits of a sample do not depend on the
    batch it was computed in, which holds in eval mode up to floating-point reduction order).
    """

    name = "random_logit"
    description = ("Explain a randomly chosen other class with the same trained model; a class-sensitive "
                   "explainer's map should change (Sixt et al. 2020).")
    reference = SIXT_2020

    def __init__(self, n_classes: Optional[int] = None):
        if n_classes is not None and int(n_classes) < 2:
            raise ConfigError(f"random_logit: n_classes must be >= 2, got {n_classes}")
        self.n_classes = None if n_classes is None else int(n_classes)

    def config(self) -> Dict[str, Any]:
        return {"n_classes": self.n_classes}

    def steps(self, model: nn.Module, example_input: Tensor) -> List[str]:
        return ["random_logit"]

    def states(self, model: nn.Module, *, seed: int, example_input: Tensor,
               context: Optional[Dict[str, Any]] = None) -> Iterator[ModelState]:
        yield ModelState("random_logit", copy.deepcopy(model),
                         {"target": "a uniformly random class other than the explained one"})

    def state_target(self, ctx: Any) -> Target:
        return self.transform_target(ctx.target, ctx.logits, seed=ctx.seed, x=ctx.x)

    def transform_target(self, target: Target, logits: Tensor, *, seed: int,
                         x: Optional[Tensor] = None) -> Target:
        """A :class:`ClassTarget` with a random other class per sample (same ``softmax`` flag)."""
        base = target
        while not isinstance(base, ClassTarget) and isinstance(getattr(base, "base", None), Target):
            base = base.base  # a ClassTarget re-bound by select / repeat_interleave
        if not isinstance(base, ClassTarget):
            raise ConfigError(f"random_logit needs class targets (ClassTarget), got {type(target).__name__}: "
                              "a random other logit is only defined for a class-index target")
        classes = target.per_sample[0]
        if logits.ndim != 2:
            raise ModelError(f"random_logit expects model output of shape (batch, classes), "
                             f"got {tuple(logits.shape)}")
        n = self.n_classes if self.n_classes is not None else int(logits.shape[1])
        if n > logits.shape[1]:
            raise ConfigError(f"random_logit: n_classes={n} but the model has only {logits.shape[1]} outputs")
        content = x if x is not None else logits
        if content.shape[0] != len(target):
            raise ConfigError(f"random_logit: {content.shape[0]} samples for {len(target)} targets")
        others = random_other_classes(classes, n, sample_keys(content), seed=seed)
        return ClassTarget(others, softmax=base.softmax)


class SmoothMPRT(CascadingRandomization):
    """Smooth MPRT (Hedström et al. 2023): cascading randomization of SmoothGrad-averaged maps.

    The model states are exactly those of :class:`CascadingRandomization` (same layers, same
    order, same seeded re-initialization). The difference is the explainer: both the original
    and every state's maps are the mean of the explainer's maps over ``n_samples`` noisy copies
    of the input (:class:`~sanitycheck.explainers.noise_tunnel.NoiseTunnel`, ``kind="smoothgrad"``)
    — for control explainers that ignore the model too (averaging is harmless there).

    Noise: Gaussian with per-sample standard deviation ``noise_level * (max(x_i) - min(x_i))``,
    the fraction of each image's value range, as our ``NoiseTunnel``. Quantus' ``SmoothMPRT``
    (``nr_samples=50``, ``noise_magnitude=0.1``) defines its std the same way (per-sample value
    range times ``noise_magnitude``), so the defaults here match its defaults. Two differences:
    Quantus makes the last of its N samples noise-free (N-1 noisy copies plus the clean input),
    and draws fresh noise from the global NumPy RNG for every model state; here all N copies are
    noisy and the noise of an image is the same under every model state (keyed on the image's
    content and the tunnel's seed), so the noise itself adds no dissimilarity between states.
    """

    name = "smooth_mprt"
    description = ("Cascading parameter randomization with every map averaged over noisy copies of the "
                   "input, which removes gradient noise from the comparison (Hedström et al. 2023).")
    reference = HEDSTROM_2023

    def __init__(self, n_samples: int = 50, noise_level: float = 0.1, layers: Optional[List[str]] = None):
        super().__init__(layers=layers)
        if int(n_samples) < 1:
            raise ConfigError(f"smooth_mprt: n_samples must be >= 1, got {n_samples}")
        if float(noise_level) < 0:
            raise ConfigError(f"smooth_mprt: noise_level must be >= 0, got {noise_level}")
        self.n_samples, self.noise_level = int(n_samples), float(noise_level)

    def config(self) -> Dict[str, Any]:
        return {"layers": self.layers, "n_samples": self.n_samples, "noise_level": self.noise_level}

    transforms_explainers = True

    def transform_explainer(self, explainer: Explainer) -> Explainer:
        from ..explainers.noise_tunnel import NoiseTunnel

        return NoiseTunnel(explainer, n_samples=self.n_samples, noise_level=self.noise_level, kind="smoothgrad")


class EfficientMPRT(_LayerwiseRandomization):
    """Efficient MPRT (Hedström et al. 2023): the trained model against the fully randomized one.

    One state, ``"fully_randomized"``: a deep copy of the model with every parameterized layer
    (or every layer in ``layers``) re-initialized by
    :func:`~sanitycheck.checks.randomization.randomize_layer_` with the same per-layer seeds as
    :class:`CascadingRandomization`, so the state is parameter-for-parameter the last state of
    the cascade. The original model is never mutated. Score it with ``entropy_increase`` (the
    relative rise of the maps' histogram entropy); the pairwise similarity metrics work too.
    """

    name = "efficient_mprt"
    description = ("Compare the maps of the trained and the fully randomized model by the relative rise "
                   "of the maps' entropy (Hedström et al. 2023).")
    reference = HEDSTROM_2023

    def steps(self, model: nn.Module, example_input: Tensor) -> List[str]:
        return ["fully_randomized"]

    def randomized_layers(self, model: nn.Module, example_input: Tensor) -> List[str]:
        """The layers re-initialized in the state, logits first (the cascade's order)."""
        return super().steps(model, example_input)

    def states(self, model: nn.Module, *, seed: int, example_input: Tensor,
               context: Optional[Dict[str, Any]] = None) -> Iterator[ModelState]:
        names = self.randomized_layers(model, example_input)
        work = copy.deepcopy(model)
        for name in names:
            randomize_layer_(layer_module(work, name), seed=seed, layer_name=name)
        yield ModelState("fully_randomized", work, {"randomized_layers": names})
