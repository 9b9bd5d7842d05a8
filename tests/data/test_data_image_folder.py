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


# ------------------------------------------------------------------ conversions are recorded or refused (issue 10)
def _one(tmp_path, name, save):
    root = tmp_path / "conv"
    (root / "a").mkdir(parents=True, exist_ok=True)
    save(root / "a" / name)
    return root


def test_16bit_grayscale_is_scaled_over_its_full_range_and_recorded(tmp_path):
    a = np.zeros((16, 16), dtype=np.uint16)
    a[:, :8] = 65535
    a[:, 8:] = 32768  # mid-grey: 8-bit 128 (today it read as 255: 99.6 % white)
    root = _one(tmp_path, "g16.png", lambda p: Image.fromarray(a).save(p))
    assert Image.open(root / "a" / "g16.png").mode.startswith("I")
    ds = load_image_folder(root, size=16)
    img = ds.images[0]
    assert torch.equal(img[0], img[2])
    assert float(img[0, 0, 0]) == 1.0
    assert abs(float(img[0, 0, 12]) - 128 / 255) < 1e-6
    conv = ds.meta["conversions"]
    assert conv["16bit_to_8bit"]["count"] == 1 and conv["16bit_to_8bit"]["files"] == ["a/g16.png"]
    assert "65535" in conv["16bit_to_8bit"]["rule"]
    assert conv["grayscale_to_rgb"]["count"] == 1


def test_alpha_is_composited_on_a_recorded_background_or_refused(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red under a fully transparent alpha: dropping alpha would show it
    root = _one(tmp_path, "t.png", lambda p: Image.fromarray(rgba, mode="RGBA").save(p))
    white = load_image_folder(root, size=16)
    assert torch.equal(white.images[0], torch.ones(3, 16, 16))
    assert white.meta["conversions"]["alpha_composited"]["count"] == 1
    assert "white" in white.meta["conversions"]["alpha_composited"]["rule"]
    black = load_dataset("image_folder", root=root, size=16, alpha="black")
    assert torch.equal(black.images[0], torch.zeros(3, 16, 16))
    with pytest.raises(DataError, match="alpha channel.*t.png|t.png.*alpha channel"):
        load_image_folder(root, size=16, alpha="refuse")
    with pytest.raises(DataError, match="alpha must be one of"):
        load_image_folder(root, size=16, alpha="pink")


def test_palette_and_grayscale_conversions_are_recorded(tmp_path):
    rng = np.random.default_rng(1)
    root = _one(tmp_path, "p.png", lambda p: Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
                .quantize(8).save(p))
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(root / "a" / "q.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "a" / "r.png")
    ds = load_image_folder(root, size=16)
    conv = ds.meta["conversions"]
    assert conv["palette_to_rgb"]["files"] == ["a/p.png"]
    assert conv["grayscale_to_rgb"]["files"] == ["a/q.png"]
    assert all("a/r.png" not in c["files"] for c in conv.values())  # plain RGB needs nothing


def test_tiny_images_are_refused_or_their_upscaling_recorded(tmp_path):
    root = _one(tmp_path, "dot.png", lambda p: Image.fromarray(np.full((1, 1, 3), 7, dtype=np.uint8)).save(p))
    with pytest.raises(DataError, match=r"dot.png is 1x1 pixels.*minimum side of 8"):
        load_image_folder(root, size=16)
    ds = load_image_folder(root, size=16, min_side=1)
    assert ds.images.shape == (1, 3, 16, 16)
    assert ds.meta["conversions"]["upscaled"]["files"] == ["a/dot.png"]


def _png_declaring(path, width, height):
    """A valid 1x1 PNG whose IHDR is rewritten to declare ``width`` x ``height`` (CRC fixed): no pixels behind it."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_decompression_bomb_is_refused_naming_file_and_limit(tmp_path):
    root = tmp_path / "bomb"
    (root / "a").mkdir(parents=True)
    _png_declaring(root / "a" / "huge.png", 20000, 20000)  # 400 megapixels
    with pytest.raises(DataError, match=r"huge.png.*limit of \d+") as err:
        load_image_folder(root, size=16)
    assert "decompression bomb" in str(err.value)
    # between PIL's warning and error thresholds the loader's own limit holds
    small = tmp_path / "small"
    (small / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(small / "a" / "x.png")
    with pytest.raises(DataError, match=r"x.png: 20x20 = 400 pixels, more than the limit of 100"):
        load_image_folder(small, size=16, max_pixels=100)
    assert len(load_image_folder(small, size=16, max_pixels=400)) == 1


def test_conversions_reach_the_results_document(tmp_path):
    """An audit of an image_folder copies meta['conversions'] into results.json's dataset section."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from helpers import make_tiny_cnn

    from sanitycheck.explainers import get_explainer
    from sanitycheck.runner import AuditRun
    from sanitycheck.suites import parse_suite

    class RGBToGray(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = make_tiny_cnn(0)

        def forward(self, x):
            return self.cnn(x.mean(1, keepdim=True))

    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    root = _one(tmp_path, "t.png", lambda p: Image.fromarray(rgba, mode="RGBA").save(p))
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "a" / f"rgb{k}.png")
    ds = load_image_folder(root, size=16)
    suite = parse_suite({
        "name": "unit", "version": "0.0.1", "description": "conversions in results", "dataset": {"name": "image_folder"},
        "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 1, "explainers": ["gradient"],
        "metrics": ["spearman_abs"], "checks": [{"name": "cascading_randomization",
                                                 "verdict": {"metric": "spearman_abs", "threshold": 0.5}}]})
    doc = AuditRun(suite, out_dir=tmp_path / "out", model=RGBToGray().eval(), dataset=ds,
                   explainer_objects={"gradient": get_explainer("gradient")}, progress=False, figures=False).execute()
    assert doc["dataset"]["conversions"]["alpha_composited"] == {
        "rule": ds.meta["conversions"]["alpha_composited"]["rule"], "count": 1, "files": ["a/t.png"]}
