from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sanitycheck.data import load_dataset
from sanitycheck.data.image_folder import load_image_folder
from sanitycheck.errors import DataError


def _folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "empty").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "dog" / "b.png")
    Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8), mode="L").save(root / "dog" / "a.png")
    Image.fromarray(np.full((32, 32, 4), 255, dtype=np.uint8), mode="RGBA").save(root / "cat" / "z.png")
    (root / "cat" / "notes.txt").write_text("ignored")
    return root


def test_image_folder_shapes_order_and_grayscale(tmp_path):
    root = _folder(tmp_path)
    ds = load_dataset("image_folder", root=root, size=16)
    assert ds.images.shape == (3, 3, 16, 16) and ds.images.dtype == torch.float32
    assert ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 1, 1]
    assert ds.meta["files"] == ["cat/z.png", "dog/a.png", "dog/b.png"]
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    gray = ds.images[1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # L -> RGB replicates
    assert torch.allclose(ds.images[0], torch.ones(3, 16, 16))
    again = load_image_folder(root, size=16)
    assert again.checksum == ds.checksum and torch.equal(again.images, ds.images)
    assert load_image_folder(root, size=16, n=2).images.shape[0] == 2
    with pytest.raises(DataError):
        load_image_folder(root, size=16, n=4)


def test_center_crop_of_wide_image(tmp_path):
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, 10:20] = 255  # white center third
    Image.fromarray(arr).save(root / "a" / "x.png")
    ds = load_image_folder(root, size=10)
    assert ds.images.shape == (1, 3, 10, 10)
    assert float(ds.images[0, :, :, 2:8].min()) > 0.99


def test_checksum_changes_with_content(tmp_path):
    root = _folder(tmp_path)
    c1 = load_image_folder(root, size=8).checksum
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "dog" / "b.png")
    assert load_image_folder(root, size=8).checksum != c1


def test_unreadable_image_names_file(tmp_path):
    root = _folder(tmp_path)
    bad = root / "dog" / "c.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="c.png"):
        load_image_folder(root, size=8)


def test_missing_and_empty_dirs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "e" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "e")
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match="not a directory"):
        load_image_folder(f)


def test_split_subdir(tmp_path):
    _folder(tmp_path / "x")
    ds = load_image_folder(tmp_path / "x", size=8, split="imgs")
    assert len(ds) == 3
