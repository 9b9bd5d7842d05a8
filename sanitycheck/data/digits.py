"""scikit-learn's copy of the UCI optical handwritten digits (1,797 images, 8x8, 17 grey levels)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..errors import DataError
from . import ImageDataset

CLASSES = [str(i) for i in range(10)]
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def split_indices(n: int, split: str) -> np.ndarray:
    """Deterministic split: a permutation from ``numpy.random.default_rng(0)``; the last 20% is the test set."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = int(round(n * TEST_FRACTION))
    if split == "train":
        return np.sort(perm[: n - n_test])
    if split == "test":
        return np.sort(perm[n - n_test :])
    if split == "all":
        return np.arange(n)
    raise DataError(f"digits split must be 'train', 'test' or 'all', got {split!r}")


def load_digits(split: str = "test") -> ImageDataset:
    """Digits ``split`` as ``(N, 1, 8, 8)`` float32 in [0, 1] (pixel / 16) with int64 labels.

    ``checksum`` is the sha256 of the split's uint8 pixels followed by its int64 labels.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:  # pragma: no cover - sklearn is a dependency
        raise DataError(f"the digits dataset needs scikit-learn: {err}. pip install scikit-learn") from err
    data = _sk_load_digits()
    images = np.asarray(data.images)
    idx = split_indices(images.shape[0], split)
    pixels = images[idx].astype(np.uint8)
    labels = np.asarray(data.target)[idx].astype(np.int64)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(pixels).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
    return ImageDataset(
        name="digits",
        images=torch.from_numpy(pixels.astype(np.float32) / 16.0).unsqueeze(1),
        labels=torch.from_numpy(labels),
        classes=list(CLASSES),
        source="sklearn.datasets.load_digits (UCI Optical Recognition of Handwritten Digits, test part)",
        checksum=h.hexdigest(),
        meta={"split": split, "test_fraction": TEST_FRACTION, "split_seed": SPLIT_SEED},
    )
