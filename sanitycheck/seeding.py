"""Seeds derived from (run seed, purpose, name); the global RNG is never touched."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and platforms."""
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` seeded from ``derive_seed(*parts)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g


def sample_keys(x: torch.Tensor) -> list:
    """A content hash per sample: random draws keyed on it do not depend on batch composition.

    Using the same draws for the same image under every model state is also what a
    comparison wants (common random numbers): the noise of SmoothGrad does not add
    dissimilarity between the original and a randomized model's maps.
    """
    flat = x.detach().to("cpu", torch.float32).contiguous().reshape(x.shape[0], -1).numpy()
    return [hashlib.sha256(row.tobytes()).hexdigest()[:16] for row in flat]


def per_sample_draw(x: torch.Tensor, shape: tuple, *parts: object, kind: str = "normal") -> torch.Tensor:
    """Random tensor of shape ``(B, *shape)``; row i depends only on (parts, content of x[i])."""
    rows = []
    for key in sample_keys(x):
        g = generator(*parts, key)
        rows.append(torch.randn(shape, generator=g) if kind == "normal" else torch.rand(shape, generator=g))
    return torch.stack(rows).to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
