import pytest
import torch

from sanitycheck.errors import ConfigError, DataError
from sanitycheck.models.review_lm import (BOS, PAD, UNK, LMSpec, OneLayerTransformerLM, WordTokenizer,
                                          build_review_lm, generator_words, lm_windows, review_lm)
from sanitycheck.registry import MODELS

from tests.sae_lm_fixtures import TEXTS, TINY, tiny_lm, trained_tiny_source


def test_tokenizer_order_specials_and_ties():
    tok = WordTokenizer.from_texts([["b", "a", "c", "c"], ["a", "c"]], vocab_size=2, extra=["zz", "a"])
    assert tok.vocab == [PAD, UNK, BOS, "c", "a", "zz"]  # c (3) then a/b tied (2, 1)... a wins; extras appended
    ids, mask = tok.encode([["c", "q"], ["a"]], max_len=4)
    assert ids.tolist() == [[2, 3, 1, 0], [2, 4, 0, 0]]
    assert mask.tolist() == [[True, True, True, False], [True, True, False, False]]
    assert tok.decode(ids[0, :3]) == [BOS, "c", UNK]
    assert WordTokenizer(tok.vocab).checksum == tok.checksum
    assert WordTokenizer.from_json(tok.to_json()).vocab == tok.vocab


def test_tokenizer_truncates_and_rejects_strings():
    tok = WordTokenizer.from_texts(TEXTS)
    ids, mask = tok.encode([TEXTS[0]], max_len=3)
    assert ids.shape == (1, 3) and mask.all() and tok.decode(ids[0]) == [BOS, "the", "movie"]
    with pytest.raises(DataError, match="list of word lists"):
        tok.encode(["the movie"], 4)
    with pytest.raises(DataError, match="must start with"):
        WordTokenizer(["a", "b", "c"])


def test_generator_words_cover_concept_words():
    words = set(generator_words())
    assert {"not", "never", "but", "mary", "kitchen", "great", "awful", "journeyed", "picked"} <= words


def test_model_shapes_submodules_and_causality():
    model, tok = tiny_lm()
    ids, mask = tok.encode(TEXTS, 8)
    logits = model(ids, mask)
    assert logits.shape == (4, 8, len(tok))
    for name in ("embed", "pos_embed", "ln1", "attn", "ln2", "mlp_in", "mlp_act", "mlp_out", "ln_f", "unembed"):
        assert hasattr(model, name)
    assert isinstance(model.mlp_act, torch.nn.GELU)
    changed = ids.clone()
    changed[:, 5:] = 3  # later tokens must not change earlier logits
    assert torch.allclose(model(changed)[:, :5], logits[:, :5], atol=1e-6)
    assert not torch.allclose(model(changed)[:, 5:], logits[:, 5:])
    with pytest.raises(DataError, match="max_len"):
        model(torch.zeros(1, TINY["max_len"] + 1, dtype=torch.long))


def test_init_deterministic_per_seed():
    a, _ = tiny_lm(0)
    b, _ = tiny_lm(0)
    c, _ = tiny_lm(1)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.embed.weight, c.embed.weight)
    state = torch.random.get_rng_state()
    tiny_lm(3)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_windows_cut_long_texts():
    tok = WordTokenizer.from_texts(TEXTS)
    ids, mask = lm_windows(tok, [["the"] * 10], max_len=5)
    assert ids.shape == (3, 5) and mask.sum().item() == 10 + 3 and (ids[:, 0] == 2).all()


def test_brief_training_lowers_loss_and_records_info():
    src = trained_tiny_source()
    info = src.model.sanitycheck_info
    assert info["tokens_seen"] > 0 and info["train_ce"] < 2.5 and info["heldout_ce"] < 2.5


def test_review_lm_registered_and_rejects_unknown_options():
    assert "review_lm" in MODELS.names()
    with pytest.raises(ConfigError, match="unknown option"):
        review_lm(0, stepz=3)


@pytest.mark.slow
def test_review_lm_trains_and_reloads_deterministically(tmp_path):
    """The real LM (a short run): load-or-train, cached, same weights on reload, CE below the unigram level."""
    a = review_lm(0, cache_dir=tmp_path, progress=False, steps=30)
    b = review_lm(0, cache_dir=tmp_path, progress=False, steps=30)
    assert not a.sanitycheck_info["from_cache"] and b.sanitycheck_info["from_cache"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.tokenizer.vocab[:3] == [PAD, UNK, BOS] and a.sanitycheck_info["heldout_ce"] < 8.3
