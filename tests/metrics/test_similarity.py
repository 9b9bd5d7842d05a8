"""Similarity metrics (Adebayo et al. 2018) against scipy and scikit-image references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr
from skimage.feature import hog as skimage_hog
from skimage.metrics import structural_similarity

from sanitycheck.errors import AttributionError
from sanitycheck.metrics.similarity import (
    SIMILARITY_METRICS,
    default_pixels_per_cell,
    hog,
    hog_features,
    rankdata_average,
    spearman,
    spearman_abs,
    ssim,
    ssim_window,
)
from sanitycheck.registry import METRICS


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(b: int, size: int, seed: int = 0, noise: float = 0.7, dtype=torch.float64):
    g = _gen(seed)
    a = torch.randn(b, size, size, generator=g, dtype=torch.float64)
    other = a + noise * torch.randn(b, size, size, generator=g, dtype=torch.float64)
    return a.to(dtype), other.to(dtype)


def _structured(size: int) -> torch.Tensor:
    """Blobs, a ramp, stripes and a step edge, in (4, size, size)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size, dtype=torch.float64),
                            torch.linspace(-1, 1, size, dtype=torch.float64), indexing="ij")
    blob = torch.exp(-((xx - 0.3) ** 2 + (yy + 0.2) ** 2) / 0.1) - 0.5 * torch.exp(-(xx + 0.4) ** 2 / 0.05 - yy ** 2 / 0.3)
    ramp = xx + 0.5 * yy
    stripes = torch.sin(6 * xx + 3 * yy)
    step = (xx > 0.1).double() - 0.3 * (yy < -0.2).double()
    return torch.stack([blob, ramp, stripes, step])


def _norm01(m: torch.Tensor) -> np.ndarray:
    m = m.abs().numpy()
    return (m - m.min()) / (m.max() - m.min())


def _skimage_hog(img: np.ndarray, ppc: int) -> np.ndarray:
    return skimage_hog(img, orientations=9, pixels_per_cell=(ppc, ppc), cells_per_block=(2, 2),
                       block_norm="L2-Hys", feature_vector=True)


# ------------------------------------------------------------------------- ranks

@pytest.mark.parametrize("levels", [3, 10, 1000])
def test_rankdata_average_matches_scipy(levels):
    x = torch.randint(0, levels, (7, 300), generator=_gen(levels)).double() - levels / 2
    x[0] = 5.0  # a constant row: all ranks tie
    ours = rankdata_average(x)
    expected = np.stack([rankdata(row, method="average") for row in x.numpy()])
    np.testing.assert_array_equal(ours.numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64])
def test_rankdata_average_dtypes_signed_zeros_inf_and_nan_rows(dtype):
    """float32-exact dtypes take the radix-sort path on CPU, the others a row-wise sort: same ranks."""
    x = (5 * torch.randn(5, 200, generator=_gen(1))).round().to(dtype)
    if dtype.is_floating_point:
        x[0, :30] = -0.0
        x[0, 30:60] = 0.0  # -0.0 and 0.0 tie
        x[1, 3], x[1, 4] = float("inf"), -float("inf")
        x[2, 7] = float("nan")
    ours = rankdata_average(x)
    assert ours.dtype == torch.float64
    if dtype.is_floating_point:
        assert torch.isnan(ours[2]).all() and not torch.isnan(ours[[0, 1, 3, 4]]).any()
    for i in (0, 1, 3, 4):
        np.testing.assert_array_equal(ours[i].numpy(), rankdata(x[i].double().numpy(), method="average"))


# ------------------------------------------------------------------------- Spearman

@pytest.mark.parametrize("size", [8, 28])
def test_spearman_matches_scipy(size):
    a, b = _pair(5, size, seed=size)
    b[1] = b[1].round(decimals=0)  # many ties
    ours_abs, ours = spearman_abs(a, b), spearman(a, b)
    for i in range(5):
        ref_abs = spearmanr(a[i].abs().flatten().numpy(), b[i].abs().flatten().numpy())[0]
        ref = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0]
        assert abs(ours_abs[i].item() - ref_abs) < 1e-6
        assert abs(ours[i].item() - ref) < 1e-6


def test_spearman_float32_input_returns_float32_close_to_scipy():
    a, b = _pair(3, 16, seed=3, dtype=torch.float32)
    out = spearman(a, b)
    assert out.dtype == torch.float32
    for i in range(3):
        assert abs(out[i].item() - spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0]) < 1e-6


# ------------------------------------------------------------------------- SSIM

@pytest.mark.parametrize("size", [16, 28, 64])
def test_ssim_matches_skimage_random_and_structured(size):
    a, b = _pair(3, size, seed=size)
    s = _structured(size)
    a = torch.cat([a, s])
    b = torch.cat([b, s.roll(shifts=2, dims=2) + 0.1 * torch.randn(s.shape, generator=_gen(9), dtype=torch.float64)])
    win, sigma = ssim_window(size, size)
    assert (win, sigma) == (11, 1.5)
    ours = ssim(a, b)
    ref = [structural_similarity(_norm01(a[i]), _norm01(b[i]), data_range=1.0, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False) for i in range(len(a))]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5, rtol=0)


def test_ssim_small_maps_use_shrunk_window_same_semantics_as_skimage():
    """8x8 maps: window 7 (radius 3), sigma 3 / 3.5, i.e. still truncated at 3.5 sigma as skimage does."""
    win, sigma = ssim_window(8, 8)
    assert win == 7 and sigma == pytest.approx(3 / 3.5)
    a, b = _pair(4, 8, seed=8)
    ours = ssim(a, b)
    ref = [structural_similarity(_norm01(a[i]), _norm01(b[i]), data_range=1.0, gaussian_weights=True,
                                 sigma=sigma, use_sample_covariance=False) for i in range(4)]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5, rtol=0)
    with pytest.raises(AttributionError, match="too small"):
        ssim(torch.rand(1, 2, 9), torch.rand(1, 2, 9))


# ------------------------------------------------------------------------- HOG

@pytest.mark.parametrize("size", [16, 28, 64])
def test_hog_features_match_skimage(size):
    a, _ = _pair(2, size, seed=size)
    maps = torch.cat([a, _structured(size)])
    normed = torch.stack([torch.from_numpy(_norm01(m)) for m in maps])
    ppc = default_pixels_per_cell(size, size)
    ours = hog_features(normed)
    ref = np.stack([_skimage_hog(m, ppc) for m in normed.numpy()])
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5, rtol=0)


def test_hog_features_explicit_cell_size_and_non_square():
    img = torch.rand(2, 30, 45, generator=_gen(4), dtype=torch.float64)
    ours = hog_features(img, pixels_per_cell=6, cells_per_block=3, orientations=7)
    ref = np.stack([skimage_hog(m, orientations=7, pixels_per_cell=(6, 6), cells_per_block=(3, 3),
                                block_norm="L2-Hys") for m in img.numpy()])
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5, rtol=0)


def test_default_pixels_per_cell_rule():
    assert default_pixels_per_cell(8, 8) == 4
    assert default_pixels_per_cell(28, 28) == 4
    assert default_pixels_per_cell(64, 64) == 8
    assert default_pixels_per_cell(224, 224) == 16
    assert default_pixels_per_cell(6, 6) == 2


@pytest.mark.parametrize("size", [16, 28, 64])
def test_hog_metric_is_spearman_of_skimage_hog(size):
    a, b = _pair(3, size, seed=size + 1)
    ppc = default_pixels_per_cell(size, size)
    ours = hog(a, b)
    for i in range(3):
        ref = spearmanr(_skimage_hog(_norm01(a[i]), ppc), _skimage_hog(_norm01(b[i]), ppc))[0]
        assert abs(ours[i].item() - ref) < 1e-6


# ------------------------------------------------------------------------- common properties

@pytest.mark.parametrize("m", SIMILARITY_METRICS, ids=lambda m: m.name)
def test_identical_maps_score_one(m):
    a, _ = _pair(4, 28, seed=5)
    torch.testing.assert_close(m(a, a.clone()), torch.ones(4, dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.parametrize("m", SIMILARITY_METRICS, ids=lambda m: m.name)
def test_constant_map_is_nan_only_for_that_sample(m):
    a, b = _pair(4, 28, seed=6)
    a[1] = 0.0  # e.g. an all-zero Grad-CAM map of a randomized model
    b[2] = 3.5
    out = m(a, b)
    assert torch.isnan(out).tolist() == [False, True, True, False]


@pytest.mark.parametrize("m", SIMILARITY_METRICS, ids=lambda m: m.name)
def test_batched_equals_per_sample(m):
    a, b = _pair(5, 28, seed=7)
    batched = m(a, b)
    single = torch.cat([m(a[i:i + 1], b[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-12, rtol=0)


@pytest.mark.parametrize("m", SIMILARITY_METRICS, ids=lambda m: m.name)
def test_output_shape_dtype_and_bounds(m):
    a, b = _pair(6, 16, seed=8, dtype=torch.float32)
    out = m(a, b)
    assert out.shape == (6,) and out.dtype == torch.float32 and out.device == a.device
    assert ((out >= -1) & (out <= 1)).all()
    assert m.info.higher_is_better and m.info.category == "similarity" and "Adebayo" in (m.__doc__ or "")


@pytest.mark.parametrize("m", SIMILARITY_METRICS, ids=lambda m: m.name)
def test_invalid_inputs_raise_attribution_error(m):
    with pytest.raises(AttributionError, match="shape"):
        m(torch.rand(2, 16, 16), torch.rand(2, 16, 15))
    with pytest.raises(AttributionError, match=r"\(B, H, W\)"):
        m(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
    bad = torch.rand(2, 16, 16)
    bad[1, 3, 3] = float("nan")
    with pytest.raises(AttributionError, match="NaN or inf"):
        m(bad, torch.rand(2, 16, 16))


def test_registry_resolves_metrics():
    for m in SIMILARITY_METRICS:
        assert METRICS.get(m.name) is m


def test_spearman_abs_ignores_sign_spearman_does_not():
    a, _ = _pair(3, 16, seed=10)
    assert torch.allclose(spearman_abs(a, -a), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(spearman(a, -a), -torch.ones(3, dtype=torch.float64))


# ------------------------------------------------------------------ scale cannot change a score (issue 10)
@pytest.mark.parametrize("scale", [1e-30, 1e30, 3.7])
@pytest.mark.parametrize("m", [spearman_abs, spearman], ids=lambda m: m.name)
def test_rank_metrics_are_scale_free_in_float64(m, scale):
    a, b = _pair(5, 16, seed=21)
    a, b = a.to(torch.float64), b.to(torch.float64)
    base = m(a, b)
    assert torch.equal(m(a * scale, b * scale), base)
    assert torch.equal(m(a * scale, b), base)  # one side rescaled only


def test_max_abs_normalize_keeps_zero_maps_zero_and_undefined():
    from sanitycheck.metrics.similarity import max_abs_normalize

    x = torch.tensor([[0.0, 0.0, 0.0], [1e-40, -3e-40, 2e-40], [5.0, 1.0, -2.0]], dtype=torch.float64)
    out = max_abs_normalize(x)
    assert out.dtype == torch.float64 and torch.equal(out[0], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(out[1], torch.tensor([1 / 3, -1.0, 2 / 3], dtype=torch.float64))
    assert out.abs().amax(1).tolist() == [0.0, 1.0, 1.0]
    zero = torch.zeros(2, 16, 16, dtype=torch.float64)
    assert torch.isnan(spearman_abs(zero, torch.rand(2, 16, 16, dtype=torch.float64))).all()


def test_float32_ranks_equal_the_ranks_of_the_normalized_maps():
    """The fast path ranks float32 maps as they are: that is the same as ranking them normalized in float64."""
    from sanitycheck.metrics.similarity import max_abs_normalize, rankdata_average

    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 300, generator=g, dtype=torch.float32)
    x[0] *= 1e-41  # subnormal float32 values
    x[1] = torch.round(x[1] * 4) / 4  # many ties
    x[2, :5] = torch.tensor([1.0, 1.0 + 2 ** -23, 1.0 + 2 ** -22, -0.0, 0.0])  # adjacent float32 values
    assert torch.equal(rankdata_average(x), rankdata_average(max_abs_normalize(x)))
