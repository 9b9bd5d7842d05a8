"""The audit engine: one :class:`AuditRun` for every input kind, its work units, executors and check context.

``run_suite`` runs a suite by name or path; ``audit_run_for`` builds the run without executing it. What differs
between input kinds lives in :mod:`sanitycheck.modalities`; what a check may use is a
:class:`~sanitycheck.engine.context.CheckContext`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..suites import Suite, load_suite
from .run import AuditRun, RunSettings, check_out_dir, merge_results

__all__ = ["AuditRun", "RunSettings", "audit_run_for", "check_out_dir", "default_out_dir", "merge_results",
           "run_suite"]


def audit_run_for(suite: Suite, **kwargs: Any) -> AuditRun:
    """A run of ``suite``; ``kwargs`` go to :class:`AuditRun` (``out_dir``, ``n``, ``explainers``, ...)."""
    return AuditRun(suite, **kwargs)


def default_out_dir(suite_name: str) -> Path:
    """``runs/<suite>-<local time stamp>``: where a run writes when no ``out`` is given."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{suite_name}-{stamp}"


def run_suite(suite: Union[str, Suite] = "adebayo2018", *, out: Optional[Union[str, Path]] = None,
              **kwargs: Any) -> Dict[str, Any]:
    """Run ``suite`` (a name, a path, or a :class:`Suite`) and return the results dictionary."""
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    out_dir = Path(out) if out is not None else default_out_dir(suite.name)
    return AuditRun(suite, out_dir=out_dir, **kwargs).execute()
