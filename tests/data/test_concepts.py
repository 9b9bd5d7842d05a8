"""Concept sets for TCAV (issue 16): deterministic, any size and channel count, clear errors."""

from __future__ import annotations

import pytest
import torch

from sanitycheck.data.concepts import ConceptSet, concept_sets, stripes
from sanitycheck.errors import DataError, UnknownNameError


@pytest.mark.parametrize("name", ["stripes", "dots", "zigzag", "random_noise_0"])
def test_sets_are_deterministic_shaped_and_in_range(name):
    a = concept_sets(name, size=(20, 24), n=6, seed=3, channels=2)
    b = concept_sets(name, size=(20, 24), n=6, seed=3, channels=2)
    c = concept_sets(name, size=(20, 24), n=6, seed=4, channels=2)
    assert len(a) == 1 and a[0].name == name
    s = a[0]
    assert s.images.shape == (6, 2, 20, 24) and s.images.dtype == torch.float32
    assert float(s.images.min()) >= 0.0 and float(s.images.max()) <= 1.0
    assert s.kind == ("random" if name.startswith("random") else "concept")
    assert torch.equal(s.images, b[0].images)
    assert not torch.equal(s.images, c[0].images)


def test_textures_are_two_coloured_with_contrast():
    imgs = stripes(8, 32, 3, seed=0)
    for img in imgs:
        values = torch.unique(img[0])
        assert len(values) == 2 and float(values[1] - values[0]) >= 0.3


def test_textures_differ_from_each_other_and_from_noise():
    sets = concept_sets(["stripes", "dots", "zigzag", "random_noise_0"], size=16, n=4, channels=1)
    assert [s.name for s in sets] == ["stripes", "dots", "zigzag", "random_noise_0"]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(sets[i].images, sets[j].images)


def test_random_sets_by_count_differ_per_index():
    sets = concept_sets("random_noise", count=3, size=8, n=4)
    assert [s.name for s in sets] == ["random_noise_0", "random_noise_1", "random_noise_2"]
    assert all(s.kind == "random" for s in sets)
    assert not torch.equal(sets[0].images, sets[1].images)
    assert torch.equal(sets[2].images, concept_sets("random_noise_2", size=8, n=4)[0].images)


def test_random_photo_crops():
    a = concept_sets("random_photos_0", size=32, n=5, seed=0)[0]
    b = concept_sets("random_photos_1", size=32, n=5, seed=0)[0]
    grey = concept_sets("random_photos_0", size=32, n=5, seed=0, channels=1)[0]
    assert a.kind == "random" and a.images.shape == (5, 3, 32, 32)
    assert float(a.images.min()) >= 0 and float(a.images.max()) <= 1
    assert not torch.equal(a.images, b.images)
    assert torch.equal(a.images, concept_sets("random_photos_0", size=32, n=5, seed=0)[0].images)
    assert grey.images.shape == (5, 1, 32, 32)
    assert set(a.meta["photo_sources"]) >= {"scikit-image", "scikit-learn"}
    assert len(a.meta["photo_indices"]) == 5


def test_unknown_concept_name_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'stripes'"):
        concept_sets("stripess", size=8, n=2)
    with pytest.raises(UnknownNameError, match="random_noise"):
        concept_sets("random_nois_3", size=8, n=2)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(DataError, match="count"):
        concept_sets("random_noise", size=8, n=2)
    with pytest.raises(DataError, match="positive integer"):
        concept_sets("stripes", size=8, n=0)
    with pytest.raises(DataError, match="size"):
        concept_sets("stripes", size=2, n=3)


def test_concept_set_with_fewer_images_than_needed():
    s = concept_sets("dots", size=8, n=5)[0]
    assert len(s.head(3)) == 3 and torch.equal(s.head(3).images, s.images[:3])
    with pytest.raises(DataError, match="holds 5 images but 20 are needed"):
        s.head(20)


def test_concept_set_validates():
    with pytest.raises(DataError, match="kind"):
        ConceptSet("x", torch.rand(2, 1, 4, 4), "neither")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        ConceptSet("x", torch.rand(2, 1, 4, 4) * 3, "concept")
    with pytest.raises(DataError, match="N, C, H, W"):
        ConceptSet("x", torch.rand(1, 4, 4), "random")
