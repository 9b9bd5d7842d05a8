import pytest
import torch

from sanitycheck.data.scenes import (CAPTION_CLASSES, POSITIONS, SceneSpec, class_prompts, load_clip_scenes,
                                   make_clip_scenes)
from sanitycheck.errors import ConfigError


def test_scenes_are_deterministic_and_cached(scenes, scene_cache, tmp_path):
    again = load_clip_scenes("test", 24, seed=3, cache_dir=scene_cache)  # from the cache file
    fresh = load_clip_scenes("test", 24, seed=3, cache_dir=tmp_path)    # regenerated
    for other in (again, fresh):
        assert other.checksum == scenes.checksum
        assert torch.equal(other.pixels, scenes.pixels)
        assert other.captions == scenes.captions
        assert torch.equal(other.boxes, scenes.boxes)
    assert list((scene_cache / "data").glob("clip_scenes-test-*.pt"))
    different = load_clip_scenes("test", 24, seed=4, cache_dir=tmp_path)
    assert different.checksum != scenes.checksum


def test_boxes_contain_the_items(scenes):
    from sanitycheck.data.fashion_mnist import load_fashion_mnist

    fm = load_fashion_mnist("test")
    items = (fm.images[:, 0] * 255).round().to(torch.uint8)
    covered = torch.zeros_like(scenes.pixels, dtype=torch.bool)
    for i in range(len(scenes)):
        present = scenes.classes[i] >= 0
        assert 2 <= int(present.sum()) <= 4
        assert len(set(scenes.classes[i][present].tolist())) == int(present.sum())  # distinct classes
        for cell in present.nonzero().flatten().tolist():
            x0, y0, x1, y1 = scenes.boxes[i, cell].tolist()
            assert (x1 - x0, y1 - y0) == (28, 28)
            # the box lies in its cell of the 2x2 grid
            assert x0 // 32 == cell % 2 and (x1 - 1) // 32 == cell % 2
            assert y0 // 32 == cell // 2 and (y1 - 1) // 32 == cell // 2
            src = int(scenes.source_index[i, cell])
            assert int(fm.labels[src]) == int(scenes.classes[i, cell])
            assert torch.equal(scenes.pixels[i, y0:y1, x0:x1], items[src])
            covered[i, y0:y1, x0:x1] = True
        assert (scenes.boxes[i][~present] == -1).all()
    assert not scenes.pixels[~covered].any()  # nothing outside the boxes


def test_captions_name_the_captioned_item(scenes):
    for i, text in enumerate(scenes.captions):
        cell = int(scenes.caption_cell[i])
        cls = int(scenes.classes[i, cell])
        assert cls >= 0
        assert CAPTION_CLASSES[cls] in text
        assert (POSITIONS[cell] in text) == bool(scenes.positional[i])
        assert int(scenes.caption_classes[i]) == cls
    assert torch.equal(scenes.caption_boxes, scenes.boxes[torch.arange(len(scenes)), scenes.caption_cell])
    cons = scenes.consistent()
    assert cons.diagonal().all()


def test_images_view_and_dataset(scenes):
    x = scenes.images
    assert x.shape == (len(scenes), 3, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x[:, 0], x[:, 2])
    ds = scenes.to_image_dataset()
    assert torch.equal(ds.labels, scenes.caption_classes)
    assert ds.classes == class_prompts()


def test_make_scenes_from_given_items_and_bad_specs():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(40, 1, 28, 28, generator=g)
    labels = torch.arange(40) % 10
    a = make_clip_scenes(SceneSpec(split="train", n=5, seed=1), imgs, labels)
    b = make_clip_scenes(SceneSpec(split="train", n=5, seed=1), imgs, labels)
    assert a.checksum == b.checksum and len(a) == 5
    with pytest.raises(ConfigError):
        SceneSpec(canvas=40)
    with pytest.raises(ConfigError):
        SceneSpec(min_items=3, max_items=2)
    with pytest.raises(ConfigError):
        load_clip_scenes("test", 5, colour=True)
