"""Former home of the engine, kept so that ``from sanitycheck.runner import AuditRun`` keeps working; the engine
is :mod:`sanitycheck.engine` (one class for every input kind, see :mod:`sanitycheck.modalities`)."""

from .engine.run import AuditRun, RunSettings, check_out_dir, explain_maps, merge_results
from .engine.scoring import bootstrap_label, to_float32_maps
from .engine.units import explainer_cache_key
from .engine.units import path_part as _path_part

__all__ = ["AuditRun", "RunSettings", "bootstrap_label", "check_out_dir", "explain_maps", "explainer_cache_key",
           "merge_results", "to_float32_maps", "_path_part"]
