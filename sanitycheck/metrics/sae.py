"""Metrics of sparse-autoencoder features: pure batched functions of tensors.

* Reconstruction (MSE, fraction of variance unexplained), L0, dead and dense latents, loss recovered: the core
  metrics of Bricken et al. 2023 ("Towards Monosemanticity") and SAEBench (Karvonen et al. 2025).
* Feature similarity across seeds (mean max-cosine of decoder directions, the deck's "0.7") and feature
  splitting across dictionary sizes (Bricken et al. 2023).
* Offline interpretability measures (no LLM judge): the share of a latent's activation variance explained by
  the current token's identity (an eta^2; Heap et al. 2025 trace random-model "interpretability" to
  single-token features), and concept detection AUROC: best single latent and k-sparse probes over latents
  (Gurnee et al. 2023, "Finding Neurons in a Haystack"; SAEBench), against difference-in-means and a logistic
  probe on the raw activations (AxBench, Wu et al. 2025, found difference-in-means strongest).

Per-text aggregates are float64; nothing here draws from the global RNG.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = ["reconstruction_per_doc", "l0_per_doc", "latent_frequencies", "dead_dense", "loss_recovered",
           "max_cosine", "splitting_tree", "token_identity_share", "auroc", "best_latent_auroc",
           "k_sparse_probe_auroc", "diff_in_means_auroc", "logistic_probe_auroc", "auroc_ci", "undefined_reason",
           "check_labels"]

_CHUNK = 8192  # tokens per chunk over (n_tokens, d_sae) latents


def _doc_sum(v: Tensor, doc: Tensor, n_docs: int) -> Tensor:
    return torch.zeros(n_docs, dtype=torch.float64, device=v.device).index_add_(0, doc.to(v.device).long(),
                                                                                 v.double())


def _doc_count(doc: Tensor, n_docs: int) -> Tensor:
    return torch.bincount(doc.long(), minlength=n_docs).double()


def _nan_div(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b > 0, a / b.clamp_min(1e-300), torch.full_like(a, float("nan")))


def reconstruction_per_doc(x: Tensor, x_hat: Tensor, doc: Tensor, n_docs: int, total_variance: float
                           ) -> Dict[str, Tensor]:
    """Per text: ``"mse"`` (mean squared error per element) and ``"fvu"`` (sum of squared errors over
    ``n_tokens * total_variance``, where ``total_variance`` is the activations' total variance per token,
    ``E||x - mean||^2`` over the whole set: summed over texts this is SAEBench's 1 - explained variance).
    ``(n_docs,)`` float64; NaN for a text without tokens. Chunked over tokens."""
    if x.shape != x_hat.shape:
        raise ConfigError(f"reconstruction_per_doc: x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ")
    se = torch.zeros(n_docs, dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], _CHUNK):
        err = (x_hat[s:s + _CHUNK].double() - x[s:s + _CHUNK].double()).pow(2).sum(-1)
        se.index_add_(0, doc[s:s + _CHUNK].to(x.device).long(), err)
    n = _doc_count(doc, n_docs).to(x.device)
    if not total_variance > 0:
        raise DataError(f"reconstruction_per_doc: total_variance must be > 0, got {total_variance!r} "
                        f"(constant activations: FVU is undefined)")
    return {"mse": _nan_div(se, n * x.shape[-1]), "fvu": _nan_div(se, n * float(total_variance))}


def l0_per_doc(z: Tensor, doc: Tensor, n_docs: int) -> Tensor:
    """Mean number of active latents (``z > 0``) per token, per text: ``(n_docs,)`` float64."""
    l0 = torch.cat([(z[s:s + _CHUNK] > 0).sum(-1) for s in range(0, z.shape[0], _CHUNK)]) if z.shape[0] else \
        torch.zeros(0, device=z.device)
    return _nan_div(_doc_sum(l0, doc, n_docs), _doc_count(doc, n_docs).to(z.device))


def latent_frequencies(z: Tensor) -> Tensor:
    """``(d_sae,)`` float64: the fraction of tokens on which each latent fires (``z > 0``)."""
    cnt = torch.zeros(z.shape[-1], dtype=torch.float64, device=z.device)
    for s in range(0, z.shape[0], _CHUNK):
        cnt += (z[s:s + _CHUNK] > 0).sum(0).double()
    return cnt / max(z.shape[0], 1)


def dead_dense(freq: Tensor, *, dense_threshold: float = 0.1) -> Dict[str, Tensor]:
    """Per-latent 0/1 float indicators: ``"dead"`` (never fires on these tokens) and ``"dense"`` (fires on more
    than ``dense_threshold`` of them; SAEBench and Bricken et al. flag such latents as uninterpretable)."""
    return {"dead": (freq <= 0).double(), "dense": (freq > dense_threshold).double()}


def loss_recovered(ce_clean: Tensor, ce_spliced: Tensor, ce_zero: Tensor, *, eps: float = 1e-9) -> Tensor:
    """Per text ``(ce_zero - ce_spliced) / (ce_zero - ce_clean)`` (Bricken et al.'s "loss explained", SAEBench's
    "loss recovered"): 1 when splicing in the reconstruction costs nothing, 0 when it is as bad as zero-ablating
    the activation. NaN where ``|ce_zero - ce_clean| <= eps`` (ablation costs nothing: undefined)."""
    num = ce_zero.double() - ce_spliced.double()
    den = ce_zero.double() - ce_clean.double()
    return torch.where(den.abs() > eps, num / torch.where(den.abs() > eps, den, torch.ones_like(den)),
                       torch.full_like(den, float("nan")))


def _unit_rows(w: Tensor) -> Tensor:
    w = w.double()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def max_cosine(W_dec_a: Tensor, W_dec_b: Tensor, *, alive_a: Optional[Tensor] = None,
               alive_b: Optional[Tensor] = None, chunk: int = 2048) -> Tensor:
    """``(d_sae_a,)`` float64: for each latent of dictionary a, the largest cosine between its decoder direction
    and any (alive) decoder direction of dictionary b; NaN for dead a-latents (``alive_a`` False). The mean over
    defined entries between two seeds is the deck's "features correlate at about 0.7" measure (Bricken et al.
    2023 use the mean max-cosine / activation correlation across runs)."""
    a, b = _unit_rows(W_dec_a), _unit_rows(W_dec_b)
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"max_cosine: decoder widths differ ({a.shape[1]} vs {b.shape[1]}); compare SAEs of "
                          f"the same hook")
    if alive_b is not None:
        b = b[alive_b.bool().to(b.device)]
    if b.shape[0] == 0:
        return torch.full((a.shape[0],), float("nan"), dtype=torch.float64)
    out = torch.cat([(a[s:s + chunk] @ b.T).max(1).values for s in range(0, a.shape[0], chunk)])
    if alive_a is not None:
        out = torch.where(alive_a.bool().to(out.device), out, torch.full_like(out, float("nan")))
    return out


def splitting_tree(W_dec_small: Tensor, W_dec_large: Tensor, *, threshold: float = 0.5,
                   z_small: Optional[Tensor] = None, z_large: Optional[Tensor] = None,
                   alive_small: Optional[Tensor] = None, alive_large: Optional[Tensor] = None,
                   max_children: int = 8) -> Dict[str, Any]:
    """Feature splitting across dictionary sizes (Bricken et al. 2023): each latent of the large dictionary is
    assigned to its most similar latent of the small one (its parent) when the similarity is >= ``threshold``.
    Similarity is the decoder cosine, or, when ``z_small`` and ``z_large`` (activations on the same tokens) are
    given, the Pearson correlation of activations. JSON-safe: ``{"parents": [{"parent": i, "children":
    [{"child": j, "similarity": s}, ...] (best first, at most max_children), "n_children": n}], "n_children":
    [n per small latent], "orphans": number of large latents without a parent, "threshold", "similarity"}``."""
    if z_small is not None and z_large is not None:
        sim = _activation_correlation(z_small, z_large)  # (d_large, d_small)
        kind = "activation_correlation"
    else:
        sim = _unit_rows(W_dec_large) @ _unit_rows(W_dec_small).T
        kind = "decoder_cosine"
    if alive_small is not None:
        sim[:, ~alive_small.bool().to(sim.device)] = float("-inf")
    best, parent = sim.max(1)
    ok = best >= threshold
    if alive_large is not None:
        ok &= alive_large.bool().to(ok.device)
    d_small = sim.shape[1]
    n_children = torch.bincount(parent[ok], minlength=d_small)
    parents = []
    for p in n_children.nonzero().flatten().tolist():
        kids = (ok & (parent == p)).nonzero().flatten()
        order = best[kids].argsort(descending=True)[:max_children]
        parents.append({"parent": p, "n_children": int(n_children[p]),
                        "children": [{"child": int(kids[o]), "similarity": round(float(best[kids[o]]), 6)}
                                     for o in order]})
    parents.sort(key=lambda d: (-d["n_children"], d["parent"]))
    return {"parents": parents, "n_children": n_children.tolist(), "orphans": int((~ok).sum()),
            "threshold": threshold, "similarity": kind}


def _activation_correlation(z_small: Tensor, z_large: Tensor) -> Tensor:
    def std(z: Tensor) -> Tensor:
        z = z.double()
        z = z - z.mean(0)
        return z / z.norm(dim=0).clamp_min(1e-12)

    return std(z_large).T @ std(z_small)


def token_identity_share(z: Tensor, token_ids: Tensor, *, min_count: int = 1, chunk: int = _CHUNK,
                         latent_block: Optional[int] = None) -> Tensor:
    """``(d_sae,)`` float64 eta^2: the share of each latent's activation variance (over tokens) explained by the
    current token's identity alone — between-token-group sum of squares over the total sum of squares, computed
    with ``index_add`` over token ids in chunks of tokens. 1 for a latent that is a function of the token id, ~0
    (about ``n_groups / n_tokens``) for one independent of it. Heap et al. 2025 trace the "interpretability" of
    SAEs on randomly initialized transformers to such single-token features. Tokens whose id occurs fewer than
    ``min_count`` times are left out (a singleton group explains its own variance trivially). NaN for a latent
    with zero variance on the kept tokens (dead, or constant)."""
    if z.shape[0] != token_ids.shape[0]:
        raise ConfigError(f"token_identity_share: {z.shape[0]} latent rows but {token_ids.shape[0]} token ids")
    d = z.shape[-1]
    dev = z.device
    # compact group ids over the token ids that occur (a 30k vocabulary x 4096 latents would not fit)
    _, gid = torch.unique(token_ids.long().to(dev), return_inverse=True)
    counts = torch.bincount(gid).double()
    keep_tok = counts[gid] >= max(min_count, 1)
    keep_grp = counts >= max(min_count, 1)
    n = counts[keep_grp].sum()
    if n < 2:
        return torch.full((d,), float("nan"), dtype=torch.float64, device=dev)
    G = counts.numel()
    c = counts[keep_grp].unsqueeze(1)
    # latents per pass: the (groups, block) float64 sums stay ~32 MB
    block = latent_block or max(1, min(d, 4_000_000 // max(G, 1)))
    out = torch.empty(d, dtype=torch.float64, device=dev)
    for j0 in range(0, d, block):
        j1 = min(d, j0 + block)
        sums = torch.zeros(G, j1 - j0, dtype=torch.float64, device=dev)
        tot = torch.zeros(j1 - j0, dtype=torch.float64, device=dev)
        tot2 = torch.zeros(j1 - j0, dtype=torch.float64, device=dev)
        for s0 in range(0, z.shape[0], chunk):
            kc = keep_tok[s0:s0 + chunk]
            zc = z[s0:s0 + chunk, j0:j1].double()[kc]
            sums.index_add_(0, gid[s0:s0 + chunk][kc], zc)
            tot += zc.sum(0)
            tot2 += zc.pow(2).sum(0)
        mean = tot / n
        sst = tot2 - n * mean.pow(2)
        ssb = (sums[keep_grp].pow(2) / c).sum(0) - n * mean.pow(2)
        eta = (ssb / sst.clamp_min(1e-300)).clamp(0.0, 1.0)
        undefined = sst <= 1e-12 * tot2.clamp_min(1e-300)
        out[j0:j1] = torch.where(undefined, torch.full_like(eta, float("nan")), eta)
    return out


# ---------------------------------------------------------------------------------------------- AUROC and probes
def check_labels(labels: Tensor, *, concept: str = "concept") -> Tensor:
    """0/1 labels as a bool tensor; a label set with one class (or values other than 0/1) is a :class:`DataError`
    naming the concept and the class counts."""
    y = labels.flatten()
    vals = torch.unique(y)
    if not bool(((vals == 0) | (vals == 1)).all()):
        raise DataError(f"concept {concept!r}: labels must be 0/1, got values {vals[:10].tolist()}")
    pos = int((y == 1).sum())
    neg = int(y.numel() - pos)
    if pos == 0 or neg == 0:
        raise DataError(f"concept {concept!r} has a label set with one class ({pos} positive, {neg} negative): "
                        f"AUROC and probes need both classes; pick texts or tokens with and without the concept")
    return y == 1


def _average_ranks(s: Tensor) -> Tensor:
    """Ranks (1-based, ties averaged) of each column of ``s`` (n, m), float64."""
    n = s.shape[0]
    sorted_s, order = s.sort(dim=0, stable=True)
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=s.device).unsqueeze(1).expand_as(sorted_s)
    # tie groups: a new group starts where the sorted value changes
    new = torch.ones_like(sorted_s, dtype=torch.bool)
    new[1:] = sorted_s[1:] != sorted_s[:-1]
    gid = new.long().cumsum(0) - 1  # group index per column
    m = s.shape[1]
    off = torch.arange(m, device=s.device) * n
    flat = (gid + off).flatten()
    gsum = torch.zeros(n * m, dtype=torch.float64, device=s.device).index_add_(0, flat, pos.flatten())
    gcnt = torch.zeros(n * m, dtype=torch.float64, device=s.device).index_add_(
        0, flat, torch.ones_like(pos).flatten())
    avg = (gsum / gcnt.clamp_min(1))[flat].view(n, m)
    ranks = torch.empty_like(avg)
    ranks.scatter_(0, order, avg)
    return ranks


def auroc(scores: Tensor, labels: Tensor, *, concept: str = "concept") -> Tensor:
    """Area under the ROC curve by the rank (Mann-Whitney) formula, ties averaged — equal to sklearn's
    ``roc_auc_score``. ``scores`` (n,) or (n, m) (m columns at once), ``labels`` (n,) 0/1 -> (m,) float64
    (a 0-d tensor for 1-D scores). NaN scores are not allowed."""
    y = check_labels(labels, concept=concept).to(scores.device)
    one = scores.dim() == 1
    s = scores.unsqueeze(1) if one else scores
    if s.shape[0] != y.shape[0]:
        raise ConfigError(f"auroc: {s.shape[0]} scores but {y.shape[0]} labels")
    if torch.isnan(s).any():
        raise DataError("auroc: scores contain NaN")
    r = _average_ranks(s.double())
    n1 = float(y.sum())
    n0 = float(y.numel()) - n1
    out = (r[y].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return out[0] if one else out


def _alive_columns(z: Tensor) -> Tensor:
    return (z > 0).any(0)


def undefined_reason(z: Optional[Tensor] = None, *, freq: Optional[Tensor] = None) -> Optional[str]:
    """Why the interpretability metrics of these latents are undefined, or None when they are defined:
    "every latent is dead on these tokens" when no latent fires."""
    if freq is None:
        if z is None:
            raise ConfigError("undefined_reason needs z or freq")
        freq = latent_frequencies(z)
    if freq.numel() == 0 or not bool((freq > 0).any()):
        return "every latent is dead on these tokens"
    return None


def _nan_result(reason: str, **extra: Any) -> Dict[str, Any]:
    return {"auroc": float("nan"), "train_auroc": float("nan"), "undefined_reason": reason, **extra}


def best_latent_auroc(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor, *,
                      concept: str = "concept") -> Dict[str, Any]:
    """The single latent that best detects the concept on the training split (max ``|AUROC - 0.5|`` over alive
    latents, sign-corrected: a latent that fires *less* on the concept counts with its sign flipped), and its
    AUROC on the test split (SAEBench / Gurnee et al. 2023's 1-sparse probe). Returns ``{"auroc", "train_auroc",
    "latent", "sign", "undefined_reason"}``; NaN + reason when every latent is dead on the training tokens."""
    check_labels(y_train, concept=concept)
    check_labels(y_test, concept=concept)
    alive = _alive_columns(z_train)
    if not bool(alive.any()):
        return _nan_result("every latent is dead on these tokens", latent=None, sign=None)
    cols = alive.nonzero().flatten()
    a = torch.cat([auroc(z_train[:, cols[s:s + 1024]], y_train, concept=concept)
                   for s in range(0, cols.numel(), 1024)])
    j = int((a - 0.5).abs().argmax())
    sign = 1.0 if float(a[j]) >= 0.5 else -1.0
    latent = int(cols[j])
    test = float(auroc(sign * z_test[:, latent].double(), y_test, concept=concept))
    return {"auroc": test, "train_auroc": float(max(a[j], 1 - a[j])), "latent": latent, "sign": sign,
            "undefined_reason": None}


def _standardized_mean_difference(x: Tensor, y: Tensor) -> Tensor:
    x = x.double()
    pos, neg = x[y], x[~y]
    sd = x.std(0, unbiased=False).clamp_min(1e-12)
    return (pos.mean(0) - neg.mean(0)) / sd


def _fit_logistic(x: Tensor, y: Tensor, *, l2: float, max_iter: int = 100) -> Tuple[Tensor, Tensor]:
    """L2-regularized logistic regression by LBFGS (deterministic; zero init), float64, standardized inputs."""
    n, d = x.shape
    w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    yf = y.double()
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = x @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yf) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _standardize(train: Tensor, test: Tensor) -> Tuple[Tensor, Tensor]:
    train, test = train.double(), test.double()
    mu, sd = train.mean(0), train.std(0, unbiased=False).clamp_min(1e-8)
    return (train - mu) / sd, (test - mu) / sd


def k_sparse_probe_auroc(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor, *, k: int, seed: int = 0,
                         l2: float = 1e-3, concept: str = "concept") -> Dict[str, Any]:
    """k-sparse probe (Gurnee et al. 2023; SAEBench's sparse probing): the ``k`` latents with the largest
    |standardized mean difference| between the classes on the training split, then an L2 logistic regression
    on them (LBFGS, standardized inputs); its test AUROC. ``seed`` is recorded (the fit is deterministic: zero
    init, full batch). NaN + reason when every latent is dead on the training tokens."""
    yt = check_labels(y_train, concept=concept)
    check_labels(y_test, concept=concept)
    if k < 1:
        raise ConfigError(f"k_sparse_probe_auroc: k must be >= 1, got {k!r}")
    alive = _alive_columns(z_train)
    if not bool(alive.any()):
        return _nan_result("every latent is dead on these tokens", latents=[], k=k, seed=seed)
    cols = alive.nonzero().flatten()
    smd = torch.cat([_standardized_mean_difference(z_train[:, cols[s:s + 4096]], yt)
                     for s in range(0, cols.numel(), 4096)])
    top = cols[smd.abs().argsort(descending=True)[:k]].sort().values
    xtr, xte = _standardize(z_train[:, top], z_test[:, top])
    w, b = _fit_logistic(xtr, yt, l2=l2)
    return {"auroc": float(auroc(xte @ w + b, y_test, concept=concept)),
            "train_auroc": float(auroc(xtr @ w + b, y_train, concept=concept)), "latents": top.tolist(), "k": k,
            "seed": seed, "undefined_reason": None}


def diff_in_means_auroc(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *,
                        concept: str = "concept") -> Dict[str, Any]:
    """Difference-in-means on the raw activations (AxBench, Wu et al. 2025: the strongest concept detector
    there): the direction ``mean(x | concept) - mean(x | not concept)`` from the training split, test
    activations projected on it, AUROC of the projection."""
    yt = check_labels(y_train, concept=concept)
    check_labels(y_test, concept=concept)
    x = x_train.double()
    direction = x[yt].mean(0) - x[~yt].mean(0)
    return {"auroc": float(auroc(x_test.double() @ direction, y_test, concept=concept)),
            "train_auroc": float(auroc(x @ direction, y_train, concept=concept)), "undefined_reason": None}


def logistic_probe_auroc(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, seed: int = 0,
                         l2: float = 1e-2, concept: str = "concept") -> Dict[str, Any]:
    """L2 logistic regression on the raw (standardized) activations, LBFGS from zero: the linear-probe baseline
    (DeepMind 2025 found SAEs underperform it; Gurnee et al. 2023). Deterministic; ``seed`` is recorded."""
    yt = check_labels(y_train, concept=concept)
    check_labels(y_test, concept=concept)
    xtr, xte = _standardize(x_train, x_test)
    w, b = _fit_logistic(xtr, yt, l2=l2)
    return {"auroc": float(auroc(xte @ w + b, y_test, concept=concept)),
            "train_auroc": float(auroc(xtr @ w + b, y_train, concept=concept)), "seed": seed, "l2": l2,
            "undefined_reason": None}


def auroc_ci(scores: Tensor, labels: Tensor, *, seed: int, n_boot: int = 1000, groups: Optional[Tensor] = None,
             alpha: float = 0.05, concept: str = "concept") -> Tuple[float, float]:
    """Percentile bootstrap CI of the AUROC. With ``groups`` (e.g. the text of each token), whole groups are
    resampled (tokens of one text are not independent). Resamples with one class are dropped; ``(nan, nan)``
    when fewer than half of them are usable. Batched: all resamples' ranks in one call per block."""
    y = check_labels(labels, concept=concept).to(scores.device)
    s = scores.double().flatten()
    n = s.shape[0]
    g = torch.Generator().manual_seed(int(seed))
    block = max(1, min(64, 2_000_000 // max(n, 1)))  # resamples per block: bounded memory for long token lists
    if groups is not None:
        _, inv = torch.unique(groups.flatten(), return_inverse=True)
        G = int(inv.max()) + 1
        order = inv.argsort(stable=True)
        sizes = torch.bincount(inv, minlength=G)
        starts = torch.cumsum(sizes, 0) - sizes
    vals = []
    for b0 in range(0, n_boot, block):
        m = min(block, n_boot - b0)
        if groups is None:
            idx = torch.randint(0, n, (m, n), generator=g)
            valid = torch.ones_like(idx, dtype=torch.bool)
        else:
            pick = torch.randint(0, G, (m, G), generator=g)  # whole texts drawn with replacement
            lens = sizes[pick]
            total = lens.sum(1)
            L = int(total.max())
            ar = torch.arange(L).unsqueeze(0).expand(m, L).contiguous()
            cum = torch.cumsum(lens, 1)
            which = torch.searchsorted(cum, ar, right=True).clamp_max(G - 1)  # slot of each position
            within = ar - (cum - lens).gather(1, which)
            grp = pick.gather(1, which)
            idx = order[(starts[grp] + within).clamp(0, n - 1)]
            valid = ar < total.unsqueeze(1)
        vals.append(_auroc_resamples(s, y, idx, valid))
    v = torch.cat(vals)
    if v.numel() < n_boot / 2:
        return float("nan"), float("nan")
    return float(torch.quantile(v, alpha / 2)), float(torch.quantile(v, 1 - alpha / 2))


def _auroc_resamples(s: Tensor, y: Tensor, idx: Tensor, valid: Tensor) -> Tensor:
    """AUROC of each resample (a row of ``idx``; ``valid`` False on padding), all rows as the columns of one
    rank computation: padding scores -inf so it ranks below every real score, and its count is subtracted from
    the real ranks. Resamples with one class are dropped."""
    if not torch.isfinite(s).all():
        raise DataError("auroc_ci: scores must be finite")
    ii, vv = idx.T, valid.T  # (L, m)
    sc = torch.where(vv, s[ii], torch.full(ii.shape, float("-inf"), dtype=torch.float64))
    yy = y[ii] & vv
    r = _average_ranks(sc)
    n_pad = (~vv).sum(0).double()
    n1 = yy.sum(0).double()
    n0 = vv.sum(0).double() - n1
    a = ((r * yy).sum(0) - n1 * n_pad - n1 * (n1 + 1) / 2) / (n1 * n0).clamp_min(1)
    return a[(n1 > 0) & (n0 > 0)]
