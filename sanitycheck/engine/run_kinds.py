"""The run class of each input kind, and the entry points that pick it: :func:`run_suite`, :func:`audit_run_for`.

A suite's ``input_kind`` names the class that executes it. The classes are registered here by *import path*
(as in :mod:`sanitycheck.registry`) and imported on first use, so neither runner imports the other to choose:
``sanitycheck.runner`` runs image and image-text suites (:class:`~sanitycheck.runner.AuditRun`) and
``sanitycheck.text_runner`` runs text suites (:class:`~sanitycheck.text_runner.TextAuditRun`, which extends
``AuditRun``). A new input kind is one line in :data:`RUN_CLASSES`, not another ``input_kind ==`` branch.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..errors import ConfigError
from ..registry import load_object
from ..suites import Suite, load_suite

__all__ = ["RUN_CLASSES", "run_class_for", "audit_run_for", "run_suite", "default_out_dir"]

#: input kind -> import path of the run class that executes suites of that kind (imported on first use)
RUN_CLASSES: Dict[str, str] = {
    "image": "sanitycheck.runner:AuditRun",
    "image_text": "sanitycheck.runner:AuditRun",  # CLIP suites: AuditRun explains two queries per scene
    "text": "sanitycheck.text_runner:TextAuditRun",
}


def run_class_for(input_kind: str) -> type:
    """The run class of ``input_kind`` (``"image"``, ``"image_text"`` or ``"text"``)."""
    path = RUN_CLASSES.get(input_kind)
    if path is None:
        raise ConfigError(f"no run class for input_kind {input_kind!r}; known input kinds: "
                          f"{', '.join(sorted(RUN_CLASSES))}. Set the suite's input_kind to one of them.")
    return load_object(path)


def audit_run_for(suite: Suite, **kwargs: Any) -> Any:
    """A run of ``suite`` by the class of its input kind: ``AuditRun`` for images, ``TextAuditRun`` for text.

    ``kwargs`` go to the class (``out_dir``, ``n``, ``explainers``, ``cache_dir``, ...)."""
    return run_class_for(suite.input_kind)(suite, **kwargs)


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
    return audit_run_for(suite, out_dir=out_dir, **kwargs).execute()
