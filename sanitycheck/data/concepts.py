"""Concept sets for concept explanations (TCAV, Kim et al. 2018): procedural textures and random sets.

A :class:`ConceptSet` is ``(name, images (N, C, H, W) float32 in [0, 1], kind "concept" | "random")``.
:func:`concept_sets` builds the built-in sets, seeded and at any size and channel count:

- ``"stripes"``: straight stripes at any orientation (uniform in [0, 180) degrees), several periods (4 to 16
  pixels at 64 px, scaled with the size), random phase, a dark and a light colour (the paper's zebra example:
  the concept "striped" for the ImageNet class :data:`ZEBRA_CLASS`);
- ``"dots"``: a rotated grid of round dots (period and radius drawn per image) on a contrasting background;
- ``"zigzag"``: stripes bent by a triangle wave (chevrons), any orientation;
- ``"random_noise_<i>"``: the i-th random set from noise (half white noise, half smooth noise upsampled
  from a coarse grid, shuffled);
- ``"random_photos_<i>"``: the i-th random set of random crops (a quarter to two thirds of the side) of the
  ``photos`` dataset, resized to ``size``. When the darknet photos are absent, the package photos
  (scikit-image, scikit-learn) are used and ``meta["photo_sources"]`` records it.

Every image of a set is drawn from a generator seeded by ``(seed, "concepts", name)``: a set depends only on
its name, ``size``, ``channels``, ``n`` and ``seed`` (the first ``k`` images of a set of ``n`` are not the set
of ``k``: ask for the ``n`` you use). ``concept_sets("random_noise", count=20, ...)`` gives the sets
``random_noise_0`` .. ``random_noise_19``.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError, UnknownNameError
from ..seeding import generator

__all__ = [
    "ConceptSet",
    "CONCEPTS",
    "RANDOM_KINDS",
    "ZEBRA_CLASS",
    "concept_sets",
    "concept_names",
    "stripes",
    "dots",
    "zigzag",
    "random_noise",
    "random_photo_crops",
    "TEXTURES",
]

#: ImageNet-1k index of "zebra": the paper's example class for the concept "striped"
ZEBRA_CLASS = 340

KINDS = ("concept", "random")

Size = Union[int, Tuple[int, int]]


@dataclass
class ConceptSet:
    """Images of one concept (``kind="concept"``) or one random counterexample set (``kind="random"``).

    ``images`` is ``(N, C, H, W)`` float32 in [0, 1]; ``meta`` records how the set was made.
    """

    name: str
    images: Tensor
    kind: str
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"concept set {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.images, Tensor) or self.images.dim() != 4:
            shape = tuple(self.images.shape) if isinstance(self.images, Tensor) else type(self.images).__name__
            raise DataError(f"concept set {self.name!r}: images must be a (N, C, H, W) tensor, got {shape}")
        if not self.images.is_floating_point():
            raise DataError(f"concept set {self.name!r}: images must be floating point in [0, 1], "
                            f"got {self.images.dtype}")
        if self.images.numel() and (float(self.images.min()) < 0.0 or float(self.images.max()) > 1.0):
            raise DataError(f"concept set {self.name!r}: images must lie in [0, 1], got values in "
                            f"[{float(self.images.min()):.4g}, {float(self.images.max()):.4g}]; rescale them")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, n: int) -> "ConceptSet":
        """The first ``n`` images; a :class:`DataError` when the set holds fewer (a test needs ``n``)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise DataError(f"concept set {self.name!r}: head(n) needs a positive integer, got {n!r}")
        if n > len(self):
            raise DataError(
                f"concept set {self.name!r} holds {len(self)} images but {n} are needed; give it at least {n} "
                f"images (built-in sets: concept_sets({self.name!r}, n={n}, ...)) or ask for fewer")
        return ConceptSet(self.name, self.images[:n], self.kind, {**self.meta, "head": n})

    def __repr__(self) -> str:
        return f"ConceptSet(name={self.name!r}, kind={self.kind!r}, n={len(self)}, shape={tuple(self.images.shape[1:])})"


# --------------------------------------------------------------------------- helpers


def _hw(size: Size) -> Tuple[int, int]:
    if isinstance(size, bool):
        raise DataError(f"concept size must be an int or (height, width), got {size!r}")
    if isinstance(size, int):
        size = (size, size)
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise DataError(f"concept size must be an int or (height, width), got {size!r}") from None
    if h < 4 or w < 4:
        raise DataError(f"concept size must be at least 4x4 pixels, got {(h, w)}")
    return h, w


def _check_n_channels(n: int, channels: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DataError(f"number of concept images n must be a positive integer, got {n!r}")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise DataError(f"channels must be a positive integer, got {channels!r}")


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _coords(n: int, h: int, w: int, g: torch.Generator) -> Tuple[Tensor, Tensor]:
    """Pixel coordinates rotated by a uniform angle per image: (u, v), each (n, h, w), in pixels."""
    theta = _uniform(g, n, 0.0, math.pi).view(n, 1, 1)
    y = torch.arange(h, dtype=torch.float64).view(1, h, 1)
    x = torch.arange(w, dtype=torch.float64).view(1, 1, w)
    u = x * torch.cos(theta) + y * torch.sin(theta)
    v = -x * torch.sin(theta) + y * torch.cos(theta)
    return u, v


def _periods(g: torch.Generator, n: int, h: int, w: int, lo: float, hi: float) -> Tensor:
    """Periods in pixels, log-uniform in [lo, hi] at 64 px, scaled with the image side (at least 3 px)."""
    scale = min(h, w) / 64.0
    p = torch.exp(_uniform(g, n, math.log(lo), math.log(hi))) * scale
    return p.clamp_min(3.0).view(n, 1, 1)


def _paint(mask: Tensor, channels: int, g: torch.Generator) -> Tensor:
    """(n, h, w) mask in [0, 1] -> (n, C, h, w): a dark colour where 0 and a light one where 1 (or the reverse).

    Channels of a colour share a grey level plus a small tint, so every texture has contrast >= 0.4.
    """
    n = mask.shape[0]
    dark = _uniform(g, n, 0.0, 0.3).view(n, 1) + _uniform(g, n * channels, -0.05, 0.05).view(n, channels)
    light = _uniform(g, n, 0.7, 1.0).view(n, 1) + _uniform(g, n * channels, -0.05, 0.05).view(n, channels)
    flip = torch.rand(n, generator=g) < 0.5
    a = torch.where(flip.view(n, 1), light, dark).clamp(0, 1).view(n, channels, 1, 1)
    b = torch.where(flip.view(n, 1), dark, light).clamp(0, 1).view(n, channels, 1, 1)
    m = mask.unsqueeze(1)
    return (a * (1 - m) + b * m).float().clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- textures


def stripes_mask(n: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """(n, h, w) binary stripes: any orientation, period 4..16 px at 64 px (scaled), random phase and duty."""
    u, _ = _coords(n, h, w, g)
    period = _periods(g, n, h, w, 4.0, 16.0)
    phase = _uniform(g, n, 0.0, 1.0).view(n, 1, 1)
    duty = _uniform(g, n, 0.4, 0.6).view(n, 1, 1)
    return (torch.frac(u / period + phase + 16.0) < duty).to(torch.float64)


def dots_mask(n: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """(n, h, w) round dots on a rotated square grid: period 5..16 px at 64 px, radius 20-35% of it."""
    u, v = _coords(n, h, w, g)
    period = _periods(g, n, h, w, 5.0, 16.0)
    radius = _uniform(g, n, 0.2, 0.35).view(n, 1, 1)
    pu = _uniform(g, n, 0.0, 1.0).view(n, 1, 1)
    pv = _uniform(g, n, 0.0, 1.0).view(n, 1, 1)
    du = torch.frac(u / period + pu + 16.0) - 0.5
    dv = torch.frac(v / period + pv + 16.0) - 0.5
    return ((du * du + dv * dv) < radius * radius).to(torch.float64)


def zigzag_mask(n: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """(n, h, w) zigzag (chevron) stripes: stripes displaced by a triangle wave along them, any orientation."""
    u, v = _coords(n, h, w, g)
    period = _periods(g, n, h, w, 5.0, 14.0)
    wavelength = period * _uniform(g, n, 1.5, 3.0).view(n, 1, 1)
    amplitude = period * _uniform(g, n, 0.8, 1.5).view(n, 1, 1)
    phase = _uniform(g, n, 0.0, 1.0).view(n, 1, 1)
    tri = (torch.frac(v / wavelength + 16.0) - 0.5).abs() * 2.0  # triangle wave in [0, 1]
    return (torch.frac((u + amplitude * tri) / period + phase + 16.0) < 0.5).to(torch.float64)


def _texture(mask_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def make(n: int, size: Size, channels: int = 3, *, seed: int = 0, generator_: Optional[torch.Generator] = None,
             name: str = "") -> Tensor:
        h, w = _hw(size)
        _check_n_channels(n, channels)
        g = generator_ if generator_ is not None else generator(seed, "concepts", name or mask_fn.__name__)
        return _paint(mask_fn(n, h, w, g), channels, g)

    make.__name__ = make.__qualname__ = mask_fn.__name__.replace("_mask", "")
    make.__doc__ = (f"``(n, channels, H, W)`` float32 images in [0, 1] of :func:`{mask_fn.__name__}` textures, "
                    f"painted in a dark and a light colour; seeded by ``(seed, 'concepts', name)``.")
    return make


stripes = _texture(stripes_mask)
dots = _texture(dots_mask)
zigzag = _texture(zigzag_mask)

#: the procedural concepts: name -> image generator ``(n, size, channels, seed=..., name=...)``
TEXTURES: Dict[str, Callable[..., Tensor]] = {"stripes": stripes, "dots": dots, "zigzag": zigzag}
CONCEPTS: Tuple[str, ...] = tuple(TEXTURES)
RANDOM_KINDS: Tuple[str, ...] = ("random_noise", "random_photos")


# --------------------------------------------------------------------------- random sets


def random_noise(n: int, size: Size, channels: int = 3, *, g: torch.Generator) -> Tensor:
    """Half white noise, half smooth noise (bilinear upsampling of a 4..16-cell grid), shuffled: (n, C, H, W)."""
    h, w = _hw(size)
    _check_n_channels(n, channels)
    out = torch.rand((n, channels, h, w), generator=g)
    smooth = torch.rand(n, generator=g) < 0.5
    cells = torch.randint(4, 17, (n,), generator=g)
    for i in torch.nonzero(smooth).flatten().tolist():
        c = int(cells[i])
        coarse = torch.rand((1, channels, c, c), generator=g)
        out[i] = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return out.clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=4)
def _photos(side: int) -> Tuple[Tensor, Tuple[str, ...], str]:
    """The ``photos`` dataset at ``side`` px (all sources, or the package photos when darknet is absent)."""
    from . import load_dataset

    try:
        ds = load_dataset("photos", size=side, resize=side)
        return ds.images, tuple(ds.meta["sources"]), ds.checksum
    except DataError as err:
        sources = ("scikit-image", "scikit-learn")
        warnings.warn(f"random_photos: the darknet photos are absent ({str(err)[:120]}...); random crops come from "
                      f"the package photos {list(sources)} only (recorded in the set's meta)", stacklevel=4)
        ds = load_dataset("photos", size=side, resize=side, sources=list(sources))
        return ds.images, sources, ds.checksum


def random_photo_crops(n: int, size: Size, channels: int = 3, *, g: torch.Generator
                       ) -> Tuple[Tensor, Dict[str, Any]]:
    """``n`` random square crops (side 25-67% of the photo) of random ``photos``, resized to ``size``.

    Photos are read at ``max(256, size)`` px (shorter side resized, centre crop). Crops are resized with
    antialiased bilinear interpolation. ``channels`` other than 3: 1 gives the luminance (ITU-R 601), more than
    3 repeats the luminance. Returns ``(images, meta)``; meta names the photo sources and their checksum.
    """
    h, w = _hw(size)
    _check_n_channels(n, channels)
    side = max(256, h, w)
    photos, sources, checksum = _photos(side)
    idx = torch.randint(0, photos.shape[0], (n,), generator=g)
    frac = _uniform(g, n, 0.25, 2.0 / 3.0)
    ox = torch.rand(n, generator=g, dtype=torch.float64)
    oy = torch.rand(n, generator=g, dtype=torch.float64)
    crops = []
    for i in range(n):
        c = max(4, int(round(float(frac[i]) * side)))
        top = int(float(oy[i]) * (side - c))
        left = int(float(ox[i]) * (side - c))
        patch = photos[int(idx[i]), :, top:top + c, left:left + c].unsqueeze(0)
        crops.append(F.interpolate(patch, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0])
    images = torch.stack(crops).clamp_(0.0, 1.0)
    if channels != 3:
        grey = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1)
        images = grey.expand(n, channels, h, w).contiguous()
    meta = {"photo_sources": list(sources), "photos_checksum": checksum, "photo_indices": idx.tolist()}
    return images, meta


# --------------------------------------------------------------------------- the built-in sets

_RANDOM_RE = re.compile(r"^(random_noise|random_photos)_(\d+)$")


def concept_names() -> List[str]:
    """The built-in names: the textures, and the random-set patterns ``random_noise_<i>``, ``random_photos_<i>``."""
    return list(CONCEPTS) + [f"{k}_<i>" for k in RANDOM_KINDS]


def _unknown(name: Any) -> UnknownNameError:
    known = list(CONCEPTS) + list(RANDOM_KINDS) + [f"{k}_0" for k in RANDOM_KINDS]
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(
        f"unknown concept set {name!r}.{hint} Known: {', '.join(concept_names())} (i = 0, 1, ...); "
        f"'random_noise' or 'random_photos' with count=k gives the sets _0 .. _k-1. Bring your own images "
        f"as ConceptSet(name, images, kind).")


def _one(name: str, size: Size, n: int, seed: int, channels: int) -> ConceptSet:
    h, w = _hw(size)
    _check_n_channels(n, channels)
    g = generator(seed, "concepts", name)
    meta: Dict[str, Any] = {"seed": seed, "size": [h, w], "channels": channels, "n": n}
    if name in TEXTURES:
        images = TEXTURES[name](n, (h, w), channels, generator_=g)
        return ConceptSet(name, images, "concept", {**meta, "source": f"procedural {name}"})
    m = _RANDOM_RE.match(name) if isinstance(name, str) else None
    if m is None:
        raise _unknown(name)
    if m.group(1) == "random_noise":
        return ConceptSet(name, random_noise(n, (h, w), channels, g=g), "random", {**meta, "source": "noise"})
    images, extra = random_photo_crops(n, (h, w), channels, g=g)
    return ConceptSet(name, images, "random", {**meta, "source": "photo crops", **extra})


def concept_sets(name: Union[str, Sequence[str]], *, size: Size, n: int, seed: int = 0, channels: int = 3,
                 count: Optional[int] = None) -> List[ConceptSet]:
    """The built-in concept sets called ``name`` (one name, or a sequence of names: one set each, in order).

    ``"stripes"``, ``"dots"``, ``"zigzag"``, ``"random_noise_<i>"``, ``"random_photos_<i>"`` give one set;
    ``"random_noise"`` / ``"random_photos"`` with ``count=k`` give the k sets ``<name>_0`` .. ``<name>_<k-1>``.
    Each set holds ``n`` images ``(n, channels, H, W)`` in [0, 1] (``size`` an int or ``(H, W)``), deterministic
    in ``(name, size, n, seed, channels)``. Unknown names raise :class:`UnknownNameError` with close matches.
    """
    if isinstance(name, (list, tuple)):
        if count is not None:
            raise DataError("concept_sets: count= applies to one 'random_noise' / 'random_photos' name, "
                            f"not to a list of names ({list(name)!r})")
        return [s for one in name for s in concept_sets(one, size=size, n=n, seed=seed, channels=channels)]
    if not isinstance(name, str):
        raise _unknown(name)
    if name in RANDOM_KINDS:
        if count is None or not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise DataError(f"concept_sets({name!r}) needs count=k (a positive integer, the number of random sets), "
                            f"got count={count!r}; or name one set, e.g. {name + '_0'!r}")
        return [_one(f"{name}_{i}", size, n, seed, channels) for i in range(count)]
    if count is not None:
        raise DataError(f"concept_sets: count= only applies to {RANDOM_KINDS}, not to {name!r}")
    return [_one(name, size, n, seed, channels)]
