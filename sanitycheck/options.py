"""Options defined once and shared by the CLI and the pytest plugin (as in pytest-benchmark), and the verdict gate."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional


def _csv(value: str) -> List[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return items


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            v = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {what}, got {value!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {v}")
        return v

    return parse


def _key_value(value: str) -> tuple:
    """``KEY=VALUE`` with VALUE read as YAML (``epochs=3`` is an int, ``encoder=average`` a string)."""
    import yaml

    key, sep, raw = value.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. encoder=average), got {value!r}")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"cannot read the value of {value!r}: {err}") from None


_positive_int = _int_at_least(1, "count")


def _batch_size(text: str) -> Any:
    """A positive batch size, or ``auto`` (chosen from the model and the free memory at run time)."""
    if isinstance(text, str) and text.strip().lower() == "auto":
        return "auto"
    return _positive_int(text)
_seed = _int_at_least(0, "seed")


@dataclass(frozen=True)
class Option:
    name: str                       # long flag without dashes, e.g. "explainers"
    help: str
    type: Optional[Callable[[str], Any]] = None
    default: Any = None
    action: Optional[str] = None
    metavar: Optional[str] = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def kwargs(self) -> Dict[str, Any]:
        kw: Dict[str, Any] = {"help": self.help, "default": self.default, "dest": self.dest}
        if self.action:
            kw["action"] = self.action
            if self.action == "append":
                kw["type"] = self.type
                if self.metavar:
                    kw["metavar"] = self.metavar
        else:
            kw["type"] = self.type
            if self.metavar:
                kw["metavar"] = self.metavar
        return kw


RUN_OPTIONS: List[Option] = [
    Option("explainers", "comma-separated explainers to run (default: the suite's)", _csv, metavar="A,B"),
    Option("checks", "comma-separated checks of the suite to run (default: all)", _csv, metavar="A,B"),
    Option("sae", "activations suites (sae_features): also audit a sparse autoencoder trained elsewhere, a directory "
           "in SAELens' format (cfg.json + sae_weights.safetensors); its row on the board is sae_file", str,
           metavar="PATH"),
    Option("sae-site", "with --sae: the activation site it reads (e.g. minilm.layer2; default: the run's one site, "
           "or the site named by its cfg.json hook_name)", str, metavar="SITE"),
    Option("model", "model to audit instead of the suite's (e.g. resnet50 with your weights)", str, metavar="NAME"),
    Option("model-param", "a model parameter overriding the suite's, KEY=VALUE (repeatable; e.g. encoder=average)",
           _key_value, action="append", metavar="KEY=VALUE"),
    Option("dataset", "dataset instead of the suite's (e.g. image_folder)", str, metavar="NAME"),
    Option("data-root", "folder of the dataset (root= of its loader)", str, metavar="DIR"),
    Option("n", "number of images (default: the suite's)", _positive_int, metavar="N"),
    Option("seed", "run seed (default: the suite's)", _seed, metavar="S"),
    Option("batch-size", "inputs per explainer call, or 'auto': the largest batch whose explainer calls fit a "
           "quarter of the free memory, from a probe of the model (default: the suite's, which the published "
           "numbers use)", _batch_size, metavar="B|auto"),
    Option("device", "torch device (default: cpu)", str, "cpu", metavar="DEV"),
    Option("shard-size", "inputs per work unit (default: all inputs in one); rounded up to whole batches, so the "
           "numbers do not change", _positive_int, metavar="N"),
    Option("executor", "where the work units run: local, or ray (pip install 'sanitycheck[ray]') (default: local)",
           str, "local", metavar="NAME"),
    Option("address", "--executor ray: the Ray cluster to join, host:port or ray://host:port (default: a local "
           "cluster)", str, metavar="ADDR"),
    Option("workers", "--executor ray: number of workers (default: the local cluster's CPUs)", _positive_int,
           metavar="N"),
    Option("worker-threads", "--executor ray: torch threads per worker (default: 1)", _positive_int, metavar="T"),
    Option("cache-dir", "model cache (default: $SANITYCHECK_CACHE or ~/.cache/sanitycheck)", str, metavar="DIR"),
    Option("no-progress", "hide progress bars", action="store_true", default=False),
    Option("no-figures", "skip the PNG figures", action="store_true", default=False),
]


def add_run_options(parser: argparse.ArgumentParser) -> None:
    for opt in RUN_OPTIONS:
        parser.add_argument(f"--{opt.name}", **opt.kwargs())


def run_kwargs(ns: Any) -> Dict[str, Any]:
    """Keyword arguments of :class:`sanitycheck.engine.AuditRun` from parsed options."""
    return {"explainers": ns.explainers, "checks": ns.checks, "n": ns.n, "seed": ns.seed,
            "model_name": ns.model, "model_params": dict(getattr(ns, "model_param", None) or []),
            "dataset_name": ns.dataset, "data_root": ns.data_root,
            "batch_size": ns.batch_size, "device": ns.device, "cache_dir": ns.cache_dir,
            "progress": not ns.no_progress, "figures": not ns.no_figures,
            "shard_size": getattr(ns, "shard_size", None), "executor": getattr(ns, "executor", None) or "local",
            "executor_options": {"address": getattr(ns, "address", None), "workers": getattr(ns, "workers", None),
                                 "threads": getattr(ns, "worker_threads", None)},
            "explainer_params": _sae_params(ns)}


def _sae_params(ns: Any) -> Optional[Dict[str, Dict[str, Any]]]:
    """``--sae PATH [--sae-site S]``: the ``sae_file`` explainer with its parameters (None without --sae)."""
    path, site = getattr(ns, "sae", None), getattr(ns, "sae_site", None)
    if not path:
        if site:
            from .errors import ConfigError

            raise ConfigError("--sae-site names the site of an SAE given with --sae PATH; give --sae too")
        return None
    return {"sae_file": {"path": path, **({"site": site} if site else {})}}


# ---------------------------------------------------------------------------------------------- the gate
# Which verdicts that did not pass (fail, undefined, insufficient data; inconclusive per --inconclusive) fail
# the command (CLI: exit 1) or the test (pytest plugin), like pytest-benchmark's
# ``--benchmark-compare-fail``. An expression is a comma-separated list of ``check`` or ``explainer:check``
# glob patterns (fnmatch), ``any`` / ``*`` for every verdict, ``none`` for none (the default: only explicit
# assertions fail). Stored as the normalized string; :func:`parse_fail_on` turns it into a predicate.

FAIL_ON_ANY = ("any", "*")
FAIL_ON_NONE = "none"


def _fail_on_patterns(expr: str) -> List[str]:
    if not isinstance(expr, str):
        raise argparse.ArgumentTypeError(f"expected a fail-on expression string, got {expr!r}")
    items = [p.strip() for p in expr.split(",") if p.strip()]
    if not items:
        raise argparse.ArgumentTypeError(
            "empty fail-on expression; use 'none', 'any', or comma-separated 'check' / 'explainer:check' patterns")
    for item in items:
        if item.count(":") > 1 or item.startswith(":") or item.endswith(":"):
            raise argparse.ArgumentTypeError(
                f"bad fail-on pattern {item!r}: expected 'check' or 'explainer:check' (globs allowed), "
                "'any' or 'none'")
    if FAIL_ON_NONE in [i.lower() for i in items] and len(items) > 1:
        raise argparse.ArgumentTypeError(f"'none' cannot be combined with other fail-on patterns, got {expr!r}")
    return items


def fail_on_expr(value: str) -> str:
    """argparse/pytest ``type=``: validate a fail-on expression and return it normalized (no blanks)."""
    return ",".join(_fail_on_patterns(value))


def parse_fail_on(expr: str) -> Callable[[Dict[str, Any]], bool]:
    """``predicate(verdict_dict) -> bool``: whether the gate reads that verdict (pass or fail)."""
    import fnmatch

    items = _fail_on_patterns(expr)
    lowered = [i.lower() for i in items]
    if lowered == [FAIL_ON_NONE]:
        return lambda verdict: False
    if any(i in FAIL_ON_ANY for i in lowered):
        return lambda verdict: True
    pats = [tuple(i.split(":", 1)) if ":" in i else ("*", i) for i in items]

    def predicate(verdict: Dict[str, Any]) -> bool:
        return any(fnmatch.fnmatchcase(str(verdict.get("explainer")), e)
                   and fnmatch.fnmatchcase(str(verdict.get("check")), c) for e, c in pats)

    return predicate


#: what the gate makes of an inconclusive verdict (its 95 % CI straddles the threshold): ``fail`` (default:
#: not passed), ``pass`` (counted as passed) or ``ignore`` (neither: left out of the gate and of assert_passes).
#: Undefined and insufficient-data verdicts are never passed, whatever this says.
INCONCLUSIVE_POLICIES = ("fail", "pass", "ignore")
DEFAULT_INCONCLUSIVE = "fail"
_STATUS_WORDS = {"pass": "PASSED", "fail": "FAILED", "inconclusive": "INCONCLUSIVE", "undefined": "UNDEFINED",
                 "insufficient_data": "INSUFFICIENT DATA", "noise": "NOISE"}


def inconclusive_policy(value: str) -> str:
    """argparse/pytest ``type=``: one of :data:`INCONCLUSIVE_POLICIES`."""
    v = str(value).strip().lower()
    if v not in INCONCLUSIVE_POLICIES:
        raise argparse.ArgumentTypeError(f"--inconclusive must be one of {', '.join(INCONCLUSIVE_POLICIES)}, "
                                         f"got {value!r}")
    return v


def verdict_status(verdict: Dict[str, Any]) -> str:
    """The verdict's status; a document written before statuses existed has only ``passed``."""
    status = verdict.get("status")
    if status in _STATUS_WORDS:
        return status
    return "pass" if verdict.get("passed") else "fail"


def gate_outcome(verdict: Dict[str, Any], inconclusive: str = DEFAULT_INCONCLUSIVE) -> str:
    """``"pass"``, ``"fail"`` or ``"ignore"``: what a gate or ``assert_passes`` makes of ``verdict``.

    Only a ``pass`` passes; ``inconclusive`` follows ``inconclusive`` (:data:`INCONCLUSIVE_POLICIES`);
    ``fail``, ``undefined``, ``insufficient_data`` and ``noise`` (maps dominated by sampling noise) fail.
    """
    status = verdict_status(verdict)
    if status == "pass":
        return "pass"
    if status == "inconclusive":
        return inconclusive_policy(inconclusive)
    return "fail"


def failing_verdicts(results: Dict[str, Any], expr: str,
                     exempt: Optional[Callable[[Dict[str, Any]], bool]] = None,
                     inconclusive: str = DEFAULT_INCONCLUSIVE) -> List[Dict[str, Any]]:
    """The verdicts of ``results`` that did not pass and that ``expr`` gates on (less those ``exempt`` accepts).

    Not passing: ``fail``, ``undefined``, ``insufficient_data``, and ``inconclusive`` unless ``inconclusive``
    is ``pass`` or ``ignore``.
    """
    wanted = parse_fail_on(expr)
    return [v for v in results.get("verdicts", [])
            if gate_outcome(v, inconclusive) == "fail" and wanted(v) and not (exempt and exempt(v))]


def _fmt3(v: Optional[float]) -> str:
    return "undefined" if v is None else f"{v:.3f}"


def format_verdict(verdict: Dict[str, Any], results: Dict[str, Any]) -> str:
    """The one message of a verdict used by the CLI gate and every assertion of the pytest plugin::

        sanitycheck: <explainer> <STATUS> <check> (suite <suite> v<version>): <metric> at <step> =
        <mean> [95% CI <lo>, <hi>], n=<n>; threshold: upper CI bound < <thr> (<rule>)
          reason: <the verdict's reason>

    (one line before ``reason``; ``<STATUS>`` is PASSED, FAILED, INCONCLUSIVE, UNDEFINED,
    INSUFFICIENT DATA or NOISE; values to 3 decimals, ``undefined`` where no score was defined, threshold to
    2 decimals, ``lower CI bound > <thr>`` for rules with direction ``above``; ``<step>`` is the
    deciding step of the verdict).
    """
    check, step = verdict["check"], verdict["step"]
    if verdict_status(verdict) == "noise" and isinstance(step, str) and "/" in step:  # decided by the noise ceiling
        check, step = step.split("/", 1)
    rec = next((r for r in results.get("records", [])
                if r["explainer"] == verdict["explainer"] and r["check"] == check
                and r["metric"] == verdict["metric"] and r["step"] == step), None)
    mean, lo, hi, n = ((rec["mean"], rec["ci_low"], rec["ci_high"], rec["n"]) if rec else (None, None, None, 0))
    status = _STATUS_WORDS[verdict_status(verdict)]
    bound = "lower CI bound >" if verdict.get("direction") == "above" else "upper CI bound <"
    return (f"sanitycheck: {verdict['explainer']} {status} {verdict['check']} "
            f"(suite {results.get('suite')} v{results.get('suite_version')}): "
            f"{verdict['metric']} at {verdict['step'] if verdict['step'] is not None else '(no step)'} = "
            f"{_fmt3(mean)} [95% CI {_fmt3(lo)}, {_fmt3(hi)}], n={n}; "
            f"threshold: {bound} {float(verdict['threshold']):.2f} ({verdict['rule']})\n"
            f"  reason: {verdict['reason']}")


GATE_OPTIONS: List[Option] = [
    Option("fail-on", "failing verdicts that fail the run: comma-separated 'check' or 'explainer:check' glob "
                      "patterns, 'any' (or '*') for all, 'none' (default) for none",
           fail_on_expr, FAIL_ON_NONE, metavar="EXPR"),
    Option("strict", "fail when any verdict fails (the same as fail-on any)", action="store_true", default=False),
    Option("inconclusive", "what the gate makes of an inconclusive verdict (95%% CI straddling the threshold): "
                           "fail (default: not passed), pass, or ignore; undefined and insufficient-data "
                           "verdicts never pass", inconclusive_policy, DEFAULT_INCONCLUSIVE,
           metavar="fail|pass|ignore"),
]

#: options of the pytest plugin only (``--sanity-<name>``); the CLI has ``--out`` and positional suites
PLUGIN_OPTIONS: List[Option] = [
    Option("suite", "suite (name or YAML path) of the `sanity` fixture (default: adebayo2018)", str,
           "adebayo2018", metavar="NAME"),
    Option("save", "save each audit's results.json and figures under DIR/<test id>/<explainer>/ "
                   "(default: a temporary directory, no figures)", str, metavar="DIR"),
]


def add_gate_options(parser: Any, prefix: str = "", dest_prefix: str = "") -> None:
    """Add ``--fail-on``, ``--strict`` and ``--inconclusive`` (CLI ``run``/``submit``) — or, with a prefix, the
    plugin's flags.

    ``parser`` is an ``argparse`` parser or a pytest option group (both have ``add_argument`` /
    ``addoption`` with argparse keywords).
    """
    add = getattr(parser, "add_argument", None) or parser.addoption
    for opt in GATE_OPTIONS:
        kw = opt.kwargs()
        kw["dest"] = dest_prefix + opt.dest
        add(f"--{prefix}{opt.name}", **kw)


def gate_expr(ns: Any, dest_prefix: str = "") -> str:
    """The fail-on expression from parsed options: ``any`` when ``--strict``, otherwise ``--fail-on``."""
    if getattr(ns, dest_prefix + "strict", False):
        return "any"
    return getattr(ns, dest_prefix + "fail_on", None) or FAIL_ON_NONE


def gate_inconclusive(ns: Any, dest_prefix: str = "") -> str:
    """The inconclusive policy from parsed options (default ``fail``)."""
    return inconclusive_policy(getattr(ns, dest_prefix + "inconclusive", None) or DEFAULT_INCONCLUSIVE)


def gate_messages(results: Dict[str, Any], ns: Any) -> List[str]:
    """Messages of the verdicts that fail the gate (empty: the run passes). The CLI exits 1 when non-empty."""
    return [format_verdict(v, results)
            for v in failing_verdicts(results, gate_expr(ns), inconclusive=gate_inconclusive(ns))]
