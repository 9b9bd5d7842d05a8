"""ImageFolder-style directories (``root/<class>/<image>``), read with PIL.

Images are converted to RGB, resized so the shorter side is ``size`` (bilinear, antialiased)
and center-cropped to ``size`` x ``size``. Every conversion is recorded (``meta['conversions']``) or
refused: 16-bit grayscale is scaled over its full range, alpha is composited over a stated background,
images below ``min_side`` pixels and decompression bombs (more than ``max_pixels``) raise DataError. Order is deterministic: classes sorted by name,
files sorted by name within a class.
"""

from __future__ import annotations

import hashlib
import os
import warnings
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


# Conversions applied to a file before resizing: name -> the rule, as recorded in ``meta['conversions']``.
CONVERSION_RULES = {
    "16bit_to_8bit": "16-bit grayscale scaled to 8 bits: v8 = round(v16 * 255 / 65535) (full 0..65535 range)",
    "grayscale_to_rgb": "grayscale replicated to R, G and B",
    "bilevel_to_rgb": "1-bit image: black 0, white 255, replicated to R, G and B",
    "palette_to_rgb": "palette indices replaced by their RGB palette entries",
    "alpha_composited": "alpha channel composited over a uniform background (see meta['alpha_background'])",
    "color_space_to_rgb": "CMYK/YCbCr/LAB/HSV converted to RGB by PIL's conversion",
    "first_frame_only": "multi-frame file (animated GIF, multi-page TIFF): only the first frame is read",
    "upscaled": "shorter side below the target size: enlarged (bilinear) before the center crop",
}
ALPHA_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
MIN_SIDE = 8  # default: an image whose shorter side is below this is refused (upscaling it invents the content)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_COLOR_SPACES = ("CMYK", "YCbCr", "LAB", "HSV")


def _open_checked(path: Path, max_pixels: Optional[int]):
    """``Image.open`` with decompression bombs (more than ``max_pixels`` pixels) refused as DataError."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    advice = ("Resize the file, remove it, or pass a larger max_pixels= (dataset parameter) if you trust it "
              "(PIL refuses more than twice PIL.Image.MAX_IMAGE_PIXELS in any case).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"refusing image {path}: it declares more pixels than the limit of {limit} "
                        f"(a possible decompression bomb; {err}). {advice}") from None
    w, h = im.size
    if limit is not None and w * h > limit:
        im.close()
        raise DataError(f"refusing image {path}: {w}x{h} = {w * h} pixels, more than the limit of {limit} "
                        f"(a possible decompression bomb). {advice}")
    return im


def read_image_with_notes(path: Union[str, os.PathLike], size: int, *, alpha: str = "white",
                          min_side: int = MIN_SIDE, max_pixels: Optional[int] = None,
                          resize: Optional[int] = None) -> Tuple[np.ndarray, List[str]]:
    """One image as ``(3, size, size)`` uint8, and the names of the conversions applied (``CONVERSION_RULES``).

    RGB, shorter side resized to ``resize`` (default ``size``; bilinear, antialiased), center crop to
    ``size`` (ImageNet evaluation: ``resize=256, size=224``). 16-bit grayscale is scaled
    to 8 bits over its full range; grayscale, 1-bit and palette images become RGB; an alpha channel is
    composited over the ``alpha`` background ("white" or "black"), or refused with ``alpha="refuse"``.
    Images whose shorter side is below ``min_side`` pixels, 32-bit float images and images with more than
    ``max_pixels`` pixels (default: PIL's ``MAX_IMAGE_PIXELS``) raise DataError.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if alpha not in ALPHA_BACKGROUNDS and alpha != "refuse":
        raise DataError(f"alpha must be one of {sorted(ALPHA_BACKGROUNDS) + ['refuse']}, got {alpha!r}")
    notes: List[str] = []
    try:
        with _open_checked(path, max_pixels) as im:
            if getattr(im, "n_frames", 1) > 1:
                notes.append("first_frame_only")
            im.load()
            im = _to_rgb(im, path, alpha, notes)
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}. Remove or replace the file.") from err
    resize = size if resize is None else resize
    if not (isinstance(resize, int) and resize >= size):
        raise DataError(f"resize must be an integer number of pixels at least the crop size {size}, got {resize!r}")
    w, h = im.size
    if min(w, h) < min_side:
        raise DataError(f"image {path} is {w}x{h} pixels, smaller than the minimum side of {min_side}: "
                        f"enlarging it to {size}x{size} would invent its content. Remove it, or pass "
                        f"min_side= (dataset parameter) to accept it (the upscaling is recorded).")
    scale = resize / min(w, h)
    nw, nh = max(resize, round(w * scale)), max(resize, round(h * scale))
    if min(w, h) < resize:
        notes.append("upscaled")
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy(), notes


def _to_rgb(im, path: Path, alpha: str, notes: List[str]):
    """``im`` as an 8-bit RGB PIL image, appending the name of every conversion to ``notes``."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT:
        a = np.asarray(im).astype(np.int64)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise DataError(f"image {path} is a {mode} integer image with values in [{int(a.min())}, {int(a.max())}], "
                            f"outside the 16-bit range 0..65535; convert it to an 8- or 16-bit image first")
        notes += ["16bit_to_8bit", "grayscale_to_rgb"]
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        raise DataError(f"image {path} is a 32-bit float image (mode F) whose value range is not defined; "
                        f"convert it to an 8- or 16-bit image first")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if mode == "P":
        notes.append("palette_to_rgb")
    elif mode in ("L", "LA", "La"):
        notes.append("grayscale_to_rgb")
    elif mode == "1":
        notes.append("bilevel_to_rgb")
    elif mode in _COLOR_SPACES:
        notes.append("color_space_to_rgb")
    if has_alpha:
        if alpha == "refuse":
            raise DataError(f"image {path} has an alpha channel (mode {mode}) and alpha='refuse'; pass "
                            f"alpha='white' or alpha='black' to composite it over that background (recorded)")
        notes.append("alpha_composited")
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUNDS[alpha] + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def read_image(path: Union[str, os.PathLike], size: int, **kwargs) -> np.ndarray:
    """One image as ``(3, size, size)`` uint8 (see :func:`read_image_with_notes`, which also says what was converted)."""
    return read_image_with_notes(path, size, **kwargs)[0]


def _conversion_record(per_file: List[Tuple[str, List[str]]], alpha: str, limit: int = 20) -> dict:
    """``{name: {"rule", "count", "files" (the first ``limit``)}}`` over the files that needed a conversion."""
    out: dict = {}
    for rel, notes in per_file:
        for name in notes:
            entry = out.setdefault(name, {"rule": CONVERSION_RULES[name], "count": 0, "files": []})
            entry["count"] += 1
            if len(entry["files"]) < limit:
                entry["files"].append(rel)
    if "alpha_composited" in out:
        out["alpha_composited"]["rule"] = f"alpha channel composited over a uniform {alpha} background {ALPHA_BACKGROUNDS[alpha]}"
    return out


def load_image_folder(
    root: Union[str, os.PathLike],
    size: int = 224,
    n: Optional[int] = None,
    split: Optional[str] = None,
    alpha: str = "white",
    min_side: int = MIN_SIDE,
    max_pixels: Optional[int] = None,
) -> ImageDataset:
    """Images under ``root`` (or ``root/<split>`` when ``split`` is given) as ``(N, 3, size, size)`` in [0, 1].

    ``n`` keeps the first ``n`` files in the deterministic order (a DataError if fewer exist).
    ``checksum`` is a sha256 over (relative path, file bytes) of every file read.
    Every conversion a file needed (16-bit, palette, alpha, grayscale, upscaling, ...) is recorded in
    ``meta['conversions']`` (the rule, how many files, the first files); audits copy it into results.json.
    ``alpha``, ``min_side`` and ``max_pixels`` are passed to :func:`read_image_with_notes`.
    """
    if root is None:
        raise DataError("image_folder needs root=<directory holding <class>/<image> files>")
    base = Path(root).expanduser()
    if split is not None:
        base = base / split
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise DataError(f"image_folder size must be a positive integer, got {size!r}")
    if not isinstance(min_side, int) or isinstance(min_side, bool) or min_side < 1:
        raise DataError(f"image_folder min_side must be a positive integer, got {min_side!r}")
    if max_pixels is not None and (not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1):
        raise DataError(f"image_folder max_pixels must be a positive integer or None, got {max_pixels!r}")
    if alpha not in ALPHA_BACKGROUNDS and alpha != "refuse":
        raise DataError(f"image_folder alpha must be one of {sorted(ALPHA_BACKGROUNDS) + ['refuse']}, got {alpha!r}")
    classes, samples = list_images(base)
    if n is not None:
        if n > len(samples):
            raise DataError(f"image folder {str(base)!r} holds {len(samples)} images; cannot take {n}")
        samples = samples[:n]
    h = hashlib.sha256()
    arrays = []
    per_file: List[Tuple[str, List[str]]] = []
    for path, _ in samples:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read image {path}: {err}") from err
        h.update(path.relative_to(base).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(data).digest())
        array, notes = read_image_with_notes(path, size, alpha=alpha, min_side=min_side, max_pixels=max_pixels)
        arrays.append(array)
        if notes:
            per_file.append((path.relative_to(base).as_posix(), notes))
    images = torch.from_numpy(np.stack(arrays)).float().div_(255.0)
    labels = torch.tensor([c for _, c in samples], dtype=torch.long)
    return ImageDataset(
        name=f"image_folder:{base.name}",
        images=images,
        labels=labels,
        classes=classes,
        source=str(base.resolve()),
        checksum=h.hexdigest(),
        meta={"split": split, "size": size, "files": [str(p.relative_to(base)) for p, _ in samples],
              "alpha_background": alpha, "min_side": min_side,
              "conversions": _conversion_record(per_file, alpha)},
    )
