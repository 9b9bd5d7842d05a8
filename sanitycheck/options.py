"""Run options, defined once and shared by the CLI and (later) the pytest plugin, as in pytest-benchmark."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional


def _csv(value: str) -> List[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return items


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            v = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {what}, got {value!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1, "count")
_seed = _int_at_least(0, "seed")


@dataclass(frozen=True)
class Option:
    name: str                       # long flag without dashes, e.g. "explainers"
    help: str
    type: Optional[Callable[[str], Any]] = None
    default: Any = None
    action: Optional[str] = None
    metavar: Optional[str] = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def kwargs(self) -> Dict[str, Any]:
        kw: Dict[str, Any] = {"help": self.help, "default": self.default, "dest": self.dest}
        if self.action:
            kw["action"] = self.action
        else:
            kw["type"] = self.type
            if self.metavar:
                kw["metavar"] = self.metavar
        return kw


RUN_OPTIONS: List[Option] = [
    Option("explainers", "comma-separated explainers to run (default: the suite's)", _csv, metavar="A,B"),
    Option("checks", "comma-separated checks of the suite to run (default: all)", _csv, metavar="A,B"),
    Option("n", "number of images (default: the suite's)", _positive_int, metavar="N"),
    Option("seed", "run seed (default: the suite's)", _seed, metavar="S"),
    Option("batch-size", "inputs per explainer call (default: the suite's)", _positive_int, metavar="B"),
    Option("device", "torch device (default: cpu)", str, "cpu", metavar="DEV"),
    Option("cache-dir", "model cache (default: $SANITYCHECK_CACHE or ~/.cache/sanitycheck)", str, metavar="DIR"),
    Option("no-progress", "hide progress bars", action="store_true", default=False),
    Option("no-figures", "skip the PNG figures", action="store_true", default=False),
]


def add_run_options(parser: argparse.ArgumentParser) -> None:
    for opt in RUN_OPTIONS:
        parser.add_argument(f"--{opt.name}", **opt.kwargs())


def run_kwargs(ns: Any) -> Dict[str, Any]:
    """Keyword arguments of :class:`sanitycheck.runner.AuditRun` from parsed options."""
    return {"explainers": ns.explainers, "checks": ns.checks, "n": ns.n, "seed": ns.seed,
            "batch_size": ns.batch_size, "device": ns.device, "cache_dir": ns.cache_dir,
            "progress": not ns.no_progress, "figures": not ns.no_figures}
