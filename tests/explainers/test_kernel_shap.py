"""KernelSHAP (sanitycheck.explainers.kernel_shap): exact on linear models, seeded, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sanitycheck.errors import ConfigError
from sanitycheck.explainers.kernel_shap import KernelShap, shapley_kernel_coalitions
from tests.helpers import digits_batch, make_tiny_cnn


def _linear(n_in=784, n_out=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_out)).eval()


@pytest.mark.parametrize("baseline", [0.0, 0.25, "blur"])
def test_linear_model_recovers_w_times_x_minus_baseline_per_superpixel(baseline):
    # f(x) = w.x + b masked to the baseline is exactly linear in the coalition, so the constrained least squares
    # recovers the Shapley values exactly for any full-rank set of coalitions: the only error is float32
    # rounding of the model outputs (~1e-7 relative), hence atol 1e-5 on values of order 0.1-1.
    model = _linear()
    x, _ = digits_batch(3, size=28)
    e = KernelShap(n_samples=100, baseline=baseline)
    maps = e(model, x, torch.tensor([0, 1, 2]))
    segs = e.superpixels(x)
    base = e.baselines(x)
    for i in range(3):
        w = model[1].weight[i].detach().reshape(1, 28, 28)
        contrib = (w * (x[i] - base[i])).sum(0).flatten()
        per_segment = torch.zeros(int(segs[i].max()) + 1).index_add_(0, segs[i].flatten(), contrib)
        assert per_segment.abs().max() > 1e-2
        torch.testing.assert_close(maps[i], per_segment[segs[i]], atol=1e-5, rtol=0)


def test_efficiency_on_a_cnn():
    model = make_tiny_cnn()
    x, y = digits_batch(2)
    e = KernelShap(n_samples=64)
    maps = e(model, x, y)
    segs = e.superpixels(x)
    with torch.no_grad():
        delta = model(x).gather(1, y[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, y[:, None])[:, 0]
    for i in range(2):
        phi = torch.zeros(int(segs[i].max()) + 1).index_put_((segs[i].flatten(),), maps[i].flatten())
        torch.testing.assert_close(phi.sum(), delta[i], atol=1e-4, rtol=1e-4)


def test_coalitions_follow_the_shapley_kernel_size_distribution():
    m, n = 8, 20000
    u = torch.rand((n + 1) // 2, m + 1, generator=torch.Generator().manual_seed(0))
    z = shapley_kernel_coalitions(u, m, n)
    assert z.shape == (n, m)
    assert torch.equal(z[1::2], 1 - z[0::2])  # paired with complements
    sizes = z.sum(1).long()
    assert sizes.min() >= 1 and sizes.max() <= m - 1
    k = torch.arange(1, m, dtype=torch.float64)
    p = (m - 1) / (k * (m - k))
    p = p / p.sum()
    freq = torch.bincount(sizes, minlength=m)[1:].double() / n
    torch.testing.assert_close(freq, p, atol=0.015, rtol=0)


def test_deterministic_batch_invariant_and_seeded():
    model = make_tiny_cnn()
    x, y = digits_batch(4)
    e = KernelShap(n_samples=60, max_batch=33)
    both = e(model, x, y)
    assert torch.equal(both, e(model, x, y))
    alone = KernelShap(n_samples=60, max_batch=5)(model, x[1:2], y[1:2])
    torch.testing.assert_close(alone[0], both[1], atol=1e-5, rtol=1e-4)
    assert not torch.equal(type(e)(**{**e.config(), "seed": 7})(model, x, y), both)
    assert type(e)(**{**e.config(), "n_samples": 120}).evaluations_per_map((1, 16, 16)) == 122


def test_too_few_samples_is_a_clear_error():
    model = make_tiny_cnn()
    x, y = digits_batch(1)
    m = int(KernelShap().superpixels(x)[0].max()) + 1
    with pytest.raises(ConfigError, match=rf"n_samples={2 * m - 3} is too few for the {m} superpixels.*{2 * (m - 1)}"):
        KernelShap(n_samples=2 * m - 3)(model, x, y)
    KernelShap(n_samples=2 * (m - 1))(model, x, y)  # exactly 2 (M - 1) is allowed


def test_baseline_of_the_wrong_shape_names_both_shapes():
    model = make_tiny_cnn()
    x, y = digits_batch(1)
    with pytest.raises(ConfigError, match=r"\(1, 8, 8\).*\(1, 16, 16\)"):
        KernelShap(n_samples=50, baseline=torch.zeros(1, 8, 8))(model, x, y)
    with pytest.raises(ConfigError, match="baseline"):
        KernelShap(baseline="mean")
    ok = KernelShap(n_samples=50, baseline=torch.zeros(1, 16, 16))(model, x, y)
    torch.testing.assert_close(ok, KernelShap(n_samples=50, baseline=0.0)(model, x, y))
