"""The one load-or-train pipeline (models/training.py) and the one source-hash helper (provenance).

The cache keys of every shipped reference model are recomputed through the current code and compared with the
keys recorded in sanitycheck/weights/manifest.json: a refactor that changes a key would make the package
retrain (and publish other numbers) instead of loading the shipped weights.
"""

from __future__ import annotations

import hashlib
import inspect
import json

import pytest
import torch
from torch import nn

from sanitycheck.models import training
from sanitycheck.models import weights as W
from sanitycheck.provenance import content_key, source_key, source_text


def _spec_classes():
    from sanitycheck.models.attention import TextTrainSpec
    from sanitycheck.models.transformer import TransformerTrainSpec
    from sanitycheck.models.zoo import ARCHITECTURES, TrainSpec

    from sanitycheck.models.clip import TinyClipSpec
    return TextTrainSpec, TransformerTrainSpec, TrainSpec, ARCHITECTURES, TinyClipSpec


def _wp_key(name, entry):
    """The key Wiegreffe & Pinter's train_adversary / train_diagnostic derive (the payloads they hash)."""
    from sanitycheck.checks import wiegreffe_pinter as wp
    from sanitycheck.models.attention import TextTrainSpec, _train_text

    spec_key = TextTrainSpec(**entry["spec"]).key()
    info = entry["info"]
    if "adversary" in name:
        return wp._key({"kind": "wiegreffe-pinter-adversary", "spec_key": spec_key, "lambda": repr(float(info["lambda"])),
                        "base_model": info["base_model_checksum"], "kl_eps": wp.KL_EPS,
                        "source": [source_text(wp.train_adversary), source_text(wp._adversary_loss),
                                   source_text(wp.kl_attention), source_text(_train_text)]})
    return wp._key({"kind": "wiegreffe-pinter-diagnostic", "spec_key": spec_key, "guide": info["guide"],
                    "guide_model": info["guide_model_checksum"],
                    "source": [source_text(wp.train_diagnostic), source_text(wp._imposed_loss),
                               source_text(_train_text)]})


@pytest.mark.parametrize("name", sorted(W.manifest()["models"]))
def test_every_reference_models_cache_key_is_recomputed_unchanged(name, tmp_path):
    from sanitycheck.models import attention, transformer, zoo

    TextTrainSpec, TransformerTrainSpec, TrainSpec, ARCHITECTURES, TinyClipSpec = _spec_classes()
    entry = W.manifest()["models"][name]
    spec = entry["spec"]
    if name == "tiny_clip":
        key = TinyClipSpec(**spec).key()
    elif name == "review_lm":  # issue 15: the key also hashes the training text and the tokenizer
        from sanitycheck.models.review_lm import LMSpec, review_lm_key

        key = review_lm_key(LMSpec(**{k: v for k, v in spec.items() if k != "arch"}))[0]
    elif ".adversary" in spec.get("arch", "") or ".diag-" in spec.get("arch", ""):
        key = _wp_key(name, entry)
    elif spec.get("arch") in ARCHITECTURES:
        s = TrainSpec(**spec)
        key = s.key()
        assert zoo.checkpoint_path(s, tmp_path) == tmp_path / "models" / f"{s.arch}-{key}.pt"
    elif spec.get("arch") == "minilm":
        s = TransformerTrainSpec(**spec)
        key = s.key()
        assert transformer.transformer_checkpoint_path(s, tmp_path) == tmp_path / "models" / f"text-minilm-{key}.pt"
    else:
        s = TextTrainSpec(**spec)
        key = s.key()
        assert attention.text_checkpoint_path(s, tmp_path) == tmp_path / "models" / f"text-{s.arch}-{key}.pt"
    assert key == entry["cache_key"], f"{name}: the cache key changed ({entry['cache_key']} -> {key})"


def test_the_one_source_hash_helper_gives_the_values_of_the_formulas_it_replaced():
    from sanitycheck.explainers.base import CaptumExplainer, Explainer, class_source_hash

    payload = {"spec": {"b": 1, "a": [1.5, None]}, "source": source_text(content_key)}
    assert content_key(payload) == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    klass = CaptumExplainer
    old = hashlib.sha256("\n".join(inspect.getsource(c) for c in klass.__mro__ if c is not object)
                         .encode()).hexdigest()[:16]
    assert class_source_hash(klass) == old == source_key(*(c for c in klass.__mro__ if c is not object))
    assert class_source_hash(Explainer) != class_source_hash(klass)
    assert source_text(len, fallback="builtin-len") == "builtin-len"  # no source: the fallback


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)


class _Spec:
    def __init__(self, seed=0):
        self.seed = seed

    def as_dict(self):
        return {"seed": self.seed}


def _build(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _Toy()


def test_load_or_train_trains_once_then_loads_and_retrains_an_unreadable_checkpoint(tmp_path):
    calls = []

    def train(model):
        calls.append(1)
        with torch.no_grad():
            model.fc.weight.add_(1.0)
        return {"test_accuracy": 0.5}

    path = training.checkpoint_file("toy", "0123456789abcdef", tmp_path)
    assert path == tmp_path / "models" / "toy-0123456789abcdef.pt"
    a = training.load_or_train("0123456789abcdef", path, spec=_Spec(), build=_build, train=train)
    assert calls == [1] and a.sanitycheck_info["from_cache"] is False and not a.training
    assert a.sanitycheck_info["cache_key"] == "0123456789abcdef" and a.sanitycheck_info["reference"] is False
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar == {"spec": {"seed": 0}, "key": "0123456789abcdef", "test_accuracy": 0.5}
    b = training.load_or_train("0123456789abcdef", path, spec=_Spec(), build=_build, train=train)
    assert calls == [1] and b.sanitycheck_info["from_cache"] is True
    assert torch.equal(a.fc.weight, b.fc.weight) and a.sanitycheck_info["weights_sha256"] == b.sanitycheck_info[
        "weights_sha256"]
    # a checkpoint under another key is not this model's: retrained, with a warning
    with pytest.warns(UserWarning, match="unreadable"):
        training.load_or_train("fedcba9876543210", path, spec=_Spec(), build=_build, train=train)
    assert calls == [1, 1]
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        c = training.load_or_train("0123456789abcdef", path, spec=_Spec(), build=_build, train=train)
    assert calls == [1, 1, 1] and c.sanitycheck_info["from_cache"] is False


def test_load_or_train_consults_the_reference_weights_first_and_verify_can_refuse(tmp_path, monkeypatch):
    from sanitycheck.errors import ConfigError

    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path / "weights")
    shipped = _build(seed=7)
    W.export_reference(shipped, "toy", cache_key="aaaaaaaaaaaaaaaa", spec={"seed": 7})

    def refuse_training(model):
        raise AssertionError("a reference model was trained")

    path = training.checkpoint_file("toy", "aaaaaaaaaaaaaaaa", tmp_path / "cache")
    m = training.load_or_train("aaaaaaaaaaaaaaaa", path, spec=_Spec(7), build=_build, train=refuse_training,
                               info_prefix=lambda model: {"built": True})
    assert torch.equal(m.fc.weight, shipped.fc.weight) and not path.exists()
    info = m.sanitycheck_info
    assert info["reference"] is True and info["reference_name"] == "toy" and info["built"] is True
    assert info["checkpoint"] == "sanitycheck/weights/toy.safetensors" and info["from_cache"] is True

    def verify(info, checkpoint):
        raise ConfigError(f"cached model {checkpoint} was trained on different data")

    with pytest.raises(ConfigError, match="toy.safetensors was trained on different data"):
        training.load_or_train("aaaaaaaaaaaaaaaa", path, spec=_Spec(7), build=_build, train=refuse_training,
                               verify=verify)
    with W.retraining():  # references off: trained and cached
        n = training.load_or_train("aaaaaaaaaaaaaaaa", path, spec=_Spec(7), build=_build,
                                   train=lambda model: {"trained": True})
    assert n.sanitycheck_info["reference"] is False and path.is_file()
