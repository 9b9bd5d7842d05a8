"""Textured Fashion-MNIST (issue 16): the texture decides half of the label, or is independent of it."""

from __future__ import annotations

import pytest
import torch

from sanitycheck.data import fashion_mnist as fm
from sanitycheck.data import load_dataset, textured_fmnist as tf
from sanitycheck.errors import DataError

pytestmark = pytest.mark.skipif(not all((fm.SYSTEM_DIR / n).is_file() for n in fm.FILES["test"]),
                                reason="dataset-fashion-mnist not installed")


def _load(**kw):
    return load_dataset("textured_fmnist", split="test", **kw)


def test_texture_decides_labels_by_construction():
    ds = _load(variant="texture_decides")
    plain = fm.load_fashion_mnist("test")
    st = ds.meta["stamped"]
    assert ds.images.shape == (10000, 1, 28, 28) and len(ds.classes) == 10
    assert torch.equal(ds.labels >= 5, st)  # the texture decides the half
    assert torch.equal(ds.labels % 5, plain.labels % 5)  # the garment decides the pair
    assert 0.45 < float(st.float().mean()) < 0.55
    # stamped items change only on the item: the background stays black, the item gets darker
    diff = (ds.images - plain.images)[st]
    assert float(diff.max()) <= 0 and float(diff.min()) < -0.3
    assert torch.equal(ds.images[~st], plain.images[~st])
    assert torch.equal(ds.images[st][plain.images[st] == 0], plain.images[st][plain.images[st] == 0])


def test_texture_independent_of_label():
    ds = _load(variant="texture_independent")
    dec = _load(variant="texture_decides")
    plain = fm.load_fashion_mnist("test")
    assert torch.equal(ds.labels, plain.labels)
    assert torch.equal(ds.images, dec.images) and torch.equal(ds.meta["stamped"], dec.meta["stamped"])
    rates = torch.stack([ds.meta["stamped"][ds.labels == c].float().mean() for c in range(10)])
    assert float(rates.min()) > 0.44 and float(rates.max()) < 0.56  # ~1000 per class: sd 0.016


def test_deterministic_and_textures_removable():
    a = _load(variant="texture_decides", texture="dots")
    tf._cache.clear()
    b = _load(variant="texture_decides", texture="dots")
    assert a is not b and a.checksum == b.checksum and torch.equal(a.images, b.images)
    other = _load(variant="texture_decides", texture="dots", seed=1)
    assert other.checksum != a.checksum and not torch.equal(other.meta["stamped"], a.meta["stamped"])
    removed = _load(variant="texture_decides", texture="dots", stamp=False)
    assert torch.equal(removed.images, fm.load_fashion_mnist("test").images)
    assert torch.equal(removed.labels, a.labels) and removed.checksum != a.checksum


def test_bad_parameters():
    with pytest.raises(DataError, match="Did you mean 'texture_decides'"):
        _load(variant="texture_decide")
    with pytest.raises(DataError, match="Did you mean 'stripes'"):
        _load(texture="stripe")
    with pytest.raises(DataError, match="p_stamp"):
        _load(p_stamp=1.0)


def test_item_concept_sets():
    c = tf.item_concept_set("stripes_items", 12, texture="stripes")
    r = tf.item_concept_set("random_items_0", 12)
    assert c.kind == "concept" and r.kind == "random" and c.images.shape == (12, 1, 28, 28)
    plain = fm.load_fashion_mnist("test").images[torch.tensor(c.meta["indices"])]
    assert float((c.images - plain).max()) <= 0 and not torch.equal(c.images, plain)
