"""Texts with per-word concept labels for sparse-autoencoder audits (issue 15).

A :class:`WordCorpus` is tokenizer-independent: words per text and, per concept, one label per word. An
activation source maps its tokens to words (``word_index``), and :func:`token_labels` carries the word labels
to tokens (-1 at ``<bos>``, ``[CLS]``/``[SEP]`` and padding).

Concepts and their exact definitions (ground truth from the project's generators, ``sanitycheck.data.text``):

* ``review_sentiment`` (:func:`review_words`): every word of a real review carries the review's label
  (0 negative, 1 positive).
* ``negation_scope`` (synthetic sentiment texts): 1 on every word *after* a negator ("not", "never") up to the
  end of its clause, 0 elsewhere. A clause ends at "but" (the generator's only clause boundary) or at the end
  of the text; the negator itself and "but" are 0. The generator puts a negator only right before a cue, so
  the scope is the cue and the filler after it in the same clause.
* ``after_but`` (synthetic sentiment texts): 1 on every word after "but" (the clause that decides the label),
  0 on "but" and the words before it; all 0 in texts without "but".
* ``babi_entity`` (bAbI stories): 1 on person names (``BABI_PEOPLE``), 0 on every other word.
* ``babi_location`` (bAbI stories): 1 on location words (``BABI_LOCATIONS``), 0 on every other word.

A concept that does not apply to a text is -1 on all its words (negation_scope/after_but on bAbI stories,
babi_* on sentiment texts, review_sentiment on generated texts). :func:`require_two_classes` raises
:class:`ConceptLabelError` where a probe would get one class only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = ["WordCorpus", "ConceptLabelError", "review_words", "concept_words", "token_labels",
           "token_labels_flat", "require_two_classes", "sentiment_concepts", "babi_concepts", "CONCEPTS"]

CONCEPTS = ("review_sentiment", "negation_scope", "after_but", "babi_entity", "babi_location")


class ConceptLabelError(DataError):
    """A concept's labels cannot be probed (one class only, or the concept is unknown)."""


def _checksum(name: str, words, labels, concepts) -> str:
    payload = {"name": name, "words": words, "labels": [int(v) for v in labels],
               "concepts": {k: concepts[k] for k in sorted(concepts)}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass
class WordCorpus:
    """Words per text, a text-level label (-1: none) and per-word concept labels (0/1, -1: not applicable)."""

    name: str
    words: List[List[str]]
    labels: Tensor
    concepts: Dict[str, List[List[int]]]
    checksum: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.words)
        self.labels = torch.as_tensor(self.labels, dtype=torch.long).reshape(-1)
        if self.labels.shape[0] != n:
            raise DataError(f"corpus {self.name!r}: {self.labels.shape[0]} labels for {n} texts")
        for c, rows in self.concepts.items():
            if len(rows) != n:
                raise DataError(f"corpus {self.name!r}: concept {c!r} has {len(rows)} rows for {n} texts")
            for i, (w, r) in enumerate(zip(self.words, rows)):
                if len(w) != len(r):
                    raise DataError(f"corpus {self.name!r}: concept {c!r} text {i} has {len(r)} labels for "
                                    f"{len(w)} words")
        if not self.checksum:
            self.checksum = _checksum(self.name, self.words, self.labels.tolist(), self.concepts)

    def __len__(self) -> int:
        return len(self.words)

    def __repr__(self) -> str:
        return (f"WordCorpus(name={self.name!r}, n={len(self)}, concepts={sorted(self.concepts)}, "
                f"checksum={self.checksum[:12]}...)")


# ------------------------------------------------------------------------------------ concept labels
def sentiment_concepts(words: Sequence[str]) -> Dict[str, List[int]]:
    """``negation_scope`` and ``after_but`` of one synthetic-sentiment text (definitions: module docstring)."""
    from .text import CONTRAST, NEGATORS

    neg, after = [], []
    in_scope = seen_but = False
    for w in words:
        if w == CONTRAST:
            in_scope = False
            neg.append(0)
            after.append(0)
            seen_but = True
            continue
        neg.append(1 if in_scope else 0)
        after.append(1 if seen_but else 0)
        if w in NEGATORS:
            in_scope = True
    return {"negation_scope": neg, "after_but": after}


def babi_concepts(words: Sequence[str]) -> Dict[str, List[int]]:
    """``babi_entity`` and ``babi_location`` of one bAbI story."""
    from .text import BABI_LOCATIONS, BABI_PEOPLE

    people, places = set(BABI_PEOPLE), set(BABI_LOCATIONS)
    return {"babi_entity": [1 if w in people else 0 for w in words],
            "babi_location": [1 if w in places else 0 for w in words]}


def _check_n(n, what: str) -> None:
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ConfigError(f"{what}: n must be a positive integer or None, got {n!r}")


def review_words(split: str = "train", n: Optional[int] = None, seed: int = 0,
                 sources: Sequence[str] = ("imdb", "rotten_tomatoes"), max_words: int = 63) -> WordCorpus:
    """Real reviews (first ``max_words`` words each) with ``review_sentiment`` on every word.

    ``n`` texts are drawn (seeded by ``seed``, without replacement) from the union of ``sources``' split; all of
    them (in source order) when ``n`` is None.
    """
    from ..seeding import derive_seed
    from .text import load_movie_reviews

    _check_n(n, "review_words")
    if not isinstance(max_words, int) or max_words < 1:
        raise ConfigError(f"review_words: max_words must be a positive integer, got {max_words!r}")
    words: List[List[str]] = []
    labels: List[int] = []
    for s in sources:
        ds = load_movie_reviews(s, split)
        words.extend(list(t[:max_words]) for t in ds.texts)
        labels.extend(ds.labels.tolist())
    if n is not None:
        if n > len(words):
            raise DataError(f"review_words: asked for {n} texts, the {split} split of {list(sources)} has "
                            f"{len(words)}; ask for fewer")
        g = torch.Generator().manual_seed(derive_seed(seed, "review_words", split, tuple(sources)))
        pick = torch.randperm(len(words), generator=g)[:n].tolist()
        words = [words[i] for i in pick]
        labels = [labels[i] for i in pick]
    concepts = {"review_sentiment": [[lab] * len(w) for w, lab in zip(words, labels)]}
    return WordCorpus(name=f"review_words_{split}", words=words, labels=torch.tensor(labels, dtype=torch.long),
                      concepts=concepts, meta={"split": split, "n": n, "seed": seed, "sources": list(sources),
                                               "max_words": max_words})


def concept_words(n: int = 2000, seed: int = 0, split: str = "train", max_words: int = 63) -> WordCorpus:
    """``n`` generated texts with concept ground truth: the first half synthetic-sentiment reviews (label: their
    sentiment), the second half bAbI stories (tasks 1 and 2 alternating, story words only; label -1).
    Every concept of the module docstring but ``review_sentiment`` (which is -1 here) is labelled."""
    from .text import load_babi, load_synthetic_sentiment

    _check_n(n, "concept_words")
    if n < 2:
        raise ConfigError(f"concept_words: n must be at least 2 (one sentiment text and one bAbI story), got {n}")
    n_sent = n // 2
    n_babi = n - n_sent
    sent = load_synthetic_sentiment(split, n=n_sent, seed=seed)
    b1 = load_babi(1, split, n=(n_babi + 1) // 2, seed=seed)
    b2 = load_babi(2, split, n=n_babi // 2, seed=seed)
    stories = [None] * n_babi
    stories[0::2] = b1.texts
    stories[1::2] = b2.texts
    words = [list(t[:max_words]) for t in sent.texts] + [list(t[:max_words]) for t in stories]
    labels = sent.labels.tolist() + [-1] * n_babi
    concepts: Dict[str, List[List[int]]] = {c: [] for c in CONCEPTS}
    for i, w in enumerate(words):
        na = [-1] * len(w)
        if i < n_sent:
            c = sentiment_concepts(w)
            c.update({"babi_entity": na, "babi_location": na})
        else:
            c = babi_concepts(w)
            c.update({"negation_scope": na, "after_but": na})
        c["review_sentiment"] = na
        for k in CONCEPTS:
            concepts[k].append(list(c[k]))
    return WordCorpus(name=f"concept_words_{split}", words=words, labels=torch.tensor(labels, dtype=torch.long),
                      concepts=concepts, meta={"split": split, "n": n, "seed": seed, "max_words": max_words,
                                               "n_sentiment": n_sent, "n_babi": n_babi})


# ------------------------------------------------------------------------------------- to tokens
def _word_table(corpus: WordCorpus, concept: str) -> Tensor:
    if concept not in corpus.concepts:
        raise ConceptLabelError(f"corpus {corpus.name!r} has no concept {concept!r}; it has "
                                f"{sorted(corpus.concepts)}")
    rows = corpus.concepts[concept]
    width = max((len(r) for r in rows), default=0) + 1  # a trailing -1 column for out-of-range indices
    table = torch.full((len(rows), width), -1, dtype=torch.int8)
    for i, r in enumerate(rows):
        if r:
            table[i, : len(r)] = torch.tensor(r, dtype=torch.int8)
    return table


def token_labels(corpus: WordCorpus, word_index: Tensor, concept: str) -> Tensor:
    """``(N, T) int8``: the concept label of the word each token comes from; -1 where ``word_index`` is -1."""
    word_index = torch.as_tensor(word_index, dtype=torch.long)
    if word_index.dim() != 2 or word_index.shape[0] != len(corpus):
        raise DataError(f"token_labels: word_index must be ({len(corpus)}, T) for corpus {corpus.name!r}, got "
                        f"{tuple(word_index.shape)}")
    table = _word_table(corpus, concept)
    idx = torch.where(word_index < 0, table.shape[1] - 1, word_index.clamp_max(table.shape[1] - 1))
    return torch.gather(table, 1, idx)


def token_labels_flat(corpus: WordCorpus, doc: Tensor, word_index: Tensor, concept: str) -> Tensor:
    """``(n_tokens,) int8`` labels of flattened tokens (an ActivationSet's ``doc`` and ``word_index``)."""
    table = _word_table(corpus, concept)
    doc = torch.as_tensor(doc, dtype=torch.long)
    word_index = torch.as_tensor(word_index, dtype=torch.long)
    idx = torch.where(word_index < 0, table.shape[1] - 1, word_index.clamp_max(table.shape[1] - 1))
    return table[doc, idx]


def require_two_classes(labels: Tensor, concept: str) -> Tensor:
    """The applicable labels (``labels >= 0``) as a bool mask; raises ConceptLabelError with one class or none."""
    labels = torch.as_tensor(labels)
    valid = labels >= 0
    classes = sorted(set(torch.unique(labels[valid]).tolist()))
    if len(classes) < 2:
        counts = {int(c): int((labels[valid] == c).sum()) for c in classes}
        raise ConceptLabelError(
            f"concept {concept!r} has {len(classes)} class(es) among its {int(valid.sum())} labelled tokens "
            f"(counts {counts}): a detector needs both positives and negatives. Use a corpus where the concept "
            f"applies (e.g. concept_words() for negation_scope/after_but/babi_*, review_words() for "
            f"review_sentiment) and more texts.")
    return valid
