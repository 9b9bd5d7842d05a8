"""Hooked activation sites of the models whose activations sparse autoencoders explain (issue 15, Deliver 1).

An :class:`ActivationSource` is one site of one model: it encodes words into tokens (with each token's word),
reads the site's activations through a forward hook (released by a context manager), splices a replacement
into the site and returns the per-text loss, and makes the randomized-model controls of Heap et al. (2025).

* :func:`review_lm_mlp`: the one-layer review LM's MLP activation (``mlp_act`` output, width 512); loss = mean
  next-token CE over the real tokens.
* :func:`minilm_residual`: all-MiniLM-L6-v2's residual stream after encoder layer ``layer`` (0-based; width
  384); loss = the CE of a logistic-regression sentiment head on the mean-pooled final hidden state, trained
  deterministically on Rotten Tomatoes and cached (:func:`minilm_sentiment_head`).
"""

from __future__ import annotations

import copy
import hashlib
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError, ModelError
from ..seeding import derive_seed

__all__ = ["ActivationSource", "LMSource", "MiniLMSource", "review_lm_mlp", "minilm_residual",
           "minilm_sentiment_head", "RANDOMIZE_MODES"]

RANDOMIZE_MODES = ("all", "keep_embeddings")
Replace = Optional[Callable[[Tensor], Tensor]]


def weights_hash(model: nn.Module, extra: str = "") -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes) in name order, plus ``extra``."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(extra.encode())
    return h.hexdigest()


class _StopForward(Exception):
    """Raised by a hook to end a forward pass at the hooked site (the rest is not needed)."""


class ActivationSource:
    """One hooked site of one model. Subclasses define ``encode``, ``_module``, ``_forward`` and ``_loss``."""

    name: str
    site: str
    d_in: int
    model: nn.Module

    def __init__(self, name: str, site: str, d_in: int, model: nn.Module):
        self.name, self.site, self.d_in, self.model = name, site, int(d_in), model.eval()
        self.randomization: Optional[Dict[str, Any]] = None
        self._hash: Optional[str] = None

    def __repr__(self) -> str:
        rnd = "" if self.randomization is None else f", randomized={self.randomization}"
        return f"{type(self).__name__}(name={self.name!r}, site={self.site!r}, d_in={self.d_in}{rnd})"

    # ---- subclass API
    def encode(self, words: List[List[str]], max_len: int) -> Tuple[Tensor, Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _module(self) -> nn.Module:  # pragma: no cover - the hooked module
        raise NotImplementedError

    def _forward(self, ids: Tensor, mask: Tensor) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _loss(self, out: Any, ids: Tensor, mask: Tensor, labels: Optional[Tensor]) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def _randomize(self, model: nn.Module, mode: str, generator: torch.Generator) -> None:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def _get(output: Any) -> Tensor:
        return output[0] if isinstance(output, tuple) else output

    @staticmethod
    def _put(output: Any, value: Tensor) -> Any:
        return (value,) + tuple(output[1:]) if isinstance(output, tuple) else value

    # ---- hooks
    @contextmanager
    def hooked(self, replace: Replace = None, store: Optional[List[Tensor]] = None,
               stop: bool = False) -> Iterator[None]:
        """Within the block, the site's output is appended to ``store`` and/or replaced by ``replace(output)``;
        ``stop=True`` ends the forward pass at the site (raises :class:`_StopForward`: the layers after the
        site are not computed)."""
        d_in, name = self.d_in, self.name

        def hook(module, inputs, output):
            act = self._get(output)
            if store is not None:
                store.append(act)
            if stop:
                raise _StopForward
            if replace is None:
                return None
            new = replace(act)
            if not isinstance(new, Tensor) or new.shape != act.shape:
                raise ModelError(f"{name}: replace must return a tensor of the activation's shape "
                                 f"{tuple(act.shape)} (d_in={d_in}), got "
                                 f"{tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__}")
            return self._put(output, new.to(act.dtype))

        handle = self._module().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def activations(self, ids: Tensor, mask: Tensor) -> Tensor:
        """``(B, T, d_in)`` float32 activations of the site (no grad); the forward pass stops at the site."""
        store: List[Tensor] = []
        dev = self._device()
        try:
            with self.hooked(store=store, stop=True):
                self._forward(ids.to(dev), mask.to(dev))
        except _StopForward:
            pass
        if not store:
            raise ModelError(f"{self.name}: the hooked site {self.site} was not reached in the forward pass")
        act = store[0].float()
        if act.shape[-1] != self.d_in:
            raise ModelError(f"{self.name}: site {self.site} gave width {act.shape[-1]}, expected {self.d_in}")
        return act

    @torch.no_grad()
    def loss_with(self, ids: Tensor, mask: Tensor, labels: Optional[Tensor] = None, replace: Replace = None) -> Tensor:
        """Per-text loss ``(B,)`` float64, clean (``replace=None``) or with ``replace(act)`` spliced into the site."""
        dev = self._device()
        ids, mask = ids.to(dev), mask.to(dev)
        with self.hooked(replace=replace):
            out = self._forward(ids, mask)
        return self._loss(out, ids, mask, None if labels is None else torch.as_tensor(labels).to(dev)).double().cpu()

    def randomized(self, mode: str, seed: int) -> "ActivationSource":
        """A copy whose weights are re-initialized by the architecture's own init (seeded): every weight
        (``mode="all"``) or all but the token and position embeddings (``"keep_embeddings"``)."""
        if mode not in RANDOMIZE_MODES:
            raise ConfigError(f"randomization mode must be one of {RANDOMIZE_MODES}, got {mode!r}")
        other = copy.copy(self)
        other.model = copy.deepcopy(self.model)
        g = torch.Generator().manual_seed(derive_seed(seed, "randomize", self.name, mode))
        self._randomize(other.model, mode, g)
        other.model.eval()
        other.randomization = {"mode": mode, "seed": int(seed)}
        other._hash = None
        return other

    def state_hash(self) -> str:
        """sha256 of the model's weights and the site: a cache-key part."""
        if self._hash is None:
            self._hash = weights_hash(self.model, f"|{type(self).__name__}|{self.name}|{self.site}|{self.d_in}")
        return self._hash


# ------------------------------------------------------------------------------------------ the LM
class LMSource(ActivationSource):
    """The review LM's ``mlp_act`` output; tokens: ``<bos>`` then one token per word."""

    def __init__(self, model: nn.Module, tokenizer: Any, name: str = "review_lm.mlp"):
        super().__init__(name, "mlp_act", model.d_mlp, model)
        self.tokenizer = tokenizer

    def encode(self, words: List[List[str]], max_len: int) -> Tuple[Tensor, Tensor, Tensor]:
        max_len = min(int(max_len), self.model.max_len)
        ids, mask = self.tokenizer.encode(words, max_len)
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        word_index = torch.where(mask & (pos > 0), pos - 1, torch.full_like(ids, -1))
        mask = mask & (pos > 0)  # real tokens: the words (the <bos> is a special)
        return ids, mask, word_index

    def _module(self) -> nn.Module:
        return self.model.mlp_act

    def _forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.model(ids)

    def _loss(self, out: Tensor, ids: Tensor, mask: Tensor, labels: Optional[Tensor]) -> Tensor:
        from .review_lm import sequence_ce

        real = mask.clone()
        real[:, 0] = True  # <bos> is a real input; targets are positions 1.. that are words
        s, n = sequence_ce(out, ids, real)
        return s.double() / n.clamp_min(1).double()

    def _randomize(self, model: nn.Module, mode: str, generator: torch.Generator) -> None:
        from .review_lm import init_weights

        keep = {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[0] in ("embed", "pos_embed")}
        init_weights(model, generator)
        if mode == "keep_embeddings":
            model.load_state_dict(keep, strict=False)


def review_lm_mlp(seed: int = 0, **kw: Any) -> LMSource:
    """The review LM's MLP activations (``mlp_act``, width 512); ``kw`` goes to :func:`review_lm`."""
    from .review_lm import review_lm

    model = review_lm(seed, **kw)
    return LMSource(model, model.tokenizer)


# ------------------------------------------------------------------------------------------ MiniLM
class _MiniLMWithHead(nn.Module):
    def __init__(self, bert: nn.Module, head: nn.Linear):
        super().__init__()
        self.bert, self.head = bert, head

    def pooled(self, ids: Tensor) -> Tensor:
        att = ids != 0
        h = self.bert(input_ids=ids, attention_mask=att.long()).last_hidden_state
        w = att.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp_min(1)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.pooled(ids))


def _minilm_encode(tok: Any, words: List[List[str]], max_len: int) -> Tuple[Tensor, Tensor, Tensor]:
    """``[CLS] pieces [SEP]`` padded with 0; pieces truncated to ``max_len - 2``; word_index -1 at specials/pad."""
    if not isinstance(max_len, int) or max_len < 3:
        raise ConfigError(f"max_len must be an integer >= 3 ([CLS], a piece, [SEP]), got {max_len!r}")
    rows = [list(w) for w in words]
    if not rows:
        z = torch.zeros(0, max_len, dtype=torch.long)
        return z, z.bool(), z
    pieces, wids = tok._pieces(rows)
    keep = max_len - 2
    lens = [min(len(p), keep) for p in pieces]
    T = max(lens) + 2
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    word_index = torch.full((len(rows), T), -1, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, (p, w, k) in enumerate(zip(pieces, wids, lens)):
        ids[i, 0] = tok.cls_id
        ids[i, 1:k + 1] = torch.tensor(p[:k], dtype=torch.long)
        ids[i, k + 1] = tok.sep_id
        word_index[i, 1:k + 1] = torch.tensor(w[:k], dtype=torch.long)
        mask[i, 1:k + 1] = True
    return ids, mask, word_index


class MiniLMSource(ActivationSource):
    """all-MiniLM-L6-v2's hidden state after encoder layer ``layer``; tokens ``[CLS]`` word pieces ``[SEP]``."""

    def __init__(self, model: _MiniLMWithHead, tokenizer: Any, layer: int, info: Optional[Dict[str, Any]] = None):
        n_layers = len(model.bert.encoder.layer)
        if not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise ConfigError(f"minilm_residual: layer must be an integer in [0, {n_layers}), got {layer!r}")
        super().__init__(f"minilm.layer{layer}", f"bert.encoder.layer.{layer} (output hidden state)",
                         model.bert.config.hidden_size, model)
        self.tokenizer, self.layer = tokenizer, layer
        self.head_info = dict(info or {})

    def encode(self, words: List[List[str]], max_len: int) -> Tuple[Tensor, Tensor, Tensor]:
        return _minilm_encode(self.tokenizer, words, max_len)

    def _module(self) -> nn.Module:
        return self.model.bert.encoder.layer[self.layer]

    def _forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.model(ids)

    def _loss(self, out: Tensor, ids: Tensor, mask: Tensor, labels: Optional[Tensor]) -> Tensor:
        if labels is None:
            raise DataError(f"{self.name}: loss_with needs the texts' sentiment labels (0/1); got labels=None")
        if (labels < 0).any():
            raise DataError(f"{self.name}: the downstream task needs labels 0/1 for every text; got "
                            f"{int((labels < 0).sum())} label(s) -1 (use review_words(), not concept_words())")
        return F.cross_entropy(out.double(), labels.long(), reduction="none")

    def _randomize(self, model: nn.Module, mode: str, generator: torch.Generator) -> None:
        from .review_lm import init_weights

        bert = model.bert
        keep = copy.deepcopy(bert.embeddings.state_dict())
        init_weights(bert, generator)  # BERT's init: N(0, 0.02), biases 0, LayerNorm 1/0
        if mode == "keep_embeddings":
            bert.embeddings.load_state_dict(keep)


def _pooled_features(model: _MiniLMWithHead, tok: Any, words: List[List[str]], max_len: int,
                     batch: int = 64) -> Tensor:
    order = sorted(range(len(words)), key=lambda i: len(words[i]))  # similar lengths share a batch
    feats = torch.zeros(len(words), model.bert.config.hidden_size, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            ids, _, _ = _minilm_encode(tok, [words[i] for i in idx], max_len)
            feats[idx] = model.pooled(ids).double()
    return feats


def _fit_logistic(x: Tensor, y: Tensor, l2: float = 1e-3, iters: int = 200) -> Tuple[Tensor, Tensor]:
    """Deterministic L2-regularised logistic regression (full-batch L-BFGS, float64) on standardised features."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")
    yf = y.double()

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, yf) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w.detach() / sd)
    b_raw = b.detach() - (w_raw * mu).sum()
    return w_raw, b_raw


def minilm_sentiment_head(bert: nn.Module, tok: Any, *, n_train: int = 2000, n_test: int = 500, max_len: int = 64,
                          cache_dir: Optional[Union[str, Path]] = None, progress: bool = True
                          ) -> Tuple[nn.Linear, Dict[str, Any]]:
    """A 2-class linear head (logistic regression) on MiniLM's mean-pooled final hidden state, trained on the
    first ``n_train`` Rotten Tomatoes training snippets; cached under ``<cache>/models/minilm-sentiment-head-<key>.pt``
    keyed by the weights id, the data checksums and this code. Returns ``(head, info)`` with clean test accuracy."""
    from ..data.text import load_movie_reviews
    from ..io import atomic_torch_save, atomic_write_json, cache_dir as default_cache_dir
    from ..provenance import content_key, source_text
    from .transformer import minilm_weights_id

    from ..data.text import text_subset

    def draw(split: str, n: int):  # a seeded random subset: the file is ordered by label
        ds = load_movie_reviews("rotten_tomatoes", split)
        g = torch.Generator().manual_seed(derive_seed(0, "minilm_head", split))
        return text_subset(ds, torch.randperm(len(ds), generator=g)[:min(n, len(ds))].tolist())

    train, test = draw("train", n_train), draw("test", n_test)
    key = content_key({"weights": minilm_weights_id(), "train": train.checksum, "test": test.checksum, "n": [n_train, n_test],
                       "max_len": max_len, "code": [source_text(f) for f in (_fit_logistic, _pooled_features,
                                                                             _minilm_encode, _MiniLMWithHead)]})
    path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "models" / \
        f"minilm-sentiment-head-{key}.pt"
    head = nn.Linear(bert.config.hidden_size, 2)
    if path.is_file():
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if ckpt.get("key") == key:
                head.load_state_dict(ckpt["state_dict"])
                return head, {**ckpt["info"], "from_cache": True, "cache_key": key}
        except Exception:  # noqa: BLE001 - unreadable: refit
            pass
    start = time.perf_counter()
    probe = _MiniLMWithHead(bert, head)
    xtr = _pooled_features(probe, tok, train.texts, max_len)
    w, b = _fit_logistic(xtr, train.labels)
    with torch.no_grad():  # two logits [0, z]: softmax CE equals the logistic loss
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1] = w.float()
        head.bias[1] = b.float()
        xte = _pooled_features(probe, tok, test.texts, max_len)
        acc_test = float(((xte @ w + b > 0).long() == test.labels).double().mean())
        acc_train = float(((xtr @ w + b > 0).long() == train.labels).double().mean())
    info = {"task": "rotten_tomatoes sentiment, logistic regression on mean-pooled final hidden state",
            "n_train": len(train), "n_test": len(test), "train_accuracy": round(acc_train, 4),
            "test_accuracy": round(acc_test, 4), "fit_seconds": round(time.perf_counter() - start, 2),
            "train_data_checksum": train.checksum, "test_data_checksum": test.checksum,
            "train_positive_share": round(float(train.labels.double().mean()), 4)}
    atomic_torch_save(path, {"key": key, "state_dict": head.state_dict(), "info": info})
    atomic_write_json(path.with_suffix(".json"), {"key": key, **info})
    return head, {**info, "from_cache": False, "cache_key": key}


def minilm_residual(layer: int, *, path: Optional[Union[str, Path]] = None,
                    cache_dir: Optional[Union[str, Path]] = None, progress: bool = True, **head_kw: Any) -> MiniLMSource:
    """all-MiniLM-L6-v2's residual stream after encoder layer ``layer`` (0-based; 2 = middle, 5 = late), with
    the cached sentiment head for ``loss_with``. Raises WeightsUnavailableError when the weights are absent."""
    from .transformer import MiniLMTokenizer, load_minilm

    bert, hf_tok = load_minilm(path)
    tok = MiniLMTokenizer(hf_tok)
    head, info = minilm_sentiment_head(bert, tok, cache_dir=cache_dir, progress=progress, **head_kw)
    return MiniLMSource(_MiniLMWithHead(bert, head).eval(), tok, layer, info)
