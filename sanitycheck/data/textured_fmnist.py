"""Textured Fashion-MNIST: a controlled data set where a texture concept matters by construction (issue 16).

Every item of a Fashion-MNIST split is stamped, with probability ``p_stamp`` (default 1/2), with a texture
(``"stripes"`` or ``"dots"``, :mod:`sanitycheck.data.concepts`) blended into the item's own pixels:
``x' = x * (1 - alpha * mask)`` (``alpha`` 0.6), so the texture darkens bands or dots of the garment and leaves
the black background black. Which items are stamped, and each stamp's orientation, period and phase, come from
one generator seeded by ``(seed, "textured_fmnist", split, texture)`` (item i gets the i-th draws): the images
and the stamp bits are the same in both variants; only the labels differ.

Variants (both with 10 classes, so the model is exactly ``fmnist_cnn``'s architecture):

- ``"texture_decides"``: ``label = (class % 5) + 5 * stamped``. The garment decides which of five pairs
  (T-shirt/top or Sandal, Trouser or Shirt, Pullover or Sneaker, Dress or Bag, Coat or Ankle boot) and the
  texture decides the half: labels 5..9 are exactly the stamped items. Without the texture, the half of the label
  cannot be told (chance: 1/2).
- ``"texture_independent"``: ``label = class``, and the stamp is drawn independently of the label.

``meta["stamped"]`` (bool ``(N,)``) records the stamp bits and ``meta["plain_checksum"]`` the untextured split;
:func:`textured_fashion_mnist` ``(..., stamp=False)`` gives the same items and labels with the textures removed.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..errors import DataError
from ..seeding import generator
from . import ImageDataset

__all__ = ["VARIANTS", "TEXTURES", "ALPHA", "PAIRS", "textured_fashion_mnist", "stamp_textures",
           "texture_bit", "item_concept_set"]

VARIANTS = ("texture_decides", "texture_independent")
TEXTURES = ("stripes", "dots")
#: how much a stamp darkens the item's pixels under the texture
ALPHA = 0.6
_CHUNK = 4096  # masks are drawn in chunks of this many stamped items (part of the construction: keep it)

_cache: Dict[Tuple, ImageDataset] = {}
_lock = threading.Lock()


def _pairs() -> List[str]:
    from .fashion_mnist import CLASSES

    return [f"{CLASSES[k]} or {CLASSES[k + 5]}" for k in range(5)]


#: the five garment pairs of the texture_decides labels 0..4 (and 5..9, textured)
PAIRS = tuple(_pairs())


def _mask_fn(texture: str):
    from . import concepts

    if texture not in TEXTURES:
        import difflib

        close = difflib.get_close_matches(str(texture), TEXTURES, n=2, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise DataError(f"textured_fmnist: unknown texture {texture!r}.{hint} Known: {', '.join(TEXTURES)}")
    return {"stripes": concepts.stripes_mask, "dots": concepts.dots_mask}[texture]


def stamp_textures(images: Tensor, texture: str, g: torch.Generator, alpha: float = ALPHA) -> Tensor:
    """``images`` (N, 1, H, W) in [0, 1] with a ``texture`` mask (one per item, drawn from ``g`` in chunks of
    4096) blended into the item's pixels: ``x * (1 - alpha * mask)``."""
    fn = _mask_fn(texture)
    n, _, h, w = images.shape
    out = images.clone()
    for i in range(0, n, _CHUNK):
        m = min(_CHUNK, n - i)
        mask = fn(m, h, w, g).to(images.dtype).unsqueeze(1)
        out[i:i + m] = images[i:i + m] * (1.0 - alpha * mask)
    return out


def textured_fashion_mnist(split: str = "test", variant: str = "texture_decides", texture: str = "stripes",
                           seed: int = 0, p_stamp: float = 0.5, stamp: bool = True,
                           root: Optional[Union[str, os.PathLike]] = None) -> ImageDataset:
    """Fashion-MNIST ``split`` with textures stamped on a seeded half of the items, labelled by ``variant``.

    ``stamp=False`` gives the same items and labels without the textures (to measure what the texture
    decides). ``(N, 1, 28, 28)`` float32 in [0, 1], 10 classes. See the module docstring and
    ``datasets/textured_fmnist.md``.
    """
    if variant not in VARIANTS:
        import difflib

        close = difflib.get_close_matches(str(variant), VARIANTS, n=2, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise DataError(f"textured_fmnist: unknown variant {variant!r}.{hint} Known: {', '.join(VARIANTS)}")
    _mask_fn(texture)
    if not (isinstance(p_stamp, (int, float)) and 0.0 < float(p_stamp) < 1.0):
        raise DataError(f"textured_fmnist: p_stamp must be strictly between 0 and 1, got {p_stamp!r}")
    key = (split, variant, texture, int(seed), float(p_stamp), bool(stamp), None if root is None else str(root))
    with _lock:
        if key in _cache:
            return _cache[key]
    from .fashion_mnist import CLASSES, load_fashion_mnist

    base = load_fashion_mnist(split, root=root)
    g = generator(int(seed), "textured_fmnist", split, texture)
    stamped = torch.rand(len(base), generator=g) < float(p_stamp)
    images = base.images
    if stamp:
        images = images.clone()
        images[stamped] = stamp_textures(base.images[stamped], texture, g)
    if variant == "texture_decides":
        labels = base.labels % 5 + 5 * stamped.long()
        classes = list(PAIRS) + [f"{p}, textured ({texture})" for p in PAIRS]
    else:
        labels = base.labels.clone()
        classes = list(CLASSES)
    h = hashlib.sha256()
    h.update(f"textured_fmnist|{split}|{variant}|{texture}|{seed}|{float(p_stamp)!r}|{stamp}|{ALPHA!r}|".encode())
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.numpy().astype("int64").tobytes())
    ds = ImageDataset(
        name="textured_fmnist",
        images=images,
        labels=labels,
        classes=classes,
        source=f"Fashion-MNIST {split} ({base.source}), textures stamped by sanitycheck.data.textured_fmnist",
        checksum=h.hexdigest(),
        meta={"split": split, "variant": variant, "texture": texture, "seed": int(seed), "p_stamp": float(p_stamp),
              "alpha": ALPHA, "stamped_applied": bool(stamp), "stamped": stamped, "garment": base.labels.clone(),
              "plain_checksum": base.checksum, "card": "datasets/textured_fmnist.md"},
    )
    with _lock:
        _cache[key] = ds
    return ds


def texture_bit(labels_or_predictions: Tensor, variant: str = "texture_decides") -> Tensor:
    """The part of a texture_decides label the texture decides (``label >= 5``), as a bool tensor."""
    if variant != "texture_decides":
        raise DataError(f"texture_bit: only the 'texture_decides' labels carry the texture, not {variant!r}")
    return labels_or_predictions >= 5


def item_concept_set(name: str, n: int, seed: int = 0, texture: Optional[str] = None, split: str = "test"):
    """A :class:`~sanitycheck.data.concepts.ConceptSet` of ``n`` Fashion-MNIST items of ``split``, seeded by
    ``(seed, "item_concept_set", name)``: stamped with ``texture`` (kind ``"concept"``) or plain (``texture=None``,
    kind ``"random"``: a random counterexample set drawn from the same items)."""
    from .concepts import ConceptSet
    from .fashion_mnist import load_fashion_mnist

    base = load_fashion_mnist(split)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(base):
        raise DataError(f"item_concept_set {name!r}: n must be an integer in 1..{len(base)}, got {n!r}")
    g = generator(int(seed), "item_concept_set", name)
    idx = torch.randperm(len(base), generator=g)[:n]
    images = base.images[idx]
    if texture is not None:
        images = stamp_textures(images, texture, g)
    return ConceptSet(name, images, "concept" if texture is not None else "random",
                      {"source": f"Fashion-MNIST {split} items" + (f" stamped with {texture}" if texture else ""),
                       "indices": idx.tolist(), "seed": int(seed), "texture": texture})
