"""Evaluation checks: score each explainer's maps of the trained model with a model-based metric.

The metrics themselves are pure, batched functions in :mod:`sanitycheck.metrics` (deletion/insertion curves,
Petsiuk et al. 2018; AOPC, Samek et al. 2017; faithfulness correlation, Bhatt et al. 2020; infidelity and
max-sensitivity, Yeh et al. 2019; ROAD, Rong et al. 2022; the pointing game, Zhang et al. 2018). Each check
here is that metric under the :class:`~sanitycheck.checks.base.Check` contract: it declares that it needs the
trained model's maps (one work unit per explainer) and reads everything else from the context.
"""

from __future__ import annotations

from typing import Any, Dict

from torch import Tensor

from ..metrics import curves, faithfulness
from .base import DATASET, ORIGINAL_MAPS, Check

__all__ = ["EvaluationCheck", "Deletion", "Insertion", "AOPCMoRF", "AOPCLeRF", "FaithfulnessCorrelation",
           "Infidelity", "MaxSensitivity", "ROAD"]


class EvaluationCheck(Check):
    """A model-based metric (:class:`~sanitycheck.metrics.base.FaithfulnessFamily`) applied to every explainer's
    maps of the trained model. ``params`` are the metric's."""

    needs = frozenset({ORIGINAL_MAPS})
    unit = "explainer"
    #: the metric class this check applies
    metric_class: type = None  # type: ignore[assignment]

    def __init__(self, **params: Any):
        self.metric = self.metric_class(**params)
        self.name = self.metric.name
        self.description = self.metric.description
        self.reference = getattr(self.metric, "reference", "")
        self.higher_is_better = dict(self.metric.higher_is_better)

    def config(self) -> Dict[str, Any]:
        return self.metric.config()

    def evaluate_maps(self, ctx: Any, explainer: str, maps: Tensor) -> Any:
        """The metric's :class:`~sanitycheck.metrics.base.Evaluation` of ``explainer``'s trained-model maps."""
        return self.metric.evaluate(ctx.model, ctx.x.to(ctx.device), ctx.target, maps.to(ctx.device), seed=ctx.seed)


def evaluation_check(metric_class: type, doc: str = "") -> type:
    """The check class of ``metric_class`` (one registry line each)."""
    return type(metric_class.__name__, (EvaluationCheck,),
                {"metric_class": metric_class, "__doc__": doc or f"{metric_class.__name__} as a check.\n\n"
                 + (metric_class.__doc__ or ""), "__module__": __name__})


Deletion = evaluation_check(curves.Deletion)
Insertion = evaluation_check(curves.Insertion)
AOPCMoRF = evaluation_check(curves.AOPCMoRF)
AOPCLeRF = evaluation_check(curves.AOPCLeRF)
FaithfulnessCorrelation = evaluation_check(faithfulness.FaithfulnessCorrelation)
Infidelity = evaluation_check(faithfulness.Infidelity)
ROAD = evaluation_check(faithfulness.ROAD)


class MaxSensitivity(EvaluationCheck):
    """Max-sensitivity (Yeh et al. 2019): re-explains perturbed inputs with the explainer itself."""

    metric_class = faithfulness.MaxSensitivity

    def evaluate_maps(self, ctx: Any, explainer: str, maps: Tensor) -> Any:
        return self.metric.evaluate(ctx.model, ctx.x.to(ctx.device), ctx.target, maps.to(ctx.device), seed=ctx.seed,
                                    explainer=ctx.explainers[explainer])


class DatasetEvaluationCheck(EvaluationCheck):
    """An evaluation that reads the dataset's ground truth (boxes, masks) besides the maps."""

    needs = frozenset({ORIGINAL_MAPS, DATASET})

    def evaluate_maps(self, ctx: Any, explainer: str, maps: Tensor) -> Any:
        return self.metric.evaluate(ctx.model, ctx.x.to(ctx.device), ctx.target, maps.to(ctx.device), seed=ctx.seed,
                                    dataset=ctx.dataset)
