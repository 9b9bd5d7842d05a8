"""DeepLIFT (Rescale) and DeepLIFT-SHAP against captum, summation-to-delta, determinism and batch invariance."""

from __future__ import annotations

import captum.attr
import pytest
import torch
from torch import nn

from helpers import digits_batch, make_tiny_cnn
from sanitycheck.errors import NotApplicableError
from sanitycheck.explainers.deeplift import DeepLift
from sanitycheck.explainers.deeplift_shap import DeepLiftShap
from sanitycheck.models.efficientnet_lite import ReLU6


class ReluNet(nn.Module):
    """conv -> ReLU6 subclass of nn.ReLU (as efficientnet_lite0's) -> conv -> ReLU -> flatten -> linear."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act1 = act
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(self.flatten(self.act2(self.conv2(self.act1(self.conv1(x))))))


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 3)

    def forward(self, x):
        return self.fc(torch.relu(x.flatten(1)))


def _relu_net(act: nn.Module) -> ReluNet:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = ReluNet(act)
        model.conv1.weight.data *= 4.0  # push some units past ReLU6's clip at 6
    return model.eval()


def test_deeplift_matches_captum_deeplift_on_a_cnn():
    model = make_tiny_cnn()
    x, y = digits_batch(6)
    ours = DeepLift(baseline=0.25)(model, x, y)
    ref = captum.attr.DeepLift(model).attribute(x.clone().requires_grad_(True), baselines=0.25, target=y)
    torch.testing.assert_close(ours, ref.detach().sum(dim=1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("act", [nn.ReLU, ReLU6], ids=["relu", "relu6_subclass"])
def test_deeplift_sums_to_the_difference_of_outputs(act):
    model = _relu_net(act())
    x, _ = digits_batch(5)
    y = torch.tensor([0, 1, 2, 3, 4])
    maps = DeepLift()(model, x, y)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, y[:, None]).flatten()
    torch.testing.assert_close(maps.flatten(1).sum(1), delta, rtol=1e-4, atol=1e-5)


def test_a_relu_subclass_gets_the_rescale_rule_not_its_gradient():
    """captum matches nonlinearities by exact type: on a ReLU6(nn.ReLU) model its DeepLift keeps the gradient of
    the activation and misses summation-to-delta; ours does not."""
    model = _relu_net(ReLU6())
    x, _ = digits_batch(5)
    y = torch.zeros(5, dtype=torch.long)
    captum_maps = captum.attr.DeepLift(model).attribute(x.clone().requires_grad_(True), baselines=0.0, target=y)
    ours = DeepLift()(model, x, y)
    assert not torch.allclose(ours, captum_maps.detach().sum(1), atol=1e-4)


def test_deeplift_without_a_nonlinearity_module_is_not_applicable():
    with pytest.raises(NotApplicableError, match="no nonlinearity module"):
        DeepLift()(FunctionalRelu().eval(), torch.rand(2, 1, 16, 16), torch.tensor([0, 1]))


def test_deeplift_leaves_the_model_as_it_was(snapshot, same_snapshot):
    model = make_tiny_cnn()
    x, y = digits_batch(3)
    before = snapshot(model)
    DeepLift()(model, x, y)
    DeepLiftShap(n_samples=3)(model, x, y)
    same_snapshot(before, snapshot(model))


def test_deeplift_shap_matches_captum_deeplift_shap_on_the_same_baselines():
    model = make_tiny_cnn()
    x, y = digits_batch(3)
    e = DeepLiftShap(n_samples=5, seed=4)
    ours = e(model, x, y)
    base = e.baselines(x)
    assert base.shape == (3, 5, 1, 16, 16)
    for i in range(3):
        ref = captum.attr.DeepLiftShap(model).attribute(x[i:i + 1].clone().requires_grad_(True),
                                                         baselines=base[i], target=int(y[i]))
        torch.testing.assert_close(ours[i], ref.detach().sum(dim=1)[0], rtol=1e-5, atol=1e-6)


def test_deeplift_shap_sums_to_output_minus_mean_baseline_output():
    model = _relu_net(nn.ReLU())
    x, _ = digits_batch(3)
    y = torch.tensor([1, 2, 3])
    e = DeepLiftShap(n_samples=4)
    maps = e(model, x, y)
    base = e.baselines(x)
    with torch.no_grad():
        fb = model(base.reshape(12, 1, 16, 16)).reshape(3, 4, 5).mean(1)
        delta = (model(x) - fb).gather(1, y[:, None]).flatten()
    torch.testing.assert_close(maps.flatten(1).sum(1), delta, rtol=1e-4, atol=1e-5)


def test_deeplift_shap_is_deterministic_batch_invariant_and_seeded():
    model = make_tiny_cnn()
    x, y = digits_batch(6)
    e = DeepLiftShap(n_samples=4, seed=1, max_batch=5)
    full = e(model, x, y)
    assert torch.equal(full, e(model, x, y))
    torch.testing.assert_close(e(model, x[3:5], y[3:5]), full[3:5], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(DeepLiftShap(n_samples=4, seed=1, max_batch=64)(model, x, y), full,
                               rtol=1e-5, atol=1e-7)
    other = type(e)(**{**e.config(), "seed": 2})
    assert not torch.allclose(other(model, x, y), full)
    doubled = type(e)(**{**e.config(), "n_samples": 8})
    assert doubled.n_samples == 8 and doubled.seed == 1 and doubled.evaluations_per_map((1, 1, 16, 16)) == 16
    assert e.evaluations_per_map((1, 1, 16, 16)) == 8 and DeepLift().evaluations_per_map((1, 1, 16, 16)) == 2


def test_deeplift_and_deeplift_shap_run_on_efficientnet_lite0():
    from sanitycheck.models.efficientnet_lite import efficientnet_lite0

    model = efficientnet_lite0(weights=None)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([7])
    maps = DeepLift()(model, x, y)
    assert maps.shape == (1, 224, 224)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x)))[0, 7]
    torch.testing.assert_close(maps.sum(), delta, rtol=1e-3, atol=1e-4)  # summation-to-delta through ReLU6 + skips
    assert DeepLiftShap(n_samples=2)(model, x, y).shape == (1, 224, 224)


@pytest.mark.parametrize("bad", [torch.zeros(1, 16, 16), "black", float("nan"), [0.0, 0.5]])
def test_a_baseline_that_is_not_one_number_is_a_config_error(bad):
    from sanitycheck.errors import ConfigError

    with pytest.raises(ConfigError, match="baseline must be one number"):
        DeepLift(baseline=bad)
