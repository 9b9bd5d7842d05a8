"""Leaderboard submissions: run a method on every suite of its input kind, in a sandbox; validate results.

``submit`` writes ``leaderboard/submissions/<method>/<suite>.json``: a result document (schema in
``leaderboard/schema.json``) for exactly one explainer, plus a ``method`` block with the hash of the
method's source. The method's code runs only in :mod:`sanitycheck.sandbox` workers; everything that
produces a number runs here.

``validate`` rejects a result file that is malformed, stale (suite or method source changed),
inconsistent (aggregates or verdicts that do not follow from its per-image scores), or whose
per-image scores a seeded re-run of the method does not reproduce within ``tolerance``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .errors import AttributionError, ConfigError, SanityCheckError
from .explainers.base import Explainer
from .io import atomic_write_json
from .sandbox import read_frame, write_frame
from .targets import Target

DEFAULT_TIMEOUT_S = 3600
DEFAULT_MEMORY_MB = 8192
RERUN_TOLERANCE = 1e-4
#: metrics that are discontinuous in the map values, with the re-run tolerance their discontinuity needs. The
#: eMPRT entropy is of a 100-bin histogram: float-level differences between batch compositions (a re-run
#: explains 4 images, the run 128) can move one pixel across a bin edge, which moves the relative entropy of a
#: 28x28 map by up to about (ln 784 + 1) / 784 / H = 3e-3 (H ~ 3 nats); a re-run of integrated gradients once
#: differed by 1.03e-4 there. Every other metric is continuous and keeps RERUN_TOLERANCE.
METRIC_RERUN_TOLERANCE = {"entropy_increase": 1e-2}
DEFAULT_FILE_MB = 256


from .provenance import SubmissionError, _registry_for, method_block, resolve_source  # noqa: E402,F401  (public here too)


# ------------------------------------------------------------------------- the sandboxed explainer
def check_maps(name: str, maps: Any, x: Tensor) -> Tensor:
    """The worker's maps, checked before anything uses them: a real float32 tensor of the input's
    spatial shape (one map per input), every value finite."""
    if not isinstance(maps, Tensor):
        raise AttributionError(f"{name} (sandboxed): the worker returned {type(maps).__name__}, not a tensor of maps")
    expected = (x.shape[0], *x.shape[2:])
    if maps.dtype != torch.float32:
        raise AttributionError(f"{name} (sandboxed): maps of dtype {maps.dtype}, expected torch.float32")
    if maps.layout != torch.strided or maps.is_quantized:
        raise AttributionError(f"{name} (sandboxed): maps must be a dense tensor, got layout {maps.layout}")
    if tuple(maps.shape) != expected or maps.numel() != int(torch.Size(expected).numel()):
        raise AttributionError(f"{name} (sandboxed): maps of shape {tuple(maps.shape)}, expected {expected} "
                               "(one map per input, channels reduced)")
    if not bool(torch.isfinite(maps).all()):
        bad = int((~torch.isfinite(maps)).sum())
        raise AttributionError(f"{name} (sandboxed): {bad} map values are NaN or infinite; return finite maps")
    return maps


def absolute_spec(spec: str) -> str:
    """``file.py:attr`` with an absolute path (the worker runs in its own directory)."""
    module, sep, attr = spec.rpartition(":")
    return f"{Path(module).resolve()}:{attr}" if sep and module.endswith(".py") else spec


def _source_binds(spec: str) -> Tuple[List[Path], List[Path]]:
    """(paths the worker must read, PYTHONPATH entries) for the method ``spec``: a file method's file
    only; a module's top-level package; nothing more of the directories around them."""
    import sanitycheck

    package = Path(sanitycheck.__file__).resolve().parent
    readable, python_path = [package], [package.parent]
    module, sep, _ = spec.rpartition(":")
    if sep and module.endswith(".py"):
        readable.append(Path(module).resolve())
    elif sep:
        try:
            _, source = resolve_source(spec)
        except SanityCheckError:
            return readable, python_path  # the worker reports that it cannot load the method
        parts = module.split(".")
        top = source.parents[len(parts) - (0 if source.name == "__init__.py" else 1)]
        first = top / parts[0]
        readable.append(first if first.is_dir() else first.with_suffix(".py"))
        python_path.append(top)
    return readable, python_path


SANDBOX_BWRAP, SANDBOX_HOOK_ONLY = "bwrap", "audit-hook only"


class RemoteExplainer(Explainer):
    """An explainer whose code runs in a sandbox worker; maps come back as plain tensors.

    The worker runs under bubblewrap (:func:`sanitycheck.sandbox.bwrap_command`). Where namespaces are not
    available, construction fails with the reason unless ``trust_code=True``, which runs the worker with
    the audit hook only. ``sandbox`` says which ("bwrap" or "audit-hook only"). ``hide``: more directories
    the worker must not see (the parent's cache and ``work_dir`` always are). ``audit_hook=False`` is for
    tests that show the OS layer holds on its own."""

    def __init__(self, spec: str, *, work_dir: Path, params: Optional[Dict[str, Any]] = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                 trust_code: bool = False, hide: Sequence[Path] = (), audit_hook: bool = True,
                 file_mb: int = DEFAULT_FILE_MB):
        from . import sandbox
        from .io import cache_dir

        spec = absolute_spec(spec)
        self.spec, self.params = spec, dict(params or {})
        self.work_dir = Path(work_dir)
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self._state_key: Optional[str] = None
        problem = sandbox.bwrap_problem()
        if problem is not None and not trust_code:
            raise SubmissionError(f"cannot isolate submitted code on this machine: {problem}. Install bubblewrap "
                                  "with working user namespaces, or pass --trust-code (trust_code=True) to run "
                                  f"{spec!r} with the Python audit hook only, which is not a boundary against "
                                  "native code")
        self.sandbox = SANDBOX_HOOK_ONLY if problem is not None else SANDBOX_BWRAP
        self.work_dir.mkdir(parents=True, exist_ok=True)
        to_worker_r, self._to_worker = os.pipe()
        self._from_worker, from_worker_w = os.pipe()
        self._log = open(self.work_dir / "worker.log", "ab")
        cpu_s = int(timeout_s * max(os.cpu_count() or 1, 1)) + 60
        limits = ["--memory-mb", str(memory_mb), "--cpu-s", str(cpu_s), "--file-mb", str(file_mb),
                  "--fd-in", str(to_worker_r), "--fd-out", str(from_worker_w)] + ([] if audit_hook else ["--no-audit-hook"])
        if self.sandbox == SANDBOX_BWRAP:
            readable, python_path = _source_binds(spec)
            worker = [sys.executable, "-m", "sanitycheck.sandbox", "--method", spec, "--params",
                      json.dumps(self.params), "--out", f"{sandbox.SCRATCH}/work",
                      "--max-procs", str(sandbox.process_limit())] + limits
            argv = sandbox.bwrap_command(
                worker, readable=readable, python_path=python_path,
                hide=[self.work_dir, cache_dir(), *hide],
                env={k: os.environ[k] for k in sandbox.PASSED_ENV if k in os.environ})
            env: Optional[Dict[str, str]] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        else:
            argv = [sys.executable, "-m", "sanitycheck.sandbox", "--method", spec, "--params", json.dumps(self.params),
                    "--out", str(self.work_dir / "sandbox")] + limits
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GITHUB_", "HF_TOKEN"))}
            env.update({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"})
        self.process = subprocess.Popen(
            argv, pass_fds=(to_worker_r, from_worker_w), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, env=env, cwd=str(self.work_dir), start_new_session=True)
        os.close(to_worker_r)
        os.close(from_worker_w)
        hello = self._receive()
        if "error" in hello:
            self.close()
            raise SubmissionError(hello["error"])
        self.name = hello["name"]
        self._config = json.loads(hello["config"])
        self._code_hash = hello["code_hash"]
        self.requires_model = hello["requires_model"]
        self.channel_reduction = hello["channel_reduction"]
        self.input_kind = hello["input_kind"]

    def _receive(self, limit: int = 1 << 20) -> Dict[str, Any]:
        """The worker's next reply, at most ``limit`` bytes (a larger one is refused before it is read)."""
        remaining = self.deadline - time.monotonic()
        ready, _, _ = select.select([self._from_worker], [], [], max(remaining, 0))
        if not ready:
            self.close(kill=True)
            raise SubmissionError(f"method {self.spec!r} exceeded its time limit of {self.timeout_s:.0f} s; "
                                  f"the worker was stopped (log: {self.work_dir / 'worker.log'})")
        try:
            frame = read_frame(self._from_worker, limit)
        except ValueError as err:  # a reply larger than maps of this batch can be: not read, worker stopped
            self.close(kill=True)
            raise SubmissionError(f"the sandbox worker of {self.spec!r} sent an oversized reply ({err}); "
                                  "the worker was stopped") from None
        except EOFError as err:
            code = self.process.poll()
            self.close(kill=True)
            raise SubmissionError(f"the sandbox worker of {self.spec!r} died (exit code {code}: {err}); "
                                  f"a memory limit hit shows as MemoryError in {self.work_dir / 'worker.log'}") from None
        try:
            reply = torch.load(io.BytesIO(frame), weights_only=True)
        except Exception as err:  # noqa: BLE001 - anything unreadable from the untrusted side
            raise SubmissionError(f"unreadable reply from the sandbox worker of {self.spec!r}: {err}") from None
        if not isinstance(reply, dict):
            raise SubmissionError(f"malformed reply from the sandbox worker of {self.spec!r}")
        return reply

    def config(self) -> Dict[str, Any]:
        return self._config

    def code_hash(self) -> str:
        return self._code_hash

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        if not target.per_sample:
            raise AttributionError("sandboxed methods explain class targets only")
        state = hashlib.sha256()
        for t in model.state_dict().values():
            state.update(t.detach().cpu().numpy().tobytes())
        key = state.hexdigest()
        request = {"op": "explain", "state_key": key, "x": x.detach().cpu(), "classes": target.per_sample[0].cpu(),
                   "model": model if key != self._state_key else None}
        buf = io.BytesIO()
        torch.save(request, buf)
        try:
            write_frame(self._to_worker, buf.getvalue())
        except BrokenPipeError:
            raise SubmissionError(f"the sandbox worker of {self.spec!r} has exited (see "
                                  f"{self.work_dir / 'worker.log'})") from None
        self._state_key = key
        reply = self._receive(limit=4 * x.shape[0] * int(torch.Size(x.shape[2:]).numel()) + (1 << 20))
        if "error" in reply:
            raise AttributionError(f"{self.name} (sandboxed): {reply['error']}")
        return check_maps(self.name, reply.get("maps"), x).to(x.device)

    def close(self, kill: bool = False) -> None:
        if self.process.poll() is None:
            if not kill:
                try:
                    buf = io.BytesIO()
                    torch.save({"op": "exit"}, buf)
                    write_frame(self._to_worker, buf.getvalue())
                    self.process.wait(timeout=10)
                except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
                    pass
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        try:  # bwrap, and in hook-only mode anything the worker left in its session: the whole group goes
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
        for fd in (self._to_worker, self._from_worker):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()

    def __enter__(self) -> "RemoteExplainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------- submit
def suites_for(input_kind: str, wanted: Optional[Sequence[str]] = None) -> List[str]:
    from .modalities import modality_for
    from .suites import available_suites, load_suite

    names = list(wanted) if wanted else list(available_suites())
    chosen = [n for n in names if modality_for(load_suite(n).input_kind).accepts(input_kind)]
    if wanted and len(chosen) != len(names):
        other = sorted(set(names) - set(chosen))
        raise ConfigError(f"suites {other} do not take {input_kind!r} methods")
    return chosen


def submit(spec: str, *, suites: Optional[Sequence[str]] = None, root: Path = Path("leaderboard"),
           work_root: Path = Path("runs/submissions"), name: Optional[str] = None,
           params: Optional[Dict[str, Any]] = None, timeout_s: float = DEFAULT_TIMEOUT_S,
           memory_mb: int = DEFAULT_MEMORY_MB, progress: bool = True, n: Optional[int] = None,
           seed: Optional[int] = None, cache_dir: Optional[str] = None,
           trust_code: bool = False, gate: bool = False) -> Dict[str, Dict[str, Any]]:
    """Run ``spec`` on every applicable suite; returns {suite: result document} and writes them.

    The method runs under bubblewrap; where that is impossible, only with ``trust_code=True`` (audit hook
    only). ``method.sandbox`` in each document records which.

    ``gate=True`` (``submit --strict``) runs the sequential gate (:mod:`sanitycheck.engine.gate`) on each
    suite first. A verdict the gate decides as failed refuses the claim in a fraction of the full run's
    model evaluations: the gate's document (with its ``gate`` block and ``sequential`` verdicts) is returned,
    and nothing is written to the board for that suite. Otherwise the full run follows and is written as
    usual — the board compares methods at the suite's n, which a gate document does not have."""
    from .results import split_by_explainer
    from .engine import AuditRun
    from .suites import load_suite
    from .validation import static_problems

    block = method_block(spec, name, params)
    work = Path(work_root) / block["name"]
    documents: Dict[str, Dict[str, Any]] = {}
    hide = [Path(root), Path(work_root)] + ([Path(cache_dir)] if cache_dir else [])
    with RemoteExplainer(spec, work_dir=work, params=params, timeout_s=timeout_s, memory_mb=memory_mb,
                         trust_code=trust_code, hide=hide) as remote:
        for suite_name in suites_for(remote.input_kind, suites):
            suite = load_suite(suite_name)
            if gate:
                refused = _gate_refusal(suite, remote, block, work, progress=progress, n=n, seed=seed,
                                        cache_dir=cache_dir)
                if refused is not None:
                    documents[suite.name] = refused
                    continue
            run = AuditRun(suite, out_dir=work / suite.name, explainer_objects={block["name"]: remote},
                           progress=progress, figures=False, n=n, seed=seed, cache_dir=cache_dir)
            doc = split_by_explainer(run.execute())[block["name"]]
            doc["method"] = {**block, "sandbox": remote.sandbox}
            problems = static_problems(doc, submission=True)
            if problems:  # our own output failing our own validation is a bug, not a user error
                raise SubmissionError(f"internal: the result of {block['name']} on {suite.name} does not validate: "
                                      + "; ".join(problems))
            atomic_write_json(Path(root) / "submissions" / block["name"] / f"{suite.name}.json", doc)
            documents[suite.name] = doc
    return documents


def _gate_refusal(suite: Any, remote: Any, block: Dict[str, Any], work: Path, **run_kwargs: Any
                  ) -> Optional[Dict[str, Any]]:
    """The gate's document when it decided some verdict as failed (the claim is refused), else None."""
    from .engine.gate import run_gate
    from .options import verdict_status
    from .results import split_by_explainer

    doc = run_gate(suite, out_dir=work / suite.name / "gate", explainer_objects={block["name"]: remote},
                   **run_kwargs)
    doc = split_by_explainer(doc).get(block["name"], doc)
    decided_fail = [v for v in doc["verdicts"] if verdict_status(v) == "fail"
                    and (v.get("sequential") or {}).get("stop") == "decided"]
    if not decided_fail:
        return None
    doc["method"] = {**block, "sandbox": remote.sandbox}
    doc["refused_by_gate"] = {"suite": suite.name, "not_written": True,
                              "reason": "; ".join(f"{v['check']}: {v['sequential']['reason']}" for v in decided_fail)}
    return doc


def publish_run(results: Dict[str, Any], *, root: Path = Path("leaderboard")) -> List[Path]:
    """Split a run of *registered* explainers into leaderboard files (one per explainer), without re-running.

    Only explainers resolvable by registry name are published: their code is installed, so
    ``validate`` can re-run them. A run's per-explainer document is the one ``submit`` would write.
    """
    from .results import split_by_explainer
    from .validation import static_problems

    written = []
    kind = results.get("input_kind", "image")
    for name, doc in split_by_explainer(results).items():
        if name not in _registry_for(kind):
            raise ConfigError(f"cannot publish {name!r}: only registered explainers are published from a run; "
                              f"submit other methods with `sanitycheck submit`")
        from .suites import load_suite

        params = dict(load_suite(doc["suite"]).explainers).get(name, {})  # what the suite constructed it with
        doc["method"] = method_block(name, params=params, input_kind=kind)
        problems = static_problems(doc, submission=True)
        if problems:
            raise SubmissionError(f"internal: {name} on {doc['suite']} does not validate: " + "; ".join(problems))
        written.append(atomic_write_json(Path(root) / "submissions" / name / f"{doc['suite']}.json", doc))
    return written


# ------------------------------------------------------------------------- validate
def sample_indices(n: int, k: Optional[int], seed: Optional[int] = None) -> Tuple[int, List[int]]:
    """(seed, sorted indices): ``k`` of ``n`` inputs (all of them when ``k`` is None or >= n), drawn with a seed
    from fresh OS randomness unless one is given (to repeat a report). Nothing in the document steers it."""
    import secrets

    from .seeding import generator

    if seed is None:
        seed = secrets.randbits(63)
    if k is None or k >= n:
        return seed, list(range(n))
    if k < 1:
        raise ConfigError(f"the re-run sample must hold at least 1 input, got {k}")
    g = generator("validate", seed)
    return seed, sorted(torch.randperm(n, generator=g)[:k].tolist())


def _rerun_explainers(suite: Any, name: str, explainer: Any) -> Dict[str, Any]:
    """The re-run explainers: the one validated, plus the references a check compares it with (a check's
    ``references`` parameter, e.g. importance_agreement's)."""
    from .explainers import get_explainer

    params = dict(suite.explainers)
    out = {name: explainer}
    for spec in suite.checks:
        if spec.params.get("references"):
            for ref in spec.params.get("references") or []:
                if ref not in out:
                    out[ref] = get_explainer(ref, modality=suite.input_kind, **params.get(ref, {}))
    return out


def _rerunnable(doc: Dict[str, Any]) -> bool:
    """Whether the document's method can be re-run here: registered, or of a modality whose methods run sandboxed."""
    from .modalities import modality_for

    return ":" not in doc["method"]["source"] or modality_for(doc.get("input_kind", "image")).sandboxed_methods


def _keys(tree: Dict[str, Any]) -> set:
    return {(c, s, m) for c, steps in tree.items() for s, metrics in steps.items() for m in metrics}


def _static_stage(path: Path, max_bytes: Optional[int], report: Dict[str, Any]
                  ) -> Tuple[Optional[Dict[str, Any]], Any, List[str]]:
    """(document, suite, problems) of every check that runs no code: size, schema, the suite's current rules,
    aggregates and verdicts recomputed, source and weights hashes named."""
    from .suites import load_suite
    from .validation import MAX_DOCUMENT_BYTES, load_document, recomputed_verdicts, static_problems, weights_sha256

    report.update(path=str(path))
    doc, problems = load_document(path, max_bytes=MAX_DOCUMENT_BYTES if max_bytes is None else max_bytes)
    if doc is None:
        return None, None, problems
    problems = static_problems(doc, submission=True, provenance=True)
    if problems:
        return None, None, problems
    suite = load_suite(doc["suite"])
    report.update(suite=f"{suite.name} v{suite.version}", verdicts=recomputed_verdicts(doc, suite),
                  weights_sha256=weights_sha256(doc))
    return doc, suite, []


def _model_params(doc: Dict[str, Any], suite: Any) -> Optional[Dict[str, Any]]:
    """The model parameters a re-run needs: the document's, where they differ from the suite's."""
    params = doc["model"].get("params")
    return (params or {}) if params != dict(suite.model.get("params", {})) else None


def _compare_rerun(doc: Dict[str, Any], fresh: Dict[str, Any], name: str, indices: List[int], sample_seed: int,
                   tolerance: float, report: Dict[str, Any]) -> List[str]:
    """The document's per-image scores at ``indices`` against a fresh re-run's, on the same weights."""
    from .validation import weights_problems, weights_sha256

    fresh_weights = weights_sha256(fresh)
    report["fresh_weights_sha256"] = fresh_weights
    if fresh_weights is None:
        return [f"cannot re-run: this installation did not record the weights of {fresh['model']['name']} "
                "(model.weights_sha256); update sanitycheck"]
    problems = weights_problems(doc, fresh_weights)
    if problems:
        return problems
    stored = doc["per_sample"][name]
    new_tree = fresh["per_sample"].get(name, {})
    missing = sorted(_keys(new_tree) - _keys(stored))
    if missing:
        return [f"re-run: {'/'.join(missing[0])} is missing from the file"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")]
    run_checks = set(new_tree)
    extra = sorted(k for k in _keys(stored) - _keys(new_tree) if k[0] in run_checks)
    if extra:
        return [f"re-run: the file has scores for {'/'.join(extra[0])}, which the re-run does not produce"]
    worst, where, excess = 0.0, None, 0.0
    # a check that scores other units than inputs (an SAE's latents) scores the sampled inputs as a whole: its
    # scores are not per input and cannot be compared at sampled indices. They are validated statically (the
    # aggregates re-bootstrapped from the stored scores, the verdicts recomputed); the report names them.
    other_units = sorted(c for c in new_tree
                         if ((doc.get("checks") or {}).get(c) or {}).get("sample_unit", "inputs") != "inputs")
    if other_units:
        report["not_rerun"] = {c: f"scores {doc['checks'][c]['sample_unit']}, not inputs: validated statically"
                               for c in other_units}
    for check, steps in new_tree.items():
        if check in other_units:
            continue
        for step, metrics in steps.items():
            for metric, values in metrics.items():
                recorded = stored[check][step][metric]
                allowed = max(tolerance, METRIC_RERUN_TOLERANCE.get(metric, 0.0))
                for i, new in zip(indices, values):
                    old = recorded[i]
                    if (old is None) != (new is None):
                        return [f"tampered: image {i} {check}/{step}/{metric} is {old} in the file, re-run gives {new}"]
                    if old is None:
                        continue
                    worst = max(worst, abs(old - new))
                    if abs(old - new) / allowed > excess:  # the difference furthest beyond its own tolerance
                        excess, where = abs(old - new) / allowed, (i, check, step, metric, old, new, allowed)
    report["max_abs_diff"] = worst
    if excess > 1.0:
        i, check, step, metric, old, new, tolerance = where
        what = (f"all {len(indices)} inputs" if report.get("full")
                else f"{len(indices)} inputs sampled with seed {sample_seed}")
        return [f"tampered or irreproducible: re-running {what}, image {i} {check}/{step}/"
                f"{metric} is {old} in the file but {new} now (|diff| {abs(old - new):.2e} > tolerance {tolerance:g})"]
    return []


def _rerun(docs: List[Dict[str, Any]], suite: Any, indices: List[int], run_dir: Path, work: Path, *,
           timeout_s: float, memory_mb: int, progress: bool, cache_dir: Optional[str]) -> Dict[str, Any]:
    """One re-run of every method in ``docs`` (one suite, seed, n and model), sharing the model states: image
    methods each in their own sandbox worker, registered token explainers in process."""
    import contextlib

    from .engine import AuditRun

    first = docs[0]
    common = dict(out_dir=run_dir, progress=progress, figures=False, n=first["dataset"]["n"], seed=first["seed"],
                  indices=indices, cache_dir=cache_dir)
    from .explainers import get_explainer
    from .modalities import modality_for

    modality = modality_for(suite.input_kind)
    with contextlib.ExitStack() as stack:
        explainers: Dict[str, Any] = {}
        checks: List[str] = []
        for doc in docs:
            method = doc["method"]
            params = method.get("params") or {}
            if _is_builtin(method["source"]) or not modality.sandboxed_methods:
                # this package's own code, hash-checked (token explainers on the board are registered built-ins):
                # no sandbox needed
                explainer = get_explainer(method["source"], modality=modality.name, **params)
            else:
                explainer = stack.enter_context(RemoteExplainer(
                    method["source"], work_dir=work / method["name"], params=method.get("params"),
                    timeout_s=timeout_s, memory_mb=memory_mb))
            for k, v in _rerun_explainers(suite, method["name"], explainer).items():
                explainers.setdefault(k, v)
            checks += [c for c in doc["per_sample"].get(method["name"], {}) if c not in checks]
        # on the model and data the documents name (model parameters included), with only their checks
        return AuditRun(suite, explainer_objects=explainers, checks=checks or None,
                        model_params=_model_params(first, suite), **common).execute()


def _is_builtin(source: str) -> bool:
    """A method given by registry name whose code is a module of this package (the built-in explainers that
    ``publish`` puts on the board): trusted code, already hash-checked by the static stage."""
    if ":" in source:
        return False
    try:
        _, path = resolve_source(source, "image")
    except SanityCheckError:
        return False
    return Path(__file__).resolve().parent in path.resolve().parents


def validate_file(path: Path, *, rerun: bool = True, sample: Optional[int] = 16, full: bool = False,
                  tolerance: float = RERUN_TOLERANCE, timeout_s: float = DEFAULT_TIMEOUT_S,
                  memory_mb: int = DEFAULT_MEMORY_MB, work_root: Path = Path("runs/validate"),
                  progress: bool = False, max_bytes: Optional[int] = None, seed: Optional[int] = None,
                  report: Optional[Dict[str, Any]] = None, cache_dir: Optional[str] = None) -> List[str]:
    """Problems with the result file at ``path`` (empty list: valid). ``cache_dir``: the model cache the re-run
    loads models from (default: ``$SANITYCHECK_CACHE``), where a model has no shipped reference weights.

    The re-run sample (``sample`` inputs, every input with ``full``) is drawn at validation time from fresh
    randomness; ``report`` (a dict, filled in place) receives the seed, the indices, the weights hashes and
    the verdicts recomputed from the suite's current rules."""
    report = {} if report is None else report
    path = Path(path)
    report.update(rerun=rerun)
    doc, suite, problems = _static_stage(path, max_bytes, report)
    if doc is None or not rerun:
        return problems
    method = doc["method"]
    if not _rerunnable(doc):
        return ["cannot re-run: text methods are re-run only when registered (sandboxed token explainers "
                "are not supported yet)"]
    sample_seed, indices = sample_indices(doc["dataset"]["n"], None if full else sample, seed)
    report.update(sample_seed=sample_seed, indices=indices, full=len(indices) == doc["dataset"]["n"])
    work = Path(work_root) / method["name"] / suite.name
    fresh = _rerun([doc], suite, indices, work / f"rerun-{os.getpid()}-{time.time_ns()}", work,
                   timeout_s=timeout_s, memory_mb=memory_mb, progress=progress, cache_dir=cache_dir)
    return _compare_rerun(doc, fresh, method["name"], indices, sample_seed, tolerance, report)


def validate_files(paths: Sequence[Path], *, sample: Optional[int] = 16, tolerance: float = RERUN_TOLERANCE,
                   timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                   work_root: Path = Path("runs/validate"), progress: bool = False, max_bytes: Optional[int] = None,
                   cache_dir: Optional[str] = None) -> Dict[str, List[str]]:
    """:func:`validate_file` with a re-run for many files at once (what the board does on every build).

    Files of the same suite, seed, n and model are re-run together on one fresh sample: one pass over the model
    states for all their methods (each image method still in its own sandbox worker), as the audit itself ran
    them. A group whose shared re-run fails is validated file by file, so one broken method cannot hide the
    others' results nor pass for them. Returns {path: problems} (empty list: valid)."""
    out: Dict[str, List[str]] = {}
    groups: Dict[Tuple[Any, ...], List[Tuple[Path, Dict[str, Any], Any]]] = {}
    for path in map(Path, paths):
        doc, suite, problems = _static_stage(path, max_bytes, {})
        if doc is None:
            out[str(path)] = problems
            continue
        if not _rerunnable(doc):
            out[str(path)] = ["cannot re-run: text methods are re-run only when registered (sandboxed token "
                              "explainers are not supported yet)"]
            continue
        key = (doc["suite"], doc["seed"], doc["dataset"]["n"], json.dumps(_model_params(doc, suite), sort_keys=True),
               doc["model"]["name"], doc["dataset"]["name"])
        groups.setdefault(key, []).append((path, doc, suite))
    items = list(groups.values())
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="re-running", unit="suite")
    for members in items:
        docs = [doc for _, doc, _ in members]
        suite = members[0][2]
        sample_seed, indices = sample_indices(docs[0]["dataset"]["n"], sample)
        work = Path(work_root) / "board" / suite.name
        try:
            fresh = _rerun(docs, suite, indices, work / f"rerun-{os.getpid()}-{time.time_ns()}", work,
                           timeout_s=timeout_s, memory_mb=memory_mb, progress=False, cache_dir=cache_dir)
        except SanityCheckError:
            for path, _, _ in members:  # attribute the failure: each file on its own
                try:
                    out[str(path)] = validate_file(path, sample=sample, tolerance=tolerance, timeout_s=timeout_s,
                                                   memory_mb=memory_mb, work_root=work_root, max_bytes=max_bytes,
                                                   cache_dir=cache_dir)
                except SanityCheckError as err:
                    out[str(path)] = [f"cannot re-run: {err}"]
            continue
        for path, doc, _ in members:
            report = {"full": len(indices) == doc["dataset"]["n"]}
            out[str(path)] = _compare_rerun(doc, fresh, doc["method"]["name"], indices, sample_seed, tolerance,
                                            report)
    return out
