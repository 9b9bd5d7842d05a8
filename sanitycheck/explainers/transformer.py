"""Token explainers specific to transformers: raw self-attention, attention rollout, gradient-weighted relevance.

They read a model's per-layer self-attention probabilities through ``model.self_attentions(ids, lengths,
query_ids, query_lengths, requires_grad=...)`` (see :class:`~sanitycheck.models.transformer.
MiniLMAttentionClassifier`), which returns a :class:`~sanitycheck.models.transformer.SelfAttentions`:
``attentions`` (per layer, first to last, (B, heads, T, T) over the whole sequence ``[CLS] text [SEP]
(query [SEP])``, rows = queries, columns = keys), ``text_positions`` / ``text_mask`` (B, L) locating the
text pieces in T, and the ``logits`` and head ``pooling`` attention of the same pass. Models without
``self_attentions`` raise :class:`~sanitycheck.errors.NotApplicableError`.

Conventions are those of :class:`~sanitycheck.explainers.attention.TokenExplainer`: importances (B, L)
over the text pieces, exactly 0 at padding, in the model's dtype; the whole batch in one pass; no hooks;
the model is never changed (gradients via ``torch.autograd.grad`` w.r.t. the attention tensors only).

Definitions chosen:

* ``self_attention`` (:class:`SelfAttentionWeights`): the attention of layer ``layer`` (default: the last)
  read from a query row — the ``[CLS]`` row by default (BERT's summary position) — at the text pieces'
  columns, for one head (``head=int``) or averaged over heads (``head=None``). The mass on ``[CLS]``,
  ``[SEP]`` and the query is left out and the rest is *not* renormalized.
* ``attention_rollout`` (:class:`AttentionRollout`, Abnar & Zuidema 2020, "Quantifying Attention Flow in
  Transformers"): Â_l = (1 − r)·mean_h A_l + r·I (r = ``residual``, ½ in the paper, accounting for the
  residual connection), rows renormalized, rolled out as R = Â_L ⋯ Â_1; the importances are a row of R.
* ``chefer_relevance`` (:class:`GradientWeightedAttention`, Chefer, Gur & Wolf 2021, "Generic
  Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", eq. 5–6):
  R starts at the identity, and for each layer from first to last R ← R + Ā_l·R with
  Ā_l = mean_h (∇A_l ⊙ A_l)⁺, ∇A_l the gradient of the target class logit w.r.t. that layer's attention
  probabilities (the positive part taken per head, before averaging).

Readout (``readout=``): ``"cls"`` (default) takes the ``[CLS]`` row, the convention of both papers for
BERT/ViT classifiers. Our attention-pooling head does not read ``[CLS]``: it pools the text pieces' final
states with weights α, so ``"pooling"`` — the α-weighted sum of the text pieces' rows, Σ_i α_i R[i, :] —
follows the path the prediction actually takes. Either way the columns of the text pieces are returned.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from .attention import TextBatch, TokenExplainer, _select
from .attention_flow import attention_rollout, chefer_relevance  # the one attention-flow implementation (BERT and ViT)

__all__ = [
    "SelfAttentionWeights",
    "AttentionRollout",
    "GradientWeightedAttention",
    "attention_rollout",
    "chefer_relevance",
    "TRANSFORMER_EXPLAINERS",
]

READOUTS = ("cls", "pooling")


class _SelfAttentionExplainer(TokenExplainer):
    """Shared parts: the model check and the readout of (B, T, T) matrices to (B, L) text importances."""

    needs_attention = True

    def __init__(self, readout: str = "cls"):
        if readout not in READOUTS:
            raise ConfigError(f"unknown readout {readout!r}; use one of {READOUTS}")
        self.readout = readout

    def config(self) -> Dict[str, Any]:
        return {"readout": self.readout}

    def _check_model(self, model: nn.Module) -> None:
        super()._check_model(model)
        if not callable(getattr(model, "self_attentions", None)):
            raise NotApplicableError(f"{self.name}: {type(model).__name__} exposes no self_attentions() "
                                     f"(per-layer transformer self-attention); it applies to transformer "
                                     f"classifiers such as MiniLMAttentionClassifier")

    @staticmethod
    def _run(model: nn.Module, batch: TextBatch, requires_grad: bool = False):
        return model.self_attentions(batch.ids, batch.lengths, batch.query_ids, batch.query_lengths,
                                     requires_grad=requires_grad)

    def _read(self, matrix: Tensor, out: Any) -> Tensor:
        """Rows of ``matrix`` (B, T, T) by the readout, at the text pieces' columns: (B, L)."""
        if self.readout == "cls":
            rows = matrix[:, 0, :]
        else:
            B, T, _ = matrix.shape
            text_rows = matrix.gather(1, out.text_positions[..., None].expand(-1, -1, T))  # (B, L, T)
            alpha = out.pooling.detach().to(matrix.dtype) * out.text_mask.to(matrix.dtype)
            rows = torch.einsum("bl,blt->bt", alpha, text_rows)
        scores = rows.gather(1, out.text_positions)
        return scores.masked_fill(~out.text_mask, 0.0)


class SelfAttentionWeights(_SelfAttentionExplainer):
    """Raw self-attention of one layer on the text pieces, from the ``[CLS]`` row (or pooling-weighted rows).

    ``layer``: index into the layers (Python indexing; -1 = last). ``head``: one head, or None for the mean
    over heads. The mass on special tokens and the query is dropped, not renormalized away.
    """

    name = "self_attention"

    def __init__(self, layer: int = -1, head: Optional[int] = None, readout: str = "cls"):
        super().__init__(readout)
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ConfigError(f"layer must be an integer index, got {layer!r}")
        if head is not None and (not isinstance(head, int) or isinstance(head, bool) or head < 0):
            raise ConfigError(f"head must be a non-negative integer or None (mean over heads), got {head!r}")
        self.layer = layer
        self.head = head

    def config(self) -> Dict[str, Any]:
        return {"layer": self.layer, "head": self.head, "readout": self.readout}

    def attribute(self, model: nn.Module, batch: TextBatch, target: Tensor) -> Tensor:
        with torch.no_grad():
            out = self._run(model, batch)
        n_layers = len(out.attentions)
        if not -n_layers <= self.layer < n_layers:
            raise ConfigError(f"layer {self.layer} out of range for a model of {n_layers} layers")
        a = out.attentions[self.layer]
        if self.head is not None:
            if self.head >= a.shape[1]:
                raise ConfigError(f"head {self.head} out of range for {a.shape[1]} heads")
            a = a[:, self.head]
        else:
            a = a.mean(dim=1)
        return self._read(a, out)


class AttentionRollout(_SelfAttentionExplainer):
    """Attention rollout (Abnar & Zuidema 2020): Â_l = (1−r)·mean_h A_l + r·I, R = Â_L ⋯ Â_1, read by row."""

    name = "attention_rollout"

    def __init__(self, residual: float = 0.5, readout: str = "cls"):
        super().__init__(readout)
        if not (isinstance(residual, (int, float)) and 0.0 <= residual <= 1.0):
            raise ConfigError(f"residual must be in [0, 1], got {residual!r}")
        self.residual = float(residual)

    def config(self) -> Dict[str, Any]:
        return {"residual": self.residual, "readout": self.readout}

    def attribute(self, model: nn.Module, batch: TextBatch, target: Tensor) -> Tensor:
        with torch.no_grad():
            out = self._run(model, batch)
            return self._read(attention_rollout(out.attentions, self.residual), out)


class GradientWeightedAttention(_SelfAttentionExplainer):
    """Chefer et al. (2021) relevance: R ← R + mean_h (∂y_c/∂A ⊙ A)⁺ · R from R = I, read out by row.

    ∂y_c/∂A is the gradient of the target class logit w.r.t. each layer's attention probabilities, all
    layers from one backward pass (``torch.autograd.grad``; parameters' ``.grad`` untouched).
    """

    name = "chefer_relevance"

    def attribute(self, model: nn.Module, batch: TextBatch, target: Tensor) -> Tensor:
        with torch.enable_grad():
            out = self._run(model, batch, requires_grad=True)
            grads = torch.autograd.grad(_select(out.logits, target).sum(), out.attentions)
        with torch.no_grad():
            rel = chefer_relevance([a.detach() for a in out.attentions], grads)
            return self._read(rel, out)


#: name -> class, for a registry to pick up (not registered here)
TRANSFORMER_EXPLAINERS = {cls.name: cls for cls in (SelfAttentionWeights, AttentionRollout,
                                                     GradientWeightedAttention)}
