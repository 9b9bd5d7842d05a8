"""textured_fmnist_cnn (issue 16): one spec per variant through the zoo's pipeline; the texture matters only
to the texture_decides model (slow test: trains ~20 s per model once, then reuses the cache)."""

from __future__ import annotations

import pytest
import torch

from sanitycheck.data import fashion_mnist as fm
from sanitycheck.errors import ConfigError
from sanitycheck.models import zoo
from sanitycheck.registry import DATASETS, MODELS

have_fmnist = pytest.mark.skipif(not all((fm.SYSTEM_DIR / n).is_file() for n in fm.FILES["train"]),
                                 reason="dataset-fashion-mnist not installed")


def test_registered_and_specs():
    assert "textured_fmnist" in DATASETS and "textured_fmnist_cnn" in MODELS
    a = zoo.textured_fmnist_spec("texture_decides")
    b = zoo.textured_fmnist_spec("texture_independent")
    assert a.arch == b.arch == "fmnist_cnn" and a.dataset != b.dataset
    assert zoo._dataset_params(a.dataset) == ("textured_fmnist", {"variant": "texture_decides", "texture": "stripes"})
    assert zoo._dataset_params("fashion_mnist") == ("fashion_mnist", {})
    with pytest.raises(ConfigError, match="k=v"):
        zoo._dataset_params("textured_fmnist/variant")
    with pytest.raises(ConfigError, match="texture_decides"):
        zoo.textured_fmnist_spec("decides")


@have_fmnist
def test_spec_keys_differ_by_variant_and_texture():
    keys = {zoo.textured_fmnist_spec(v, t).key() for v in ("texture_decides", "texture_independent")
            for t in ("stripes", "dots")}
    assert len(keys) == 4
    assert zoo.textured_fmnist_spec().key() != zoo.DEFAULT_SPECS["fmnist_cnn"].key()


@pytest.mark.slow
@have_fmnist
def test_texture_decides_model_uses_the_texture_and_independent_does_not():
    from sanitycheck.data import load_dataset

    acc = {}
    for variant in ("texture_decides", "texture_independent"):
        model = zoo.textured_fmnist_cnn(variant=variant, progress=False)
        ds = load_dataset("textured_fmnist", split="test", variant=variant)
        plain = load_dataset("textured_fmnist", split="test", variant=variant, stamp=False)
        with torch.no_grad():
            p, q = model(ds.images).argmax(1), model(plain.images).argmax(1)
        acc[variant] = (p, q, ds)
    p, q, ds = acc["texture_decides"]
    st = ds.meta["stamped"]
    assert float(((p >= 5) == st).float().mean()) > 0.85  # the texture bit is read from the texture
    assert abs(float(((q >= 5) == st).float().mean()) - 0.5) < 0.03  # ... and is at chance without it
    p, q, ds = acc["texture_independent"]
    with_tex, without = float((p == ds.labels).float().mean()), float((q == ds.labels).float().mean())
    assert with_tex > 0.75 and abs(with_tex - without) < 0.03
