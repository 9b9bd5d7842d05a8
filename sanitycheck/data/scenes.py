"""Synthetic captioned scenes with known ground truth, for CLIP text-to-image saliency audits.

A scene is a ``canvas x canvas`` grayscale image (default 64 x 64) divided into a 2 x 2 grid of
cells (32 x 32). Between ``min_items`` and ``max_items`` Fashion-MNIST items (28 x 28, not resized)
are pasted into distinct cells, each at a random offset inside its cell (0 .. cell - 28 pixels
in x and y), the other cells left black. The classes of the items of one scene are *distinct*,
so a caption naming a class names exactly one item. The caption names one present item, chosen
uniformly: ``"a photo of a <class>"``, and with probability ``position_prob`` its cell too:
``"a photo of a <class> at the top left"``.

Ground truth per scene: the class of each cell (``-1`` for an empty cell), the box of each item
(``x0, y0, x1, y1`` in pixels, end exclusive: the 28 x 28 square the item was pasted into, which
holds every non-zero pixel of the item; ``-1`` for an empty cell), the captioned cell and the
Fashion-MNIST index of each item.

Splits: ``train`` scenes draw items from Fashion-MNIST's training images, ``test`` scenes from its
test images, so no item image is shared between the splits. Everything is deterministic from
``(seed, split)`` (numpy ``default_rng`` seeded by :func:`sanitycheck.seeding.derive_seed`).

Images: pixels are stored once as uint8 ``(N, H, W)`` (20,000 training scenes take 82 MB);
:attr:`ClipScenes.images` is a float32 ``(N, 3, H, W)`` tensor in [0, 1] whose three channels are
the *same* memory (``expand``, no copy): the grayscale image replicated for the three-channel
patch embedding of open_clip's towers. Explainers that sum over channels therefore return three
times the one-channel gradient; this changes no ranking.

Caching: :func:`load_clip_scenes` writes ``<cache>/data/clip_scenes-<split>-<key>.pt`` atomically
(:mod:`sanitycheck.io`); the key hashes the parameters, the checksum of the Fashion-MNIST split
and the source code of the generator, so changing any of them regenerates the scenes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..seeding import derive_seed
from ..provenance import source_text as _source  # one source-hash helper for every cache key

__all__ = [
    "CAPTION_CLASSES",
    "POSITIONS",
    "SceneSpec",
    "ClipScenes",
    "make_clip_scenes",
    "load_clip_scenes",
    "clip_scenes_dataset",
    "class_prompts",
    "caption_for",
    "article",
    "SceneTruth",
    "scene_truth",
]

#: Fashion-MNIST class names as they appear in captions (one or two lowercase words each)
CAPTION_CLASSES: List[str] = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
#: cell index (row-major in the 2 x 2 grid) -> position phrase
POSITIONS: List[str] = ["top left", "top right", "bottom left", "bottom right"]
ITEM = 28  # Fashion-MNIST image side
GRID = 2  # cells per side
#: key of the per-scene ground truth in an ImageDataset's ``meta`` (see :meth:`ClipScenes.to_image_dataset`)
SCENE_TRUTH_KEY = "scene_truth"


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def caption_for(class_index: int, cell: Optional[int] = None, template: str = "a photo of {article} {name}") -> str:
    """The caption naming class ``class_index`` (and, when ``cell`` is given, its position)."""
    name = CAPTION_CLASSES[class_index]
    text = template.format(article=article(name), name=name)
    if cell is not None:
        text += f" at the {POSITIONS[cell]}"
    return text


def class_prompts(template: str = "a photo of {article} {name}") -> List[str]:
    """One prompt per Fashion-MNIST class, in class order: the zero-shot prompt set."""
    return [caption_for(c, None, template) for c in range(len(CAPTION_CLASSES))]


@dataclass(frozen=True)
class SceneSpec:
    """What determines a set of scenes (together with the Fashion-MNIST split and the code)."""

    split: str = "test"
    n: int = 2000
    seed: int = 0
    canvas: int = 64
    min_items: int = 2
    max_items: int = 4
    position_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ConfigError(f"SceneSpec.split must be 'train' or 'test', got {self.split!r}")
        if not (isinstance(self.n, int) and self.n >= 1):
            raise ConfigError(f"SceneSpec.n must be a positive integer, got {self.n!r}")
        if not (isinstance(self.canvas, int) and self.canvas % GRID == 0 and self.canvas // GRID >= ITEM):
            raise ConfigError(f"SceneSpec.canvas must be an even integer >= {GRID * ITEM} (cells hold a "
                              f"{ITEM}x{ITEM} item), got {self.canvas!r}")
        if not (1 <= self.min_items <= self.max_items <= GRID * GRID):
            raise ConfigError(f"SceneSpec needs 1 <= min_items <= max_items <= {GRID * GRID}, got "
                              f"{self.min_items}..{self.max_items}")
        if not (0.0 <= self.position_prob <= 1.0):
            raise ConfigError(f"SceneSpec.position_prob must be in [0, 1], got {self.position_prob!r}")

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ClipScenes:
    """Captioned scenes: uint8 pixels ``(N, H, W)`` plus per-scene ground truth (see the module doc).

    Fields: ``pixels`` (N, H, W) uint8; ``captions`` (N strings); ``caption_cell`` (N,) the cell
    (0..3, row-major) of the item the caption names — the *caption item index*; ``classes`` (N, 4)
    class per cell, -1 when empty; ``boxes`` (N, 4, 4) ``x0, y0, x1, y1`` per cell (end exclusive),
    -1 when empty; ``source_index`` (N, 4) the Fashion-MNIST index of each item, -1 when empty;
    ``positional`` (N,) bool, whether the caption names the position; ``class_names``; ``checksum``
    (sha256 of pixels, captions and ground truth); ``meta`` (spec, source data checksum).
    """

    name: str
    pixels: Tensor
    captions: List[str]
    caption_cell: Tensor
    classes: Tensor
    boxes: Tensor
    source_index: Tensor
    positional: Tensor
    class_names: List[str] = field(default_factory=lambda: list(CAPTION_CLASSES))
    checksum: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.pixels.shape[0]
        if self.pixels.dtype != torch.uint8 or self.pixels.dim() != 3:
            raise DataError(f"ClipScenes.pixels must be uint8 (N, H, W), got {self.pixels.dtype} "
                            f"{tuple(self.pixels.shape)}")
        for fname, shape in (("caption_cell", (n,)), ("classes", (n, GRID * GRID)),
                             ("boxes", (n, GRID * GRID, 4)), ("source_index", (n, GRID * GRID)),
                             ("positional", (n,))):
            if tuple(getattr(self, fname).shape) != shape:
                raise DataError(f"ClipScenes.{fname} has shape {tuple(getattr(self, fname).shape)}, expected {shape}")
        if len(self.captions) != n:
            raise DataError(f"ClipScenes has {n} images but {len(self.captions)} captions")

    # ---------------------------------------------------------------- views
    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.pixels.shape[-1])

    @property
    def images(self) -> Tensor:
        """float32 ``(N, 3, H, W)`` in [0, 1]; the three channels share memory (grayscale replicated)."""
        return self.image_batch(slice(None))

    def image_batch(self, index: Union[slice, Tensor, Sequence[int]]) -> Tensor:
        """float32 ``(b, 3, H, W)`` in [0, 1] for ``pixels[index]`` (channels expanded, not copied)."""
        return (self.pixels[index].to(torch.float32) / 255.0).unsqueeze(1).expand(-1, 3, -1, -1)

    @property
    def caption_classes(self) -> Tensor:
        """(N,) class index of the captioned item: the prompt index in :func:`class_prompts`."""
        return self.classes.gather(1, self.caption_cell[:, None]).squeeze(1)

    @property
    def caption_boxes(self) -> Tensor:
        """(N, 4) box ``x0, y0, x1, y1`` of the captioned item."""
        return self.boxes[torch.arange(len(self)), self.caption_cell]

    @property
    def n_items(self) -> Tensor:
        return (self.classes >= 0).sum(1)

    def present(self) -> Tensor:
        """(N, n_classes) bool: which classes are in each scene."""
        out = torch.zeros(len(self), len(self.class_names), dtype=torch.bool)
        rows, cells = (self.classes >= 0).nonzero(as_tuple=True)
        out[rows, self.classes[rows, cells]] = True
        return out

    def consistent(self, rows: Optional[Tensor] = None, cols: Optional[Tensor] = None) -> Tensor:
        """``M[i, j]`` = caption j describes image i (its class is present, at its cell if positional).

        ``rows``/``cols`` select images and captions (default all): ``(len(rows), len(cols))`` bool.
        """
        rows = torch.arange(len(self)) if rows is None else torch.as_tensor(rows)
        cols = torch.arange(len(self)) if cols is None else torch.as_tensor(cols)
        cls_j = self.caption_classes[cols]                      # (m,)
        cell_j = self.caption_cell[cols]
        pos_j = self.positional[cols]
        img_classes = self.classes[rows]                        # (r, 4)
        same_class = img_classes[:, None, :] == cls_j[None, :, None]   # (r, m, 4)
        any_cell = same_class.any(-1)
        at_cell = same_class.gather(2, cell_j[None, :, None].expand(len(rows), -1, 1)).squeeze(-1)
        return torch.where(pos_j[None, :], at_cell, any_cell)

    def select(self, index: Union[slice, Tensor, Sequence[int]]) -> "ClipScenes":
        idx = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        return ClipScenes(
            name=self.name, pixels=self.pixels[idx], captions=[self.captions[int(i)] for i in idx],
            caption_cell=self.caption_cell[idx], classes=self.classes[idx], boxes=self.boxes[idx],
            source_index=self.source_index[idx], positional=self.positional[idx],
            class_names=list(self.class_names), checksum=self.checksum,
            meta={**self.meta, "selected": len(idx)},
        )

    def head(self, n: int) -> "ClipScenes":
        if not (isinstance(n, int) and 0 <= n <= len(self)):
            raise DataError(f"{self.name}: head(n) needs 0 <= n <= {len(self)}, got {n!r}")
        return self.select(slice(0, n))

    def to_image_dataset(self):
        """An :class:`~sanitycheck.data.ImageDataset` for the runner: images ``(N, 3, H, W)`` with
        labels = the captioned item's class, i.e. the prompt index of :func:`class_prompts` (the
        target of a :class:`~sanitycheck.models.clip.ClipSimilarity` built on those prompts).
        The ground truth travels in ``meta``: ``meta['caption_boxes']`` (a list, for reading) and
        ``meta['scene_truth']`` (tensors: every cell's class and box, the captioned cell), which
        :func:`scene_truth` reads back for the samples a run audits."""
        from ..data import ImageDataset

        truth = {"classes": self.classes.clone(), "boxes": self.boxes.clone(), "caption_cell": self.caption_cell.clone(),
                 "n_classes": len(self.class_names)}
        return ImageDataset(
            name=self.name, images=self.images.contiguous(), labels=self.caption_classes.clone(),
            classes=class_prompts(), source="sanitycheck.data.scenes (Fashion-MNIST items on a 2x2 grid)",
            checksum=self.checksum, meta={**self.meta, "caption_boxes": self.caption_boxes.tolist(),
                                          SCENE_TRUTH_KEY: truth},
        )

    def __repr__(self) -> str:
        return (f"ClipScenes(name={self.name!r}, n={len(self)}, size={self.image_size}, "
                f"items/scene={float(self.n_items.float().mean()) if len(self) else 0:.2f}, "
                f"checksum={self.checksum[:12]}...)")


# --------------------------------------------------------------------------- generation


def _generate(spec: SceneSpec, images: np.ndarray, labels: np.ndarray) -> Dict[str, Any]:
    """Scenes from ``images`` (M, 28, 28) uint8 with ``labels`` (M,): plain numpy, deterministic."""
    rng = np.random.default_rng(derive_seed(spec.seed, "clip_scenes", spec.split))
    n_cells = GRID * GRID
    cell = spec.canvas // GRID
    jitter = cell - ITEM
    by_class = [np.flatnonzero(labels == c) for c in range(len(CAPTION_CLASSES))]
    if any(len(ix) == 0 for ix in by_class):
        raise DataError("Fashion-MNIST split lacks a class; cannot compose scenes")
    n = spec.n
    pixels = np.zeros((n, spec.canvas, spec.canvas), dtype=np.uint8)
    classes = np.full((n, n_cells), -1, dtype=np.int64)
    boxes = np.full((n, n_cells, 4), -1, dtype=np.int64)
    source = np.full((n, n_cells), -1, dtype=np.int64)
    caption_cell = np.zeros(n, dtype=np.int64)
    positional = np.zeros(n, dtype=bool)
    captions: List[str] = []
    n_items = rng.integers(spec.min_items, spec.max_items + 1, size=n)
    for i in range(n):
        k = int(n_items[i])
        cells = rng.choice(n_cells, size=k, replace=False)
        cls = rng.choice(len(CAPTION_CLASSES), size=k, replace=False)
        offsets = rng.integers(0, jitter + 1, size=(k, 2))
        for c, kls, (dx, dy) in zip(cells, cls, offsets):
            src = by_class[kls][rng.integers(len(by_class[kls]))]
            x0 = (c % GRID) * cell + int(dx)
            y0 = (c // GRID) * cell + int(dy)
            pixels[i, y0:y0 + ITEM, x0:x0 + ITEM] = images[src]
            classes[i, c] = kls
            boxes[i, c] = (x0, y0, x0 + ITEM, y0 + ITEM)
            source[i, c] = src
        j = int(cells[rng.integers(k)])
        caption_cell[i] = j
        positional[i] = bool(rng.random() < spec.position_prob)
        captions.append(caption_for(int(classes[i, j]), j if positional[i] else None))
    return dict(pixels=pixels, classes=classes, boxes=boxes, source_index=source, caption_cell=caption_cell,
                positional=positional, captions=captions)


def _checksum(parts: Dict[str, Any]) -> str:
    h = hashlib.sha256()
    for key in ("pixels", "classes", "boxes", "source_index", "caption_cell", "positional"):
        h.update(np.ascontiguousarray(parts[key]).tobytes())
    h.update("\n".join(parts["captions"]).encode())
    return h.hexdigest()


def _from_parts(spec: SceneSpec, parts: Dict[str, Any], source_checksum: str, checksum: str) -> ClipScenes:
    return ClipScenes(
        name="clip_scenes",
        pixels=torch.as_tensor(np.asarray(parts["pixels"]), dtype=torch.uint8),
        captions=list(parts["captions"]),
        caption_cell=torch.as_tensor(np.asarray(parts["caption_cell"]), dtype=torch.long),
        classes=torch.as_tensor(np.asarray(parts["classes"]), dtype=torch.long),
        boxes=torch.as_tensor(np.asarray(parts["boxes"]), dtype=torch.long),
        source_index=torch.as_tensor(np.asarray(parts["source_index"]), dtype=torch.long),
        positional=torch.as_tensor(np.asarray(parts["positional"]), dtype=torch.bool),
        checksum=checksum,
        meta={"spec": spec.as_dict(), "source": "Fashion-MNIST " + spec.split, "source_checksum": source_checksum},
    )


def make_clip_scenes(spec: SceneSpec, images: Tensor, labels: Tensor, source_checksum: str = "") -> ClipScenes:
    """Scenes from given item images ``(M, 1, 28, 28)`` float in [0, 1] (or uint8 ``(M, 28, 28)``)
    and labels ``(M,)`` — no cache; :func:`load_clip_scenes` is the cached entry point."""
    imgs = torch.as_tensor(images)
    if imgs.dim() == 4:
        imgs = imgs[:, 0]
    if imgs.is_floating_point():
        imgs = (imgs.clamp(0, 1) * 255.0).round().to(torch.uint8)
    if tuple(imgs.shape[1:]) != (ITEM, ITEM):
        raise DataError(f"scene items must be {ITEM}x{ITEM}, got {tuple(imgs.shape[1:])}")
    parts = _generate(spec, imgs.numpy(), torch.as_tensor(labels).numpy())
    return _from_parts(spec, parts, source_checksum, _checksum(parts))




def scenes_key(spec: SceneSpec, source_checksum: str) -> str:
    payload = {"spec": spec.as_dict(), "source": source_checksum, "code": _source(_generate),
               "captions": _source(caption_for), "classes": CAPTION_CLASSES, "positions": POSITIONS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_clip_scenes(split: str = "test", n: int = 2000, seed: int = 0, *, cache_dir: Optional[Union[str, Path]] = None,
                     root: Optional[Union[str, Path]] = None, **params: Any) -> ClipScenes:
    """Scenes of ``split`` (items from that Fashion-MNIST split), cached under ``<cache>/data/``.

    ``params`` are further :class:`SceneSpec` fields (``canvas``, ``min_items``, ``max_items``,
    ``position_prob``); ``root`` is passed to the Fashion-MNIST loader.
    """
    from ..data.fashion_mnist import load_fashion_mnist
    from ..io import atomic_torch_save
    from ..io import cache_dir as default_cache_dir

    unknown = sorted(set(params) - {f.name for f in dataclasses.fields(SceneSpec)})
    if unknown:
        raise ConfigError(f"load_clip_scenes: unknown option(s) {unknown}; SceneSpec fields: "
                          f"{[f.name for f in dataclasses.fields(SceneSpec)]}")
    spec = SceneSpec(split=split, n=n, seed=seed, **params)
    fm = load_fashion_mnist(split, root=root)
    key = scenes_key(spec, fm.checksum)
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = base / "data" / f"clip_scenes-{split}-{key}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") != key:
                raise ValueError(f"key {blob.get('key')!r} != {key!r}")
            return _from_parts(spec, blob["parts"], fm.checksum, blob["checksum"])
        except Exception as err:  # noqa: BLE001 - an unreadable cache file is regenerated
            warnings.warn(f"cached scenes {path} are unreadable ({type(err).__name__}: {err}); regenerating them",
                          stacklevel=2)
    scenes = make_clip_scenes(spec, fm.images, fm.labels, fm.checksum)
    parts = {"pixels": scenes.pixels, "classes": scenes.classes, "boxes": scenes.boxes,
             "source_index": scenes.source_index, "caption_cell": scenes.caption_cell,
             "positional": scenes.positional, "captions": scenes.captions}
    atomic_torch_save(path, {"key": key, "checksum": scenes.checksum, "parts": parts})
    scenes.meta["cache_file"] = str(path)
    return scenes


def clip_scenes_dataset(split: str = "test", n: int = 2000, seed: int = 0, **params: Any):
    """Dataset loader for the registry: :func:`load_clip_scenes` as an
    :class:`~sanitycheck.data.ImageDataset` (labels = prompt index of the captioned item; the boxes
    and every cell's class in ``meta``, read back with :func:`scene_truth`).

    The default ``n=2000, seed=0`` are the test scenes on which the trained tiny CLIP's retrieval
    accuracy is measured (:data:`~sanitycheck.models.clip.DEFAULT_TINY_SPEC`), so a suite auditing the
    first 128 audits the first 128 of those."""
    return load_clip_scenes(split, n, seed, **params).to_image_dataset()


# --------------------------------------------------------------------------- ground truth of a run


@dataclass(frozen=True)
class SceneTruth:
    """Ground truth of the scenes a run audits, row i = the run's sample i.

    ``classes`` (n, 4) class per cell (-1 empty); ``boxes`` (n, 4, 4) box per cell; ``caption_cell``
    (n,); ``n_classes`` the number of prompts (classes). Views: :attr:`caption_boxes`,
    :attr:`caption_classes`, :meth:`present`, :attr:`n_items`.
    """

    classes: Tensor
    boxes: Tensor
    caption_cell: Tensor
    n_classes: int

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    @property
    def caption_boxes(self) -> Tensor:
        return self.boxes[torch.arange(len(self)), self.caption_cell]

    @property
    def caption_classes(self) -> Tensor:
        return self.classes.gather(1, self.caption_cell[:, None]).squeeze(1)

    @property
    def n_items(self) -> Tensor:
        return (self.classes >= 0).sum(1)

    def present(self) -> Tensor:
        """(n, n_classes) bool: which classes are in each scene."""
        out = torch.zeros(len(self), self.n_classes, dtype=torch.bool)
        rows, cells = (self.classes >= 0).nonzero(as_tuple=True)
        out[rows, self.classes[rows, cells]] = True
        return out


def scene_truth(dataset: Any, n: Optional[int] = None, *, who: str = "this check") -> SceneTruth:
    """The :class:`SceneTruth` of the first ``n`` samples of ``dataset`` (default: all of it).

    ``dataset`` is the :class:`~sanitycheck.data.ImageDataset` of a run (``clip_scenes``, or any
    dataset whose ``meta['scene_truth']`` holds ``classes`` (N, 4), ``boxes`` (N, 4, 4) and
    ``caption_cell`` (N,)). A subset taken by the runner (``meta['indices']``, as ``validate`` does when
    it re-runs a sample of images) is honoured. The captioned item's class must equal the dataset's
    label of each sample: otherwise the ground truth does not belong to these images and this raises.
    """
    meta = getattr(dataset, "meta", None) or {}
    truth = meta.get(SCENE_TRUTH_KEY)
    name = getattr(dataset, "name", type(dataset).__name__)
    if truth is None:
        raise ConfigError(f"{who} needs scenes with ground truth (boxes and the class of every item), but dataset "
                          f"{name!r} has none; use dataset 'clip_scenes' (or put meta['{SCENE_TRUTH_KEY}'] on yours)")
    classes = torch.as_tensor(truth["classes"], dtype=torch.long)
    boxes = torch.as_tensor(truth["boxes"], dtype=torch.long)
    cell = torch.as_tensor(truth["caption_cell"], dtype=torch.long)
    indices = meta.get("indices")
    if indices is not None:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        classes, boxes, cell = classes[idx], boxes[idx], cell[idx]
    size = len(dataset) if n is None else int(n)
    if size > classes.shape[0]:
        raise DataError(f"{who}: dataset {name!r} has ground truth for {classes.shape[0]} scenes, not {size}")
    out = SceneTruth(classes[:size], boxes[:size], cell[:size], int(truth.get("n_classes", len(CAPTION_CLASSES))))
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        labels = torch.as_tensor(labels)[:size].long()
        if labels.shape[0] == size and not torch.equal(labels, out.caption_classes):
            bad = (labels != out.caption_classes).nonzero().flatten()[:5].tolist()
            raise DataError(f"{who}: the ground truth of dataset {name!r} does not match its labels (samples {bad}); "
                            "the scenes were reordered or subset without their ground truth")
    return out
