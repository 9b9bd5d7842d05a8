"""ImageFolder-style directories (``root/<class>/<image>``), read with PIL.

Images are converted to RGB, resized so the shorter side is ``size`` (bilinear, antialiased)
and center-cropped to ``size`` x ``size``. Order is deterministic: classes sorted by name,
files sorted by name within a class.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import DataError
from . import ImageDataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMG_EXTENSIONS


def list_images(root: Union[str, os.PathLike]) -> Tuple[List[str], List[Tuple[Path, int]]]:
    """Sorted class names and ``(file, class index)`` pairs under ``root``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder {str(root)!r} does not exist; expected root/<class>/<image> files")
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} is not a directory; expected root/<class>/<image> files")
    try:
        class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    except OSError as err:
        raise DataError(f"cannot list image folder {str(root)!r}: {err}") from err
    classes: List[str] = []
    samples: List[Tuple[Path, int]] = []
    for d in class_dirs:
        try:
            files = sorted((f for f in d.iterdir() if _is_image(f)), key=lambda f: f.name)
        except OSError as err:
            raise DataError(f"cannot list class directory {str(d)!r}: {err}") from err
        if not files:
            continue
        classes.append(d.name)
        samples += [(f, len(classes) - 1) for f in files]
    if not samples:
        raise DataError(
            f"image folder {str(root)!r} holds no images: expected root/<class>/<image> with extensions "
            f"{', '.join(IMG_EXTENSIONS)}"
        )
    return classes, samples


def read_image(path: Union[str, os.PathLike], size: int) -> np.ndarray:
    """One image as ``(3, size, size)`` uint8: RGB, shorter side resized to ``size``, center crop."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}. Remove or replace the file.") from err
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def load_image_folder(
    root: Union[str, os.PathLike],
    size: int = 224,
    n: Optional[int] = None,
    split: Optional[str] = None,
) -> ImageDataset:
    """Images under ``root`` (or ``root/<split>`` when ``split`` is given) as ``(N, 3, size, size)`` in [0, 1].

    ``n`` keeps the first ``n`` files in the deterministic order (a DataError if fewer exist).
    ``checksum`` is a sha256 over (relative path, file bytes) of every file read.
    """
    if root is None:
        raise DataError("image_folder needs root=<directory holding <class>/<image> files>")
    base = Path(root).expanduser()
    if split is not None:
        base = base / split
    if not isinstance(size, int) or size <= 0:
        raise DataError(f"image_folder size must be a positive integer, got {size!r}")
    classes, samples = list_images(base)
    if n is not None:
        if n > len(samples):
            raise DataError(f"image folder {str(base)!r} holds {len(samples)} images; cannot take {n}")
        samples = samples[:n]
    h = hashlib.sha256()
    arrays = []
    for path, _ in samples:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read image {path}: {err}") from err
        h.update(path.relative_to(base).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(data).digest())
        arrays.append(read_image(path, size))
    images = torch.from_numpy(np.stack(arrays)).float().div_(255.0)
    labels = torch.tensor([c for _, c in samples], dtype=torch.long)
    return ImageDataset(
        name=f"image_folder:{base.name}",
        images=images,
        labels=labels,
        classes=classes,
        source=str(base.resolve()),
        checksum=h.hexdigest(),
        meta={"split": split, "size": size, "files": [str(p.relative_to(base)) for p, _ in samples]},
    )
