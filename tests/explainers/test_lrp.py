"""LRP (captum's, with rule sets matched by isinstance): LRP-epsilon = gradient x input on a bias-free ReLU
network, conservation, epsilon-plus, layers without a rule refused by name, the model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import digits_batch, make_tiny_cnn
from sanitycheck.errors import ConfigError, NotApplicableError
from sanitycheck.explainers.lrp import LRP


def _bias_free_cnn():
    model = make_tiny_cnn()
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    return model


def test_lrp_epsilon_on_a_bias_free_relu_network_is_gradient_times_input():
    model = _bias_free_cnn()
    x, y = digits_batch(5)
    maps = LRP(rules="epsilon", epsilon=1e-9)(model, x, y)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, y[:, None]).sum(), xg)
    torch.testing.assert_close(maps, (g * x).sum(1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rules", ["epsilon", "epsilon_plus"])
def test_lrp_conserves_relevance_on_a_bias_free_network(rules):
    model = _bias_free_cnn()
    x, y = digits_batch(5)
    maps = LRP(rules=rules, epsilon=1e-9)(model, x, y)
    with torch.no_grad():
        score = model(x).gather(1, y[:, None]).flatten()
    torch.testing.assert_close(maps.flatten(1).sum(1), score, rtol=1e-3, atol=1e-5)


def test_epsilon_plus_differs_from_epsilon_and_is_batch_invariant():
    model = make_tiny_cnn()
    x, y = digits_batch(6)
    plus = LRP()(model, x, y)
    assert not torch.allclose(plus, LRP(rules="epsilon")(model, x, y), atol=1e-4)
    torch.testing.assert_close(LRP()(model, x[1:3], y[1:3]), plus[1:3], rtol=1e-5, atol=1e-7)
    assert LRP().evaluations_per_map((1, 1, 16, 16)) == 2
    assert LRP().config() == {"rules": "epsilon_plus", "epsilon": 1e-6, "channel_reduction": "sum"}


def test_lrp_leaves_the_model_as_it_was(snapshot, same_snapshot):
    model = make_tiny_cnn()
    x, y = digits_batch(3)
    before = snapshot(model)
    LRP()(model, x, y)
    LRP(rules="epsilon")(model, x, y)
    same_snapshot(before, snapshot(model))


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(256, 8)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.norm(self.fc(self.flatten(x))))


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 14 * 14, 3)

    def forward(self, x):
        return self.fc(self.flatten(self.relu(self.bn(self.conv(x)))))


def test_a_layer_without_an_lrp_rule_is_refused_by_name():
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(NotApplicableError, match=r"layer 'norm' of type LayerNorm has no LRP rule"):
        LRP()(WithLayerNorm().eval(), x, torch.tensor([0, 1]))
    with pytest.raises(NotApplicableError, match=r"layer 'bn' is a BatchNorm2d"):
        LRP()(WithBatchNorm().eval(), x, torch.tensor([0, 1]))


def test_unknown_rule_set_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown rule set 'zplus'"):
        LRP(rules="zplus")


def test_lrp_on_efficientnet_lite0_is_not_applicable_naming_its_first_batch_norm():
    from sanitycheck.models.efficientnet_lite import efficientnet_lite0

    model = efficientnet_lite0(weights=None)
    with pytest.raises(NotApplicableError, match=r"layer 'net.stem.bn' is a BatchNorm2d"):
        LRP()(model, torch.rand(1, 3, 224, 224), torch.tensor([7]))


class Residual(nn.Module):
    def __init__(self, as_module: bool):
        super().__init__()
        from captum.attr._utils.custom_modules import Addition_Module

        self.conv1 = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.relu1 = nn.ReLU()
        self.add = Addition_Module() if as_module else None
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(256, 3, bias=False)

    def forward(self, x):
        y = self.relu1(self.conv1(x))
        s = self.add(y, x) if self.add is not None else y + x
        return self.fc(self.flatten(s))


def test_a_functional_residual_sum_is_refused_and_an_addition_module_conserves_relevance():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        functional, module = Residual(False).eval(), Residual(True).eval()
    module.load_state_dict(functional.state_dict())
    x, _ = digits_batch(3)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(NotApplicableError, match=r"adds two activations outside a module \(relu1 \+ x"):
        LRP(rules="epsilon")(functional, x, y)
    maps = LRP(rules="epsilon", epsilon=1e-9)(module, x, y)
    with torch.no_grad():
        score = module(x).gather(1, y[:, None]).flatten()
    torch.testing.assert_close(maps.flatten(1).sum(1), score, rtol=1e-3, atol=1e-5)
