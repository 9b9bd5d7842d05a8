"""Suites: versioned YAML data naming registered parts and their parameters — never code.

A suite is found by path, or by name in (in order) ``$SANITYCHECK_SUITES``, ``./suites``
and the built-in suites shipped inside this package (``sanitycheck/suites/*.yaml``, package data, so a
``pip install`` has them; the repository's ``suites/`` links to that folder). Its structure is validated against
``SUITE_SCHEMA`` (JSON Schema) and every named part against its registry, so a typo
fails before any model is trained, with the offending path in the message.

Verdicts: each check's ``verdict`` names ``metric``, ``threshold``, ``rule`` (``all_steps`` |
``final_step``), ``direction`` (``below`` | ``above``) and optionally ``min_n``, the fewest defined
samples a verdict is decided on (below it: ``insufficient_data``). A top-level ``min_n`` sets it for
every check of the suite; the default is :data:`sanitycheck.results.DEFAULT_MIN_N` (10).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .errors import ConfigError, UnknownNameError
from .registry import CHECKS, DATASETS, EXPLAINERS, METRICS, MODELS
from .results import DEFAULT_MIN_N, VERDICT_DIRECTIONS, VERDICT_RULES, VerdictRule

DEFAULT_SUITE = "adebayo2018"
SHIPPED_SUITES = Path(__file__).resolve().parent / "suites"  # package data: the built-in suites

_PART = {"oneOf": [{"type": "string"}, {"type": "object", "minProperties": 1, "maxProperties": 1,
                                         "additionalProperties": {"type": ["object", "null"]}}]}
SUITE_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "required": ["name", "version", "description", "dataset", "model", "explainers", "metrics", "checks"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9_]+$"},
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "description": {"type": "string"},
        "reference": {"type": "string"},
        "seed": {"type": "integer", "minimum": 0},
        "batch_size": {"type": "integer", "minimum": 1},
        "figure_images": {"type": "integer", "minimum": 1, "maximum": 16},
        "min_n": {"type": "integer", "minimum": 2},
        "target": {"enum": ["predicted", "label"]},
        "input_kind": {"enum": ["image", "text", "image_text", "activations"]},
        "dataset": {"type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "split": {"type": "string"},
                                   "n": {"type": "integer", "minimum": 2}, "params": {"type": "object"}}},
        "model": {"type": "object", "required": ["name"], "additionalProperties": False,
                  "properties": {"name": {"type": "string"}, "params": {"type": "object"}}},
        "explainers": {"type": "array", "minItems": 1, "items": _PART},
        "metrics": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "checks": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "params": {"type": "object"},
                "verdict": {"type": "object", "required": ["metric", "threshold"], "additionalProperties": False,
                            "properties": {"metric": {"type": "string"}, "threshold": {"type": "number"},
                                           "rule": {"enum": list(VERDICT_RULES)},
                                           "direction": {"enum": list(VERDICT_DIRECTIONS)},
                                           "min_n": {"type": "integer", "minimum": 2}}}}}},
    },
}


@dataclass(frozen=True)
class CheckSpec:
    name: str
    params: Dict[str, Any]
    verdict: Optional[VerdictRule]


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    description: str
    reference: str
    dataset: Dict[str, Any]
    model: Dict[str, Any]
    explainers: List[Tuple[str, Dict[str, Any]]]
    metrics: List[str]
    checks: List[CheckSpec]
    seed: int = 0
    batch_size: int = 64
    figure_images: int = 4
    target: str = "predicted"
    input_kind: str = "image"
    path: Optional[str] = None
    sha256: str = ""

    @property
    def explainer_names(self) -> List[str]:
        return [name for name, _ in self.explainers]


def suite_dirs() -> List[Path]:
    dirs = [Path(p) for p in os.environ.get("SANITYCHECK_SUITES", "").split(os.pathsep) if p]
    return dirs + [Path.cwd() / "suites", SHIPPED_SUITES]


def available_suites() -> Dict[str, Path]:
    found: Dict[str, Path] = {}
    for d in suite_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.yaml")):
                found.setdefault(f.stem, f)
    return found


def find_suite(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ConfigError(f"suite file {p} does not exist")
        return p
    suites = available_suites()
    if name_or_path in suites:
        return suites[name_or_path]
    import difflib

    close = difflib.get_close_matches(name_or_path, list(suites), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(f"unknown suite {name_or_path!r}.{hint} Known: {', '.join(suites) or '(none)'} "
                           f"(searched {', '.join(str(d) for d in suite_dirs())}).")


def _is_family(name: str) -> bool:
    """A check that produces scores of its own (an evaluation or an audit: its declared work unit is not a model
    state) rather than a model intervention compared with the trained model's maps."""
    return getattr(CHECKS.get(name), "unit", "state") != "state"


def _parts(items: List[Any]) -> List[Tuple[str, Dict[str, Any]]]:
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((item, {}))
        else:
            (name, params), = item.items()
            out.append((name, dict(params or {})))
    return out


_SUITE_VALIDATOR: List[Any] = []


def _suite_validate(data: Any) -> None:
    """``jsonschema.validate(data, SUITE_SCHEMA)`` with the schema checked and its validator built once per
    process, not once per suite (``validate`` re-checks the schema on every call: a fixed cost of every run,
    issue 12). Raises the same error ``validate`` raises (the best match)."""
    import jsonschema

    if not _SUITE_VALIDATOR:
        cls = jsonschema.validators.validator_for(SUITE_SCHEMA)
        cls.check_schema(SUITE_SCHEMA)
        _SUITE_VALIDATOR.append(cls(SUITE_SCHEMA))
    error = jsonschema.exceptions.best_match(_SUITE_VALIDATOR[0].iter_errors(data))
    if error is not None:
        raise error


def parse_suite(data: Any, *, path: Optional[str] = None, sha256: str = "") -> Suite:
    import jsonschema

    where = path or "<suite>"
    try:
        _suite_validate(data)
    except jsonschema.ValidationError as err:
        loc = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"malformed suite {where}: at {loc}: {err.message}") from None
    explainers = _parts(data["explainers"])
    kind = data.get("input_kind", "image")
    for registry, names in ((EXPLAINERS.view(kind), [n for n, _ in explainers]), (METRICS, data["metrics"]),
                            (CHECKS, [c["name"] for c in data["checks"]]), (DATASETS, [data["dataset"]["name"]]),
                            (MODELS, [data["model"]["name"]])):
        for name in names:
            if ":" not in name and name not in registry:
                try:
                    registry.get(name)
                except UnknownNameError as err:
                    raise ConfigError(f"suite {where}: {err}") from None
    for name in data["metrics"]:
        supported = METRICS.modalities(name) if ":" not in name else None
        if supported is not None and kind not in supported:
            metric_kind = supported[0]
            raise ConfigError(f"suite {where}: metric {name!r} compares {metric_kind} maps, but the suite's input_kind "
                              f"is {kind!r}" + ("; text suites take token metrics (token_kendall_abs, "
                                                "token_kendall, token_topk_overlap)" if kind == "text" else ""))
    checks = []
    for c in data["checks"]:
        v = c.get("verdict")
        if v is None:
            if not _is_family(c["name"]) and getattr(CHECKS.get(c["name"]), "needs_verdict", True):
                raise ConfigError(f"suite {where}: at checks: randomization check {c['name']!r} needs a 'verdict' "
                                  "(metric, threshold)")
            checks.append(CheckSpec(c["name"], dict(c.get("params") or {}), None))
            continue
        if v["metric"] not in data["metrics"] and not _is_family(c["name"]):
            raise ConfigError(f"suite {where}: check {c['name']!r} decides on metric {v['metric']!r}, "
                              f"which the suite does not compute (metrics: {data['metrics']})")
        checks.append(CheckSpec(c["name"], dict(c.get("params") or {}),
                                VerdictRule(v["metric"], float(v["threshold"]), v.get("rule", "all_steps"),
                                            v.get("direction", "below"),
                                            int(v.get("min_n", data.get("min_n", DEFAULT_MIN_N))))))
    if not sha256:  # a suite given as data, not a file: hash its canonical JSON
        import json

        sha256 = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return Suite(name=data["name"], version=data["version"], description=data["description"].strip(),
                 reference=data.get("reference", ""), dataset=data["dataset"], model=data["model"],
                 explainers=explainers, metrics=list(data["metrics"]), checks=checks,
                 seed=data.get("seed", 0), batch_size=data.get("batch_size", 64),
                 figure_images=data.get("figure_images", 4), target=data.get("target", "predicted"),
                 input_kind=data.get("input_kind", "image"),
                 path=path, sha256=sha256)


def load_suite(name_or_path: str = DEFAULT_SUITE) -> Suite:
    path = find_suite(name_or_path)
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"suite {path} is not valid YAML: {err}") from None
    return parse_suite(data, path=str(path), sha256=hashlib.sha256(raw).hexdigest())
