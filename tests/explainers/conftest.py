"""Fixtures for explainer tests: an MLP (no convolutions) and a model-state snapshot."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
              "_state_dict_hooks", "_load_state_dict_pre_hooks")
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks", "_global_forward_hooks_always_called")


def hook_counts(model: nn.Module) -> dict:
    """Every module's hooks (including full backward hooks, which live in _backward_hooks), globals,
    and tensor hooks on parameters."""
    counts = {}
    for name, m in model.named_modules():
        for attr in HOOK_DICTS:
            counts[(name, attr)] = len(getattr(m, attr, {}) or {})
        counts[(name, "_is_full_backward_hook")] = m._is_full_backward_hook
    for name, p in model.named_parameters():
        counts[(name, "tensor_hooks")] = len(p._backward_hooks or {})
    for attr in GLOBAL_HOOKS:
        counts[("<global>", attr)] = len(getattr(torch_module, attr, {}) or {})
    return counts


def model_snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "grad": {k: p.grad is None for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "attrs": {k: sorted(vars(m)) for k, m in model.named_modules()},
        "hooks": hook_counts(model),
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert before["hooks"] == after["hooks"], "hooks were left on the model"
    assert before["requires_grad"] == after["requires_grad"]
    assert before["grad"] == after["grad"], "parameter .grad was touched"
    assert before["training"] == after["training"]
    assert before["attrs"] == after["attrs"], "module attributes were added or removed"
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"{k} changed"


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(256, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


@pytest.fixture
def tiny_mlp() -> TinyMLP:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = TinyMLP()
    return model.eval()


@pytest.fixture
def snapshot():
    return model_snapshot


@pytest.fixture
def same_snapshot():
    return assert_same_snapshot
