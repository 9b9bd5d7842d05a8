"""Attention text classifiers (Jain & Wallace 2019), trained deterministically on the CPU and cached.

``AttentionClassifier`` is the family of models of "Attention is not Explanation": token embedding,
an encoder (``"bilstm"``, ``"cnn"`` or ``"average"``), an attention layer (``"additive"`` or
``"dot"``) over the encoder's hidden states, and a linear decoder on the attention-weighted sum of
the hidden states (concatenated with the query vector for question-answering tasks such as bAbI).

The model works on plain tensors — ``ids`` (B, L) padded with 0 and ``lengths`` (B,) — and knows
nothing of vocabularies or datasets. Every parameterized piece is an ``nn`` module with parameters
of its own (``nn.Embedding``, ``nn.LSTM``, ``nn.Conv1d``, ``nn.Linear``), so the parameter
randomization checks (``sanitycheck.checks.randomization``) can re-initialize them one by one.

Padding never matters: embeddings at padding positions are zeroed (even after the embedding matrix,
row 0 included, is randomized), the BiLSTM runs on packed sequences, and hidden states at padding
are zeroed. Adding padding to a sequence leaves its logits and attention unchanged.

For analyses, compute in float64 (``model.double()``): in float32 a saturated softmax makes rank
statistics of attention undefined for some instances (see ``REFERENCES.md``).

``train_text_model(spec, train, test)`` trains a ``TextTrainSpec`` like ``zoo.train_or_load``:
initialization under a forked, seeded RNG, seeded shuffling, Adam with cosine decay, and a cache at
``<cache>/models/text-<arch>-<key>.pt`` with a JSON sidecar. The key hashes the spec (including the
caller's ``data_key``) and the source of the model class and the training function.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import ConfigError, DataError
from ..seeding import derive_seed, generator
from ..provenance import content_key, source_text as _source  # one source-hash helper for every cache key

__all__ = [
    "ENCODERS",
    "ATTENTIONS",
    "AttentionClassifier",
    "TextTrainSpec",
    "TextData",
    "build_text_model",
    "text_checkpoint_path",
    "train_text_model",
    "tensor_checksum",
    "masked_softmax",
    "lengths_mask",
]

ENCODERS = ("bilstm", "cnn", "average")
ATTENTIONS = ("additive", "dot")

#: (ids, lengths, query_ids, query_lengths, labels); the query entries are None without a query.
TextData = Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Tensor]


# --------------------------------------------------------------------------- helpers


def lengths_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Boolean (B, max_len): True at the real tokens ``t < lengths[b]``."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dimension restricted to ``mask``; exactly 0 elsewhere."""
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).masked_fill(~mask, 0.0)


def _as_lengths(lengths: Any, ids: Tensor, what: str) -> Tensor:
    if lengths is None:
        # the position of the last non-padding token, plus one (0 is the padding id)
        nonzero = ids != 0
        pos = torch.arange(1, ids.shape[1] + 1, device=ids.device)[None, :]
        return (nonzero * pos).amax(dim=1) if ids.shape[1] > 0 else torch.zeros(ids.shape[0], dtype=torch.long)
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise DataError(f"{what} must be integers, got dtype {lengths.dtype}")
    lengths = lengths.to(device=ids.device, dtype=torch.long)
    if lengths.dim() != 1 or lengths.shape[0] != ids.shape[0]:
        raise DataError(f"{what} must have shape ({ids.shape[0]},) to match ids {tuple(ids.shape)}, "
                        f"got {tuple(lengths.shape)}")
    return lengths


def _dense_lengths(lengths: Any, x: Tensor) -> Tensor:
    """Lengths for a dense (B, L, ...) tensor: as given, or the full width L for every row when None."""
    if lengths is None:
        return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    return _as_lengths(lengths, x[..., 0], "lengths")


class _LearnedQuery(nn.Module):
    """The learned query vector of dot attention without a task query (its own layer, shape (1, H))."""

    def __init__(self, dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(1, dim).uniform_(-bound, bound))

    def forward(self, batch: int) -> Tensor:
        return self.weight.expand(batch, -1)


# --------------------------------------------------------------------------- the model


class AttentionClassifier(nn.Module):
    """Jain & Wallace's attention classifier: embedding -> encoder -> attention -> linear decoder.

    Args:
        vocab_size: number of token ids (0 is padding; ids must be < vocab_size).
        n_classes: number of output logits.
        encoder: ``"bilstm"`` (bidirectional ``nn.LSTM``, ``hidden`` per direction, hidden states of
            size 2·hidden), ``"cnn"`` (``nn.Conv1d`` kernel 3, padding 1, then ``nn.ReLU``; size
            hidden) or ``"average"`` (``nn.Linear`` projection then ``nn.Tanh``; size hidden).
        attention: ``"additive"`` — score = v·tanh(W h + b) (+ W_q q with a query) — or ``"dot"`` —
            score = h·q / sqrt(d), q the task query vector or a learned vector without a query.
        embed_dim, hidden: sizes.
        query: True for tasks with a query (bAbI): a query encoder of the same kind (own parameters,
            shared embedding) whose hidden states, averaged over the real query tokens, give the query
            vector; it enters the attention and is concatenated to the context for the decoder.

    Modules, in forward order: ``embedding``, ``encoder`` (+ ``encoder_activation``),
    [``query_encoder`` (+ ``query_encoder_activation``)], ``attention_proj`` /
    ``attention_query_proj`` / ``attention_v`` (additive) or ``attention_query`` (dot without a query),
    ``decoder``.

    Calling conventions — ``forward(ids, lengths, query_ids, query_lengths, attention, return_attention)``:

    * ``ids`` may be a tuple/list ``(ids, lengths[, query_ids, query_lengths])``, unpacked: this is
      how single-input callers (``parameter_layers``, the randomization checks) pass a batch;
    * ``lengths=None`` infers each length as the position of the last non-zero id (+1);
    * ``attention=`` (B, L) imposes that distribution instead of computing it; mass on padding
      positions multiplies zeroed hidden states and is lost (pass distributions over real tokens).
    """

    has_attention = True

    def __init__(
        self,
        vocab_size: int,
        n_classes: int,
        encoder: str = "bilstm",
        attention: str = "additive",
        embed_dim: int = 128,
        hidden: int = 64,
        query: bool = False,
    ):
        super().__init__()
        if encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder {encoder!r}; known: {', '.join(ENCODERS)}")
        if attention not in ATTENTIONS:
            raise ConfigError(f"unknown attention {attention!r}; known: {', '.join(ATTENTIONS)}")
        for name, value in (("vocab_size", vocab_size), ("n_classes", n_classes), ("embed_dim", embed_dim),
                            ("hidden", hidden)):
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"AttentionClassifier {name} must be a positive integer, got {value!r}")
        if vocab_size < 2:
            raise ConfigError(f"vocab_size must be >= 2 (id 0 is padding), got {vocab_size}")
        self.vocab_size = vocab_size
        self.n_classes = n_classes
        self.encoder_kind = encoder
        self.attention_kind = attention
        self.embed_dim = embed_dim
        self.hidden = hidden
        self.uses_query = bool(query)
        self.hidden_dim = 2 * hidden if encoder == "bilstm" else hidden

        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.encoder, self.encoder_activation = self._make_encoder()
        if self.uses_query:
            self.query_encoder, self.query_encoder_activation = self._make_encoder()
        H = self.hidden_dim
        if attention == "additive":
            self.attention_proj = nn.Linear(H, H)
            if self.uses_query:
                self.attention_query_proj = nn.Linear(H, H, bias=False)
            self.attention_activation = nn.Tanh()
            self.attention_v = nn.Linear(H, 1, bias=False)
        elif not self.uses_query:
            self.attention_query = _LearnedQuery(H)
        self.decoder = nn.Linear(H * (2 if self.uses_query else 1), n_classes)

    def _make_encoder(self) -> Tuple[nn.Module, nn.Module]:
        if self.encoder_kind == "bilstm":
            return nn.LSTM(self.embed_dim, self.hidden, batch_first=True, bidirectional=True), nn.Identity()
        if self.encoder_kind == "cnn":
            return nn.Conv1d(self.embed_dim, self.hidden, kernel_size=3, padding=1), nn.ReLU()
        return nn.Linear(self.embed_dim, self.hidden), nn.Tanh()

    def extra_repr(self) -> str:
        return (f"encoder={self.encoder_kind!r}, attention={self.attention_kind!r}, "
                f"query={self.uses_query}, hidden_dim={self.hidden_dim}")

    # ------------------------------------------------------------------ input checks

    def _check_ids(self, ids: Any, lengths: Any, what: str) -> Tuple[Tensor, Tensor]:
        if not isinstance(ids, Tensor):
            raise DataError(f"{what} must be a LongTensor (B, L) of token ids, got {type(ids).__name__}")
        if ids.dim() != 2:
            raise DataError(f"{what} must have shape (B, L), got {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
            raise DataError(f"{what} must be integer token ids, got dtype {ids.dtype}")
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise DataError(f"{what} must be in [0, {self.vocab_size}) (vocab_size={self.vocab_size}); got values "
                            f"in [{int(ids.min())}, {int(ids.max())}] — was the model built for this vocabulary?")
        lengths = self._check_lengths(_as_lengths(lengths, ids, what.replace("ids", "lengths")), ids.shape, what)
        return ids, lengths

    @staticmethod
    def _check_lengths(lengths: Tensor, shape: Sequence[int], what: str) -> Tensor:
        if lengths.dim() != 1 or lengths.shape[0] != shape[0]:
            raise DataError(f"lengths of {what} must have shape ({shape[0]},), got {tuple(lengths.shape)}")
        if lengths.numel():
            if int(lengths.min()) < 1:
                bad = int((lengths < 1).nonzero()[0, 0])
                raise DataError(f"empty sequence in {what}: row {bad} has length {int(lengths[bad])}; "
                                f"attention over zero tokens is undefined — drop empty instances")
            if int(lengths.max()) > shape[1]:
                raise DataError(f"lengths of {what} exceed the padded length {shape[1]}: max {int(lengths.max())}")
        return lengths

    def _check_query_args(self, query_ids: Any, query_lengths: Any) -> Optional[Tuple[Tensor, Tensor]]:
        if self.uses_query:
            if query_ids is None:
                raise DataError("this model was built with query=True: pass query_ids (and query_lengths)")
            return self._check_ids(query_ids, query_lengths, "query_ids")
        if query_ids is not None:
            raise DataError("this model has no query encoder (query=False) but query_ids were given")
        return None

    # ------------------------------------------------------------------ pieces

    def embed(self, ids: Tensor) -> Tensor:
        """Token embeddings (B, L, E) of ``ids`` (the input of ``forward_from_embeddings``)."""
        return self.embedding(ids)

    def _run_encoder(self, encoder: nn.Module, activation: nn.Module, emb: Tensor, lengths: Tensor) -> Tensor:
        mask = lengths_mask(lengths, emb.shape[1])
        emb = emb * mask.unsqueeze(-1).to(emb.dtype)  # padding contributes nothing, whatever row 0 holds
        if self.encoder_kind == "bilstm":
            packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = encoder(packed)
            hidden, _ = pad_packed_sequence(out, batch_first=True, total_length=emb.shape[1])
        elif self.encoder_kind == "cnn":
            hidden = activation(encoder(emb.transpose(1, 2))).transpose(1, 2)
        else:
            hidden = activation(encoder(emb))
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)

    def _encode_query(self, query_ids: Tensor, query_lengths: Tensor) -> Tensor:
        hq = self._run_encoder(self.query_encoder, self.query_encoder_activation, self.embed(query_ids), query_lengths)
        return hq.sum(dim=1) / query_lengths.to(hq.dtype).unsqueeze(-1)

    def encode_embeddings(
        self, emb: Tensor, lengths: Tensor, query_ids: Optional[Tensor] = None, query_lengths: Optional[Tensor] = None
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """``encode`` from token embeddings (B, L, E) instead of ids."""
        if not isinstance(emb, Tensor) or emb.dim() != 3 or emb.shape[-1] != self.embed_dim:
            raise DataError(f"embeddings must have shape (B, L, {self.embed_dim}), got "
                            f"{tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__}")
        lengths = self._check_lengths(_dense_lengths(lengths, emb), emb.shape, "embeddings")
        q = self._check_query_args(query_ids, query_lengths)
        hidden = self._run_encoder(self.encoder, self.encoder_activation, emb, lengths)
        query = self._encode_query(*q) if q is not None else None
        return hidden, query

    def encode(
        self, ids: Tensor, lengths: Any = None, query_ids: Optional[Tensor] = None, query_lengths: Any = None
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Hidden states (B, L, H), zero at padding, and the query vector (B, H) or None."""
        ids, lengths = self._check_ids(ids, lengths, "ids")
        return self.encode_embeddings(self.embed(ids), lengths, query_ids, query_lengths)

    def attend(self, hidden: Tensor, lengths: Any, query: Optional[Tensor] = None) -> Tensor:
        """Attention (B, L): a distribution over the real tokens, exactly 0 at padding."""
        lengths = self._check_lengths(_dense_lengths(lengths, hidden), hidden.shape, "hidden")
        if self.uses_query and query is None:
            raise DataError("this model was built with query=True: attend() needs the query vector")
        mask = lengths_mask(lengths, hidden.shape[1])
        if self.attention_kind == "additive":
            pre = self.attention_proj(hidden)
            if self.uses_query:
                pre = pre + self.attention_query_proj(query).unsqueeze(1)
            scores = self.attention_v(self.attention_activation(pre)).squeeze(-1)
        else:
            q = query if self.uses_query else self.attention_query(hidden.shape[0]).to(hidden.dtype)
            scores = torch.einsum("blh,bh->bl", hidden, q) / math.sqrt(self.hidden_dim)
        return masked_softmax(scores, mask)

    def decode(self, hidden: Tensor, attention: Tensor, query: Optional[Tensor] = None) -> Tensor:
        """Logits (B, C) from the attention-weighted sum of ``hidden`` (and the query vector)."""
        if not isinstance(attention, Tensor) or tuple(attention.shape) != tuple(hidden.shape[:2]):
            raise DataError(f"attention must have shape {tuple(hidden.shape[:2])} (B, L), got "
                            f"{tuple(attention.shape) if isinstance(attention, Tensor) else type(attention).__name__}")
        if self.uses_query and query is None:
            raise DataError("this model was built with query=True: decode() needs the query vector")
        context = torch.einsum("bl,blh->bh", attention.to(device=hidden.device, dtype=hidden.dtype), hidden)
        if self.uses_query:
            context = torch.cat([context, query], dim=-1)
        return self.decoder(context)

    # ------------------------------------------------------------------ forward

    def forward_from_embeddings(
        self,
        emb: Tensor,
        lengths: Any = None,
        query_ids: Optional[Tensor] = None,
        query_lengths: Any = None,
        attention: Optional[Tensor] = None,
        return_attention: bool = False,
    ):
        """``forward`` from token embeddings (B, L, E), e.g. ``model.embed(ids)``, for gradient explainers.

        ``lengths=None`` takes the full width L for every row (ids are not available to infer them).
        """
        hidden, query = self.encode_embeddings(emb, lengths, query_ids, query_lengths)
        lengths = _dense_lengths(lengths, emb)
        alpha = self.attend(hidden, lengths, query) if attention is None else attention
        logits = self.decode(hidden, alpha, query)
        return (logits, alpha) if return_attention else logits

    def forward(
        self,
        ids: Union[Tensor, Sequence[Any]],
        lengths: Any = None,
        query_ids: Optional[Tensor] = None,
        query_lengths: Any = None,
        attention: Optional[Tensor] = None,
        return_attention: bool = False,
    ):
        """Logits (B, C); with ``return_attention=True``, ``(logits, attention (B, L))``.

        ``ids`` may be a packed tuple/list ``(ids, lengths[, query_ids, query_lengths])``.
        """
        if isinstance(ids, (tuple, list)):
            if not 1 <= len(ids) <= 4:
                raise DataError(f"a packed input is (ids, lengths[, query_ids, query_lengths]); got {len(ids)} items")
            if lengths is not None or query_ids is not None or query_lengths is not None:
                raise DataError("pass either a packed (ids, lengths, ...) tuple or separate arguments, not both")
            ids, lengths, query_ids, query_lengths = (list(ids) + [None] * 3)[:4]
        ids, lengths = self._check_ids(ids, lengths, "ids")
        return self.forward_from_embeddings(self.embed(ids), lengths, query_ids, query_lengths,
                                            attention=attention, return_attention=return_attention)


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class TextTrainSpec:
    """Everything that determines a trained attention model, with ``data_key`` standing for the data.

    ``data_key`` is the caller's hash of the training data and vocabulary (``tensor_checksum`` helps);
    ``query`` says whether the task has a query (bAbI), which the training data must match.
    """

    arch: str
    encoder: str
    attention: str
    vocab_size: int
    n_classes: int
    epochs: int
    batch_size: int
    lr: float
    data_key: str
    embed_dim: int = 128
    hidden: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    query: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.arch, str) and self.arch and all(c.isalnum() or c in "-_." for c in self.arch)):
            raise ConfigError(f"TextTrainSpec.arch must be a non-empty name of [A-Za-z0-9._-], got {self.arch!r}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder {self.encoder!r}; known: {', '.join(ENCODERS)}")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"unknown attention {self.attention!r}; known: {', '.join(ATTENTIONS)}")
        for name in ("vocab_size", "n_classes", "epochs", "batch_size", "embed_dim", "hidden"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"TextTrainSpec.{name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"TextTrainSpec.lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"TextTrainSpec.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.data_key, str) and self.data_key):
            raise ConfigError("TextTrainSpec.data_key must be a non-empty string hashing the training data "
                              "and vocabulary (see tensor_checksum)")

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """First 16 hex digits of a sha256 over the fields (data_key included) and the code."""
        payload = {
            "spec": self.as_dict(),
            "model_source": [_source(AttentionClassifier), _source(_LearnedQuery), _source(masked_softmax)],
            "train_source": _source(_train_text),
        }
        return content_key(payload)




def tensor_checksum(*tensors: Optional[Tensor]) -> str:
    """sha256 (16 hex digits) of the shapes, dtypes and contents of ``tensors`` (None allowed)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none|")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- training


def _check_data(spec: TextTrainSpec, data: Sequence[Any], what: str) -> TextData:
    if not isinstance(data, (tuple, list)) or len(data) != 5:
        raise DataError(f"{what} must be (ids, lengths, query_ids, query_lengths, labels), "
                        f"got {type(data).__name__} of {len(data) if isinstance(data, (tuple, list)) else '?'} items")
    ids, lengths, q_ids, q_lengths, labels = data
    ids = torch.as_tensor(ids).long()
    lengths = torch.as_tensor(lengths).long()
    labels = torch.as_tensor(labels).long()
    if ids.dim() != 2 or lengths.shape != (ids.shape[0],) or labels.shape != (ids.shape[0],):
        raise DataError(f"{what}: ids (N, L), lengths (N,) and labels (N,) expected, got "
                        f"{tuple(ids.shape)}, {tuple(lengths.shape)}, {tuple(labels.shape)}")
    if ids.shape[0] == 0:
        raise DataError(f"{what} is empty")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= spec.n_classes):
        raise DataError(f"{what}: labels must be in [0, {spec.n_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    if spec.query != (q_ids is not None):
        raise DataError(f"{what}: spec.query={spec.query} but query_ids {'were' if q_ids is not None else 'were not'} given")
    if q_ids is not None:
        q_ids = torch.as_tensor(q_ids).long()
        q_lengths = torch.as_tensor(q_lengths).long() if q_lengths is not None else _as_lengths(None, q_ids, "q")
        if q_ids.dim() != 2 or q_ids.shape[0] != ids.shape[0] or q_lengths.shape != (ids.shape[0],):
            raise DataError(f"{what}: query_ids (N, Lq) and query_lengths (N,) must match N={ids.shape[0]}")
    return ids, lengths, q_ids, q_lengths, labels


def _batch(data: TextData, idx: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Tensor]:
    """The rows ``idx``, padding trimmed to the longest sequence of the batch (invariant by design)."""
    ids, lengths, q_ids, q_lengths, labels = data
    lb = lengths[idx]
    out_ids = ids[idx, : max(1, int(lb.max()))]
    if q_ids is not None:
        qlb = q_lengths[idx]
        return out_ids, lb, q_ids[idx, : max(1, int(qlb.max()))], qlb, labels[idx]
    return out_ids, lb, None, None, labels[idx]


@torch.no_grad()
def _accuracy(model: AttentionClassifier, data: TextData, batch: int = 500) -> float:
    was_training = model.training
    model.eval()
    n = data[0].shape[0]
    correct = 0
    for i in range(0, n, batch):
        ids, lb, q, ql, y = _batch(data, torch.arange(i, min(n, i + batch)))
        correct += int((model(ids, lb, q, ql).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(1, n)


def _train_text(
    model: AttentionClassifier,
    data: TextData,
    spec: TextTrainSpec,
    progress: bool,
    loss_fn: Optional[Callable[[AttentionClassifier, TextData, Tensor], Tensor]] = None,
) -> None:
    """Adam on cross-entropy, learning rate annealed to 0 along a cosine step by step (as ``zoo._train``).

    The shuffle order comes from a generator seeded by (seed, "shuffle", arch). ``loss_fn(model, batch, idx)``,
    when given, replaces the cross-entropy: ``batch`` is ``(ids, lengths, query_ids, query_lengths, labels)``
    trimmed to the longest sequence of the batch and ``idx`` the rows of ``data`` it holds (to look up
    per-instance targets such as imposed attention); it returns the scalar loss to minimize.
    """
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    cross_entropy = nn.CrossEntropyLoss()
    g = generator(spec.seed, "shuffle", spec.arch)
    n = data[0].shape[0]
    steps = math.ceil(n / spec.batch_size)
    total = spec.epochs * steps
    done = 0
    model.train()
    with tqdm(total=total, desc=f"train {spec.arch}", disable=not progress, leave=False, file=sys.stderr) as bar:
        for epoch in range(spec.epochs):
            order = torch.randperm(n, generator=g)
            for i in range(steps):
                idx = order[i * spec.batch_size : (i + 1) * spec.batch_size]
                batch = _batch(data, idx)
                ids, lb, q, ql, y = batch
                for group in opt.param_groups:
                    group["lr"] = 0.5 * spec.lr * (1.0 + math.cos(math.pi * done / total))
                done += 1
                opt.zero_grad(set_to_none=True)
                loss = cross_entropy(model(ids, lb, q, ql), y) if loss_fn is None else loss_fn(model, batch, idx)
                loss.backward()
                opt.step()
                bar.update(1)
                if i % 20 == 0:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    model.eval()


def build_text_model(spec: TextTrainSpec) -> AttentionClassifier:
    """An untrained model of ``spec``, initialized under a forked, seeded RNG (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(spec.seed, "init", spec.arch))
        return AttentionClassifier(spec.vocab_size, spec.n_classes, encoder=spec.encoder, attention=spec.attention,
                                   embed_dim=spec.embed_dim, hidden=spec.hidden, query=spec.query)


def text_checkpoint_path(spec: TextTrainSpec, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    from .training import checkpoint_file

    return checkpoint_file(f"text-{spec.arch}", spec.key(), cache_dir)


def train_text_model(
    spec: TextTrainSpec,
    train: Sequence[Any],
    test: Sequence[Any],
    *,
    cache_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
) -> AttentionClassifier:
    """The model trained by ``spec`` on ``train``: loaded from the cache, or trained (deterministically) and cached.

    ``train`` and ``test`` are ``(ids, lengths, query_ids, query_lengths, labels)``, the query entries None
    without a query. The cache file is ``<cache_dir>/models/text-<arch>-<key>.pt`` with a JSON sidecar
    (spec, key, accuracies, seconds). The key covers ``spec.data_key``, not the tensors themselves; the
    checkpoint records a checksum of the training tensors, and loading it with different ones raises
    ``ConfigError`` (the data_key does not identify the data). Training runs on the CPU in float32; the
    returned model is in eval mode, carries ``sanitycheck_spec`` and ``sanitycheck_info``, and
    ``model.double()`` gives a float64 copy of it for analyses.
    """
    train_data = _check_data(spec, train, "train")
    test_data = _check_data(spec, test, "test")
    for what, data in (("train", train_data), ("test", test_data)):
        for t, name in ((data[0], "ids"), (data[2], "query_ids")):
            if t is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= spec.vocab_size):
                raise DataError(f"{what} {name} must be in [0, {spec.vocab_size}) (spec.vocab_size), got "
                                f"[{int(t.min())}, {int(t.max())}]")
    key = spec.key()
    extra = {"n_test": int(test_data[0].shape[0]), "test_data_checksum": tensor_checksum(*test_data)}
    return load_or_train(spec, key, text_checkpoint_path(spec, cache_dir), train_data,
                         evaluate=lambda m: {"test_accuracy": _accuracy(m, test_data),
                                             "train_accuracy": _accuracy(m, train_data)},
                         progress=progress, extra=extra)


def load_or_train(spec: TextTrainSpec, key: str, path: Path, train: TextData, *,
                  evaluate: Callable[[AttentionClassifier], Dict[str, Any]], progress: bool = True,
                  loss_fn: Optional[Callable[..., Tensor]] = None, extra: Optional[Dict[str, Any]] = None
                  ) -> AttentionClassifier:
    """The model of ``spec`` cached at ``path`` under ``key``, or trained with ``_train_text(..., loss_fn)`` and saved.

    Seeded initialization (``build_text_model``), training under a forked RNG seeded by (seed, "train", arch),
    a checksum of the training tensors stored and checked on load (the key names the data only through
    ``spec.data_key``), a JSON sidecar; ``evaluate`` runs after training and must return JSON-safe values.
    Shared by ``train_text_model`` and the models Wiegreffe & Pinter's checks train; the pipeline itself is
    :func:`sanitycheck.models.training.load_or_train`.
    """
    from . import training

    checksum = tensor_checksum(*train)

    def fit(model: nn.Module) -> Dict[str, Any]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(spec.seed, "train", spec.arch))
            start = time.perf_counter()
            _train_text(model, train, spec, progress, loss_fn=loss_fn)
            seconds = time.perf_counter() - start
        model.eval()
        return {**(extra or {}), **evaluate(model), "train_seconds": round(seconds, 3),
                "n_train": int(train[0].shape[0]), "torch_version": str(torch.__version__),
                "train_data_checksum": checksum}

    return training.load_or_train(key, path, spec=spec, build=lambda: build_text_model(spec), train=fit,
                                  verify=training.same_training_data(checksum, spec.data_key))
