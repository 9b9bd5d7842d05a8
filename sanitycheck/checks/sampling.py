"""Sampling noise, separated from model dependence (issue 14).

A *sampled* explainer (SmoothGrad, VarGrad, and LIME, KernelSHAP, RISE, DeepLIFT-SHAP, GradientSHAP) draws random
samples per map: its constructor takes ``n_samples`` and ``seed`` and its :meth:`config` returns them, so
:func:`with_seed` and :func:`with_samples` build the same method with another seed or more samples. Two state
checks measure how much of its maps is that randomness:

* :class:`NoiseCeiling` (``noise_ceiling``): the similarity of the trained model's maps with the trained model's
  maps under *another sampling seed* (one state, ``another_seed``: the same model). It is the highest similarity
  any randomization step can show for the same model: a randomization score near it means the maps did not
  change beyond sampling noise, and a ceiling below a randomization check's threshold means the method passes
  that check on sampling noise alone. When a suite has this check, such a randomization verdict is ``noise``,
  not ``pass`` (:func:`sanitycheck.results.apply_noise_ceiling`).
* :class:`SamplingConvergence` (``sampling_convergence``): the maps at ``n`` samples against the maps at ``2n``
  samples, same seed, on the trained model (one state, ``twice_the_samples``). The sample counts compared are
  recorded in the state's info (``state_info["sampling_convergence/twice_the_samples"]``).

A deterministic explainer (no ``n_samples`` and ``seed`` in its config: gradients, Integrated Gradients, Grad-CAM,
occlusion, ...) has no sampling noise: its "other seed" / "2n" maps *are* its maps, so both checks reuse the trained
model's maps and report a similarity of exactly 1 where the metric is defined (nothing is recomputed). It is not
skipped, so every explainer of a suite has a ceiling beside its randomization scores.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from ..errors import ConfigError
from .base import ModelState, StateCheck

__all__ = ["is_sampled", "with_seed", "with_samples", "NoiseCeiling", "SamplingConvergence", "noise_rule_checks",
           "split_noise_rule"]

#: explainer attributes that bound how many inputs go through the model at once: never part of a map, so not
#: of config(), and carried from an explainer to its reseeded or resampled copy
MEMORY_BOUNDS = ("max_batch", "internal_batch_size", "batch_size")

#: the step of :class:`NoiseCeiling` and of :class:`SamplingConvergence`
ANOTHER_SEED = "another_seed"
TWICE_THE_SAMPLES = "twice_the_samples"


def _config(explainer: Any) -> Dict[str, Any]:
    config = getattr(explainer, "config", None)
    return dict(config()) if callable(config) else {}


def is_sampled(explainer: Any) -> bool:
    """True when ``explainer`` follows the sampled-explainer contract: its ``config()`` holds ``n_samples`` and
    ``seed`` (the constructor parameters that :func:`with_seed` and :func:`with_samples` change)."""
    config = _config(explainer)
    return "n_samples" in config and "seed" in config


def _rebuild(explainer: Any, **changes: Any) -> Any:
    if not is_sampled(explainer):
        raise ConfigError(f"{type(explainer).__name__} is not a sampled explainer: its config() "
                          f"{sorted(_config(explainer))} lacks 'n_samples' or 'seed'; a sampled explainer takes both "
                          "as constructor parameters and returns them from config()")
    config = _config(explainer)
    if "base_config" in config and "base" in config:  # a generic NoiseTunnel: its base as {"name": ..., **params}
        base_config = config.pop("base_config")
        config["base"] = {"name": config["base"], **(base_config or {})}
    try:
        out = type(explainer)(**{**config, **changes})
    except TypeError as err:
        raise ConfigError(f"cannot rebuild {type(explainer).__name__} from its config() {config} with {changes}: "
                          f"{err}; a sampled explainer's config() must return its constructor parameters") from err
    # the memory bounds config() leaves out (they cannot change a map) are carried over: a rebuilt SmoothGrad that
    # fell back to its default max_batch (4096) put 280 noisy 224x224 images through EfficientNet at once and ran
    # a 24 GB machine out of memory
    for name in MEMORY_BOUNDS:
        if name not in config and hasattr(explainer, name) and hasattr(out, name):
            setattr(out, name, getattr(explainer, name))
    return out


def with_seed(explainer: Any, seed: int) -> Any:
    """The same sampled explainer with sampling seed ``seed``: ``type(e)(**{**e.config(), "seed": seed})``."""
    return _rebuild(explainer, seed=int(seed))


def with_samples(explainer: Any, n_samples: int) -> Any:
    """The same sampled explainer (same seed) drawing ``n_samples`` samples per map."""
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or int(n_samples) < 1:
        raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
    return _rebuild(explainer, n_samples=int(n_samples))


class _SameModelCheck(StateCheck):
    """One state: a deep copy of the trained model, explained by a changed sampled explainer."""

    step_name = "same_model"
    #: a measurement beside the randomization scores, not a pass/fail check: a suite may give it no verdict
    needs_verdict = False

    def steps(self, model: nn.Module, example_input: Any) -> List[str]:
        return [self.step_name]

    def states(self, model: nn.Module, *, seed: int, example_input: Any,
               context: Optional[Dict[str, Any]] = None) -> Iterator[ModelState]:
        yield ModelState(self.step_name, copy.deepcopy(model), (context or {}).get("info"))

    def model_states(self, ctx: Any) -> Iterator[ModelState]:
        return self.states(ctx.model, seed=ctx.seed, example_input=ctx.example_input,
                           context={"info": self.info(ctx.explainers)})

    def info(self, explainers: Dict[str, Any]) -> Dict[str, Any]:  # pragma: no cover - per subclass
        raise NotImplementedError

    def same_as_original(self, explainer: Any) -> bool:
        """A deterministic explainer's maps in this state are the trained model's maps (not recomputed)."""
        return not is_sampled(explainer)


class NoiseCeiling(_SameModelCheck):
    """Noise ceiling: the trained model's maps against its maps under another sampling seed (``seed + offset``).

    ``offset`` (default 1): the other seed is the explainer's seed plus ``offset``; the draws of a sampled
    explainer are keyed on (seed, input content), so the two map sets use independent samples of the same size.
    Deterministic explainers: exactly 1 where the metric is defined (their maps do not depend on a seed)."""

    name = "noise_ceiling"
    description = ("Compare the trained model's maps with its maps under another sampling seed: the similarity "
                   "sampling noise alone leaves, the ceiling of every randomization score of a sampled explainer.")
    step_name = ANOTHER_SEED

    def __init__(self, offset: int = 1):
        if isinstance(offset, bool) or not isinstance(offset, int) or offset == 0:
            raise ConfigError(f"noise_ceiling: offset must be a non-zero integer (the other seed is the "
                              f"explainer's seed + offset), got {offset!r}")
        self.offset = offset

    def config(self) -> Dict[str, Any]:
        return {"offset": self.offset}

    def state_explainer(self, explainer: Any) -> Any:
        return with_seed(explainer, int(_config(explainer)["seed"]) + self.offset) if is_sampled(explainer) \
            else explainer

    def info(self, explainers: Dict[str, Any]) -> Dict[str, Any]:
        seeds = {n: [int(_config(e)["seed"]), int(_config(e)["seed"]) + self.offset]
                 for n, e in explainers.items() if is_sampled(e)}
        return {"compared": "the trained model's maps under two sampling seeds", "seeds": seeds,
                "n_samples": {n: int(_config(e)["n_samples"]) for n, e in explainers.items() if is_sampled(e)},
                "deterministic": sorted(n for n, e in explainers.items() if not is_sampled(e))}


class SamplingConvergence(_SameModelCheck):
    """Sampling convergence: the trained model's maps at ``n`` samples against its maps at ``factor * n``
    samples (default 2n), same seed. Deterministic explainers: exactly 1 where defined."""

    name = "sampling_convergence"
    description = ("Compare the trained model's maps at n samples with its maps at 2n samples (same seed): how "
                   "far a sampled explainer's maps are from converged.")
    step_name = TWICE_THE_SAMPLES

    def __init__(self, factor: int = 2):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ConfigError(f"sampling_convergence: factor must be an integer >= 2 (maps at n against maps at "
                              f"factor * n samples), got {factor!r}")
        self.factor = factor
        if factor != 2:
            self.step_name = f"times_{factor}_samples"

    def config(self) -> Dict[str, Any]:
        return {"factor": self.factor}

    def state_explainer(self, explainer: Any) -> Any:
        return with_samples(explainer, int(_config(explainer)["n_samples"]) * self.factor) \
            if is_sampled(explainer) else explainer

    def info(self, explainers: Dict[str, Any]) -> Dict[str, Any]:
        counts = {n: [int(_config(e)["n_samples"]), int(_config(e)["n_samples"]) * self.factor]
                  for n, e in explainers.items() if is_sampled(e)}
        return {"compared": "the trained model's maps at n and at factor * n samples, same seed",
                "n_samples": counts, "deterministic": sorted(n for n, e in explainers.items() if not is_sampled(e))}


def noise_rule_checks(specs: Sequence[Any]) -> Tuple[List[str], List[str]]:
    """(the noise-ceiling checks, the randomization checks the noise rule reads) among a suite's check specs;
    see :func:`split_noise_rule`."""
    from .base import get_check

    return split_noise_rule({spec.name: get_check(spec.name, **spec.params) for spec in specs})


def split_noise_rule(checks: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """(the noise-ceiling checks, the randomization checks the noise rule reads) among ``{name: check}``.

    The second list: every other state check (parameter randomizations, random logit, MPRT variants, data
    randomization) except :class:`SamplingConvergence` — the checks whose pass means "the maps changed"."""
    ceilings, targets = [], []
    for name, check in checks.items():
        if isinstance(check, NoiseCeiling):
            ceilings.append(name)
        elif getattr(check, "unit", None) == "state" and not isinstance(check, SamplingConvergence):
            targets.append(name)
    return ceilings, targets
