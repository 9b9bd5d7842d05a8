"""Sparse autoencoders over cached activations, trained deterministically, saved in SAELens' on-disk format.

Two architectures:

* ``"relu"`` — the deck's (Bricken et al. 2023, "Towards Monosemanticity"): the decoder bias is subtracted
  from the input before encoding (the tied pre-encoder bias), ``z = ReLU((x - b_dec) W_enc + b_enc)``,
  ``x_hat = z W_dec + b_dec``, loss = squared error (summed over ``d_in``) + ``l1_coefficient`` * L1 of
  ``z``; the decoder rows are renormalized to unit norm after every step and the gradient's component
  parallel to each row is removed before it (as SAELens does). In SAELens' terms this is the ``"standard"``
  architecture with ``apply_b_dec_to_input: true``.
* ``"topk"`` — Gao et al. 2024 ("Scaling and evaluating sparse autoencoders"): the same affine encoder, the
  ``k`` largest pre-activations kept and passed through a ReLU, the rest zero; loss = squared error only;
  decoder rows kept at unit norm as in the paper. SAELens' ``"topk"``.

Activations are normalized before training so that ``E ||x||^2 = d_in`` (Anthropic's April 2024 update,
SAELens' ``normalize_activations: "expected_average_only_in"``): ``x / scaling_factor``. As SAELens' trainer
does at the end of training, the factor is then *folded into the weights* (``W_enc / c``, ``W_dec * c``,
``b_dec * c``) and set to 1, so the trained SAE reads activations in their original scale, the saved
weights are the weights it computes with, and a save/load round trip is exact. Folding scales every decoder
row by the same ``c`` (``log["scaling_factor"]``): cosines between decoder directions are unchanged.

Everything random (initialization, batch order) comes from ``torch.Generator`` seeded by ``cfg.seed`` (via
:func:`sanitycheck.seeding.derive_seed`); the global RNG is never touched. ``acts`` may be a memory-mapped
float32 tensor with millions of rows: batches are gathered from it by index, never the whole tensor copied.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError, SAEFormatError
from ..seeding import derive_seed

__all__ = ["SAEConfig", "SparseAutoencoder", "train_sae", "fit_sae", "save_sae", "load_sae", "ARCHITECTURES",
           "SAELENS_VERSION"]

PathLike = Union[str, os.PathLike]

#: our name -> SAELens' v6 ``architecture`` field
ARCHITECTURES = {"relu": "standard", "topk": "topk"}
_FROM_SAELENS = {v: k for k, v in ARCHITECTURES.items()}
#: the SAELens version whose format we write (cfg.json ``metadata.sae_lens_version``); read from the 6.54.12 wheel
SAELENS_VERSION = "6.54.12"
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
_WEIGHT_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


@dataclass(frozen=True)
class SAEConfig:
    """Hyperparameters of one SAE. ``as_dict()`` is what the cache key hashes.

    Defaults, chosen on synthetic data (sparse non-negative combinations of known directions, with and without a
    large mean, normalized so that ``E||x||^2 = d_in``) under the CPU budget of the suite:

    * ``l1_coefficient=1.0``: the L1 term is weighted by decoder norms (1) and the squared error is summed over
      ``d_in``. Anthropic's April 2024 value (5) left short runs here unable to reconstruct (FVU 0.97; l1 3 -> L0 2) when the
      activations carry a large mean (the mean takes most of ``E||x||^2``, so the features' coefficients are
      small in normalized units). Measured: zero-mean data, d_in=32 -> 128, ~1200-1600 steps of 256: l1 1.0 -> L0 10, FVU
      0.09, every direction recovered; l1 2.0 -> L0 6, FVU 0.16. Mean-dominated data, 512 -> 2048, 195 steps:
      l1 1.0 -> L0 154, FVU 0.62; 1.2 -> L0 72, FVU 0.80; 2.0 -> L0 4, FVU 1.0 (collapsed). 1.0 is the value
      that never collapsed; the L0 it reaches depends on the data and the length of training, so the suite
      should set it per hook (it is a suite parameter).
    * ``lr=2e-3`` (Adam, decayed to 0 over the last 20 %): runs of a few hundred steps learn; Gao et al.'s
      ``2e-4 / sqrt(d_sae / 16384)`` (4e-4 at 4096) is for runs 100x longer and barely moved in 200 steps.
    * ``train_tokens=500_000`` (~490 steps of 1024): about 2-3 minutes for 512 -> 4096 on one CPU thread
      (benchmarks/bench_sae_training.py), what a 30-minute suite with several SAEs affords; more is better.
    * ``k=32`` (within the range Gao et al. sweep) and ``batch_size=1024``.
    """

    d_in: int
    d_sae: int
    architecture: str = "relu"
    l1_coefficient: float = 1.0
    k: int = 32
    seed: int = 0
    train_tokens: int = 500_000
    batch_size: int = 1024
    lr: float = 2e-3
    hook_name: str = ""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"SAE architecture {self.architecture!r} is not supported; use one of "
                              f"{sorted(ARCHITECTURES)}")
        for name in ("d_in", "d_sae", "train_tokens", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"SAEConfig.{name} must be a positive integer, got {v!r}")
        if self.architecture == "topk" and not (1 <= self.k <= self.d_sae):
            raise ConfigError(f"SAEConfig.k must be in [1, d_sae={self.d_sae}] for topk, got {self.k!r}")
        if self.l1_coefficient < 0 or self.lr <= 0:
            raise ConfigError(f"SAEConfig needs l1_coefficient >= 0 and lr > 0, got {self.l1_coefficient!r}, "
                              f"{self.lr!r}")

    def as_dict(self) -> dict:
        return asdict(self)


class SparseAutoencoder(nn.Module):
    """``W_enc (d_in, d_sae)``, ``b_enc (d_sae,)``, ``W_dec (d_sae, d_in)``, ``b_dec (d_in,)`` — SAELens' names
    and shapes. ``encode``/``decode``/``forward`` take activations in their original scale: ``x`` is divided
    by ``scaling_factor`` before encoding and the reconstruction multiplied back (1 after training/loading,
    see the module docstring)."""

    def __init__(self, cfg: SAEConfig, scaling_factor: float = 1.0):
        super().__init__()
        self.cfg = cfg
        self.scaling_factor = float(scaling_factor)
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.extra_cfg: Dict[str, Any] = {}

    # ------------------------------------------------------------------ maths (normalized scale)
    def _pre(self, xn: Tensor) -> Tensor:
        return (xn - self.b_dec) @ self.W_enc + self.b_enc

    def _act(self, pre: Tensor) -> Tensor:
        if self.cfg.architecture == "topk":
            vals, idx = torch.topk(pre, self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
        return F.relu(pre)

    def _check_width(self, x: Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise ConfigError(
                f"an SAE whose input width does not match the hooked activation: the SAE reads d_in="
                f"{self.cfg.d_in} (hook {self.cfg.hook_name or '?'!r}), the activations have width "
                f"{x.shape[-1]}; use an SAE trained on this hook")

    def encode(self, x: Tensor) -> Tensor:
        """``(..., d_in)`` activations -> ``(..., d_sae)`` latent activations (>= 0)."""
        self._check_width(x)
        x = x.to(self.W_enc.dtype)
        return self._act(self._pre(x / self.scaling_factor if self.scaling_factor != 1.0 else x))

    def decode(self, z: Tensor) -> Tensor:
        """``(..., d_sae)`` latents -> ``(..., d_in)`` reconstruction in the original scale."""
        out = z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        return out * self.scaling_factor if self.scaling_factor != 1.0 else out

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def fold_scaling_factor(self) -> "SparseAutoencoder":
        """Fold ``scaling_factor`` into the weights (SAELens' ``fold_activation_norm_scaling_factor``, for our
        divide-by convention) and set it to 1. Outputs are unchanged up to float rounding."""
        c = self.scaling_factor
        if c != 1.0:
            self.W_enc.div_(c)
            self.W_dec.mul_(c)
            self.b_dec.mul_(c)
            self.scaling_factor = 1.0
        return self

    def extra_repr(self) -> str:
        return (f"d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, architecture={self.cfg.architecture!r}, "
                f"k={self.cfg.k if self.cfg.architecture == 'topk' else None}, scaling_factor={self.scaling_factor}")


# ====================================================================== training
def _check_acts(acts: Tensor, d_in: int) -> None:
    if not isinstance(acts, Tensor) or acts.dim() != 2:
        raise DataError(f"SAE training needs activations of shape (n_tokens, d_in), got "
                        f"{tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__}")
    if acts.shape[1] != d_in:
        raise ConfigError(f"an SAE whose input width does not match the hooked activation: SAEConfig.d_in={d_in}, "
                          f"the activations have width {acts.shape[1]}; set d_in={acts.shape[1]}")
    if acts.shape[0] < 2:
        raise DataError(f"SAE training needs at least 2 activation rows, got {acts.shape[0]}")


def _raise_nonfinite(batch: Tensor, rows: Tensor) -> None:
    bad = (~torch.isfinite(batch)).any(dim=1).nonzero().flatten()
    where = rows[bad[:5]].tolist()
    raise DataError(f"NaN or inf in the activations (rows {where}{' ...' if bad.numel() > 5 else ''}, "
                    f"{bad.numel()} in this batch): the hooked model produced non-finite values; fix the model "
                    f"or the inputs before training an SAE on them")


@torch.no_grad()
def _scaling_factor(acts: Tensor, g: torch.Generator, n_max: int = 65536, chunk: int = 8192) -> float:
    """``sqrt(E||x||^2 / d_in)`` over up to ``n_max`` rows drawn without replacement (float64 per chunk)."""
    n = acts.shape[0]
    rows = torch.arange(n) if n <= n_max else torch.randperm(n, generator=g)[:n_max].sort().values
    total = 0.0
    for s in range(0, rows.numel(), chunk):
        r = rows[s:s + chunk]
        b = acts[r].to(torch.float32)
        if not torch.isfinite(b).all():
            _raise_nonfinite(b, r)
        total += float(b.double().pow(2).sum())
    ms = total / (rows.numel() * acts.shape[1])
    if not ms > 0:
        raise DataError("the activations are all zero: an SAE cannot be trained on them (check the hook)")
    return math.sqrt(ms)


def _init(sae: SparseAutoencoder, acts: Tensor, g: torch.Generator, c: float) -> None:
    cfg = sae.cfg
    with torch.no_grad():
        w = torch.randn(cfg.d_sae, cfg.d_in, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.t())  # tied initialization (Conerly et al. 2024; Gao et al. 2024)
        n = min(acts.shape[0], 8192)
        rows = torch.randperm(acts.shape[0], generator=g)[:n].sort().values
        sae.b_dec.copy_((acts[rows].to(torch.float64).mean(0) / c).to(torch.float32))
        sae.b_enc.zero_()


def _loss(sae: SparseAutoencoder, xn: Tensor, l1_scale: float = 1.0) -> Tuple[Tensor, Tensor, Tensor]:
    # (x - b_dec) W_enc written as x W_enc - b_dec W_enc: b_dec's gradient through the encoder is then a
    # (1, d_sae) @ (d_sae, d_in) product instead of a (B, d_sae) @ (d_sae, d_in) one (a third of topk's matmuls);
    # inference (encode) keeps SAELens' form, bit for bit
    pre = xn @ sae.W_enc - sae.b_dec @ sae.W_enc + sae.b_enc
    if sae.cfg.architecture == "topk":
        vals, idx = torch.topk(pre, sae.cfg.k, dim=-1, sorted=False)
        vals = vals.relu()
        # sparse decode: sum of k decoder rows per token (embedding_bag), not a dense (B, d_sae) @ W_dec
        x_hat = F.embedding_bag(idx, sae.W_dec, per_sample_weights=vals, mode="sum") + sae.b_dec
        mse = (x_hat - xn).pow(2).sum(-1).mean()
        return mse, mse, (vals > 0).sum(-1).float().mean()
    z = F.relu(pre)
    x_hat = z @ sae.W_dec + sae.b_dec
    mse = (x_hat - xn).pow(2).sum(-1).mean()
    # L1 weighted by decoder norms (all 1 here; kept so the penalty cannot be gamed by shrinking W_dec)
    l1 = (z * sae.W_dec.norm(dim=1)).sum(-1).mean()
    return mse + sae.cfg.l1_coefficient * l1_scale * l1, mse, (z > 0).sum(-1).float().mean()


@torch.no_grad()
def _eval(sae: SparseAutoencoder, acts: Tensor, g: torch.Generator, n_eval: int = 8192, chunk: int = 2048
          ) -> Dict[str, float]:
    n = acts.shape[0]
    rows = torch.arange(n) if n <= n_eval else torch.randperm(n, generator=g)[:n_eval].sort().values
    se = tot = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    dev = sae.W_enc.device
    x_all = []
    for s in range(0, rows.numel(), chunk):
        x = acts[rows[s:s + chunk]].to(dev, torch.float32)
        x_hat, z = sae(x)
        se += float((x_hat - x).double().pow(2).sum())
        l0 += float((z > 0).sum())
        fired |= (z > 0).any(0).cpu()
        x_all.append(x.double().sum(0))
    mean = torch.stack(x_all).sum(0) / rows.numel()
    for s in range(0, rows.numel(), chunk):
        x = acts[rows[s:s + chunk]].to(dev, torch.float64)
        tot += float((x - mean).pow(2).sum())
    m = rows.numel()
    return {"eval_tokens": m, "mse": se / (m * sae.cfg.d_in), "fvu": se / tot if tot > 0 else float("nan"),
            "l0": l0 / m, "dead_fraction": float((~fired).float().mean())}


def train_sae(acts: Tensor, cfg: SAEConfig, *, progress: bool = True, device: str = "cpu"
              ) -> Tuple[SparseAutoencoder, Dict[str, Any]]:
    """Train one SAE on ``acts`` (n_tokens, d_in); returns ``(sae, log)``.

    Deterministic: initialization and batch order from generators seeded by ``cfg.seed``. Adam, ``cfg.lr`` (decayed
    linearly to 0 over the last 20 % of steps; the relu L1 coefficient warmed up over the first 5 %),
    ``ceil(train_tokens / batch_size)`` steps of ``batch_size`` rows each, epochs over a fresh permutation
    as needed. The log holds ``tokens_per_s``, ``wall_s``, ``steps``, ``scaling_factor``, the final ``mse``
    (per element, original scale), ``fvu``, ``l0`` and ``dead_fraction`` on up to 8192 rows, and ``curve``:
    (step, loss, mse, l0) about every 50 steps, for a figure.
    """
    _check_acts(acts, cfg.d_in)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "sae", "init"))
    c = _scaling_factor(acts, g)
    sae = SparseAutoencoder(cfg)
    _init(sae, acts, g, c)
    sae.to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    order_g = torch.Generator().manual_seed(derive_seed(cfg.seed, "sae", "batches"))
    n = acts.shape[0]
    bs = min(cfg.batch_size, n)
    steps = max(1, -(-cfg.train_tokens // bs))
    perm, pos = torch.randperm(n, generator=order_g), 0
    curve = []
    every = max(1, steps // 50) if steps > 50 else 1
    every = min(every, 50)
    it = range(steps)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"SAE {cfg.architecture} {cfg.d_in}->{cfg.d_sae}", leave=False)
        except ImportError:  # pragma: no cover
            bar = None
    inv_c = 1.0 / c
    for step in it:
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=order_g), 0
        rows = perm[pos:pos + bs].sort().values  # sorted: contiguous reads from a memory map
        pos += bs
        xb = acts[rows].to(device=device, dtype=torch.float32)
        if not torch.isfinite(xb).all():
            _raise_nonfinite(xb.cpu(), rows)
        xn = xb * inv_c
        # Conerly et al. 2024 (Anthropic's April update): the L1 penalty ramps up linearly over the first 5 % of
        # steps (no latent dies before it has learned anything) and the learning rate decays linearly to 0 over
        # the last 20 %
        l1_scale = min(1.0, (step + 1) / max(1.0, 0.05 * steps))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (steps - step) / max(1.0, 0.2 * steps))
        loss, mse, l0 = _loss(sae, xn, l1_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            # remove the gradient component parallel to each (unit) decoder row, then renormalize after the step
            w, gr = sae.W_dec, sae.W_dec.grad
            gr.sub_((gr * w).sum(1, keepdim=True) * w)
        opt.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        if step % every == 0 or step == steps - 1:
            curve.append({"step": step, "loss": float(loss.detach()), "mse": float(mse.detach()) / cfg.d_in, "l0": float(l0.detach())})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    train_s = time.perf_counter() - t0
    sae = sae.cpu()
    sae.scaling_factor = c
    sae.fold_scaling_factor()
    sae.eval()
    ev = _eval(sae, acts, torch.Generator().manual_seed(derive_seed(cfg.seed, "sae", "eval")))
    log: Dict[str, Any] = {"tokens": steps * bs, "steps": steps, "wall_s": train_s,
                           "tokens_per_s": steps * bs / train_s, "scaling_factor": c, **ev, "curve": curve,
                           "config": cfg.as_dict()}
    sae.extra_cfg = {"sanitycheck_scaling_factor_folded": c}
    return sae, log


# ====================================================================== SAELens format
def _cfg_json(sae: SparseAutoencoder, extra_cfg: Dict[str, Any]) -> Dict[str, Any]:
    cfg = sae.cfg
    metadata = {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": SAELENS_VERSION,
                "hook_name": cfg.hook_name, "sanitycheck_config": cfg.as_dict(), **sae.extra_cfg, **extra_cfg}
    out = {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": metadata, "architecture": ARCHITECTURES[cfg.architecture]}
    if cfg.architecture == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    return out


def save_sae(sae: SparseAutoencoder, path: PathLike, **extra_cfg: Any) -> Path:
    """Write ``sae`` to the directory ``path`` in SAELens' v6 format: ``cfg.json`` + ``sae_weights.safetensors``
    (float32 ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``). A scaling factor != 1 is folded into the saved weights
    (SAELens' loader applies none for ``normalize_activations: "none"``). ``extra_cfg`` goes into ``metadata``.
    Each file is written atomically."""
    from safetensors.torch import save as st_save

    from ..io import atomic_write_bytes, atomic_write_text

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    src = sae
    if sae.scaling_factor != 1.0:
        src = SparseAutoencoder(sae.cfg, sae.scaling_factor)
        src.load_state_dict(sae.state_dict())
        src.extra_cfg = {**sae.extra_cfg, "sanitycheck_scaling_factor_folded": sae.scaling_factor}
        src.fold_scaling_factor()
    tensors = {k: getattr(src, k).detach().to("cpu", torch.float32).contiguous() for k in _WEIGHT_NAMES}
    atomic_write_bytes(path / WEIGHTS_FILENAME, st_save(tensors))
    atomic_write_text(path / CFG_FILENAME, json.dumps(_cfg_json(src, extra_cfg), indent=2, allow_nan=False) + "\n")
    return path


def _read_cfg(path: Path) -> Dict[str, Any]:
    cfg_file = path / CFG_FILENAME
    if not path.is_dir():
        raise SAEFormatError(f"SAE directory {str(path)!r} does not exist (or is not a directory): give the path "
                             f"of a folder holding {CFG_FILENAME} and {WEIGHTS_FILENAME} (SAELens' format)")
    if not cfg_file.is_file():
        raise SAEFormatError(f"SAE directory {str(path)!r} has no {CFG_FILENAME}: SAELens' format needs "
                             f"{CFG_FILENAME} and {WEIGHTS_FILENAME} (save with SAE.save_model or save_sae)")
    if not (path / WEIGHTS_FILENAME).is_file():
        raise SAEFormatError(f"SAE directory {str(path)!r} has no {WEIGHTS_FILENAME}: SAELens' format needs "
                             f"{CFG_FILENAME} and {WEIGHTS_FILENAME} (save with SAE.save_model or save_sae)")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SAEFormatError(f"{str(cfg_file)!r} is not valid JSON ({err}); fix or re-save it") from err
    if not isinstance(raw, dict):
        raise SAEFormatError(f"{str(cfg_file)!r} must hold a JSON object, got {type(raw).__name__}")
    return raw


def _normalize_cfg(raw: Dict[str, Any], cfg_file: Path) -> Dict[str, Any]:
    """SAELens v6 (``architecture`` + ``metadata``) or the flat pre-6 layout (``hook_point``,
    ``activation_fn_str``, ``activation_fn_kwargs.k``; converted as SAELens' ``handle_pre_6_0_config``)."""
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    version = str(raw.get("sae_lens_version") or meta.get("sae_lens_version") or "")
    v6 = bool(version) and _major(version) >= 6
    cfg = dict(raw)
    if not v6:  # pre-6 defaults, as SAELens' loader applies them
        cfg.setdefault("apply_b_dec_to_input", True)
        act = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
        kw = cfg.get("activation_fn_kwargs") or {}
        if "architecture" not in cfg:
            cfg["architecture"] = "topk" if act == "topk" and kw.get("k") is not None else "standard"
        if act == "topk" and kw.get("k") is not None:
            cfg["architecture"], cfg["k"] = "topk", kw["k"]
        na = cfg.get("normalize_activations")
        cfg["normalize_activations"] = ("expected_average_only_in" if na is True else
                                        "none" if na in (False, None) else na)
        hook = cfg.get("hook_name", cfg.get("hook_point", meta.get("hook_name", "")))
    else:
        hook = meta.get("hook_name") or cfg.get("hook_name") or ""
    required = ["d_in", "d_sae"] + (["architecture"] if v6 else [])
    if cfg.get("architecture") == "topk":
        required.append("k")
    missing = [f for f in required if cfg.get(f) is None]
    if missing:
        raise SAEFormatError(f"{str(cfg_file)!r} is missing required field(s) {', '.join(map(repr, missing))} "
                             f"(SAELens {'v6' if v6 else 'pre-6'} layout needs {', '.join(required)}); add them or "
                             f"re-save the SAE with SAE.save_model / save_sae")
    arch = cfg["architecture"]
    if arch not in _FROM_SAELENS:
        raise SAEFormatError(f"{str(cfg_file)!r}: SAE architecture {arch!r} is not supported; supported: "
                             f"{', '.join(sorted(_FROM_SAELENS))} (SAELens' names for our relu and topk)")
    na = cfg.get("normalize_activations", "none")
    if na not in ("none", None):
        raise SAEFormatError(f"{str(cfg_file)!r}: normalize_activations={na!r} is not supported (only 'none'); "
                             f"fold the normalization into the weights first (SAELens: "
                             f"fold_activation_norm_scaling_factor)")
    if cfg.get("apply_b_dec_to_input", True) is not True:
        raise SAEFormatError(f"{str(cfg_file)!r}: apply_b_dec_to_input={cfg.get('apply_b_dec_to_input')!r} is not "
                             f"supported; the audited SAEs subtract b_dec before encoding (true)")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise SAEFormatError(f"{str(cfg_file)!r}: rescale_acts_by_decoder_norm=true is not supported; fold the "
                             f"decoder norms first (SAELens: sae.fold_W_dec_norm())")
    for f in ("d_in", "d_sae") + (("k",) if arch == "topk" else ()):
        if not isinstance(cfg[f], int) or isinstance(cfg[f], bool) or cfg[f] < 1:
            raise SAEFormatError(f"{str(cfg_file)!r}: {f} must be a positive integer, got {cfg[f]!r}")
    cfg["hook_name"] = hook or ""
    cfg["architecture_ours"] = _FROM_SAELENS[arch]
    cfg["metadata"] = meta
    return cfg


def _major(version: str) -> int:
    try:
        return int(version.lstrip("v").split(".")[0])
    except ValueError:
        return 0


def load_sae(path: PathLike, *, d_in: Optional[int] = None, device: str = "cpu", hook_name: Optional[str] = None
             ) -> SparseAutoencoder:
    """Load an SAE saved in SAELens' format (v6, or the flat pre-6 layout). ``d_in``, when given, is the width of
    the hooked activation the SAE will read: a different ``cfg.json`` ``d_in`` is an error naming both widths
    and the hook. Every problem raises :class:`SAEFormatError` (or :class:`ConfigError` for a width mismatch)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    raw = _read_cfg(path)
    cfg_file = path / CFG_FILENAME
    c = _normalize_cfg(raw, cfg_file)
    hook = hook_name if hook_name is not None else c["hook_name"]
    if d_in is not None and int(d_in) != c["d_in"]:
        raise ConfigError(f"an SAE whose input width does not match the hooked activation: {str(path)!r} has "
                          f"d_in={c['d_in']} (trained on hook {c['hook_name'] or '?'!r}), the hooked activation "
                          f"{hook or '?'!r} has width {int(d_in)}; use an SAE trained on that hook")
    try:
        state = load_file(str(path / WEIGHTS_FILENAME), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise SAEFormatError(f"{str(path / WEIGHTS_FILENAME)!r} is not a readable safetensors file ({err}); "
                             f"re-save the SAE") from err
    missing = [k for k in _WEIGHT_NAMES if k not in state]
    if missing:
        raise SAEFormatError(f"{str(path / WEIGHTS_FILENAME)!r} lacks tensor(s) {', '.join(missing)} (has "
                             f"{', '.join(sorted(state)) or 'none'}); SAELens' standard/topk SAEs store "
                             f"{', '.join(_WEIGHT_NAMES)}")
    expect = {"W_enc": (c["d_in"], c["d_sae"]), "b_enc": (c["d_sae"],), "W_dec": (c["d_sae"], c["d_in"]),
              "b_dec": (c["d_in"],)}
    bad = [f"{k} {tuple(state[k].shape)} (expected {v})" for k, v in expect.items() if tuple(state[k].shape) != v]
    if bad:
        raise SAEFormatError(f"{str(path)!r}: weight shapes inconsistent with cfg.json (d_in={c['d_in']}, "
                             f"d_sae={c['d_sae']}): {'; '.join(bad)}; the cfg.json and the weights do not belong "
                             f"together")
    sc = c["metadata"].get("sanitycheck_config") if isinstance(c["metadata"].get("sanitycheck_config"), dict) else {}
    fields = {f: sc[f] for f in ("l1_coefficient", "seed", "train_tokens", "batch_size", "lr") if f in sc}
    try:
        cfg = SAEConfig(d_in=c["d_in"], d_sae=c["d_sae"], architecture=c["architecture_ours"],
                        k=c.get("k", 32) if c["architecture_ours"] == "topk" else sc.get("k", 32),
                        hook_name=hook or "", **fields)
    except ConfigError as err:
        raise SAEFormatError(f"{str(cfg_file)!r}: {err}") from err
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        for k in _WEIGHT_NAMES:
            t = state[k]
            if not torch.isfinite(t).all():
                raise SAEFormatError(f"{str(path / WEIGHTS_FILENAME)!r}: {k} holds NaN or inf; the SAE is broken")
            getattr(sae, k).copy_(t.to(torch.float32))
    sae.extra_cfg = {k: v for k, v in c["metadata"].items() if k.startswith("sanitycheck_")}
    sae.source_path = str(path)
    return sae.to(device).eval()


# ====================================================================== load-or-train
def sae_cache_key(key: str, cfg: SAEConfig) -> str:
    """sha256 over ``(key, cfg.as_dict())`` as sorted-key JSON (the directory name under ``<cache>/sae/``)."""
    return hashlib.sha256(json.dumps([key, cfg.as_dict()], sort_keys=True).encode()).hexdigest()


def fit_sae(acts: Tensor, cfg: SAEConfig, *, key: str, cache_dir: Optional[PathLike] = None, progress: bool = True,
            device: str = "cpu") -> SparseAutoencoder:
    """Load-or-train: the SAE cached in SAELens' format under ``<cache>/sae/<sha256(key, cfg)>/``, else trained
    with :func:`train_sae` and written there atomically (a temporary directory renamed into place), with the
    training log as ``train_log.json``. ``key`` must name the activations (a content hash of them). The returned
    SAE is always the one read back from disk, so a first run and a cached run compute the same numbers; its
    ``train_log`` attribute holds the log."""
    from ..io import atomic_write_json
    from ..io import cache_dir as default_cache_dir

    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = base / "sae" / sae_cache_key(key, cfg)
    if not (final / CFG_FILENAME).is_file() or not (final / WEIGHTS_FILENAME).is_file():
        sae, log = train_sae(acts, cfg, progress=progress, device=device)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        try:
            save_sae(sae, tmp, sanitycheck_key=key)
            atomic_write_json(tmp / "train_log.json", log)
            try:
                os.replace(tmp, final)
            except OSError:  # another process finished first: keep its copy
                if not (final / CFG_FILENAME).is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    sae = load_sae(final, d_in=acts.shape[1], device=device)
    if sae.cfg.as_dict() != replace(cfg, hook_name=sae.cfg.hook_name).as_dict():
        raise ConfigError(f"cached SAE {str(final)!r} holds config {sae.cfg.as_dict()}, expected {cfg.as_dict()}; "
                          f"delete the directory to retrain")
    try:
        from ..io import read_json

        sae.train_log = read_json(final / "train_log.json")
    except (OSError, ValueError):
        sae.train_log = None
    return sae
