"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from its four IDX ``.gz`` files, parsed with numpy.

Search order (first directory holding the split's two files wins):

1. ``root`` (explicit; if given, nothing else is tried),
2. ``$SANITYCHECK_DATA`` or ``$SANITYCHECK_DATA/fashion-mnist``,
3. ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``),
4. ``<cache_dir>/data/fashion-mnist`` (also its torchvision layout ``FashionMNIST/raw``),
   filled by torchvision's downloader when the machine is online.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import DataError
from . import ImageDataset

CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
N_SAMPLES = {"train": 60000, "test": 10000}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
HOW_TO_GET = (
    "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, puts the files in "
    f"{SYSTEM_DIR}), or download the four IDX .gz files from {MIRROR} (or "
    "https://github.com/zalandoresearch/fashion-mnist) into a directory and set SANITYCHECK_DATA to it "
    "(or pass root=...)."
)

_IDX_MAGIC = {1: 2049, 3: 2051}  # ndim -> magic number (unsigned byte data)
_parsed: Dict[Tuple[str, float, int], Tuple[np.ndarray, bytes]] = {}
_lock = threading.Lock()


def _read_idx(path: Path, ndim: int) -> Tuple[np.ndarray, bytes]:
    """Parse a gzip-compressed IDX file of unsigned bytes into (array, decompressed bytes).

    Any problem is a DataError naming the file.
    """
    try:
        st = path.stat()
    except OSError as err:
        raise DataError(f"cannot read Fashion-MNIST file {path}: {err}. {HOW_TO_GET}") from err
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    with _lock:
        if key in _parsed:
            return _parsed[key]
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(
            f"cannot read Fashion-MNIST file {path}: {err} (corrupt or not a gzip file). "
            f"Delete it and get a fresh copy. {HOW_TO_GET}"
        ) from err
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != _IDX_MAGIC[ndim]:
        raise DataError(
            f"Fashion-MNIST file {path} has IDX magic number {magic}, expected {_IDX_MAGIC[ndim]} "
            f"({ndim}-d unsigned bytes); the file is corrupt or is not the right file."
        )
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"Fashion-MNIST file {path} is truncated ({len(raw)} bytes after decompression)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(
            f"Fashion-MNIST file {path} declares shape {tuple(dims)} ({expected} bytes) but holds "
            f"{len(raw) - offset} bytes of data; the file is truncated or corrupt."
        )
    arr = np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)
    with _lock:
        _parsed[key] = (arr, raw)
    return arr, raw


def _candidates(root: Optional[Union[str, os.PathLike]]) -> List[Path]:
    if root is not None:
        root = Path(root).expanduser()
        return [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    dirs: List[Path] = []
    env = os.environ.get("SANITYCHECK_DATA")
    if env:
        base = Path(env).expanduser()
        dirs += [base, base / "fashion-mnist"]
    dirs.append(SYSTEM_DIR)
    dirs += [_cache_root(), _cache_root() / "FashionMNIST" / "raw"]
    return dirs


def _cache_root() -> Path:
    from ..io import cache_dir

    return cache_dir() / "data" / "fashion-mnist"


def _find(split: str, candidates: List[Path]) -> Optional[Path]:
    names = FILES[split]
    for d in candidates:
        if all((d / n).is_file() for n in names):
            return d
    return None


def _download(split: str) -> Optional[Path]:
    """Fetch the files with torchvision's downloader into the cache; None when offline or it fails."""
    from ._net import reachable

    if not reachable(MIRROR):
        return None
    try:
        from .._compat import import_torchvision

        tv = import_torchvision()
        root = _cache_root()
        tv.datasets.FashionMNIST(str(root), train=(split == "train"), download=True)
    except Exception:  # noqa: BLE001 - any download failure falls through to the error message
        return None
    return _find(split, [_cache_root() / "FashionMNIST" / "raw", _cache_root()])


def locate(split: str = "test", root: Optional[Union[str, os.PathLike]] = None, download: bool = True) -> Path:
    """The directory holding ``split``'s two files, following the search order above."""
    if split not in FILES:
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    candidates = _candidates(root)
    found = _find(split, candidates)
    if found is not None:
        return found
    if root is not None:
        r = Path(root).expanduser()
        if not r.exists():
            problem = "does not exist"
        elif not r.is_dir():
            problem = "is not a directory"
        elif not os.access(r, os.R_OK | os.X_OK):
            problem = "is not readable (permission denied)"
        else:
            problem = "does not hold the files"
        raise DataError(
            f"Fashion-MNIST root {str(root)!r} {problem}: looked for {', '.join(FILES[split])} in "
            f"{', '.join(str(c) for c in candidates)}. {HOW_TO_GET}"
        )
    if download:
        found = _download(split)
        if found is not None:
            return found
    raise DataError(
        f"Fashion-MNIST ({split}) not found: looked for {', '.join(FILES[split])} in "
        f"{', '.join(str(c) for c in candidates)}"
        + (" and could not download it (offline?)" if download else "")
        + f". {HOW_TO_GET}"
    )


def _checksum(*blobs: bytes) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(b)
    return h.hexdigest()


def load_fashion_mnist(
    split: str = "test", root: Optional[Union[str, os.PathLike]] = None, download: bool = True
) -> ImageDataset:
    """Fashion-MNIST ``split`` as ``(N, 1, 28, 28)`` float32 in [0, 1] with int64 labels.

    ``checksum`` is the sha256 of the *decompressed* IDX image bytes followed by the decompressed
    label bytes (``(zcat <images>.gz; zcat <labels>.gz) | sha256sum``): the same data repacked by
    another gzip (Debian's files differ from Zalando's as .gz, not as IDX) gets the same checksum.
    """
    directory = locate(split, root, download)
    img_path, lbl_path = (directory / n for n in FILES[split])
    images, raw_images = _read_idx(img_path, 3)
    labels, raw_labels = _read_idx(lbl_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"Fashion-MNIST {split}: {img_path} holds {images.shape[0]} images but {lbl_path} holds "
            f"{labels.shape[0]} labels"
        )
    if images.shape[1:] != (28, 28):
        raise DataError(f"Fashion-MNIST file {img_path} holds images of shape {images.shape[1:]}, expected (28, 28)")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise DataError(f"Fashion-MNIST file {lbl_path} holds label {int(labels.max())}, expected 0..9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(
        name="fashion_mnist",
        images=x,
        labels=y,
        classes=list(CLASSES),
        source=str(directory),
        checksum=_checksum(raw_images, raw_labels),
        meta={"split": split, "files": [str(img_path), str(lbl_path)]},
    )
