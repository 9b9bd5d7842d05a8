"""Activation collection (issue 15): tokens/s of :func:`collect_activations` against the bare forward floor.

Two sources, CPU, 256 review snippets (Rotten Tomatoes train, at most 63 words, max_len 64):

* the review LM's MLP (``mlp_act``), untrained (timing does not depend on the weights), real vocabulary;
* all-MiniLM-L6-v2's residual stream after layer 2 (skipped when the weights are not installed).

Measured in the same process, interleaved, best of ``REPEATS``:

* ``collect``: :func:`sanitycheck.data.activation_cache.collect_activations` into an empty cache directory
  (encode, hooked forward, NaN check, memory-mapped write, index and atomic rename);
* ``floor``: the model's whole forward alone over the same pre-encoded batches;
* ``site_floor``: the forward up to the hooked site alone (``source.activations``; collection stops the pass
  at the site, so this is the floor no collection can beat).

``extra_info``: tokens, ``collect_tokens_per_s``, ``floor_tokens_per_s``, ``collect_over_floor`` and
``collect_over_site_floor`` (target <= 1.5).

Run: ``python -m pytest benchmarks/bench_activation_collection.py --benchmark-enable -q -s``
(without ``--benchmark-enable`` each case runs once, as a smoke test; the ratios are measured anyway).
"""

from __future__ import annotations

import tempfile
import time

import pytest
import torch
from torch import nn

from sanitycheck.data.activation_cache import collect_activations
from sanitycheck.data.token_corpus import review_words

N_TEXTS = 256
BATCH = 64
MAX_LEN = 64
REPEATS = 3


@pytest.fixture(scope="module")
def corpus():
    return review_words("train", n=N_TEXTS, seed=0, sources=("rotten_tomatoes",))


def _lm_source():
    from sanitycheck.models.activation_sources import LMSource
    from sanitycheck.models.review_lm import LMSpec, build_review_lm, build_tokenizer

    tok, _ = build_tokenizer()
    return LMSource(build_review_lm(LMSpec(), len(tok)), tok)


def _minilm_source():
    from sanitycheck.errors import WeightsUnavailableError
    from sanitycheck.models.activation_sources import MiniLMSource, _MiniLMWithHead
    from sanitycheck.models.transformer import MiniLMTokenizer, load_minilm

    try:
        bert, hf_tok = load_minilm()
    except WeightsUnavailableError as err:
        pytest.skip(str(err))
    head = nn.Linear(bert.config.hidden_size, 2)  # the head plays no part in collection
    return MiniLMSource(_MiniLMWithHead(bert, head).eval(), MiniLMTokenizer(hf_tok), 2)


def _floor(source, batches):
    with torch.no_grad():
        for ids, mask in batches:
            source._forward(ids, mask)


def _site_floor(source, batches):
    for ids, mask in batches:
        source.activations(ids, mask)


def _collect(source, corpus):
    with tempfile.TemporaryDirectory() as d:
        return len(collect_activations(source, corpus, max_len=MAX_LEN, batch_size=BATCH, cache_dir=d,
                                       progress=False))


@pytest.mark.parametrize("which", ["review_lm.mlp", "minilm.layer2"])
def test_activation_collection_speed(benchmark, which, corpus):
    source = _lm_source() if which == "review_lm.mlp" else _minilm_source()
    ids, mask, _ = source.encode(corpus.words, MAX_LEN)
    nonpad = ids != 0
    batches = []
    for s in range(0, ids.shape[0], BATCH):
        w = int(nonpad[s:s + BATCH].sum(1).max())
        batches.append((ids[s:s + BATCH, :w], mask[s:s + BATCH, :w]))
    n_tokens = int(mask.sum())
    benchmark.group = f"activation collection: {N_TEXTS} RT snippets, max_len {MAX_LEN}, CPU"
    got = benchmark.pedantic(lambda: _collect(source, corpus), rounds=REPEATS, iterations=1, warmup_rounds=1)
    assert got == n_tokens

    best = {"collect": float("inf"), "floor": float("inf"), "site_floor": float("inf")}
    runs = (("collect", lambda: _collect(source, corpus)), ("floor", lambda: _floor(source, batches)),
            ("site_floor", lambda: _site_floor(source, batches)))
    for _ in range(REPEATS):  # interleaved, so that load from other processes hits them alike
        for name, fn in runs:
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    info = {"source": source.name, "tokens": n_tokens, "collect_s": round(best["collect"], 4),
            "floor_s": round(best["floor"], 4),
            "collect_tokens_per_s": round(n_tokens / best["collect"], 1),
            "floor_tokens_per_s": round(n_tokens / best["floor"], 1),
            "site_floor_s": round(best["site_floor"], 4),
            "collect_over_floor": round(best["collect"] / best["floor"], 3),
            "collect_over_site_floor": round(best["collect"] / best["site_floor"], 3),
            "threads": torch.get_num_threads()}
    benchmark.extra_info.update(info)
    print(f"\n{which}: {info}")
