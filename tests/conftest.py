"""Shared fixtures: a tiny CNN and real images (sklearn digits, upsampled) — no training needed."""

from __future__ import annotations

import pytest

from helpers import TinyCNN, digits_batch, make_tiny_cnn  # noqa: F401
from clip_fixtures import batch, scene_cache, scenes, sim, tiny_clip  # noqa: F401 - the CLIP tests' fixtures


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    return make_tiny_cnn(0)


@pytest.fixture
def tiny_batch():
    """8 real handwritten digits at 1x16x16 in [0, 1], with their labels."""
    return digits_batch(8)
