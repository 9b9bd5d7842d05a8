"""GradientSHAP (expected gradients): exact on a linear model, the estimator's formula, determinism, batch
invariance, common random numbers across model states."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import digits_batch, make_tiny_cnn
from sanitycheck.errors import ConfigError
from sanitycheck.explainers.gradient_shap import GradientShap


def _linear(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    return model.eval()


def test_gradient_shap_on_a_linear_model_is_w_times_x_minus_mean_baseline():
    model = _linear()
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 0])
    e = GradientShap(n_samples=7, seed=3, channel_reduction="sum")
    maps = e(model, x, y)
    mean_base = e.baselines(x).mean(dim=1)
    w = model[1].weight.reshape(4, 3, 8, 8)[y]
    torch.testing.assert_close(maps, (w * (x - mean_base)).sum(1), rtol=1e-5, atol=1e-6)
    # and E[baseline] of the uniform draw is the middle of each sample's range, to sampling tolerance
    big = GradientShap(n_samples=4000, seed=3).baselines(x[:1]).mean(dim=1)
    mid = (x[0].amax() + x[0].amin()) / 2
    assert (big - mid).abs().max() < 0.05


def test_gradient_shap_is_the_expected_gradients_estimator():
    model = make_tiny_cnn()
    x, y = digits_batch(2)
    e = GradientShap(n_samples=3, seed=0)
    base, alpha = e.baselines(x), e.alphas(x)
    assert base.shape == (2, 3, 1, 16, 16) and alpha.shape == (2, 3) and ((alpha >= 0) & (alpha < 1)).all()
    expected = torch.zeros(2, 1, 16, 16)
    for i in range(2):
        for k in range(3):
            p = (base[i, k] + alpha[i, k] * (x[i] - base[i, k])).unsqueeze(0).requires_grad_(True)
            (g,) = torch.autograd.grad(model(p)[0, y[i]], p)
            expected[i] += g[0] * (x[i] - base[i, k]) / 3
    torch.testing.assert_close(e(model, x, y), expected.sum(1), rtol=1e-5, atol=1e-6)


def test_gradient_shap_is_deterministic_batch_invariant_and_seeded():
    model = make_tiny_cnn()
    x, y = digits_batch(6)
    e = GradientShap(n_samples=5, seed=1, max_batch=7)
    full = e(model, x, y)
    assert torch.equal(full, e(model, x, y))
    torch.testing.assert_close(e(model, x[2:4], y[2:4]), full[2:4], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(GradientShap(n_samples=5, seed=1, max_batch=256)(model, x, y), full,
                               rtol=1e-5, atol=1e-7)
    assert not torch.allclose(type(e)(**{**e.config(), "seed": 2})(model, x, y), full)
    doubled = type(e)(**{**e.config(), "n_samples": 10})
    assert doubled.evaluations_per_map((1, 1, 16, 16)) == 10 and e.evaluations_per_map((1, 1, 16, 16)) == 5


def test_gradient_shap_uses_the_same_draws_in_every_model_state():
    x, y = digits_batch(3)
    e = GradientShap(n_samples=4)
    assert torch.equal(e.baselines(x), e.baselines(x.clone())) and torch.equal(e.alphas(x), e.alphas(x.clone()))
    # the draws depend on the input, not the model: on two linear models, each map is w_m * (x - the same mean)
    mean_base = e.baselines(x).mean(1)
    for seed in (0, 1):
        model = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
        with torch.no_grad():
            model[1].weight.copy_(torch.randn(10, 256, generator=torch.Generator().manual_seed(seed)))
        w = model[1].weight.reshape(10, 1, 16, 16)[y]
        torch.testing.assert_close(e(model.eval(), x, y), (w * (x - mean_base)).sum(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"n_samples": 0}, {"max_batch": 0}])
def test_bad_sample_counts_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="must be >= 1"):
        GradientShap(**kwargs)


def test_gradient_shap_runs_on_efficientnet_lite0():
    from sanitycheck.models.efficientnet_lite import efficientnet_lite0

    model = efficientnet_lite0(weights=None)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    maps = GradientShap(n_samples=2)(model, x, torch.tensor([7]))
    assert maps.shape == (1, 224, 224) and maps.abs().sum() > 0


def test_gradient_shap_explains_a_clip_similarity_image_batch(sim, batch):
    """Registered for image_text: it needs only the gradient of the similarity score of the image."""
    x, y = batch
    e = GradientShap(n_samples=3)
    maps = e(sim, x, y)
    assert maps.shape == (4, *x.shape[2:]) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    torch.testing.assert_close(e(sim, x[1:3], y[1:3]), maps[1:3], rtol=1e-4, atol=1e-6)
