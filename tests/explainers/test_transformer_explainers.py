"""Transformer token explainers (sanitycheck.explainers.transformer) and the J&W token explainers on the
MiniLM attention classifier: the contract, invariances, rollout and Chefer relevance against their
definitions, and a run on the real pretrained weights."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from sanitycheck.errors import ConfigError, ModelError, NotApplicableError
from sanitycheck.explainers.attention import (
    AttentionTimesGradient,
    AttentionWeights,
    EmbeddingGradient,
    EmbeddingGradientXInput,
    IntegratedGradientsEmbedding,
    LeaveOneOut,
    TextBatch,
)
from sanitycheck.explainers.transformer import (
    TRANSFORMER_EXPLAINERS,
    AttentionRollout,
    GradientWeightedAttention,
    SelfAttentionWeights,
    attention_rollout,
    chefer_relevance,
)
from sanitycheck.models.attention import AttentionClassifier
from sanitycheck.models.transformer import MiniLMAttentionClassifier, SelfAttentions

TRANSFORMER = [SelfAttentionWeights(), SelfAttentionWeights(layer=0, head=1), SelfAttentionWeights(readout="pooling"),
               AttentionRollout(), AttentionRollout(residual=0.3, readout="pooling"), GradientWeightedAttention(),
               GradientWeightedAttention(readout="pooling")]
JW = [AttentionWeights(), EmbeddingGradient(), EmbeddingGradientXInput(), LeaveOneOut(),
      LeaveOneOut(measure="prob", batch_size=7), IntegratedGradientsEmbedding(n_steps=8), AttentionTimesGradient()]
ALL = TRANSFORMER + JW
IDS = [f"{e.name}-{i}" for i, e in enumerate(ALL)]


def _model(query=False, double=True) -> MiniLMAttentionClassifier:
    model = MiniLMAttentionClassifier.from_config(2, hidden=16, layers=2, heads=2, query=query, seed=0)
    return model.double() if double else model


def _batch(B=6, L=10, seed=1, query=False) -> TextBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, L + 1, (B,), generator=g)
    lengths[0] = L
    ids = torch.randint(1000, 30522, (B, L), generator=g).masked_fill(torch.arange(L)[None, :] >= lengths[:, None], 0)
    if not query:
        return TextBatch(ids, lengths)
    ql = torch.randint(1, 4, (B,), generator=g)
    q = torch.randint(1000, 30522, (B, 3), generator=g).masked_fill(torch.arange(3)[None, :] >= ql[:, None], 0)
    return TextBatch(ids, lengths, q, ql)


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


@pytest.mark.parametrize("explainer", ALL, ids=IDS)
def test_contract_on_minilm(explainer, model, batch, target, snapshot, same_snapshot):
    before = snapshot(model)
    out = explainer(model, batch, target)
    assert out.shape == batch.ids.shape and out.dtype == torch.float64 and not out.requires_grad
    pad = torch.arange(batch.ids.shape[1])[None, :] >= batch.lengths[:, None]
    assert (out[pad] == 0).all() and torch.isfinite(out).all() and out[~pad].abs().sum() > 0
    assert torch.equal(out, explainer(model, batch, target))
    same_snapshot(before, snapshot(model))


@pytest.mark.parametrize("explainer", ALL, ids=IDS)
def test_batch_and_padding_invariance(explainer, model, batch, target):
    out = explainer(model, batch, target)
    for i in (0, 3):
        n = int(batch.lengths[i])
        alone = explainer(model, TextBatch(batch.ids[i:i + 1, :n], batch.lengths[i:i + 1]), target[i:i + 1])
        torch.testing.assert_close(alone[0], out[i, :n], rtol=1e-9, atol=1e-12)
    perm = torch.tensor([5, 2, 0, 1, 4, 3])
    padded = TextBatch(torch.nn.functional.pad(batch.ids[perm], (0, 3)), batch.lengths[perm])
    torch.testing.assert_close(explainer(model, padded, target[perm])[:, :-3], out[perm], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("explainer", TRANSFORMER + [LeaveOneOut(), IntegratedGradientsEmbedding(n_steps=4)],
                         ids=lambda e: e.name)
def test_query_model(explainer):
    model = _model(query=True)
    full = _batch(query=True)
    tgt = torch.ones(6, dtype=torch.long)
    out = explainer(model, full, tgt)
    assert out.shape == full.ids.shape and torch.isfinite(out).all()
    single = TextBatch(full.ids[2:3], full.lengths[2:3], full.query_ids[2:3], full.query_lengths[2:3])
    torch.testing.assert_close(explainer(model, single, tgt[2:3])[0], out[2], rtol=1e-9, atol=1e-12)


def test_float32_model_gives_float32(batch):
    model = _model(double=False).eval()
    for explainer in (SelfAttentionWeights(), AttentionRollout(), GradientWeightedAttention()):
        assert explainer(model, batch, torch.zeros(6, dtype=torch.long)).dtype == torch.float32


def test_names_and_config():
    assert set(TRANSFORMER_EXPLAINERS) == {"self_attention", "attention_rollout", "chefer_relevance"}
    assert all(cls.needs_attention for cls in TRANSFORMER_EXPLAINERS.values())
    assert SelfAttentionWeights(layer=2, head=0).config() == {"layer": 2, "head": 0, "readout": "cls"}
    for bad in (lambda: AttentionRollout(residual=1.5), lambda: AttentionRollout(readout="mean"),
                lambda: SelfAttentionWeights(head=-1), lambda: SelfAttentionWeights(layer=1.0)):
        with pytest.raises(ConfigError):
            bad()


def test_not_applicable_and_train_mode(model, batch, target):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        jw = AttentionClassifier(vocab_size=30522, n_classes=2, embed_dim=8, hidden=4).eval()
    for explainer in TRANSFORMER:
        with pytest.raises(NotApplicableError, match="self_attentions"):
            explainer(jw, batch, target)
    for explainer in TRANSFORMER:
        with pytest.raises(ModelError):
            explainer(_model().train(), batch, target)
    with pytest.raises(ConfigError, match="layer 5 out of range"):
        SelfAttentionWeights(layer=5)(model, batch, target)
    with pytest.raises(ConfigError, match="head 2 out of range"):
        SelfAttentionWeights(head=2)(model, batch, target)


# --------------------------------------------------------------------------- definitions


def test_self_attention_is_the_cls_row_and_head_mean(model, batch, target):
    out = model.self_attentions(batch.ids, batch.lengths)
    per_head = [SelfAttentionWeights(layer=-1, head=h)(model, batch, target) for h in range(2)]
    mean = SelfAttentionWeights(layer=-1)(model, batch, target)
    torch.testing.assert_close(mean, torch.stack(per_head).mean(0))
    L = batch.ids.shape[1]
    mask = torch.arange(L)[None, :] < batch.lengths[:, None]
    expected = out.attentions[-1][:, 1, 0, 1:L + 1].masked_fill(~mask, 0)
    torch.testing.assert_close(per_head[1], expected)
    first = SelfAttentionWeights(layer=0, head=0)(model, batch, target)
    torch.testing.assert_close(first, out.attentions[0][:, 0, 0, 1:L + 1].masked_fill(~mask, 0))


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5, dtype=torch.float64).expand(2, 3, 5, 5)
    torch.testing.assert_close(attention_rollout([eye, eye, eye]), torch.eye(5, dtype=torch.float64).expand(2, 5, 5))


def test_rollout_rows_are_distributions_and_match_the_formula(model, batch):
    out = model.self_attentions(batch.ids, batch.lengths)
    rollout = attention_rollout(out.attentions, 0.5)
    real = out.sequence_mask
    torch.testing.assert_close(rollout.sum(-1)[real], torch.ones(int(real.sum()), dtype=torch.float64))
    assert (rollout[real[:, :, None] & ~real[:, None, :]] == 0).all()  # real rows put nothing on padding
    T = rollout.shape[-1]
    a = [0.5 * x.mean(1) + 0.5 * torch.eye(T, dtype=torch.float64) for x in out.attentions]
    torch.testing.assert_close(rollout, a[1] @ a[0])  # Â_2 · Â_1 (rows already sum to 1)


class _StubTransformer(nn.Module):
    """A 'transformer' whose every layer's attention is given: tests the explainers' readout alone."""

    has_attention = True

    def __init__(self, attention_of, pooling_of):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.attention_of, self.pooling_of = attention_of, pooling_of

    def self_attentions(self, ids, lengths, query_ids=None, query_lengths=None, *, requires_grad=False):
        B, L = ids.shape
        T = L + 2
        mask = torch.arange(L)[None, :] < lengths[:, None]
        pos = (torch.arange(L)[None, :] + 1).expand(B, L).masked_fill(~mask, 0)
        seq = torch.arange(T)[None, :] < (lengths + 2)[:, None]
        a = self.attention_of(B, T)
        return SelfAttentions((a, a), pos, mask, seq, torch.zeros(B, 2, dtype=torch.float64), self.pooling_of(mask))


def test_rollout_readouts_on_known_attention():
    """Identity attention: the [CLS] row of the rollout is one-hot on [CLS] (nothing on the text) and the
    pooling readout returns the pooling weights; [CLS] attending to piece 2 only gives a one-hot on piece 2."""
    batch = TextBatch(torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]]), torch.tensor([4, 2]))
    pooling = lambda mask: mask.double() / mask.sum(1, keepdim=True)  # noqa: E731
    ident = _StubTransformer(lambda B, T: torch.eye(T, dtype=torch.float64).expand(B, 3, T, T), pooling).eval()
    tgt = torch.zeros(2, dtype=torch.long)
    assert AttentionRollout()(ident, batch, tgt).abs().sum() == 0
    torch.testing.assert_close(AttentionRollout(readout="pooling")(ident, batch, tgt),
                               pooling(torch.arange(4)[None, :] < batch.lengths[:, None]))

    def cls_to_piece_2(B, T):
        a = torch.eye(T, dtype=torch.float64).repeat(B, 3, 1, 1)
        a[:, :, 0, :] = 0
        a[:, :, 0, 2] = 1.0  # sequence position 2 = text piece 1
        return a

    onehot = AttentionRollout(residual=0.0)(_StubTransformer(cls_to_piece_2, pooling).eval(), batch, tgt)
    torch.testing.assert_close(onehot, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64))
    raw = SelfAttentionWeights()(_StubTransformer(cls_to_piece_2, pooling).eval(), batch, tgt)
    torch.testing.assert_close(raw, onehot)


def test_chefer_relevance_equals_naive_per_sample_loop(model):
    batch = _batch(B=4, L=8, seed=3)
    tgt = torch.tensor([0, 1, 1, 0])
    for readout in ("cls", "pooling"):
        out = GradientWeightedAttention(readout=readout)(model, batch, tgt)
        for b in range(4):
            n = int(batch.lengths[b])
            ids = batch.ids[b:b + 1, :n]
            emb = model.embed(ids).detach()
            sa = model._run(emb, torch.tensor([n]), None, None, keep_attentions=True)[0]
            grads = torch.autograd.grad(sa.logits[0, tgt[b]], sa.attentions)
            R = torch.eye(n + 2, dtype=torch.float64)
            for A, G in zip(sa.attentions, grads):
                A_bar = torch.stack([(G[0, h] * A[0, h]).clamp(min=0) for h in range(A.shape[1])]).mean(0)
                R = R + A_bar @ R
            if readout == "cls":
                expected = R[0, 1:n + 1]
            else:
                expected = sum(sa.pooling[0, i].detach() * R[i + 1, 1:n + 1] for i in range(n))
            torch.testing.assert_close(out[b, :n], expected.detach(), rtol=1e-9, atol=1e-12)
            assert (out[b, n:] == 0).all()


def test_chefer_relevance_function_starts_at_identity():
    a = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(chefer_relevance([a], [torch.zeros_like(a)]), torch.eye(4, dtype=torch.float64)
                               .expand(2, 4, 4))
    with pytest.raises(ConfigError):
        chefer_relevance([a], [])


def test_leave_one_out_deletes_a_piece_and_shifts_left(model):
    batch = _batch(B=3, L=6, seed=5)
    tgt = torch.tensor([0, 1, 0])
    out = LeaveOneOut(measure="prob")(model, batch, tgt)
    with torch.no_grad():
        for b in range(3):
            n = int(batch.lengths[b])
            seq = batch.ids[b, :n].tolist()
            p = torch.softmax(model(torch.tensor([seq]), torch.tensor([n])), -1)[0, tgt[b]]
            for t in range(n):
                rest = seq[:t] + seq[t + 1:]
                q = torch.softmax(model(torch.tensor([rest]), torch.tensor([n - 1])), -1)[0, tgt[b]]
                assert float(out[b, t]) == pytest.approx(float(p - q), abs=1e-12)


def test_integrated_gradients_completeness_on_minilm(model, batch):
    tgt = torch.zeros(6, dtype=torch.long)
    ig = IntegratedGradientsEmbedding(n_steps=32)(model, batch, tgt)
    with torch.no_grad():
        f_x = model(batch.ids, batch.lengths)[:, 0]
        f_0 = model.forward_from_embeddings(torch.zeros_like(model.embed(batch.ids)), batch.lengths)[:, 0]
    torch.testing.assert_close(ig.sum(1), f_x - f_0, rtol=0.02, atol=1e-6 + 0.02 * float((f_x - f_0).abs().max()))


# --------------------------------------------------------------------------- the real weights


def test_all_explainers_on_pretrained_minilm():
    from sanitycheck.models.transformer import MiniLMTokenizer, load_minilm

    bert, hf_tok = load_minilm()
    tok = MiniLMTokenizer(hf_tok)
    model = MiniLMAttentionClassifier(bert, 2, cls_id=tok.cls_id, sep_id=tok.sep_id).eval()
    texts = [["the", "plot", "was", "dull", "but", "the", "acting", "was", "superb"], ["not", "good"],
             ["an", "unbelievably", "boring", "film"]]
    ids, lengths, _ = tok.encode(texts)
    batch = TextBatch(ids, lengths)
    tgt = torch.tensor([1, 0, 0])
    pad = torch.arange(ids.shape[1])[None, :] >= lengths[:, None]
    for explainer in TRANSFORMER + [AttentionWeights(), EmbeddingGradient(), LeaveOneOut(), AttentionTimesGradient(),
                                    IntegratedGradientsEmbedding(n_steps=4)]:
        out = explainer(model, batch, tgt)
        assert out.shape == ids.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert (out[pad] == 0).all() and out[~pad].abs().sum() > 0, explainer
    rollout = AttentionRollout()(model, batch, tgt)
    assert (rollout[~pad] > 0).all() and (rollout.sum(1) < 1).all()  # part of the [CLS] row stays on specials
