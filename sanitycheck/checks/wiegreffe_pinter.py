"""Wiegreffe & Pinter 2019, "Attention is not not Explanation" (EMNLP): the experiments that train models.

Library functions for the attention text classifiers of ``sanitycheck.models.attention``; a suite wires them
into results. Data are ``TextData`` tuples ``(ids, lengths, query_ids, query_lengths, labels)`` (``text_data``
builds one from a ``TextDataset`` and a ``Vocabulary``).

* **Uniform-attention baseline** (W&P §3.1): ``uniform_outputs`` imposes the uniform distribution over each
  instance's real tokens through ``model(..., attention=...)``, i.e. the decoder applied to the mean of the
  real hidden states. If a model keeps its accuracy under it, its attention is not needed for the task and
  nothing about it can be concluded (see ``REFERENCES.md``: run the diagnostic only on tasks uniform
  averaging cannot solve, and say so).
* **Variance across seeds** (§3.2): ``train_seed_variants`` retrains the same spec with other seeds;
  ``attention_divergence`` gives per-instance JSD/TVD of attention and TVD of outputs between two models.
* **Diagnostic MLP** (§4, Table 3): ``train_diagnostic`` trains an ``AttentionClassifier`` with the Average
  encoder (per-token projection + tanh: no context) and the same attention kind, whose attention is either
  uniform (UNIFORM), learned (TRAINED MLP) or frozen to a guide model's attention on each instance (BASE LSTM
  with the trained BiLSTM as guide, ADVERSARY with an adversarial model). The guide's weights help the MLP
  only if they carry information about the task the MLP cannot find on its own: the expected ordering is
  UNIFORM < TRAINED MLP ≤ BASE LSTM, and a guide worse than TRAINED MLP is evidence against it.
* **Model-consistent adversary** (§5): ``train_adversary`` trains a fresh model of the base's architecture on
  the training inputs with, per batch, ``mean_b[ TVD(ŷ_adv, ŷ_base) − λ·KL(α_adv ‖ α_base) ]`` (the base
  frozen), so it predicts like the base with attention as different as λ buys; ``lambda_sweep`` gives the
  TVD–JSD trade-off over λ (W&P Figure 4).

Conventions: output distributions are the softmax of the logits (a single logit: [1 − σ, σ]); TVD and JSD
(nats, ≤ ln 2) are ``sanitycheck.checks.adversarial_attention.tvd``/``jsd``. Analyses run in float64 on
double *copies* of the models (the models passed are never mutated); training runs in float32 like
``train_text_model``, through the same loop (``_train_text`` with a ``loss_fn``), deterministic (seeded
initialization and shuffling, global RNG untouched) and cached under ``<cache>/models/`` with a JSON
sidecar. A guide or base model enters a cache key through a checksum of its architecture and weights (not
its name), so retraining it invalidates what was trained from it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError, NotApplicableError
from ..explainers.base import check_eval_mode
from ..models.attention import (
    AttentionClassifier,
    TextData,
    TextTrainSpec,
    _batch,
    _check_data,
    _source,
    _train_text,
    lengths_mask,
    tensor_checksum,
    train_text_model,
)
from ..seeding import generator
from ..stats import Summary, _check_args
from .adversarial_attention import _safe_log, jsd, tvd

__all__ = [
    "GUIDES",
    "KL_EPS",
    "ModelOutputs",
    "DiagnosticResult",
    "LambdaSweep",
    "text_data",
    "model_outputs",
    "uniform_attention",
    "uniform_outputs",
    "f1_score",
    "f1_resamples",
    "bootstrap_f1",
    "train_seed_variants",
    "attention_divergence",
    "model_checksum",
    "diagnostic_spec",
    "train_diagnostic",
    "kl_attention",
    "adversary_spec",
    "train_adversary",
    "lambda_sweep",
]

#: The diagnostic's guides: uniform weights, the MLP's own learned attention, a guide model's attention imposed.
GUIDES = ("uniform", "trained", "imposed")

#: Floor of the reference distribution inside ``log`` in ``kl_attention`` (bounds KL by −log KL_EPS ≈ 23).
KL_EPS = 1e-10

_CHUNK_ELEMENTS = 1 << 22  # bootstrap indices per chunk, as sanitycheck.stats


# --------------------------------------------------------------------------- data and models


def text_data(dataset: Any, vocab: Any, max_len: Optional[int] = None, truncate: bool = False) -> TextData:
    """``(ids, lengths, query_ids, query_lengths, labels)`` of a ``TextDataset`` encoded with ``vocab``.

    Texts (and queries, if any) go through ``vocab.encode``; the query entries are None without queries.
    A spec's ``data_key`` can be ``tensor_checksum(*text_data(train, vocab))``.
    """
    if len(dataset) == 0:
        raise DataError(f"dataset {getattr(dataset, 'name', '?')!r} is empty")
    ids, lengths = vocab.encode(dataset.texts, max_len=max_len, truncate=truncate)
    q_ids = q_lengths = None
    if getattr(dataset, "queries", None) is not None:
        q_ids, q_lengths = vocab.encode(dataset.queries)
    return ids, lengths, q_ids, q_lengths, torch.as_tensor(dataset.labels).long()


def _check_model(model: Any, what: str = "model") -> nn.Module:
    """An attention model in eval mode (NotApplicableError / ModelError otherwise)."""
    if not isinstance(model, nn.Module) or not getattr(model, "has_attention", False):
        raise NotApplicableError(f"{what} ({type(model).__name__}) has no attention (has_attention is not true): "
                                 f"Wiegreffe & Pinter's experiments need an attention model such as "
                                 f"AttentionClassifier")
    check_eval_mode(model)
    return model


def _float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy in eval mode; the model passed is left as it is."""
    return copy.deepcopy(model).double().eval()


def _check_inputs(data: Any, what: str = "data") -> TextData:
    """Shapes of a TextData tuple (labels may be None: zeros stand in); empty data raises DataError."""
    if not isinstance(data, (tuple, list)) or len(data) != 5:
        raise DataError(f"{what} must be (ids, lengths, query_ids, query_lengths, labels), got "
                        f"{type(data).__name__}{' of %d items' % len(data) if isinstance(data, (tuple, list)) else ''}")
    ids, lengths, q_ids, q_lengths, labels = data
    ids = torch.as_tensor(ids)
    if ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise DataError(f"{what}: ids must be integer token ids (N, L), got {ids.dtype} {tuple(ids.shape)}")
    ids = ids.long()
    if ids.shape[0] == 0:
        raise DataError(f"{what} is empty (N = 0)")
    lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() or lengths.shape != (ids.shape[0],):
        raise DataError(f"{what}: lengths must be integers of shape ({ids.shape[0]},), got "
                        f"{lengths.dtype} {tuple(lengths.shape)}")
    lengths = lengths.long()
    if int(lengths.min()) < 1 or int(lengths.max()) > ids.shape[1]:
        raise DataError(f"{what}: lengths must lie in [1, {ids.shape[1]}], got [{int(lengths.min())}, "
                        f"{int(lengths.max())}] — drop empty instances")
    if labels is None:
        labels = torch.zeros(ids.shape[0], dtype=torch.long)
    labels = torch.as_tensor(labels).long()
    if labels.shape != (ids.shape[0],):
        raise DataError(f"{what}: labels must have shape ({ids.shape[0]},), got {tuple(labels.shape)}")
    if q_ids is not None:
        q_ids = torch.as_tensor(q_ids).long()
        if q_lengths is None:
            raise DataError(f"{what}: query_ids given without query_lengths")
        q_lengths = torch.as_tensor(q_lengths).long()
    return ids, lengths, q_ids, q_lengths, labels


def _checked_pair(spec: TextTrainSpec, train: Any, test: Any) -> Tuple[TextData, TextData]:
    """train/test validated against ``spec`` as ``train_text_model`` does."""
    out = []
    for what, data in (("train", train), ("test", test)):
        data = _check_data(spec, data, what)
        for t, name in ((data[0], "ids"), (data[2], "query_ids")):
            if t is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= spec.vocab_size):
                raise DataError(f"{what} {name} must be in [0, {spec.vocab_size}) (spec.vocab_size), got "
                                f"[{int(t.min())}, {int(t.max())}]")
        out.append(data)
    return out[0], out[1]


def _probabilities(logits: Tensor) -> Tensor:
    """Softmax of the logits; one logit (sigmoid output) gives [1 − σ, σ] (as ``output_distribution``)."""
    if logits.shape[-1] == 1:
        pos = torch.sigmoid(logits)
        return torch.cat([1.0 - pos, pos], dim=-1)
    return torch.softmax(logits, dim=-1)


@dataclass
class ModelOutputs:
    """Outputs of a model on N instances, float64: logits (N, C), probabilities (N, C'), predictions (N,)
    (argmax of the probabilities) and the attention used (N, L), 0 at padding (imposed or the model's own)."""

    logits: Tensor
    probabilities: Tensor
    predictions: Tensor
    attention: Tensor

    def accuracy(self, labels: Tensor) -> float:
        return float((self.predictions == torch.as_tensor(labels).long()).double().mean())


def _outputs64(model64: nn.Module, data: TextData, attention: Optional[Tensor], batch_size: int) -> ModelOutputs:
    """Forward of a float64 model over ``data`` in batches, padding trimmed per batch (invariant by design)."""
    ids = data[0]
    n, width = ids.shape
    if attention is not None:
        attention = torch.as_tensor(attention)
        if tuple(attention.shape) != (n, width):
            raise DataError(f"imposed attention must have shape {(n, width)} (N, L), got {tuple(attention.shape)}")
        attention = attention.to(torch.float64)
    logits, atts = [], []
    with torch.no_grad():
        for s in range(0, n, batch_size):
            idx = torch.arange(s, min(n, s + batch_size))
            b_ids, lb, q, ql, _ = _batch(data, idx)
            imposed = attention[idx, : b_ids.shape[1]] if attention is not None else None
            lo, att = model64(b_ids, lb, q, ql, attention=imposed, return_attention=True)
            logits.append(lo.to(torch.float64))
            full = torch.zeros(len(idx), width, dtype=torch.float64)
            full[:, : att.shape[1]] = att.to(torch.float64)
            atts.append(full)
    logits_t = torch.cat(logits)
    probs = _probabilities(logits_t)
    return ModelOutputs(logits_t, probs, probs.argmax(dim=1), torch.cat(atts))


def _check_batch_size(batch_size: Any) -> int:
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def model_outputs(model: nn.Module, data: Any, attention: Optional[Tensor] = None, *,
                  batch_size: int = 500) -> ModelOutputs:
    """``ModelOutputs`` of ``model`` on ``data`` (float64 copy), its own attention or ``attention`` (N, L) imposed."""
    model = _check_model(model)
    data = _check_inputs(data)
    return _outputs64(_float64_copy(model), data, attention, _check_batch_size(batch_size))


def uniform_attention(lengths: Any, width: int) -> Tensor:
    """(B, width) float64: 1/length at the real tokens ``t < lengths[b]``, exactly 0 at padding."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise DataError(f"lengths must be a 1-D integer tensor, got {lengths.dtype} {tuple(lengths.shape)}")
    if not (isinstance(width, int) and not isinstance(width, bool) and width >= 1):
        raise DataError(f"width must be a positive integer, got {width!r}")
    lengths = lengths.long()
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > width):
        raise DataError(f"lengths must lie in [1, {width}], got [{int(lengths.min())}, {int(lengths.max())}]: "
                        f"attention over zero tokens is undefined")
    mask = lengths_mask(lengths, width)
    return mask.to(torch.float64) / lengths.to(torch.float64).clamp(min=1)[:, None]


def uniform_outputs(model: nn.Module, data: Any, *, batch_size: int = 500) -> ModelOutputs:
    """Outputs of ``model`` with uniform attention over each instance's real tokens imposed (W&P §3.1).

    Equal to the decoder applied to the mean of the real hidden states (and the query vector, if any).
    Compare ``.accuracy(labels)`` / ``f1_score`` with the model's own: a task uniform weights solve says
    nothing about attention.
    """
    model = _check_model(model)
    data = _check_inputs(data)
    return _outputs64(_float64_copy(model), data, uniform_attention(data[1], data[0].shape[1]),
                      _check_batch_size(batch_size))


# --------------------------------------------------------------------------- F1 and its bootstrap


def _check_predictions(pred: Any, labels: Any, n_classes: Any) -> Tuple[Tensor, Tensor, int]:
    if not (isinstance(n_classes, int) and not isinstance(n_classes, bool) and n_classes >= 2):
        raise ConfigError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    pred = torch.as_tensor(pred)
    labels = torch.as_tensor(labels)
    for name, t in (("pred", pred), ("labels", labels)):
        if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise DataError(f"{name} must be a 1-D tensor of integer class ids, got {t.dtype} {tuple(t.shape)}")
    if pred.shape != labels.shape:
        raise DataError(f"pred {tuple(pred.shape)} and labels {tuple(labels.shape)} must have the same shape")
    if pred.numel() == 0:
        raise DataError("F1 of no instances is undefined: pred and labels are empty")
    pred, labels = pred.long().cpu(), labels.long().cpu()
    for name, t in (("pred", pred), ("labels", labels)):
        if int(t.min()) < 0 or int(t.max()) >= n_classes:
            raise DataError(f"{name} must lie in [0, {n_classes}), got [{int(t.min())}, {int(t.max())}]")
    return pred, labels, n_classes


def _indicators(pred: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """(n, 3C) float64: [true positive of c, predicted c, labelled c] for every class c."""
    classes = torch.arange(n_classes)
    p = pred[:, None] == classes[None, :]
    y = labels[:, None] == classes[None, :]
    return torch.cat([p & y, p, y], dim=1).to(torch.float64)


def _f1_from_counts(counts: Tensor, n_classes: int) -> Tensor:
    """F1 per row of (…, 3C) counts: positive class 1 if binary, else macro over the classes that occur.

    NaN where undefined: binary with no positive predicted nor present; never for macro (n ≥ 1).
    """
    tp, npred, ntrue = counts.split(n_classes, dim=-1)
    denom = npred + ntrue
    f1 = 2.0 * tp / denom.clamp(min=1.0)
    if n_classes == 2:
        return torch.where(denom[..., 1] > 0, f1[..., 1], torch.full_like(f1[..., 1], float("nan")))
    present = denom > 0
    return (f1 * present).sum(-1) / present.sum(-1).clamp(min=1)


def f1_score(pred: Any, labels: Any, n_classes: int) -> float:
    """F1 of the positive class (label 1) for ``n_classes == 2`` (W&P's metric), macro-F1 otherwise.

    Binary: ``2 TP / (2 TP + FP + FN)``; NaN (undefined) when no instance is labelled or predicted positive
    (scikit-learn would return 0 with a warning). Macro: the mean of the per-class F1 over the classes that
    occur in ``labels`` or ``pred`` (scikit-learn's ``average="macro"`` with ``labels=None``).
    """
    pred, labels, n_classes = _check_predictions(pred, labels, n_classes)
    counts = _indicators(pred, labels, n_classes).sum(0)
    return float(_f1_from_counts(counts, n_classes))


def f1_resamples(pred: Any, labels: Any, n_classes: int, *, seed_parts: tuple,
                 n_resamples: int = 2000) -> Tensor:
    """(n_resamples,) float64 F1 of bootstrap resamples of the instances (NaN where undefined).

    Resample r draws n instances with replacement: the rows of ``randint(0, n, (n_resamples, n))`` from
    ``generator(*seed_parts)`` (drawn in chunks of whole resamples when n_resamples·n > 2**22, the chunk size
    depending on n only). All resamples are scored together: per-resample counts are a count matrix times
    per-instance indicators (no Python loop over resamples).
    """
    pred, labels, n_classes = _check_predictions(pred, labels, n_classes)
    _check_args(n_resamples, 0.95, seed_parts)
    n_resamples = int(n_resamples)
    ind = _indicators(pred, labels, n_classes)
    n = ind.shape[0]
    g = generator(*seed_parts)
    out = torch.empty(n_resamples, dtype=torch.float64)
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, step):
        r = min(step, n_resamples - start)
        idx = torch.randint(0, n, (r, n), generator=g)
        weights = torch.zeros(r, n, dtype=torch.float64)
        weights.scatter_add_(1, idx, torch.ones(r, n, dtype=torch.float64))
        out[start:start + r] = _f1_from_counts(weights @ ind, n_classes)
    return out


def bootstrap_f1(pred: Any, labels: Any, n_classes: int, *, seed_parts: tuple, n_resamples: int = 2000,
                 confidence: float = 0.95) -> Summary:
    """F1 (``f1_score``) on the full sample with a percentile-bootstrap interval over instances.

    The interval is the ``(1 ∓ confidence)/2`` quantiles (linear interpolation, as ``numpy.quantile``) of the
    defined resample F1s of ``f1_resamples`` (deterministic in ``seed_parts``). Undefined F1 (binary: no
    positive labelled nor predicted) is handled, not turned into a number:

    * full sample undefined: ``Summary(None, None, None, n=0, n_undefined=N)``;
    * otherwise ``Summary(F1, low, high, n=N instances, n_undefined=number of resamples whose F1 was
      undefined)``; those resamples are left out of the interval (they are rare unless positives are; if
      every resample is undefined the interval is None).
    """
    pred, labels, n_classes = _check_predictions(pred, labels, n_classes)
    _check_args(n_resamples, confidence, seed_parts)
    n = int(pred.shape[0])
    full = f1_score(pred, labels, n_classes)
    if math.isnan(full):
        return Summary(None, None, None, 0, n)
    values = f1_resamples(pred, labels, n_classes, seed_parts=seed_parts, n_resamples=n_resamples)
    defined = values[~torch.isnan(values)]
    n_undefined = int(values.numel() - defined.numel())
    if defined.numel() == 0:
        return Summary(full, None, None, n, n_undefined)
    q = torch.tensor([(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0], dtype=torch.float64)
    low, high = torch.quantile(defined, q).tolist()
    return Summary(full, float(low), float(high), n, n_undefined)


# --------------------------------------------------------------------------- seeds and divergences


def train_seed_variants(
    spec: TextTrainSpec,
    train: Any,
    test: Any,
    seeds: Sequence[int],
    *,
    cache_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
) -> List[AttentionClassifier]:
    """``spec`` retrained with each of ``seeds`` (``dataclasses.replace(spec, seed=s)``), cached by
    ``train_text_model``; one model per seed, in order. The seeds change initialization and shuffling."""
    if not isinstance(spec, TextTrainSpec):
        raise ConfigError(f"spec must be a TextTrainSpec, got {type(spec).__name__}")
    seeds = list(seeds) if isinstance(seeds, (list, tuple, range)) else seeds
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    for s in seeds:
        if not (isinstance(s, int) and not isinstance(s, bool)):
            raise ConfigError(f"seeds must be integers, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    return [train_text_model(dataclasses.replace(spec, seed=s), train, test, cache_dir=cache_dir, progress=progress)
            for s in seeds]


def attention_divergence(model_a: nn.Module, model_b: nn.Module, data: Any, *,
                         batch_size: int = 500) -> Dict[str, Tensor]:
    """Per-instance divergences between two models on ``data``, float64 (copies; the models are not mutated).

    Returns (N,) float64 tensors: ``attention_jsd`` (JSD in nats, ≤ ln 2) and ``attention_tvd`` between the
    attention distributions over the real tokens, and ``output_tvd`` between the output distributions.
    """
    model_a = _check_model(model_a, "model_a")
    model_b = _check_model(model_b, "model_b")
    data = _check_inputs(data)
    batch_size = _check_batch_size(batch_size)
    a = _outputs64(_float64_copy(model_a), data, None, batch_size)
    b = a if model_b is model_a else _outputs64(_float64_copy(model_b), data, None, batch_size)
    if a.probabilities.shape != b.probabilities.shape:
        raise DataError(f"the models have different output sizes: {a.probabilities.shape[1]} and "
                        f"{b.probabilities.shape[1]} classes")
    mask = lengths_mask(data[1], data[0].shape[1])
    return {
        "attention_jsd": jsd(a.attention, b.attention, mask),
        "attention_tvd": tvd(a.attention * mask, b.attention * mask),
        "output_tvd": tvd(a.probabilities, b.probabilities),
    }


def model_checksum(model: nn.Module) -> str:
    """16 hex digits identifying a model's architecture and weights (floating tensors compared as float32,
    so a float64 copy of a float32 model has the same checksum)."""
    h = hashlib.sha256(f"{type(model).__qualname__}|{model.extra_repr()}|".encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu()
        h.update(name.encode() + b"|")
        h.update(tensor_checksum(t.float() if t.is_floating_point() else t).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- cached training


def _checkpoint(spec: TextTrainSpec, key: str, cache_dir: Optional[Union[str, Path]]) -> Path:
    from ..models.training import checkpoint_file

    return checkpoint_file(f"text-{spec.arch}", key, cache_dir)


def _key(payload: Dict[str, Any]) -> str:
    from ..provenance import content_key

    return content_key(payload)


def _train_cached(
    spec: TextTrainSpec,
    key: str,
    train: TextData,
    loss_fn: Optional[Callable[..., Tensor]],
    evaluate: Callable[[AttentionClassifier], Dict[str, Any]],
    cache_dir: Optional[Union[str, Path]],
    progress: bool,
    extra: Dict[str, Any],
) -> AttentionClassifier:
    """Load ``<cache>/models/text-<arch>-<key>.pt`` or train with ``_train_text(..., loss_fn)`` and save it
    (:func:`sanitycheck.models.attention.load_or_train`, as ``train_text_model``)."""
    from ..models.attention import load_or_train

    return load_or_train(spec, key, _checkpoint(spec, key, cache_dir), train, evaluate=evaluate, progress=progress,
                         loss_fn=loss_fn, extra=extra)


def _check_compatible(model: nn.Module, spec: TextTrainSpec, what: str, architecture: bool) -> None:
    """The model reads the spec's data: same vocabulary size and query use (and architecture if asked)."""
    fields = {"vocab_size": "vocab_size", "uses_query": "query"}
    if architecture:
        fields.update({"encoder_kind": "encoder", "attention_kind": "attention", "n_classes": "n_classes",
                       "embed_dim": "embed_dim", "hidden": "hidden"})
    for attr, name in fields.items():
        if hasattr(model, attr) and getattr(model, attr) != getattr(spec, name):
            raise ConfigError(f"{what} has {attr}={getattr(model, attr)!r} but spec.{name}={getattr(spec, name)!r}: "
                              f"pass the spec {what} was trained with")


def _finite(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


# --------------------------------------------------------------------------- diagnostic MLP (W&P §4)


@dataclass
class DiagnosticResult:
    """``train_diagnostic`` output.

    model: the diagnostic ``AttentionClassifier`` (Average encoder), eval mode, float32.
    guide: "uniform", "trained" or "imposed"; guide_model: the model whose attention is imposed (or None).
    test: ``ModelOutputs`` on the test data under the guide (float64); test_labels; accuracy; f1 (positive-class
    F1 for binary tasks, macro otherwise; NaN if undefined). ``predict(data)`` scores other data the same way.
    """

    model: AttentionClassifier
    guide: str
    guide_model: Optional[nn.Module]
    test: ModelOutputs
    test_labels: Tensor
    accuracy: float
    f1: float
    info: Dict[str, Any] = field(default_factory=dict)

    def guide_attention(self, data: Any, *, batch_size: int = 500) -> Optional[Tensor]:
        """(N, L) float64 attention the guide imposes on ``data``; None for "trained" (the MLP's own)."""
        data = _check_inputs(data)
        return _guide_attention(self.guide, self.guide_model, data, batch_size)

    def predict(self, data: Any, *, batch_size: int = 500) -> ModelOutputs:
        """``ModelOutputs`` of the diagnostic on ``data`` under its guide (float64 copy)."""
        data = _check_inputs(data)
        att = _guide_attention(self.guide, self.guide_model, data, batch_size)
        return _outputs64(_float64_copy(_check_model(self.model)), data, att, _check_batch_size(batch_size))


def _guide_attention(guide: str, guide_model: Optional[nn.Module], data: TextData, batch_size: int) -> Optional[Tensor]:
    if guide == "uniform":
        return uniform_attention(data[1], data[0].shape[1])
    if guide == "imposed":
        return _outputs64(_float64_copy(_check_model(guide_model, "guide_model")), data, None, batch_size).attention
    return None


def diagnostic_spec(spec: TextTrainSpec, guide: str) -> TextTrainSpec:
    """The diagnostic's spec: ``spec`` with the Average encoder and arch ``<arch>.diag-<guide>`` (other
    hyperparameters, attention kind and seed kept)."""
    if guide not in GUIDES:
        raise ConfigError(f"unknown guide {guide!r}; known: {', '.join(GUIDES)}")
    return dataclasses.replace(spec, arch=f"{spec.arch}.diag-{guide}", encoder="average")


def _imposed_loss(attention: Tensor) -> Callable[..., Tensor]:
    """Cross-entropy with ``attention[idx]`` (N, L) imposed on the batch (trimmed to its width)."""
    ce = nn.CrossEntropyLoss()

    def loss(model: nn.Module, batch: TextData, idx: Tensor) -> Tensor:
        ids, lb, q, ql, y = batch
        return ce(model(ids, lb, q, ql, attention=attention[idx, : ids.shape[1]]), y)

    return loss


def train_diagnostic(
    guide: str,
    spec: TextTrainSpec,
    train: Any,
    test: Any,
    *,
    guide_model: Optional[nn.Module] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
) -> DiagnosticResult:
    """Wiegreffe & Pinter's diagnostic MLP (§4, Table 3) under ``guide``, trained (or loaded) and scored on ``test``.

    The model is ``diagnostic_spec(spec, guide)``: an ``AttentionClassifier`` with the Average encoder (per
    token projection + tanh, no context) and ``spec``'s attention kind and hyperparameters, trained with
    cross-entropy through ``_train_text``. Guides:

    * ``"uniform"``: uniform weights over the real tokens imposed (``attention=``) in training and at test;
    * ``"trained"``: the MLP learns its own attention (TRAINED MLP);
    * ``"imposed"``: ``guide_model``'s attention on each instance, computed once (float64, frozen) and imposed
      in training and at test — BASE LSTM with the trained BiLSTM, ADVERSARY with ``train_adversary``'s model.

    The cache key covers the diagnostic spec (its data_key, the model and training code), the guide, the
    guide model's ``model_checksum`` and the source of this function and its loss.
    """
    if guide not in GUIDES:
        raise ConfigError(f"unknown guide {guide!r}; known: {', '.join(GUIDES)}")
    if not isinstance(spec, TextTrainSpec):
        raise ConfigError(f"spec must be a TextTrainSpec, got {type(spec).__name__}")
    if guide == "imposed":
        if guide_model is None:
            raise ConfigError('guide="imposed" needs guide_model (the trained BiLSTM for BASE LSTM, the adversary '
                              'for ADVERSARY)')
        _check_model(guide_model, "guide_model")
        _check_compatible(guide_model, spec, "guide_model", architecture=False)
    elif guide_model is not None:
        raise ConfigError(f'guide={guide!r} takes no guide_model (only guide="imposed" does)')
    dspec = diagnostic_spec(spec, guide)
    train_data, test_data = _checked_pair(dspec, train, test)
    guide_key = model_checksum(guide_model) if guide_model is not None else None
    key = _key({"kind": "wiegreffe-pinter-diagnostic", "spec_key": dspec.key(), "guide": guide,
                "guide_model": guide_key, "source": [_source(train_diagnostic), _source(_imposed_loss),
                                                     _source(_train_text)]})
    if guide == "trained":
        loss_fn = None
    else:
        train_att = _guide_attention(guide, guide_model, train_data, 500).to(torch.float32)
        loss_fn = _imposed_loss(train_att)
    test_att = _guide_attention(guide, guide_model, test_data, 500)
    labels = test_data[4]

    def evaluate(model: AttentionClassifier) -> Dict[str, Any]:
        out = _outputs64(_float64_copy(model), test_data, test_att, 500)
        return {"test_accuracy": out.accuracy(labels),
                "test_f1": _finite(f1_score(out.predictions, labels, out.probabilities.shape[1]))}

    model = _train_cached(dspec, key, train_data, loss_fn, evaluate, cache_dir, progress,
                          {"guide": guide, "guide_model_checksum": guide_key})
    out = _outputs64(_float64_copy(model), test_data, test_att, 500)
    f1 = f1_score(out.predictions, labels, out.probabilities.shape[1])
    return DiagnosticResult(model=model, guide=guide, guide_model=guide_model, test=out, test_labels=labels,
                            accuracy=out.accuracy(labels), f1=f1, info=model.sanitycheck_info)


# --------------------------------------------------------------------------- model-consistent adversary (W&P §5)


def kl_attention(p: Tensor, q: Tensor, mask: Optional[Tensor] = None, *, eps: float = KL_EPS) -> Tensor:
    """KL(p ‖ q) over the last dimension, batched: Σ p·(log p − log max(q, eps)) over ``mask`` (True: real token).

    Terms with p = 0 count 0 (no 0·log 0 = NaN, finite gradients); q is floored at ``eps``, so zeros of q
    (padding, underflow) give a large but finite KL, at most −log eps ≈ 23 for the default. In p's dtype.
    """
    log_q = torch.log(q.to(p.dtype).clamp(min=eps))
    terms = p * (_safe_log(p) - log_q)
    if mask is not None:
        terms = terms.masked_fill(~mask.to(torch.bool), 0.0)
    return terms.sum(dim=-1)


def adversary_spec(spec: TextTrainSpec) -> TextTrainSpec:
    """The adversary's spec: ``spec`` (the base's) with arch ``<arch>.adversary``, hence its own initialization
    and shuffling seeds (derived from the arch name), the same for every λ."""
    return dataclasses.replace(spec, arch=f"{spec.arch}.adversary")


def _adversary_loss(base_probs: Tensor, base_attention: Tensor, lam: float) -> Callable[..., Tensor]:
    """mean over the batch of TVD(ŷ_adv, ŷ_base) − λ·KL(α_adv ‖ α_base), KL over the real tokens."""

    def loss(model: nn.Module, batch: TextData, idx: Tensor) -> Tensor:
        ids, lb, q, ql, _ = batch
        logits, att = model(ids, lb, q, ql, return_attention=True)
        out_tvd = 0.5 * (_probabilities(logits) - base_probs[idx]).abs().sum(-1)
        if lam == 0.0:
            return out_tvd.mean()
        kl = kl_attention(att, base_attention[idx, : ids.shape[1]], lengths_mask(lb, ids.shape[1]))
        return (out_tvd - lam * kl).mean()

    return loss


def _check_lambda(lam: Any) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ConfigError(f"λ (lam) must be a finite number >= 0, got {lam!r}")
    return float(lam)


def train_adversary(
    base_model: nn.Module,
    spec: TextTrainSpec,
    train: Any,
    test: Any,
    lam: float,
    *,
    cache_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
) -> AttentionClassifier:
    """W&P's model-consistent adversary (§5) of ``base_model`` (trained with ``spec``), trained or loaded.

    A fresh model of ``adversary_spec(spec)`` (the base's architecture and hyperparameters, its own seeds)
    trained on the training inputs (labels unused) with the batch mean of
    ``TVD(ŷ_adv, ŷ_base) − λ·KL(α_adv ‖ α_base)``: the base is frozen (its output distributions and attention
    on the training data are computed once, float64, no grad, then used as float32 targets); KL runs over the
    real tokens with ``kl_attention`` (base attention floored at ``KL_EPS``). λ = 0 gives a model that
    imitates the base's outputs with whatever attention it learns. The KL term (up to ≈ 23) quickly outweighs
    the TVD (≤ 1), and the TVD's gradient vanishes once the adversary's outputs saturate: on the synthetic
    sentiment task (BiLSTM 128/64, 3 epochs) λ ≤ 1e-4 kept the outputs (mean TVD ≤ 0.03) while λ ≥ 1e-3 mostly
    gave a near-constant predictor (TVD ≈ 0.47, not monotone in λ). Sweep small λ and report the accuracy.

    The cache key covers the adversary spec, λ, the base's ``model_checksum`` and the loss's source. The
    model's ``sanitycheck_info`` records ``lambda``, ``test_accuracy`` (vs the labels), ``test_agreement``
    (same prediction as the base), ``mean_test_output_tvd``, ``mean_test_attention_jsd`` and
    ``mean_test_attention_kl`` vs the base (float64), and ``train_seconds``.
    """
    lam = _check_lambda(lam)
    base_model = _check_model(base_model, "base_model")
    if not isinstance(spec, TextTrainSpec):
        raise ConfigError(f"spec must be a TextTrainSpec, got {type(spec).__name__}")
    _check_compatible(base_model, spec, "base_model", architecture=True)
    aspec = adversary_spec(spec)
    train_data, test_data = _checked_pair(aspec, train, test)
    base_key = model_checksum(base_model)
    key = _key({"kind": "wiegreffe-pinter-adversary", "spec_key": aspec.key(), "lambda": repr(lam),
                "base_model": base_key, "kl_eps": KL_EPS,
                "source": [_source(train_adversary), _source(_adversary_loss), _source(kl_attention),
                           _source(_train_text)]})
    base64 = _float64_copy(base_model)
    base_train = _outputs64(base64, train_data, None, 500)
    loss_fn = _adversary_loss(base_train.probabilities.to(torch.float32), base_train.attention.to(torch.float32), lam)
    mask = lengths_mask(test_data[1], test_data[0].shape[1])

    def evaluate(model: AttentionClassifier) -> Dict[str, Any]:
        base_test = _outputs64(base64, test_data, None, 500)
        adv = _outputs64(_float64_copy(model), test_data, None, 500)
        return {
            "test_accuracy": adv.accuracy(test_data[4]),
            "test_agreement": float((adv.predictions == base_test.predictions).double().mean()),
            "mean_test_output_tvd": float(tvd(adv.probabilities, base_test.probabilities).mean()),
            "mean_test_attention_jsd": float(jsd(adv.attention, base_test.attention, mask).mean()),
            "mean_test_attention_kl": float(kl_attention(adv.attention, base_test.attention, mask).mean()),
        }

    return _train_cached(aspec, key, train_data, loss_fn, evaluate, cache_dir, progress,
                         {"lambda": lam, "base_model_checksum": base_key})


@dataclass
class LambdaSweep:
    """``lambda_sweep`` output: per λ (rows, in the order given) and test instance (columns), float64.

    output_tvd (K, N): TVD(ŷ_adv, ŷ_base); attention_jsd (K, N): JSD(α_adv, α_base) in nats;
    test_accuracy: per λ; adversaries: the models. ``means()`` gives one row per λ for a table or plot.
    """

    lambdas: List[float]
    output_tvd: Tensor
    attention_jsd: Tensor
    test_accuracy: List[float]
    adversaries: List[AttentionClassifier]

    def means(self) -> List[Dict[str, float]]:
        return [{"lambda": lam, "mean_output_tvd": float(t.mean()), "mean_attention_jsd": float(j.mean()),
                 "test_accuracy": acc}
                for lam, t, j, acc in zip(self.lambdas, self.output_tvd, self.attention_jsd, self.test_accuracy)]


def lambda_sweep(
    base_model: nn.Module,
    spec: TextTrainSpec,
    train: Any,
    test: Any,
    lambdas: Sequence[float],
    *,
    cache_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
    batch_size: int = 500,
) -> LambdaSweep:
    """One ``train_adversary`` per λ and its per-instance test TVD(outputs) / JSD(attention) vs the base
    (``attention_divergence``): the data of W&P's TVD–JSD trade-off plot."""
    lambdas = list(lambdas) if isinstance(lambdas, (list, tuple)) else lambdas
    if not isinstance(lambdas, list) or not lambdas:
        raise ConfigError(f"lambdas must be a non-empty list of numbers >= 0, got {lambdas!r}")
    lambdas = [_check_lambda(lam) for lam in lambdas]
    if len(set(lambdas)) != len(lambdas):
        raise ConfigError(f"lambdas must be distinct, got {lambdas}")
    base_model = _check_model(base_model, "base_model")
    test_data = _check_inputs(test, "test")
    tvds, jsds, accs, models = [], [], [], []
    for lam in lambdas:
        adv = train_adversary(base_model, spec, train, test, lam, cache_dir=cache_dir, progress=progress)
        div = attention_divergence(adv, base_model, test_data, batch_size=batch_size)
        tvds.append(div["output_tvd"])
        jsds.append(div["attention_jsd"])
        accs.append(float(adv.sanitycheck_info["test_accuracy"]))
        models.append(adv)
    return LambdaSweep(lambdas, torch.stack(tvds), torch.stack(jsds), accs, models)
