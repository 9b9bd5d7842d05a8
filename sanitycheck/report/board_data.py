"""The leaderboard's data model: which submissions are on the board and what each cell says.

:func:`collect` reads ``<root>/submissions/<method>/<suite>.json``, re-validates every file (see
:func:`sanitycheck.validation.load_valid_documents` and, with a re-run, :func:`sanitycheck.submissions.validate_file`),
keeps the valid ones and builds one :class:`SuiteTable` per suite: one :class:`Row` per method, one :class:`Cell` per
check (verdict status, deciding value, score), rows in board order, the reliability of the scores and the overall
badge (:data:`BADGE_RULE`, :func:`assign_badges`). No rendering here: :mod:`.markdown`, :mod:`.html` and
:mod:`.thumbnails` draw what this module computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union


# --------------------------------------------------------------------------- the board's data
@dataclass
class Cell:
    """One check of one method: its verdict and the verdict metric after the last step."""

    check: str
    passed: Optional[bool]          # None: no verdict (skipped, a score); False for every status but pass
    verdict_text: str               # "pass 0.311 @ fc1"
    reason: str                     # the verdict's full reason (tooltip)
    score_text: str                 # "0.34 [0.33, 0.35] n=128" or "undefined (reason)"
    score_sort: Optional[float]     # the mean, for sorting; None when undefined
    status: str = "none"            # pass, fail, inconclusive, undefined, insufficient_data; none: no verdict


@dataclass
class Row:
    method: str
    explainer: str
    control: bool
    source: str
    source_sha256: str
    code_hash: str
    cells: List[Cell]
    maps: Optional[str]             # asset path relative to root, or None
    curves: Optional[str]
    setting: Tuple[Any, ...]        # (model, test accuracy, dataset, n, seed)
    badge: Optional[str] = None     # "passes", "fails", "not faithful", "not evaluated"; None: no verdicts here
    badge_reason: str = ""


@dataclass
class SuiteTable:
    suite: str
    version: str
    description: str
    reference: str
    checks: List[str]
    rules: Dict[str, Dict[str, Any]]
    last_steps: Dict[str, Optional[str]]
    rows: List[Row] = field(default_factory=list)
    #: Tomsett et al. (2020) reliability of the suite's scores as method rankings (evaluation checks)
    reliability: Optional[Dict[str, Any]] = None

    @property
    def settings(self) -> List[Tuple[Any, ...]]:
        return sorted({r.setting for r in self.rows}, key=repr)


def check_rule(info: Dict[str, Any], doc: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A check's verdict rule; for a score without verdict (a faithfulness family) a stand-in naming its
    summary metric and direction, so every column reads the same way. A state check measured beside the verdicts
    without one of its own (the noise ceiling, n-vs-2n convergence) reads the verdicts' metric of ``doc``: the
    ceiling is shown in the unit of the randomization scores it bounds."""
    if info.get("verdict_rule") is not None:
        return info["verdict_rule"]
    directions = info.get("higher_is_better") or {}
    if not directions and doc is not None:
        ruled = [c["verdict_rule"]["metric"] for c in doc["checks"].values() if c.get("verdict_rule")]
        metric = ruled[0] if ruled else next(iter(doc.get("metrics") or {}), "score")
        return {"metric": metric, "threshold": None, "rule": "score", "direction": "higher is better"}
    metric = next(iter(directions), "score")
    return {"metric": metric, "threshold": None, "rule": "score",
            "direction": "higher is better" if directions.get(metric, True) else "lower is better"}


def last_step(info: Dict[str, Any]) -> Optional[str]:
    """The step a column reports: the last step of a randomization, the summary step of a score."""
    steps = info.get("steps") or []
    if info.get("kind") == "evaluation":
        summary = [s for s in steps if not s.isdigit()]
        return summary[-1] if summary else None
    return steps[-1] if steps else None



def _num(v: Optional[float], digits: int = 2) -> str:
    return "undefined" if v is None else f"{v:.{digits}f}"


STATUS_WORDS = {"pass": "pass", "fail": "fail", "inconclusive": "inconclusive", "undefined": "undefined",
                "insufficient_data": "insufficient", "noise": "sampling noise", "none": "–"}
NOISE = "noise"


def verdict_status(verdict: Dict[str, Any]) -> str:
    """A verdict's status: its three-valued ``status`` where it has one, else pass/fail from ``passed``."""
    status = verdict.get("status")
    if isinstance(status, str) and status in STATUS_WORDS:
        return status
    return "pass" if verdict.get("passed") else "fail"


def format_verdict(verdict: Dict[str, Any]) -> str:
    """``pass 0.311 @ fc1``: the outcome, the deciding value (upper 95 % CI bound) and the step it was read at."""
    text = f"{STATUS_WORDS[verdict_status(verdict)]} {_num(verdict['measured'], 3)}"
    return text + (f" @ {verdict['step']}" if verdict.get("step") else "")


def format_score(record: Optional[Dict[str, Any]]) -> str:
    """``mean [ci_low, ci_high] n=…`` of a record, or ``undefined (reason)`` when its mean is null."""
    if record is None:
        return "–"
    if record["mean"] is None:
        return f"undefined ({record.get('undefined_reason') or 'no defined score'})"
    return (f"{record['mean']:.2f} [{_num(record['ci_low'])}, {_num(record['ci_high'])}] n={record['n']}"
            + (f", {record['n_undefined']} undefined" if record.get("n_undefined") else ""))


def _cell(doc: Dict[str, Any], explainer: str, check: str) -> Cell:
    info = doc["checks"][check]
    rule = check_rule(info, doc)
    steps = [last_step(info)] if last_step(info) else []
    verdict = next((v for v in doc["verdicts"] if v["explainer"] == explainer and v["check"] == check), None)
    status = "none"
    if verdict is None and info.get("verdict_rule") is None:
        passed, text, reason = None, "score", f"{check}: a score without a verdict ({rule['direction']})"
    elif verdict is None:
        skipped = next((s.get("reason", "") for s in doc.get("skipped", []) if s.get("explainer") == explainer), "")
        passed, text, reason = None, "skipped", f"no verdict for {check}" + (f": {skipped}" if skipped else "")
    else:
        status = verdict_status(verdict)
        passed, text, reason = status == "pass", format_verdict(verdict), verdict["reason"]
    rec = None
    if steps:
        rec = next((r for r in doc["records"] if (r["explainer"], r["check"], r["metric"], r["step"])
                    == (explainer, check, rule["metric"], steps[-1])), None)
    score_sort = None if rec is None or rec["mean"] is None else float(rec["mean"])
    return Cell(check, passed, text, reason, format_score(rec), score_sort, status)


def _row_order(row: Row) -> Tuple[Any, ...]:
    passes = sum(1 for c in row.cells if c.passed)
    return (row.control, -passes, row.method.lower(), row.method)


# --------------------------------------------------------------------------- collecting documents
def submission_paths(root: Path) -> List[Path]:
    """``root/submissions/<method>/<suite>.json``, sorted; dot-files (editor and atomic-write temporaries) skipped."""
    sub = Path(root) / "submissions"
    if not sub.is_dir():
        return []
    return sorted(p for p in sub.glob("*/*.json")
                  if p.is_file() and not p.name.startswith(".") and not p.parent.name.startswith("."))


def _layout_problems(doc: Dict[str, Any], path: Path) -> List[str]:
    """A valid document must also sit where it claims to belong: submissions/<method.name>/<suite>.json."""
    problems = []
    name = doc["method"]["name"]
    if path.parent.name != name:
        problems.append(f"misplaced: method.name {name!r} does not match its directory {path.parent.name!r} "
                        f"(expected submissions/{name}/{doc['suite']}.json)")
    if path.stem != doc["suite"]:
        problems.append(f"misplaced: the document is for suite {doc['suite']!r} but is named {path.name!r} "
                        f"(expected submissions/{name}/{doc['suite']}.json)")
    return problems


def rerun_file(path: Path, rerun: Union[bool, Sequence[str]]) -> bool:
    """Whether the board re-runs the file at ``path``: ``rerun`` is True (every file), False (none) or the names of
    the suites whose files are re-run (a file's suite is the name of its file: ``submissions/<method>/<suite>.json``)."""
    if isinstance(rerun, bool):
        return rerun
    return Path(path).stem in set(rerun)


def _revalidate(paths: List[Path], rerun: Union[bool, Sequence[str]], sample: int, work_root: Optional[Path],
                limits: Dict[str, Any], progress: bool = False) -> List[Tuple[Path, Optional[Dict[str, Any]], List[str]]]:
    """Validate every file as ``sanitycheck validate`` does (with a re-run of ``sample`` inputs drawn at random now,
    the files of one suite re-run together, unless ``rerun`` is off); return (path, document with the verdicts
    recomputed here, problems) per file."""
    from ..suites import load_suite
    from ..validation import load_document, load_valid_documents, recomputed_verdicts

    rerun_paths = [p for p in paths if rerun_file(p, rerun)]
    if rerun_paths:
        from ..submissions import validate_files

        found = validate_files(rerun_paths, sample=sample, work_root=work_root, progress=progress, **limits)
    out = []
    for path in paths:
        if path in rerun_paths:
            problems = found[str(path)]
            doc = None
            if not problems:
                doc, problems = load_document(path)
        else:
            valid, bad = load_valid_documents([path], submission=True, provenance=True)
            doc, problems = (None, next(iter(bad.values()))) if bad else (valid[0], [])
        if doc is not None:
            doc["verdicts"] = recomputed_verdicts(doc, load_suite(doc["suite"]))  # the board shows what IT computed
        out.append((path, doc, problems))
    return out


def collect(root: Path, *, rerun: Union[bool, Sequence[str]] = False, sample: int = 4, progress: bool = False,
            limits: Optional[Dict[str, Any]] = None
            ) -> Tuple[Dict[str, SuiteTable], Dict[str, List[str]], Dict[Tuple[str, str], Dict[str, Any]]]:
    """Validate every submission; return (tables by suite, {relative path: problems}, {(suite, method): doc})."""
    import tempfile

    root = Path(root)
    tables: Dict[str, SuiteTable] = {}
    rejected: Dict[str, List[str]] = {}
    docs: Dict[Tuple[str, str], Dict[str, Any]] = {}
    paths = list(submission_paths(root))
    any_rerun = any(rerun_file(p, rerun) for p in paths)
    work = tempfile.TemporaryDirectory(prefix="sanitycheck-board-") if any_rerun else None
    try:
        checked = _revalidate(paths, rerun, sample, Path(work.name) if work else None, dict(limits or {}),
                              progress=progress)
    finally:
        if work is not None:
            work.cleanup()
    for path, doc, problems in checked:
        rel = path.relative_to(root).as_posix()
        if problems:
            rejected[rel] = problems
            continue
        problems = _layout_problems(doc, path)
        if problems:
            rejected[rel] = problems
            continue
        suite, method = doc["suite"], doc["method"]["name"]
        checks = list(doc["checks"])
        table = tables.get(suite)
        if table is None:
            table = tables[suite] = SuiteTable(
                suite, doc["suite_version"], doc.get("suite_description", ""), doc.get("suite_reference", ""),
                checks, {c: check_rule(doc["checks"][c], doc) for c in checks},
                {c: last_step(doc["checks"][c]) for c in checks})
        else:
            for c in checks:  # a submission run with a subset of the checks still fits the suite's columns
                if c not in table.checks:
                    table.checks.append(c)
                    table.rules[c] = check_rule(doc["checks"][c], doc)
                    table.last_steps[c] = last_step(doc["checks"][c])
        explainer = next(iter(doc["explainers"]))
        info = doc["explainers"][explainer]
        model = doc["model"]
        acc = (model.get("info") or {}).get("test_accuracy")
        params = model.get("params") or {}
        label = model["name"] + (f" ({', '.join(f'{k}={v}' for k, v in sorted(params.items()))})" if params else "")
        setting = (label, acc if isinstance(acc, (int, float)) else None, doc["dataset"]["name"],
                   doc["dataset"]["n"], doc["seed"])
        table.rows.append(Row(method, explainer, info.get("requires_model") is False, doc["method"]["source"],
                              doc["method"]["source_sha256"], str(info.get("code_hash", "")), [], None, None, setting))
        docs[(suite, method)] = doc
    for table in tables.values():
        for row in table.rows:
            doc = docs[(table.suite, row.method)]
            row.cells = [_cell(doc, row.explainer, c) if c in doc["checks"] else
                         Cell(c, None, "not run", f"{c} was not part of this submission's run", "–", None)
                         for c in table.checks]
        table.rows.sort(key=_row_order)
        table.reliability = _reliability(table, docs)
    assign_badges(tables, docs)
    return dict(sorted(tables.items())), rejected, docs



# --------------------------------------------------------------------------- the overall badge
FAITHFULNESS_SUITE = "petsiuk2018"
BADGE_RULE = ("A method earns the overall badge of a suite only if (a) every verdict it has there is a pass and (b) "
              "it beats the uniform `noise` control on deletion or insertion with separated 95% CIs (its deletion "
              "AUC's upper bound below noise's lower bound, or its insertion AUC's lower bound above noise's upper "
              "bound), read from the same document when the suite measures deletion and insertion itself, otherwise "
              "from the petsiuk2018 results on the board for the same model and dataset. Randomization checks alone "
              "can be passed by maps that carry no information about the input (noise seeded by a hash of the "
              "weights passes them; Binder et al. 2023), so a pass there must also beat noise at faithfulness. "
              "Without deletion/insertion results a method is not evaluated for faithfulness and gets no badge.")


def _auc(doc: Dict[str, Any], check: str) -> Optional[Dict[str, Any]]:
    explainer = next(iter(doc["explainers"]))
    rec = next((r for r in doc["records"] if r["explainer"] == explainer and r["check"] == check
                and r["step"] == "auc"), None)
    return rec if rec is not None and rec["ci_low"] is not None and rec["ci_high"] is not None else None


def _model_key(doc: Dict[str, Any]) -> Tuple[Any, ...]:
    return (doc["model"]["name"], repr(sorted((doc["model"].get("params") or {}).items())), doc["dataset"]["name"])


def beats_noise(doc: Dict[str, Any], noise: Dict[str, Any]) -> Tuple[Optional[bool], str]:
    """(True/False, why) when deletion or insertion AUCs of both are there; (None, why) when they are not."""
    said = []
    for check, lower_better in (("deletion", True), ("insertion", False)):
        mine, theirs = _auc(doc, check), _auc(noise, check)
        if mine is None or theirs is None:
            continue
        if lower_better and mine["ci_high"] < theirs["ci_low"]:
            return True, (f"deletion AUC {mine['mean']:.3f} [{mine['ci_low']:.3f}, {mine['ci_high']:.3f}] is below "
                          f"noise's [{theirs['ci_low']:.3f}, {theirs['ci_high']:.3f}]")
        if not lower_better and mine["ci_low"] > theirs["ci_high"]:
            return True, (f"insertion AUC {mine['mean']:.3f} [{mine['ci_low']:.3f}, {mine['ci_high']:.3f}] is above "
                          f"noise's [{theirs['ci_low']:.3f}, {theirs['ci_high']:.3f}]")
        said.append(f"{check} AUC [{mine['ci_low']:.3f}, {mine['ci_high']:.3f}] vs noise "
                    f"[{theirs['ci_low']:.3f}, {theirs['ci_high']:.3f}]")
    if not said:
        return None, "no deletion/insertion AUCs of this method and of the noise control"
    return False, "CIs not separated from the noise control: " + "; ".join(said)


def assign_badges(tables: Dict[str, SuiteTable], docs: Dict[Tuple[str, str], Dict[str, Any]]) -> None:
    """Set ``row.badge`` of every row of a suite with verdicts (see ``BADGE_RULE``)."""
    for t in tables.values():
        if not any(r.get("threshold") is not None for r in t.rules.values()):
            continue  # a suite of scores only (petsiuk2018 itself): no verdicts to badge
        for row in t.rows:
            doc = docs[(t.suite, row.method)]
            statuses = [c.status for c in row.cells if c.status != "none"]
            failing = [c.check for c in row.cells if c.status not in ("none", "pass")]
            if not statuses or failing:
                row.badge = "fails"
                row.badge_reason = ("no badge: not every verdict is a pass (" + ", ".join(failing) + ")") if failing \
                    else "no badge: no verdicts"
                continue
            candidates = []
            noise = docs.get((t.suite, NOISE))
            if noise is not None and _auc(doc, "deletion") is not None:
                candidates.append((doc, noise, t.suite))
            own = docs.get((FAITHFULNESS_SUITE, row.method))
            theirs = docs.get((FAITHFULNESS_SUITE, NOISE))
            if own is not None and theirs is not None and _model_key(own) == _model_key(doc) == _model_key(theirs):
                candidates.append((own, theirs, FAITHFULNESS_SUITE))
            result, why = None, f"not evaluated for faithfulness: no {FAITHFULNESS_SUITE} results of this method " \
                                f"and the noise control on {doc['model']['name']} / {doc['dataset']['name']}"
            for mine, ref, where in candidates:
                got, reason = beats_noise(mine, ref)
                if got is not None:
                    result, why = got, f"{where}: {reason}"
                    if got:
                        break
            if result is None:
                row.badge, row.badge_reason = "not evaluated", why
            elif result:
                row.badge, row.badge_reason = "passes", f"every verdict passes; beats noise ({why})"
            else:
                row.badge, row.badge_reason = "not faithful", f"every verdict passes, but {why}"


def _reliability(table: SuiteTable, docs: Dict[Tuple[str, str], Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Tomsett et al. (2020) reliability of the table's scores, from the submissions' per-image scores."""
    from .reliability import reliability_report, summaries_of

    group = [docs[(table.suite, row.method)] for row in table.rows]
    if len(group) < 2 or len({(d["dataset"]["n"], d["seed"]) for d in group}) != 1:
        return None
    summaries = sorted(set().union(*(summaries_of(d["checks"]) for d in group)))
    if not summaries:
        return None
    per_sample = {d["method"]["name"]: d["per_sample"][next(iter(d["explainers"]))] for d in group}
    return reliability_report(per_sample, summaries)
