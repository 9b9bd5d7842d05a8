"""Zoo: spec keys, deterministic cached training, random labels, global RNG untouched."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from sanitycheck.models import load_model
from sanitycheck.models import zoo
from sanitycheck.models.zoo import DEFAULT_SPECS, TrainSpec, train_or_load

SMALL = TrainSpec("digits_cnn", "digits", epochs=2, batch_size=64, lr=3e-3)


def test_architectures_use_relu_modules():
    for arch, cls in zoo.ARCHITECTURES.items():
        model = zoo.build(arch)
        relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        assert relus and not any(r.inplace for r in relus)
        size = 8 if arch.startswith("digits") else 28
        assert model(torch.rand(3, 1, size, size)).shape == (3, 10)
    cnn = zoo.FashionCNN()
    assert cnn.conv1.out_channels == 32 and cnn.conv2.out_channels == 64
    assert cnn.fc1.in_features == 1024 and cnn.fc2.out_features == 10
    mlp = zoo.FashionMLP()
    assert (mlp.fc1.in_features, mlp.fc2.in_features, mlp.fc3.out_features) == (784, 256, 10)


def test_build_is_seeded_and_leaves_rng():
    state = torch.random.get_rng_state()
    a, b, c = zoo.build("digits_cnn", 0), zoo.build("digits_cnn", 0), zoo.build("digits_cnn", 1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


def test_key_changes_with_every_field():
    base = SMALL.key()
    assert len(base) == 16 and base == dataclasses.replace(SMALL).key()
    changes = dict(
        epochs=3,
        batch_size=32,
        lr=1e-3,
        weight_decay=1e-4,
        seed=1,
        train_subset=100,
        random_labels=True,
    )
    keys = {base}
    for field, value in changes.items():
        k = dataclasses.replace(SMALL, **{field: value}).key()
        assert k not in keys, field
        keys.add(k)


def test_key_depends_on_code(monkeypatch):
    base = SMALL.key()
    monkeypatch.setattr(zoo, "_source", lambda obj: "changed " + getattr(obj, "__name__", ""))
    assert SMALL.key() != base


def test_with_random_labels():
    rl = SMALL.with_random_labels(train_subset=100, epochs=5)
    assert rl.random_labels and rl.train_subset == 100 and rl.epochs == 5
    assert (rl.arch, rl.dataset, rl.seed, rl.lr) == (SMALL.arch, SMALL.dataset, SMALL.seed, SMALL.lr)
    assert rl.with_random_labels(100, 5, lr=0.01).lr == 0.01
    assert rl.key() != SMALL.key()
    assert rl.key() != dataclasses.replace(rl, random_labels=False).key()
    from sanitycheck.data import fashion_mnist

    if all((fashion_mnist.SYSTEM_DIR / n).is_file() for n in fashion_mnist.FILES["train"]):
        assert dataclasses.replace(SMALL, arch="fmnist_cnn", dataset="fashion_mnist").key() != SMALL.key()
    spec = zoo.random_label_spec(DEFAULT_SPECS["fmnist_cnn"])
    assert spec.random_labels and spec.train_subset == zoo.DEFAULT_RANDOM_LABEL_PARAMS["fmnist_cnn"]["train_subset"]


def test_random_labels_are_a_seeded_permutation():
    x, y = torch.zeros(50, 1), torch.arange(50) % 10
    spec = SMALL.with_random_labels(train_subset=40, epochs=1)
    _, y1 = zoo._prepare_training_data(spec, x, y)
    _, y2 = zoo._prepare_training_data(spec, x, y)
    assert torch.equal(y1, y2) and not torch.equal(y1, y[:40])
    assert sorted(y1.tolist()) == sorted(y[:40].tolist())
    _, y3 = zoo._prepare_training_data(dataclasses.replace(spec, seed=1), x, y)
    assert not torch.equal(y1, y3)


def test_train_or_load_deterministic_cached_and_rng_safe(tmp_path, recwarn):
    state = torch.random.get_rng_state()
    m1 = train_or_load(SMALL, cache_dir=tmp_path / "a", progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    m2 = train_or_load(SMALL, cache_dir=tmp_path / "b", progress=False)
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert not m1.training and m1.sanitycheck_spec == SMALL
    info = m1.sanitycheck_info
    assert info["test_accuracy"] > 0.5 and info["cache_key"] == SMALL.key() and not info["from_cache"]
    path = zoo.checkpoint_path(SMALL, tmp_path / "a")
    assert path.is_file() and str(path) == info["checkpoint"] and path.name.startswith("digits_cnn-")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["key"] == SMALL.key() and sidecar["spec"]["epochs"] == 2 and "torch_version" in sidecar
    assert {"test_accuracy", "train_accuracy", "train_seconds"} <= set(sidecar)
    # second call: from cache
    m3 = train_or_load(SMALL, cache_dir=tmp_path / "a", progress=False)
    assert m3.sanitycheck_info["from_cache"] and not m3.training
    assert m3.sanitycheck_info["test_accuracy"] == info["test_accuracy"]
    assert all(torch.equal(m3.state_dict()[k], sd1[k]) for k in sd1)
    # corrupt checkpoint: retrained with a warning
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="retraining"):
        m4 = train_or_load(SMALL, cache_dir=tmp_path / "a", progress=False)
    assert all(torch.equal(m4.state_dict()[k], sd1[k]) for k in sd1)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_random_label_model_fits_its_subset(tmp_path):
    spec = SMALL.with_random_labels(train_subset=200, epochs=80, batch_size=16)
    model = train_or_load(spec, cache_dir=tmp_path, progress=False)
    assert model.sanitycheck_info["cache_key"] != SMALL.key()
    assert model.sanitycheck_info["train_accuracy"] > 0.9
    assert model.sanitycheck_info["test_accuracy"] < 0.35


def test_registered_factory(tmp_path):
    model = load_model("digits_cnn", cache_dir=tmp_path, progress=False, epochs=1)
    assert not model.training and model.sanitycheck_spec.epochs == 1
    assert model.sanitycheck_spec.seed == 0


def test_layers_normalize():
    from sanitycheck.models.layers import Normalize

    n = Normalize([0.5, 0.25], [0.5, 0.5])
    assert list(n.parameters()) == [] and len(list(n.buffers())) == 2
    x = torch.ones(1, 2, 2, 2)
    assert torch.allclose(n(x)[0, 0], torch.ones(2, 2)) and torch.allclose(n(x)[0, 1], torch.full((2, 2), 1.5))
    with pytest.raises(ValueError):
        Normalize([0.1], [0.0])
