"""Reliability of a suite's scores as a ranking of methods (Tomsett et al., AAAI 2020), beside every table.

From per-image scores of several methods on the same images: for each summary score, the
inter-rater reliability (Krippendorff's α of the per-image method rankings; Tomsett et al. call a
metric unreliable below the usual 0.65) and the mean inter-method reliability (Spearman ρ across
images between the scores of two methods, over all pairs); across the scores, the internal
consistency (do metrics meant to measure faithfulness agree?).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ..metrics.reliability import inter_method_reliability, inter_rater_reliability, internal_consistency

#: Krippendorff's customary lower bound for tentative conclusions
ALPHA_ACCEPTABLE = 0.667


def _clean(v: float) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def reliability_report(per_sample: Mapping[str, Any], summaries: Sequence[Tuple[str, str, str, bool]]) -> Dict[str, Any]:
    """``per_sample``: {method: {check: {step: {metric: [score|None per image]}}}};
    ``summaries``: (check, step, metric, higher_is_better) of each summary score to assess."""
    methods = sorted(per_sample)
    out: Dict[str, Any] = {"methods": methods, "scores": {}, "reference": "Tomsett et al. 2020, AAAI",
                           "alpha_acceptable": ALPHA_ACCEPTABLE}
    matrices: Dict[str, np.ndarray] = {}
    directions: Dict[str, bool] = {}
    for check, step, metric, higher in summaries:
        rows = []
        for m in methods:
            values = per_sample[m].get(check, {}).get(step, {}).get(metric)
            if values is None:
                break
            rows.append([np.nan if v is None else v for v in values])
        if len(rows) != len(methods) or len(methods) < 2 or len({len(r) for r in rows}) != 1:
            continue
        key = f"{check}/{metric}"
        mat = np.asarray(rows, dtype=float)
        matrices[key], directions[key] = mat, higher
        alpha = inter_rater_reliability(mat, higher_is_better=higher)
        pairs = [inter_method_reliability(mat[i], mat[j]).value for i, j in itertools.combinations(range(len(methods)), 2)]
        pairs = [p for p in pairs if not math.isnan(p)]
        out["scores"][key] = {
            "inter_rater_alpha": _clean(alpha.value), "n_images": alpha.n_raters, "n_methods": alpha.n_units,
            "note": alpha.note, "reliable": bool(alpha.defined and alpha.value >= ALPHA_ACCEPTABLE),
            "inter_method_mean_rho": _clean(float(np.mean(pairs))) if pairs else None,
            "higher_is_better": higher}
    if len(matrices) >= 2:
        ic = internal_consistency(matrices, higher_is_better=directions)
        out["internal_consistency"] = {"mean_rho": _clean(ic.value), "note": ic.note,
                                       "per_pair": {k: _clean(v) for k, v in ic.details.get("per_pair", {}).items()}}
    return out


def summaries_of(checks: Mapping[str, Any]) -> List[Tuple[str, str, str, bool]]:
    """The summary scores of a result document's evaluation checks, with their directions."""
    out = []
    for name, info in checks.items():
        # Tomsett et al. rank methods per input: checks scoring other units (an SAE's latents) take no part
        if info.get("kind") != "evaluation" or info.get("sample_unit", "inputs") != "inputs":
            continue
        for metric, higher in (info.get("higher_is_better") or {}).items():
            steps = [s for s in info.get("steps", []) if not s.isdigit()]
            for step in steps:
                out.append((name, step, metric, bool(higher)))
    return out
