"""Bootstrap confidence intervals of per-sample scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sanitycheck.errors import ConfigError
from sanitycheck.stats import Summary, bootstrap_ci, bootstrap_ci_many


def _scores(n: int, seed: int = 0) -> torch.Tensor:
    return 0.4 + 0.2 * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ci_contains_mean_and_mean_is_exact():
    v = _scores(200)
    s = bootstrap_ci(v, seed_parts=(0, "bootstrap", "x"))
    assert s.mean == pytest.approx(v.mean().item(), abs=1e-12)
    assert s.ci_low < s.mean < s.ci_high
    assert (s.n, s.n_undefined) == (200, 0)
    # percentile bootstrap of the mean: roughly mean +- 1.96 * sd / sqrt(n)
    half = 1.96 * v.std().item() / math.sqrt(200)
    assert s.ci_high - s.ci_low == pytest.approx(2 * half, rel=0.2)


def test_deterministic_for_equal_seed_parts_and_different_otherwise():
    v = _scores(50)
    a = bootstrap_ci(v, seed_parts=(1, "bootstrap", "gradient"))
    b = bootstrap_ci(v.clone(), seed_parts=(1, "bootstrap", "gradient"))
    c = bootstrap_ci(v, seed_parts=(2, "bootstrap", "gradient"))
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_narrows_with_more_samples():
    widths = []
    for n in (20, 200, 2000):
        s = bootstrap_ci(_scores(n, seed=n), seed_parts=(0,))
        widths.append(s.ci_high - s.ci_low)
    assert widths[0] > widths[1] > widths[2]


def test_wider_with_higher_confidence():
    v = _scores(100)
    s90 = bootstrap_ci(v, seed_parts=(0,), confidence=0.9)
    s99 = bootstrap_ci(v, seed_parts=(0,), confidence=0.99)
    assert s99.ci_low < s90.ci_low and s99.ci_high > s90.ci_high


def test_nans_are_dropped_and_counted():
    v = _scores(40)
    with_nan = v.clone()
    with_nan[[3, 17, 30]] = float("nan")
    s = bootstrap_ci(with_nan, seed_parts=(0,))
    assert (s.n, s.n_undefined) == (37, 3)
    kept = v[[i for i in range(40) if i not in (3, 17, 30)]]
    assert s.mean == pytest.approx(kept.mean().item(), abs=1e-12)
    # same draws as giving only the defined values
    alone = bootstrap_ci(kept, seed_parts=(0,))
    assert alone.n == 37 and alone.n_undefined == 0
    for field in ("mean", "ci_low", "ci_high"):
        assert getattr(s, field) == pytest.approx(getattr(alone, field), abs=1e-12)


def test_edge_cases_zero_one_and_constant():
    assert bootstrap_ci(torch.full((5,), float("nan")), seed_parts=(0,)) == Summary(None, None, None, 0, 5)
    assert bootstrap_ci(torch.empty(0), seed_parts=(0,)) == Summary(None, None, None, 0, 0)
    assert bootstrap_ci(torch.tensor([0.3, float("nan")], dtype=torch.float64), seed_parts=(0,)) == Summary(0.3, 0.3, 0.3, 1, 1)
    assert bootstrap_ci(torch.full((9,), 0.1), seed_parts=(0,)) == Summary(
        torch.tensor(0.1).double().item(), torch.tensor(0.1).double().item(), torch.tensor(0.1).double().item(), 9, 0)


def test_many_matches_single_rows_and_handles_nans_per_row():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(6, 30, generator=g, dtype=torch.float64)
    v[1, :5] = float("nan")
    v[2] = float("nan")
    v[3, 1:] = float("nan")
    v[4, ::2] = float("nan")
    many = bootstrap_ci_many(v, seed_parts=(7, "x"))
    assert len(many) == 6
    for i in range(6):
        alone = bootstrap_ci(v[i], seed_parts=(7, "x"))
        assert (many[i].n, many[i].n_undefined) == (alone.n, alone.n_undefined)
        for field in ("mean", "ci_low", "ci_high"):
            a, b = getattr(many[i], field), getattr(alone, field)
            assert (a is None and b is None) or a == pytest.approx(b, abs=1e-12)
    assert [s.n_undefined for s in many] == [0, 5, 30, 29, 15, 0]
    assert many[2].mean is None
    for i in (0, 1, 4, 5):
        row = v[i][~torch.isnan(v[i])]
        assert many[i].mean == pytest.approx(row.mean().item(), abs=1e-12)
        assert many[i].ci_low <= many[i].mean <= many[i].ci_high


def test_percentile_bootstrap_matches_numpy_reference():
    """Same resample indices, numpy percentile of the resample means."""
    from sanitycheck.seeding import generator

    v = _scores(25, seed=4)
    s = bootstrap_ci(v, seed_parts=(5,), n_resamples=500)
    idx = torch.randint(0, 25, (500, 25), generator=generator(5)).numpy()
    means = v.numpy()[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert s.ci_low == pytest.approx(lo, abs=1e-12) and s.ci_high == pytest.approx(hi, abs=1e-12)


def test_invalid_arguments():
    v = _scores(10)
    with pytest.raises(ConfigError):
        bootstrap_ci(v, seed_parts=(0,), confidence=1.0)
    with pytest.raises(ConfigError):
        bootstrap_ci(v, seed_parts=(0,), n_resamples=0)
    with pytest.raises(ConfigError):
        bootstrap_ci(v, seed_parts=0)
    with pytest.raises(ConfigError):
        bootstrap_ci(v.view(2, 5), seed_parts=(0,))
    with pytest.raises(ConfigError):
        bootstrap_ci(torch.tensor([1.0, float("inf")]), seed_parts=(0,))
