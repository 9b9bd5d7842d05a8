"""Wall time of each registered explainer: 128 images of 1x28x28, a LeNet-like CNN, CPU.

Run: ``python -m pytest benchmarks/bench_explainers.py --benchmark-enable -q``
(without ``--benchmark-enable`` each explainer runs once, as a smoke test).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sanitycheck.explainers import get_explainer
from sanitycheck.registry import EXPLAINERS


class LeNet(nn.Module):
    """conv(1,32,5)-relu-pool-conv(32,64,5)-relu-pool-fc(1024,128)-relu-fc(128,10)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(1024, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


@pytest.fixture(scope="module")
def lenet_batch():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LeNet().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (128,), generator=g)
    return model, x, y


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_explainer_speed(benchmark, name, lenet_batch):
    model, x, y = lenet_batch
    explainer = get_explainer(name)
    benchmark.group = "explainers: 128 x 1x28x28, LeNet, CPU"
    benchmark.extra_info["config"] = explainer.config()
    maps = benchmark.pedantic(explainer, args=(model, x, y), rounds=3, iterations=1, warmup_rounds=1)
    assert maps.shape == (128, 28, 28)
