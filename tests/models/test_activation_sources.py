import pytest
import torch

from sanitycheck.errors import ConfigError, ModelError
from sanitycheck.models.activation_sources import _minilm_encode

from tests.sae_lm_fixtures import TEXTS, tiny_source, trained_tiny_source


def test_lm_encode_word_index_and_mask():
    src = tiny_source()
    ids, mask, wi = src.encode([["the", "movie"], ["mary"]], max_len=5)
    assert ids.shape == mask.shape == wi.shape == (2, 5)
    assert wi.tolist() == [[-1, 0, 1, -1, -1], [-1, 0, -1, -1, -1]]
    assert mask.tolist() == [[False, True, True, False, False], [False, True, False, False, False]]


def test_activations_shape_deterministic_and_hook_released():
    src = tiny_source()
    ids, mask, _ = src.encode(TEXTS, 8)
    a = src.activations(ids, mask)
    assert a.shape == (4, 8, src.d_in) and a.dtype == torch.float32 and not a.requires_grad
    assert torch.equal(a, tiny_source().activations(ids, mask))
    assert len(src.model.mlp_act._forward_hooks) == 0


def test_identity_splice_equals_clean_loss_and_zero_ablation_hurts_trained_lm():
    src = trained_tiny_source()
    ids, mask, _ = src.encode(TEXTS, 8)
    clean = src.loss_with(ids, mask, None)
    assert clean.shape == (4,) and clean.dtype == torch.float64
    assert torch.equal(src.loss_with(ids, mask, None, replace=lambda x: x), clean)
    zero = src.loss_with(ids, mask, None, replace=torch.zeros_like)
    assert zero.mean() > clean.mean() + 0.02  # the MLP carries part of what the LM learned
    with pytest.raises(ModelError, match="shape"):
        src.loss_with(ids, mask, None, replace=lambda x: x[..., :3])
    assert len(src.model.mlp_act._forward_hooks) == 0  # released after an error too


def test_randomized_copies_differ_and_keep_embeddings_keeps_exactly_them():
    src = trained_tiny_source(steps=10)
    trained = {k: v.clone() for k, v in src.model.state_dict().items()}
    full = src.randomized("all", seed=0)
    keep = src.randomized("keep_embeddings", seed=0)
    for k, v in trained.items():
        assert torch.equal(src.model.state_dict()[k], v)  # the original is untouched
        is_emb = k.split(".")[0] in ("embed", "pos_embed")
        assert torch.equal(keep.model.state_dict()[k], v) == is_emb or k.startswith(("ln", "ln_f")), k
        if k.endswith("weight") and not k.startswith("ln"):
            assert not torch.equal(full.model.state_dict()[k], v), k
    assert full.state_hash() != src.state_hash() != keep.state_hash()
    again = src.randomized("all", seed=0)
    assert again.state_hash() == full.state_hash() and src.randomized("all", 1).state_hash() != full.state_hash()
    assert full.randomization == {"mode": "all", "seed": 0} and src.randomization is None
    with pytest.raises(ConfigError, match="mode"):
        src.randomized("some", 0)


class _FakePieces:
    """A word-piece tokenizer stand-in: words longer than 4 letters split into two pieces."""
    cls_id, sep_id = 101, 102

    def _pieces(self, rows):
        ids, words = [], []
        for row in rows:
            i, w = [], []
            for k, word in enumerate(row):
                n = 2 if len(word) > 4 else 1
                i += [1000 + len(word)] * n
                w += [k] * n
            ids.append(i)
            words.append(w)
        return ids, words


def test_minilm_word_index_alignment_for_word_pieces():
    ids, mask, wi = _minilm_encode(_FakePieces(), [["a", "lovely", "film"], ["dreadful"]], max_len=6)
    assert ids.tolist() == [[101, 1001, 1006, 1006, 1004, 102], [101, 1008, 1008, 102, 0, 0]]
    assert wi.tolist() == [[-1, 0, 1, 1, 2, -1], [-1, 0, 0, -1, -1, -1]]
    assert mask.tolist() == [[False, True, True, True, True, False], [False, True, True, False, False, False]]
    ids, mask, wi = _minilm_encode(_FakePieces(), [["a", "lovely", "film"]], max_len=4)  # truncated
    assert ids.tolist() == [[101, 1001, 1006, 102]] and wi.tolist() == [[-1, 0, 1, -1]]


@pytest.fixture(scope="module")
def real_minilm_pieces():
    from sanitycheck.errors import WeightsUnavailableError
    from sanitycheck.models.transformer import MiniLMTokenizer

    try:
        return MiniLMTokenizer()
    except WeightsUnavailableError as err:
        pytest.skip(str(err))


def test_minilm_word_index_with_the_real_tokenizer(real_minilm_pieces):
    tok = real_minilm_pieces
    ids, mask, wi = _minilm_encode(tok, [["unbelievably", "good"]], max_len=64)
    pieces = tok.decode(ids[0])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and len(pieces) > 4
    words = ["unbelievably", "good"]
    for p, w in zip(pieces[1:-1], wi[0, 1:-1].tolist()):
        assert p.lstrip("#") in words[w]
    assert int(mask.sum()) == len(pieces) - 2


def test_activations_stop_at_the_site_but_equal_the_full_forward():
    src = tiny_source()
    ids, mask, _ = src.encode(TEXTS, 8)
    store = []
    with torch.no_grad(), src.hooked(store=store):
        src.model(ids)  # the whole forward, the site's output captured on the way
    assert torch.equal(src.activations(ids, mask), store[0])
    assert len(src.model.mlp_act._forward_hooks) == 0


@pytest.fixture(scope="module")
def minilm_source():
    from torch import nn

    from sanitycheck.errors import WeightsUnavailableError
    from sanitycheck.models.activation_sources import MiniLMSource, _MiniLMWithHead
    from sanitycheck.models.transformer import MiniLMTokenizer, load_minilm

    try:
        bert, hf_tok = load_minilm()
    except WeightsUnavailableError as err:
        pytest.skip(str(err))
    with torch.random.fork_rng(devices=[]):  # a stand-in head (minilm_residual fits and caches the real one)
        torch.manual_seed(0)
        head = nn.Linear(bert.config.hidden_size, 2)
    return MiniLMSource(_MiniLMWithHead(bert, head).eval(), MiniLMTokenizer(hf_tok), 2)


def test_minilm_residual_site_splice_and_randomization(minilm_source):
    src = minilm_source
    assert src.d_in == 384 and src.name == "minilm.layer2"
    words = [["a", "truly", "unbelievably", "good", "film"], ["dull"]]
    ids, mask, wi = src.encode(words, 16)
    acts = src.activations(ids, mask)
    assert acts.shape == (2, ids.shape[1], 384)
    with torch.no_grad():
        hs = src.model.bert(input_ids=ids, attention_mask=(ids != 0).long(), output_hidden_states=True).hidden_states
    assert torch.allclose(acts[mask], hs[3][mask], atol=1e-5)  # hidden_states[0] is the embedding output
    labels = torch.tensor([1, 0])
    clean = src.loss_with(ids, mask, labels)
    assert torch.allclose(src.loss_with(ids, mask, labels, replace=lambda x: x), clean)
    assert not torch.allclose(src.loss_with(ids, mask, labels, replace=torch.zeros_like), clean)
    keep = src.randomized("keep_embeddings", 0)
    for k, v in src.model.state_dict().items():
        same = torch.equal(keep.model.state_dict()[k], v)
        if k.startswith("bert.embeddings."):
            assert same, k
        elif k.startswith("bert.encoder.") and k.endswith("dense.weight"):
            assert not same, k
    with pytest.raises(Exception, match="labels"):
        src.loss_with(ids, mask, None)


def test_logistic_head_fit_is_deterministic_and_separates():
    from sanitycheck.models.activation_sources import _fit_logistic

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 5, 1, 1, 1], dtype=torch.float64)
    y = (x[:, 1] + 0.1 * x[:, 0] > 0).long()
    w, b = _fit_logistic(x, y)
    w2, b2 = _fit_logistic(x, y)
    assert torch.equal(w, w2) and torch.equal(b, b2)
    assert ((x @ w + b > 0).long() == y).double().mean() > 0.97
