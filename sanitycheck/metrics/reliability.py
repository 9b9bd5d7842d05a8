"""Psychometric reliability of saliency metrics (Tomsett et al. 2020).

Tomsett, Harborne, Chakraborty, Gurram, Preece, "Sanity Checks for Saliency Metrics", AAAI 2020,
ask whether a faithfulness metric measures a stable property of a saliency method, using the
reliability measures of psychometric testing. Scores are arranged as ``(n_methods, n_images)``
arrays: one metric's score of each saliency method on each image (NaN where undefined).

* **Inter-rater reliability** (:func:`inter_rater_reliability`): does the metric rank the
  saliency methods the same way on every image? Each image is a "rater" that ranks the methods
  ("units"); the agreement of these rankings is Krippendorff's α at the ordinal level. Tomsett et
  al. find α at most 0.48 on a CIFAR-10 CNN, below the customary 0.667 / 0.8 thresholds.
* **Inter-method reliability** (:func:`inter_method_reliability`): does one metric score two
  saliency methods consistently across images — Spearman's ρ, over the images, between the
  metric's scores of method A and of method B.
* **Internal consistency reliability** (:func:`internal_consistency`): do different metrics that
  are meant to measure the same property (fidelity) agree — for each saliency method, Spearman's
  ρ over the images between the scores of every pair of metrics, averaged.
* :func:`ranking_agreement`: how similarly two metrics *rank the methods* on each image — the
  mean over images of Spearman's ρ between the two per-image method rankings (a ranking-level
  view of inter-metric agreement, used by some re-implementations of Tomsett et al. as their
  "internal consistency"; not one of the paper's three measures).

Our reading of the paper, from secondary sources (the paper's text was not at hand when this was
written): inter-rater reliability as above is certain; for inter-method and internal consistency
two public re-implementations agree with the definitions above (inter-method: Spearman between two
saliency methods' scores under one metric across images; internal consistency: Spearman between
metrics' scores of one method across images), one of them using :func:`ranking_agreement` for
internal consistency instead.

Krippendorff's α (:func:`krippendorff_alpha`) follows the coincidence-matrix formulation of
Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011): for the 4-coder, 12-unit
worked example with missing values it gives nominal 0.743, ordinal 0.815, interval 0.849,
ratio 0.797 (tested).

Every function returns a :class:`Reliability` (value, number of raters and units actually used,
the method, a note); the value is NaN, with the reason in ``note``, where it is undefined.
Everything is vectorized in NumPy (float64); torch tensors are accepted.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import numpy as np
from scipy.stats import rankdata

from ..errors import ConfigError

__all__ = [
    "Reliability",
    "krippendorff_alpha",
    "inter_rater_reliability",
    "inter_method_reliability",
    "internal_consistency",
    "ranking_agreement",
    "TOMSETT_2020",
]

TOMSETT_2020 = 'Tomsett et al. 2020, "Sanity Checks for Saliency Metrics", AAAI'
KRIPPENDORFF_2011 = 'Krippendorff 2011, "Computing Krippendorff\'s Alpha-Reliability"'
LEVELS = ("nominal", "ordinal", "interval", "ratio")


@dataclass
class Reliability:
    """A reliability coefficient and what it was computed on.

    ``n_raters`` / ``n_units``: the raters (e.g. images) and units (e.g. saliency methods) that
    entered the computation after dropping incomplete ones; ``method``: how it was computed;
    ``note``: why it is NaN, or what was dropped; ``details``: per-pair / per-method values.
    """

    value: float
    n_raters: int
    n_units: int
    method: str
    note: str = ""
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def defined(self) -> bool:
        return not math.isnan(self.value)


def _as_array(x: Any, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ConfigError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if np.isinf(a).any():
        raise ConfigError(f"{name}: scores contain inf; use NaN for undefined scores")
    return a


# ----------------------------------------------------------------------------- Krippendorff's alpha

def _delta2(values: np.ndarray, n_c: np.ndarray, level: str) -> np.ndarray:
    """Squared difference function δ²(c, k) on the sorted distinct values (Krippendorff 2011)."""
    c, k = values[:, None], values[None, :]
    if level == "nominal":
        return (c != k).astype(np.float64)
    if level == "interval":
        return (c - k) ** 2
    if level == "ratio":
        s = c + k
        return np.where(s != 0, ((c - k) / np.where(s != 0, s, 1.0)) ** 2, 0.0)
    # ordinal: (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2, on ranks of the sorted values
    cum = np.concatenate([[0.0], np.cumsum(n_c)])
    i = np.arange(len(values))
    lo, hi = np.minimum(i[:, None], i[None, :]), np.maximum(i[:, None], i[None, :])
    between = cum[hi + 1] - cum[lo]
    return (between - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2


def krippendorff_alpha(ratings: Any, level: str = "ordinal") -> Reliability:
    """Krippendorff's α of ``ratings`` ``(n_raters, n_units)``, NaN for a missing rating.

    Coincidence-matrix formulation (Krippendorff 2011): units with fewer than two ratings are not
    pairable and are dropped; the coincidences are
    ``o_ck = Σ_u (n_uc n_uk − [c = k] n_uc) / (m_u − 1)`` (``n_uc``: how many raters gave unit
    ``u`` the value ``c``; ``m_u``: ratings of unit ``u``), ``n_c = Σ_k o_ck``, ``n = Σ_c n_c``, and
    ``α = 1 − (n − 1) Σ o_ck δ²_ck / Σ n_c n_k δ²_ck``. ``level``: ``"nominal"`` (δ² = [c ≠ k]),
    ``"ordinal"`` (δ² = (Σ_{g=c..k} n_g − (n_c + n_k)/2)²), ``"interval"`` (δ² = (c − k)²) or
    ``"ratio"`` (δ² = ((c − k)/(c + k))²).

    Cost: O(n_units · n_values) memory for the per-unit value counts and O(n_values²) for the
    coincidence matrix, where ``n_values`` is the number of distinct ratings (fine for rankings;
    for continuous interval data with very many distinct values, round first).

    NaN (with a note) when no unit has two ratings, or when all pairable ratings are equal (no
    variation, expected disagreement 0).
    """
    if level not in LEVELS:
        raise ConfigError(f"krippendorff_alpha: unknown level {level!r}; use one of {LEVELS}")
    r = _as_array(ratings, "krippendorff_alpha", 2)
    n_raters, n_units = r.shape
    method = f"Krippendorff's alpha ({level}; {KRIPPENDORFF_2011})"
    present = ~np.isnan(r)
    m_u = present.sum(0)
    pairable = m_u >= 2
    r, present, m_u = r[:, pairable], present[:, pairable], m_u[pairable]
    used_raters = int(present.any(1).sum())
    if r.shape[1] == 0:
        return Reliability(float("nan"), used_raters, 0, method,
                           "undefined: no unit has ratings from at least two raters")
    values, inverse = np.unique(r[present], return_inverse=True)
    if len(values) < 2:
        return Reliability(float("nan"), used_raters, int(r.shape[1]), method,
                           "undefined: all pairable ratings are equal (no variation)")
    # per-unit counts n_uc: (units, values)
    unit_of = np.broadcast_to(np.arange(r.shape[1]), r.shape)[present]
    counts = np.zeros((r.shape[1], len(values)))
    np.add.at(counts, (unit_of, inverse), 1.0)
    w = 1.0 / (m_u - 1.0)
    o = (counts * w[:, None]).T @ counts - np.diag((counts * w[:, None]).sum(0))
    n_c = o.sum(1)
    n = n_c.sum()
    d2 = _delta2(values, n_c, level)
    observed = (o * d2).sum()
    expected = (np.outer(n_c, n_c) * d2).sum()
    if expected <= 0:
        return Reliability(float("nan"), used_raters, int(r.shape[1]), method,
                           "undefined: expected disagreement is 0")
    alpha = 1.0 - (n - 1.0) * observed / expected
    note = "" if pairable.all() else f"{int((~pairable).sum())} unit(s) with fewer than two ratings dropped"
    return Reliability(float(alpha), used_raters, int(r.shape[1]), method, note)


# ----------------------------------------------------------------------------- Tomsett et al. 2020

def _complete_images(scores: np.ndarray) -> np.ndarray:
    return ~np.isnan(scores).any(0)


def inter_rater_reliability(scores: Any, *, higher_is_better: bool = True) -> Reliability:
    """Inter-rater reliability of one metric (Tomsett et al. 2020): Krippendorff's α (ordinal)
    of the per-image rankings of the saliency methods.

    ``scores``: ``(n_methods, n_images)``, one metric's score of each method on each image. Each
    image is a rater: it ranks the methods by score (rank 1 = best by ``higher_is_better``; ties
    share their average rank); the methods are the units. α = 1 when every image ranks the
    methods identically, ≈ 0 when the rankings are unrelated. The direction does not change α
    (reversing every ranking preserves the agreement); it only names rank 1.

    Images with a NaN score for any method are dropped (a partial ranking is on a different
    scale); the number dropped is in ``note``. NaN when fewer than 2 methods or 2 complete
    images remain, or when every complete image ties all methods.
    """
    s = _as_array(scores, "inter_rater_reliability", 2)
    n_methods, n_images = s.shape
    method = f"Krippendorff's alpha (ordinal) of per-image method rankings, images as raters ({TOMSETT_2020})"
    if n_methods < 2:
        return Reliability(float("nan"), n_images, n_methods, method,
                           f"undefined: {n_methods} method(s); a ranking needs at least 2")
    keep = _complete_images(s)
    dropped = int((~keep).sum())
    s = s[:, keep]
    note = f"{dropped} image(s) with an undefined score dropped" if dropped else ""
    if s.shape[1] < 2:
        return Reliability(float("nan"), int(s.shape[1]), n_methods, method,
                           f"undefined: {s.shape[1]} complete image(s); agreement needs at least 2"
                           + (f" ({note})" if note else ""))
    ranks = rankdata(-s if higher_is_better else s, method="average", axis=0)  # (methods, images)
    out = krippendorff_alpha(ranks.T, level="ordinal")  # raters = images, units = methods
    out.method = method
    out.note = "; ".join(x for x in (out.note, note) if x)
    return out


def _spearman_pairwise_complete(a: np.ndarray, b: np.ndarray) -> tuple:
    """Spearman ρ of two 1-D arrays over the entries where both are defined; (ρ, n, note)."""
    ok = ~(np.isnan(a) | np.isnan(b))
    n = int(ok.sum())
    if n < 3:
        return float("nan"), n, f"undefined: {n} image(s) with both scores defined; need at least 3"
    ra, rb = rankdata(a[ok]), rankdata(b[ok])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    if den == 0:
        return float("nan"), n, "undefined: constant scores have no ranks"
    return float(np.clip((ra * rb).sum() / den, -1.0, 1.0)), n, ""


def inter_method_reliability(scores_a: Any, scores_b: Any) -> Reliability:
    """Inter-method reliability (Tomsett et al. 2020): Spearman's ρ, across images, between one
    metric's scores of saliency method A and of saliency method B.

    ``scores_a``, ``scores_b``: ``(n_images,)``, the SAME metric's scores of two saliency methods
    on the same images. High ρ: the metric's per-image verdicts are consistent whatever the
    saliency method (it scores a property of the image/model pair); low ρ: the metric's score of
    an image depends on the method in an idiosyncratic way. Images where either score is NaN are
    left out (pairwise complete). For the whole ``(n_methods, n_images)`` array of one metric,
    call it for every pair of rows.

    ``n_raters`` is the number of images used, ``n_units`` is 2 (the methods).
    """
    a = _as_array(scores_a, "inter_method_reliability", 1)
    b = _as_array(scores_b, "inter_method_reliability", 1)
    if a.shape != b.shape:
        raise ConfigError(f"inter_method_reliability: score arrays of shapes {a.shape} and {b.shape}; "
                          "pass one metric's scores of two methods on the same images")
    rho, n, note = _spearman_pairwise_complete(a, b)
    dropped = a.shape[0] - n
    if dropped and not note:
        note = f"{dropped} image(s) with an undefined score dropped"
    return Reliability(rho, n, 2, f"Spearman rho across images between two methods' scores ({TOMSETT_2020})",
                       note)


def _metric_arrays(scores_by_metric: Mapping[str, Any], name: str) -> Dict[str, np.ndarray]:
    arrays = {m: _as_array(v, f"{name}[{m!r}]", 2) for m, v in scores_by_metric.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) > 1:
        raise ConfigError(f"{name}: every metric needs scores of the same (n_methods, n_images) shape, "
                          f"got {shapes}")
    return arrays


def internal_consistency(scores_by_metric: Mapping[str, Any], *,
                         higher_is_better: Optional[Mapping[str, bool]] = None) -> Reliability:
    """Internal consistency reliability (Tomsett et al. 2020): do metrics meant to measure the same
    property agree? Mean Spearman's ρ, across images, between the scores that each pair of
    metrics gives the same saliency method, averaged over methods and metric pairs.

    ``scores_by_metric``: metric name -> ``(n_methods, n_images)`` scores, the same methods
    and images (rows and columns) in every array. ``higher_is_better``: metric name -> direction;
    a lower-is-better metric's scores are negated first, so that agreement means positive ρ
    (default: every metric higher-is-better). For each method and each pair of metrics, ρ is
    computed over the images where both scores are defined (:func:`inter_method_reliability`'s
    rule); pairs where ρ is undefined are left out of the mean. ``details``:
    ``{"per_pair": {"a|b": mean over methods}, "per_method": {i: mean over pairs}}``.

    ``n_raters``: images; ``n_units``: metric pairs × methods that entered the mean. NaN when
    fewer than 2 metrics are given or no ρ is defined.
    """
    arrays = _metric_arrays(scores_by_metric, "internal_consistency")
    method = (f"mean Spearman rho across images between pairs of metrics' scores of the same "
              f"saliency method ({TOMSETT_2020})")
    if len(arrays) < 2:
        n_images = next(iter(arrays.values())).shape[1] if arrays else 0
        return Reliability(float("nan"), n_images, 0, method,
                           f"undefined: {len(arrays)} metric(s); consistency needs at least 2")
    direction = dict(higher_is_better or {})
    signed = {m: (a if direction.get(m, True) else -a) for m, a in arrays.items()}
    n_methods, n_images = next(iter(signed.values())).shape
    rhos = np.full((len(signed) * (len(signed) - 1) // 2, n_methods), np.nan)
    pairs = list(itertools.combinations(signed, 2))
    for p, (ma, mb) in enumerate(pairs):
        a, b = signed[ma], signed[mb]
        ok = ~(np.isnan(a) | np.isnan(b))  # (methods, images)
        # rank each method's row over its jointly defined images, vectorized over methods
        ra = rankdata(np.where(ok, a, np.nan), axis=1, nan_policy="omit")
        rb = rankdata(np.where(ok, b, np.nan), axis=1, nan_policy="omit")
        cnt = ok.sum(1)
        denom_cnt = np.maximum(cnt, 1)[:, None]
        ra = np.where(ok, ra - np.where(ok, ra, 0.0).sum(1, keepdims=True) / denom_cnt, 0.0)
        rb = np.where(ok, rb - np.where(ok, rb, 0.0).sum(1, keepdims=True) / denom_cnt, 0.0)
        num = (ra * rb).sum(1)
        den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
        good = (cnt >= 3) & (den > 0)
        rhos[p] = np.where(good, np.clip(num / np.where(good, den, 1.0), -1.0, 1.0), np.nan)
    defined = ~np.isnan(rhos)
    details = {
        "per_pair": {f"{ma}|{mb}": (float(np.nanmean(rhos[p])) if defined[p].any() else float("nan"))
                     for p, (ma, mb) in enumerate(pairs)},
        "per_method": {i: (float(np.nanmean(rhos[:, i])) if defined[:, i].any() else float("nan"))
                       for i in range(n_methods)},
    }
    if not defined.any():
        return Reliability(float("nan"), n_images, 0, method,
                           "undefined: no metric pair has a defined Spearman rho for any method", details)
    note = "" if defined.all() else f"{int((~defined).sum())} (pair, method) rho(s) undefined and left out"
    return Reliability(float(rhos[defined].mean()), n_images, int(defined.sum()), method, note, details)


def ranking_agreement(scores_a: Any, scores_b: Any, *, higher_is_better_a: bool = True,
                      higher_is_better_b: bool = True) -> Reliability:
    """How similarly two metrics rank the saliency methods, image by image: the mean over images
    of Spearman's ρ between metric A's and metric B's rankings of the methods.

    ``scores_a``, ``scores_b``: ``(n_methods, n_images)``, two metrics' scores of the same methods
    on the same images. Directions align the two rankings (a lower-is-better metric is negated).
    Images where either metric leaves a method undefined, or ranks all methods equal, are left
    out. NaN with fewer than 2 methods or no usable image.
    """
    a = _as_array(scores_a, "ranking_agreement", 2)
    b = _as_array(scores_b, "ranking_agreement", 2)
    if a.shape != b.shape:
        raise ConfigError(f"ranking_agreement: score arrays of shapes {a.shape} and {b.shape}")
    n_methods, n_images = a.shape
    method = "mean over images of Spearman rho between two metrics' method rankings"
    if n_methods < 2:
        return Reliability(float("nan"), n_images, n_methods, method,
                           f"undefined: {n_methods} method(s); a ranking needs at least 2")
    a = a if higher_is_better_a else -a
    b = b if higher_is_better_b else -b
    keep = _complete_images(a) & _complete_images(b)
    ra = rankdata(a[:, keep], axis=0)
    rb = rankdata(b[:, keep], axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    den = np.sqrt((ra * ra).sum(0) * (rb * rb).sum(0))
    good = den > 0
    rho = np.clip((ra * rb).sum(0)[good] / den[good], -1.0, 1.0)
    dropped = n_images - int(good.sum())
    note = f"{dropped} image(s) with undefined or all-tied scores left out" if dropped else ""
    if rho.size == 0:
        return Reliability(float("nan"), 0, n_methods, method, "undefined: no usable image" +
                           (f" ({note})" if note else ""))
    return Reliability(float(rho.mean()), int(rho.size), n_methods, method, note,
                       {"per_image": rho.tolist()})
