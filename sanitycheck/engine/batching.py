"""Batch sizes chosen from the model and the free memory (``--batch-size auto``), not a constant.

A probe runs the model once on one input with forward hooks that sum the bytes of every module's output: the
activations one input keeps alive for a backward pass. A backward pass holds about as much again in gradients
(plus autograd's saved tensors), so one input of one explainer call costs about ``backward_factor`` times that
(default 3). An explainer that expands each input (integrated gradients' ``n_steps``, SmoothGrad/VarGrad's
``n_samples``) runs that many rows per input, at most its own internal chunk (``internal_batch_size``,
``max_batch``) at a time: :func:`peak_rows` says how many rows a batch of ``B`` inputs puts through the model at
once. The largest ``B`` whose peak fits ``fraction`` of the free memory (``torch.cuda.mem_get_info`` on CUDA,
``MemAvailable`` of ``/proc/meminfo`` on the CPU) is the batch size, capped at ``cap``.

The choice changes no published number only where maps do not depend on the batch size; the suites pin
theirs, so ``auto`` is never the default (see ``tests/test_batching.py``: CPU convolutions are not bit-identical
across batch sizes for every explainer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["BatchChoice", "activation_bytes_per_input", "choose_batch_size", "expansion", "free_memory_bytes",
           "peak_rows", "AUTO"]

AUTO = "auto"


@dataclass
class BatchChoice:
    """The batch size a run uses and why (``results.json``: ``resources.batch_size``)."""

    value: int
    source: str  # "suite" | "option" | "auto"
    why: str
    bytes_per_input: Optional[int] = None
    free_bytes: Optional[int] = None
    fraction: Optional[float] = None

    def to_json(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def activation_bytes_per_input(model: nn.Module, example: Tensor) -> int:
    """Bytes of every module output (forward activations, parameters excluded) for ONE input ``example[:1]``."""
    total = [int(example[:1].numel() * example.element_size())]

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, Tensor):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not list(m.children())] or [model]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return int(total[0])


def expansion(explainer: Any) -> int:
    """Rows per input that one call of ``explainer`` puts through the model (IG steps, noise-tunnel samples)."""
    for attr in ("n_steps", "n_samples"):
        k = getattr(explainer, attr, None)
        if isinstance(k, int) and k > 1:
            return k
    return 1


def peak_rows(explainer: Any, batch: int) -> int:
    """Rows a batch of ``batch`` inputs puts through the model at once: ``batch x expansion``, at most the
    explainer's own internal chunk (``internal_batch_size`` / ``max_batch``) but never less than ``batch``."""
    rows = batch * expansion(explainer)
    chunk = getattr(explainer, "internal_batch_size", None) or getattr(explainer, "max_batch", None)
    if isinstance(chunk, int) and chunk > 0:
        rows = min(rows, max(chunk, batch))
    return rows


def free_memory_bytes(device: Any = "cpu") -> int:
    """Free memory where ``device``'s tensors live: ``torch.cuda.mem_get_info`` on CUDA, else ``MemAvailable``
    of ``/proc/meminfo`` (psutil's ``available`` where /proc is missing)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.virtual_memory().available)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"--batch-size auto cannot read the free memory here ({type(err).__name__}: {err}); "
                          "give a number, e.g. --batch-size 64") from None


def choose_batch_size(model: nn.Module, example: Tensor, explainers: Iterable[Any], *, device: Any = "cpu",
                      fraction: float = 0.25, backward_factor: float = 3.0, cap: int = 1024,
                      free_bytes: Optional[int] = None) -> BatchChoice:
    """The largest batch (1..``cap``) whose most expensive explainer call fits ``fraction`` of the free memory."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"batch-size fraction must be in (0, 1], got {fraction}; e.g. 0.25 of the free memory")
    dev = next((p.device for p in model.parameters()), torch.device(device))
    per_input = int(activation_bytes_per_input(model, example.to(dev)) * backward_factor)
    free = int(free_memory_bytes(dev) if free_bytes is None else free_bytes)
    budget = free * fraction
    explainers = list(explainers) or [None]

    def fits(b: int) -> bool:
        return max(peak_rows(e, b) for e in explainers) * per_input <= budget

    if not fits(1):
        raise ConfigError(
            f"--batch-size auto: one input needs about {per_input / 2 ** 20:.1f} MiB per row "
            f"(x{max(peak_rows(e, 1) for e in explainers)} rows for the most expanding explainer), more than "
            f"{fraction:.0%} of the {free / 2 ** 20:.0f} MiB free on {dev}; give --batch-size 1, lower the "
            "explainers' internal_batch_size/max_batch, or free memory")
    lo, hi = 1, int(cap)
    while lo < hi:  # peak_rows is monotone in b: bisect the largest b that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    bound = f"capped at {cap}" if lo == cap else f"the largest that fits {fraction:.0%} of free memory"
    why = (f"batch {bound}: peak {max(peak_rows(e, lo) for e in explainers)} rows x "
           f"{per_input / 2 ** 10:.0f} KiB per row (forward activations of one input x{backward_factor:g} for "
           f"backward) against {free / 2 ** 20:.0f} MiB free on {dev.type}")
    return BatchChoice(lo, "auto", why, per_input, free, fraction)


def batch_size_arg(value: Any) -> Any:
    """``AuditRun``'s ``batch_size``: None (the suite's), a positive int, or ``"auto"``; else a ConfigError."""
    if value is None or value == AUTO:
        return value
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        b = int(value)
    except (TypeError, ValueError):
        b = 0
    if isinstance(value, bool) or b < 1 or (not isinstance(value, str) and b != value):
        raise ConfigError(f"batch_size must be a positive integer or 'auto', got {value!r}; e.g. 64, or 'auto' "
                          "to choose it from the model and the free memory")
    return b


def choose_run_batch_size(run: Any, auto: bool) -> BatchChoice:
    """The batch size of ``run`` (an :class:`~sanitycheck.engine.run.AuditRun` whose inputs are loaded), set on
    its settings, with where it came from."""
    s = run.settings
    if not auto:
        given = s.batch_size != run.suite.batch_size
        return BatchChoice(int(s.batch_size), "option" if given else "suite",
                           "given by --batch-size / batch_size=" if given else
                           "the suite's batch_size (the published numbers' setting)")
    example = run.modality.example_input(run.inputs, s.device)
    if not isinstance(example, Tensor):
        raise ConfigError(f"--batch-size auto probes models that take one tensor; suite {run.suite.name!r}'s "
                          f"model takes {type(example).__name__}. Give a number, e.g. --batch-size 32")
    choice = choose_batch_size(run.inputs.model, example, run.explainers.values(), device=s.device)
    s.batch_size = choice.value
    return choice
