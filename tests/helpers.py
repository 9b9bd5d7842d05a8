"""Test helpers shared by tests and benchmarks (a plain module: two conftest.py files cannot share a name)."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv1 -> relu -> pool -> conv2 -> relu -> pool -> fc1 -> relu -> fc2, on 1x16x16 inputs."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(32, n_classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


def make_tiny_cnn(seed: int = 0) -> TinyCNN:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyCNN()
    return model.eval()


def digits_batch(n: int = 8, size: int = 16):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.tensor(data.target[:n], dtype=torch.long)
