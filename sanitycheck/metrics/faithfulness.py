"""Perturbation-based faithfulness families: faithfulness correlation, infidelity, max-sensitivity, ROAD.

* :class:`FaithfulnessCorrelation` — Bhatt, Weller & Moura 2020, "Evaluating and Aggregating
  Feature-based Model Explanations" (IJCAI).
* :class:`Infidelity` — Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, "On the (In)fidelity and
  Sensitivity of Explanations" (NeurIPS).
* :class:`MaxSensitivity` — the same paper (max-sensitivity within an L-inf ball).
* :class:`ROAD` — Rong, Leemann, Borisov, Kasneci & Kasneci 2022, "A Consistent and Efficient
  Evaluation Strategy for Attribution Methods" (ICML): RemOve And Debias with Noisy Linear
  Imputation (:func:`noisy_linear_impute`).

Common conventions (see :class:`~sanitycheck.metrics.base.FaithfulnessFamily`):

* Inputs are images ``(B, C, H, W)``, maps ``(B, H, W)``. A perturbation of a *pixel* applies to
  all of its channels (the maps are channel-reduced, by default by summing, which is what a
  pixel-wise perturbation shared by the channels measures).
* Everything is batched: all perturbations of all images go through the model in chunks of at
  most :data:`MAX_BATCH` rows (the chunking does not change any number).
* Randomness (pixel subsets, noise) is drawn with :func:`sanitycheck.seeding.per_sample_draw`,
  keyed on ``seed``, the family and the *content* of each image: the scores of an image do not
  depend on the rest of the batch, and every explainer is scored on the same perturbations of
  the same image (common random numbers, so differences between explainers are not noise).
* A score that is undefined for a sample (a constant map has no correlation; a zero map has no
  relative sensitivity) is NaN for that sample, never an exception. ROAD, like the deletion
  curves of :mod:`sanitycheck.metrics.curves`, orders tied pixels at random instead (seeded,
  counted in ``notes``), so a constant map gets the score of a random order.
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import AttributionError, ConfigError
from ..seeding import per_sample_draw
from ..targets import ClassTarget, Target, as_target
from .base import Evaluation, FaithfulnessFamily

__all__ = ["FaithfulnessCorrelation", "Infidelity", "MaxSensitivity", "ROAD", "noisy_linear_impute",
           "MAX_BATCH", "MAX_EXPLAIN_BATCH"]

#: at most this many perturbed inputs per forward pass; results do not depend on it (bit-identical per-row
#: scores, tests/test_faithfulness_chunking.py). 256 (was 1024): on one torch thread, 21 x 128 perturbed
#: fmnist_cnn inputs take 0.56 s in chunks of 256 against 1.36 s in chunks of 1024 (large chunks pay for
#: allocating large activations); on two threads the two are even (0.84 s and 0.88 s)
MAX_BATCH = 256
#: at most this many inputs per explainer call (MaxSensitivity)
MAX_EXPLAIN_BATCH = 4096
#: ... and at most this many input values per forward / per explainer call, so that large inputs stay within
#: memory: 256 inputs of 3x64x64 per forward, 4096 of 1x28x28 per explainer call, so 20 and 21 of 3x224x224
#: (ImageNet at 224 held 24 GB in one ROAD forward of 252 perturbed images with the row limits alone). Inputs
#: of the Fashion-MNIST and CLIP-scene suites are below both budgets: their chunks, and numbers, are unchanged.
MAX_BATCH_VALUES = MAX_BATCH * 3 * 64 * 64
MAX_EXPLAIN_VALUES = MAX_EXPLAIN_BATCH * 28 * 28


def _row_limit(limit: int, values_per_row: int, budget: int) -> int:
    """``limit`` rows, fewer when ``limit`` rows of ``values_per_row`` input values exceed ``budget``."""
    return max(1, min(limit, budget // max(1, values_per_row)))


# ----------------------------------------------------------------------------- shared helpers
def _model_device(model: nn.Module, x: Tensor) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return x.device


def _prepare(family: str, model: nn.Module, x: Tensor, target: Any, maps: Tensor) -> Tuple[Tensor, Target, Tensor]:
    """Check shapes and train mode; move ``x`` and ``maps`` to the model's device."""
    from ..explainers.base import check_eval_mode

    check_eval_mode(model)
    if x.ndim != 4:
        raise AttributionError(f"{family}: needs images of shape (B, C, H, W), got {tuple(x.shape)}")
    b, _, h, w = x.shape
    if tuple(maps.shape) != (b, h, w):
        raise AttributionError(f"{family}: maps have shape {tuple(maps.shape)}, expected {(b, h, w)} "
                               "(one channel-reduced map per input)")
    if not torch.isfinite(maps).all():
        rows = (~torch.isfinite(maps)).flatten(1).any(dim=1).nonzero().flatten().tolist()
        raise AttributionError(f"{family}: maps contain NaN or inf for samples {rows[:10]}")
    target = as_target(target)
    if len(target) not in (0, b):
        raise AttributionError(f"{family}: {len(target)} targets for a batch of {b} inputs")
    device = _model_device(model, x)
    x = x.detach().to(device)
    if not x.is_floating_point():
        x = x.float()
    return x, target, maps.detach().to(device)


def _class_indices(target: Target) -> Optional[Tensor]:
    """The class per sample when ``target`` picks one class (a :class:`ClassTarget`, logit or probability)."""
    if isinstance(target, ClassTarget):
        return target.classes
    base = getattr(target, "base", None)
    while base is not None and not isinstance(base, ClassTarget):
        base = getattr(base, "base", None)
    if base is not None:  # a ClassTarget re-bound by select / repeat_interleave
        return target.per_sample[0]
    return target.class_indices()


def _check_softmax_target(family: str, target: Target) -> None:
    if _class_indices(target) is None:
        raise ConfigError(f"{family}: softmax=True scores the probability of a class, so it needs a class "
                          f"target (got {target.description!r}); pass softmax=False to score the target itself")


def _target_scores(model: nn.Module, inputs: Tensor, target: Target, softmax: bool, family: str = "") -> Tensor:
    """``target(model(inputs))``, or with ``softmax`` the probability of the target's class, as float64 ``(N,)``."""
    with torch.no_grad():
        out = model(inputs)
        if not softmax:
            return target(out).detach().to(torch.float64).reshape(-1)
        if out.ndim != 2 or out.shape[1] < 2:
            raise ConfigError(f"{family}: softmax=True needs model outputs of shape (batch, classes >= 2), got "
                              f"{tuple(out.shape)}; pass softmax=False")
        o = out.detach().to(torch.float64)
        if bool((o >= 0).all()) and bool(((o.sum(dim=1) - 1).abs() < 1e-4).all()):
            raise ConfigError(f"{family}: the model returns probabilities (rows non-negative, summing to 1); pass "
                              "softmax=False instead of applying a second softmax")
        classes = _class_indices(target).to(out.device).reshape(-1, 1)
        return o.softmax(dim=1).gather(1, classes).squeeze(1)


def _chunk_target(target: Target, start: int, stop: int, repeats: int) -> Target:
    t = target.select(slice(start, stop)) if len(target) else target
    return t.repeat_interleave(repeats) if repeats != 1 else t


def _clean_scores(model: nn.Module, x: Tensor, target: Target, softmax: bool, family: str = "") -> Tensor:
    """``(B,)`` scores of the unperturbed inputs, in chunks."""
    parts = []
    step = _row_limit(MAX_BATCH, x[0].numel(), MAX_BATCH_VALUES)
    for s in range(0, x.shape[0], step):
        e = min(s + step, x.shape[0])
        parts.append(_target_scores(model, x[s:e], _chunk_target(target, s, e, 1), softmax, family))
    return torch.cat(parts)


def _sample_chunks(batch: int, per_sample: int, limit: Optional[int] = None):
    """``(start, stop)`` ranges of samples such that ``(stop - start) * per_sample <= limit`` (MAX_BATCH)."""
    step = max(1, (limit or MAX_BATCH) // max(1, per_sample))
    for s in range(0, batch, step):
        yield s, min(s + step, batch)


def _constant_rows(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    return flat.amax(dim=1) == flat.amin(dim=1)


def _pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row pair (float64); NaN where either row has (numerically) no variance."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    va, vb = a.square().sum(dim=1), b.square().sum(dim=1)
    corr = (a * b).sum(dim=1) / (va * vb).sqrt()
    return torch.where((va > 0) & (vb > 0), corr.clamp(-1.0, 1.0), torch.full_like(corr, float("nan")))


def _check_positive_int(family: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ConfigError(f"{family}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _check_nonneg_float(family: str, name: str, value: Any) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{family}: {name} must be a finite number >= 0, got {value!r}")
    return value


# ----------------------------------------------------------------------------- faithfulness correlation
class FaithfulnessCorrelation(FaithfulnessFamily):
    """Faithfulness correlation (Bhatt, Weller & Moura 2020, "Evaluating and Aggregating
    Feature-based Model Explanations", IJCAI), as in Quantus' ``FaithfulnessCorrelation``.

    For ``n_perturbations`` random pixel subsets ``S`` of fixed size ``|S|``: the Pearson
    correlation, across the subsets, between the attribution mass ``sum_{i in S} phi_i`` and the
    drop of the target score ``f(x) - f(x with S set to baseline)``. A map whose large values
    mark the pixels whose removal lowers the score scores near 1; a map unrelated to the model
    near 0. Higher is better. One score per image; NaN where undefined (a constant map — every
    subset has the same mass — or a model whose score no subset changes).

    Parameters
    ----------
    n_perturbations: number of random subsets per image (Bhatt et al. and Quantus: 100).
    subset_size: pixels per subset: an int (a pixel count), a float in (0, 1) (a fraction of
        ``H*W``) or None for 4 % of ``H*W`` (31 px at 28x28, 10 px at 16x16). Bhatt et al. fix
        ``|S|`` per data set (Quantus defaults to 224 px of a 224x224 image, 0.45 %); on 28x28
        images that would be 3-4 pixels, whose removal barely moves the model, so we use a larger
        share, of the order of one stroke segment.
    baseline: value the subset's pixels are set to (0: black, Quantus' ``"black"``).
    softmax: score the probability of the target's class (softmax over the outputs; needs a
        class target) instead of the target on the raw output (the logit for a class target).
    """

    name = "faithfulness_correlation"
    higher_is_better = {"faithfulness_correlation": True}
    description = "Pearson correlation between the attribution mass of random pixel subsets and the score drop when they are removed"
    reference = "Bhatt, Weller & Moura 2020, Evaluating and Aggregating Feature-based Model Explanations (IJCAI)"

    def __init__(self, *, n_perturbations: int = 100, subset_size: Union[int, float, None] = None,
                 baseline: float = 0.0, softmax: bool = False):
        self.n_perturbations = _check_positive_int(self.name, "n_perturbations", n_perturbations)
        if self.n_perturbations < 2:
            raise ConfigError(f"{self.name}: a correlation needs n_perturbations >= 2, got {n_perturbations}")
        if subset_size is not None:
            if isinstance(subset_size, bool) or not isinstance(subset_size, numbers.Real) or subset_size <= 0 or (
                    not isinstance(subset_size, numbers.Integral) and subset_size >= 1):
                raise ConfigError(f"{self.name}: subset_size must be a pixel count >= 1, a fraction in (0, 1) "
                                  f"or None, got {subset_size!r}")
        self.subset_size = subset_size if subset_size is None or not isinstance(subset_size, numbers.Integral) \
            else int(subset_size)
        if isinstance(self.subset_size, numbers.Real) and not isinstance(self.subset_size, int):
            self.subset_size = float(self.subset_size)
        self.baseline = float(baseline)
        self.softmax = bool(softmax)

    def config(self) -> Dict[str, Any]:
        return {"n_perturbations": self.n_perturbations, "subset_size": self.subset_size,
                "baseline": self.baseline, "softmax": self.softmax}

    def subset_pixels(self, h: int, w: int) -> int:
        """``|S|`` for ``h x w`` images."""
        hw = h * w
        if self.subset_size is None:
            k = round(0.04 * hw)
        elif isinstance(self.subset_size, float):
            k = round(self.subset_size * hw)
        else:
            k = int(self.subset_size)
        if not 1 <= k < hw:
            k = min(max(k, 1), hw - 1)
        return k

    def evaluate(self, model: nn.Module, x: Tensor, target: Any, maps: Tensor, *, seed: int) -> Evaluation:
        x, target, maps = _prepare(self.name, model, x, target, maps)
        b, c, h, w = x.shape
        hw, n = h * w, self.n_perturbations
        k = self.subset_pixels(h, w)
        if self.softmax:
            _check_softmax_target(self.name, target)
        f0 = _clean_scores(model, x, target, self.softmax, self.name)
        flat_maps = maps.flatten(1).to(torch.float64)
        mass, drops = [], []
        for s, e in _sample_chunks(b, n, _row_limit(MAX_BATCH, x[0].numel(), MAX_BATCH_VALUES)):
            xc = x[s:e]
            rand = per_sample_draw(xc, (n, hw), "faithfulness_correlation", seed, "subsets", kind="uniform")
            mask = torch.zeros(rand.shape, dtype=torch.bool, device=x.device)
            mask.scatter_(-1, rand.topk(k, dim=-1).indices, True)  # (b, n, HW): k random pixels per row
            mass.append((flat_maps[s:e].unsqueeze(1) * mask).sum(dim=-1))
            perturbed = torch.where(mask.view(e - s, n, 1, h, w), torch.as_tensor(self.baseline, dtype=x.dtype,
                                    device=x.device), xc.unsqueeze(1))
            scores = _target_scores(model, perturbed.reshape((e - s) * n, c, h, w),
                                    _chunk_target(target, s, e, n), self.softmax, self.name).view(e - s, n)
            drops.append(f0[s:e].unsqueeze(1) - scores)
        corr = _pearson_rows(torch.cat(mass), torch.cat(drops))
        constant = _constant_rows(maps)
        corr = torch.where(constant, torch.full_like(corr, float("nan")), corr)
        return Evaluation(scores={"faithfulness_correlation": corr.cpu()}, curve=None, summary_step="score",
                          notes={"subset_size": k, "constant_maps": int(constant.sum()),
                                 "undefined": int(torch.isnan(corr).sum())})


# ----------------------------------------------------------------------------- infidelity
class Infidelity(FaithfulnessFamily):
    """Infidelity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations", NeurIPS):
    ``E_I[(I^T phi - (f(x) - f(x - I)))^2]`` over random perturbations ``I``; as captum's
    ``captum.metrics.infidelity`` (whose global RNG we replace by per-sample seeded draws).

    ``I`` is Gaussian, ``N(0, noise_std^2)`` per pixel (shared by a pixel's channels). With
    ``normalize`` the map is first scaled by the infidelity-optimal
    ``beta = E[I^T phi * df] / E[(I^T phi)^2]`` per image (captum's ``normalize=True``, as in
    the authors' code), so the score does not depend on the scale of the map; it equals
    ``E[df^2] * (1 - rho^2)`` with ``rho`` the uncentered correlation of ``I^T phi`` and ``df``.
    Lower is better; in the units of the target squared (logits by default).

    ``multiply_by_inputs`` follows captum: False (default) for local maps that do not factor in
    the input (gradient, Grad-CAM, Guided Backprop); True for maps that do (Gradient x Input,
    Integrated Gradients): the input is perturbed multiplicatively, ``x - I * x`` (baseline 0),
    and ``I^T phi`` uses the relative perturbation ``I``. For a linear model ``f = w^T x`` the
    gradient map ``w`` has infidelity 0 with False, the contribution map ``w * x`` with True.
    """

    name = "infidelity"
    higher_is_better = {"infidelity": False}
    description = "Expected squared error between the map's linear prediction of a random perturbation's effect and the actual score change"
    reference = "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations (NeurIPS)"

    def __init__(self, *, n_perturbations: int = 50, noise_std: float = 0.1, normalize: bool = True,
                 multiply_by_inputs: bool = False):
        self.n_perturbations = _check_positive_int(self.name, "n_perturbations", n_perturbations)
        self.noise_std = _check_nonneg_float(self.name, "noise_std", noise_std)
        self.normalize = bool(normalize)
        self.multiply_by_inputs = bool(multiply_by_inputs)

    def config(self) -> Dict[str, Any]:
        return {"n_perturbations": self.n_perturbations, "noise_std": self.noise_std,
                "normalize": self.normalize, "multiply_by_inputs": self.multiply_by_inputs}

    def evaluate(self, model: nn.Module, x: Tensor, target: Any, maps: Tensor, *, seed: int) -> Evaluation:
        x, target, maps = _prepare(self.name, model, x, target, maps)
        b, c, h, w = x.shape
        n = self.n_perturbations
        f0 = _clean_scores(model, x, target, False)
        maps64 = maps.to(torch.float64)
        dots, drops = [], []
        for s, e in _sample_chunks(b, n, _row_limit(MAX_BATCH, x[0].numel(), MAX_BATCH_VALUES)):
            xc = x[s:e]
            noise = per_sample_draw(xc, (n, h, w), "infidelity", seed, "noise") * self.noise_std  # (b, n, H, W)
            step = noise.unsqueeze(2)  # (b, n, 1, H, W): the same perturbation for every channel of a pixel
            if self.multiply_by_inputs:
                step = step * xc.unsqueeze(1)
            perturbed = (xc.unsqueeze(1) - step).reshape((e - s) * n, c, h, w)
            dots.append((noise.to(torch.float64) * maps64[s:e].unsqueeze(1)).sum(dim=(-2, -1)))
            scores = _target_scores(model, perturbed, _chunk_target(target, s, e, n), False).view(e - s, n)
            drops.append(f0[s:e].unsqueeze(1) - scores)
        a, d = torch.cat(dots), torch.cat(drops)
        if self.normalize:
            aa, ad = a.square().mean(dim=1), (a * d).mean(dim=1)
            beta = torch.where(aa > 0, ad / aa.where(aa > 0, torch.ones_like(aa)), torch.zeros_like(aa))
            a = a * beta.unsqueeze(1)
        infid = (a - d).square().mean(dim=1)
        return Evaluation(scores={"infidelity": infid.cpu()}, curve=None, summary_step="score",
                          notes={"zero_maps": int((maps.flatten(1) == 0).all(dim=1).sum())})


# ----------------------------------------------------------------------------- max-sensitivity
class MaxSensitivity(FaithfulnessFamily):
    """Max-sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations",
    NeurIPS), relative as in Quantus: ``max_delta ||phi(x + delta) - phi(x)|| / ||phi(x)||``
    (Frobenius norms) over ``n_perturbations`` draws of ``delta`` uniform in the L-inf ball of
    ``radius`` (per input element; captum's ``sensitivity_max`` default radius 0.02).

    Re-runs the explainer: ``evaluate(..., explainer=...)`` takes the :class:`Explainer` (or a
    registry name); the constructor's ``explainer`` name is the fallback. ``phi(x)`` is
    recomputed in the same explainer call as the perturbed maps (one call of ``B * (n + 1)``
    inputs, chunked above :data:`MAX_EXPLAIN_BATCH`), so a post-processing of the given ``maps`` cannot
    masquerade as sensitivity. Lower is better; NaN where ``phi(x)`` is all zero (no relative
    change is defined).
    """

    name = "max_sensitivity"
    higher_is_better = {"max_sensitivity": False}
    description = "Largest relative change of the map under small uniform input perturbations (re-runs the explainer)"
    reference = "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations (NeurIPS)"

    def __init__(self, *, explainer: Optional[str] = None, n_perturbations: int = 10, radius: float = 0.02):
        self.explainer = explainer
        self.n_perturbations = _check_positive_int(self.name, "n_perturbations", n_perturbations)
        self.radius = _check_nonneg_float(self.name, "radius", radius)

    def config(self) -> Dict[str, Any]:
        return {"explainer": self.explainer, "n_perturbations": self.n_perturbations, "radius": self.radius}

    def _resolve(self, explainer: Any):
        from ..explainers import get_explainer

        spec = explainer if explainer is not None else self.explainer
        if spec is None:
            raise ConfigError(f"{self.name}: needs the explainer to re-run on perturbed inputs; pass "
                              "evaluate(..., explainer=<Explainer>) or MaxSensitivity(explainer='<name>')")
        return get_explainer(spec)

    def evaluate(self, model: nn.Module, x: Tensor, target: Any, maps: Tensor, *, seed: int,
                 explainer: Any = None) -> Evaluation:
        explainer = self._resolve(explainer)
        x, target, maps = _prepare(self.name, model, x, target, maps)
        b, c, h, w = x.shape
        n = self.n_perturbations
        sens = []
        for s, e in _sample_chunks(b, n + 1, _row_limit(MAX_EXPLAIN_BATCH, x[0].numel(), MAX_EXPLAIN_VALUES)):
            xc = x[s:e]
            delta = (per_sample_draw(xc, (n, c, h, w), "max_sensitivity", seed, "delta", kind="uniform")
                     * 2 - 1) * self.radius
            inputs = torch.cat([xc.unsqueeze(1), xc.unsqueeze(1) + delta], dim=1)  # (b, n+1, C, H, W)
            out = explainer(model, inputs.reshape((e - s) * (n + 1), c, h, w), _chunk_target(target, s, e, n + 1))
            out = out.to(torch.float64).reshape(e - s, n + 1, h * w)
            ref, pert = out[:, 0], out[:, 1:]
            num = (pert - ref.unsqueeze(1)).norm(dim=-1).amax(dim=1)
            den = ref.norm(dim=-1)
            sens.append(torch.where(den > 0, num / den.where(den > 0, torch.ones_like(den)),
                                    torch.full_like(den, float("nan"))))
        score = torch.cat(sens)
        return Evaluation(scores={"max_sensitivity": score.cpu()}, curve=None, summary_step="score",
                          notes={"explainer": getattr(explainer, "name", str(explainer)),
                                 "zero_maps": int(torch.isnan(score).sum())})


# ----------------------------------------------------------------------------- ROAD
#: neighbour offsets and weights of Noisy Linear Imputation (Rong et al. 2022): 1/6 for the four
#: direct neighbours, 1/12 for the four diagonal ones (they sum to 1 in the interior)
_DIRECT, _DIAGONAL = 1.0 / 6.0, 1.0 / 12.0


@contextmanager
def _one_cpu_thread(device: torch.device):
    """Run the block with one intra-op thread on CPU (restored afterwards).

    The solver issues ~20 small element-wise ops per iteration; with OpenMP's fork/join per op,
    two threads on a 2-core machine that is also running anything else made it 10-200x slower
    than one thread (measured: 6.7 s vs 0.6 s for 128 images x 18 masks of 28x28).
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _solve_linear_imputation(x: Tensor, removed: Tensor, tol: Optional[float] = None,
                             max_iter: Optional[int] = None) -> Tuple[Tensor, float, int]:
    with _one_cpu_thread(x.device):
        return _solve_cg(x, removed, tol, max_iter)


def _solve_cg(x: Tensor, removed: Tensor, tol: Optional[float], max_iter: Optional[int]) -> Tuple[Tensor, float, int]:
    """Solve Noisy Linear Imputation's system (noise-free) for ``x (N, C, H, W)`` and ``removed (N, H, W)``.

    Each removed pixel equals the weighted mean of its in-image neighbours (weights
    :data:`_DIRECT` / :data:`_DIAGONAL`, renormalized at the border), all removed pixels jointly:
    ``d_i u_i - sum_{n removed} w_n u_n = sum_{n kept} w_n x_n`` with ``d_i`` the sum of the
    in-image weights. The matrix is symmetric and, wherever a connected group of removed pixels
    touches a kept pixel, positive definite, so batched conjugate gradients on the whole grid
    solve all images and channels at once: the iterates live on the removed pixels only (zero
    elsewhere), the 3x3 stencil is applied by shifted in-place adds into preallocated buffers,
    in float64 for float64 inputs (relative residual ``tol`` = 1e-10) and float32 otherwise
    (1e-6; the imputed values are then within ~1e-5 of the exact solution, far below ROAD's
    imputation noise of 0.01). Returns (values on the grid, zero at kept pixels; the largest
    relative residual; iterations).
    """
    n, c, h, w = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if tol is None:
        tol = 1e-10 if dtype == torch.float64 else 1e-6
    rows, dev = n * c, x.device
    m = removed.to(dtype).unsqueeze(1).expand(n, c, h, w).reshape(rows, h, w)
    pad = torch.zeros(rows, h + 2, w + 2, dtype=dtype, device=dev)  # zero border: outside the image
    inner = pad[:, 1:-1, 1:-1]
    diagonal = torch.empty(rows, h, w, dtype=dtype, device=dev)

    def stencil(t: Tensor, out: Tensor) -> Tensor:  # out = sum_n w_n t[neighbour n]
        inner.copy_(t)
        torch.add(pad[:, :-2, 1:-1], pad[:, 2:, 1:-1], out=out)
        out.add_(pad[:, 1:-1, :-2]).add_(pad[:, 1:-1, 2:])
        torch.add(pad[:, :-2, :-2], pad[:, :-2, 2:], out=diagonal)
        diagonal.add_(pad[:, 2:, :-2]).add_(pad[:, 2:, 2:])
        return out.mul_(_DIRECT).add_(diagonal, alpha=_DIAGONAL)

    ones = torch.ones(1, h, w, dtype=dtype, device=dev).expand(rows, h, w)
    d = stencil(ones, torch.empty(rows, h, w, dtype=dtype, device=dev))[0].clone()  # in-image weight sums

    def apply(p: Tensor, out: Tensor) -> Tensor:  # the system matrix on vectors that vanish at kept pixels
        stencil(p, out)
        return out.neg_().addcmul_(d, p).mul_(m)

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return torch.bmm(a.view(rows, 1, -1), b.view(rows, -1, 1)).view(rows)

    rhs = torch.empty(rows, h, w, dtype=dtype, device=dev)
    stencil(x.to(dtype).reshape(rows, h, w) * (1 - m), rhs).mul_(m)
    u, r, p, ap = torch.zeros_like(rhs), rhs.clone(), rhs.clone(), torch.empty_like(rhs)
    rs = dot(r, r)
    scale = rs.sqrt()
    limit = rs * (tol * tol)
    iters = 0
    cap = max_iter if max_iter is not None else 10 * max(h, w) + 100
    while iters < cap:
        active = rs > limit
        if not bool(active.any()):
            break
        iters += 1
        apply(p, ap)
        pap = dot(p, ap)
        ok = active & (pap > 0)
        alpha = torch.where(ok, rs / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        u.addcmul_(alpha.view(rows, 1, 1), p)
        r.addcmul_(alpha.view(rows, 1, 1), ap, value=-1)
        rs_new = dot(r, r)
        ok = ok & (rs > 0)
        beta = torch.where(ok, rs_new / torch.where(ok, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p.mul_(beta.view(rows, 1, 1)).add_(r)
        rs = torch.where(active, rs_new, rs)
    true_res = (rhs - apply(u, ap)).flatten(1).norm(dim=1)
    rel = torch.where(scale > 0, true_res / torch.where(scale > 0, scale, torch.ones_like(scale)), true_res)
    return u.view(n, c, h, w), float(rel.max()) if rel.numel() else 0.0, iters


def noisy_linear_impute(x: Tensor, removed: Tensor, *, noise: Optional[Tensor] = None, tol: Optional[float] = None,
                        max_iter: Optional[int] = None) -> Tensor:
    """Noisy Linear Imputation of Rong et al. 2022 (ROAD), batched.

    ``x``: ``(N, C, H, W)`` images; ``removed``: ``(N, H, W)`` bool, True where a pixel is
    removed. Each removed pixel becomes the weighted mean of its 8 neighbours (1/6 direct, 1/12
    diagonal; neighbours outside the image are left out and the weights renormalized), solved
    jointly over all removed pixels (see :func:`_solve_linear_imputation`: conjugate gradients to
    a relative residual ``tol``, by default 1e-10 for float64 inputs and 1e-6 otherwise), plus ``noise`` (a tensor of ``x``'s shape, already scaled — e.g.
    ``0.01 * standard normal`` as in the authors' ``NoisyLinearImputer``) at the removed pixels
    only. Kept pixels are returned bit for bit. An image with every pixel removed has no data to
    interpolate and is imputed as 0 (plus noise).
    """
    if x.ndim != 4 or tuple(removed.shape) != (x.shape[0], *x.shape[2:]):
        raise ConfigError(f"noisy_linear_impute: expected x (N, C, H, W) and removed (N, H, W), got "
                          f"{tuple(x.shape)} and {tuple(removed.shape)}")
    removed = removed.to(device=x.device, dtype=torch.bool)
    values, _, _ = _solve_linear_imputation(x, removed, tol, max_iter)
    if noise is not None:
        values = values + noise.to(values)
    return torch.where(removed.unsqueeze(1), values.to(x.dtype), x)


_ORDERS = ("morf", "lerf")


class ROAD(FaithfulnessFamily):
    """ROAD — RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy
    for Attribution Methods", ICML), without retraining.

    For each fraction ``p`` in ``percentages`` remove ``floor(p * H * W)`` pixels — the most
    relevant first (MoRF, by the signed map value, largest first) or the least relevant first
    (LeRF) — and fill them by Noisy Linear Imputation (:func:`noisy_linear_impute`; noise
    ``noise_std``, 0.01 as in the authors' ``NoisyLinearImputer``; the imputation removes the
    mask-shape leak that makes plain deletion inconsistent between MoRF and LeRF). Record the
    class probability (``softmax``; the target on the raw output otherwise) at each fraction.

    Scores: ``road_morf_auc``, the mean over ``percentages`` of the MoRF curve (lower is better),
    and ``road_lerf_auc`` for LeRF (higher is better). The curve is ``(B, len(orders) *
    len(percentages))``: the MoRF curve then the LeRF curve, step ``i`` labelled
    ``notes["curve_steps"][i]`` (e.g. ``"morf@0.1"``).

    Notes on the reference code (github.com/tleemann/road_evaluation): its LeRF at fraction
    ``p`` removes all but the top ``p`` (``1 - p`` removed); we remove the bottom ``p`` — with
    fractions symmetric about 1/2, as the default, the AUC is the same, the curve reversed. Ties
    are broken there by a fixed 1e-4 Gaussian jitter, here by a seeded random order per image,
    as in :mod:`sanitycheck.metrics.curves` (maps with ties and constant maps are counted in
    ``notes``; a constant map is thus scored as a random order — the floor a map should beat).

    Solver: the joint linear system is solved with batched conjugate gradients on the pixel grid
    (relative residual 1e-6 in float32, 1e-10 for float64 inputs) for all images, fractions and
    orders at once, instead of the reference's sparse direct solver per image (scipy ``spsolve``):
    the stencil is 3x3, so an iteration is a few shifted adds, 28x28 images converge in about 50
    iterations, and it runs on the model's device. The largest residual and the iteration count
    are in ``notes``.
    """

    name = "road"
    higher_is_better = {"road_morf_auc": False, "road_lerf_auc": True}
    description = "Class probability after removing the most / least relevant pixels, filled by noisy linear imputation"
    reference = "Rong et al. 2022, A Consistent and Efficient Evaluation Strategy for Attribution Methods (ICML)"

    def __init__(self, *, percentages: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                 orders: Sequence[str] = _ORDERS, noise_std: float = 0.01, softmax: bool = True):
        pcts = tuple(float(p) for p in percentages)
        if not pcts or any(not (0.0 <= p <= 1.0) for p in pcts):
            raise ConfigError(f"{self.name}: percentages must be a non-empty list of fractions in [0, 1], got {percentages!r}")
        orders = (orders,) if isinstance(orders, str) else tuple(orders)
        if not orders or any(o not in _ORDERS for o in orders) or len(set(orders)) != len(orders):
            raise ConfigError(f"{self.name}: orders must be distinct values among {_ORDERS}, got {orders!r}")
        self.percentages, self.orders = pcts, orders
        self.noise_std = _check_nonneg_float(self.name, "noise_std", noise_std)
        self.softmax = bool(softmax)

    def config(self) -> Dict[str, Any]:
        return {"percentages": list(self.percentages), "orders": list(self.orders),
                "noise_std": self.noise_std, "softmax": self.softmax}

    def curve_steps(self) -> list:
        return [f"{o}@{p:g}" for o in self.orders for p in self.percentages]

    def removal_masks(self, maps: Tensor, tie_keys: Tensor) -> Tensor:
        """``(B, len(orders), len(percentages), H, W)`` bool, True where a pixel is removed."""
        b, h, w = maps.shape
        hw = h * w
        flat = maps.flatten(1)
        shuffle = tie_keys.argsort(dim=1)  # a random order, then a stable sort by value: ties in random order
        by_value = flat.gather(1, shuffle).argsort(dim=1, descending=True, stable=True)
        order = shuffle.gather(1, by_value)  # most relevant first
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(hw, device=maps.device).expand(b, hw))
        counts = torch.tensor([math.floor(p * hw + 1e-9) for p in self.percentages], device=maps.device)
        masks = []
        for o in self.orders:
            if o == "morf":
                masks.append(rank.unsqueeze(1) < counts.view(1, -1, 1))
            else:
                masks.append(rank.unsqueeze(1) >= (hw - counts).view(1, -1, 1))
        return torch.stack(masks, dim=1).view(b, len(self.orders), len(self.percentages), h, w)

    def evaluate(self, model: nn.Module, x: Tensor, target: Any, maps: Tensor, *, seed: int) -> Evaluation:
        x, target, maps = _prepare(self.name, model, x, target, maps)
        if self.softmax:
            _check_softmax_target(self.name, target)
        b, c, h, w = x.shape
        n_o, n_p = len(self.orders), len(self.percentages)
        per = n_o * n_p
        curves, max_res, iters, ties, constant = [], 0.0, 0, 0, 0
        for s, e in _sample_chunks(b, per, _row_limit(MAX_BATCH, x[0].numel(), MAX_BATCH_VALUES)):
            xc, mc = x[s:e], maps[s:e]
            tie_keys = per_sample_draw(xc, (h * w,), "road", seed, "ties", kind="uniform")
            sorted_vals = mc.flatten(1).sort(dim=1).values
            ties += int((sorted_vals[:, 1:] == sorted_vals[:, :-1]).any(dim=1).sum())
            constant += int((sorted_vals[:, 0] == sorted_vals[:, -1]).sum())
            removed = self.removal_masks(mc, tie_keys).reshape((e - s) * per, h, w)
            images = xc.unsqueeze(1).expand(e - s, per, c, h, w).reshape((e - s) * per, c, h, w)
            values, res, it = _solve_linear_imputation(images, removed)
            max_res, iters = max(max_res, res), max(iters, it)
            if self.noise_std > 0:
                noise = per_sample_draw(xc, (per, c, h, w), "road", seed, "noise") * self.noise_std
                values = values + noise.reshape_as(values).to(values)
            imputed = torch.where(removed.unsqueeze(1), values.to(x.dtype), images)
            probs = _target_scores(model, imputed, _chunk_target(target, s, e, per), self.softmax, self.name)
            curves.append(probs.view(e - s, per))
        curve = torch.cat(curves)
        scores = {f"road_{o}_auc": curve[:, i * n_p:(i + 1) * n_p].mean(dim=1).cpu() for i, o in enumerate(self.orders)}
        return Evaluation(scores=scores, curve=curve.cpu(), curve_metric="probability", summary_step="auc",
                          notes={"curve_steps": self.curve_steps(), "percentages": list(self.percentages),
                                 "maps_with_ties": ties, "constant_maps": constant,
                                 "imputation_max_relative_residual": max_res, "imputation_iterations": iters})
