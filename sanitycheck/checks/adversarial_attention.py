"""Adversarial attention and attention permutation (Jain & Wallace 2019, "Attention is not Explanation").

Two interventions on the attention distribution of an ``AttentionClassifier``-like model (anything with
``encode(ids, lengths, query_ids, query_lengths) -> (hidden, query)``, ``attend(hidden, lengths, query)``
and ``decode(hidden, attention, query) -> logits``): the hidden states are computed once, and only the
distribution that weights them is changed.

* ``permutation_test``: each instance's attention is randomly permuted over its real tokens
  ``n_permutations`` times; the median output change per instance is J&W's Figure 3.
* ``adversarial_attention``: J&W's search for distributions far from the model's (large JSD) that leave
  the output (almost) unchanged. Per instance, ``k`` candidates are parameterized as logits initialized
  from the log-uniform distribution plus N(0, 3²) noise (std 3) and optimized jointly with one Adam
  (``steps`` steps, ``lr``) on, per instance, summed over the batch,

      loss = − Σ_k JSD(c_k, α) + 500 · Σ_k ReLU(|Δŷ_k| − ε) − Σ_{k≠k'} JSD(c_k, c_k')

  (the mutual term sums over ordered pairs, as the authors' code sums the K×K matrix). The reported
  "max JSD within ε" is the largest JSD(c_k, α) over the candidates with |Δŷ_k| ≤ ``report_epsilon``
  (NaN where none qualifies), after the last step.

Definitions:

* ``jsd`` is the Jensen–Shannon divergence in nats (natural log), so 0 ≤ JSD ≤ ln 2 ≈ 0.693.
* ``output_distribution`` is the softmax of the decoder's logits, (B, C); a single-logit decoder
  (sigmoid) gives [1 − σ, σ]. The output change |Δŷ| is the total variation distance between output
  distributions (``tvd``). For a binary model it equals exactly the absolute change of the
  positive-class probability, J&W's |Δŷ|; for multi-class models it is the TVD of the full distributions.
* "Saturated" instances are those whose original largest output probability exceeds 0.99: for them,
  the same output is easy to keep (REFERENCES.md), so ``saturated_share`` is reported beside the result.

Everything is computed in float64 (a float32 model is copied and converted; the model passed is never
mutated: the encoder runs under ``torch.no_grad``, gradients are taken with ``torch.autograd.grad``
with respect to the candidate logits only, so no ``.grad`` is ever written on a parameter).
Random draws come from generators seeded by (seed, purpose, content of the instance) — never the
global RNG — so an instance's result does not depend on the batch it is in.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError, ModelError, NotApplicableError
from ..seeding import generator

__all__ = [
    "LN2",
    "jsd",
    "tvd",
    "output_distribution",
    "output_change",
    "PermutationResult",
    "AdversarialResult",
    "permutation_test",
    "adversarial_attention",
]

#: The upper bound of the Jensen–Shannon divergence in nats.
LN2 = math.log(2.0)

#: Output probability above which an instance counts as saturated.
SATURATION = 0.99


# --------------------------------------------------------------------------- divergences


def _safe_log(x: Tensor) -> Tensor:
    # log where x > 0, 0 elsewhere, with finite gradients everywhere (no 0 * inf = NaN in backward)
    return torch.log(torch.where(x > 0, x, torch.ones_like(x)))


def jsd(p: Tensor, q: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Jensen–Shannon divergence (nats) between distributions over the last dimension, batched.

    ``p`` and ``q`` broadcast against each other (e.g. (B, K, 1, L) and (B, 1, K, L)); ``mask``
    (broadcastable, True at the positions that count) zeroes the terms elsewhere. Computed in float64;
    the result, of the broadcast shape without the last dimension, lies in [0, ln 2].
    """
    p = p.to(torch.float64)
    q = q.to(torch.float64)
    m = 0.5 * (p + q)
    log_m = _safe_log(m)
    terms = 0.5 * (p * (_safe_log(p) - log_m) + q * (_safe_log(q) - log_m))
    if mask is not None:
        terms = terms.masked_fill(~mask.to(torch.bool), 0.0)
    return terms.sum(dim=-1)


def tvd(p: Tensor, q: Tensor) -> Tensor:
    """Total variation distance ½ Σ |p − q| over the last dimension, batched, float64, in [0, 1]."""
    return 0.5 * (p.to(torch.float64) - q.to(torch.float64)).abs().sum(dim=-1)


def output_distribution(model: nn.Module, hidden: Tensor, attention: Tensor, query: Optional[Tensor] = None) -> Tensor:
    """The output distribution (B, C) of ``model.decode(hidden, attention, query)``.

    Softmax of the logits; a single logit (sigmoid output) gives the two-class distribution [1 − σ, σ].
    For a binary model, ``tvd`` between two such distributions is the absolute change of the positive-class
    probability (J&W's |Δŷ|); for more classes it is the TVD of the full distributions.
    """
    logits = model.decode(hidden, attention, query)
    if logits.dim() != 2:
        raise ModelError(f"decode must return logits (B, C), got shape {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        pos = torch.sigmoid(logits)
        return torch.cat([1.0 - pos, pos], dim=1)
    return torch.softmax(logits, dim=-1)


def output_change(p: Tensor, q: Tensor) -> Tensor:
    """|Δŷ| between output distributions: ``tvd`` (= |Δ p(positive)| for binary outputs)."""
    return tvd(p, q)


# --------------------------------------------------------------------------- shared preparation


def _instance_keys(ids: Tensor, lengths: Tensor, q_ids: Optional[Tensor], q_lengths: Optional[Tensor]) -> List[str]:
    """A content hash per instance (its real tokens and query tokens): draws keyed on it are batch-invariant."""
    keys = []
    for b in range(ids.shape[0]):
        h = hashlib.sha256(ids[b, : int(lengths[b])].to(torch.int64).cpu().numpy().tobytes())
        if q_ids is not None:
            h.update(b"|query|")
            n = int(q_lengths[b]) if q_lengths is not None else q_ids.shape[1]
            h.update(q_ids[b, :n].to(torch.int64).cpu().numpy().tobytes())
        keys.append(h.hexdigest()[:16])
    return keys


def _float64_model(model: nn.Module) -> nn.Module:
    for name in ("encode", "attend", "decode"):
        if not callable(getattr(model, name, None)):
            raise NotApplicableError(f"{type(model).__name__} has no {name}(): the attention interventions need a "
                                     f"model with encode/attend/decode (e.g. AttentionClassifier)")
    if model.training:
        raise ModelError(f"{type(model).__name__} is in train mode; call model.eval() before the attention checks")
    params = list(model.parameters())
    if params and any(p.dtype != torch.float64 for p in params):
        # a float64 copy: the caller's model stays as it is
        model = copy.deepcopy(model).double().eval()
    return model


def _prepare(model, ids, lengths, query_ids, query_lengths):
    """(float64 model, ids, lengths (B,), q_ids, q_lengths, hidden, query, attention, mask, keys), no grad."""
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise DataError(f"ids must be a LongTensor (B, L), got "
                        f"{tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__}")
    if ids.shape[0] == 0:
        raise DataError("ids is empty (B = 0)")
    model = _float64_model(model)
    if lengths is None:
        nonzero = ids != 0
        pos = torch.arange(1, ids.shape[1] + 1, device=ids.device)[None, :]
        lengths = (nonzero * pos).amax(dim=1)
    lengths = torch.as_tensor(lengths, device=ids.device).long()
    if query_ids is not None and query_lengths is not None:
        query_lengths = torch.as_tensor(query_lengths, device=ids.device).long()
    with torch.no_grad():
        hidden, query = model.encode(ids, lengths, query_ids, query_lengths)
        hidden = hidden.to(torch.float64)
        query = query.to(torch.float64) if query is not None else None
        attention = model.attend(hidden, lengths, query).to(torch.float64)
    mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
    keys = _instance_keys(ids, lengths, query_ids, query_lengths)
    return model, lengths, hidden, query, attention, mask, keys


# --------------------------------------------------------------------------- permutation


@dataclass
class PermutationResult:
    """``permutation_test`` output.

    median_output_change: (B,) median |Δŷ| over the permutations (J&W Figure 3).
    output_change: (B, P) |Δŷ| of every permutation.
    attention: (B, L) the model's attention; original_output: (B, C) its output distribution.
    saturated: (B,) bool, original max output probability > 0.99; saturated_share: their share.
    """

    median_output_change: Tensor
    output_change: Tensor
    attention: Tensor
    original_output: Tensor
    saturated: Tensor
    saturated_share: float
    n_permutations: int
    seed: int


def permutation_test(
    model: nn.Module,
    ids: Tensor,
    lengths: Any = None,
    query_ids: Optional[Tensor] = None,
    query_lengths: Any = None,
    *,
    n_permutations: int = 100,
    seed: int = 0,
    chunk_elements: int = 2 ** 24,
) -> PermutationResult:
    """Randomly permute each instance's attention over its real tokens; median output change per instance.

    Permutations of instance b come from a generator seeded by (seed, "attention-permutation", content of b),
    so they do not depend on the batch. All B × P permuted distributions are decoded together, in chunks of
    whole instances holding at most about ``chunk_elements`` hidden-state numbers.
    """
    if not (isinstance(n_permutations, int) and n_permutations >= 1):
        raise ConfigError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    model, lengths, hidden, query, attention, mask, keys = _prepare(model, ids, lengths, query_ids, query_lengths)
    B, L, H = hidden.shape
    P = n_permutations
    perm_idx = torch.arange(L, device=ids.device).repeat(B, P, 1)  # (B, P, L), identity on padding
    for b, key in enumerate(keys):
        n = int(lengths[b])
        g = generator(seed, "attention-permutation", key)
        perm_idx[b, :, :n] = torch.argsort(torch.rand(P, n, generator=g), dim=1).to(ids.device)
    permuted = torch.gather(attention.unsqueeze(1).expand(B, P, L), 2, perm_idx)  # (B, P, L)
    with torch.no_grad():
        original = output_distribution(model, hidden, attention, query)
        per_chunk = max(1, chunk_elements // max(1, P * L * H))
        changes = []
        for s in range(0, B, per_chunk):
            e = min(B, s + per_chunk)
            nb = e - s
            h = hidden[s:e].repeat_interleave(P, dim=0)
            qv = query[s:e].repeat_interleave(P, dim=0) if query is not None else None
            out = output_distribution(model, h, permuted[s:e].reshape(nb * P, L), qv).reshape(nb, P, -1)
            changes.append(output_change(out, original[s:e].unsqueeze(1)))
        change = torch.cat(changes, dim=0)
    saturated = original.amax(dim=1) > SATURATION
    return PermutationResult(
        median_output_change=torch.quantile(change, 0.5, dim=1),
        output_change=change,
        attention=attention,
        original_output=original,
        saturated=saturated,
        saturated_share=float(saturated.double().mean()),
        n_permutations=P,
        seed=seed,
    )


# --------------------------------------------------------------------------- adversarial search


@dataclass
class AdversarialResult:
    """``adversarial_attention`` output (after the last step).

    max_jsd: (B,) largest JSD(candidate, attention) over the candidates with |Δŷ| ≤ report_epsilon; NaN where
        none qualifies.
    candidates: (B, K, L) the adversarial distributions (0 at padding).
    output_change: (B, K) |Δŷ| of each candidate; jsd: (B, K) JSD of each candidate from the attention.
    found: (B,) bool, some candidate qualifies; share_found: their share.
    attention: (B, L) the model's attention; original_output: (B, C).
    saturated: (B,) bool, original max output probability > 0.99; saturated_share: their share.
    final_loss: the summed loss at the last step.
    """

    max_jsd: Tensor
    candidates: Tensor
    output_change: Tensor
    jsd: Tensor
    found: Tensor
    share_found: float
    attention: Tensor
    original_output: Tensor
    saturated: Tensor
    saturated_share: float
    final_loss: float
    k: int
    steps: int
    lr: float
    epsilon: float
    report_epsilon: float
    seed: int


def _candidates_loss(model, logits, mask, hidden_rep, query_rep, attention, original, epsilon, penalty):
    B, K, L = logits.shape
    cand = torch.softmax(logits.masked_fill(~mask[:, None, :], float("-inf")), dim=-1)
    cand = cand.masked_fill(~mask[:, None, :], 0.0)
    out = output_distribution(model, hidden_rep, cand.reshape(B * K, L), query_rep).reshape(B, K, -1)
    change = output_change(out, original[:, None, :])  # (B, K)
    div = jsd(cand, attention[:, None, :], mask[:, None, :])  # (B, K)
    # Σ over ordered pairs (k, k') of JSD(c_k, c_k') = K Σ_k Σ_l c log c − Σ_{k,k'} Σ_l m log m, m = (c_k + c_k')/2
    # (the diagonal contributes 0): one log over (B, K, K, L) instead of three
    mix = 0.5 * (cand[:, :, None, :] + cand[:, None, :, :])
    mutual = K * (cand * _safe_log(cand)).sum() - (mix * _safe_log(mix)).sum()
    loss = -div.sum() + penalty * torch.relu(change - epsilon).sum() - mutual
    return loss, cand, change, div


def adversarial_attention(
    model: nn.Module,
    ids: Tensor,
    lengths: Any = None,
    query_ids: Optional[Tensor] = None,
    query_lengths: Any = None,
    *,
    k: int = 5,
    steps: int = 500,
    lr: float = 0.01,
    epsilon: float = 0.01,
    report_epsilon: float = 0.05,
    penalty: float = 500.0,
    noise_std: float = 3.0,
    seed: int = 0,
) -> AdversarialResult:
    """J&W's adversarial attention search, batched over instances and candidates (see the module docstring).

    The noise of instance b comes from a generator seeded by (seed, "adversarial-attention", content of b);
    since Adam is elementwise and each instance's loss depends only on its own candidates, an instance's
    result does not depend on the batch it is in (up to floating-point summation order).
    """
    for name, value in (("k", k), ("steps", steps)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("lr", lr), ("epsilon", epsilon), ("report_epsilon", report_epsilon), ("penalty", penalty),
                        ("noise_std", noise_std)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    model, lengths, hidden, query, attention, mask, keys = _prepare(model, ids, lengths, query_ids, query_lengths)
    B, L, H = hidden.shape
    with torch.no_grad():
        original = output_distribution(model, hidden, attention, query)
        hidden_rep = hidden.repeat_interleave(k, dim=0)
        query_rep = query.repeat_interleave(k, dim=0) if query is not None else None
    init = torch.zeros(B, k, L, dtype=torch.float64, device=hidden.device)
    for b, key in enumerate(keys):
        n = int(lengths[b])
        g = generator(seed, "adversarial-attention", key)
        noise = torch.randn(k, n, generator=g, dtype=torch.float64) * noise_std
        init[b, :, :n] = math.log(1.0 / n) + noise.to(hidden.device)
    logits = init.requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    loss = None
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss, *_ = _candidates_loss(model, logits, mask, hidden_rep, query_rep, attention, original, epsilon, penalty)
        # gradients with respect to the candidate logits only: no .grad is written on the model
        (grad,) = torch.autograd.grad(loss, [logits])
        logits.grad = grad
        opt.step()
    with torch.no_grad():
        loss, cand, change, div = _candidates_loss(model, logits, mask, hidden_rep, query_rep, attention, original,
                                                   epsilon, penalty)
    qualifies = change <= report_epsilon
    found = qualifies.any(dim=1)
    masked = div.masked_fill(~qualifies, float("-inf")).amax(dim=1)
    max_jsd = torch.where(found, masked, torch.full_like(masked, float("nan")))
    saturated = original.amax(dim=1) > SATURATION
    return AdversarialResult(
        max_jsd=max_jsd,
        candidates=cand.detach(),
        output_change=change.detach(),
        jsd=div.detach(),
        found=found,
        share_found=float(found.double().mean()),
        attention=attention,
        original_output=original,
        saturated=saturated,
        saturated_share=float(saturated.double().mean()),
        final_loss=float(loss),
        k=k,
        steps=steps,
        lr=float(lr),
        epsilon=float(epsilon),
        report_epsilon=float(report_epsilon),
        seed=seed,
    )
