"""sanitycheck: does a saliency or attention explanation depend on the model it claims to explain?

Flat public API (captum style). Names are imported lazily so that ``import sanitycheck``
and ``sanitycheck ls`` stay fast; ``from sanitycheck import Gradient`` works as usual.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # explainers
    "Explainer": "sanitycheck.explainers.base", "CaptumExplainer": "sanitycheck.explainers.base",
    "FunctionExplainer": "sanitycheck.explainers.base", "as_explainer": "sanitycheck.explainers",
    "get_explainer": "sanitycheck.explainers",
    "Gradient": "sanitycheck.explainers.gradients", "GradientXInput": "sanitycheck.explainers.gradients",
    "IntegratedGradients": "sanitycheck.explainers.gradients", "GuidedBackprop": "sanitycheck.explainers.gradients",
    "NoiseTunnel": "sanitycheck.explainers.noise_tunnel", "SmoothGrad": "sanitycheck.explainers.noise_tunnel",
    "VarGrad": "sanitycheck.explainers.noise_tunnel", "GradCAM": "sanitycheck.explainers.cam",
    "GuidedGradCAM": "sanitycheck.explainers.cam", "SobelEdges": "sanitycheck.explainers.controls",
    "UniformNoise": "sanitycheck.explainers.controls",
    # targets
    "Target": "sanitycheck.targets", "ClassTarget": "sanitycheck.targets", "CallableTarget": "sanitycheck.targets",
    # checks
    "Check": "sanitycheck.checks.base", "ModelState": "sanitycheck.checks.base", "get_check": "sanitycheck.checks.base",
    "StateCheck": "sanitycheck.checks.base", "AuditCheck": "sanitycheck.checks.base",
    "CheckOutput": "sanitycheck.checks.base", "EvaluationCheck": "sanitycheck.checks.evaluation",
    "CheckContext": "sanitycheck.engine.context", "Modality": "sanitycheck.modalities",
    "AuditInputs": "sanitycheck.modalities",
    "CascadingRandomization": "sanitycheck.checks.randomization",
    "IndependentRandomization": "sanitycheck.checks.randomization",
    "DataRandomization": "sanitycheck.checks.data_randomization",
    "parameter_layers": "sanitycheck.checks.randomization", "randomize_layer_": "sanitycheck.checks.randomization",
    # metrics and statistics
    "Metric": "sanitycheck.metrics.base", "MetricInfo": "sanitycheck.metrics.base", "metric": "sanitycheck.metrics.base",
    "spearman_abs": "sanitycheck.metrics.similarity", "spearman": "sanitycheck.metrics.similarity",
    "ssim": "sanitycheck.metrics.similarity", "hog": "sanitycheck.metrics.similarity",
    "bootstrap_ci": "sanitycheck.stats", "Summary": "sanitycheck.stats",
    # data, models, suites, running, results
    "ImageDataset": "sanitycheck.data", "load_dataset": "sanitycheck.data", "load_model": "sanitycheck.models",
    "TrainSpec": "sanitycheck.models.zoo", "train_or_load": "sanitycheck.models.zoo",
    "Suite": "sanitycheck.suites", "load_suite": "sanitycheck.suites",
    "AuditRun": "sanitycheck.engine", "run_suite": "sanitycheck.engine",
    "Record": "sanitycheck.results", "Verdict": "sanitycheck.results", "VerdictRule": "sanitycheck.results",
    # registries and errors
    "DATASETS": "sanitycheck.registry", "MODELS": "sanitycheck.registry", "EXPLAINERS": "sanitycheck.registry",
    "CHECKS": "sanitycheck.registry", "METRICS": "sanitycheck.registry", "Registry": "sanitycheck.registry",
    "SanityCheckError": "sanitycheck.errors", "ConfigError": "sanitycheck.errors", "DataError": "sanitycheck.errors",
    "ModelError": "sanitycheck.errors", "AttributionError": "sanitycheck.errors",
    "NotApplicableError": "sanitycheck.errors", "UnknownNameError": "sanitycheck.errors",
    "WeightsUnavailableError": "sanitycheck.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sanitycheck' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
