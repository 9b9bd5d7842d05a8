"""The ``ray`` executor (issue 12): the engine's explainer and evaluation work on a Ray cluster, bit-identical
to ``local``.

``sanitycheck run --executor ray [--address ADDR] [--workers N] [--worker-threads T]``; in Python
``AuditRun(..., executor="ray", executor_options={"address": ..., "workers": ..., "threads": ...})``.
Ray is an optional extra (``pip install 'sanitycheck[ray]'``) imported only when this executor is used.

Design (why the engine's unit functions never travel)
-----------------------------------------------------
The engine's unit functions are closures over :class:`~sanitycheck.engine.run.AuditRun` (cache, scoring, logs);
pickling the run per unit would ship the model and data with every unit. Instead the driver runs each closure
twice and only the expensive call inside it travels. The run routes two calls through hooks:
``run._explain_unit`` (an explainer call of original-maps and state units) and ``run._evaluate_unit`` (an
evaluation check scoring one explainer's maps: the deletion/insertion curves', AOPC's, faithfulness
correlation's, ROAD's, infidelity's ... model forwards).

1. *capture*: the driver calls ``fn(unit)`` with both hooks replaced by ones that raise :class:`_Deferred`
   carrying the call's arguments (explainer, model, target, check, step, rows; or check, context, explainer
   name, maps). A unit found in the cache returns before that, and costs nothing; a model-independent control
   is computed in place, and so is an evaluation check that does not :func:`ship`.
2. *remote*: the unit spec sent to a worker is small: object-store references and names. Each object is
   ``ray.put`` once: the audited inputs once per run (in the actors' payload), the trained model and (for a
   check that reads it) the dataset once per run, each model state once per state, each explainer, target and
   check once per check, each explainer's maps once per evaluation unit. One long-lived actor per worker
   (``num_cpus=1``, torch threads = ``threads``, default 1) keeps the inputs and the objects it was sent in a
   small LRU, so each reaches each worker once (an evaluation unit's maps, used by that unit only, are not
   kept). The worker runs the engine's own code: explainer units call
   :func:`~sanitycheck.engine.explaining.explain_maps` (the modality's batching and per-call checks);
   evaluation units build a :class:`~sanitycheck.engine.context.CheckContext` over the same inputs, model,
   target, seed and device and call the check's own ``evaluate_maps`` — the check's per-sample scores, curves
   and notes come back as its :class:`~sanitycheck.metrics.base.Evaluation`.
3. *deliver*: as results come back (a ``ray.wait`` loop), the driver calls ``fn(unit)`` again with the hook
   returning the worker's result (or raising its error); the closure scores/converts it exactly as the local
   executor does and saves the unit in the engine cache at once, so a lost worker or a crash loses no finished
   unit and a rerun with the same ``--out`` resumes.

State checks (cascading randomization, random logit, ...) produce their model states in order on the driver
(cascading randomization builds on the previous state); each state's model is put in the object store when the
state is current, so later states may be built while earlier ones are still explained. Evaluation units run
on the workers when the check needs only the maps (and the dataset) and scores them with a built-in
``evaluate_maps`` (:func:`ship`); a check with its own ``evaluate_maps`` (which might read other explainers'
maps from its context) is scored on the driver. Audit checks (``unit = "check"``: whole-check work over all
explainers, e.g. adversarial training, the attention audits that retrain models) stay on the driver as in
``local``: one unit per check, nothing to spread.

Failures: a unit that raises, or whose worker dies, is retried (``retries``, default 2; a dead actor is
restarted). A unit that still fails does not stop the others: every other unit is finished and cached, then
the first failure is raised, naming the explainer, check, step (state) and rows (shard); an evaluation unit's
is worded as in ``local`` (check, explainer, the error) with the Ray unit appended. A
:class:`~sanitycheck.errors.NotApplicableError` is not retried (it is deterministic); it skips the explainer as
in ``local``. Maps and scores equal the local executor's bit for bit when both run with the same torch thread
count.
"""

from __future__ import annotations

import os
import socket
import weakref
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

from ..errors import ConfigError, NotApplicableError, SanityCheckError
from .units import WorkUnit

#: seconds allowed to reach a cluster's address before ``ray.init`` (which can hang on a dead address)
CONNECT_TIMEOUT_S = 3.0


class WorkerLostError(SanityCheckError, RuntimeError):
    """A unit's Ray worker died and its retries were spent; the message names the unit."""


class _Deferred(BaseException):
    """Raised by a capture hook: the unit needs this call (``kind`` "explain" or "evaluate", its arguments).
    Control flow, not an error: a ``BaseException`` so that the closures' ``except Exception`` handlers (which
    name a failing check) let it through to the executor."""

    def __init__(self, kind: str, args: Tuple[Any, ...]):
        super().__init__("deferred")
        self.kind, self.call = kind, args


def ship(check: Any) -> bool:
    """Whether an evaluation check's unit runs on a worker: it needs only the maps and the dataset, and scores
    them with a built-in ``evaluate_maps`` (which reads the unit's own maps, the model, inputs, target and seed,
    and for max-sensitivity the unit's explainer). Any other check is scored in place on the driver."""
    from ..checks.base import DATASET, ORIGINAL_MAPS

    method = getattr(type(check), "evaluate_maps", None)
    return set(getattr(check, "needs", ())) <= {ORIGINAL_MAPS, DATASET} and \
        getattr(method, "__module__", "").startswith("sanitycheck.checks.")


def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ConfigError(f"--executor ray needs the ray package ({err}); install the extra: "
                          "pip install 'sanitycheck[ray]'") from None
    return ray


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A :class:`ConfigError` within ``timeout`` seconds unless a TCP connection to ``address`` (``host:port``,
    ``ray://host:port``; default ports 6379 and 10001) opens. ``auto`` and ``local`` are left to Ray."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    host = parsed.hostname
    try:
        port = parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    except ValueError:
        port = None
    if not host or port is None:
        raise ConfigError(f"--address {address!r} is not host:port or ray://host:port; give the address "
                          "`ray start --head` printed, or omit --address for a local cluster")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"cannot reach the Ray cluster at --address {address!r} ({host}:{port}: "
                          f"{err.strerror or err or 'timed out'}, waited at most {timeout:g} s); start it with "
                          "`ray start --head`, check the address and firewall, or omit --address to run a local "
                          "cluster") from None


def _worker_class(ray: Any) -> Any:
    class UnitWorker:
        """One per worker: holds the audited inputs and a small LRU of the models, explainers and targets sent."""

        def __init__(self, boxed_payload: List[Any], threads: int):
            import torch

            torch.set_num_threads(int(threads))
            payload = ray.get(boxed_payload[0])  # boxed: fetched here, once per worker (and again on a restart)
            self.modality = payload["modality"]
            self.inputs = payload["inputs"]
            self.batch_size = payload["batch_size"]
            self.objects: "OrderedDict[str, Any]" = OrderedDict()

        def _get(self, boxed: List[Any], keep: bool = True) -> Any:
            ref = boxed[0]
            if not keep:  # used by one unit only (an evaluation unit's maps): not held after it
                return ray.get(ref)
            key = ref.hex()
            if key not in self.objects:
                self.objects[key] = ray.get(ref)
                while len(self.objects) > 16:
                    self.objects.popitem(last=False)
            self.objects.move_to_end(key)
            return self.objects[key]

        def explain(self, name: str, explainer: List[Any], model: List[Any], target: List[Any], check: str,
                    step: str, rows: Tuple[int, int]) -> Any:
            from .explaining import explain_maps

            model_obj = self._get(model)
            model_obj.eval()
            try:
                return explain_maps(self.modality, self._get(explainer), model_obj, self.inputs, self._get(target),
                                    batch_size=self.batch_size, name=name, where=f"check {check!r}, step {step!r}",
                                    rows=slice(*rows))
            except NotApplicableError as err:  # deterministic: not retried, skips the explainer as in local
                return err

        def evaluate(self, name: str, check: List[Any], model: List[Any], dataset: Optional[List[Any]],
                     explainer: List[Any], maps: List[Any], settings: Dict[str, Any]) -> Any:
            """The check's scoring of one explainer's maps, through the same ``evaluate_maps`` as on the driver."""
            from .context import CheckContext
            from .explaining import explain_maps

            model_obj = self._get(model)
            model_obj.eval()
            inputs = self.inputs
            if hasattr(inputs, "__dataclass_fields__"):  # sent slim: the model and the dataset travel by reference
                inputs = replace(inputs, model=model_obj,
                                 dataset=None if dataset is None else self._get(dataset))
            check_obj, maps_t = self._get(check), self._get(maps, keep=False)

            def explain(explainer_obj: Any, model_: Any, target: Any, name: Optional[str] = None) -> Any:
                return explain_maps(self.modality, explainer_obj, model_, inputs, target, batch_size=self.batch_size,
                                    name=name or type(explainer_obj).__name__,
                                    where=f"check {getattr(check_obj, 'name', '?')!r}")

            ctx = CheckContext(check=check_obj, modality=self.modality, inputs=inputs,
                               explainers={name: self._get(explainer)}, seed=settings["seed"],
                               device=settings["device"], batch_size=self.batch_size, progress=False,
                               cache_dir=settings["cache_dir"], originals={name: maps_t}, explain=explain)
            try:
                return check_obj.evaluate_maps(ctx, name, maps_t)
            except NotApplicableError as err:  # deterministic: not retried
                return err

        def pid(self) -> int:
            return os.getpid()

    return UnitWorker


class RayExecutor:
    """Runs the engine's explainer calls on Ray actors (see the module docstring)."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, workers: Optional[int] = None, threads: int = 1,
                 retries: int = 2, connect_timeout: float = CONNECT_TIMEOUT_S):
        self.ray = import_ray()
        if workers is not None and int(workers) < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        if int(threads) < 1:
            raise ConfigError(f"--worker-threads must be at least 1, got {threads}")
        self.address, self.workers, self.threads = address, workers, int(threads)
        self.retries, self.connect_timeout = int(retries), connect_timeout
        if address:
            check_address(address, connect_timeout)  # before any work: a dead address fails within seconds
        self.run: Any = None
        self.actors: List[Any] = []
        self._refs: Dict[Any, Tuple[Any, Any]] = {}
        #: objects put once per run (the trained model, the dataset), kept until :meth:`close`
        self._kept: Dict[Any, Tuple[Any, Any]] = {}
        self._started_ray = False

    # ---------------------------------------------------------------- set-up
    def bind(self, run: Any) -> None:
        self.run = weakref.proxy(run)  # no cycle: the run (and with it the workers) is freed when unused

    def _start(self) -> None:
        if self.actors:
            return
        ray = self.ray
        if not ray.is_initialized():
            kwargs: Dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if self.address:
                try:
                    ray.init(address=self.address, **kwargs)
                except Exception as err:  # noqa: BLE001 - ConnectionError, RuntimeError, ...
                    raise ConfigError(f"cannot join the Ray cluster at --address {self.address!r}: {err}") from err
            else:
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, **kwargs)
            self._started_ray = True
        n = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // max(1, self.threads))
        inputs = self.run.inputs
        slim = replace(inputs, dataset=None, model=None) if hasattr(inputs, "__dataclass_fields__") else inputs
        # held while the actors live: a restarted actor is built again from it
        self._payload = payload = ray.put({"modality": self.run.modality, "inputs": slim,
                                           "batch_size": self.run.batch_size})
        cls = ray.remote(_worker_class(ray)).options(num_cpus=self.threads, max_restarts=self.retries,
                                                    max_task_retries=self.retries)
        self.actors = [cls.remote([payload], self.threads) for _ in range(n)]
        self._load = [0] * n

    def close(self) -> None:
        """Ends this run's actors (their CPUs return to the cluster); a local cluster stays up for the next run
        in this process and ends with it."""
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors, self._refs, self._kept, self._payload = [], {}, {}, None

    def _put(self, kind: str, obj: Any, scope: Any = None) -> List[Any]:
        """``[ObjectRef]`` of ``obj``, put once per (kind, object, scope) — a model once per state; the trained
        model and the dataset once per run."""
        run_wide = obj is self.run.model or (kind == "dataset")
        refs = self._kept if run_wide else self._refs
        key = (kind, id(obj), None if run_wide else scope)
        if key not in refs:
            refs[key] = (obj, self.ray.put(obj))  # obj held: its id is not reused while the ref lives
        return [refs[key][1]]

    # ---------------------------------------------------------------- the capture / deliver protocol
    def _call(self, fn: Callable[..., Any], u: WorkUnit, args: Tuple[Any, ...], explain: Callable[..., Any],
              evaluate: Callable[..., Any]) -> Any:
        self.run._explain_unit, self.run._evaluate_unit = explain, evaluate
        try:
            return fn(u, *args)
        finally:
            del self.run._explain_unit, self.run._evaluate_unit

    def _capture(self, fn: Callable[..., Any], u: WorkUnit, args: Tuple[Any, ...]) -> Tuple[bool, Any]:
        def explain(*call: Any) -> Any:
            raise _Deferred("explain", call)

        def evaluate(check: Any, ctx: Any, name: str, maps: Any) -> Any:
            if not ship(check):  # scored in place, as in local
                return check.evaluate_maps(ctx, name, maps)
            raise _Deferred("evaluate", (check, ctx, name, maps))

        try:
            return True, self._call(fn, u, args, explain, evaluate)
        except _Deferred as deferred:
            return False, (deferred.kind, deferred.call)

    def _submit(self, u: WorkUnit, call: Tuple[str, Tuple[Any, ...]]) -> Tuple[Any, int]:
        kind, args = call
        i = min(range(len(self.actors)), key=self._load.__getitem__)
        self._load[i] += 1
        actor = self.actors[i]
        if kind == "evaluate":
            check, ctx, name, maps = args
            from ..checks.base import DATASET

            dataset = self._put("dataset", ctx.inputs.dataset) if DATASET in check.needs else None
            settings = {"seed": ctx.seed, "device": ctx.device, "cache_dir": ctx.cache_dir}
            ref = actor.evaluate.options(retry_exceptions=True).remote(
                name, self._put("check", check), self._put("model", ctx.model), dataset,
                self._put("explainer", ctx.explainers[name]), self._put("maps", maps), settings)
            return ref, i
        name, explainer, model, target, check, step, rows = args
        ref = actor.explain.options(retry_exceptions=True).remote(name, self._put("explainer", explainer), self._put(
            "model", model, (u.check, u.step)), self._put("target", target), check, step, u.rows)
        return ref, i

    def _result(self, ref: Any, u: WorkUnit) -> Any:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, BaseException):
                return cause
            return WorkerLostError(f"{self._where(u)} failed on a Ray worker: {err}")
        except ray.exceptions.RayError as err:  # the actor died more often than it may restart
            return WorkerLostError(f"{self._where(u)}: its Ray worker died {self.retries + 1} times ({type(err).__name__}); "
                                   f"finished units are cached in {self.run._cache_path()}: re-run with the same "
                                   "--out to resume")

    @staticmethod
    def _where(u: WorkUnit) -> str:
        return (f"explainer {u.explainer!r}, check {u.check or 'original maps'!r}, step {u.step!r}, "
                f"inputs {u.rows[0]}..{u.rows[1] - 1}")

    def _deliver(self, fn: Callable[..., Any], u: WorkUnit, args: Tuple[Any, ...], value: Any) -> Any:
        def evaluate(*call: Any) -> Any:  # the closure names a failure as it does in local
            if isinstance(value, BaseException):
                raise value
            return value

        def hook(*call: Any) -> Any:
            if isinstance(value, BaseException):
                if isinstance(value, NotApplicableError) or not isinstance(value, SanityCheckError) or \
                        isinstance(value, WorkerLostError):
                    raise value
                from ..explainers.base import ExplainerError

                if isinstance(value, ExplainerError):  # as AuditRun._explain_unit words it
                    raise ExplainerError(f"{value}. Work finished before this is cached in {self.run._cache_path()}: "
                                         "fix the explainer and re-run with the same --out to resume") from value
                raise value
            return value

        return self._call(fn, u, args, hook, evaluate)

    def _drain(self, fn: Callable[..., Any], pending: Dict[Any, Tuple[WorkUnit, Tuple[Any, ...], int]],
               out: Dict[WorkUnit, Any], failures: List[BaseException], keep: int = 0) -> None:
        """Finish units as they complete until at most ``keep`` are in flight; each is cached by its closure."""
        while len(pending) > keep:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in ready:
                u, args, i = pending.pop(ref)
                self._load[i] -= 1
                try:
                    out[u] = self._deliver(fn, u, args, self._result(ref, u))
                except SanityCheckError as err:
                    failures.append(self._named(err, u))

    def _named(self, err: SanityCheckError, u: WorkUnit) -> SanityCheckError:
        """An evaluation unit's failure with its rows named (its closure names the check and the explainer);
        an explainer unit's failure names them already."""
        if u.kind != "evaluation" or isinstance(err, NotApplicableError) or f"inputs {u.rows[0]}.." in str(err):
            return err
        try:
            named = type(err)(f"{err} [Ray unit: {self._where(u)}]")
        except Exception:  # noqa: BLE001 - another constructor: as raised
            return err
        named.__cause__ = err.__cause__ or err
        return named

    def _finish(self, failures: List[BaseException]) -> None:
        self._refs.clear()
        if failures:
            raise failures[0]

    def _local(self, units: Sequence[WorkUnit]) -> bool:
        return self.run is None or any(u.kind not in ("maps", "state", "evaluation") for u in units)

    # ---------------------------------------------------------------- the executor interface
    def map(self, fn: Callable[[WorkUnit], Any], units: Sequence[WorkUnit]) -> Dict[WorkUnit, Any]:
        if self._local(units):  # audit checks do their own work on the driver
            return {u: fn(u) for u in units}
        self._start()
        out: Dict[WorkUnit, Any] = {}
        pending: Dict[Any, Tuple[WorkUnit, Tuple[Any, ...], int]] = {}
        failures: List[BaseException] = []
        for u in units:
            self._dispatch(fn, u, (), out, pending, failures)
        self._drain(fn, pending, out, failures)
        self._finish(failures)
        return {u: out[u] for u in units if u in out}

    def _dispatch(self, fn: Callable[..., Any], u: WorkUnit, args: Tuple[Any, ...], out: Dict[WorkUnit, Any],
                  pending: Dict[Any, Tuple[WorkUnit, Tuple[Any, ...], int]], failures: List[BaseException]) -> None:
        """Capture ``fn(u, *args)``: a cache hit or in-place result goes to ``out``, an explainer call to a worker
        (``pending``), a failure before any call to ``failures``."""
        try:
            done, value = self._capture(fn, u, args)
        except SanityCheckError as err:
            failures.append(err)
            return
        if done:
            out[u] = value
        else:
            ref, i = self._submit(u, value)
            pending[ref] = (u, args, i)

    def run_states(self, states: Iterable[Any], units_by_step: Dict[str, List[WorkUnit]],
                   fn: Callable[[WorkUnit, Any], Any], on_state: Optional[Callable[[Any], None]] = None
                   ) -> Dict[WorkUnit, Any]:
        if self.run is None:
            from .local_executor import LocalExecutor

            return LocalExecutor().run_states(states, units_by_step, fn, on_state)
        self._start()
        out: Dict[WorkUnit, Any] = {}
        pending: Dict[Any, Tuple[WorkUnit, Tuple[Any, ...], int]] = {}
        failures: List[BaseException] = []
        for state in states:
            if on_state is not None:
                on_state(state)
            for u in units_by_step.get(state.step, []):
                self._dispatch(fn, u, (state,), out, pending, failures)
            # bounded look-ahead: a few states in flight, never every state's model at once
            self._drain(fn, pending, out, failures, keep=4 * len(self.actors))
            live = {(u.check, u.step) for u, _, _ in pending.values()} | {(u.check, state.step) for u in
                                                                          units_by_step.get(state.step, [])}
            for key in [k for k in self._refs if k[0] == "model" and k[2] not in live]:
                del self._refs[key]  # a finished state's model leaves the object store
        self._drain(fn, pending, out, failures)
        self._finish(failures)
        return out
