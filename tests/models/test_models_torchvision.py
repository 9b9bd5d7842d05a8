"""torchvision adapters: random init builds and runs; missing weights fail fast and clearly."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from sanitycheck.errors import ModelError, WeightsUnavailableError
from sanitycheck.models import Normalize, load_model
from sanitycheck.models import torchvision_models as tvm


def test_resnet18_random_init_forward():
    model = load_model("resnet18", weights=None)
    assert isinstance(model, nn.Sequential) and isinstance(model[0], Normalize)
    assert not model.training
    assert not any(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    assert model.sanitycheck_input == {"channels": 3, "size": 224}
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    again = load_model("resnet18", weights=None)
    assert torch.equal(model[1].conv1.weight, again[1].conv1.weight)


def test_inception_input_size():
    model = tvm.inception_v3(weights=None)
    assert model.sanitycheck_input["size"] == 299 and not model.training


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("SANITYCHECK_OFFLINE", "1")
    return tmp_path / "hub" / "checkpoints"


def test_offline_weights_error_is_fast_and_helpful(empty_hub):
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("resnet18")
    assert time.perf_counter() - start < 10
    msg = str(info.value)
    assert "resnet18" in msg and "resnet18-f37072fd.pth" in msg and str(empty_hub) in msg


def test_offline_without_env_var_is_fast(tmp_path, monkeypatch):
    """No SANITYCHECK_OFFLINE: the bounded network probe decides (fails fast offline)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("SANITYCHECK_OFFLINE", raising=False)
    from sanitycheck.data import _net

    if _net.reachable("https://download.pytorch.org/", timeout=3):
        pytest.skip("online: the download would be attempted")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError):
        tvm.vgg16()
    assert time.perf_counter() - start < 10


def test_local_state_dict_path(tmp_path, empty_hub):
    src = load_model("resnet18", weights=None, seed=3)
    path = tmp_path / "my_resnet18.pth"
    torch.save(src[1].state_dict(), path)
    model = load_model("resnet18", weights=str(path))
    assert torch.equal(model[1].fc.weight, src[1].fc.weight)
    with pytest.raises(WeightsUnavailableError):
        load_model("resnet18", weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"nope")
    with pytest.raises(ModelError, match="bad.pth"):
        load_model("resnet18", weights=str(bad))


def test_cached_hub_file_is_used(empty_hub):
    src = tvm.resnet18(weights=None, seed=5)
    empty_hub.mkdir(parents=True)
    torch.save(src[1].state_dict(), empty_hub / "resnet18-f37072fd.pth")
    model = tvm.resnet18(weights="DEFAULT", progress=False)
    assert torch.equal(model[1].fc.weight, src[1].fc.weight)


def test_unknown_weights_name(empty_hub):
    with pytest.raises(ModelError, match="IMAGENET1K_V1"):
        tvm.resnet18(weights="NOPE")
