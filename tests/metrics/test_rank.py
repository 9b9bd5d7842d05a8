"""sanitycheck.metrics.rank against scipy.stats.kendalltau (asymptotic, τ-b) and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sanitycheck.errors import ConfigError, DataError
from sanitycheck.metrics.rank import kendall_tau, topk_overlap


def _random_rows(seed: int, B: int = 60, L: int = 40):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, size=(B, L)).astype(float)  # many ties
    b = a * rng.choice([-1.0, 1.0], size=(B, 1)) + rng.integers(0, 4, size=(B, L))
    # some rows with continuous values (no ties)
    a[::3] = rng.normal(size=(B, L))[::3]
    b[::4] = rng.normal(size=(B, L))[::4]
    lengths = rng.integers(3, L + 1, size=B)
    # garbage in the padding must not matter
    for i, n in enumerate(lengths):
        a[i, n:] = 1e6 * rng.normal(size=L - n)
        b[i, n:] = -7.0
    return a, b, lengths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kendall_tau_matches_scipy(seed):
    a, b, lengths = _random_rows(seed)
    tau, p = kendall_tau(torch.tensor(a), torch.tensor(b), torch.tensor(lengths))
    assert tau.dtype == torch.float64 and p.shape == (a.shape[0],)
    for i, n in enumerate(lengths):
        ref = stats.kendalltau(a[i, :n], b[i, :n], method="asymptotic", variant="b")
        if math.isnan(ref.statistic):
            assert math.isnan(float(tau[i])) and math.isnan(float(p[i]))
            continue
        assert abs(float(tau[i]) - ref.statistic) < 1e-8, (i, n)
        assert abs(float(p[i]) - ref.pvalue) < 1e-6, (i, n)


def test_kendall_tau_nan_cases_and_perfect_order():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[2.0, 4.0, 6.0, 9.0], [1.0, 2.0, 3.0, 4.0], [1.0, 0.0, 0.0, 0.0], [4.0, 3.0, 2.0, 1.0]])
    tau, p = kendall_tau(a, b, torch.tensor([4, 4, 1, 4]))
    assert tau[0] == pytest.approx(1.0) and tau[3] == pytest.approx(-1.0)
    assert math.isnan(tau[1]) and math.isnan(p[1])  # constant a
    assert math.isnan(tau[2]) and math.isnan(p[2])  # shorter than 2
    assert 0 < float(p[0]) < 0.1


def test_kendall_tau_float32_and_shapes():
    a = torch.rand(5, 7)
    tau, _ = kendall_tau(a, a, None)
    assert torch.allclose(tau, torch.ones(5, dtype=torch.float64))
    with pytest.raises(DataError):
        kendall_tau(torch.rand(2, 3), torch.rand(2, 4), None)
    with pytest.raises(DataError):
        kendall_tau(torch.rand(2, 3), torch.rand(2, 3), torch.tensor([1, 5]))


def test_topk_overlap():
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0, 100.0, 100.0]])
    b = torch.tensor([[5.0, 3.0, 4.0, 0.0, 1.0, 2.0], [3.0, 2.0, 1.0, 0.0, -5.0, -5.0]])
    lengths = torch.tensor([6, 4])
    ov = topk_overlap(a, b, lengths, k=2)
    assert ov.tolist() == [0.5, 0.0]
    assert topk_overlap(a, b, lengths, k=3).tolist() == pytest.approx([1.0, 2 / 3])
    # a share: ceil(0.5 * 6) = 3 and ceil(0.5 * 4) = 2
    assert topk_overlap(a, b, lengths, k=0.5).tolist() == pytest.approx([1.0, 0.0])
    assert topk_overlap(a, a, lengths, k=0.1).tolist() == [1.0, 1.0]
    assert topk_overlap(a, b, lengths, k=100).tolist() == [1.0, 1.0]  # capped at the length
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ConfigError):
            topk_overlap(a, b, lengths, k=bad)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_token_kendall_is_scale_free(scale):
    a, b, lengths = _random_rows(7)
    a, b, lengths = torch.tensor(a), torch.tensor(b), torch.tensor(lengths)
    tau, p = kendall_tau(a, b, lengths)
    tau_s, p_s = kendall_tau(a * scale, b / scale, lengths)
    assert torch.equal(torch.isnan(tau), torch.isnan(tau_s))
    ok = ~torch.isnan(tau)
    assert torch.equal(tau[ok], tau_s[ok]) and torch.equal(p[ok], p_s[ok])


def test_token_kendall_zero_row_stays_undefined_after_normalization():
    a = torch.zeros(1, 5, dtype=torch.float64)
    tau, p = kendall_tau(a, torch.arange(5.0, dtype=torch.float64)[None])
    assert torch.isnan(tau).all() and torch.isnan(p).all()
