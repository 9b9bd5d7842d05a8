"""Tiny TCAV fixtures shared by tests/metrics/test_tcav.py and tests/checks/test_tcav.py (a plain module).

A hand-built CNN whose class-1 logit reads the brightness of the left half of a 1x16x16 image, a "bright
left half" concept set, noise random sets, and the same architecture reading the right half instead (the
model where the concept does not decide the label)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch import Tensor, nn

from sanitycheck.seeding import generator

try:  # part "tcavdata" provides the contract's dataclass; until it is merged, a compatible stand-in
    from sanitycheck.data.concepts import ConceptSet  # type: ignore
except ImportError:  # pragma: no cover - depends on the merge
    @dataclass
    class ConceptSet:  # same fields as sanitycheck.data.concepts.ConceptSet
        name: str
        images: Tensor
        kind: str = "concept"

SIZE = 16


class HalfReader(nn.Module):
    """conv -> relu -> pool (4x4 grid) -> fc (2 classes); class 1 sums the ``side`` half of channel 0
    (an identity filter), class 0 subtracts it; the other channels do not reach the logits."""

    def __init__(self, side: str = "left"):
        super().__init__()
        g = generator(0, "tcav-fixture", "weights")
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 2)
        with torch.no_grad():
            # centre taps only: a channel at a pixel sees that pixel, nothing leaks across the halves
            self.conv.weight.zero_()
            self.conv.weight[:, 0, 1, 1] = torch.tensor([1.0, -0.7, 0.5, 1.3])
            self.conv.bias.copy_(torch.rand(4, generator=g) * 0.2)
            self.conv.bias[0] = -0.5  # relu(x - 0.5): the gradient reaches the bright pixels only (varies by input)
            w = torch.zeros(2, 4, 4, 4)
            cols = slice(0, 2) if side == "left" else slice(2, 4)
            w[1, 0, :, cols] = 1.0
            w[0, 0, :, cols] = -1.0
            self.fc.weight.copy_(w.reshape(2, 64))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu(self.conv(x)))))


def noise(n: int, *parts) -> Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=generator(*parts))


def bright_left(n: int, seed: int = 0) -> ConceptSet:
    x = noise(n, seed, "concept", "bright_left")  # the right half is noise, as in the random sets
    x[..., : SIZE // 2] = 0.5 + 0.5 * x[..., : SIZE // 2]
    return ConceptSet("bright_left", x.clamp(0, 1), "concept")


def random_sets(k: int, n: int, seed: int = 0, prefix: str = "random_noise") -> List[ConceptSet]:
    return [ConceptSet(f"{prefix}_{i}", noise(n, seed, prefix, i), "random") for i in range(k)]


def explained_inputs(n: int = 12, seed: int = 0) -> Tensor:
    return noise(n, seed, "inputs")


def tcav_context(check, model=None, twin=None):
    """The engine's CheckContext for ``check`` on the 12 explained inputs of a HalfReader (class 1 explained)."""
    from types import SimpleNamespace

    from sanitycheck.engine.context import CheckContext

    model = model or HalfReader("left").eval()
    inputs = SimpleNamespace(model=model, x=explained_inputs(), target=torch.ones(12, dtype=torch.long))
    return CheckContext(check=check, modality=None, inputs=inputs, explainers={}, seed=0, device="cpu",
                        batch_size=64, progress=False, cache_dir=None, twin_model=twin)
