"""Results: records with bootstrap CIs, verdicts with thresholds and reasons, and the JSON schema.

``results.json`` (schema version ``SCHEMA_VERSION``) holds, besides provenance
(suite and version, model, dataset, seed, package versions, git hash, code hashes
of the explainers), two lists:

* ``records`` — one per (explainer, check, metric, step): ``mean``, ``ci_low``,
  ``ci_high`` (percentile bootstrap, 95 %), ``n`` (samples with a defined score),
  ``n_undefined`` and ``undefined_reason`` (why some scores are undefined, e.g. a
  constant map has no ranks). ``mean`` is ``null`` when no sample is defined — never NaN.
* ``verdicts`` — one per (explainer, check): ``status``, ``passed``, ``metric``, ``rule``,
  ``direction``, ``threshold``, ``min_n``, ``measured`` (the deciding CI bound), ``step``
  (the deciding step), ``n`` (the defined samples behind the decision) and ``reason``, a
  sentence that starts with the status in capitals and states all of that.

  ``status`` is one of (:data:`VERDICT_STATUSES`):

  - ``pass`` — every read step's 95 % CI lies on the right side of the threshold
    (upper bound below it for ``direction: below``, lower bound above it for ``above``);
  - ``fail`` — some read step's whole CI lies on the wrong side;
  - ``inconclusive`` — no step fails decisively, but some step's CI straddles the threshold;
  - ``undefined`` — the trained model's maps carry no ranking (constant maps, e.g. all zero):
    nothing can be compared, so nothing can pass. Maps that become constant only in a
    randomized state still count as dissimilar;
  - ``insufficient_data`` — fewer than ``min_n`` (default :data:`DEFAULT_MIN_N`, set per
    suite or per verdict rule) defined samples at the originals or a deciding step, or no
    records at all.

  - ``noise`` — only in a suite with the ``noise_ceiling`` check (issue 14): the maps are dominated by
    sampling noise. The trained model's maps under another sampling seed are already below the threshold
    (the ceiling's upper 95 % CI bound of the verdict's metric is below it), so a randomization score below
    it shows nothing about the model; a ``pass`` or ``inconclusive`` of a randomization check becomes
    ``noise`` (:func:`apply_noise_ceiling`). A suite without the check never gives it.

  ``passed`` is ``true`` exactly when ``status`` is ``pass``. Whether an inconclusive verdict
  fails a gate is the gate's choice (``--inconclusive fail|pass|ignore``, default ``fail``);
  undefined and insufficient data never pass.
"""

from __future__ import annotations

import math
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import ConfigError

SCHEMA_VERSION = "1.1"  # 1.1: five-status verdicts (status, direction, n, min_n), model.weights_sha256
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


#: the statuses of a verdict; only "pass" is a pass (``Verdict.passed``)
VERDICT_STATUSES = ("pass", "fail", "inconclusive", "undefined", "insufficient_data", "noise")
#: the reason sentence starts with the status in these words
STATUS_WORDS = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE", "undefined": "UNDEFINED",
                "insufficient_data": "INSUFFICIENT DATA", "noise": "NOISE"}
#: fewest defined samples (per image scores) on which a verdict is decided; below it: "insufficient_data".
#: A percentile-bootstrap interval of fewer values under-covers badly, and one value has a zero-width interval.
DEFAULT_MIN_N = 10


@dataclass(frozen=True)
class Verdict:
    """The decision of one (explainer, check); ``passed`` is ``status == "pass"`` (kept for compatibility).

    ``status``: ``pass`` | ``fail`` | ``inconclusive`` (the 95 % CI straddles the threshold at the deciding
    step) | ``undefined`` (the trained model's maps carry no ranking: constant) | ``insufficient_data``
    (fewer than ``min_n`` defined samples, or no records). ``measured``: the deciding CI bound;
    ``step``: the deciding step; ``n``: the defined samples behind the decision (the deciding step's, or
    the originals' for ``undefined`` / ``insufficient_data``); ``direction`` and ``min_n``: the rule's.
    """

    explainer: str
    check: str
    passed: bool
    reason: str
    metric: str
    rule: str
    threshold: float
    measured: Optional[float]
    step: Optional[str]
    status: str
    direction: str
    n: int
    min_n: int

    def __post_init__(self):
        if self.status not in VERDICT_STATUSES:
            raise ConfigError(f"unknown verdict status {self.status!r}; use one of {VERDICT_STATUSES}")
        if self.passed != (self.status == "pass"):
            raise ConfigError(f"verdict {self.explainer}/{self.check}: passed={self.passed} contradicts "
                              f"status {self.status!r} (only 'pass' is passed)")


@dataclass(frozen=True)
class VerdictRule:
    """Pass when the metric's upper 95 % CI bound is below ``threshold`` at the steps ``rule`` reads
    (``direction="below"``, for similarities) — or its lower bound above it (``"above"``, e.g. the
    entropy increase of efficient MPRT).

    ``all_steps`` reads every step of the check — the failure of Guided Backprop is at the *top* of the
    cascade (Adebayo et al.'s erratum), so reading only the fully randomized end would miss it;
    ``final_step`` reads only the last one (the fully randomized model, or the random-label model).

    Five outcomes (see :func:`decide`): pass, fail, inconclusive (the interval straddles the threshold),
    undefined (the trained model's maps are constant: no ranking to compare), insufficient data (fewer
    than ``min_n`` defined samples; default :data:`DEFAULT_MIN_N`).
    """

    metric: str
    threshold: float
    rule: str = "all_steps"
    direction: str = "below"
    min_n: int = DEFAULT_MIN_N

    def __post_init__(self):
        if self.rule not in VERDICT_RULES:
            raise ConfigError(f"unknown verdict rule {self.rule!r}; use one of {VERDICT_RULES}")
        if self.direction not in VERDICT_DIRECTIONS:
            raise ConfigError(f"unknown verdict direction {self.direction!r}; use one of {VERDICT_DIRECTIONS}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not -10.0 <= float(self.threshold) <= 10.0:
            raise ConfigError(f"verdict threshold must be a number in [-10, 10], got {self.threshold!r}")
        if isinstance(self.min_n, bool) or not isinstance(self.min_n, int) or self.min_n < 2:
            raise ConfigError(f"verdict min_n must be an integer >= 2 (a bootstrap CI of one value has zero "
                              f"width), got {self.min_n!r}; the default is {DEFAULT_MIN_N}")


def _fmt(v: Optional[float]) -> str:
    return "undefined" if v is None else f"{v:.3f}"


def _values(r: Record) -> str:
    return f"mean {_fmt(r.mean)} [95% CI {_fmt(r.ci_low)}, {_fmt(r.ci_high)}], n={r.n}"


def decide(rule: VerdictRule, explainer: str, check: str, records: Sequence[Record]) -> Verdict:
    """Apply ``rule`` to the records of one (explainer, check).

    In order (for ``direction="below"``; ``"above"`` mirrors it):

    1. no records of the metric → ``insufficient_data`` ("cannot decide");
    2. the trained model's maps are undefined — the ``original`` record has no defined sample, or (without
       an original record) no step has one → ``undefined``: "the maps carry no ranking", never a pass;
    3. fewer than ``min_n`` defined originals → ``insufficient_data``;
    4. some read step with at least ``min_n`` samples has its lower CI bound at or above the threshold →
       ``fail`` (the highest such bound decides);
    5. some read step has ``0 < n < min_n`` → ``insufficient_data``;
    6. some read step's upper bound is at or above the threshold → ``inconclusive`` (the CI straddles it);
    7. otherwise ``pass``. A read step where every map is undefined although the originals are defined (the
       maps became constant in that randomized state) counts as dissimilar — for ``"below"``; for
       ``"above"`` (agreement, entropy increase) it cannot clear the threshold: ``undefined``.

    Images whose original map is constant drop out of every step (n shrinks; the reason says how many).
    """
    below = rule.direction == "below"
    bound = "upper" if below else "lower"
    where = "every step" if rule.rule == "all_steps" else "the final step"
    criterion = (f"threshold: the {bound} 95% CI bound of {rule.metric} must stay {rule.direction} "
                 f"{rule.threshold:.2f} at {where}, on at least {rule.min_n} defined samples")

    def verdict(status: str, text: str, measured: Optional[float], step: Optional[str], n: int) -> Verdict:
        return Verdict(explainer, check, status == "pass", f"{STATUS_WORDS[status]}: {text}", rule.metric,
                       rule.rule, rule.threshold, measured, step, status, rule.direction, int(n), rule.min_n)

    mine = [r for r in records if r.metric == rule.metric]
    original = next((r for r in mine if r.step == ORIGINAL_STEP), None)
    steps = sorted((r for r in mine if r.step != ORIGINAL_STEP), key=lambda r: r.step_index)
    if not steps:
        return verdict("insufficient_data", f"no {rule.metric} records for {check}: cannot decide; {criterion}.",
                       None, None, 0)
    read = steps if rule.rule == "all_steps" else steps[-1:]
    total = len(steps)
    pos = {r.step: f"step {i}/{total}" for i, r in enumerate(steps, start=1)}
    defined = [r for r in read if r.ci_high is not None and r.ci_low is not None]
    empty = [r for r in read if r.ci_high is None or r.ci_low is None]

    # 2. the trained model's maps carry no ranking
    originals_defined = (original.n > 0) if original is not None else any(r.n > 0 for r in steps)
    if not originals_defined:
        why = (original.undefined_reason if original is not None and original.undefined_reason
               else (steps[0].undefined_reason or "constant maps"))
        n_all = (original.n + original.n_undefined) if original is not None else (steps[0].n + steps[0].n_undefined)
        return verdict("undefined", f"the maps carry no ranking: {rule.metric} is undefined for the trained "
                                    f"model's maps of all {n_all} inputs ({why}), so no change under {check} can "
                                    f"be measured; {criterion}.", None,
                       ORIGINAL_STEP if original is not None else read[-1].step, 0)
    # 3. too few defined originals
    if original is not None and original.n < rule.min_n:
        return verdict("insufficient_data", f"only {original.n} input(s) have a defined {rule.metric} for the "
                                            f"trained model's maps, fewer than min_n={rule.min_n}; {criterion}.",
                       None, ORIGINAL_STEP, original.n)

    notes = ""
    if empty:
        notes += (f" At {', '.join(r.step for r in empty)} every map was undefined "
                  f"({empty[0].undefined_reason}), which "
                  + ("counts as dissimilar." if below else f"cannot be {rule.direction} the threshold."))
    partly = [r for r in defined if r.n_undefined]
    if partly:
        worst_u = max(partly, key=lambda r: r.n_undefined)
        notes += (f" Up to {worst_u.n_undefined} of {worst_u.n + worst_u.n_undefined} maps per step "
                  f"were undefined ({worst_u.undefined_reason}) and left out.")

    # 4. a decisive failure (enough samples, the whole interval on the wrong side)
    enough = [r for r in defined if r.n >= rule.min_n]
    if below:
        failing = [r for r in enough if r.ci_low >= rule.threshold]
        worst_fail = max(failing, key=lambda r: r.ci_high) if failing else None
    else:
        failing = [r for r in enough if r.ci_high <= rule.threshold]
        worst_fail = min(failing, key=lambda r: r.ci_low) if failing else None
    if worst_fail is not None:
        r = worst_fail
        measured = r.ci_high if below else r.ci_low
        return verdict("fail", f"{rule.metric} {'stays high' if below else 'stays low'} under {check}: at {r.step} "
                               f"({pos[r.step]}) {_values(r)}, not {rule.direction} {rule.threshold:.2f} (the whole "
                               f"interval is {'at or above' if below else 'at or below'} it); {criterion}.{notes}",
                       measured, r.step, r.n)
    # 5. a read step with too few defined samples
    few = [r for r in defined if r.n < rule.min_n]
    if few:
        r = min(few, key=lambda r: r.n)
        return verdict("insufficient_data", f"at {r.step} ({pos[r.step]}) only {r.n} defined {rule.metric} "
                                            f"value(s), fewer than min_n={rule.min_n}: {_values(r)}; "
                                            f"{criterion}.{notes}",
                       r.ci_high if below else r.ci_low, r.step, r.n)
    if not below and empty:
        r = empty[0]
        return verdict("undefined", f"{rule.metric} is undefined at {r.step} ({pos[r.step]}) for every input "
                                    f"({r.undefined_reason}): it cannot be shown {rule.direction} "
                                    f"{rule.threshold:.2f}; {criterion}.{notes}", None, r.step, 0)
    if not defined:  # "below": every read step undefined, the originals defined: all dissimilar
        n_orig = original.n if original is not None else max(r.n for r in steps)
        return verdict("pass", f"{rule.metric} undefined at every step read, the trained model's maps defined "
                               f"(n={n_orig}); {criterion}.{notes}", None, read[-1].step, n_orig)
    # 6./7. the deciding bound: the highest upper bound ("below") or the lowest lower bound ("above")
    if below:
        worst = max(defined, key=lambda r: r.ci_high)
        measured, clear = worst.ci_high, worst.ci_high < rule.threshold
    else:
        worst = min(defined, key=lambda r: r.ci_low)
        measured, clear = worst.ci_low, worst.ci_low > rule.threshold
    at = f"at {worst.step} ({pos[worst.step]}) {_values(worst)}"
    if clear:
        return verdict("pass", f"{rule.metric} {'falls below' if below else 'rises above'} {rule.threshold:.2f} "
                               f"under {check}; {'highest' if below else 'lowest'} {at}; {criterion}.{notes}",
                       measured, worst.step, worst.n)
    return verdict("inconclusive", f"the 95% CI of {rule.metric} straddles {rule.threshold:.2f} under {check}: "
                                   f"{at}; its {bound} bound {_fmt(measured)} is not {rule.direction} "
                                   f"{rule.threshold:.2f} but the other bound is, so neither a pass nor a fail is "
                                   f"shown at this n; {criterion}.{notes}",
                   measured, worst.step, worst.n)


#: the verdicts the noise rule may turn into ``noise`` (a fail, undefined or insufficient data stays what it is)
NOISE_OVERRIDES = ("pass", "inconclusive")


def apply_noise_ceiling(verdicts: Sequence[Verdict], records: Sequence[Record], ceiling_checks: Sequence[str],
                        randomization_checks: Sequence[str]) -> List[Verdict]:
    """``verdicts`` with the noise rule applied (run by the engine and by ``validate`` alike).

    A verdict of a check in ``randomization_checks`` with ``direction="below"`` and status ``pass`` or
    ``inconclusive`` becomes ``noise`` when a check in ``ceiling_checks`` has a record of the same explainer and
    the verdict's metric at its (non-original) step whose upper 95 % CI bound is below the verdict's threshold:
    the same model under another sampling seed already gives maps that dissimilar, so a randomization score
    below the threshold cannot show model dependence. ``measured`` and ``n`` become the ceiling's upper bound
    and n, ``step`` the ceiling's check and step (``noise_ceiling/another_seed``); the reason states the
    ceiling and what the randomization alone would have said. Without ceiling checks: ``verdicts`` unchanged.
    """
    if not ceiling_checks:
        return list(verdicts)
    ceilings: Dict[Tuple[str, str], Record] = {}
    for r in records:
        if r.check in ceiling_checks and r.step != ORIGINAL_STEP and r.ci_high is not None:
            key = (r.explainer, r.metric)
            if key not in ceilings or r.ci_high > ceilings[key].ci_high:  # the highest ceiling, if several
                ceilings[key] = r
    out = []
    for v in verdicts:
        c = ceilings.get((v.explainer, v.metric))
        if (c is None or v.check not in randomization_checks or v.direction != "below"
                or v.status not in NOISE_OVERRIDES or not c.ci_high < v.threshold):
            out.append(v)
            continue
        was = v.reason.split(": ", 1)[1] if ": " in v.reason else v.reason
        reason = (f"{STATUS_WORDS['noise']}: the maps are dominated by sampling noise: under another sampling "
                  f"seed the trained model's own maps have {v.metric} {_values(c)} ({c.check}), upper bound below "
                  f"the threshold {v.threshold:.2f}, so a {v.check} score below it shows nothing about the model; "
                  f"not a pass. Without the ceiling the verdict would be {v.status}: {was}")
        out.append(Verdict(v.explainer, v.check, False, reason, v.metric, v.rule, v.threshold, c.ci_high,
                           f"{c.check}/{c.step}", "noise", v.direction, int(c.n), v.min_n))
    return out


def git_hash(path: Optional[Path] = None) -> Optional[str]:
    """The commit of the code (``-dirty`` when tracked files differ from it), or None outside git. Asked of
    git once per process and tree state (two subprocesses: a fixed cost of every run, issue 12), again
    whenever :func:`_git_stamp` changes: a commit, checkout or ``git add`` (the git dir's ``logs/HEAD`` and
    ``index``) or an edit under the package directory."""
    cwd = path or Path(__file__).resolve().parent
    memo = _GIT_MEMO.get(str(cwd))
    if memo is not None and memo[0] is not None and memo[0] == _git_stamp(cwd, memo[1]):
        return memo[2]
    value = _git_hash(path)
    gitdir = None
    if value is not None:
        try:
            out = subprocess.run(["git", "rev-parse", "--absolute-git-dir"], cwd=cwd, capture_output=True,
                                 text=True, timeout=5)
            gitdir = out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            gitdir = None
    _GIT_MEMO[str(cwd)] = (_git_stamp(cwd, gitdir) if gitdir else None, gitdir, value)
    return value


#: str(cwd) -> (stamp, git dir, git_hash); no memo (stamp None) outside git
_GIT_MEMO: Dict[str, Tuple[Any, Optional[str], Optional[str]]] = {}


def _git_stamp(cwd: Path, gitdir: Optional[str]) -> Any:
    """What :func:`git_hash`'s answer depends on, cheaply: (mtime, size) of the git dir's ``HEAD``,
    ``logs/HEAD`` (appended at every commit, checkout, reset) and ``index``, and of every file under ``cwd``
    (the package: an edit there can make the tree dirty). Edits to tracked files elsewhere in the repository
    are seen at the next commit or ``git add``."""
    import os

    if gitdir is None:
        return None
    stamp: List[Any] = []
    for name in ("HEAD", "logs/HEAD", "index"):
        try:
            st = os.stat(os.path.join(gitdir, name))
            stamp.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append((name, None))
    for root, dirs, files in os.walk(cwd):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            stamp.append((root, f, st.st_mtime_ns, st.st_size))
    return tuple(stamp)


def _git_hash(path: Optional[Path] = None) -> Optional[str]:
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
    """Versions of Python and the packages the numbers depend on; read once per process (the metadata
    search is a fixed cost of every run, issue 12; installing a package mid-process is not a supported way
    to change them)."""
    if not _VERSIONS_MEMO:
        _VERSIONS_MEMO.append(_package_versions())
    return dict(_VERSIONS_MEMO[0])


_VERSIONS_MEMO: List[Dict[str, Optional[str]]] = []


def _package_versions() -> Dict[str, Optional[str]]:
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
    """A small tensor as ``{shape, dtype: float16, data: base64}`` (thumbnails travel inside result files).
    Values beyond float16's range are scaled down by a power of two (a thumbnail shows relative values)."""
    import base64

    import numpy as np

    values = np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t, dtype=np.float64)
    peak = float(np.abs(values).max()) if values.size else 0.0
    if peak > 32768.0:  # beyond float16's range (65504): scale by an exact power of two, so a picture stays a picture
        values = np.ldexp(values, -int(np.ceil(np.log2(peak / 32768.0))))
    arr = np.ascontiguousarray(values, dtype="<f2")
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
                                                               "examples", "skipped", "figures", "files",
                                                               "resources")}
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
