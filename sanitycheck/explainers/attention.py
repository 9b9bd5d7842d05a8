"""Token-importance explainers for attention text classifiers (Jain & Wallace 2019).

A :class:`TokenExplainer` maps ``(model, batch: TextBatch, target_classes (B,))`` to importances
``(B, L)``, one per token position, exactly 0 at padding (positions ``t >= lengths[b]``). The model
is an :class:`~sanitycheck.models.attention.AttentionClassifier` or anything with the same calling
conventions (``forward(ids, lengths, query_ids, query_lengths, attention=, return_attention=)``,
``embed``, ``forward_from_embeddings``, ``encode`` and ``attend``).

Conventions (as :mod:`sanitycheck.explainers.base`): the model must be in eval mode
(:class:`~sanitycheck.errors.ModelError` otherwise); the whole batch is explained at once (leave-one-out
and integrated gradients run their variants as chunked batches); no hooks are registered; the model
is never changed (gradients are taken with ``torch.autograd.grad`` with respect to inputs only, so
parameters' ``.grad`` is not touched). Importances have the dtype of the model's parameters: run
analyses on ``model.double()`` (a float32 softmax saturates, see ``REFERENCES.md``).

Definitions chosen:

* ``attention`` (:class:`AttentionWeights`): the model's attention distribution α.
* ``gradient`` (:class:`EmbeddingGradient`): Jain & Wallace's gradient w.r.t. the one-hot input.
  The logit is a function of the one-hot vector x_t through e_t = Eᵀx_t, so
  ∂y/∂x_t[w_t] = ⟨∂y/∂e_t, E[w_t]⟩ — the embedding gradient dotted with the token's own embedding
  row. We report its absolute value |⟨∂y/∂e_t, e_t⟩| (their code ranks magnitudes).
* ``gradient_x_input`` (:class:`EmbeddingGradientXInput`): the signed ⟨∂y/∂e_t, e_t⟩.
* ``leave_one_out`` (:class:`LeaveOneOut`): the output change when token t is deleted (the sequence
  shifted left, one shorter, as Jain & Wallace). ``measure="tvd"`` (default, J&W): the total variation
  distance ½·Σ_c |p(c|x) − p(c|x∖t)| of the softmax; ``measure="prob"``: the drop of the target-class
  probability p(y|x) − p(y|x∖t) (signed). A sequence of one token cannot lose it: its importance is 0.
* ``integrated_gradients`` (:class:`IntegratedGradientsEmbedding`): integrated gradients of the target
  logit along the straight line from all-zero embeddings (same lengths) to the token embeddings,
  Gauss–Legendre quadrature with ``n_steps`` nodes, summed over the embedding dimension per token
  (signed); the sum over tokens ≈ f(x) − f(0) (completeness). A task query (bAbI) is held fixed
  along the path: only the context tokens are attributed.
* ``attention_x_gradient`` (:class:`AttentionTimesGradient`): α_t · ∂y/∂α_t, the attention weight times
  the gradient of the target logit with respect to the attention weight itself (the attention passed
  to the model as an input, the hidden states fixed), signed. For a linear decoder this is
  α_t · ⟨w_y, h_t⟩ — the token's contribution to the logit through the attention-weighted context.

``target_classes`` are class indices; the explained output is the target class's logit (the
gradient methods) or the softmax (leave-one-out).
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AttributionError, ConfigError, DataError, NotApplicableError
from .base import check_eval_mode, class_source_hash

__all__ = [
    "TextBatch",
    "TokenExplainer",
    "AttentionWeights",
    "EmbeddingGradient",
    "EmbeddingGradientXInput",
    "LeaveOneOut",
    "IntegratedGradientsEmbedding",
    "AttentionTimesGradient",
    "RandomTokens",
    "TOKEN_EXPLAINERS",
]


class TextBatch(NamedTuple):
    """A padded batch of token ids (B, L) with lengths (B,), and the query (bAbI) or None."""

    ids: Tensor
    lengths: Tensor
    query_ids: Optional[Tensor] = None
    query_lengths: Optional[Tensor] = None


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _padding_mask(lengths: Tensor, width: int) -> Tensor:
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def _select(logits: Tensor, target: Tensor) -> Tensor:
    return logits.gather(1, target[:, None]).squeeze(1)


class TokenExplainer:
    """Base class: subclasses implement :meth:`attribute` ``(model, batch, target) -> (B, L)``."""

    #: registry-style name
    name: str = "token_explainer"
    #: True when the method reads the model's attention (NotApplicableError without ``has_attention``)
    needs_attention: bool = False
    #: True when the method differentiates through token embeddings (``embed``/``forward_from_embeddings``)
    needs_embeddings: bool = False
    #: False for controls whose importances ignore the model (recorded with results)
    requires_model: bool = True
    #: what the explanations are for (suites match on it)
    input_kind: str = "text"

    def attribute(self, model: nn.Module, batch: TextBatch, target: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def config(self) -> Dict[str, Any]:
        """Parameters that determine the importances (recorded with results)."""
        return {}

    def code_hash(self) -> str:
        return class_source_hash(type(self))

    def _check_model(self, model: nn.Module) -> None:
        check_eval_mode(model)
        if self.needs_attention and not getattr(model, "has_attention", False):
            raise NotApplicableError(f"{self.name}: {type(model).__name__} has no attention (has_attention is not set)")
        if self.needs_embeddings and not (hasattr(model, "embed") and hasattr(model, "forward_from_embeddings")):
            raise NotApplicableError(f"{self.name}: {type(model).__name__} has no embed()/forward_from_embeddings()")

    @staticmethod
    def _check_batch(model: nn.Module, batch: Any, target: Any) -> "tuple[TextBatch, Tensor]":
        if not isinstance(batch, TextBatch):
            if isinstance(batch, (tuple, list)) and 2 <= len(batch) <= 4:
                batch = TextBatch(*batch)
            else:
                raise DataError("batch must be a TextBatch(ids, lengths[, query_ids, query_lengths])")
        device = _model_device(model)
        ids = torch.as_tensor(batch.ids)
        if ids.dim() != 2 or ids.is_floating_point():
            raise DataError(f"batch.ids must be integer ids of shape (B, L), got {tuple(ids.shape)} {ids.dtype}")
        lengths = torch.as_tensor(batch.lengths)
        if lengths.is_floating_point() or lengths.shape != (ids.shape[0],):
            raise DataError(f"batch.lengths must be integers of shape ({ids.shape[0]},), got {tuple(lengths.shape)}")
        if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > ids.shape[1]):
            raise DataError(f"batch.lengths must be in [1, {ids.shape[1]}], got "
                            f"[{int(lengths.min())}, {int(lengths.max())}]")
        q, ql = batch.query_ids, batch.query_lengths
        if q is not None:
            q = torch.as_tensor(q).long().to(device)
            ql = torch.as_tensor(ql).long().to(device) if ql is not None else None
        batch = TextBatch(ids.long().to(device), lengths.long().to(device), q, ql)
        target = torch.as_tensor(target)
        if target.dim() == 0:
            target = target.expand(ids.shape[0])
        if target.is_floating_point() or target.shape != (ids.shape[0],):
            raise DataError(f"target_classes must be integer class indices of shape ({ids.shape[0]},), "
                            f"got {tuple(target.shape)} {target.dtype}")
        return batch, target.long().to(device)

    def __call__(self, model: nn.Module, batch: TextBatch, target_classes: Any) -> Tensor:
        self._check_model(model)
        batch, target = self._check_batch(model, batch, target_classes)
        B, L = batch.ids.shape
        if B == 0:
            return torch.zeros(0, L, dtype=_model_dtype(model), device=batch.ids.device)
        scores = self.attribute(model, batch, target)
        if tuple(scores.shape) != (B, L):
            raise AttributionError(f"{self.name}: importances have shape {tuple(scores.shape)}, expected {(B, L)}")
        scores = scores.detach().to(_model_dtype(model))
        scores = scores.masked_fill(~_padding_mask(batch.lengths, L), 0.0)
        if not torch.isfinite(scores).all():
            bad = (~torch.isfinite(scores)).any(1).nonzero().flatten().tolist()
            raise AttributionError(f"{self.name}: importances contain NaN or inf for samples {bad[:10]}")
        return scores

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({cfg})"


#: token explainers explain text models only. Set outside the class body, so that the class's source, and with
#: it every token explainer's published ``code_hash``, stays as it was.
TokenExplainer.modalities = ("text",)  # type: ignore[attr-defined]


class AttentionWeights(TokenExplainer):
    """The model's attention distribution over the tokens (``return_attention=True``)."""

    name = "attention"
    needs_attention = True

    def attribute(self, model: nn.Module, batch: TextBatch, target: Tensor) -> Tensor:
        with torch.no_grad():
            _, alpha = model(batch.ids, batch.lengths, batch.query_ids, batch.query_lengths, return_attention=True)
        return alpha


def _embedding_grad(model: nn.Module, batch: TextBatch, target: Tensor) -> "tuple[Tensor, Tensor]":
    """(∂ logit_target / ∂ embeddings, embeddings), both (B, L, E); parameters' .grad untouched."""
    with torch.no_grad():
        emb = model.embed(batch.ids)
    emb = emb.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model.forward_from_embeddings(emb, batch.lengths, batch.query_ids, batch.query_lengths)
        (grad,) = torch.autograd.grad(_select(logits, target).sum(), emb)
    return grad, emb.detach()


class EmbeddingGradientXInput(TokenExplainer):
    """Signed ⟨∂y/∂e_t, e_t⟩: the gradient of the target logit w.r.t. the one-hot input at the token."""

    name = "gradient_x_input"
    needs_embeddings = True

    def attribute(self, model: nn.Module, batch: TextBatch, target: Tensor) -> Tensor:
        grad, emb = _embedding_grad(model, batch, target)
        return (grad * emb).sum(-1)


class EmbeddingGradient(EmbeddingGradientXInput):
    """Jain & Wallace's gradient importance |⟨∂y/∂e_t, e_t⟩| (magnitude of the one-hot input gradient)."""

    name = "gradient"

    def attribute(self, model: nn.Module, batch: TextBatch, target: Tensor) -> Tensor:
        return super().attribute(model, batch, target).abs()


class LeaveOneOut(TokenExplainer):
    """Output change when each real token is deleted (shift left, one shorter), all variants batched.

    ``measure``: ``"tvd"`` (J&W: ½·Σ|p − p∖t| of the softmax) or ``"prob"`` (p_y − p_y∖t, signed).
    ``batch_size``: variants per forward pass.
    """

    name = "leave_one_out"
    MEASURES = ("tvd", "prob")

    def __init__(self, measure: str = "tvd", batch_size: int = 1024):
        if measure not in self.MEASURES:
            raise ConfigError(f"unknown leave-one-out measure {measure!r}; use one of {self.MEASURES}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.measure = measure
        self.batch_size = batch_size

    def config(self) -> Dict[str, Any]:
        return {"measure": self.measure}

    def attribute(self, model: nn.Module, batch: TextBatch, target: Tensor) -> Tensor:
        ids, lengths, q, ql = batch
        B, L = ids.shape
        dtype = _model_dtype(model)
        out = torch.zeros(B, L, dtype=dtype, device=ids.device)
        with torch.no_grad():
            p_full = torch.softmax(model(ids, lengths, q, ql).to(dtype), dim=-1)
            if L < 2:
                return out
            # one variant per (row, real position) of rows with at least 2 tokens
            valid = _padding_mask(lengths, L) & (lengths[:, None] >= 2)
            rows, pos = valid.nonzero(as_tuple=True)
            j = torch.arange(L - 1, device=ids.device)
            for start in range(0, rows.numel(), self.batch_size):
                r = rows[start:start + self.batch_size]
                t = pos[start:start + self.batch_size]
                src = j[None, :] + (j[None, :] >= t[:, None]).long()  # skip position t
                v_len = lengths[r] - 1
                v_ids = ids[r].gather(1, src).masked_fill(~_padding_mask(v_len, L - 1), 0)
                v_q = q[r] if q is not None else None
                v_ql = ql[r] if ql is not None else None
                p = torch.softmax(model(v_ids, v_len, v_q, v_ql).to(dtype), dim=-1)
                if self.measure == "tvd":
                    delta = 0.5 * (p_full[r] - p).abs().sum(-1)
                else:
                    tr = target[r]
                    delta = _select(p_full[r], tr) - _select(p, tr)
                out[r, t] = delta
        return out


def _gauss_legendre(n: int) -> "tuple[np.ndarray, np.ndarray]":
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2  # nodes and weights on [0, 1]


class IntegratedGradientsEmbedding(TokenExplainer):
    """Integrated gradients of the target logit over token embeddings (baseline: zero embeddings).

    Gauss–Legendre quadrature with ``n_steps`` nodes; attributions summed over the embedding dimension
    (signed). ``internal_batch_size``: interpolated sequences per forward/backward pass.
    """

    name = "integrated_gradients"
    needs_embeddings = True

    def __init__(self, n_steps: int = 50, internal_batch_size: int = 2048):
        if not (isinstance(n_steps, int) and n_steps >= 1):
            raise ConfigError(f"n_steps must be a positive integer, got {n_steps!r}")
        if not (isinstance(internal_batch_size, int) and internal_batch_size >= 1):
            raise ConfigError(f"internal_batch_size must be a positive integer, got {internal_batch_size!r}")
        self.n_steps = n_steps
        self.internal_batch_size = internal_batch_size

    def config(self) -> Dict[str, Any]:
        return {"n_steps": self.n_steps, "baseline": "zero_embedding", "method": "gausslegendre"}

    def attribute(self, model: nn.Module, batch: TextBatch, target: Tensor) -> Tensor:
        ids, lengths, q, ql = batch
        B = ids.shape[0]
        with torch.no_grad():
            emb = model.embed(ids).detach()
        nodes, weights = _gauss_legendre(self.n_steps)
        alphas = torch.as_tensor(nodes, dtype=emb.dtype, device=emb.device)
        w = torch.as_tensor(weights, dtype=emb.dtype, device=emb.device)
        total_grad = torch.zeros_like(emb)
        steps_per_chunk = max(1, self.internal_batch_size // max(1, B))
        for s0 in range(0, self.n_steps, steps_per_chunk):
            a = alphas[s0:s0 + steps_per_chunk]
            k = a.numel()
            x = (a[:, None, None, None] * emb[None]).reshape(k * B, *emb.shape[1:]).requires_grad_(True)
            rep = lambda t: None if t is None else t.repeat(k, *([1] * (t.dim() - 1)))  # noqa: E731
            with torch.enable_grad():
                logits = model.forward_from_embeddings(x, rep(lengths), rep(q), rep(ql))
                (g,) = torch.autograd.grad(_select(logits, target.repeat(k)).sum(), x)
            total_grad += (g.reshape(k, *emb.shape) * w[s0:s0 + k, None, None, None]).sum(0)
        return (total_grad * emb).sum(-1)


class AttentionTimesGradient(TokenExplainer):
    """α_t · ∂y/∂α_t: attention times the gradient of the target logit w.r.t. the attention (signed)."""

    name = "attention_x_gradient"
    needs_attention = True

    def attribute(self, model: nn.Module, batch: TextBatch, target: Tensor) -> Tensor:
        ids, lengths, q, ql = batch
        with torch.no_grad():
            _, alpha = model(ids, lengths, q, ql, return_attention=True)
        alpha = alpha.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(ids, lengths, q, ql, attention=alpha)
            (g,) = torch.autograd.grad(_select(logits, target).sum(), alpha)
        return alpha.detach() * g


class RandomTokens(TokenExplainer):
    """Control: uniform random importances in [0, 1), independent of the model.

    Each text's draws come from a generator keyed on (seed, its token ids), so the same text gets the
    same importances in every model state: a model-independent method that a randomization check must fail.
    """

    name = "random_tokens"
    requires_model = False

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def config(self) -> Dict[str, Any]:
        return {"seed": self.seed}

    def attribute(self, model: nn.Module, batch: TextBatch, target: Tensor) -> Tensor:
        from ..seeding import generator

        ids, lengths = batch.ids, batch.lengths
        out = torch.zeros(ids.shape, dtype=torch.float64)
        for b in range(ids.shape[0]):  # one small draw per text, keyed on its content (not a hot path)
            n = int(lengths[b])
            g = generator(self.seed, "random-tokens", *ids[b, :n].tolist())
            out[b, :n] = torch.rand(n, generator=g, dtype=torch.float64)
        return out.to(ids.device)


#: name -> class (registered in ``sanitycheck.registry.EXPLAINERS`` with modality "text")
TOKEN_EXPLAINERS = {cls.name: cls for cls in (AttentionWeights, EmbeddingGradient, EmbeddingGradientXInput,
                                               LeaveOneOut, IntegratedGradientsEmbedding, AttentionTimesGradient,
                                               RandomTokens)}
