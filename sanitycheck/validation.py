"""Validation of result documents, without running anything (``static_problems``).

A result document is accepted when (1) it matches the published JSON Schema
(``leaderboard/schema.json``), (2) its suite is known here and its version and hash are current,
(3) every record's mean, CI and n are what the bootstrap gives on the document's own per-image
scores, and (4) every verdict is what the suite's rule gives on those records. Hand edits to
aggregates or verdicts therefore fail (3) or (4); edits to per-image scores are caught by the
seeded re-run of :func:`sanitycheck.submissions.validate`, which runs the method again.

The leaderboard only ever reads documents that pass this module: it never imports submitted code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from .results import ORIGINAL_STEP, Record, VerdictRule, decide
from .schema import RESULT_SCHEMA
from .stats import bootstrap_ci

AGGREGATE_TOLERANCE = 1e-6


def _close(a: Optional[float], b: Optional[float], tol: float = AGGREGATE_TOLERANCE) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=0, abs_tol=tol)


def schema_problems(doc: Any) -> List[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(RESULT_SCHEMA)
    return [f"schema: at {'/'.join(str(p) for p in err.absolute_path) or '(top level)'}: {err.message}"
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))[:10]]


def suite_problems(doc: Dict[str, Any]) -> List[str]:
    from .errors import SanityCheckError
    from .suites import load_suite

    try:
        suite = load_suite(doc["suite"])
    except SanityCheckError as err:
        return [f"suite: {err}"]
    if doc["suite_version"] != suite.version:
        return [f"stale: written for suite {suite.name} v{doc['suite_version']}, the current version is "
                f"v{suite.version}; re-run the submission"]
    if doc["suite_sha256"] != suite.sha256:
        return [f"stale: suite {suite.name} v{suite.version} file has changed since this result was written "
                f"(sha256 {doc['suite_sha256'][:12]}… vs {suite.sha256[:12]}…); re-run the submission"]
    return []


def aggregate_problems(doc: Dict[str, Any]) -> List[str]:
    """Records must equal the bootstrap of the per-image scores; verdicts must follow from the records."""
    problems: List[str] = []
    n_images = doc["dataset"]["n"]
    per_sample = doc["per_sample"]
    records: Dict[Tuple[str, str], List[Record]] = {}
    for r in doc["records"]:
        records.setdefault((r["explainer"], r["check"]), []).append(Record(**r))
        if r["step"] == ORIGINAL_STEP:
            # the original model's maps compared with themselves: the metric's identity value wherever defined
            identity = float(doc["metrics"].get(r["metric"], {}).get("identity", 1.0))
            if r["n"] + r["n_undefined"] != n_images or (r["n"] and not all(
                    _close(r[k], identity) for k in ("mean", "ci_low", "ci_high"))) or (not r["n"] and r["mean"] is not None):
                problems.append(f"tampered: record {r['explainer']}/{r['check']}/original/{r['metric']} must be {identity} "
                                f"over n={n_images} images (the original maps against themselves), got mean "
                                f"{r['mean']} n={r['n']}+{r['n_undefined']} undefined")
            continue
        scores = per_sample.get(r["explainer"], {}).get(r["check"], {}).get(r["step"], {}).get(r["metric"])
        where = f"{r['explainer']}/{r['check']}/{r['step']}/{r['metric']}"
        if scores is None:
            problems.append(f"per_sample: no scores for record {where}")
            continue
        if len(scores) != n_images:
            problems.append(f"per_sample: {where} has {len(scores)} scores for n={n_images} images")
            continue
        values = torch.tensor([float("nan") if v is None else v for v in scores], dtype=torch.float64)
        from .runner import bootstrap_label  # an import path's attribute: one seed for every spelling of a file

        s = bootstrap_ci(values, seed_parts=(doc["seed"], "bootstrap", r["check"], bootstrap_label(r["explainer"])))
        if not (s.n == r["n"] and s.n_undefined == r["n_undefined"] and _close(s.mean, r["mean"])
                and _close(s.ci_low, r["ci_low"]) and _close(s.ci_high, r["ci_high"])):
            problems.append(f"tampered: record {where} says mean {r['mean']} [{r['ci_low']}, {r['ci_high']}] n={r['n']}, "
                            f"its per-image scores give {s.mean} [{s.ci_low}, {s.ci_high}] n={s.n}")
    for v in doc["verdicts"]:
        rule = doc["checks"].get(v["check"], {}).get("verdict_rule")
        if rule is None:
            problems.append(f"verdict for {v['check']!r}, which has no verdict rule")
            continue
        expected = decide(VerdictRule(rule["metric"], rule["threshold"], rule["rule"], rule.get("direction", "below")),
                          v["explainer"], v["check"],
                          records.get((v["explainer"], v["check"]), []))
        if expected.passed != v["passed"]:
            problems.append(f"tampered: verdict {v['explainer']}/{v['check']} says passed={v['passed']}, "
                            f"its records give passed={expected.passed}")
        elif (expected.reason, expected.measured, expected.step) != (v["reason"], v["measured"], v["step"]):
            problems.append(f"tampered: verdict {v['explainer']}/{v['check']} states a reason or value its records "
                            f"do not give (expected: {expected.reason!r})")
    return problems


def static_problems(doc: Any, *, submission: bool = False) -> List[str]:
    """Every reason to reject ``doc`` that can be found without running code; empty when valid."""
    if not isinstance(doc, dict):
        return [f"malformed: a result document is a JSON object, got {type(doc).__name__}"]
    problems = schema_problems(doc)
    if problems:
        return problems
    if submission:
        if "method" not in doc:
            problems.append("submission: no 'method' block (name, source, source_sha256)")
        if len(doc["explainers"]) != 1:
            problems.append(f"submission: exactly one explainer expected, got {sorted(doc['explainers'])}")
    problems += suite_problems(doc)
    problems += aggregate_problems(doc)
    return problems


def load_document(path: Union[str, Path]) -> Tuple[Optional[Dict[str, Any]], List[str]]:
    """Read a result file; return (document or None, problems)."""
    import json

    try:
        with open(path, "r", encoding="utf-8") as fh:
            doc = json.load(fh, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not JSON")))
    except (OSError, ValueError) as err:
        return None, [f"malformed: cannot read {path} as JSON: {err}"]
    return doc, []


def load_valid_documents(paths, *, submission: bool = True) -> Tuple[List[Dict[str, Any]], Dict[str, List[str]]]:
    """The valid documents among ``paths`` and, per rejected path, its problems (for the leaderboard)."""
    valid, rejected = [], {}
    for path in paths:
        doc, problems = load_document(path)
        if doc is not None:
            problems = static_problems(doc, submission=submission)
        if problems:
            rejected[str(path)] = problems
        else:
            valid.append(doc)
    return valid, rejected
