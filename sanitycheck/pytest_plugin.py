"""pytest plugin: gate a method's claim on the sanity checks, in the method author's own test suite.

Registered through the ``pytest11`` entry point, so installing sanitycheck makes it available::

    def test_my_method_depends_on_the_model(sanity):
        report = sanity.run(my_method.explain, model, (x, y), checks=["cascading_randomization"])
        report.assert_passes()

    def test_edge_baseline_is_caught(sanity):
        sanity.check("cascading_randomization", my_method.edge_baseline, model, (x, y)).assert_fails()

Options (defined once in :mod:`sanitycheck.options`, shared with the CLI): ``--sanity-suite NAME``
(the fixture's default suite), ``--sanity-save DIR`` (keep every audit's ``results.json`` and figures
under ``DIR/<test id>/<explainer>/``), ``--sanity-fail-on EXPR`` / ``--sanity-strict`` (failing
verdicts that fail the test by themselves, like pytest-benchmark's regression gate; default ``none``),
``--sanity-inconclusive fail|pass|ignore`` (what an inconclusive verdict counts as; default ``fail``).

Verdict statuses: ``pass``, ``fail``, ``inconclusive`` (the 95 % CI straddles the threshold),
``undefined`` (the trained model's maps carry no ranking), ``insufficient_data`` (fewer than the
rule's ``min_n`` samples) and ``noise`` (suites with ``noise_ceiling``: the maps are dominated by sampling noise). ``assert_passes`` accepts only ``pass`` (and ``inconclusive`` under
``--sanity-inconclusive pass``; ``ignore`` leaves inconclusive verdicts out). ``assert_fails`` accepts
only a demonstrated ``fail``: an inconclusive, undefined or insufficient-data control has not been shown
to fail, whatever ``--sanity-inconclusive`` says.
Tests that use the fixture carry the ``sanity`` marker (``pytest -m sanity``).

Every assertion and the gate use one message format, :func:`sanitycheck.options.format_verdict`::

    sanitycheck: <explainer> <STATUS> <check> (suite <suite> v<version>): <metric> at <step> = <mean> [95% CI <lo>, <hi>], n=<n>; threshold: upper CI bound < <thr> (<rule>)
      reason: <the verdict's reason>
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import pytest

from .options import (DEFAULT_INCONCLUSIVE, FAIL_ON_NONE, PLUGIN_OPTIONS, add_gate_options, failing_verdicts,
                      format_verdict, gate_expr, gate_inconclusive, gate_outcome, inconclusive_policy,
                      verdict_status)

_DEST = "sanity_"
MARKER = "sanity"


# ------------------------------------------------------------------------------------------------ report
class SanityReport:
    """The results of one audit (``results`` is the ``results.json`` dictionary) with assertion helpers.

    ``inconclusive``: what :meth:`passed`, :meth:`assert_passes` and the gate make of an inconclusive
    verdict (``fail``, ``pass`` or ``ignore``; the fixture passes ``--sanity-inconclusive``).
    """

    def __init__(self, results: Dict[str, Any], out_dir: Union[str, Path], inconclusive: str = DEFAULT_INCONCLUSIVE):
        self.results = results
        self.out_dir = Path(out_dir)
        self.inconclusive = inconclusive_policy(inconclusive)
        self._expected_failures: Set[Tuple[str, str]] = set()

    # ------------------------------------------------------------ reading
    @property
    def path(self) -> Path:
        """``results.json`` of this audit."""
        return self.out_dir / "results.json"

    @property
    def verdicts(self) -> List[Dict[str, Any]]:
        return list(self.results["verdicts"])

    @property
    def explainers(self) -> List[str]:
        return list(dict.fromkeys(v["explainer"] for v in self.results["verdicts"]))

    @property
    def checks(self) -> List[str]:
        return list(dict.fromkeys(v["check"] for v in self.results["verdicts"]))

    def select(self, check: Optional[str] = None, explainer: Optional[str] = None) -> List[Dict[str, Any]]:
        """The verdicts of ``check`` and ``explainer`` (``None``: all); an unknown name is an error."""
        from .errors import ConfigError

        for what, value, known in (("check", check, self.checks), ("explainer", explainer, self.explainers)):
            if value is not None and value not in known:
                raise ConfigError(f"this audit has no {what} {value!r} (it has {known})")
        return [v for v in self.results["verdicts"]
                if (check is None or v["check"] == check) and (explainer is None or v["explainer"] == explainer)]

    def verdict(self, check: Optional[str] = None, explainer: Optional[str] = None) -> Dict[str, Any]:
        """Exactly one verdict (name ``check`` / ``explainer`` when the audit has several)."""
        from .errors import ConfigError

        found = self.select(check, explainer)
        if len(found) != 1:
            raise ConfigError(f"{len(found)} verdicts match check={check!r}, explainer={explainer!r}; "
                              f"name the check and explainer (checks {self.checks}, explainers {self.explainers})")
        return found[0]

    def passed(self, check: Optional[str] = None, explainer: Optional[str] = None) -> bool:
        """Whether every selected verdict passed (inconclusive ones as ``inconclusive`` says)."""
        return all(gate_outcome(v, self.inconclusive) != "fail" for v in self.select(check, explainer))

    def status(self, check: Optional[str] = None, explainer: Optional[str] = None) -> str:
        """The status (pass, fail, inconclusive, undefined, insufficient_data, noise) of exactly one verdict."""
        return verdict_status(self.verdict(check, explainer))

    def record(self, check: str, step: Union[str, int], metric: Optional[str] = None,
               explainer: Optional[str] = None) -> Dict[str, Any]:
        """The record ``{mean, ci_low, ci_high, n, ...}`` of ``check`` at ``step`` (a step name such as
        ``"fc2"``, ``"original"`` or ``"random_labels"``, or its index, 0 = original); ``metric`` defaults
        to the check's verdict metric, ``explainer`` to the only one."""
        from .errors import ConfigError

        if explainer is None:
            if len(self.explainers) != 1:
                raise ConfigError(f"name the explainer: this audit has {self.explainers}")
            explainer = self.explainers[0]
        if metric is None:
            metric = self.results["checks"][check]["verdict_rule"]["metric"]
        key = "step_index" if isinstance(step, int) else "step"
        for r in self.results["records"]:
            if r["explainer"] == explainer and r["check"] == check and r["metric"] == metric and r[key] == step:
                return r
        steps = ["original", *self.results.get("checks", {}).get(check, {}).get("steps", [])]
        raise ConfigError(f"no {metric} record of {explainer} for {check} at step {step!r} (steps: {steps})")

    def message(self, check: Optional[str] = None, explainer: Optional[str] = None) -> str:
        """The formatted verdicts (the text an assertion would show)."""
        return "\n".join(format_verdict(v, self.results) for v in self.select(check, explainer))

    # ------------------------------------------------------------ asserting
    def assert_passes(self, check: Optional[str] = None, explainer: Optional[str] = None) -> "SanityReport":
        """Raise ``AssertionError`` (one formatted verdict per line pair) unless every selected verdict passed:
        a fail, undefined or insufficient-data verdict never does; an inconclusive one as ``inconclusive`` says."""
        __tracebackhide__ = True
        bad = [v for v in self.select(check, explainer) if gate_outcome(v, self.inconclusive) == "fail"]
        if bad:
            raise AssertionError("\n".join(format_verdict(v, self.results) for v in bad))
        return self

    def assert_fails(self, check: Optional[str] = None, explainer: Optional[str] = None) -> "SanityReport":
        """For controls: raise ``AssertionError`` unless every selected verdict is a demonstrated ``fail``.

        An inconclusive, undefined or insufficient-data verdict is not a demonstrated failure (the check could
        not tell), so it does not satisfy ``assert_fails`` whatever ``--sanity-inconclusive`` says. The selected
        verdicts are expected failures from now on, so ``--sanity-fail-on`` does not fail the test for them."""
        __tracebackhide__ = True
        selected = self.select(check, explainer)
        self._expected_failures.update((v["explainer"], v["check"]) for v in selected)
        good = [v for v in selected if verdict_status(v) != "fail"]
        if good:
            raise AssertionError("\n".join(
                format_verdict(v, self.results) + "\n  expected: FAILED (assert_fails: this explainer is a control "
                "that ignores the model)" for v in good))
        return self

    def gate_failures(self, expr: str) -> List[str]:
        """Messages of the failing verdicts that ``expr`` gates on, less those asserted to fail."""
        exempt = lambda v: (v["explainer"], v["check"]) in self._expected_failures  # noqa: E731
        return [format_verdict(v, self.results)
                for v in failing_verdicts(self.results, expr, exempt=exempt, inconclusive=self.inconclusive)]

    def __repr__(self) -> str:
        cells = ", ".join(f"{v['explainer']}/{v['check']}: {verdict_status(v).upper()}"
                          for v in self.results["verdicts"])
        return f"SanityReport({self.results.get('suite')} v{self.results.get('suite_version')}: {cells})"


# ------------------------------------------------------------------------------------------------ fixture
def _safe_name(text: str, limit: int = 120) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "test"
    if len(safe) > limit:
        safe = safe[:limit - 9] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return safe


def _resolve_suite(suite: Any):
    from .suites import Suite, load_suite, parse_suite

    if isinstance(suite, Suite):
        return suite
    if isinstance(suite, dict):
        return parse_suite(suite)
    return load_suite(str(suite))


def _as_dataset(data: Any, model: Any):
    """An ``ImageDataset`` from an ``ImageDataset``, ``(x, y)`` tensors, or ``x`` alone (labels: predictions); a
    ``TextDataset`` (``sanitycheck.load_dataset`` of a text dataset) as it is."""
    import torch

    from .data import ImageDataset
    from .errors import DataError

    if isinstance(data, ImageDataset) or hasattr(data, "texts"):  # an image or a text dataset, as loaded
        return data
    if isinstance(data, torch.Tensor):
        x = data
        with torch.no_grad():
            y = model(x.to(next((p.device for p in model.parameters()), x.device)).float()).argmax(1).cpu()
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    else:
        raise DataError(f"sanity: data must be an ImageDataset, (x, y) tensors or x, got {type(data).__name__}")
    if x.is_floating_point():
        x = x.to(torch.float32)
    x, y = x.detach().cpu(), y.detach().cpu()
    digest = hashlib.sha256(x.contiguous().numpy().tobytes() + y.long().contiguous().numpy().tobytes()).hexdigest()
    n_classes = int(y.max()) + 1 if y.numel() else 0
    return ImageDataset("tensors", x, y.long(), [str(i) for i in range(n_classes)], "pytest (tensors)", digest)


def _explainer_objects(explainer: Any, name: Optional[str], input_kind: str = "image") -> Dict[str, Any]:
    """``{name: explainer}``: names resolved among the explainers of the suite's input kind (token explainers
    for text suites; any callable ``(model, TextBatch, classes) -> (B, L)`` is one)."""
    from .explainers import explainer_from, get_explainer

    def build(spec: Any, label: Optional[str]) -> Any:
        if isinstance(spec, str):
            return get_explainer(spec, modality=input_kind)
        return explainer_from(spec, input_kind, name=label)

    if isinstance(explainer, dict):
        return {k: build(v, k) for k, v in explainer.items()}
    obj = build(explainer, name)
    label = name or getattr(obj, "name", None) or (explainer if isinstance(explainer, str) else type(obj).__name__)
    return {label: obj}


class SanityFixture:
    """What the ``sanity`` fixture returns: runs audits of one test and keeps their reports for the gate."""

    def __init__(self, config: pytest.Config, nodeid: str, tmp_path_factory: pytest.TempPathFactory):
        self.config = config
        self.nodeid = nodeid
        self._tmp = tmp_path_factory
        self.reports: List[SanityReport] = []
        self._used_dirs: Set[Path] = set()

    @property
    def suite(self) -> str:
        return self.config.getoption(_DEST + "suite") or "adebayo2018"

    @property
    def save_dir(self) -> Optional[Path]:
        save = self.config.getoption(_DEST + "save")
        return Path(save) if save else None

    def _out_dir(self, label: str) -> Tuple[Path, bool]:
        if self.save_dir is None:
            return self._tmp.mktemp("sanity-" + _safe_name(label, 40), numbered=True), False
        base = self.save_dir / _safe_name(self.nodeid) / _safe_name(label, 80)
        out, k = base, 1
        while out in self._used_dirs:  # the same explainer audited twice in one test
            k += 1
            out = base.with_name(f"{base.name}-{k}")
        self._used_dirs.add(out)
        if out.exists():  # a previous session's audit of this test: start afresh, never resume
            shutil.rmtree(out)
        return out, True

    def run(self, explainer: Any, model: Any, data: Any, *, suite: Any = None,
            checks: Optional[Union[str, Sequence[str]]] = None, n: Optional[int] = None, seed: Optional[int] = None,
            name: Optional[str] = None, random_label_model: Any = None, **kwargs: Any) -> SanityReport:
        """Audit ``explainer`` on ``model`` (eval mode) and ``data`` with ``suite`` (default: ``--sanity-suite``).

        ``explainer``: a callable ``(model, x, target) -> maps``, a captum Attribution class, an
        ``Explainer``, a registered name or import path, or ``{name: explainer}`` for several.
        ``data``: an ``ImageDataset``, ``(x, y)`` tensors, or ``x`` alone; for a text suite, a ``TextDataset``
        (the run class follows the suite's input kind: ``sanitycheck.engine.audit_run_for``). ``n``: images (default: the
        suite's n, at most ``len(data)``). ``checks``: a subset of the suite's checks. ``random_label_model``:
        the model trained on permuted labels, for ``data_randomization`` on a model outside the zoo.
        Other keywords (``batch_size``, ``device``, ``cache_dir``, ``figures``) go to ``AuditRun``.
        """
        from .engine import audit_run_for

        suite_obj = _resolve_suite(suite if suite is not None else self.suite)
        objects = _explainer_objects(explainer, name, suite_obj.input_kind)
        dataset = _as_dataset(data, model)
        if n is None:
            n = min(suite_obj.dataset.get("n") or len(dataset), len(dataset))
        if isinstance(checks, str):
            checks = [checks]
        out_dir, saving = self._out_dir("+".join(objects))
        kwargs.setdefault("progress", False)
        kwargs.setdefault("figures", saving)
        kwargs.setdefault("model_name", getattr(model, "sanitycheck_name", None) or type(model).__name__)
        context = {"random_label_model": random_label_model} if random_label_model is not None else None
        if self.config.getoption(_DEST + "strict"):  # gate mode: verdicts stop when their CS decides them
            from .engine.gate import run_gate

            kwargs.pop("figures", None)
            results = run_gate(suite_obj, out_dir=out_dir, model=model, dataset=dataset, explainer_objects=objects,
                               n=n, seed=seed, checks=checks, context=context, **kwargs)
        else:
            results = audit_run_for(suite_obj, out_dir=out_dir, model=model, dataset=dataset,
                                    explainer_objects=objects, n=n, seed=seed, checks=checks, context=context,
                                    **kwargs).execute()
        report = SanityReport(results, out_dir, inconclusive=gate_inconclusive(self.config.option, _DEST))
        self.reports.append(report)
        return report

    def check(self, check: str, explainer: Any, model: Any, data: Any, **kwargs: Any) -> SanityReport:
        """:meth:`run` with the single check ``check`` of the suite."""
        return self.run(explainer, model, data, checks=[check], **kwargs)

    def gate_failures(self, expr: str) -> List[str]:
        return [m for report in self.reports for m in report.gate_failures(expr)]


_FIXTURE_KEY = pytest.StashKey[SanityFixture]()


@pytest.fixture
def sanity(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SanityFixture:
    """Run sanity-check audits in a test: ``sanity.run(explainer, model, data)``, ``sanity.check(name, ...)``."""
    fixture = SanityFixture(request.config, request.node.nodeid, tmp_path_factory)
    request.node.stash[_FIXTURE_KEY] = fixture
    return fixture


# ------------------------------------------------------------------------------------------------ hooks
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sanitycheck", "saliency sanity checks (sanitycheck)")
    for opt in PLUGIN_OPTIONS:
        kw = opt.kwargs()
        kw["dest"] = _DEST + opt.dest
        group.addoption(f"--sanity-{opt.name}", **kw)
    add_gate_options(group, prefix="sanity-", dest_prefix=_DEST)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: a sanity-check audit test (any test using the `sanity` "
                                       "fixture gets it); select with -m sanity")


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    expr = gate_expr(config.option, _DEST)
    save = config.getoption(_DEST + "save")
    if expr == FAIL_ON_NONE and not save:
        return None
    return (f"sanitycheck: suite {config.getoption(_DEST + 'suite')}, fail-on {expr}, "
            f"inconclusive {gate_inconclusive(config.option, _DEST)}" + (f", save {save}" if save else ""))


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config: pytest.Config, items: Iterable[pytest.Item]) -> None:
    for item in items:
        if "sanity" in getattr(item, "fixturenames", ()) and item.get_closest_marker(MARKER) is None:
            item.add_marker(MARKER)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield  # a test that already failed keeps its own error
    fixture = item.stash.get(_FIXTURE_KEY, None)
    if fixture is not None:
        expr = gate_expr(item.config.option, _DEST)
        failures = fixture.gate_failures(expr)
        if failures:
            flag = "--sanity-strict" if item.config.getoption(_DEST + "strict") else f"--sanity-fail-on {expr}"
            policy = gate_inconclusive(item.config.option, _DEST)
            if policy != DEFAULT_INCONCLUSIVE:
                flag += f" --sanity-inconclusive {policy}"
            pytest.fail("\n".join(failures) + f"\n(failed by {flag}; assert_fails() marks an expected failure)",
                        pytrace=False)
    return result
