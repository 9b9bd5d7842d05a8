"""CLIP text-to-image saliency audits: synthetic captioned scenes with ground-truth boxes
(:mod:`.data`), open_clip loading, a tiny trainable CLIP and the :class:`ClipSimilarity` adapter
(:mod:`.model`), ViT-specific explainers (:mod:`.explainers`) and localization metrics
(:mod:`.metrics`). Importing this package imports neither open_clip nor captum.

Registry entries (import paths), which :mod:`sanitycheck.registry` registers, are in
:data:`REGISTRY_ENTRIES`; the checks that need the scenes' ground truth (``text_randomization``,
``pointing_game``) are in :mod:`.checks`, the figures in :mod:`sanitycheck.report.clip_figures` and the ``clip-saliency``
command in :mod:`.saliency`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SceneSpec": "data", "ClipScenes": "data", "load_clip_scenes": "data", "make_clip_scenes": "data",
    "class_prompts": "data", "CAPTION_CLASSES": "data", "POSITIONS": "data",
    "load_open_clip": "model", "train_tiny_clip": "model", "build_tiny_clip": "model", "TinyClipSpec": "model",
    "DEFAULT_TINY_SPEC": "model", "ClipSimilarity": "model", "WordTokenizer": "model", "load_image": "model",
    "TINY_MODEL_NAME": "model", "register_tiny_config": "model", "evaluate_retrieval": "model",
    "clip_similarity": "model", "clip_scenes_dataset": "data", "localization_report": "metrics",
    "ViTAttentionRollout": "explainers", "ViTGradientWeightedAttention": "explainers", "ViTGradCAM": "explainers",
    "Occlusion": "explainers", "attention_maps": "explainers",
    "pointing_game": "metrics", "energy_pointing_game": "metrics", "random_maps_baseline": "metrics",
    "SceneTruth": "data", "scene_truth": "data", "TextRandomization": "checks", "PointingGame": "checks",
    "clip_saliency": "saliency",
}

#: name -> import path, registered by ``sanitycheck.registry`` (EXPLAINERS / DATASETS / MODELS / CHECKS)
REGISTRY_ENTRIES = {
    "explainers": {
        "vit_attention_rollout": "sanitycheck.clip.explainers:ViTAttentionRollout",
        "vit_chefer": "sanitycheck.clip.explainers:ViTGradientWeightedAttention",
        "vit_gradcam": "sanitycheck.clip.explainers:ViTGradCAM",
        "occlusion": "sanitycheck.clip.explainers:Occlusion",
    },
    "datasets": {"clip_scenes": "sanitycheck.clip.data:clip_scenes_dataset"},
    "models": {"clip_similarity": "sanitycheck.clip.model:clip_similarity"},
    "checks": {
        "text_randomization": "sanitycheck.clip.checks:TextRandomization",
        "pointing_game": "sanitycheck.clip.checks:PointingGame",
    },
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_LAZY, "REGISTRY_ENTRIES"]
