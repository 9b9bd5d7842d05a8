"""Tiny, untrained-or-briefly-trained stand-ins for the issue-15 activation sources (fast tests)."""

from __future__ import annotations

import torch

from sanitycheck.models.activation_sources import LMSource
from sanitycheck.models.review_lm import LMSpec, WordTokenizer, _train_lm, build_review_lm, lm_windows

TEXTS = [["the", "movie", "was", "great", "and", "fun"], ["the", "film", "was", "not", "good"],
         ["mary", "went", "to", "the", "kitchen", "."], ["john", "moved", "to", "the", "garden", "."]]
TINY = dict(d_model=16, n_heads=2, d_mlp=32, max_len=16)


def tiny_tokenizer() -> WordTokenizer:
    return WordTokenizer.from_texts(TEXTS, vocab_size=50, extra=["but", "never"])


def tiny_lm(seed: int = 0):
    tok = tiny_tokenizer()
    return build_review_lm(LMSpec(seed=seed, **TINY), len(tok)), tok


def tiny_source(seed: int = 0) -> LMSource:
    model, tok = tiny_lm(seed)
    return LMSource(model, tok, name="tiny_lm.mlp")


def trained_tiny_source(steps: int = 60) -> LMSource:
    """The tiny LM after a few dozen steps on the repeated TEXTS (well under a second)."""
    model, tok = tiny_lm(0)
    spec = LMSpec(seed=0, steps=steps, batch_size=8, lr=1e-2, warmup=5, **TINY)
    ids, mask = lm_windows(tok, TEXTS * 8, spec.max_len)
    info = _train_lm(model, ids, mask, ids[:4], mask[:4], spec, "cpu", False)
    model.sanitycheck_info = info
    return LMSource(model, tok, name="tiny_lm.mlp")
