"""Fashion-MNIST loader: shapes, ranges, checksums, search order, clear errors."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sanitycheck.data import ImageDataset, load_dataset
from sanitycheck.data import fashion_mnist as fm
from sanitycheck.errors import DataError

SYSTEM = fm.SYSTEM_DIR
have_system = pytest.mark.skipif(
    not all((SYSTEM / n).is_file() for n in fm.FILES["test"]), reason="dataset-fashion-mnist not installed"
)

TEST_CHECKSUM = "30214f3fe91405cb8ea60b11ecf0914a65dd6a6ca8e13c13a62eb434f2d9fe56"


def _write_idx(path: Path, arr: np.ndarray) -> None:
    magic = {1: 2049, 3: 2051}[arr.ndim]
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def _fake_split(root: Path, split: str = "test", n: int = 6) -> None:
    root.mkdir(parents=True, exist_ok=True)
    img, lbl = fm.FILES[split]
    rng = np.random.default_rng(0)
    _write_idx(root / img, rng.integers(0, 256, size=(n, 28, 28)))
    _write_idx(root / lbl, np.arange(n) % 10)


@have_system
def test_system_test_split_shapes_and_checksum():
    ds = load_dataset("fashion_mnist", split="test")
    assert isinstance(ds, ImageDataset)
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.labels.shape == (10000,) and ds.labels.dtype == torch.long
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0 and float(ds.images.max()) == 1.0
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10
    assert ds.checksum == TEST_CHECKSUM
    assert len(ds) == 10000
    head = ds.head(5)
    assert len(head) == 5 and torch.equal(head.images, ds.images[:5]) and head.checksum == ds.checksum
    with pytest.raises(DataError, match="10000"):
        ds.head(10001)


def test_explicit_root_fake_files_and_checksum(tmp_path):
    _fake_split(tmp_path)
    ds = fm.load_fashion_mnist(root=tmp_path)
    assert ds.images.shape == (6, 1, 28, 28)
    assert ds.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert ds.source == str(tmp_path)
    raw = b"".join(gzip.open(tmp_path / n).read() for n in fm.FILES["test"])
    import hashlib

    assert ds.checksum == hashlib.sha256(raw).hexdigest()


def test_env_var_and_subdir(tmp_path, monkeypatch):
    _fake_split(tmp_path / "fashion-mnist", n=4)
    monkeypatch.setenv("SANITYCHECK_DATA", str(tmp_path))
    assert len(fm.load_fashion_mnist()) == 4


def test_missing_explicit_root_is_clear(tmp_path):
    with pytest.raises(DataError) as info:
        fm.load_fashion_mnist(root=tmp_path / "nope")
    msg = str(info.value)
    assert "does not exist" in msg and "apt-get install dataset-fashion-mnist" in msg and "SANITYCHECK_DATA" in msg


def test_root_without_files(tmp_path):
    with pytest.raises(DataError, match="does not hold the files"):
        fm.load_fashion_mnist(root=tmp_path)


def test_nothing_found_lists_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("SANITYCHECK_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SANITYCHECK_OFFLINE", "1")
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    with pytest.raises(DataError) as info:
        fm.load_fashion_mnist(split="train")
    msg = str(info.value)
    assert str(tmp_path / "data") in msg and str(tmp_path / "system") in msg and "cache" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_corrupt_gzip_names_file(tmp_path):
    _fake_split(tmp_path)
    bad = tmp_path / fm.FILES["test"][0]
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match=str(bad.name)):
        fm.load_fashion_mnist(root=tmp_path)


def test_wrong_magic_and_truncation(tmp_path):
    _fake_split(tmp_path)
    img = tmp_path / fm.FILES["test"][0]
    # labels file where an images file is expected: wrong magic
    shutil.copy(tmp_path / fm.FILES["test"][1], img)
    with pytest.raises(DataError, match="magic number"):
        fm.load_fashion_mnist(root=tmp_path)
    _fake_split(tmp_path)
    data = gzip.open(img).read()
    with gzip.open(img, "wb") as fh:
        fh.write(data[:-100])
    with pytest.raises(DataError, match="truncated"):
        fm.load_fashion_mnist(root=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read anything")
def test_unreadable_root(tmp_path):
    _fake_split(tmp_path / "d")
    (tmp_path / "d").chmod(0)
    try:
        with pytest.raises(DataError, match="permission"):
            fm.load_fashion_mnist(root=tmp_path / "d")
    finally:
        (tmp_path / "d").chmod(0o755)


def test_unreadable_file_is_data_error(tmp_path):
    _fake_split(tmp_path)
    img = tmp_path / fm.FILES["test"][0]
    img.unlink()
    img.mkdir()  # a directory where the file should be: is_file() fails -> clear error
    with pytest.raises(DataError, match="does not hold the files"):
        fm.load_fashion_mnist(root=tmp_path)


def test_bad_split():
    with pytest.raises(DataError, match="split"):
        fm.load_fashion_mnist(split="validation")


def test_root_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match="is not a directory"):
        fm.load_fashion_mnist(root=f)
