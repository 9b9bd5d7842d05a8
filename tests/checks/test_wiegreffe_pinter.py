"""Wiegreffe & Pinter 2019 on tiny models: uniform baseline, F1 and its bootstrap, seed variants, the
diagnostic MLP under its guides, the model-consistent adversary and the λ sweep."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score as sk_f1
from torch import nn

from sanitycheck.checks.adversarial_attention import LN2
from sanitycheck.checks.wiegreffe_pinter import (
    attention_divergence,
    bootstrap_f1,
    f1_resamples,
    f1_score,
    kl_attention,
    lambda_sweep,
    model_checksum,
    model_outputs,
    text_data,
    train_adversary,
    train_diagnostic,
    train_seed_variants,
    uniform_attention,
    uniform_outputs,
)
from sanitycheck.data.text import Vocabulary, load_synthetic_sentiment
from sanitycheck.errors import ConfigError, DataError, ModelError, NotApplicableError
from sanitycheck.models.attention import TextTrainSpec, tensor_checksum, train_text_model
from sanitycheck.seeding import generator


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny BiLSTM (embed 16, hidden 8) trained for 3 epochs on 400 synthetic reviews; 120 test reviews."""
    cache = tmp_path_factory.mktemp("wp-cache")
    train_ds = load_synthetic_sentiment("train", n=400)
    test_ds = load_synthetic_sentiment("test", n=120)
    vocab = Vocabulary.build(train_ds.texts)
    train, test = text_data(train_ds, vocab), text_data(test_ds, vocab)
    spec = TextTrainSpec(arch="wp_tiny", encoder="bilstm", attention="additive", vocab_size=len(vocab), n_classes=2,
                         epochs=3, batch_size=32, lr=1e-2, data_key=tensor_checksum(*train), embed_dim=16, hidden=8)
    base = train_text_model(spec, train, test, cache_dir=cache, progress=False)
    return dict(cache=cache, train=train, test=test, spec=spec, base=base)


def _state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- uniform baseline


def test_uniform_attention_values_and_errors():
    att = uniform_attention(torch.tensor([1, 3, 4]), 4)
    assert att.dtype == torch.float64
    expected = torch.tensor([[1, 0, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0], [0.25] * 4], dtype=torch.float64)
    assert torch.equal(att, expected)
    with pytest.raises(DataError, match="zero tokens"):
        uniform_attention(torch.tensor([0, 2]), 4)
    with pytest.raises(DataError, match="lie in"):
        uniform_attention(torch.tensor([5]), 4)
    with pytest.raises(DataError, match="integer"):
        uniform_attention(torch.tensor([1.0]), 4)


def test_uniform_outputs_is_decoder_of_mean_hidden_state(setup):
    base, test = setup["base"], setup["test"]
    before = copy.deepcopy(base.state_dict())
    out = uniform_outputs(base, test, batch_size=37)  # batches trimmed to their own widths
    ids, lengths = test[0], test[1]
    m64 = copy.deepcopy(base).double()
    with torch.no_grad():
        hidden, _ = m64.encode(ids, lengths)
        mean = hidden.sum(1) / lengths[:, None].double()  # hidden states are 0 at padding
        expected = m64.decoder(mean)
    assert out.logits.dtype == torch.float64 and out.logits.shape == (120, 2)
    assert torch.allclose(out.logits, expected, atol=1e-10, rtol=0)
    assert torch.allclose(out.probabilities, torch.softmax(expected, 1), atol=1e-12)
    assert torch.equal(out.predictions, expected.argmax(1))
    assert torch.equal(out.attention, uniform_attention(lengths, ids.shape[1]))
    # differs from the model's own attention, and the model passed is untouched (float32, eval, same weights)
    own = model_outputs(base, test)
    assert not torch.allclose(own.logits, out.logits, atol=1e-3)
    assert not torch.allclose(own.attention, out.attention, atol=1e-3)
    assert next(base.parameters()).dtype == torch.float32 and not base.training
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())


# --------------------------------------------------------------------------- F1 and bootstrap


def test_f1_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        n = int(torch.randint(1, 60, (1,), generator=g))
        y = torch.randint(0, 2, (n,), generator=g)
        p = torch.randint(0, 2, (n,), generator=g)
        ours = f1_score(p, y, 2)
        if (y == 1).any() or (p == 1).any():
            assert ours == pytest.approx(sk_f1(y.numpy(), p.numpy(), pos_label=1), abs=1e-12)
        else:
            assert math.isnan(ours)  # no positives predicted nor present: undefined, not 0
        y3 = torch.randint(0, 3, (n,), generator=g)
        p3 = torch.randint(0, 3, (n,), generator=g)
        assert f1_score(p3, y3, 3) == pytest.approx(sk_f1(y3.numpy(), p3.numpy(), average="macro"), abs=1e-12)
    # positive class, not the mean of both classes
    y = torch.tensor([1, 1, 0, 0, 0, 0])
    p = torch.tensor([1, 0, 1, 0, 0, 0])
    assert f1_score(p, y, 2) == pytest.approx(0.5)
    assert math.isnan(f1_score(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long), 2))
    for bad, err in (((torch.tensor([]), torch.tensor([]), 2), DataError),
                     ((torch.tensor([0, 1]), torch.tensor([0]), 2), DataError),
                     ((torch.tensor([0, 2]), torch.tensor([0, 1]), 2), DataError),
                     ((torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), 2), DataError),
                     ((torch.tensor([0, 1]), torch.tensor([0, 1]), 1), ConfigError)):
        with pytest.raises(err):
            f1_score(*bad)


def test_bootstrap_f1_vs_naive_loop():
    g = torch.Generator().manual_seed(1)
    n, R = 50, 300
    y = torch.randint(0, 2, (n,), generator=g)
    p = torch.where(torch.rand(n, generator=g) < 0.8, y, 1 - y)
    values = f1_resamples(p, y, 2, seed_parts=(0, "f1"), n_resamples=R)
    idx = torch.randint(0, n, (R, n), generator=generator(0, "f1"))  # the same draws, one chunk
    naive = [sk_f1(y[i].numpy(), p[i].numpy(), pos_label=1, zero_division=np.nan) for i in idx]
    assert np.allclose(values.numpy(), np.array(naive), atol=1e-12, equal_nan=True)
    s = bootstrap_f1(p, y, 2, seed_parts=(0, "f1"), n_resamples=R, confidence=0.9)
    assert s.mean == pytest.approx(sk_f1(y.numpy(), p.numpy()), abs=1e-12)
    lo, hi = np.quantile(np.array(naive), [0.05, 0.95])
    assert (s.ci_low, s.ci_high) == pytest.approx((lo, hi), abs=1e-12)
    assert s.n == n and s.n_undefined == 0 and s.ci_low < s.mean < s.ci_high
    assert bootstrap_f1(p, y, 2, seed_parts=(0, "f1"), n_resamples=R, confidence=0.9) == s  # deterministic
    assert bootstrap_f1(p, y, 2, seed_parts=(1, "f1"), n_resamples=R, confidence=0.9) != s

    # multi-class: macro F1 per resample as sklearn on each resample
    y3 = torch.randint(0, 3, (n,), generator=g)
    p3 = torch.where(torch.rand(n, generator=g) < 0.7, y3, torch.randint(0, 3, (n,), generator=g))
    v3 = f1_resamples(p3, y3, 3, seed_parts=(2,), n_resamples=50)
    idx = torch.randint(0, n, (50, n), generator=generator(2))
    assert np.allclose(v3.numpy(), [sk_f1(y3[i].numpy(), p3[i].numpy(), average="macro") for i in idx], atol=1e-12)

    # undefined resamples (the only positive left out, nothing predicted positive) are counted and dropped
    y1 = torch.zeros(6, dtype=torch.long)
    y1[0] = 1
    p1 = torch.zeros(6, dtype=torch.long)
    v1 = f1_resamples(p1, y1, 2, seed_parts=(3,), n_resamples=200)
    s1 = bootstrap_f1(p1, y1, 2, seed_parts=(3,), n_resamples=200)
    n_nan = int(torch.isnan(v1).sum())
    assert 0 < n_nan < 200 and s1.n_undefined == n_nan
    assert s1.mean == 0.0 and s1.ci_low == s1.ci_high == 0.0
    # the full sample undefined: no number
    s0 = bootstrap_f1(p1, torch.zeros(6, dtype=torch.long), 2, seed_parts=(3,))
    assert s0.mean is None and s0.ci_low is None and s0.n == 0 and s0.n_undefined == 6
    with pytest.raises(ConfigError):
        bootstrap_f1(p, y, 2, seed_parts=[0], n_resamples=10)
    with pytest.raises(ConfigError):
        bootstrap_f1(p, y, 2, seed_parts=(0,), confidence=1.0)


# --------------------------------------------------------------------------- seeds and divergences


def test_seed_variants_and_attention_divergence(setup):
    spec, base, test = setup["spec"], setup["base"], setup["test"]
    same, other = train_seed_variants(spec, setup["train"], test, [spec.seed, 7], cache_dir=setup["cache"],
                                      progress=False)
    assert same.sanitycheck_info["from_cache"] is True and _state_equal(same, base)
    assert other.sanitycheck_spec == dataclasses.replace(spec, seed=7)
    assert not torch.equal(other.decoder.weight, base.decoder.weight)

    zero = attention_divergence(base, same, test)
    assert set(zero) == {"attention_jsd", "attention_tvd", "output_tvd"}
    assert all(v.shape == (120,) and v.dtype == torch.float64 and v.abs().max() < 1e-12 for v in zero.values())
    div = attention_divergence(base, other, test, batch_size=50)
    assert (div["attention_jsd"] >= 0).all() and (div["attention_jsd"] <= LN2 + 1e-12).all()
    assert (div["attention_tvd"] <= 1 + 1e-12).all() and (div["output_tvd"] <= 1 + 1e-12).all()
    assert div["attention_jsd"].mean() > 1e-4 and div["attention_tvd"].mean() > 1e-3
    # matches the definitions on the models' own outputs
    a, b = model_outputs(base, test), model_outputs(other, test)
    assert torch.allclose(div["output_tvd"], 0.5 * (a.probabilities - b.probabilities).abs().sum(1), atol=1e-12)
    assert torch.allclose(div["attention_tvd"], 0.5 * (a.attention - b.attention).abs().sum(1), atol=1e-12)
    assert next(other.parameters()).dtype == torch.float32  # not mutated
    with pytest.raises(ConfigError, match="distinct"):
        train_seed_variants(spec, setup["train"], test, [1, 1], cache_dir=setup["cache"], progress=False)
    with pytest.raises(ConfigError, match="non-empty"):
        train_seed_variants(spec, setup["train"], test, [], cache_dir=setup["cache"], progress=False)


# --------------------------------------------------------------------------- diagnostic MLP


def test_diagnostic_guides(setup, tmp_path):
    spec, base, train, test = setup["spec"], setup["base"], setup["train"], setup["test"]
    ids, lengths = test[0], test[1]
    imposed = train_diagnostic("imposed", spec, train, test, guide_model=base, cache_dir=tmp_path / "a",
                               progress=False)
    diag = imposed.model
    assert diag.encoder_kind == "average" and diag.attention_kind == spec.attention and not diag.training
    assert imposed.info["from_cache"] is False and imposed.info["guide"] == "imposed"
    # the test predictions are the diagnostic with the guide's attention imposed, computed by hand
    with torch.no_grad():
        _, guide_att = copy.deepcopy(base).double()(ids, lengths, return_attention=True)
        manual = copy.deepcopy(diag).double()(ids, lengths, attention=guide_att)
        own = copy.deepcopy(diag).double()(ids, lengths)
    assert torch.allclose(imposed.test.logits, manual, atol=1e-10, rtol=0)
    assert torch.allclose(imposed.test.attention, guide_att, atol=1e-12)
    assert not torch.allclose(imposed.test.logits, own, atol=1e-3)  # its own attention would give other outputs
    assert torch.equal(imposed.test.predictions, manual.argmax(1))
    assert imposed.accuracy == pytest.approx(float((manual.argmax(1) == test[4]).double().mean()))
    assert imposed.f1 == pytest.approx(sk_f1(test[4].numpy(), manual.argmax(1).numpy()), abs=1e-12)
    assert torch.allclose(imposed.predict(test).logits, manual, atol=1e-10, rtol=0)

    # cache hit: same weights; a fresh directory retrains to identical weights
    again = train_diagnostic("imposed", spec, train, test, guide_model=base, cache_dir=tmp_path / "a", progress=False)
    assert again.info["from_cache"] is True and _state_equal(again.model, diag)
    assert torch.equal(again.test.logits, imposed.test.logits)
    fresh = train_diagnostic("imposed", spec, train, test, guide_model=base, cache_dir=tmp_path / "b", progress=False)
    assert fresh.info["from_cache"] is False and _state_equal(fresh.model, diag)
    # another guide model is another cache entry
    other = copy.deepcopy(base)
    with torch.no_grad():
        other.attention_v.weight.mul_(-1.0)
    assert model_checksum(other) != model_checksum(base)
    assert model_checksum(copy.deepcopy(base).double()) == model_checksum(base)
    flipped = train_diagnostic("imposed", spec, train, test, guide_model=other, cache_dir=tmp_path / "a",
                               progress=False)
    assert flipped.info["from_cache"] is False and flipped.info["cache_key"] != imposed.info["cache_key"]

    uniform = train_diagnostic("uniform", spec, train, test, cache_dir=tmp_path / "a", progress=False)
    assert torch.equal(uniform.test.attention, uniform_attention(lengths, ids.shape[1]))
    assert torch.allclose(uniform.test.logits, uniform_outputs(uniform.model, test).logits, atol=1e-12)
    trained = train_diagnostic("trained", spec, train, test, cache_dir=tmp_path / "a", progress=False)
    assert torch.allclose(trained.test.logits, model_outputs(trained.model, test).logits, atol=1e-12)
    assert trained.guide_attention(test) is None
    keys = {r.info["cache_key"] for r in (imposed, uniform, trained)}
    assert len(keys) == 3


# --------------------------------------------------------------------------- adversary


def test_kl_attention_with_padding_is_finite():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], requires_grad=True)
    q = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])  # zeros of q at a real token and padding
    mask = torch.tensor([[True, True, False, False], [True, True, False, False]])
    kl = kl_attention(p, q, mask)
    assert torch.isfinite(kl).all()
    assert kl[0].item() == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), rel=1e-5)
    assert kl[1].item() == pytest.approx(-math.log(1e-10), rel=1e-5)  # bounded by the floor
    kl.sum().backward()
    assert torch.isfinite(p.grad).all()
    assert kl_attention(q, q, mask).abs().max() < 1e-6


def cue_task(n, seed, vocab=30, min_len=5, max_len=15):
    """label = which of tokens 3 / 4 the sequence holds: a tiny BiLSTM learns it in 3 epochs with confident,
    instance-dependent outputs and peaked attention (the 400-review sentiment task leaves it at chance, where
    imitating the base's outputs would be trivial)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    ids = torch.randint(5, vocab, (n, max_len), generator=g)
    ids[torch.arange(max_len)[None, :] >= lengths[:, None]] = 0
    labels = torch.randint(0, 2, (n,), generator=g)
    ids[torch.arange(n), (torch.rand(n, generator=g) * lengths).long()] = 3 + labels
    return ids, lengths, None, None, labels


def test_adversary_and_lambda_sweep(tmp_path):
    train, test = cue_task(400, 0), cue_task(120, 1)
    spec = TextTrainSpec(arch="cue", encoder="bilstm", attention="additive", vocab_size=30, n_classes=2, epochs=3,
                         batch_size=32, lr=1e-2, data_key=tensor_checksum(*train), embed_dim=16, hidden=8)
    base = train_text_model(spec, train, test, cache_dir=tmp_path, progress=False)
    own = model_outputs(base, test)
    assert own.accuracy(test[4]) > 0.9 and own.probabilities[:, 1].std() > 0.2  # outputs worth imitating
    adv0 = train_adversary(base, spec, train, test, 0.0, cache_dir=tmp_path, progress=False)
    info0 = adv0.sanitycheck_info
    assert info0["lambda"] == 0.0 and info0["from_cache"] is False
    assert adv0.sanitycheck_spec.arch == "cue.adversary"
    # λ = 0 only imitates the base's outputs: small output TVD, same predictions
    div0 = attention_divergence(adv0, base, test)
    assert info0["mean_test_output_tvd"] == pytest.approx(float(div0["output_tvd"].mean()), abs=1e-9)
    assert info0["mean_test_output_tvd"] < 0.15 and info0["test_agreement"] > 0.9, info0
    big = train_adversary(base, spec, train, test, 10.0, cache_dir=tmp_path, progress=False)
    info10 = big.sanitycheck_info
    assert info10["mean_test_attention_jsd"] > info0["mean_test_attention_jsd"] + 0.2, (info0, info10)
    assert info10["mean_test_attention_kl"] > info0["mean_test_attention_kl"]
    assert info10["mean_test_output_tvd"] > info0["mean_test_output_tvd"]  # the trade-off: attention costs output

    sweep = lambda_sweep(base, spec, train, test, [0, 10.0], cache_dir=tmp_path, progress=False)
    assert all(m.sanitycheck_info["from_cache"] for m in sweep.adversaries)
    assert _state_equal(sweep.adversaries[0], adv0) and _state_equal(sweep.adversaries[1], big)
    assert sweep.output_tvd.shape == sweep.attention_jsd.shape == (2, 120)
    assert torch.allclose(sweep.output_tvd[0], div0["output_tvd"], atol=1e-12)
    rows = sweep.means()
    assert [r["lambda"] for r in rows] == [0.0, 10.0]
    assert rows[1]["mean_attention_jsd"] == pytest.approx(big.sanitycheck_info["mean_test_attention_jsd"], abs=1e-9)
    assert rows[0]["test_accuracy"] == info0["test_accuracy"]
    # base untouched; a fresh directory retrains λ = 0 to the same weights
    assert next(base.parameters()).dtype == torch.float32 and not base.training
    assert _state_equal(train_adversary(base, spec, train, test, 0, cache_dir=tmp_path / "fresh", progress=False), adv0)


# --------------------------------------------------------------------------- errors


def test_errors(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path))  # nothing may train here; if it did, not in ~/.cache
    spec, base, train, test = setup["spec"], setup["base"], setup["train"], setup["test"]
    plain = nn.Linear(3, 2).eval()
    for call in (lambda: uniform_outputs(plain, test), lambda: attention_divergence(base, plain, test),
                 lambda: train_diagnostic("imposed", spec, train, test, guide_model=plain, progress=False),
                 lambda: train_adversary(plain, spec, train, test, 0.0, progress=False)):
        with pytest.raises(NotApplicableError, match="has_attention"):
            call()
    training = copy.deepcopy(base).train()
    for call in (lambda: uniform_outputs(training, test), lambda: attention_divergence(base, training, test),
                 lambda: train_diagnostic("imposed", spec, train, test, guide_model=training, progress=False),
                 lambda: train_adversary(training, spec, train, test, 0.0, progress=False)):
        with pytest.raises(ModelError, match="train mode"):
            call()
    for lam in (-0.1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ConfigError, match="λ"):
            train_adversary(base, spec, train, test, lam, progress=False)
    with pytest.raises(ConfigError, match="λ"):
        lambda_sweep(base, spec, train, test, [0.0, -1.0], progress=False)
    with pytest.raises(ConfigError, match="distinct"):
        lambda_sweep(base, spec, train, test, [1.0, 1], progress=False)
    with pytest.raises(ConfigError, match="hidden"):
        train_adversary(base, dataclasses.replace(spec, hidden=4), train, test, 0.0, progress=False)
    empty = (test[0][:0], test[1][:0], None, None, test[4][:0])
    with pytest.raises(DataError, match="empty"):
        uniform_outputs(base, empty)
    with pytest.raises(DataError, match="empty"):
        f1_score(empty[4], empty[4], 2)
    with pytest.raises(DataError, match="empty"):
        attention_divergence(base, base, empty)
    with pytest.raises(DataError, match="empty"):
        train_diagnostic("uniform", spec, empty, test, progress=False)
    with pytest.raises(DataError, match="empty"):
        train_adversary(base, spec, train, empty, 0.0, progress=False)
    with pytest.raises(ConfigError, match="unknown guide"):
        train_diagnostic("lstm", spec, train, test, progress=False)
    with pytest.raises(ConfigError, match="needs guide_model"):
        train_diagnostic("imposed", spec, train, test, progress=False)
    with pytest.raises(ConfigError, match="takes no guide_model"):
        train_diagnostic("uniform", spec, train, test, guide_model=base, progress=False)
    with pytest.raises(DataError, match="imposed attention"):
        model_outputs(base, test, attention=torch.ones(3, 3))
    assert not any(tmp_path.rglob("*.pt"))
