"""The one Check contract: a check declares what it needs and works through a :class:`CheckContext`.

Three kinds of checks share it; the engine reads :attr:`Check.unit` (data, not inspection) to plan work:

* **state checks** (``unit = "state"``, need :data:`MODEL_STATES`): yield model states — parameter
  randomizations (Adebayo et al. 2018), random logit (Sixt et al. 2020), smooth/efficient MPRT (Hedström et
  al. 2023), a model trained on random labels. The engine explains each state once and compares every
  explainer's maps with the trained model's.
* **evaluation checks** (``unit = "explainer"``, need :data:`ORIGINAL_MAPS`): score each explainer's maps of
  the trained model — deletion/insertion (Petsiuk et al. 2018), faithfulness correlation, ROAD, infidelity,
  the pointing game (:mod:`sanitycheck.checks.evaluation`).
* **audits** (``unit = "check"``): compare an explanation with an intervention over all explainers at once —
  the attention audits of Jain & Wallace (2019) and Wiegreffe & Pinter (2019).

A check never reaches into the engine: everything it may use is on the context, and the context refuses
what the check did not declare in :attr:`Check.needs`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterator, List, NamedTuple, Optional, Tuple

from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import CHECKS

#: the trained model's maps of every explainer (``ctx.originals``)
ORIGINAL_MAPS = "original_maps"
#: the engine explains model states the check yields
MODEL_STATES = "model_states"
#: the audited dataset object itself (ground truth beyond the labels: boxes, captions, rationales)
DATASET = "dataset"
#: the model's training split, encoded (checks that retrain models)
TRAIN_SPLIT = "train_split"
#: a second trained model (e.g. the same architecture trained on random labels)
TWIN_MODEL = "twin_model"
NEEDS: FrozenSet[str] = frozenset({ORIGINAL_MAPS, MODEL_STATES, DATASET, TRAIN_SPLIT, TWIN_MODEL})


class ModelState(NamedTuple):
    """A step name and the model in that state (valid until the iterator advances)."""

    step: str
    model: nn.Module
    #: facts about the state worth recording (e.g. the random-label model's train accuracy)
    info: Optional[Dict[str, Any]] = None


@dataclass
class CheckOutput:
    """What an audit returns: ``scores[(step, explainer)][metric]`` (N,) float64 (NaN = undefined),
    ``reasons[(step, explainer)][metric]`` why some are undefined, the ordered ``steps``, ``notes`` to
    record, ``summaries`` (statistics that are not means of per-instance scores, e.g. F1, each with n and
    a bootstrap CI) and ``figure`` data."""

    steps: List[str]
    scores: Dict[Tuple[str, str], Dict[str, Tensor]]
    reasons: Dict[Tuple[str, str], Dict[str, Optional[str]]] = field(default_factory=dict)
    notes: Dict[str, Any] = field(default_factory=dict)
    summaries: List[Dict[str, Any]] = field(default_factory=list)
    figure: Dict[str, Any] = field(default_factory=dict)


class Check:
    """Base of every check. Subclass :class:`StateCheck`, :class:`~sanitycheck.checks.evaluation.EvaluationCheck`
    or :class:`AuditCheck`."""

    name: str = "check"
    description: str = ""
    #: what the engine must provide (names from :data:`NEEDS`)
    needs: FrozenSet[str] = frozenset()
    #: the work unit: "state" (state x explainer), "explainer" (one explainer's maps) or "check" (all at once)
    unit: str = "state"
    #: per score name, True when higher is better (evaluation checks and audits)
    higher_is_better: Dict[str, bool] = {}
    #: what one per-sample score is: ``"inputs"`` (one per audited input: images, texts); an audit may score
    #: other units, e.g. ``"runs"`` (TCAV's runs against random sets) or ``"latents"`` (an SAE's dictionary),
    #: whose counts differ from the dataset's n and between steps (recorded in results.json's ``checks``)
    sample_unit: str = "inputs"

    def config(self) -> Dict[str, Any]:
        return {}


class StateCheck(Check):
    """Yields model states (:meth:`model_states`); never mutates the trained model.

    Subclasses implement ``states(model, *, seed, example_input, context=None)`` — a plain generator that is
    also usable outside the engine — and ``steps(model, example_input)``, the step names in order. The engine
    calls the context forms below."""

    needs = frozenset({MODEL_STATES})
    unit = "state"
    #: True when the check compares transformed explainers (e.g. smoothed for smooth MPRT)
    transforms_explainers: bool = False
    #: False for a state check that measures without deciding (``noise_ceiling``): a suite may give it no verdict
    needs_verdict: bool = True

    def states(self, model: nn.Module, *, seed: int, example_input: Any,
               context: Optional[Dict[str, Any]] = None) -> Iterator[ModelState]:  # pragma: no cover
        raise NotImplementedError

    def steps(self, model: nn.Module, example_input: Any) -> Optional[List[str]]:
        """The step names in the order :meth:`states` yields them (None: not known before running)."""
        return None

    # ---------------------------------------------------------------- the engine's entry points
    def model_states(self, ctx: "Any") -> Iterator[ModelState]:
        return self.states(ctx.model, seed=ctx.seed, example_input=ctx.example_input)

    def planned_steps(self, ctx: "Any") -> Optional[List[str]]:
        return self.steps(ctx.model, ctx.example_input)

    def transform_explainer(self, explainer: Any) -> Any:
        """The explainer this check compares (for the original and every state)."""
        return explainer

    def state_explainer(self, explainer: Any) -> Any:
        """The explainer that explains the check's states (the original maps keep ``explainer``): e.g. the same
        sampled explainer under another seed (:class:`~sanitycheck.checks.sampling.NoiseCeiling`)."""
        return explainer

    def same_as_original(self, explainer: Any) -> bool:
        """True when ``explainer``'s maps in every state of this check are, by construction, the trained model's
        maps (they are then reused, not recomputed)."""
        return False

    def state_target(self, ctx: "Any") -> Any:
        """The target explained in the check's states (the original maps keep the trained model's target)."""
        return ctx.target


class AuditCheck(Check):
    """Evaluates all explainers at once (``evaluate(ctx) -> CheckOutput``): interventions on the model such as
    attention permutation or adversarial attention, compared with the explanations. Declare
    :data:`ORIGINAL_MAPS` to read the explainers' maps.

    An audit whose decision is not a threshold on the CI of one recorded mean (a t-test over random concepts,
    the difference of two independent samples) sets ``decides = True`` and implements :meth:`decide`: its
    verdicts, as a pure function of what results.json records of it. The engine calls it on the run's
    records; ``validate`` calls it again on the document's, so a submitted verdict that its records do not
    give is caught, as for rule-decided checks."""

    needs: FrozenSet[str] = frozenset()
    unit = "check"
    #: True when :meth:`decide` gives the check's verdicts (the suite then names no ``verdict`` rule for it)
    decides: bool = False

    def evaluate(self, ctx: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def decide(self, recorded: "RecordedAudit") -> List[Any]:  # pragma: no cover - only where decides
        """The verdicts (:class:`sanitycheck.results.Verdict`, one per explainer at most) that ``recorded`` gives."""
        raise NotImplementedError


@dataclass
class RecordedAudit:
    """What results.json records of one audit, as :meth:`AuditCheck.decide` reads it: its aggregated
    ``records`` (:class:`sanitycheck.results.Record`), its ``summaries`` and its ``notes`` (``state_info``),
    both JSON-clean — the same values in the run and in ``validate``."""

    check: str
    records: List[Any]
    summaries: List[Dict[str, Any]]
    notes: Dict[str, Any]


def get_check(name: str, **params: Any) -> Check:
    cls = CHECKS.get(name)
    try:
        check = cls(**params) if inspect.isclass(cls) else cls
    except TypeError as err:
        raise ConfigError(f"bad parameters {params} for check {name!r}: {err}") from err
    if ":" not in name:
        check.name = name
    unknown = set(getattr(check, "needs", ())) - NEEDS
    if unknown or getattr(check, "unit", None) not in ("state", "explainer", "check"):
        raise ConfigError(f"check {name!r} ({type(check).__name__}) does not follow the Check contract: needs "
                          f"{sorted(unknown) or sorted(getattr(check, 'needs', ()))} (known: {sorted(NEEDS)}), unit "
                          f"{getattr(check, 'unit', None)!r} (one of 'state', 'explainer', 'check'); subclass "
                          "sanitycheck.checks.StateCheck, EvaluationCheck or AuditCheck")
    return check
