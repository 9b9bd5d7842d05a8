"""Noise tunnel: average an explainer's maps over noisy copies of the input.

* SmoothGrad — Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise"
  (mean of the maps; ``smoothgrad_sq``: mean of the squared maps).
* VarGrad — Adebayo et al. 2018, "Local Explanation Methods for Deep Neural Networks Lack
  Sensitivity to Parameter Values" / "Sanity Checks for Saliency Maps" (variance of the maps).

Written here rather than taken from captum's ``NoiseTunnel``, which draws from the global RNG
and per batch. Here the noise of sample ``i`` is drawn from a generator keyed on
``(seed, content of x[i])`` (:func:`sanitycheck.seeding.per_sample_draw`), so maps are
deterministic, do not depend on which other samples share the batch, and use the same noise
under every model state (common random numbers: the noise itself adds no dissimilarity
between the original and a randomized model's maps). The noise scale is per sample,
``sigma_i = noise_level * (max(x_i) - min(x_i))``, so it is batch-invariant too.

The wrapper works on the base explainer's *channel-reduced* maps ``(B, *spatial)``: the
base's ``channel_reduction`` is applied to each noisy map before the mean / mean of squares /
variance over the samples (for a one-channel input the order does not matter).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Union

import hashlib

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..seeding import per_sample_draw
from ..targets import Target
from .base import Explainer
from .gradients import Gradient

__all__ = ["NoiseTunnel", "SmoothGrad", "VarGrad"]

KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _resolve_base(base: Union[Explainer, str, Mapping[str, Any]]) -> Explainer:
    from . import get_explainer  # late: the package imports this module lazily through the registry

    if isinstance(base, Explainer):
        return base
    if isinstance(base, str):
        return get_explainer(base)
    if isinstance(base, Mapping):
        params = dict(base)
        try:
            name = params.pop("name")
        except KeyError:
            raise ConfigError(f"noise tunnel base {dict(base)!r} needs a 'name' key") from None
        return get_explainer(name, **params)
    return get_explainer(base)


class NoiseTunnel(Explainer):
    """``kind`` of ``base`` over ``n_samples`` Gaussian-noised copies of each input.

    Parameters: ``base`` (an Explainer, a registry name or import path, or a mapping
    ``{"name": ..., **params}``), ``n_samples`` (default 50), ``noise_level`` (sigma as a fraction
    of each sample's value range, default 0.15 as in Smilkov et al.), ``kind`` (``"smoothgrad"``,
    ``"smoothgrad_sq"`` or ``"vargrad"``), ``seed``, ``max_batch`` (at most this many noisy inputs
    per call of the base explainer; bounds memory, does not change the maps, so it is not in
    :meth:`config`).

    The base is called once per chunk of ``max_batch`` on the ``(B * n_samples, ...)`` expanded
    input, the target repeated with ``Target.repeat_interleave(n_samples)``.
    """

    name = "noise_tunnel"

    def __init__(self, base: Union[Explainer, str, Mapping[str, Any]] = "gradient", n_samples: int = 50,
                 noise_level: float = 0.15, kind: str = "smoothgrad", seed: int = 0, max_batch: int = 4096):
        if kind not in KINDS:
            raise ConfigError(f"noise tunnel kind {kind!r} is unknown; use one of {KINDS}")
        if int(n_samples) < 1:
            raise ConfigError(f"noise tunnel n_samples must be >= 1, got {n_samples}")
        if float(noise_level) < 0:
            raise ConfigError(f"noise tunnel noise_level must be >= 0, got {noise_level}")
        if int(max_batch) < 1:
            raise ConfigError(f"noise tunnel max_batch must be >= 1, got {max_batch}")
        self.base = _resolve_base(base)
        self.n_samples, self.noise_level, self.kind = int(n_samples), float(noise_level), kind
        self.seed, self.max_batch = int(seed), int(max_batch)
        self.requires_model = self.base.requires_model
        if type(self).name == NoiseTunnel.name:
            self.name = f"{kind}[{self.base.name}]"

    def config(self) -> Dict[str, Any]:
        return {"base": self.base.name, "base_config": self.base.config(), "n_samples": self.n_samples,
                "noise_level": self.noise_level, "kind": self.kind, "seed": self.seed}

    def code_hash(self) -> str:
        return hashlib.sha256((super().code_hash() + self.base.code_hash()).encode()).hexdigest()[:16]

    def noisy_inputs(self, x: Tensor) -> Tensor:
        """The ``(B * n_samples, ...)`` noisy copies, sample ``i``'s copies in rows ``i*n .. i*n+n-1``."""
        x = x.detach()
        b, n = x.shape[0], self.n_samples
        expanded = x.unsqueeze(1).expand(b, n, *x.shape[1:])
        if self.noise_level > 0:
            flat = x.reshape(b, -1)
            sigma = self.noise_level * (flat.amax(dim=1) - flat.amin(dim=1))
            noise = per_sample_draw(x, (n, *x.shape[1:]), "noise_tunnel", self.seed)
            expanded = expanded + sigma.reshape(b, *([1] * x.ndim)) * noise
        return expanded.reshape(b * n, *x.shape[1:])

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        b, n = x.shape[0], self.n_samples
        noisy = self.noisy_inputs(x)
        big_target = target.repeat_interleave(n)
        chunks = []
        for start in range(0, noisy.shape[0], self.max_batch):
            stop = min(start + self.max_batch, noisy.shape[0])
            part = big_target.select(slice(start, stop)) if len(big_target) else big_target
            chunks.append(self.base(model, noisy[start:stop], part))  # (chunk, *spatial), channel-reduced
        maps = torch.cat(chunks).reshape(b, n, *x.shape[2:])
        if self.kind == "smoothgrad":
            return maps.mean(dim=1)
        if self.kind == "smoothgrad_sq":
            return maps.square().mean(dim=1)
        return maps.var(dim=1, correction=0)


class SmoothGrad(NoiseTunnel):
    """SmoothGrad (Smilkov et al. 2017): the mean of the gradient over noisy copies of the input.

    Parameters: ``n_samples`` (50), ``noise_level`` (0.15 of each sample's value range),
    ``seed`` (0), ``max_batch`` (4096). See :class:`NoiseTunnel` for the noise.
    """

    name = "smoothgrad"

    def __init__(self, n_samples: int = 50, noise_level: float = 0.15, seed: int = 0, max_batch: int = 4096):
        super().__init__(base=Gradient(), n_samples=n_samples, noise_level=noise_level, kind="smoothgrad",
                         seed=seed, max_batch=max_batch)

    def config(self) -> Dict[str, Any]:
        return {"n_samples": self.n_samples, "noise_level": self.noise_level, "seed": self.seed}


class VarGrad(NoiseTunnel):
    """VarGrad (Adebayo et al. 2018): the variance of the gradient over noisy copies of the input.

    Parameters as :class:`SmoothGrad`. Maps are non-negative.
    """

    name = "vargrad"

    def __init__(self, n_samples: int = 50, noise_level: float = 0.15, seed: int = 0, max_batch: int = 4096):
        super().__init__(base=Gradient(), n_samples=n_samples, noise_level=noise_level, kind="vargrad",
                         seed=seed, max_batch=max_batch)

    def config(self) -> Dict[str, Any]:
        return {"n_samples": self.n_samples, "noise_level": self.noise_level, "seed": self.seed}
