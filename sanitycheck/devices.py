"""The torch device a run asks for (checked before any work) and the memory a run used (``results.json``'s
``resources`` block)."""

from __future__ import annotations

import os
import resource
import sys
from typing import Any, Dict, Optional

import torch

from .errors import ConfigError

__all__ = ["check_device", "rss_mb", "peak_rss_mb", "ResourceMonitor"]


def _cuda_report() -> str:
    try:
        available, count = torch.cuda.is_available(), torch.cuda.device_count()
    except Exception as err:  # a broken driver: say so rather than crash
        return f"torch {torch.__version__} cannot query CUDA ({type(err).__name__}: {err})"
    return (f"torch {torch.__version__} reports torch.cuda.is_available() = {available}, "
            f"torch.cuda.device_count() = {count}")


def check_device(device: Any) -> torch.device:
    """``device`` as a :class:`torch.device`, or a :class:`ConfigError` naming it, what torch reports and what
    to do when torch cannot use it here (``cuda`` without a GPU, ``cuda:3`` with one GPU, an unknown name).
    Cheap: it loads no data and no model, so a run can call it before any work."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(f"device {device!r} is not a torch device ({err}); "
                          "use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        try:
            available, count = torch.cuda.is_available(), torch.cuda.device_count()
        except Exception:
            available, count = False, 0
        if not available or count == 0:
            raise ConfigError(f"device {str(device)!r} asked for, but torch cannot use CUDA here: {_cuda_report()}. "
                              "Run with --device cpu, or on a machine with an NVIDIA GPU and a CUDA build of torch")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {str(device)!r} asked for, but only {count} CUDA device"
                              f"{'s' if count != 1 else ''} exist{'' if count != 1 else 's'} (indices 0.."
                              f"{count - 1}): {_cuda_report()}. Use --device cuda:N with N < {count}, or "
                              "--device cuda for the current one")
        return dev
    if dev.type == "meta":
        raise ConfigError(f"device {str(device)!r} holds no data, so nothing can be explained on it; "
                          "use 'cpu' or 'cuda'")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device {str(device)!r} asked for, but torch {torch.__version__} reports "
                              "torch.backends.mps.is_available() = False; use --device cpu")
        return dev
    try:  # any other backend (xpu, ...): usable exactly when a tensor can be put there
        torch.zeros(1, device=dev)
    except Exception as err:
        raise ConfigError(f"device {str(device)!r} cannot be used by torch {torch.__version__} here "
                          f"({type(err).__name__}: {err}); use --device cpu") from None
    return dev


def _page_mb() -> float:
    return os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def rss_mb() -> Optional[float]:
    """The resident set size of this process now, in MiB (None where it cannot be read)."""
    try:
        import psutil  # type: ignore[import-not-found]

        return psutil.Process().memory_info().rss / 2 ** 20
    except Exception:  # not installed (no new dependency for this): read /proc
        pass
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _page_mb()
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    """The peak resident set size of this process since it started, in MiB (``ru_maxrss``: KiB on Linux,
    bytes on macOS). It includes whatever the process held before a run started."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


class ResourceMonitor:
    """Start at the beginning of a run, :meth:`report` at its end: the ``resources`` block of ``results.json``."""

    def __init__(self, device: Any = "cpu"):
        self.device = torch.device(device)
        self.rss_at_start_mb = rss_mb()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def report(self) -> Dict[str, Any]:
        end = rss_mb()
        # the kernel's high-water mark lags the current counters by a few pages: the peak is at least what we read
        peak = max([peak_rss_mb()] + [v for v in (self.rss_at_start_mb, end) if v is not None])
        doc: Dict[str, Any] = {
            "peak_rss_mb": round(peak, 1),
            "rss_at_start_mb": None if self.rss_at_start_mb is None else round(self.rss_at_start_mb, 1),
            "rss_at_end_mb": None if end is None else round(end, 1),
            "note": "peak_rss_mb is the process's peak (getrusage ru_maxrss): it includes what was loaded before "
                    "the run; rss_* are the resident set at the run's start and end",
        }
        if self.device.type == "cuda":
            doc["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)
        return doc
