"""Validation of result documents, without running anything (``static_problems``).

Nothing the file says about how it should be judged is trusted. A result document is accepted when
(0) it is a regular file no larger than ``MAX_DOCUMENT_BYTES`` (checked before it is read) with list
lengths bounded by its suite, (1) it matches the published JSON Schema (``leaderboard/schema.json``),
(2) its suite is known here and its version and hash are current, (3) its checks, their parameters and
verdict rules, and its metrics are exactly the suite's (the *suite's* rules, not the file's copy, are
applied), (4) every per-image score has a record and every record's mean, CI and n are what the
bootstrap gives on those scores, (5) every verdict is, field by field, what the suite's current rule
gives on those records, and none is missing or extra, (6) the method's source has the hash the file
states and the file names the model weights it was computed with. Edits to per-image scores are
caught by the re-run of :func:`sanitycheck.submissions.validate_file` on a sample drawn from fresh
randomness at validation time (``--full``: every input), which also compares the weights hash.

The leaderboard only ever reads documents that pass this module: it never imports submitted code.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from .checks.sampling import noise_rule_checks
from .results import ORIGINAL_STEP, Record, apply_noise_ceiling, clean_json, decide
from .schema import RESULT_SCHEMA
from .stats import bootstrap_ci

AGGREGATE_TOLERANCE = 1e-6
MAX_DOCUMENT_BYTES = 64 * 2**20     # a committed document is < 1 MiB; 64 MiB leaves room for n in the thousands
MAX_IMAGES = 100_000                # dataset.n of a document
MAX_SCORE_VALUES = 5_000_000        # per-image scores in one document (each is bootstrapped 2000 times)
MAX_RECORDS = 50_000


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


def _rule_dict(rule: Any) -> Optional[Dict[str, Any]]:
    return None if rule is None else asdict(rule)


def rule_problems(doc: Dict[str, Any], suite: Any) -> List[str]:
    """The file's checks, their parameters and verdict rules, and its metrics must be the suite's own: a file
    cannot bring the rule it is judged by. Every difference is named, file value against suite value."""
    problems: List[str] = []
    where = f"suite {suite.name} v{suite.version}"
    explainer = ", ".join(doc["explainers"]) or "(no explainer)"
    want_checks = [c.name for c in suite.checks]
    have_checks = list(doc["checks"])
    if set(want_checks) != set(have_checks):
        missing = [c for c in want_checks if c not in have_checks]
        extra = [c for c in have_checks if c not in want_checks]
        problems.append(f"rules: the file's checks differ from {where}'s" + (f"; missing {missing}" if missing else "")
                        + (f"; not in the suite {extra}" if extra else ""))
    for spec in suite.checks:
        info = doc["checks"].get(spec.name)
        if not isinstance(info, dict):
            continue
        want, have = _rule_dict(spec.verdict), info.get("verdict_rule")
        if want != have:
            if isinstance(want, dict) and isinstance(have, dict):
                diffs = [f"{k} {have.get(k)!r}" for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
                wants = [f"{k} {want.get(k)!r}" for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
                problems.append(f"rules: verdict_rule of {explainer}/{spec.name} says {', '.join(diffs)}, "
                                f"{where} says {', '.join(wants)}")
            else:
                problems.append(f"rules: verdict_rule of {explainer}/{spec.name} is {have!r}, {where} says {want!r}")
        if info.get("params") != spec.params:
            problems.append(f"rules: params of {spec.name} are {info.get('params')!r} in the file, {where} says "
                            f"{spec.params!r}")
    if set(doc["metrics"]) != set(suite.metrics):
        problems.append(f"rules: the file's metrics {sorted(doc['metrics'])} differ from {where}'s {sorted(suite.metrics)}")
    else:
        from .registry import METRICS

        for name in suite.metrics:
            if ":" in name:
                continue
            info = getattr(METRICS.get(name), "info", None)
            if info is not None and clean_json(asdict(info)) != doc["metrics"][name]:
                problems.append(f"rules: the description of metric {name} differs from the installed metric's "
                                f"(identity, direction or category); the file says {doc['metrics'][name]!r}")
    return problems


def _scores_inputs(doc: Dict[str, Any], check: str) -> bool:
    """Whether ``check``'s per-sample scores are one per audited input (they are unless the check records
    another ``sample_unit``, e.g. an SAE's latents or TCAV's runs; their counts are bounded by the totals)."""
    return ((doc.get("checks") or {}).get(check) or {}).get("sample_unit", "inputs") == "inputs"


def size_problems(doc: Dict[str, Any]) -> List[str]:
    """Absurd list lengths, refused before any bootstrap (bounded time and memory)."""
    n = doc["dataset"]["n"]
    if n > MAX_IMAGES:
        return [f"too large: dataset.n is {n}, more than the {MAX_IMAGES} inputs a document may hold"]
    if len(doc["records"]) > MAX_RECORDS:
        return [f"too large: {len(doc['records'])} records, more than {MAX_RECORDS}"]
    total = 0
    for name, checks in doc["per_sample"].items():
        if not isinstance(checks, dict):
            return [f"per_sample: {name} is not an object"]
        for check, steps in checks.items():
            if not isinstance(steps, dict):
                return [f"per_sample: {name}/{check} is not an object"]
            for step, metrics in steps.items():
                if not isinstance(metrics, dict):
                    return [f"per_sample: {name}/{check}/{step} is not an object"]
                for metric, values in metrics.items():
                    where = f"{name}/{check}/{step}/{metric}"
                    if not isinstance(values, list):
                        return [f"per_sample: {where} is not a list"]
                    if len(values) != n and _scores_inputs(doc, check):
                        return [f"per_sample: {where} has {len(values)} scores for n={n} images"]
                    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in values):
                        return [f"per_sample: {where} holds a value that is neither a number nor null"]
                    total += len(values)
                    if total > MAX_SCORE_VALUES:
                        return [f"too large: more than {MAX_SCORE_VALUES} per-image scores"]
    return []


def _decide(suite: Any, spec: Any, explainer: str, records: List[Record]) -> Dict[str, Any]:
    """The verdict the suite's *current* rule (``spec.verdict``, its ``min_n`` included) gives, as the runner
    computes it (all fields, whatever they are)."""
    return clean_json(asdict(decide(spec.verdict, explainer, spec.name, records)))


def recomputed_verdicts(doc: Dict[str, Any], suite: Any) -> List[Dict[str, Any]]:
    """Every verdict of ``doc`` recomputed from its records with the suite's current rules."""
    records: Dict[Tuple[str, str], List[Record]] = {}
    for r in doc["records"]:
        records.setdefault((r["explainer"], r["check"]), []).append(Record(**r))
    out = []
    for spec in suite.checks:
        if spec.verdict is None:
            continue
        for explainer in doc["explainers"]:
            recs = records.get((explainer, spec.name), [])
            if not any(r.step != ORIGINAL_STEP for r in recs):
                continue  # the runner writes no verdict where it wrote no scores (a check that skips this explainer)
            out.append(decide(spec.verdict, explainer, spec.name, recs))
    # the noise rule, as the runner applies it (a suite without noise_ceiling: unchanged)
    ceilings, randomizations = noise_rule_checks(suite.checks)
    out = apply_noise_ceiling(out, [r for rs in records.values() for r in rs], ceilings, randomizations)
    out += audit_verdicts(doc, suite)
    return [clean_json(asdict(v)) for v in out]


def audit_verdicts(doc: Dict[str, Any], suite: Any) -> List[Any]:
    """The verdicts of the suite's audits that decide their own (``AuditCheck.decides``), recomputed from the
    document's records, summaries and state_info of each (what the runner passed them, read back)."""
    from .checks.base import RecordedAudit, get_check

    out: List[Any] = []
    for spec in suite.checks:
        check = get_check(spec.name, **spec.params)
        if not getattr(check, "decides", False) or spec.name not in (doc.get("checks") or {}):
            continue
        if spec.name in (doc.get("not_applicable") or {}):
            continue
        recorded = RecordedAudit(spec.name, [Record(**r) for r in doc["records"] if r["check"] == spec.name],
                                 list((doc.get("summaries") or {}).get(spec.name) or []),
                                 dict((doc.get("state_info") or {}).get(spec.name) or {}))
        # a published file holds one explainer's records; the audit's summaries may name the run's others
        out.extend(v for v in check.decide(recorded) if v.explainer in (doc.get("explainers") or {}))
    return out


def verdict_problems(doc: Dict[str, Any], suite: Any) -> List[str]:
    problems: List[str] = []
    expected = {(v["explainer"], v["check"]): v for v in recomputed_verdicts(doc, suite)}
    stated: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for v in doc["verdicts"]:
        key = (v["explainer"], v["check"])
        if key in stated:
            problems.append(f"tampered: two verdicts for {key[0]}/{key[1]}")
        stated[key] = v
    for key, want in expected.items():
        have = stated.get(key)
        if have is None:
            problems.append(f"tampered: verdict {key[0]}/{key[1]} is missing; the suite's rule gives "
                            f"{_verdict_word(want)}")
            continue
        diff = sorted(k for k in set(want) | set(have) if not _same(want.get(k), have.get(k)))
        if diff:
            if "passed" in diff or "status" in diff:
                problems.append(f"tampered: verdict {key[0]}/{key[1]} says {_verdict_word(have)}, its records give "
                                f"{_verdict_word(want)} under suite {suite.name} v{suite.version}")
            else:
                problems.append(f"tampered: verdict {key[0]}/{key[1]} states {', '.join(diff)} its records do not "
                                f"give under suite {suite.name} v{suite.version} (expected: {want.get('reason')!r})")
    for key in stated:
        if key not in expected:
            problems.append(f"tampered: verdict for {key[0]}/{key[1]}, for which suite {suite.name} has no rule or "
                            f"the file no scores")
    return problems


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return _close(a, float(b), 1e-9)
    return a == b


def _verdict_word(v: Dict[str, Any]) -> str:
    if "status" in v:
        return f"status={v['status']}"
    return f"passed={v.get('passed')}"


def aggregate_problems(doc: Dict[str, Any]) -> List[str]:
    """Records must equal the bootstrap of the per-image scores, and every per-image score must have a record."""
    problems: List[str] = []
    n_images = doc["dataset"]["n"]
    per_sample = doc["per_sample"]
    unknown = sorted(set(per_sample) - set(doc["explainers"]))
    if unknown:
        problems.append(f"per_sample: scores of {unknown}, which the document does not list as explainers")
    seen = set()
    for r in doc["records"]:
        if r["explainer"] not in doc["explainers"]:
            problems.append(f"tampered: record of {r['explainer']!r}, which is not among the document's explainers")
            continue
        if r["step"] == ORIGINAL_STEP:
            # the original model's maps compared with themselves: the metric's identity value wherever defined
            identity = float(doc["metrics"].get(r["metric"], {}).get("identity", 1.0))
            if r["n"] + r["n_undefined"] != n_images or (r["n"] and not all(
                    _close(r[k], identity) for k in ("mean", "ci_low", "ci_high"))) or (not r["n"] and r["mean"] is not None):
                problems.append(f"tampered: record {r['explainer']}/{r['check']}/original/{r['metric']} must be {identity} "
                                f"over n={n_images} images (the original maps against themselves), got mean "
                                f"{r['mean']} n={r['n']}+{r['n_undefined']} undefined")
            continue
        key = (r["explainer"], r["check"], r["step"], r["metric"])
        where = "/".join(key)
        if key in seen:
            problems.append(f"tampered: two records for {where}")
            continue
        seen.add(key)
        scores = per_sample.get(r["explainer"], {}).get(r["check"], {}).get(r["step"], {}).get(r["metric"])
        if scores is None:
            problems.append(f"per_sample: no scores for record {where}")
            continue
        if len(scores) != n_images and _scores_inputs(doc, r["check"]):
            problems.append(f"per_sample: {where} has {len(scores)} scores for n={n_images} images")
            continue
        values = torch.tensor([float("nan") if v is None else v for v in scores], dtype=torch.float64)
        from .runner import bootstrap_label  # an import path's attribute: one seed for every spelling of a file

        s = bootstrap_ci(values, seed_parts=(doc["seed"], "bootstrap", r["check"], bootstrap_label(r["explainer"])))
        if not (s.n == r["n"] and s.n_undefined == r["n_undefined"] and _close(s.mean, r["mean"])
                and _close(s.ci_low, r["ci_low"]) and _close(s.ci_high, r["ci_high"])):
            problems.append(f"tampered: record {where} says mean {r['mean']} [{r['ci_low']}, {r['ci_high']}] n={r['n']}, "
                            f"its per-image scores give {s.mean} [{s.ci_low}, {s.ci_high}] n={s.n}")
    for name, checks in per_sample.items():
        for check, steps in checks.items():
            for step, metrics in steps.items():
                for metric in metrics:
                    if (name, check, step, metric) not in seen:
                        problems.append(f"tampered: per-image scores {name}/{check}/{step}/{metric} have no record "
                                        "(a deleted record would change the verdict)")
    return problems


def source_problems(doc: Dict[str, Any]) -> List[str]:
    """The method's source, found without importing it, must have the hash the file states."""
    import hashlib

    from .errors import SanityCheckError
    from .provenance import resolve_source

    method = doc["method"]
    try:
        _, source = resolve_source(method["source"], doc.get("input_kind", "image"))
    except SanityCheckError as err:
        return [f"source: {err}"]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != method["source_sha256"]:
        return [f"stale: the source of {method['name']} ({source}) has changed since this result was written "
                f"(sha256 {digest[:12]}… vs {method['source_sha256'][:12]}…); re-submit it"]
    return []


def weights_sha256(doc: Dict[str, Any]) -> Optional[str]:
    """The audited model's weights hash a document records (``model.weights_sha256``, or in ``model.info``)."""
    model = doc.get("model") or {}
    value = model.get("weights_sha256") or (model.get("info") or {}).get("weights_sha256")
    return value if isinstance(value, str) and value else None


def weights_problems(doc: Dict[str, Any], fresh_sha256: Optional[str] = None) -> List[str]:
    """The file must name the weights it was computed with; with a re-run, they must be this installation's."""
    recorded = weights_sha256(doc)
    if recorded is None:
        return ["weights: the file does not record model.weights_sha256 (written before weights were recorded); "
                "re-run it on the reference weights"]
    if fresh_sha256 is not None and fresh_sha256 != recorded:
        return [f"weights: computed with other weights: file {recorded[:12]}…, this installation's model "
                f"{fresh_sha256[:12]}…; re-run it on the reference weights"]
    return []


def static_problems(doc: Any, *, submission: bool = False, provenance: bool = False) -> List[str]:
    """Every reason to reject ``doc`` that can be found without running code; empty when valid.

    ``provenance`` (validate and the board) also checks the method's source hash against the installed source
    and that the file records its model weights; ``submit`` and ``publish`` check their own fresh output
    without it."""
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
    problems += size_problems(doc)
    if problems:
        return problems
    problems += suite_problems(doc)
    if problems:
        return problems
    from .suites import load_suite

    suite = load_suite(doc["suite"])
    problems += rule_problems(doc, suite)
    problems += aggregate_problems(doc)
    if not problems:  # verdicts are recomputed only from records that are the bootstrap of the scores
        problems += verdict_problems(doc, suite)
    if provenance and "method" in doc and not problems:
        problems += source_problems(doc)
        problems += weights_problems(doc)
    return problems


def load_document(path: Union[str, Path], *, max_bytes: int = MAX_DOCUMENT_BYTES
                  ) -> Tuple[Optional[Dict[str, Any]], List[str]]:
    """Read a result file; return (document or None, problems). The size is checked before anything is read,
    and only regular files are opened (a FIFO or device would block or never end)."""
    import json
    import os
    import stat

    try:
        st = os.stat(path)
    except OSError as err:
        return None, [f"malformed: cannot read {path}: {err}"]
    if not stat.S_ISREG(st.st_mode):
        return None, [f"malformed: {path} is not a regular file"]
    if st.st_size > max_bytes:
        return None, [f"too large: {path} is {st.st_size / 2**20:.1f} MiB, more than the limit of "
                      f"{max_bytes / 2**20:g} MiB for a result document; a real one is under 1 MiB "
                      "(raise the limit with --max-mb only for a file you trust)"]
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
        if len(raw) > max_bytes:
            return None, [f"too large: {path} grew past {max_bytes / 2**20:g} MiB while it was read"]
        doc = json.loads(raw.decode("utf-8"),
                         parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not JSON")))
    except (OSError, ValueError, RecursionError) as err:
        return None, [f"malformed: cannot read {path} as JSON: {type(err).__name__}: {str(err)[:200]}"]
    return doc, []


def load_valid_documents(paths, *, submission: bool = True, provenance: bool = False,
                         max_bytes: int = MAX_DOCUMENT_BYTES) -> Tuple[List[Dict[str, Any]], Dict[str, List[str]]]:
    """The valid documents among ``paths`` and, per rejected path, its problems (for the leaderboard)."""
    valid, rejected = [], {}
    for path in paths:
        doc, problems = load_document(path, max_bytes=max_bytes)
        if doc is not None:
            problems = static_problems(doc, submission=submission, provenance=provenance)
        if problems:
            rejected[str(path)] = problems
        else:
            valid.append(doc)
    return valid, rejected
