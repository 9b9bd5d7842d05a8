"""Results: records with bootstrap CIs, verdicts with thresholds and reasons, and the JSON schema.

``results.json`` (schema version ``SCHEMA_VERSION``) holds, besides provenance
(suite and version, model, dataset, seed, package versions, git hash, code hashes
of the explainers), two lists:

* ``records`` — one per (explainer, check, metric, step): ``mean``, ``ci_low``,
  ``ci_high`` (percentile bootstrap, 95 %), ``n`` (samples with a defined score),
  ``n_undefined`` and ``undefined_reason`` (why some scores are undefined, e.g. a
  constant map has no ranks). ``mean`` is ``null`` when no sample is defined — never NaN.
* ``verdicts`` — one per (explainer, check): ``passed``, ``metric``, ``rule``,
  ``threshold``, ``measured`` (the deciding value), ``step`` (the deciding step)
  and ``reason``, a sentence stating all of that.
"""

from __future__ import annotations

import math
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .errors import ConfigError

SCHEMA_VERSION = "1.0"
ORIGINAL_STEP = "original"
VERDICT_RULES = ("all_steps", "final_step")
VERDICT_DIRECTIONS = ("below", "above")


@dataclass(frozen=True)
class Record:
    explainer: str
    check: str
    metric: str
    step: str
    step_index: int
    mean: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    n: int
    n_undefined: int = 0
    undefined_reason: Optional[str] = None


@dataclass(frozen=True)
class Verdict:
    explainer: str
    check: str
    passed: bool
    reason: str
    metric: str
    rule: str
    threshold: float
    measured: Optional[float]
    step: Optional[str]


@dataclass(frozen=True)
class VerdictRule:
    """Pass when the metric's upper 95 % CI bound is below ``threshold`` at the steps ``rule`` reads
    (``direction="below"``, for similarities) — or its lower bound above it (``"above"``, e.g. the
    entropy increase of efficient MPRT).

    ``all_steps`` reads every step of the check — the failure of Guided Backprop is at the *top* of the
    cascade (Adebayo et al.'s erratum), so reading only the fully randomized end would miss it;
    ``final_step`` reads only the last one (the fully randomized model, or the random-label model).
    """

    metric: str
    threshold: float
    rule: str = "all_steps"
    direction: str = "below"

    def __post_init__(self):
        if self.rule not in VERDICT_RULES:
            raise ConfigError(f"unknown verdict rule {self.rule!r}; use one of {VERDICT_RULES}")
        if self.direction not in VERDICT_DIRECTIONS:
            raise ConfigError(f"unknown verdict direction {self.direction!r}; use one of {VERDICT_DIRECTIONS}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not -10.0 <= float(self.threshold) <= 10.0:
            raise ConfigError(f"verdict threshold must be a number in [-10, 10], got {self.threshold!r}")


def _fmt(v: Optional[float]) -> str:
    return "undefined" if v is None else f"{v:.3f}"


def decide(rule: VerdictRule, explainer: str, check: str, records: Sequence[Record]) -> Verdict:
    """Apply ``rule`` to the records of one (explainer, check)."""
    steps = sorted((r for r in records if r.metric == rule.metric and r.step != ORIGINAL_STEP),
                   key=lambda r: r.step_index)
    if not steps:
        return Verdict(explainer, check, False, f"no {rule.metric} records for {check}: cannot decide",
                       rule.metric, rule.rule, rule.threshold, None, None)
    read = steps if rule.rule == "all_steps" else steps[-1:]
    total = len(steps)
    defined = [r for r in read if r.ci_high is not None]
    undefined_note = ""
    all_undefined = [r for r in read if r.ci_high is None]
    if all_undefined:
        undefined_note = (f" At {', '.join(r.step for r in all_undefined)} every map was undefined "
                          f"({all_undefined[0].undefined_reason}), which counts as dissimilar.")
    partly = [r for r in defined if r.n_undefined]
    if partly:
        worst_u = max(partly, key=lambda r: r.n_undefined)
        undefined_note += (f" Up to {worst_u.n_undefined} of {worst_u.n + worst_u.n_undefined} maps per step "
                           f"were undefined ({worst_u.undefined_reason}) and left out.")
    where = "every step" if rule.rule == "all_steps" else "the final step"
    below = rule.direction == "below"
    bound = "upper" if below else "lower"
    criterion = (f"threshold: the {bound} 95% CI bound of {rule.metric} must stay {rule.direction} "
                 f"{rule.threshold:.2f} at {where}")
    if not defined:
        return Verdict(explainer, check, below,
                       f"{'PASS' if below else 'FAIL'}: {rule.metric} undefined at every step read. "
                       f"{criterion}.{undefined_note}",
                       rule.metric, rule.rule, rule.threshold, None, read[-1].step)
    if below:
        worst = max(defined, key=lambda r: r.ci_high)
        measured, passed = worst.ci_high, worst.ci_high < rule.threshold
    else:
        worst = min(defined, key=lambda r: r.ci_low)
        measured, passed = worst.ci_low, worst.ci_low > rule.threshold
    pos = f"step {steps.index(worst) + 1}/{total}"
    values = f"mean {_fmt(worst.mean)} [95% CI {_fmt(worst.ci_low)}, {_fmt(worst.ci_high)}], n={worst.n}"
    if passed:
        head = (f"PASS: {rule.metric} {'falls below' if below else 'rises above'} {rule.threshold:.2f} under {check}; "
                f"{'highest' if below else 'lowest'} at {worst.step} ({pos}): {values}")
    else:
        head = (f"FAIL: {rule.metric} {'stays high' if below else 'stays low'} under {check}: at {worst.step} ({pos}) "
                f"{values}, not {rule.direction} {rule.threshold:.2f}")
    return Verdict(explainer, check, passed, f"{head}; {criterion}.{undefined_note}", rule.metric,
                   rule.rule, rule.threshold, measured, worst.step)


def git_hash(path: Optional[Path] = None) -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path or Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=path or Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> Dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version

    versions: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for pkg in ("sanitycheck", "torch", "torchvision", "captum", "numpy", "scipy", "scikit-image"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return versions


def clean_json(obj: Any) -> Any:
    """Replace NaN/inf by None recursively so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def encode_array(t: Any) -> Dict[str, Any]:
    """A small tensor as ``{shape, dtype: float16, data: base64}`` (thumbnails travel inside result files)."""
    import base64

    import numpy as np

    arr = np.ascontiguousarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t, dtype="<f2")
    return {"shape": list(arr.shape), "dtype": "float16", "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_array(d: Dict[str, Any]):
    """Inverse of :func:`encode_array`, as a float32 NumPy array."""
    import base64

    import numpy as np

    if d.get("dtype") != "float16":
        raise ConfigError(f"unsupported array dtype {d.get('dtype')!r} (expected 'float16')")
    raw = base64.b64decode(d["data"], validate=True)
    arr = np.frombuffer(raw, dtype="<f2")
    expected = int(np.prod(d["shape"])) if d["shape"] else 1
    if arr.size != expected:
        raise ConfigError(f"array data holds {arr.size} values, shape {d['shape']} needs {expected}")
    return arr.reshape(d["shape"]).astype("float32")


def split_by_explainer(results: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """One result document per explainer (the unit of the leaderboard), sharing the run's provenance."""
    out = {}
    for name, info in results["explainers"].items():
        doc = {k: v for k, v in results.items() if k not in ("explainers", "records", "verdicts", "per_sample",
                                                               "examples", "skipped", "figures")}
        doc["explainers"] = {name: info}
        doc["records"] = [r for r in results["records"] if r["explainer"] == name]
        doc["verdicts"] = [v for v in results["verdicts"] if v["explainer"] == name]
        doc["skipped"] = [s for s in results.get("skipped", []) if s["explainer"] == name]
        doc["per_sample"] = {name: results.get("per_sample", {}).get(name, {})}
        ex = results.get("examples", {})
        doc["examples"] = {**{k: v for k, v in ex.items() if k != "explainers"},
                           "explainers": {name: ex.get("explainers", {}).get(name, {})}}
        out[name] = doc
    return out


def records_to_json(records: Iterable[Record]) -> List[Dict[str, Any]]:
    return [clean_json(asdict(r)) for r in records]


def verdicts_to_json(verdicts: Iterable[Verdict]) -> List[Dict[str, Any]]:
    return [clean_json(asdict(v)) for v in verdicts]
