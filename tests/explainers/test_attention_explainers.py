"""Token-importance explainers for attention classifiers (sanitycheck.explainers.attention)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sanitycheck.errors import ModelError, NotApplicableError
from sanitycheck.explainers.attention import (
    TOKEN_EXPLAINERS,
    AttentionTimesGradient,
    AttentionWeights,
    EmbeddingGradient,
    EmbeddingGradientXInput,
    IntegratedGradientsEmbedding,
    LeaveOneOut,
    TextBatch,
)
from sanitycheck.models.attention import AttentionClassifier

EXPLAINERS = [AttentionWeights(), EmbeddingGradient(), EmbeddingGradientXInput(), LeaveOneOut(),
              LeaveOneOut(measure="prob", batch_size=7), IntegratedGradientsEmbedding(n_steps=16),
              AttentionTimesGradient()]
IDS = [f"{e.name}-{i}" for i, e in enumerate(EXPLAINERS)]


def _model(encoder="bilstm", attention="additive", query=False, double=True) -> AttentionClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AttentionClassifier(vocab_size=30, n_classes=2, encoder=encoder, attention=attention,
                                    embed_dim=16, hidden=8, query=query)
    model = model.eval()
    return model.double() if double else model


def _batch(B=6, L=12, seed=1) -> TextBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, L + 1, (B,), generator=g)
    lengths[0] = L
    ids = torch.randint(1, 30, (B, L), generator=g)
    ids = ids.masked_fill(torch.arange(L)[None, :] >= lengths[:, None], 0)
    return TextBatch(ids, lengths)


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def batch():
    return _batch()


@pytest.fixture(scope="module")
def target(model, batch):
    with torch.no_grad():
        return model(batch.ids, batch.lengths).argmax(1)


@pytest.mark.parametrize("explainer", EXPLAINERS, ids=IDS)
def test_shape_padding_dtype_determinism_untouched(explainer, model, batch, target, snapshot, same_snapshot):
    before = snapshot(model)
    out = explainer(model, batch, target)
    assert out.shape == batch.ids.shape and out.dtype == torch.float64
    pad = torch.arange(batch.ids.shape[1])[None, :] >= batch.lengths[:, None]
    assert (out[pad] == 0).all()
    assert torch.isfinite(out).all()
    assert not out.requires_grad
    real = out[~pad]
    assert real.abs().sum() > 0
    assert torch.equal(out, explainer(model, batch, target))
    same_snapshot(before, snapshot(model))


@pytest.mark.parametrize("explainer", EXPLAINERS, ids=IDS)
def test_batch_invariance(explainer, model, batch, target):
    out = explainer(model, batch, target)
    # each row alone, trimmed to its own length
    for i in (0, 3):
        n = int(batch.lengths[i])
        single = TextBatch(batch.ids[i:i + 1, :n], batch.lengths[i:i + 1])
        alone = explainer(model, single, target[i:i + 1])
        torch.testing.assert_close(alone[0], out[i, :n], rtol=1e-9, atol=1e-12)
    # extra padding and another order
    perm = torch.tensor([5, 2, 0, 1, 4, 3])
    padded = TextBatch(torch.nn.functional.pad(batch.ids[perm], (0, 3)), batch.lengths[perm])
    torch.testing.assert_close(explainer(model, padded, target[perm])[:, :-3], out[perm], rtol=1e-9, atol=1e-12)


def test_train_mode_and_not_applicable(batch, target):
    model = _model().train()
    for explainer in EXPLAINERS:
        with pytest.raises(ModelError):
            explainer(model, batch, target)

    class NoAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, ids, lengths=None, *args, **kwargs):
            return self.lin(torch.ones(ids.shape[0], 2))

    plain = NoAttention().eval()
    needing = (AttentionWeights(), AttentionTimesGradient(), EmbeddingGradient(), IntegratedGradientsEmbedding())
    for explainer in needing:
        with pytest.raises(NotApplicableError):
            explainer(plain, batch, target)


def test_names():
    assert set(TOKEN_EXPLAINERS) == {"attention", "gradient", "gradient_x_input", "leave_one_out",
                                     "integrated_gradients", "attention_x_gradient", "random_tokens"}


def test_attention_is_the_model_attention(model, batch, target):
    with torch.no_grad():
        _, alpha = model(batch.ids, batch.lengths, return_attention=True)
    out = AttentionWeights()(model, batch, target)
    torch.testing.assert_close(out, alpha)
    torch.testing.assert_close(out.sum(1), torch.ones(6, dtype=torch.float64))


def test_gradient_equals_autograd_on_one_example(model, batch):
    n = int(batch.lengths[1])
    ids = batch.ids[1:2, :n]
    # autograd w.r.t. a one-hot input: logits as a function of one-hot (1, n, V) @ E
    onehot = torch.nn.functional.one_hot(ids, 30).double().requires_grad_(True)
    emb = onehot @ model.embedding.weight.detach()
    logit = model.forward_from_embeddings(emb, torch.tensor([n]))[0, 1]
    (g,) = torch.autograd.grad(logit, onehot)
    expected = g[0].gather(1, ids[0][:, None]).squeeze(1)
    tgt = torch.tensor([1])
    single = TextBatch(ids, torch.tensor([n]))
    torch.testing.assert_close(EmbeddingGradientXInput()(model, single, tgt)[0], expected)
    torch.testing.assert_close(EmbeddingGradient()(model, single, tgt)[0], expected.abs())


def test_float32_model_gives_float32(batch, target):
    model = _model(double=False)
    for explainer in (AttentionWeights(), EmbeddingGradient(), LeaveOneOut()):
        assert explainer(model, batch, target).dtype == torch.float32


@pytest.mark.parametrize("measure", ["tvd", "prob"])
def test_leave_one_out_equals_naive_loop(model, measure):
    batch = _batch(B=4, L=10, seed=3)
    tgt = torch.tensor([0, 1, 1, 0])
    out = LeaveOneOut(measure=measure, batch_size=5)(model, batch, tgt)
    with torch.no_grad():
        for b in range(4):
            n = int(batch.lengths[b])
            seq = batch.ids[b, :n].tolist()
            p = torch.softmax(model(torch.tensor([seq]), torch.tensor([n])), -1)[0]
            for t in range(n):
                rest = seq[:t] + seq[t + 1:]
                q = torch.softmax(model(torch.tensor([rest]), torch.tensor([n - 1])), -1)[0]
                ref = 0.5 * (p - q).abs().sum() if measure == "tvd" else p[tgt[b]] - q[tgt[b]]
                assert float(out[b, t]) == pytest.approx(float(ref), abs=1e-12)


def test_leave_one_out_single_token_is_zero(model):
    batch = TextBatch(torch.tensor([[4, 0, 0], [5, 6, 7]]), torch.tensor([1, 3]))
    out = LeaveOneOut()(model, batch, torch.tensor([0, 0]))
    assert out[0].abs().sum() == 0 and out[1].abs().sum() > 0


@pytest.mark.parametrize("encoder", ["bilstm", "cnn", "average"])
def test_integrated_gradients_completeness(encoder, batch):
    model = _model(encoder=encoder)
    tgt = torch.zeros(batch.ids.shape[0], dtype=torch.long)
    ig = IntegratedGradientsEmbedding(n_steps=50, internal_batch_size=64)(model, batch, tgt)
    with torch.no_grad():
        f_x = model(batch.ids, batch.lengths)[:, 0]
        zero = torch.zeros_like(model.embed(batch.ids))
        f_0 = model.forward_from_embeddings(zero, batch.lengths)[:, 0]
    diff = f_x - f_0
    torch.testing.assert_close(ig.sum(1), diff, rtol=0.03, atol=1e-6 + 0.03 * float(diff.abs().max()))


def test_attention_x_gradient_is_alpha_times_decoder_contribution(model, batch, target):
    out = AttentionTimesGradient()(model, batch, target)
    with torch.no_grad():
        hidden, _ = model.encode(batch.ids, batch.lengths)
        alpha = model.attend(hidden, batch.lengths)
        w = model.decoder.weight[target]  # (B, H)
        expected = alpha * torch.einsum("blh,bh->bl", hidden, w)
    torch.testing.assert_close(out, expected)


def test_query_model(batch):
    model = _model(attention="dot", query=True)
    g = torch.Generator().manual_seed(7)
    q = torch.randint(1, 30, (6, 4), generator=g)
    ql = torch.tensor([4, 2, 3, 4, 1, 2])
    full = TextBatch(batch.ids, batch.lengths, q, ql)
    tgt = torch.ones(6, dtype=torch.long)
    for explainer in EXPLAINERS:
        out = explainer(model, full, tgt)
        assert out.shape == batch.ids.shape
        single = TextBatch(batch.ids[2:3], batch.lengths[2:3], q[2:3], ql[2:3])
        torch.testing.assert_close(explainer(model, single, tgt[2:3])[0], out[2], rtol=1e-9, atol=1e-12)
