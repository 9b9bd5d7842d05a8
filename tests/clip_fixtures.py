"""Fixtures of the CLIP tests: a random-init tiny open_clip ViT (no training) and a few scenes."""

from __future__ import annotations

import pytest

from sanitycheck.errors import DataError

#: the CLIP parts' registry entries, each in its layer (sanitycheck.clip is gone)
CLIP_REGISTRY_ENTRIES = {
    "explainers": {
        "vit_attention_rollout": "sanitycheck.explainers.attention_flow:ViTAttentionRollout",
        "vit_chefer": "sanitycheck.explainers.attention_flow:ViTGradientWeightedAttention",
        "vit_gradcam": "sanitycheck.explainers.cam:ViTGradCAM",
        "occlusion": "sanitycheck.explainers.occlusion:Occlusion",
    },
    "datasets": {"clip_scenes": "sanitycheck.data.scenes:clip_scenes_dataset"},
    "models": {"clip_similarity": "sanitycheck.models.clip:clip_similarity"},
    "checks": {
        "text_randomization": "sanitycheck.checks.image_text:TextRandomization",
        "pointing_game": "sanitycheck.checks.image_text:PointingGame",
    },
}


@pytest.fixture(scope="session")
def tiny_clip():
    from sanitycheck.models.clip import build_tiny_clip

    return build_tiny_clip(seed=0)


@pytest.fixture(scope="session")
def scene_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("clip_cache")


@pytest.fixture(scope="session")
def scenes(scene_cache):
    from sanitycheck.data.scenes import load_clip_scenes

    try:
        return load_clip_scenes("test", 24, seed=3, cache_dir=scene_cache)
    except DataError as err:  # Fashion-MNIST not installed
        pytest.skip(f"Fashion-MNIST unavailable: {err}")


@pytest.fixture(scope="session")
def sim(tiny_clip):
    from sanitycheck.data.scenes import class_prompts
    from sanitycheck.models.clip import ClipSimilarity

    return ClipSimilarity(tiny_clip, class_prompts())


@pytest.fixture
def batch(scenes):
    """4 scene images (4, 3, 64, 64) and their prompt indices."""
    return scenes.image_batch(slice(0, 4)).contiguous(), scenes.caption_classes[:4].clone()
