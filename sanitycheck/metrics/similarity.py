"""Similarity of two batches of saliency maps, after Adebayo et al. 2018.

Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim, "Sanity Checks for Saliency
Maps", NeurIPS 2018, compare the maps of an original model ("reference") with
those of a randomized model ("other") by

* Spearman rank correlation of the absolute-value maps (``spearman_abs``) and of
  the signed maps (``spearman``);
* SSIM of the absolute-value maps, each min-max normalized to [0, 1], with
  Gaussian weights (``ssim``);
* Spearman rank correlation between the HOG feature vectors of the
  absolute-value maps normalized to [0, 1] (``hog``).

Every metric takes two batches ``(B, H, W)`` and returns per-sample scores
``(B,)``, computed batched in torch on the maps' device (no NumPy round-trip,
no Python loop over samples). Internally the work is done in float64 (float32
on devices without float64, e.g. MPS); scores come back in the maps' floating
dtype, promoted to at least float32. A score is NaN exactly where it is
undefined: a constant map has no ranks (Spearman) and no [0, 1] normalization
(SSIM, HOG); a HOG vector that is constant has no ranks either. Maps with NaN
or inf values are rejected with :class:`~sanitycheck.errors.AttributionError`.

Scale cannot change a score: before ranking, each map is divided by its largest
absolute value in float64 (:func:`max_abs_normalize`; a zero map stays zero, and
undefined). For float32/float16/bfloat16 maps this division is monotone and
injective (a float64 quotient of two such values keeps every distinct pair
distinct), so their ranks are computed on the values themselves, on the fast
path, with identical results; SSIM and HOG min-max normalize anyway.

Cross-checked in the tests against ``scipy.stats.spearmanr``,
``skimage.metrics.structural_similarity`` and ``skimage.feature.hog``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import AttributionError
from .base import metric

ADEBAYO_2018 = 'Adebayo et al. 2018, "Sanity Checks for Saliency Maps", NeurIPS'

__all__ = [
    "rankdata_average",
    "spearman_abs",
    "spearman",
    "ssim",
    "hog",
    "hog_features",
    "default_pixels_per_cell",
    "ssim_window",
    "SIMILARITY_METRICS",
    "histogram_entropy",
    "entropy_increase",
    "max_abs_normalize",
]


# ----------------------------------------------------------------------------- helpers

def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 wherever the device has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _out_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.get_default_dtype()


def _check_maps(name: str, *maps: Tensor) -> None:
    for m in maps:
        if not isinstance(m, Tensor):
            raise AttributionError(f"{name}: expected torch tensors of maps (B, H, W), got {type(m).__name__}")
        if m.dim() != 3:
            raise AttributionError(
                f"{name}: expected maps of shape (B, H, W), got shape {tuple(m.shape)} ({m.dim()}-D); "
                "reduce channels to one map per sample first (e.g. sum or max of |channel| values)")
        if m.is_complex():
            raise AttributionError(f"{name}: maps must be real, got dtype {m.dtype}")
    ref = maps[0]
    for m in maps[1:]:
        if m.shape != ref.shape:
            raise AttributionError(
                f"{name}: cannot compare maps of shapes {tuple(ref.shape)} and {tuple(m.shape)}")
        if m.device != ref.device:
            raise AttributionError(f"{name}: maps are on different devices ({ref.device} and {m.device})")
    if ref.shape[0] > 0 and (ref.shape[1] == 0 or ref.shape[2] == 0):
        raise AttributionError(f"{name}: maps of shape {tuple(ref.shape)} have no pixels")
    for m in maps:
        if m.is_floating_point() and m.numel() and not bool(torch.isfinite(m).all()):
            bad = (~torch.isfinite(m)).flatten(1).any(1).nonzero().flatten().tolist()
            raise AttributionError(
                f"{name}: maps contain NaN or inf values (samples {bad[:10]}{'...' if len(bad) > 10 else ''}); "
                "the explainer output is invalid, not a similarity to score")


def _minmax01(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-sample min-max normalization of ``(B, H, W)`` to [0, 1].

    Returns ``(normalized, defined)``; a constant map is not defined and comes back
    as zeros (``x - min`` is exactly 0 there), so downstream arithmetic stays finite
    and callers mask the score.
    """
    flat = x.flatten(1)
    lo = flat.amin(1)
    span = flat.amax(1) - lo
    defined = span > 0
    span = torch.where(defined, span, torch.ones_like(span))
    return (x - lo.view(-1, 1, 1)) / span.view(-1, 1, 1), defined


_FAST_RANK_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def max_abs_normalize(x: Tensor) -> Tensor:
    """Each row of ``(B, N)`` divided by its largest absolute value, in float64 (float32 on MPS).

    A row of zeros stays zero (and so stays undefined for rank statistics). Maps scaled by any positive
    factor (1e-30, 1e30) come out equal up to rounding, so their ranks and scores are the same.
    """
    if x.dim() != 2:
        raise AttributionError(f"max_abs_normalize: expected a (B, N) tensor, got shape {tuple(x.shape)}")
    x = x.to(_work_dtype(x.device))
    if x.numel() == 0:
        return x
    scale = x.abs().amax(dim=1, keepdim=True)
    return torch.where(scale > 0, x / torch.where(scale > 0, scale, torch.ones_like(scale)), x)


def _rank_input(x: Tensor) -> Tensor:
    """``x`` normalized by :func:`max_abs_normalize` as far as ranks can tell: for float32/16/bf16 rows on the
    CPU the normalized ranks equal the ranks of ``x`` itself (dividing by a positive float32 in float64 is
    monotone and keeps distinct values distinct), so ``x`` is returned for the fast radix-sort path."""
    if x.device.type == "cpu" and x.dtype in _FAST_RANK_DTYPES:
        return x
    return max_abs_normalize(x)


def _order_keys32(x: Tensor) -> Tensor:
    """int64 keys in [0, 2**32) whose order and ties are those of ``x`` (float32-exact dtypes)."""
    x = x.to(torch.float32) + 0.0  # -0.0 + 0.0 == +0.0: the two zeros tie, as they compare equal
    bits = x.view(torch.int32).to(torch.int64)
    magnitude = bits & 0x7FFFFFFF
    return torch.where(bits < 0, 0x7FFFFFFF - magnitude, magnitude + 0x80000000)


def rankdata_average(x: Tensor) -> Tensor:
    """Ranks along the last axis of ``(B, N)`` with ties averaged, 1-based.

    Equal to ``scipy.stats.rankdata(row, method="average")`` for every row, fully
    vectorized: one sort, group boundaries where the sorted value changes, and the
    mean position ``(first + last) / 2 + 1`` of each group of ties scattered back.
    On CPU, float32/float16/bfloat16 rows are sorted as one flat stable sort of
    int64 keys ``row << 32 | order-preserving bits`` (PyTorch's radix sort, several
    times faster than a row-wise float sort); other dtypes and devices use a
    row-wise ``torch.sort``. Rows containing NaN get NaN ranks (scipy's default
    ``nan_policy="propagate"``). Returns float64 (float32 on MPS). ``-0.0`` and
    ``0.0`` are ties.
    """
    if x.dim() != 2:
        raise AttributionError(f"rankdata_average: expected a (B, N) tensor, got shape {tuple(x.shape)}")
    b, n = x.shape
    wd = _work_dtype(x.device)
    if n == 0 or b == 0:
        return torch.empty((b, n), dtype=wd, device=x.device)
    device = x.device
    if device.type == "cpu" and x.dtype in _FAST_RANK_DTYPES:
        rows = torch.arange(b, device=device, dtype=torch.int64).unsqueeze(1) << 32
        sorted_keys, order = torch.sort((_order_keys32(x) + rows).flatten(), stable=True)
        new_group = torch.ones(b * n, dtype=torch.bool, device=device)
        new_group[1:] = sorted_keys[1:] != sorted_keys[:-1]  # a new row always starts a new group
    else:
        sorted_x, order = torch.sort(x, dim=1)
        order = (order + torch.arange(b, device=device).unsqueeze(1) * n).flatten()
        new_group = torch.ones(b, n, dtype=torch.bool, device=device)
        new_group[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
        new_group = new_group.flatten()
    group = torch.cumsum(new_group, dim=0) - 1  # group of each sorted element, unique across rows
    starts = new_group.nonzero().flatten()
    ends = torch.empty_like(starts)
    ends[:-1] = starts[1:] - 1
    ends[-1] = b * n - 1
    mean_rank = ((starts % n) + (ends % n)).to(wd) * 0.5 + 1.0  # groups never span rows
    ranks = torch.empty(b * n, dtype=wd, device=device).scatter_(0, order, mean_rank[group]).view(b, n)
    if x.is_floating_point():
        has_nan = torch.isnan(x).any(dim=1, keepdim=True)
        ranks = torch.where(has_nan, torch.full_like(ranks, float("nan")), ranks)
    return ranks


def _pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation per row of ``(B, N)``; NaN where either row has zero variance."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    va = (a * a).sum(1)
    vb = (b * b).sum(1)
    cov = (a * b).sum(1)
    ok = (va > 0) & (vb > 0)
    denom = torch.sqrt(torch.where(ok, va * vb, torch.ones_like(va)))
    r = (cov / denom).clamp(-1.0, 1.0)
    return torch.where(ok, r, torch.full_like(r, float("nan")))


def _spearman_rows(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per row of ``(B, N)`` (Pearson of average ranks)."""
    ranks = rankdata_average(torch.cat([a, b], dim=0))  # one sort for both batches
    return _pearson_rows(ranks[: a.shape[0]], ranks[a.shape[0]:])


# ----------------------------------------------------------------------------- Spearman

@metric("spearman_abs", higher_is_better=True, category="similarity",
        description="Spearman rank correlation of absolute-value maps", reference=ADEBAYO_2018)
def spearman_abs(reference: Tensor, other: Tensor) -> Tensor:
    """Spearman rank correlation of the absolute-value maps, per sample (Adebayo et al. 2018).

    Post-processing: ``|map|``, flattened over ``(H, W)``. Ranks with ties averaged,
    Pearson correlation of the ranks in float64 (equals ``scipy.stats.spearmanr``).
    NaN where either map is constant in absolute value (e.g. all zero).
    """
    _check_maps("spearman_abs", reference, other)
    a = _rank_input(reference.flatten(1).abs())  # normalized by the largest |value| (scale-free)
    b = _rank_input(other.flatten(1).abs())
    return _spearman_rows(a, b).to(_out_dtype(reference))


@metric("spearman", higher_is_better=True, category="similarity",
        description="Spearman rank correlation of signed maps", reference=ADEBAYO_2018)
def spearman(reference: Tensor, other: Tensor) -> Tensor:
    """Spearman rank correlation of the signed maps, per sample (Adebayo et al. 2018).

    Post-processing: none (signed values), flattened over ``(H, W)``. Ranks with
    ties averaged, Pearson correlation of the ranks in float64 (equals
    ``scipy.stats.spearmanr``). NaN where either map is constant.
    """
    _check_maps("spearman", reference, other)
    a = _rank_input(reference.flatten(1))  # normalized by the largest |value| (scale-free, sign kept)
    b = _rank_input(other.flatten(1))
    return _spearman_rows(a, b).to(_out_dtype(reference))


# ----------------------------------------------------------------------------- SSIM

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage's value with gaussian_weights=True: an 11-tap window for sigma 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def ssim_window(height: int, width: int) -> Tuple[int, float]:
    """Window size and Gaussian sigma that :func:`ssim` uses for maps of ``height x width``.

    The standard window (Wang et al. 2004, skimage with ``gaussian_weights=True``) is
    sigma 1.5 truncated at 3.5 sigma: radius ``int(3.5 * 1.5 + 0.5) = 5``, 11 taps.
    Maps smaller than 11 px on a side (e.g. 8x8 digits) get the largest odd window
    ``w = 2r + 1`` that fits, with ``sigma = r / 3.5`` so that the Gaussian is still
    truncated at 3.5 sigma. This is exactly what
    ``structural_similarity(a, b, data_range=1, gaussian_weights=True, sigma=sigma,
    use_sample_covariance=False)`` computes for that sigma (skimage derives the same
    radius ``int(3.5 * sigma + 0.5) = r`` from it). Maps under 3 px on a side have no
    window and raise :class:`AttributionError`.
    """
    side = min(height, width)
    radius_std = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if side >= 2 * radius_std + 1:
        return 2 * radius_std + 1, SSIM_SIGMA
    if side < 3:
        raise AttributionError(
            f"ssim: maps of {height}x{width} are too small for a structural similarity window (need >= 3x3)")
    r = (side - 1) // 2
    return 2 * r + 1, r / SSIM_TRUNCATE


def _gaussian_kernel1d(sigma: float, radius: int, dtype, device) -> Tensor:
    """The kernel of ``scipy.ndimage.gaussian_filter1d`` (order 0) for ``sigma`` and ``radius``."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 / (sigma * sigma) * x * x)
    return (phi / phi.sum()).to(dtype=dtype, device=device)


def _band_matrix(kernel: Tensor, size: int) -> Tensor:
    """``(size, size - k + 1)`` matrix M with ``(x @ M)[j] = sum_t kernel[t] * x[j + t]``: a 'valid' 1-D filter."""
    k = kernel.numel()
    d = torch.arange(size, device=kernel.device).view(-1, 1) - torch.arange(size - k + 1, device=kernel.device)
    inside = (d >= 0) & (d < k)
    return torch.where(inside, kernel[d.clamp(0, k - 1)], torch.zeros((), dtype=kernel.dtype, device=kernel.device))


def _filter_valid(x: Tensor, kernel: Tensor) -> Tensor:
    """Separable 'valid' filtering of ``(N, H, W)`` with a 1-D kernel, as two banded matmuls.

    On CPU in float64 this is several times faster than ``conv2d`` with 1-D kernels.
    """
    rows = _band_matrix(kernel, x.shape[-1])  # (W, W')
    cols = _band_matrix(kernel, x.shape[-2]).T  # (H', H)
    return torch.matmul(cols, torch.matmul(x, rows))


@metric("ssim", higher_is_better=True, category="similarity",
        description="SSIM of absolute-value maps normalized to [0, 1], Gaussian window",
        reference=ADEBAYO_2018)
def ssim(reference: Tensor, other: Tensor) -> Tensor:
    """Structural similarity of the absolute-value maps, per sample (Adebayo et al. 2018).

    Post-processing: ``|map|``, then per-sample min-max normalization to [0, 1].
    SSIM (Wang et al. 2004) with Gaussian weights sigma 1.5 truncated at 3.5 sigma
    (11-tap window), population covariances, ``data_range=1``, ``K1=0.01``,
    ``K2=0.03``, averaged over the interior (the ``(win-1)//2`` border strip is
    ignored): equal to ``skimage.metrics.structural_similarity(a, b, data_range=1.0,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``, computed here
    with a 'valid' separable Gaussian convolution. Maps smaller than 11 px on a side
    use a smaller window, see :func:`ssim_window`. NaN where either map is constant.
    """
    _check_maps("ssim", reference, other)
    b, h, w = reference.shape
    win, sigma = ssim_window(h, w)
    wd = _work_dtype(reference.device)
    if b == 0:
        return torch.empty(0, dtype=_out_dtype(reference), device=reference.device)
    x, dx = _minmax01(reference.to(wd).abs())
    y, dy = _minmax01(other.to(wd).abs())
    kernel = _gaussian_kernel1d(sigma, (win - 1) // 2, wd, reference.device)
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=0)  # (5B, H, W)
    ux, uy, uxx, uyy, uxy = _filter_valid(stacked, kernel).split(b, dim=0)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (SSIM_K1 * 1.0) ** 2
    c2 = (SSIM_K2 * 1.0) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    score = s.flatten(1).mean(1)
    score = torch.where(dx & dy, score, torch.full_like(score, float("nan")))
    return score.to(_out_dtype(reference))


# ----------------------------------------------------------------------------- HOG

def default_pixels_per_cell(height: int, width: int, cells_per_block: int = 2) -> int:
    """The HOG cell size :func:`hog` uses for maps of ``height x width``.

    Rule on the smaller side ``s``: 4 px for ``s <= 32`` (MNIST-sized maps: 7x7 cells
    at 28 px), 8 px for ``s <= 128``, 16 px above (14x14 cells at 224 px); halved
    while fewer than ``cells_per_block`` cells fit (8x8 digits: 4 px, 2x2 cells).
    """
    s = min(height, width)
    ppc = 4 if s <= 32 else 8 if s <= 128 else 16
    while ppc > 1 and s // ppc < cells_per_block:
        ppc //= 2
    return ppc


def hog_features(maps: Tensor, orientations: int = 9, pixels_per_cell: Optional[int] = None,
                 cells_per_block: int = 2) -> Tensor:
    """Batched HOG descriptors of ``(B, H, W)`` maps, one feature vector per map.

    Reproduces ``skimage.feature.hog(img, orientations, pixels_per_cell=(p, p),
    cells_per_block=(c, c), block_norm="L2-Hys", feature_vector=True)`` (no
    ``transform_sqrt``): central-difference gradients with zero gradient on the
    border rows/columns; magnitude ``hypot``; unsigned orientation
    ``rad2deg(atan2(g_row, g_col)) % 180`` binned as skimage does (bin ``i`` holds
    ``[i, i+1) * 180/orientations`` with float32 bin edges; an angle that rounds to
    exactly 180 falls in no bin, as in skimage); per-cell sum of magnitudes divided by
    the cell area over whole cells only (pixels beyond the last whole cell are
    ignored); blocks of ``c x c`` cells with stride one cell, L2-Hys normalized
    (eps 1e-5, clip 0.2); flattened in skimage's order (block row, block column,
    cell row, cell column, orientation).

    ``pixels_per_cell=None`` picks :func:`default_pixels_per_cell`. Returns
    ``(B, n_features)`` in float64 (float32 on MPS). skimage accumulates cell sums in
    float32, so values agree to about 1e-7, not bit for bit.
    """
    if not isinstance(maps, Tensor) or maps.dim() != 3:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise AttributionError(f"hog_features: expected maps of shape (B, H, W), got {shape}")
    b, h, w = maps.shape
    if orientations < 1:
        raise AttributionError(f"hog_features: orientations must be >= 1, got {orientations}")
    c = int(pixels_per_cell) if pixels_per_cell is not None else default_pixels_per_cell(h, w, cells_per_block)
    ncr, ncc = h // c, w // c
    nbr, nbc = ncr - cells_per_block + 1, ncc - cells_per_block + 1
    if c < 1 or nbr <= 0 or nbc <= 0:
        raise AttributionError(
            f"hog_features: maps of {h}x{w} are too small for pixels_per_cell={c} and "
            f"cells_per_block={cells_per_block} (need at least {cells_per_block * c} px per side)")
    wd = _work_dtype(maps.device)
    img = maps.to(wd)
    # central differences, zero on the border rows/columns; only whole cells contribute
    hh, ww = ncr * c, ncc * c
    g_row = F.pad(img[:, 2:, :ww] - img[:, :-2, :ww], (0, 0, 1, 1))[:, :hh]
    g_col = F.pad(img[:, :hh, 2:] - img[:, :hh, :-2], (1, 1))[:, :, :ww]
    magnitude = torch.hypot(g_col, g_row)
    angle = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)
    # skimage's bin edges are C floats: float32(float32(180 / n) * (i + 1))
    per_bin = torch.tensor(180.0 / orientations, dtype=torch.float32)
    edges = (per_bin * torch.arange(1, orientations + 1, dtype=torch.float32)).to(device=maps.device, dtype=wd)
    # bin i  <=>  edge[i-1] <= angle < edge[i]; bin n (angle rounded up to 180) goes to a discarded slot
    bins = torch.bucketize(angle, edges, right=True)
    rows = torch.arange(hh, device=maps.device) // c
    cols = torch.arange(ww, device=maps.device) // c
    cell = rows.view(-1, 1) * ncc + cols.view(1, -1)  # (H', W') cell index
    index = (cell * (orientations + 1) + bins).reshape(b, -1)
    hist = torch.zeros(b, ncr * ncc * (orientations + 1), dtype=wd, device=maps.device)
    hist.scatter_add_(1, index, magnitude.reshape(b, -1))
    hist = hist.view(b, ncr, ncc, orientations + 1)[..., :orientations] / (c * c)
    # blocks: (B, nbr, nbc, n, cb, cb) -> (B, nbr, nbc, cb, cb, n)
    blocks = hist.unfold(1, cells_per_block, 1).unfold(2, cells_per_block, 1).permute(0, 1, 2, 4, 5, 3)
    blocks = blocks.reshape(b, nbr, nbc, -1)
    eps = 1e-5
    out = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + eps ** 2)
    out = out.clamp(max=0.2)
    out = out / torch.sqrt((out * out).sum(-1, keepdim=True) + eps ** 2)
    return out.reshape(b, -1)


@metric("hog", higher_is_better=True, category="similarity",
        description="Spearman rank correlation of HOG features of |maps| normalized to [0, 1]",
        reference=ADEBAYO_2018)
def hog(reference: Tensor, other: Tensor) -> Tensor:
    """Spearman rank correlation between HOG feature vectors, per sample (Adebayo et al. 2018).

    Post-processing: ``|map|``, per-sample min-max normalization to [0, 1], then
    :func:`hog_features` (9 orientations, L2-Hys blocks of 2x2 cells, cell size by
    :func:`default_pixels_per_cell`: 4 px up to 32 px maps, 8 px up to 128, 16 above),
    equal to ``skimage.feature.hog``. Spearman as in :func:`spearman`. NaN where
    either map is constant, or where a HOG vector is constant.
    """
    _check_maps("hog", reference, other)
    b = reference.shape[0]
    if b == 0:
        return torch.empty(0, dtype=_out_dtype(reference), device=reference.device)
    wd = _work_dtype(reference.device)
    x, dx = _minmax01(reference.to(wd).abs())
    y, dy = _minmax01(other.to(wd).abs())
    feats = hog_features(torch.cat([x, y], dim=0))
    score = _spearman_rows(feats[:b], feats[b:])
    score = torch.where(dx & dy, score, torch.full_like(score, float("nan")))
    return score.to(_out_dtype(reference))


SIMILARITY_METRICS = (spearman_abs, spearman, ssim, hog)


# ----------------------------------------------------------------------------- eMPRT entropy increase

HEDSTROM_2023 = ('Hedström et al. 2023, "Sanity Checks Revisited: An Exploration to Repair the Model '
                 'Parameter Randomisation Test", XAI in Action workshop, NeurIPS')
ENTROPY_BINS = 100


def histogram_entropy(maps: Tensor, n_bins: int = ENTROPY_BINS) -> Tensor:
    """Shannon entropy (nats) of each map's ``n_bins``-bin histogram, ``(B, H, W) -> (B,)``.

    The bins are ``n_bins`` equal-width bins over each map's own ``[min, max]`` (the last bin
    closed), the values as they are (signed): ``scipy.stats.entropy(np.histogram(map, bins=n_bins)[0])``,
    batched: bin edges ``min + k * (max - min) / n_bins`` as ``np.linspace`` computes them, the bin
    of each value by ``torch.searchsorted`` on its row's edges, counts by ``scatter_add_``. A
    constant map has all its values in one bin and entropy 0. Because the bins follow each
    map's range, the entropy is invariant to a positive affine rescaling of the map (a min-max
    normalization first would change nothing). Returns float64 (float32 on MPS).
    """
    _check_maps("histogram_entropy", maps)
    if int(n_bins) < 1:
        raise AttributionError(f"histogram_entropy: n_bins must be >= 1, got {n_bins}")
    b = maps.shape[0]
    wd = _work_dtype(maps.device)
    if b == 0:
        return torch.empty(0, dtype=wd, device=maps.device)
    flat = maps.flatten(1).to(wd)
    lo = flat.amin(1, keepdim=True)
    hi = flat.amax(1, keepdim=True)
    span = hi - lo
    constant = (span == 0).squeeze(1)
    k = torch.arange(n_bins + 1, dtype=wd, device=maps.device)
    edges = k * (span / n_bins) + lo  # np.linspace: arange * step + start ...
    edges[:, -1] = hi.squeeze(1)  # ... with the end point exact
    index = torch.searchsorted(edges.contiguous(), flat.contiguous(), right=True) - 1
    index = index.clamp_(0, n_bins - 1)  # the maximum falls in the last (closed) bin
    index = torch.where(constant.unsqueeze(1), torch.zeros_like(index), index)
    counts = torch.zeros(b, n_bins, dtype=wd, device=maps.device)
    counts.scatter_add_(1, index, torch.ones_like(flat))
    p = counts / flat.shape[1]
    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    return -plogp.sum(1)


@metric("entropy_increase", higher_is_better=True, category="randomization", identity=0.0,
        description="relative rise of the maps' 100-bin histogram entropy, (H(other) - H(reference)) / "
                    "H(reference) (eMPRT)", reference=HEDSTROM_2023)
def entropy_increase(reference: Tensor, other: Tensor) -> Tensor:
    """Efficient MPRT score (Hedström et al. 2023): ``(H(other) - H(reference)) / H(reference)``.

    ``reference``: the trained model's maps; ``other``: the fully randomized model's maps. ``H``
    is :func:`histogram_entropy`: the Shannon entropy, in nats, of a 100-bin histogram with
    equal-width bins over each map's own range, on the *signed* map values. This is Quantus'
    ``EfficientMPRT`` with its defaults (``abs=False``, ``normalise=False``, complexity function
    ``discrete_entropy`` = ``scipy.stats.entropy(np.histogram(a, bins=100)[0])``, ``n_bins`` 100 when
    no binning rule is given), per sample. For non-negative maps (|gradient|, Grad-CAM) it equals
    the entropy of the |map| histogram; min-max normalization first would change nothing (the
    bins follow each map's range). Higher is better: a model-sensitive explainer's map becomes
    more disordered (higher entropy) when the model is randomized.

    NaN exactly where ``H(reference) = 0``, i.e. where the reference map is constant (a
    non-constant map puts its minimum and maximum in different bins). A constant ``other``
    map has ``H = 0`` and scores ``-1``.
    """
    _check_maps("entropy_increase", reference, other)
    b = reference.shape[0]
    if b == 0:
        return torch.empty(0, dtype=_out_dtype(reference), device=reference.device)
    h = histogram_entropy(torch.cat([reference, other.to(reference.dtype)], dim=0))
    h_ref, h_other = h[:b], h[b:]
    defined = h_ref > 0
    safe = torch.where(defined, h_ref, torch.ones_like(h_ref))
    score = torch.where(defined, (h_other - h_ref) / safe, torch.full_like(h_ref, float("nan")))
    return score.to(_out_dtype(reference))
