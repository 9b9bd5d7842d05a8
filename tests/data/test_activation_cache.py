import numpy as np
import pytest
import torch

from sanitycheck.data.activation_cache import NonFiniteActivationError, activation_key, collect_activations
from sanitycheck.data.token_corpus import concept_words
from sanitycheck.errors import DataError

from tests.sae_lm_fixtures import tiny_source


@pytest.fixture(scope="module")
def corpus():
    return concept_words(12, seed=0, max_words=12)


def test_collect_keeps_real_tokens_and_equals_fresh_forward(tmp_path, corpus):
    src = tiny_source()
    aset = collect_activations(src, corpus, max_len=16, batch_size=5, cache_dir=tmp_path, progress=False)
    ids, mask, wi = src.encode(corpus.words, 16)
    assert len(aset) == int(mask.sum()) == sum(min(len(w), 15) for w in corpus.words)
    fresh = src.activations(ids, mask)[mask]
    assert torch.allclose(aset.acts, fresh, atol=1e-6)
    assert torch.equal(aset.token_ids, ids[mask]) and torch.equal(aset.word_index, wi[mask])
    assert (aset.word_index >= 0).all() and (aset.position >= 1).all()
    assert aset.doc.tolist() == sorted(aset.doc.tolist()) and int(aset.doc.max()) == len(corpus) - 1
    assert not aset.meta["from_cache"]


def test_cache_round_trip_is_memory_mapped_and_read_only(tmp_path, corpus):
    src = tiny_source()
    a = collect_activations(src, corpus, max_len=16, cache_dir=tmp_path, progress=False)
    b = collect_activations(src, corpus, max_len=16, cache_dir=tmp_path, progress=False)
    assert b.meta["from_cache"] and b.key == a.key and torch.equal(a.acts, b.acts)
    assert isinstance(b.memmap, np.memmap) and b.memmap.mode == "r" and not b.memmap.flags.writeable
    assert b.acts.data_ptr() == b.memmap.ctypes.data  # the tensor is the mapped file, not a copy
    with pytest.raises(ValueError, match="read-only"):
        b.memmap[0, 0] = 1.0
    entries = [p for p in (tmp_path / "activations").iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary left behind


def test_key_changes_with_content(tmp_path, corpus):
    src = tiny_source()
    k = activation_key(src, corpus, 16, False)
    assert k == activation_key(tiny_source(), corpus, 16, False)
    assert k != activation_key(src, corpus, 12, False)
    assert k != activation_key(src, corpus, 16, True)
    assert k != activation_key(src, concept_words(12, seed=1, max_words=12), 16, False)
    assert k != activation_key(src.randomized("all", 0), corpus, 16, False)
    assert k != activation_key(tiny_source(seed=1), corpus, 16, False)


def test_include_bos_adds_the_first_token(tmp_path, corpus):
    src = tiny_source()
    a = collect_activations(src, corpus, max_len=16, cache_dir=tmp_path, progress=False)
    b = collect_activations(src, corpus, max_len=16, cache_dir=tmp_path, progress=False, include_bos=True)
    assert len(b) == len(a) + len(corpus) and int((b.position == 0).sum()) == len(corpus)
    assert (b.word_index[b.position == 0] == -1).all()


def test_nan_activations_are_a_clear_error_and_not_cached(tmp_path, corpus):
    src = tiny_source()
    with torch.no_grad():
        src.model.mlp_in.bias[3] = float("nan")
    src._hash = None
    with pytest.raises(NonFiniteActivationError, match=r"tiny_lm\.mlp \(site mlp_act\).*NaN/inf.*at \d+ of") as err:
        collect_activations(src, corpus, max_len=16, cache_dir=tmp_path, progress=False)
    assert isinstance(err.value, DataError)
    assert list((tmp_path / "activations").iterdir()) == []
