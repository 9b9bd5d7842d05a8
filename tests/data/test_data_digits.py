from __future__ import annotations

import torch

from sanitycheck.data import load_dataset
from sanitycheck.errors import DataError, UnknownNameError

import pytest


def test_digits_splits():
    test = load_dataset("digits")
    train = load_dataset("digits", split="train")
    assert test.images.shape[1:] == (1, 8, 8) and test.images.dtype == torch.float32
    assert len(test) + len(train) == 1797 and len(test) == 359
    assert 0.0 <= float(test.images.min()) and float(test.images.max()) <= 1.0
    assert test.classes == [str(i) for i in range(10)]
    assert test.checksum != train.checksum
    again = load_dataset("digits")
    assert torch.equal(again.images, test.images) and again.checksum == test.checksum
    # disjoint splits
    a = {tuple(r.flatten().tolist()) + (int(l),) for r, l in zip(test.images, test.labels)}
    assert len(a) > 300


def test_digits_bad_split():
    with pytest.raises(DataError):
        load_dataset("digits", split="val")


def test_unknown_dataset_suggests():
    with pytest.raises(UnknownNameError, match="fashion_mnist"):
        load_dataset("fashion_mnis")
