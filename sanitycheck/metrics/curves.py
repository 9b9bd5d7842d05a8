"""Perturbation curves: deletion and insertion (Petsiuk et al., BMVC 2018, "RISE") and AOPC
(Samek et al., IEEE TNNLS 2017), sharing one batched core, :func:`perturbation_curve`.

Protocol (after the reference evaluation of RISE)
-------------------------------------------------
Pixels are ordered by the map: descending (MoRF, "most relevant first") or ascending (LeRF).
A curve has ``n_steps + 1`` states, the start included. At state ``i`` the first ``counts[i]``
pixels of the order are *perturbed*:

* ``mode="delete"``: the image with those pixels replaced by the substrate (state 0 is the
  image itself, the last state is the substrate);
* ``mode="insert"``: the substrate with those pixels restored from the image (state 0 is the
  substrate, the last state is the image).

A pixel is a spatial position: all channels of it change together. Each state's value is the
probability of the explained class (softmax of the model's output, then the class of the target)
with ``softmax=True``, or ``target.score(output)`` with ``softmax=False``.

Step schedule: with ``pixels_per_step=p`` there are ``n_steps = ceil(H*W / p)`` steps of ``p``
pixels, the **last step taking the remainder** (as the reference code does); the ``n_steps``
argument is then ignored. With ``pixels_per_step=None`` there are exactly ``n_steps`` steps and
``counts[i] = floor(i * H*W / n_steps)``: ``H*W / n_steps`` pixels per step, spread evenly when
it is not an integer (steps differ by at most one pixel). 28x28 with 28 steps: 28 pixels a step.

AUC: trapezoid rule over the states at uniform spacing on an x axis in [0, 1] (divided by the
number of steps), as the reference evaluation — also when the last step is shorter.

Substrates: ``"zero"`` (0 in the model's input space: the reference deletion, which works in
normalized space), ``"mean"`` (per-image, per-channel mean), ``"blur"`` (Gaussian blur, kernel
``blur_kernel``, sigma ``blur_sigma``; the reference insertion uses 11 and 5: the kernel is built
exactly like the reference's ``gkern`` — scipy's ``gaussian_filter`` of a centred delta, reflecting
at the kernel's edges — and applied per channel with zero padding, ``padding=k // 2``), or a float
constant.

Ties: pixels with equal relevance (a constant map, a map with exact zeros) have no order; they
are ordered at random by a generator derived from ``(seed, family name, "ties")`` and the content
of each image (:func:`sanitycheck.seeding.per_sample_draw`), so results are deterministic and
batch invariant. The number of maps with ties (and of constant maps) is recorded in the notes.

Errors: maps not of shape ``(B, H, W)`` matching the inputs, or with NaN/inf, raise
:class:`~sanitycheck.errors.AttributionError`. With ``softmax=True`` a model whose outputs already
look like probabilities (every row non-negative, summing to 1) raises
:class:`~sanitycheck.errors.ConfigError` ("model returns probabilities; pass softmax=False"): a
second softmax would squash the curve towards ``1 / n_classes``. So does a model with a single
output (its softmax is constant), and ``softmax=True`` with a target that is not a class target.

All states of all images are built chunk by chunk from a rank-derived mask (no per-image Python
loop) and go through the model in batches of ``batch_size``, on the model's device, under
``torch.no_grad()``; the model is not changed. ``batch_size=None`` (the default) means 4096 states
per forward on an accelerator and 256 on the CPU (see :func:`default_batch_size`); the results do
not depend on it.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import AttributionError, ConfigError
from ..seeding import per_sample_draw
from ..targets import ClassTarget, Target, as_target
from .base import Evaluation, FaithfulnessFamily

__all__ = [
    "perturbation_curve",
    "trapezoid_auc",
    "gaussian_kernel",
    "make_substrate",
    "step_counts",
    "default_batch_size",
    "relevance_order",
    "Deletion",
    "Insertion",
    "AOPCMoRF",
    "AOPCLeRF",
]

SUBSTRATES = ("zero", "mean", "blur")

SubstrateSpec = Union[str, float, int]


# ----------------------------------------------------------------------------- building blocks
def _check_substrate(substrate: SubstrateSpec) -> SubstrateSpec:
    if isinstance(substrate, bool) or not (
        substrate in SUBSTRATES or (isinstance(substrate, (int, float)) and math.isfinite(substrate))
    ):
        raise ConfigError(f"substrate must be one of {SUBSTRATES} or a finite float constant, got {substrate!r}")
    return substrate


def gaussian_kernel(size: int = 11, sigma: float = 5.0) -> Tensor:
    """The ``(size, size)`` blur kernel of the RISE reference (``gkern``), float64, summing to 1.

    ``gkern`` smooths a centred delta with ``scipy.ndimage.gaussian_filter(delta, sigma)``: a
    sampled Gaussian truncated at 4 sigma, folded back into the kernel at its edges ("reflect"
    mode). Separable, so it is the outer product of the 1-D folded kernel computed here.
    """
    if not (isinstance(size, int) and size >= 1 and size % 2 == 1):
        raise ConfigError(f"blur_kernel must be a positive odd integer, got {size!r}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ConfigError(f"blur_sigma must be positive, got {sigma!r}")
    radius = int(4.0 * float(sigma) + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * taps**2 / float(sigma) ** 2)
    w = w / w.sum()
    centre, period = size // 2, 2 * size
    k1 = torch.zeros(size, dtype=torch.float64)
    # output[j] = sum_t w[t] * delta[reflect(j + t)]: w[t] lands on every j with reflect(j + t) == centre
    for j in range(size):
        for t in range(-radius, radius + 1):
            i = (j + t) % period
            if i >= size:
                i = period - 1 - i
            if i == centre:
                k1[j] += w[t + radius]
    return torch.outer(k1, k1)


def make_substrate(x: Tensor, substrate: SubstrateSpec, blur_kernel: int = 11, blur_sigma: float = 5.0) -> Tensor:
    """The fully perturbed version of ``x`` (B, C, H, W) for a substrate spec."""
    if substrate == "zero":
        return torch.zeros_like(x)
    if substrate == "mean":
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x).contiguous()
    if substrate == "blur":
        c = x.shape[1]
        k = gaussian_kernel(blur_kernel, blur_sigma).to(device=x.device, dtype=x.dtype)
        weight = k.expand(c, 1, *k.shape).contiguous()
        return nn.functional.conv2d(x, weight, padding=blur_kernel // 2, groups=c)
    return torch.full_like(x, float(substrate))


def step_counts(n_pixels: int, n_steps: int, pixels_per_step: Optional[int]) -> Tensor:
    """Pixels perturbed at each state, ``(S + 1,)`` int64 from 0 to ``n_pixels`` (see the module doc)."""
    if pixels_per_step is not None:
        s = -(-n_pixels // pixels_per_step)
        return (torch.arange(s + 1, dtype=torch.int64) * pixels_per_step).clamp_(max=n_pixels)
    return torch.arange(n_steps + 1, dtype=torch.int64) * n_pixels // n_steps


def relevance_order(
    maps: Tensor, x: Tensor, order: str, seed_parts: Tuple[Any, ...]
) -> Tuple[Tensor, Tensor, Tensor]:
    """Pixel order per map ``(B, H*W)`` (most relevant first for ``"morf"``, least for ``"lerf"``),
    with ties broken by a seeded random order keyed on each image's content.

    Returns ``(order, has_ties, is_constant)``, the last two boolean ``(B,)``.
    """
    flat = maps.reshape(maps.shape[0], -1)
    descending = order == "morf"
    srt, idx = flat.sort(dim=1, descending=descending, stable=True)
    has_ties = (srt[:, 1:] == srt[:, :-1]).any(dim=1)
    is_constant = srt[:, 0] == srt[:, -1]
    if bool(has_ties.any()):
        rows = has_ties.nonzero().squeeze(1)
        # a random permutation per tied row, then a stable sort: equal values keep the random order
        # (float32 draws whatever the input dtype; the key is the image's float32 content)
        u = per_sample_draw(x[rows].float(), (flat.shape[1],), *seed_parts, "ties", kind="uniform")
        perm = u.argsort(dim=1, stable=True)
        vals = flat[rows].gather(1, perm)
        idx = idx.clone()
        idx[rows] = perm.gather(1, vals.sort(dim=1, descending=descending, stable=True).indices)
    return idx, has_ties, is_constant


def trapezoid_auc(curve: Tensor) -> Tensor:
    """Trapezoid rule over ``(B, S + 1)`` at uniform spacing, x axis in [0, 1] (divided by S)."""
    s = curve.shape[1] - 1
    if s < 1:
        return curve[:, 0].clone()
    return (curve.sum(dim=1) - 0.5 * (curve[:, 0] + curve[:, -1])) / s


def default_batch_size(device: torch.device) -> int:
    """States per forward when ``batch_size=None``: 4096 on an accelerator; 128 on the CPU, where
    large batches overflow the caches (LeNet on 1x28x28, 2 idle cores, 256 images x 29 states:
    0.62 s at 128 per forward, 0.70 s at 64, 1.10 s at 256, 1.32 s at 1024)."""
    return 128 if torch.device(device).type == "cpu" else 4096


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return fallback


def _class_indices(target: Target) -> Optional[Tensor]:
    if isinstance(target, ClassTarget):
        return target.classes
    base = getattr(target, "base", None)
    if isinstance(base, ClassTarget):
        return target.per_sample[0]
    return target.class_indices()


def _check_maps(maps: Tensor, x: Tensor, who: str) -> None:
    if not isinstance(maps, Tensor):
        raise AttributionError(f"{who}: maps must be a tensor of shape (B, H, W), got {type(maps).__name__}")
    want = (x.shape[0], *x.shape[-2:])
    if tuple(maps.shape) != want:
        raise AttributionError(
            f"{who}: maps of shape {tuple(maps.shape)} do not match the inputs {tuple(x.shape)}; "
            f"expected (B, H, W) = {want} (reduce channels first)")
    if maps.is_floating_point() or maps.is_complex():
        bad = ~torch.isfinite(maps)
        if bool(bad.any()):
            rows = bad.reshape(maps.shape[0], -1).any(dim=1).nonzero().squeeze(1).tolist()
            raise AttributionError(
                f"{who}: {len(rows)} map(s) contain NaN or inf values (samples {rows[:10]}"
                f"{' ...' if len(rows) > 10 else ''}); a curve needs a finite relevance for every pixel")


def _check_probability_outputs(out: Tensor, who: str) -> None:
    if out.ndim != 2:
        raise ConfigError(f"{who}: softmax=True needs model outputs of shape (batch, classes), got {tuple(out.shape)}")
    if out.shape[1] < 2:
        raise ConfigError(f"{who}: the model has a single output, whose softmax is constant 1; pass softmax=False")
    o = out.detach().double()
    if bool((o >= 0).all()) and bool(((o.sum(dim=1) - 1).abs() < 1e-4).all()):
        raise ConfigError(
            f"{who}: model returns probabilities (every output row is non-negative and sums to 1); "
            "pass softmax=False so the curve uses them directly instead of a second softmax")


# ----------------------------------------------------------------------------- the core
@torch.no_grad()
def perturbation_curve(
    model: nn.Module,
    x: Tensor,
    target: Any,
    maps: Tensor,
    *,
    order: str = "morf",
    mode: str = "delete",
    n_steps: int = 28,
    pixels_per_step: Optional[int] = None,
    substrate: SubstrateSpec = "zero",
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    softmax: bool = True,
    batch_size: Optional[int] = None,
    seed: int = 0,
    name: str = "perturbation_curve",
) -> Tuple[Tensor, Dict[str, Any]]:
    """Batched perturbation curves ``(B, S + 1)`` of ``model`` on ``x`` (B, C, H, W) for ``maps``
    (B, H, W); see the module docstring for the protocol. Returns ``(curve, info)`` with ``info``
    holding the schedule and the tie counts. The curve is on the model's device, float32 or the
    dtype of the model's output.
    """
    if order not in ("morf", "lerf"):
        raise ConfigError(f"{name}: order must be 'morf' or 'lerf', got {order!r}")
    if mode not in ("delete", "insert"):
        raise ConfigError(f"{name}: mode must be 'delete' or 'insert', got {mode!r}")
    _check_substrate(substrate)
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError(f"{name}: batch_size must be a positive integer or None, got {batch_size!r}")
    if x.ndim != 4:
        raise AttributionError(f"{name}: expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    _check_maps(maps, x, name)
    target = as_target(target)

    device = _model_device(model, x.device)
    if batch_size is None:
        batch_size = default_batch_size(device)
    x = x.detach().to(device)
    maps = maps.detach().to(device)
    b, c, h, w = x.shape
    n_pix = h * w
    counts = step_counts(n_pix, n_steps, pixels_per_step).to(device)
    n_states = counts.numel()

    classes = None
    if softmax and getattr(model, "score", None) in ("cosine", "softmax"):
        # e.g. CLIP similarities: a softmax over raw cosines is nearly uniform, and over a softmax it is a second one
        raise ConfigError(f"{name}: the model outputs {model.score} scores, not logits; pass softmax=False so the "
                          "curve tracks the score itself")
    if softmax:
        classes = _class_indices(target)
        if classes is None:
            raise ConfigError(
                f"{name}: softmax=True needs a class target (the class whose probability is tracked); got "
                f"{type(target).__name__} ({target.description}); pass softmax=False to use the target's score")
        classes = classes.to(device).reshape(-1)
        if classes.numel() != b:
            raise ConfigError(f"{name}: the target has {classes.numel()} classes for {b} inputs")

    idx, has_ties, is_constant = relevance_order(maps, x, order, (seed, name))
    # rank[b, p] = position of pixel p in the order; pixel p is perturbed at state i iff rank < counts[i]
    rank = torch.empty_like(idx).scatter_(1, idx, torch.arange(n_pix, device=device).expand(b, n_pix))
    sub = make_substrate(x, substrate, blur_kernel, blur_sigma)
    # delete: perturbed pixels take the substrate; insert: perturbed (= inserted) pixels take the image
    fill, base = (sub, x) if mode == "delete" else (x, sub)

    total = b * n_states
    curve = None
    for t0 in range(0, total, batch_size):
        t = torch.arange(t0, min(t0 + batch_size, total), device=device)
        bi, si = t // n_states, t % n_states
        mask = (rank[bi] < counts[si].unsqueeze(1)).view(-1, 1, h, w)
        out = model(torch.where(mask, fill[bi], base[bi]))
        if softmax:
            if t0 == 0:
                _check_probability_outputs(out, name)
            vals = out.softmax(dim=1).gather(1, classes[bi].unsqueeze(1)).squeeze(1)
        else:
            sel = target.select(bi) if len(target) else target
            vals = sel(out)
        vals = vals.detach().reshape(-1)
        if curve is None:
            curve = torch.empty(total, dtype=vals.dtype if vals.is_floating_point() else torch.float32, device=device)
        curve[t0 : t0 + vals.numel()] = vals
    curve = curve.view(b, n_states)

    info = {
        "order": order,
        "mode": mode,
        "n_steps": n_states - 1,
        "pixels_per_step": pixels_per_step if pixels_per_step is not None else n_pix / (n_states - 1),
        "last_step_pixels": int(counts[-1] - counts[-2]) if n_states > 1 else 0,
        "substrate": substrate,
        "value": "probability" if softmax else "score",
        "maps_with_ties": int(has_ties.sum()),
        "constant_maps": int(is_constant.sum()),
    }
    if info["maps_with_ties"]:
        info["ties"] = "pixels of equal relevance ordered at random (seeded, keyed per image content)"
    return curve, info


# ----------------------------------------------------------------------------- families
class _CurveFamily(FaithfulnessFamily):
    order = "morf"
    mode = "delete"
    curve_metric_name = "probability"

    def __init__(
        self,
        pixels_per_step: Optional[int] = None,
        n_steps: int = 28,
        substrate: SubstrateSpec = "zero",
        softmax: bool = True,
        batch_size: Optional[int] = None,
        blur_kernel: int = 11,
        blur_sigma: float = 5.0,
    ):
        if pixels_per_step is not None and not (
            isinstance(pixels_per_step, int) and not isinstance(pixels_per_step, bool) and pixels_per_step >= 1
        ):
            raise ConfigError(f"{self.name}: pixels_per_step must be a positive integer or None, got {pixels_per_step!r}")
        if not (isinstance(n_steps, int) and not isinstance(n_steps, bool) and n_steps >= 1):
            raise ConfigError(f"{self.name}: n_steps must be a positive integer, got {n_steps!r}")
        if batch_size is not None and not (
            isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1
        ):
            raise ConfigError(f"{self.name}: batch_size must be a positive integer or None, got {batch_size!r}")
        self.pixels_per_step, self.n_steps = pixels_per_step, n_steps
        self.substrate = _check_substrate(substrate)
        self.softmax, self.batch_size = bool(softmax), batch_size
        if self.substrate == "blur":
            gaussian_kernel(blur_kernel, blur_sigma)  # validates
        self.blur_kernel, self.blur_sigma = blur_kernel, float(blur_sigma)

    def config(self) -> Dict[str, Any]:
        cfg = {
            "pixels_per_step": self.pixels_per_step,
            "n_steps": self.n_steps,
            "substrate": self.substrate,
            "softmax": self.softmax,
            "order": self.order,
            "mode": self.mode,
        }
        if self.substrate == "blur":
            cfg.update(blur_kernel=self.blur_kernel, blur_sigma=self.blur_sigma)
        return cfg

    def curve(self, model: nn.Module, x: Tensor, target: Any, maps: Tensor, *, seed: int) -> Tuple[Tensor, Dict]:
        return perturbation_curve(
            model, x, target, maps,
            order=self.order, mode=self.mode, n_steps=self.n_steps, pixels_per_step=self.pixels_per_step,
            substrate=self.substrate, blur_kernel=self.blur_kernel, blur_sigma=self.blur_sigma,
            softmax=self.softmax, batch_size=self.batch_size, seed=seed, name=self.name,
        )  # fmt: skip

    def _evaluation(self, scores: Dict[str, Tensor], curve: Tensor, info: Dict, summary: str) -> Evaluation:
        return Evaluation(
            scores=scores,
            curve=curve,
            curve_metric="probability" if self.softmax else "score",
            summary_step=summary,
            notes=info,
        )


class Deletion(_CurveFamily):
    """Deletion (Petsiuk et al., BMVC 2018): remove the most relevant pixels first (replace them
    with the substrate, 0 by default), track the explained class's probability, score its AUC.

    ``pixels_per_step=None``: ``H*W / n_steps`` pixels a step, spread evenly; an integer ``p``
    gives ``ceil(H*W / p)`` steps, the last taking the remainder (``n_steps`` ignored). A model
    returning probabilities with ``softmax=True`` raises ConfigError (pass ``softmax=False``).
    Lower AUC is better. See :mod:`sanitycheck.metrics.curves` for the full protocol.
    """

    name = "deletion"
    higher_is_better = {"auc": False}
    description = "AUC of the class probability as the most relevant pixels are deleted (lower is better)"
    reference = "Petsiuk, Das & Saenko, RISE, BMVC 2018"
    order, mode = "morf", "delete"

    def evaluate(self, model, x: Tensor, target, maps: Tensor, *, seed: int) -> Evaluation:
        curve, info = self.curve(model, x, target, maps, seed=seed)
        return self._evaluation({"auc": trapezoid_auc(curve)}, curve, info, "auc")


class Insertion(_CurveFamily):
    """Insertion (Petsiuk et al., BMVC 2018): start from a blurred image (Gaussian, kernel 11,
    sigma 5, as the reference) and restore the most relevant pixels first; AUC of the explained
    class's probability. Higher AUC is better. Same schedule, tie and error rules as
    :class:`Deletion`.
    """

    name = "insertion"
    higher_is_better = {"auc": True}
    description = "AUC of the class probability as the most relevant pixels are restored into a blurred image"
    reference = "Petsiuk, Das & Saenko, RISE, BMVC 2018"
    order, mode = "morf", "insert"

    def __init__(
        self,
        pixels_per_step: Optional[int] = None,
        n_steps: int = 28,
        substrate: SubstrateSpec = "blur",
        softmax: bool = True,
        batch_size: Optional[int] = None,
        blur_kernel: int = 11,
        blur_sigma: float = 5.0,
    ):
        super().__init__(pixels_per_step, n_steps, substrate, softmax, batch_size, blur_kernel, blur_sigma)

    def evaluate(self, model, x: Tensor, target, maps: Tensor, *, seed: int) -> Evaluation:
        curve, info = self.curve(model, x, target, maps, seed=seed)
        return self._evaluation({"auc": trapezoid_auc(curve)}, curve, info, "auc")


class _AOPC(_CurveFamily):
    reference = "Samek, Binder, Montavon, Lapuschkin & Müller, IEEE TNNLS 2017"

    def evaluate(self, model, x: Tensor, target, maps: Tensor, *, seed: int) -> Evaluation:
        curve, info = self.curve(model, x, target, maps, seed=seed)
        # mean over k = 0..S of f(x) - f(x_k); state 0 is the unperturbed image
        aopc = (curve[:, :1] - curve).mean(dim=1)
        return self._evaluation({"aopc": aopc}, curve, info, "aopc")


class AOPCMoRF(_AOPC):
    """Area over the perturbation curve, most relevant first (Samek et al. 2017):
    ``mean_{k=0..S} f(x) - f(x_k)``, ``x_k`` with the ``k`` most relevant steps of pixels replaced by
    the substrate. The schedule runs to the whole image (the final states are the same for any
    map). Higher is better.
    """

    name = "aopc_morf"
    higher_is_better = {"aopc": True}
    description = "area over the MoRF perturbation curve (higher is better)"
    order, mode = "morf", "delete"


class AOPCLeRF(_AOPC):
    """Area over the perturbation curve, least relevant first: removing the least relevant pixels
    should change the output little, so lower is better."""

    name = "aopc_lerf"
    higher_is_better = {"aopc": False}
    description = "area over the LeRF perturbation curve (lower is better)"
    order, mode = "lerf", "delete"
