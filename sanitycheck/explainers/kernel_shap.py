"""KernelSHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions"), over the
superpixels of :mod:`~sanitycheck.explainers.superpixels` (the same segmentation as LIME).

A coalition ``z`` in {0, 1}^M keeps the superpixels where 1 and replaces the others by the baseline. The
Shapley values ``phi`` are the weighted least-squares fit of ``f(z) - f(baseline) = z . phi`` under the
efficiency constraint ``sum(phi) = f(x) - f(baseline)``, with the Shapley kernel
``pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|))``. As in ``shap.KernelExplainer``'s sampling stage,
coalitions are *drawn* from the kernel: a size ``k`` in 1..M-1 with probability proportional to
``(M - 1) / (k (M - k))``, then ``k`` superpixels uniformly, each coalition paired with its complement
(shap's paired sampling); drawn coalitions then have equal weight in the regression. The constraint is
eliminated as in shap (the last superpixel's value is ``f(x) - f(baseline)`` minus the others).
The empty and full coalitions are not sampled (their kernel weight is infinite: they are the constraint).

Unlike shap, small M are not enumerated exactly: every coalition is drawn. Draws are keyed on
``(seed, content of x[i])`` (:func:`sanitycheck.seeding.per_sample_draw`): deterministic, batch-invariant,
the same coalitions under every model state. On a model linear in its input, the fit is exact for any
sample set of full rank (``f(z) - f(b)`` is then exactly linear in ``z``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..seeding import per_sample_draw
from ..targets import Target
from .base import Explainer
from .superpixels import Superpixels, evaluate_masks

__all__ = ["KernelShap", "shapley_kernel_coalitions", "constrained_least_squares", "gaussian_blur"]

Baseline = Union[float, str, Sequence, Tensor]


def shapley_kernel_coalitions(u: Tensor, n_features: int, n_samples: int) -> Tensor:
    """``n_samples`` coalitions ``(n_samples, M)`` from uniforms ``u`` ``(ceil(n/2), M + 1)``: size from the
    Shapley kernel's size distribution (column 0, inverse CDF), members by the ranks of columns 1..M;
    row ``2j + 1`` is the complement of row ``2j``."""
    m = n_features
    sizes = torch.arange(1, m, dtype=torch.float64)
    p = (m - 1) / (sizes * (m - sizes))
    cdf = torch.cumsum(p / p.sum(), 0)
    cdf[-1] = 1.0
    k = torch.searchsorted(cdf, u[:, 0].to(torch.float64).cpu().contiguous(), right=True).clamp(max=m - 2) + 1
    ranks = torch.argsort(torch.argsort(u[:, 1:].cpu(), dim=1), dim=1)
    z = (ranks < k[:, None]).to(torch.float32)
    both = torch.stack([z, 1.0 - z], dim=1).reshape(-1, m)
    return both[:n_samples].to(u.device)


def constrained_least_squares(Z: Tensor, y: Tensor, total: Tensor, n_features: Sequence[int]) -> Tensor:
    """Batched least squares ``y ~ Z phi`` s.t. ``sum(phi[:M_i]) = total_i``: ``Z`` (B, S, d) zero-padded past
    ``M_i`` columns, ``y`` (B, S), ``total`` (B,) -> ``phi`` (B, d) (0 on padding), in float64."""
    Z, y, total = Z.to(torch.float64), y.to(torch.float64), total.to(torch.float64)
    b, _, d = Z.shape
    last = torch.as_tensor([m - 1 for m in n_features], device=Z.device)
    z_last = Z.gather(2, last[:, None, None].expand(b, Z.shape[1], 1))       # (B, S, 1)
    valid = torch.arange(d, device=Z.device)[None] < (last[:, None])          # free columns (B, d)
    X = (Z - z_last) * valid[:, None].to(Z.dtype)
    t = y - z_last[..., 0] * total[:, None]
    A = X.transpose(-1, -2) @ X + torch.diag_embed((~valid).to(Z.dtype))    # identity on unused columns
    rhs = (X.transpose(-1, -2) @ t[..., None])[..., 0]
    sol, info = torch.linalg.solve_ex(A, rhs)
    bad = info != 0
    if bool(bad.any()):  # per input (batch-invariant): the minimum-norm solution of a singular system
        sol = torch.where(bad[:, None], (torch.linalg.pinv(A) @ rhs[..., None])[..., 0], sol)
    phi = sol * valid.to(sol.dtype)
    phi = phi.scatter(1, last[:, None], (total - phi.sum(1))[:, None])
    return phi


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with replicate padding."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    out = torch.nn.functional.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = torch.nn.functional.conv2d(out, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = torch.nn.functional.pad(out, (0, 0, radius, radius), mode="replicate")
    return torch.nn.functional.conv2d(out, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class KernelShap(Explainer):
    """KernelSHAP over superpixels (Lundberg & Lee 2017).

    Parameters: ``n_samples`` (1000 sampled coalitions per image, besides the image and the baseline; must
    be >= 2 (M - 1) for the M superpixels of every image, else :class:`ConfigError`: M - 1 unknowns remain
    after the efficiency constraint, and a coalition and its complement give the same equation up to sign,
    so n_samples coalitions give at most n_samples / 2 independent equations; a rank-deficient draw falls back
    to the minimum-norm solution), ``seed`` (0), ``baseline`` (a number, default 0 in the model's input space; ``"blur"``: the
    image blurred with a Gaussian of ``blur_sigma`` pixels, default a tenth of the smaller side; or a
    ``(C, H, W)`` nested list / tensor), the segmentation parameters of
    :class:`~sanitycheck.explainers.superpixels.Superpixels`, ``max_batch`` (perturbed images per forward
    pass, 256; does not change the maps, not in :meth:`config`). Forward passes only:
    ``n_samples + 2`` model evaluations per map (the image and the baseline).
    """

    name = "kernel_shap"

    def __init__(self, n_samples: int = 1000, seed: int = 0, baseline: Baseline = 0.0,
                 blur_sigma: Optional[float] = None, segmentation: str = "auto", kernel_size: float = 4,
                 max_dist: float = 200, ratio: float = 0.2, n_segments: int = 25,
                 compactness: Optional[float] = None, max_batch: int = 256):
        if not (isinstance(n_samples, int) and n_samples >= 2):
            raise ConfigError(f"kernel_shap: n_samples must be an integer >= 2, got {n_samples!r}")
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ConfigError(f"kernel_shap: max_batch must be a positive integer, got {max_batch!r}")
        if blur_sigma is not None and not float(blur_sigma) > 0:
            raise ConfigError(f"kernel_shap: blur_sigma must be > 0 or None, got {blur_sigma!r}")
        if isinstance(baseline, str):
            if baseline != "blur":
                raise ConfigError(f"kernel_shap: baseline {baseline!r} is unknown; use a number, 'blur' or a "
                                  "(C, H, W) array")
        elif isinstance(baseline, (int, float)):
            baseline = float(baseline)
        else:
            try:
                baseline = torch.as_tensor(baseline, dtype=torch.float32).tolist()
            except (TypeError, ValueError) as err:
                raise ConfigError(f"kernel_shap: baseline must be a number, 'blur' or a (C, H, W) array, got "
                                  f"{type(baseline).__name__}: {err}") from None
        self.n_samples, self.seed, self.baseline = n_samples, int(seed), baseline
        self.blur_sigma = None if blur_sigma is None else float(blur_sigma)
        self.superpixels = Superpixels(segmentation, kernel_size, max_dist, ratio, n_segments, compactness)
        self.max_batch = max_batch

    def config(self) -> Dict[str, Any]:
        return {"n_samples": self.n_samples, "seed": self.seed, "baseline": self.baseline,
                "blur_sigma": self.blur_sigma, **self.superpixels.config()}

    def evaluations_per_map(self, x_shape: Tuple[int, ...]) -> int:
        """Forward passes per map: ``n_samples`` coalitions + the image + the baseline."""
        return self.n_samples + 2

    def baselines(self, x: Tensor) -> Tensor:
        """The ``(B, C, H, W)`` baseline images."""
        if isinstance(self.baseline, float):
            return torch.full_like(x, self.baseline)
        if self.baseline == "blur":
            sigma = self.blur_sigma if self.blur_sigma is not None else min(x.shape[-2:]) / 10.0
            return gaussian_blur(x, sigma)
        base = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        if tuple(base.shape) != tuple(x.shape[1:]):
            raise ConfigError(f"kernel_shap: baseline has shape {tuple(base.shape)} but the inputs are "
                              f"{tuple(x.shape[1:])} (C, H, W); give a baseline of the input's shape, a number "
                              "or 'blur'")
        return base.expand_as(x)

    def coalitions(self, x: Tensor, segments: List[Tensor]) -> List[Tensor]:
        out = []
        for i, seg in enumerate(segments):
            m = int(seg.max()) + 1
            if self.n_samples < 2 * (m - 1):
                raise ConfigError(
                    f"kernel_shap: n_samples={self.n_samples} is too few for the {m} superpixels of input {i}; "
                    f"KernelSHAP needs n_samples >= 2 * (superpixels - 1) = {2 * (m - 1)} (paired coalitions: a "
                    "coalition and its complement give one equation on the superpixels - 1 unknowns left by the "
                    f"efficiency constraint): raise n_samples to at least {2 * (m - 1)} or use fewer superpixels "
                    "(segmentation='slic' with a smaller n_segments)")
            u = per_sample_draw(x[i:i + 1], ((self.n_samples + 1) // 2, m + 1), "kernel_shap", self.seed,
                                kind="uniform")[0]
            out.append(shapley_kernel_coalitions(u, m, self.n_samples))
        return out

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        x = x.detach()
        base = self.baselines(x)
        segments = self.superpixels(x)
        coalitions = self.coalitions(x, segments)
        ends = [torch.stack([torch.ones(c.shape[1], device=x.device), torch.zeros(c.shape[1], device=x.device)])
                for c in coalitions]
        masks = [torch.cat([e, c]) for e, c in zip(ends, coalitions)]
        scores = evaluate_masks(model, x, target, segments, masks, base, self.max_batch)
        f_x = torch.stack([s[0] for s in scores])
        f_b = torch.stack([s[1] for s in scores])
        sizes = [c.shape[1] for c in coalitions]
        Z = torch.zeros(len(coalitions), self.n_samples, max(sizes), dtype=torch.float64, device=x.device)
        for i, c in enumerate(coalitions):
            Z[i, :, :c.shape[1]] = c.to(torch.float64)
        y = torch.stack([s[2:] for s in scores]).to(torch.float64) - f_b[:, None].to(torch.float64)
        phi = constrained_least_squares(Z, y, (f_x - f_b).to(torch.float64), sizes)
        return torch.stack([phi[i][seg] for i, seg in enumerate(segments)]).to(x.dtype)
