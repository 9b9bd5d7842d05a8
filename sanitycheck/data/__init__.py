"""Datasets: one container type and loaders resolved through ``sanitycheck.registry.DATASETS``.

Cards (source, license, size, checksums) live in the top-level ``datasets/`` folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Union

import torch
from torch import Tensor

from ..errors import DataError

__all__ = ["ImageDataset", "load_dataset", "sha256_files"]


@dataclass
class ImageDataset:
    """Images ``(N, C, H, W)`` float32 in [0, 1] with labels ``(N,)`` int64.

    ``checksum`` is a sha256 over the raw files the images were read from (or the
    bytes of the arrays, for generated data), so results can record which data they saw.
    """

    name: str
    images: Tensor
    labels: Tensor
    classes: List[str]
    source: str
    checksum: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.dim() != 4:
            shape = tuple(self.images.shape) if isinstance(self.images, Tensor) else type(self.images).__name__
            raise DataError(f"dataset {self.name!r}: images must be a (N, C, H, W) tensor, got {shape}")
        if self.images.dtype != torch.float32:
            raise DataError(f"dataset {self.name!r}: images must be float32, got {self.images.dtype}")
        if not isinstance(self.labels, Tensor) or self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"dataset {self.name!r}: labels must be a ({self.images.shape[0]},) tensor, "
                f"got {tuple(getattr(self.labels, 'shape', ()))}"
            )
        if self.labels.dtype != torch.long:
            self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, n: int) -> "ImageDataset":
        """The first ``n`` samples (same name, source and checksum; ``meta['head']`` records n)."""
        if not isinstance(n, int) or n < 0:
            raise DataError(f"dataset {self.name!r}: head(n) needs a non-negative integer, got {n!r}")
        if n > len(self):
            raise DataError(
                f"dataset {self.name!r} has {len(self)} samples; cannot take the first {n}. "
                f"Ask for at most {len(self)}."
            )
        return ImageDataset(
            name=self.name,
            images=self.images[:n],
            labels=self.labels[:n],
            classes=list(self.classes),
            source=self.source,
            checksum=self.checksum,
            meta={**self.meta, "head": n},
        )

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, shape={tuple(self.images.shape[1:])}, "
            f"classes={len(self.classes)}, checksum={self.checksum[:12]}...)"
        )


def sha256_files(paths: Iterable[Union[str, Path]]) -> str:
    """sha256 over the concatenated bytes of ``paths`` in the given order (``cat paths | sha256sum``)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        try:
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as err:
            raise DataError(f"cannot read {p}: {err}") from err
    return h.hexdigest()


def load_dataset(name: str, **kwargs):
    """Load a registered dataset by name (``fashion_mnist``, ``digits``, ``image_folder``, ``babi1``,
    ``synthetic_sentiment``, ``text_file``, ``review_words``, ... or an import path): an ImageDataset, a
    TextDataset, or a WordCorpus (the texts of an activations audit)."""
    from ..registry import DATASETS
    from .text import TextDataset
    from .token_corpus import WordCorpus

    loader = DATASETS.get(name)
    ds = loader(**kwargs)
    if not isinstance(ds, (ImageDataset, TextDataset, WordCorpus)):
        raise DataError(f"dataset loader {name!r} returned {type(ds).__name__}, expected ImageDataset, TextDataset "
                        "or WordCorpus")
    return ds
