"""The audit engine: one class runs every suite, whatever its input kind.

Data flow (see DESIGN.md): the suite's modality loads inputs, model and targets; the engine plans work units
— (check, model state, explainer, shard of inputs) — and an executor runs them: the trained model's maps once
per explainer; each state check's states, lazily, one at a time, every explainer's maps of that state compared
with the trained model's by every metric; each evaluation check on each explainer's maps; each audit check
once. Every unit's result is cached atomically under its key in ``<out>/cache/units``, so an interrupted run
resumes where it stopped. Aggregates carry bootstrap CIs; verdicts apply the suite's thresholds;
``results.json`` is written last, and the figures are drawn from it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
import time
import warnings
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..checks.base import ORIGINAL_MAPS, TWIN_MODEL, Check, CheckOutput, RecordedAudit, get_check
from ..devices import ResourceMonitor, check_device
from .batching import AUTO, batch_size_arg as _batch_size_arg, choose_run_batch_size
from ..errors import ConfigError, NotApplicableError, SanityCheckError
from ..explainers.base import ExplainerError
from ..io import CorruptCacheError, atomic_write_json, load_checked, read_json, save_checked
from ..modalities import modality_for
from ..registry import METRICS
from ..checks.sampling import split_noise_rule
from ..results import (ORIGINAL_STEP, SCHEMA_VERSION, Record, Verdict, apply_noise_ceiling, clean_json, decide,
                       git_hash,
                       package_versions, records_to_json, verdicts_to_json)
from ..stats import bootstrap_ci_many
from ..suites import Suite
from .context import CheckContext
from .executors import get_executor
from .explaining import explain_maps
from . import sharing
from .scoring import bootstrap_label
from .units import WorkUnit, explainer_cache_key, path_part, shards, unit_key

__all__ = ["AuditRun", "RunSettings", "check_out_dir", "merge_results", "explain_maps"]


#: rows a metric scores at once (see :meth:`AuditRun.score_pair`): bounds the scoring's memory at large N
SCORE_CHUNK_ROWS = 1024


def _progress(iterable=None, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def check_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` (if needed) and make sure files can be written in it; else a :class:`ConfigError`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is an existing file, not a directory; give a new directory or the "
                          "directory of an earlier run of the same suite to resume it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create --out directory {out_dir}: {err.strerror or err}; give a writable "
                          "location") from err
    try:
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".write-test-")
    except OSError as err:
        raise ConfigError(f"--out directory {out_dir} is not writable ({err.strerror or err}); give a writable "
                          "directory") from err
    os.close(fd)
    os.unlink(probe)


#: fingerprint entries that units are not keyed by. Each unit's key holds its check's config and its explainer's
#: spec (an audit unit's, every explainer's), so a suite re-versioned to add an explainer or a check, or to change
#: a verdict rule, resumes the units it shares with the old version instead of recomputing them
_NOT_IN_RUN_KEY = ("explainers", "suite_version", "suite_sha256", "run_key")


def _hash_settings(settings: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class RunSettings:
    """What a run was asked to do (the suite's defaults overridden by the caller)."""

    suite: Suite
    out_dir: Path
    seed: int
    n: Optional[int]
    device: str = "cpu"
    batch_size: int = 32
    progress: bool = True
    cache_dir: Optional[str] = None
    figures: bool = True
    indices: Optional[List[int]] = None
    dataset: Any = None
    dataset_name: Optional[str] = None
    data_root: Optional[str] = None
    model: Optional[nn.Module] = None
    model_name: Optional[str] = None
    model_params: Dict[str, Any] = field(default_factory=dict)
    #: extra objects for checks, e.g. ``random_label_model=`` (a twin model)
    context: Dict[str, Any] = field(default_factory=dict)
    #: rows per work unit (None: all inputs in one shard); rounded up to a multiple of ``batch_size``
    shard_size: Optional[int] = None
    executor: str = "local"


@dataclass
class RunLog:
    """What the run learned while executing, by check: the facts results.json records."""

    skipped: Dict[str, str] = field(default_factory=dict)  # explainer -> why it does not apply
    steps: Dict[str, List[str]] = field(default_factory=dict)
    kinds: Dict[str, str] = field(default_factory=dict)  # check -> "randomization" | "evaluation"
    directions: Dict[str, Dict[str, bool]] = field(default_factory=dict)
    state_info: Dict[str, Any] = field(default_factory=dict)
    variant_originals: Dict[str, Dict[str, Tensor]] = field(default_factory=dict)
    audits: Dict[str, Any] = field(default_factory=dict)  # check -> its CheckOutput
    checks: Dict[str, Check] = field(default_factory=dict)
    not_applicable: Dict[str, str] = field(default_factory=dict)
    timing: Dict[str, float] = field(default_factory=dict)
    recomputed: List[str] = field(default_factory=list)  # cache files found corrupt and recomputed


class AuditRun:
    """One execution of a suite. Use :func:`sanitycheck.engine.run_suite` unless you need the pieces."""

    def __init__(self, suite: Suite, *, out_dir: Path, explainers: Optional[Sequence[str]] = None,
                 n: Optional[int] = None, seed: Optional[int] = None, device: str = "cpu",
                 batch_size: Optional[int] = None, progress: bool = True, cache_dir: Optional[str] = None,
                 model: Optional[nn.Module] = None, model_name: Optional[str] = None,
                 dataset: Any = None, explainer_objects: Optional[Dict[str, Any]] = None,
                 figures: bool = True, checks: Optional[Sequence[str]] = None,
                 context: Optional[Dict[str, Any]] = None, indices: Optional[Sequence[int]] = None,
                 dataset_name: Optional[str] = None, data_root: Optional[str] = None,
                 model_params: Optional[Dict[str, Any]] = None, shard_size: Optional[int] = None,
                 executor: str = "local", executor_options: Optional[Dict[str, Any]] = None,
                 explainer_params: Optional[Dict[str, Dict[str, Any]]] = None):
        check_device(device)  # before any work: `--device cuda` without a GPU is a clear error
        batch_size = _batch_size_arg(batch_size)
        self.suite = suite
        self.modality = modality_for(suite.input_kind)
        self.settings = RunSettings(
            suite=suite, out_dir=Path(out_dir), seed=suite.seed if seed is None else int(seed),
            n=n or suite.dataset.get("n"), device=device, batch_size=batch_size or suite.batch_size,
            progress=progress, cache_dir=cache_dir, figures=figures,
            indices=list(indices) if indices is not None else None, dataset=dataset, dataset_name=dataset_name,
            data_root=data_root, model=model, model_name=model_name, model_params=dict(model_params or {}),
            context=dict(context or {}), shard_size=shard_size, executor=executor)
        if explainer_objects:
            self.explainers = dict(explainer_objects)
        else:
            from ..explainers import get_explainer

            # names outside the suite (registered, or import paths) run with their default parameters
            wanted = list(explainers) if explainers else suite.explainer_names
            params = dict(suite.explainers)
            # explainers given with parameters (e.g. --sae PATH: sae_file with its path) join the suite's
            for name, extra in (explainer_params or {}).items():
                params[name] = {**params.get(name, {}), **extra}
                if name not in wanted:
                    wanted.append(name)
            self.explainers = {name: get_explainer(name, modality=self.modality.name, **params.get(name, {}))
                               for name in wanted}
        self.check_specs = [c for c in suite.checks if not checks or c.name in checks]
        if checks:
            missing = set(checks) - {c.name for c in suite.checks}
            if missing:
                raise ConfigError(f"checks {sorted(missing)} are not in suite {suite.name!r} "
                                  f"(it has {[c.name for c in suite.checks]})")
        self.metrics = {name: METRICS.get(name) for name in suite.metrics}
        self.log = RunLog()
        self.executor = get_executor(executor, **(executor_options or {}))
        if hasattr(self.executor, "bind"):  # a distributed executor ships this run's inputs to its workers
            self.executor.bind(self)
        self.inputs: Any = None

    # ---------------------------------------------------------------- convenient views
    out_dir = property(lambda self: self.settings.out_dir)
    seed = property(lambda self: self.settings.seed)
    batch_size = property(lambda self: self.settings.batch_size)
    progress = property(lambda self: self.settings.progress)
    skipped = property(lambda self: self.log.skipped)
    model = property(lambda self: self.inputs.model)
    x = property(lambda self: self.inputs.x)
    target = property(lambda self: self.inputs.target)
    dataset = property(lambda self: self.inputs.dataset)

    @property
    def model_name(self) -> str:
        return self.inputs.model_name if self.inputs is not None else (
            self.settings.model_name or self.suite.model["name"])

    # ---------------------------------------------------------------- inputs
    def load_inputs(self) -> None:
        t0 = time.perf_counter()
        auto = self.settings.batch_size == AUTO
        if auto:  # the model is probed once loaded; its logits are computed at the suite's batch size
            self.settings.batch_size = self.suite.batch_size
        self.inputs = self.modality.load(self.settings)
        self.batch_choice = choose_run_batch_size(self, auto)
        self.log.timing["load_seconds"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- cache
    def weights_sha256(self) -> str:
        """sha256 of the audited model's state_dict: the one its loader recorded (of the weights as loaded, before
        a text run's float64 cast), else computed once here; the run cache's key and the results' record."""
        if getattr(self, "_weights_sha256", None) is None:
            from ..models.weights import state_dict_sha256

            info = getattr(self.model, "sanitycheck_info", {}) or {}
            self._weights_sha256 = info.get("weights_sha256") or state_dict_sha256(self.model)
        return self._weights_sha256

    def fingerprint(self) -> Dict[str, Any]:
        s = self.settings
        return clean_json({
            "suite": self.suite.name, "suite_version": self.suite.version, "suite_sha256": self.suite.sha256,
            "seed": s.seed, "n": len(self.x), "indices": s.indices, "model": self.model_name,
            "dataset": s.dataset_name or self.suite.dataset["name"],
            # the weights themselves (state_dict sha256): other weights never resume this cache
            "model_key": self.weights_sha256(),
            "data_sha256": hashlib.sha256(self.x.numpy().tobytes()).hexdigest()[:16],
            "explainers": {k: [e.code_hash(), json.dumps(e.config(), sort_keys=True, default=str)]
                           for k, e in self.explainers.items()},
            "metrics": sorted(self.metrics), "target": self.suite.target, "model_params": s.model_params,
        })

    def _cache_path(self, *parts: str) -> Path:
        """``<out>/cache/<parts>``; every part is one safe path component (no ``/``, ``..`` or absolute path)."""
        return self.out_dir / "cache" / Path(*(path_part(str(p)) for p in parts))

    def load_cached(self, path: Path, weights_only: bool = True) -> Any:
        """The checked content of cache file ``path``, or None when it is missing or corrupt (a corrupt file is
        named in a warning, removed and recomputed)."""
        if not path.exists():
            return None
        try:
            return load_checked(path, weights_only=weights_only)
        except CorruptCacheError as err:
            warnings.warn(f"cache file {path} is corrupt: {err}; recomputing it", stacklevel=2)
            self.log.recomputed.append(str(path.relative_to(self.out_dir)))
            try:
                path.unlink()
            except OSError:
                pass
            return None

    def prepare_cache(self) -> None:
        fp = self.fingerprint()
        path = self._cache_path("fingerprint.json")
        old = None
        if path.exists():
            try:
                old = read_json(path)
                if not isinstance(old, dict):
                    raise ValueError(f"a JSON {type(old).__name__}, not an object")
            except (OSError, ValueError) as err:
                # the settings of the cached files are unknown: keep them aside, never reuse them
                aside = self.out_dir / f"cache.unverified-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
                os.replace(self._cache_path(), aside)
                warnings.warn(f"cache fingerprint {path} is unreadable ({err}); the cache was moved to {aside} and "
                              "is recomputed", stacklevel=2)
                old = None
        if old is not None:
            shared = {k: v for k, v in old.items() if k not in _NOT_IN_RUN_KEY}
            if shared != {k: v for k, v in fp.items() if k not in _NOT_IN_RUN_KEY}:
                raise ConfigError(
                    f"{self.out_dir} holds a run with different settings "
                    f"({', '.join(k for k in shared if shared[k] != fp.get(k))} differ); "
                    "use another --out directory to start a new run")
            # unit files are keyed by each explainer's code and parameters: changed ones are recomputed
            merged = dict(old.get("explainers", {}))
            merged.update(fp["explainers"])
            fp["explainers"] = merged
            # a cache written before run keys were stored hashed all but its explainers: keep resuming it
            fp["run_key"] = old.get("run_key") or _hash_settings({k: v for k, v in old.items() if k != "explainers"})
        else:
            fp["run_key"] = _hash_settings({k: v for k, v in fp.items() if k not in _NOT_IN_RUN_KEY})
        atomic_write_json(path, fp)
        self._run_key = fp["run_key"]

    # ---------------------------------------------------------------- planning
    def stem(self, name: str, explainer: Any) -> str:
        """The cache stem of ``explainer`` (from its canonical spec, never from ``name`` as typed)."""
        keys = self.__dict__.setdefault("_stems", {})
        if id(explainer) not in keys:
            keys[id(explainer)] = (explainer, explainer_cache_key(name, explainer))
        return keys[id(explainer)][1]

    def shard_rows(self) -> Tuple[Tuple[int, int], ...]:
        n, size = len(self.inputs), self.settings.shard_size
        if not size:
            return shards(n, max(n, 1))
        b = self.batch_size
        return shards(n, -(-int(size) // b) * b)  # whole explainer batches: maps do not depend on sharding

    def unit(self, kind: str, check: Optional[Check], step: str, name: str, explainer: Any,
             rows: Tuple[int, int]) -> WorkUnit:
        stem = self.stem(name, explainer) if explainer is not None else ",".join(
            sorted(self.stem(n, e) for n, e in self.explainers.items()))
        cname = getattr(check, "name", "") if check is not None else ""
        config = check.config() if check is not None else None
        key = unit_key(self._run_key, kind, cname, config, step, stem, rows)
        return WorkUnit(kind, cname, step, name, rows, key, stem if explainer is not None else "")

    def context(self, check: Any, originals: Optional[Dict[str, Tensor]] = None) -> CheckContext:
        needs = set(getattr(check, "needs", ()))
        twin = self.settings.context.get("random_label_model") if TWIN_MODEL in needs else None

        def explain(explainer: Any, model: nn.Module, target: Any, name: Optional[str] = None) -> Tensor:
            name = name or next((n for n, e in self.explainers.items() if e is explainer), None) or \
                getattr(explainer, "name", None) or type(explainer).__name__
            return explain_maps(self.modality, explainer, model, self.inputs, target, batch_size=self.batch_size,
                                name=name, where=f"check {getattr(check, 'name', '?')!r}")

        return CheckContext(check=check, modality=self.modality, inputs=self.inputs, explainers=self.explainers,
                            seed=self.seed, device=self.settings.device, batch_size=self.batch_size,
                            progress=self.progress, cache_dir=self.settings.cache_dir,
                            originals=originals if ORIGINAL_MAPS in needs else None, twin_model=twin,
                            explain=explain, train_split=self.train_split)

    def train_split(self) -> Any:
        """The model's training split as the modality encodes it, loaded once per run and shared by the checks
        that retrain models."""
        if getattr(self, "_train_split", None) is None:
            self._train_split = self.modality.train_split(self.inputs)
        return self._train_split

    # ---------------------------------------------------------------- units
    def _explain_unit(self, name: str, explainer: Any, model: nn.Module, target: Any, check: str, step: str,
                      rows: slice) -> Tensor:
        where = f"check {check!r}, step {step!r}"
        try:
            return explain_maps(self.modality, explainer, model, self.inputs, target, batch_size=self.batch_size,
                                name=name, where=where, rows=rows)
        except ExplainerError as err:
            raise ExplainerError(f"{err}. Work finished before this is cached in {self._cache_path()}: fix the "
                                 "explainer and re-run with the same --out to resume") from (err.__cause__ or err)

    def _evaluate_unit(self, check: Any, ctx: CheckContext, name: str, maps: Tensor) -> Any:
        """An evaluation check's scoring of one explainer's maps (the call a distributed executor sends to a
        worker, as :meth:`_explain_unit` is for explainer calls)."""
        return check.evaluate_maps(ctx, name, maps)

    def original_maps(self, explainers: Optional[Dict[str, Any]] = None, check: Optional[Check] = None
                      ) -> Dict[str, Tensor]:
        """Maps of the trained model, once per explainer (``check``: one that transforms its explainers)."""
        variant = check.name if check is not None else ""
        items = [(n, e) for n, e in (explainers or self.explainers).items() if n not in self.skipped]
        units = [(self.unit("maps", check, ORIGINAL_STEP, n, e, rows), e) for n, e in items
                 for rows in self.shard_rows()]
        explainer_of = {u: e for u, e in units}
        bar = _progress(total=len(units), desc=f"original maps{' (' + variant + ')' if variant else ''}",
                        disable=not self.progress, leave=False)

        def compute(u: WorkUnit) -> Optional[Tensor]:
            m = compute_one(u)
            bar.update(1)  # after the unit (a distributed executor may call a unit whose maps are not back yet)
            return m

        def compute_one(u: WorkUnit) -> Optional[Tensor]:
            if u.explainer in self.skipped:
                return None
            path = u.cache_path(self._cache_path())
            cached = self.load_cached(path)
            if cached is not None:
                return cached
            try:
                m = self._explain_unit(u.explainer, explainer_of[u], self.model, self.target,
                                       variant or "original maps", "original", u.rows_slice)
            except NotApplicableError as err:
                self.log.skipped[u.explainer] = str(err)
                return None
            save_checked(path, m)
            return m

        with sharing.scope(e for _, e in items):  # the trained model's state: shared factors, freed after
            done = self.executor.map(compute, [u for u, _ in units])
        bar.close()
        maps: Dict[str, List[Tensor]] = {}
        for u, _ in units:
            if done[u] is not None and u.explainer not in self.skipped:
                maps.setdefault(u.explainer, []).append(done[u])
        return {n: torch.cat(parts) if len(parts) > 1 else parts[0] for n, parts in maps.items()}

    def score_pair(self, ref: Tensor, maps: Tensor, rows: slice) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
        """Per-sample scores of every metric between two sets of maps of rows ``rows`` (absolute).

        Metrics run on at most :data:`SCORE_CHUNK_ROWS` rows at a time: their temporaries (the rank sort's int64
        keys, SSIM windows, HOG cells) are tens of bytes per map element, so scoring 10,000 maps at once would
        need gigabytes. Every metric is per row, so chunking changes no score (tested bit for bit); the undefined
        reasons are read once over all rows, as before."""
        scores, reasons = {}, {}
        start, n = rows.start or 0, ref.shape[0]
        chunks = [(i, min(i + SCORE_CHUNK_ROWS, n)) for i in range(0, max(n, 1), SCORE_CHUNK_ROWS)]
        for mname, metric in self.metrics.items():
            parts = [self.modality.compare(metric, ref[a:b], maps[a:b], self.inputs, rows=slice(start + a, start + b))
                     for a, b in chunks]
            s = parts[0] if len(parts) == 1 else torch.cat(parts)
            scores[mname] = s
            reasons[mname] = self.modality.undefined_reason(ref, maps, s, self.inputs, rows=rows)
        return scores, reasons

    def run_state_check(self, spec: Any, check: Any, originals: Dict[str, Tensor]) -> Dict[Tuple[str, str], Dict[str, Any]]:
        explainers, refs = self.explainers, originals
        if check.transforms_explainers:  # e.g. smooth MPRT compares smoothed maps
            explainers = {n: check.transform_explainer(e) for n, e in self.explainers.items()}
            refs = self.original_maps(explainers, check=check)
            self.log.variant_originals[spec.name] = refs
        ctx = self.context(check, refs)
        target = check.state_target(ctx)
        live = [n for n in explainers if n not in self.skipped and n in refs]
        # the explainers of the states (the originals keep theirs): e.g. another sampling seed (noise_ceiling)
        same, swap = getattr(check, "same_as_original", None), getattr(check, "state_explainer", None)
        reused = {n for n in live if same is not None and same(explainers[n])}
        if swap is not None:
            explainers = {n: swap(e) if n in live else e for n, e in explainers.items()}
        steps = check.planned_steps(ctx)
        rows_all = self.shard_rows()
        k = self.suite.figure_images
        self.log.steps[spec.name] = []
        out: Dict[Tuple[str, str], Dict[str, Any]] = {}
        total = len(steps) * len(live) * len(rows_all) if steps else None
        with _progress(total=total, desc=spec.name, disable=not self.progress, unit="map set") as bar:
            def units_of(step: str) -> List[WorkUnit]:
                return [self.unit("state", check, step, n, explainers[n], rows) for n in live for rows in rows_all]

            class _Plan(dict):  # units per step, planned when the step first appears
                def __missing__(plan, step):  # noqa: N805
                    plan[step] = units_of(step)
                    return plan[step]

            plan = _Plan()

            def on_state(state: Any) -> None:
                state.model.eval()
                self.log.steps[spec.name].append(state.step)
                if state.info:
                    self.log.state_info[f"{spec.name}/{state.step}"] = state.info
                plan[state.step]  # noqa: B018 - plan this step's units

            def compute(u: WorkUnit, state: Any) -> Dict[str, Any]:
                path = u.cache_path(self._cache_path())
                cached = self.load_cached(path)
                if cached is None:
                    bar.set_postfix_str(f"{u.step}: {u.explainer}")
                    rows = u.rows_slice
                    ref = refs[u.explainer][rows]
                    explainer = explainers[u.explainer]
                    if u.explainer in reused or (not getattr(explainer, "requires_model", True)
                                                 and target is self.target):
                        # a model-independent explainer (a control) explains the same inputs and target the same
                        # way in every state: its maps are the trained model's, computed once per run
                        maps = ref
                    else:
                        maps = self._explain_unit(u.explainer, explainer, state.model, target, spec.name, u.step,
                                                  rows)
                    scores, reasons = self.score_pair(ref, maps, rows)
                    first = max(0, min(k, u.rows[1]) - u.rows[0])
                    cached = {"scores": scores, "reasons": reasons, "examples": maps[:first].clone()}
                    save_checked(path, cached)
                bar.update(1)
                return cached

            # each state in its own sharing scope (closed even when a unit raises)
            with closing(sharing.per_state(check.model_states(ctx), [explainers[n] for n in live])) as states:
                done = self.executor.run_states(states, plan, compute, on_state=on_state)
        for step in self.log.steps[spec.name]:
            for name in live:
                parts = [done[u] for u in plan[step] if u.explainer == name]
                out.setdefault((spec.name, step), {})[name] = _join_parts(parts)
        return out

    def run_evaluation_check(self, spec: Any, check: Any, originals: Dict[str, Tensor]) -> Dict[Tuple[str, str], Dict[str, Any]]:
        """An evaluation check on the trained model's maps: per-input scores per step, one unit per explainer."""
        ctx = self.context(check, originals)
        live = [n for n in self.explainers if n not in self.skipped and n in originals]
        units = [self.unit("evaluation", check, "all", n, self.explainers[n], (0, len(self.inputs))) for n in live]
        bar = _progress(total=len(units), desc=spec.name, disable=not self.progress, leave=False)

        def compute(u: WorkUnit) -> Dict[str, Any]:
            path = u.cache_path(self._cache_path())
            per_step = self.load_cached(path)
            if per_step is None:
                name = u.explainer
                try:
                    ev = self._evaluate_unit(check, ctx, name, originals[name])
                except (NotApplicableError, ExplainerError):
                    raise
                except SanityCheckError as err:  # deliberate (e.g. a dataset the check cannot use): same type
                    try:
                        named = type(err)(f"check {spec.name!r} on explainer {name!r}: {err}")
                    except Exception:  # noqa: BLE001 - another constructor: as raised
                        raise err from None
                    raise named from err
                except Exception as err:  # noqa: BLE001 - named: which check on which explainer's maps
                    raise ExplainerError(
                        f"check {spec.name!r} failed on explainer {name!r} ({type(err).__name__}: {err}). Work "
                        f"finished before this is cached in {self._cache_path()}; re-run with the same --out to "
                        "resume") from err
                steps: Dict[str, Dict[str, Tensor]] = {}
                if ev.curve is not None:
                    for i in range(ev.curve.shape[1]):
                        steps[str(i)] = {ev.curve_metric: ev.curve[:, i].detach().to("cpu", torch.float64)}
                steps[ev.summary_step] = {m: v.detach().to("cpu", torch.float64) for m, v in ev.scores.items()}
                per_step = {"steps": steps, "notes": dict(ev.notes or {})}
                save_checked(path, per_step)
            bar.update(1)
            return per_step

        done = self.executor.map(compute, units)
        bar.close()
        out: Dict[Tuple[str, str], Dict[str, Any]] = {}
        steps: List[str] = []
        for u in units:
            per_step = done[u]
            if per_step["notes"]:
                self.log.state_info.setdefault(spec.name, {})[u.explainer] = per_step["notes"]
            for step, scores in per_step["steps"].items():
                if step not in steps:
                    steps.append(step)
                reasons = {m: (f"{int(torch.isnan(v).sum())} scores undefined (e.g. a constant map has no correlation)"
                               if torch.isnan(v).any() else None) for m, v in scores.items()}
                out.setdefault((spec.name, step), {})[u.explainer] = {"scores": scores, "reasons": reasons,
                                                                       "examples": None}
        self.log.steps[spec.name] = steps
        return out

    def run_audit_check(self, spec: Any, check: Any, originals: Dict[str, Tensor]) -> Dict[Tuple[str, str], Dict[str, Any]]:
        """An audit check over all explainers at once: one unit, its output cached whole."""
        unit = self.unit("audit", check, "all", "*", None, (0, len(self.inputs)))
        out: Dict[Tuple[str, str], Dict[str, Any]] = {}

        def compute(u: WorkUnit) -> Optional[Any]:
            path = u.cache_path(self._cache_path())
            cached = self.load_cached(path, weights_only=False)
            if cached is not None:
                return CheckOutput(**cached)
            try:
                result = check.evaluate(self.context(check, originals))
            except NotApplicableError as err:
                self.log.not_applicable[spec.name] = str(err)
                return None
            save_checked(path, dict(result.__dict__))
            return result

        result = self.executor.map(compute, [unit])[unit]
        if result is None:
            self.log.steps[spec.name] = []
            return out
        self.log.steps[spec.name] = list(result.steps)
        self.log.audits[spec.name] = result
        if result.notes:
            self.log.state_info[spec.name] = result.notes
        for (step, name), scores in result.scores.items():
            reasons = result.reasons.get((step, name), {})
            out.setdefault((spec.name, step), {})[name] = {
                "scores": scores, "reasons": {m: reasons.get(m) for m in scores}, "examples": None}
        return out

    #: how each kind of check (its ``unit``) runs, and the kind recorded in results.json
    RUNNERS = {"state": ("run_state_check", "randomization"), "explainer": ("run_evaluation_check", "evaluation"),
               "check": ("run_audit_check", "evaluation")}

    def run_checks(self, originals: Dict[str, Tensor]) -> Dict[Tuple[str, str], Dict[str, Any]]:
        results: Dict[Tuple[str, str], Dict[str, Any]] = {}
        for spec in self.check_specs:
            t0 = time.perf_counter()
            check = get_check(spec.name, **spec.params)
            method, kind = self.RUNNERS[check.unit]
            self.log.checks[spec.name] = check
            self.log.kinds[spec.name] = kind
            if check.unit != "state":
                self.log.directions[spec.name] = dict(check.higher_is_better)
            results.update(getattr(self, method)(spec, check, originals))
            self.log.timing[f"{spec.name}_seconds"] = time.perf_counter() - t0
        return results

    def originals_of(self, check: str, originals: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return self.log.variant_originals.get(check, originals)

    # ---------------------------------------------------------------- aggregate
    def aggregate(self, originals: Dict[str, Tensor],
                  scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Tuple[List[Record], List[Verdict]]:
        records: List[Record] = []
        verdicts: List[Verdict] = []
        everything = slice(0, len(self.inputs))
        for spec in self.check_specs:
            steps = self.log.steps.get(spec.name, [])
            evaluation = self.log.kinds.get(spec.name) == "evaluation"
            refs = self.originals_of(spec.name, originals)
            for name in self.explainers:
                if name in self.skipped or name not in refs:
                    continue
                per_metric_rows, keys = [], []
                if not evaluation:
                    # step 0: the original model compared with itself (1 where defined; shows constant originals)
                    ref = refs[name]
                    scores, reasons = self.score_pair(ref, ref, everything)
                    for mname in self.metrics:
                        per_metric_rows.append(scores[mname])
                        keys.append((mname, ORIGINAL_STEP, 0, reasons[mname]))
                for i, step in enumerate(steps, start=1):
                    entry = scored.get((spec.name, step), {}).get(name)
                    if entry is None:  # a check that audits only some explainers (e.g. the attention itself)
                        continue
                    for mname, values in entry["scores"].items():
                        per_metric_rows.append(values)
                        keys.append((mname, step, i, entry["reasons"].get(mname)))
                if not per_metric_rows or (not evaluation and len(keys) == len(self.metrics)):
                    continue
                summaries = _bootstrap_rows(per_metric_rows,
                                            seed_parts=(self.seed, "bootstrap", spec.name, bootstrap_label(name)))
                recs = [Record(name, spec.name, mname, step, idx, s.mean, s.ci_low, s.ci_high, s.n,
                               s.n_undefined, reason if s.n_undefined else None)
                        for (mname, step, idx, reason), s in zip(keys, summaries)]
                records.extend(recs)
                if spec.verdict is not None:
                    verdicts.append(decide(spec.verdict, name, spec.name, recs))
        # the noise rule (issue 14): only a suite with a noise_ceiling check changes any verdict
        ceilings, randomizations = split_noise_rule({s.name: self.log.checks[s.name] for s in self.check_specs
                                                     if s.name in self.log.checks})
        verdicts = apply_noise_ceiling(verdicts, records, ceilings, randomizations)
        return records, verdicts + self.audit_verdicts(records)

    def audit_verdicts(self, records: List[Record]) -> List[Verdict]:
        """The verdicts of audits that decide their own (:attr:`AuditCheck.decides`), from what results.json
        records of them (JSON-clean, as ``validate`` reads it back)."""
        out: List[Verdict] = []
        for spec in self.check_specs:
            check = self.log.checks.get(spec.name)
            if not getattr(check, "decides", False) or spec.name not in self.log.audits:
                continue
            out.extend(check.decide(RecordedAudit(
                spec.name, [r for r in records if r.check == spec.name],
                clean_json(list(self.log.audits[spec.name].summaries or [])),
                clean_json(dict(self.log.state_info.get(spec.name) or {})))))
        return out

    # ---------------------------------------------------------------- main
    def execute(self) -> Dict[str, Any]:
        try:
            return self._execute()
        finally:  # a distributed executor releases its workers (finished units are in the cache)
            if hasattr(self.executor, "close"):
                self.executor.close()

    def _evaluations_entry(self, explainer) -> Dict[str, Any]:
        """``{"evaluations_per_map": n}``: the model evaluations (forward passes; a forward+backward counts as
        one) one map of ``explainer`` costs on this run's inputs, for explainers that state it (issue 14)."""
        from ..explainers.costs import evaluations_per_map

        shape = getattr(self.x, "shape", None)
        if shape is None or not hasattr(explainer, "evaluations_per_map"):
            return {}
        try:
            n = evaluations_per_map(explainer, (1,) + tuple(shape[1:]), self.model)
        except SanityCheckError:
            return {}
        return {} if n is None else {"evaluations_per_map": n}

    def _execute(self) -> Dict[str, Any]:
        t_start = time.perf_counter()
        monitor = ResourceMonitor(self.settings.device)
        check_out_dir(self.out_dir)
        self.load_inputs()
        self.prepare_cache()
        t0 = time.perf_counter()
        originals = self.original_maps()
        self.log.timing["original_maps_seconds"] = time.perf_counter() - t0
        scored = self.run_checks(originals)
        records, verdicts = self.aggregate(originals, scored)
        self.log.timing["total_seconds"] = time.perf_counter() - t_start
        results = self.results_dict(records, verdicts, originals, scored)
        results["resources"] = {**monitor.report(), "batch_size": self.batch_choice.to_json()}
        if self.log.recomputed:
            results["cache_recomputed"] = list(self.log.recomputed)
        previous = self.previous_results()
        results = merge_results(previous, results) if previous else results
        if self.settings.figures:  # the example maps the figures draw: one file that results.json names
            from ..report.figure_maps import save_figure_maps
            from .figure_payload import collect

            results["files"] = {**(results.get("files") or {}),
                                "figure_maps": save_figure_maps(self.out_dir, **collect(self, originals, scored))}
        atomic_write_json(self.out_dir / "results.json", results)
        if self.settings.figures:
            files = self.write_figures(results)
            if previous and isinstance(previous.get("figures"), (list, dict)) and results.get("merged"):
                old = previous["figures"]
                files = ({**old, **files} if isinstance(old, dict) and isinstance(files, dict) else
                         list(dict.fromkeys([*old, *files])) if isinstance(old, list) and isinstance(files, list)
                         else files)
            results["figures"] = files
            atomic_write_json(self.out_dir / "results.json", results)
        return results

    def previous_results(self) -> Optional[Dict[str, Any]]:
        """The ``results.json`` an earlier run left in ``--out`` (merged with this run's, never silently replaced).
        One that cannot be read or is of another suite/seed/sample is kept as ``results.previous-<time>.json``."""
        path = self.out_dir / "results.json"
        if not path.exists():
            return None
        why = None
        try:
            doc = read_json(path)
        except (OSError, ValueError) as err:
            doc, why = None, f"unreadable ({err})"
        if doc is not None:
            same = isinstance(doc, dict) and all(doc.get(k) == v for k, v in (
                ("suite", self.suite.name), ("suite_sha256", self.suite.sha256), ("seed", self.seed)))
            same = same and (doc.get("dataset") or {}).get("n") == len(self.x)
            if same:
                return doc
            why = "of another suite, seed or sample"
        keep = self.out_dir / f"results.previous-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
        os.replace(path, keep)
        warnings.warn(f"{path} was {why}; kept as {keep} (not merged)", stacklevel=2)
        return None

    def write_figures(self, results: Dict[str, Any]) -> Dict[str, List[str]]:
        """Every figure, drawn from the documents just written (``results.json`` and the figure maps)."""
        from ..report.run_figures import write_figures

        return write_figures(self.out_dir, results)

    def per_sample(self, scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Any]:
        """Per-input scores {explainer: {check: {step: {metric: [...]}}}}: what ``validate`` re-runs and re-aggregates."""
        out: Dict[str, Any] = {}
        for (check, step), by_explainer in scored.items():
            for name, entry in by_explainer.items():
                out.setdefault(name, {}).setdefault(check, {})[step] = {
                    m: [None if v != v else round(float(v), 7) for v in s.tolist()] for m, s in entry["scores"].items()}
        return out

    def example_maps(self, originals: Dict[str, Tensor], scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Any]:
        """Input 0 and its maps in every state of every state check (float16): the leaderboard's thumbnails."""
        maps: Dict[str, Dict[str, Dict[str, Tensor]]] = {}
        for name in originals:
            per_check = {}
            for spec in self.check_specs:
                refs = self.originals_of(spec.name, originals)
                if self.log.kinds.get(spec.name) == "evaluation" or name not in refs:
                    continue
                steps = {ORIGINAL_STEP: refs[name]}
                for step in self.log.steps.get(spec.name, []):
                    entry = scored.get((spec.name, step), {}).get(name)
                    if entry is not None and entry["examples"] is not None and len(entry["examples"]):
                        steps[step] = entry["examples"]
                per_check[spec.name] = steps
            maps[name] = per_check
        return self.modality.example(self.inputs, maps)

    def _sample_unit_entry(self, check: str) -> Dict[str, str]:
        """``{"sample_unit": ...}`` for a check whose per-sample scores are not one per input (else nothing, so
        documents of input-scored checks are unchanged)."""
        unit = getattr(self.log.checks.get(check), "sample_unit", "inputs")
        return {} if unit == "inputs" else {"sample_unit": unit}

    def results_dict(self, records: List[Record], verdicts: List[Verdict], originals: Dict[str, Tensor],
                     scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Any]:
        model_info = dict(getattr(self.model, "sanitycheck_info", {}) or {})
        spec = getattr(self.model, "sanitycheck_spec", None)
        per_sample = self.per_sample(scored)
        from ..report.reliability import reliability_report

        summaries = [(c, step, m, hib) for c, d in self.log.directions.items() for m, hib in d.items()
                     for step in self.log.steps.get(c, []) if not step.isdigit()]
        reliability = reliability_report(per_sample, summaries) if summaries else None
        s = self.settings
        doc = {
            "schema_version": SCHEMA_VERSION,
            "suite": self.suite.name,
            "suite_version": self.suite.version,
            "suite_sha256": self.suite.sha256,
            "suite_description": self.suite.description,
            "suite_reference": self.suite.reference,
            "input_kind": self.suite.input_kind,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seed": self.seed,
            "model": {"name": self.model_name, "spec": asdict(spec) if spec is not None else None,
                      "weights_sha256": self.weights_sha256(),
                      "reference_weights": model_info.get("reference"),
                      "info": {k: str(v) if isinstance(v, Path) else v for k, v in model_info.items()},
                      "accuracy_on_audited_sample": self.inputs.accuracy},
            "dataset": {"name": s.dataset_name or self.suite.dataset["name"], "split": self.suite.dataset.get("split"),
                        "n": len(self.x), "checksum": getattr(self.dataset, "checksum", None),
                        "input_shape": list(self.x.shape[1:]),
                        # how the loader changed the files (image_folder: 16-bit, alpha, palette, ...); data part
                        **{k: v for k, v in (getattr(self.dataset, "meta", None) or {}).items()
                           if k in ("conversions", "truncation", "split_rule") and v}},
            "target": {"rule": self.suite.target, "description": "class logit of the "
                       + ("trained model's predicted class" if self.suite.target == "predicted" else "true label")
                       + ", the same class in every model state"},
            "postprocessing": {
                "channel_reduction": {k: getattr(e, "channel_reduction", None) for k, e in self.explainers.items()},
                "float32_storage": "maps are stored as float32; a float64 map whose largest |value| lies outside "
                                   "float32's normal range is first multiplied by an exact power of two (ranks and "
                                   "ratios kept); maps already subnormal in float32 are refused"},
            "versions": package_versions(),
            "git_hash": git_hash(),
            "explainers": {k: {"class": f"{type(e).__module__}.{type(e).__qualname__}", "config": e.config(),
                               "code_hash": e.code_hash(), "requires_model": e.requires_model,
                               **self._evaluations_entry(e)}
                           for k, e in self.explainers.items()},
            "skipped": [{"explainer": k, "reason": v} for k, v in self.skipped.items()],
            "metrics": {k: asdict(m.info) for k, m in self.metrics.items()},
            "checks": {c.name: {"kind": self.log.kinds.get(c.name, "randomization"), "params": c.params,
                                "higher_is_better": self.log.directions.get(c.name),
                                "verdict_rule": asdict(c.verdict) if c.verdict is not None else None,
                                "steps": self.log.steps.get(c.name, []),
                                **self._sample_unit_entry(c.name)} for c in self.check_specs},
            "state_info": self.log.state_info,
            "bootstrap": {"resamples": 2000, "confidence": 0.95, "method": "percentile"},
            "timing": self.log.timing,
            "records": records_to_json(records),
            "verdicts": verdicts_to_json(verdicts),
            "per_sample": per_sample,
            "reliability": reliability,
            "examples": self.example_maps(originals, scored),
        }
        for name, check in self.log.checks.items():
            if check.unit == "check" and name in doc["checks"]:  # audits describe themselves
                doc["checks"][name]["description"] = check.description
        self.modality.describe(doc, self.inputs, self.settings)
        summaries = {name: out.summaries for name, out in self.log.audits.items() if out.summaries}
        if summaries:  # statistics of audits that are not means of per-input scores (e.g. F1 with CIs)
            doc.setdefault("summaries", {}).update(summaries)
        if self.log.not_applicable:
            doc["not_applicable"] = dict(self.log.not_applicable)
        return clean_json(doc)


def _bootstrap_rows(rows: List[Tensor], *, seed_parts: tuple) -> List[Any]:
    """:func:`bootstrap_ci_many` of rows that may differ in length (an audit scoring latents of dictionaries of
    several sizes): one call per length, summaries in the rows' order. A row's interval depends only on its own
    values and the seed, so grouping changes no number."""
    lengths = {int(r.numel()) for r in rows}
    if len(lengths) == 1:
        return bootstrap_ci_many(torch.stack(rows), seed_parts=seed_parts)
    out: List[Any] = [None] * len(rows)
    for n in sorted(lengths):
        idx = [i for i, r in enumerate(rows) if int(r.numel()) == n]
        for i, s in zip(idx, bootstrap_ci_many(torch.stack([rows[i] for i in idx]), seed_parts=seed_parts)):
            out[i] = s
    return out


def _join_parts(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One state unit's result from the results of its shards (concatenated in row order)."""
    if len(parts) == 1:
        return parts[0]
    scores = {m: torch.cat([p["scores"][m] for p in parts]) for m in parts[0]["scores"]}
    reasons = {}
    for m in scores:
        texts = [p["reasons"].get(m) for p in parts if p["reasons"].get(m)]
        reasons[m] = "; ".join(texts) if texts else None
    examples = [p["examples"] for p in parts if p["examples"] is not None and len(p["examples"])]
    return {"scores": scores, "reasons": reasons, "examples": torch.cat(examples) if examples else None}


def _explainer_signature(info: Any) -> Any:
    if not isinstance(info, dict):
        return None
    return (info.get("class"), info.get("code_hash"), json.dumps(info.get("config"), sort_keys=True, default=str))


def merge_results(previous: Dict[str, Any], doc: Dict[str, Any]) -> Dict[str, Any]:
    """``doc`` (this run) with what an earlier run into the same ``--out`` computed and this run did not: the
    results of (explainer, check) pairs outside this run, so that a rerun with other explainers or checks keeps
    both. Pairs this run computed come from this run; an explainer whose code or config changed since keeps
    only this run's results. What was carried over is listed under ``merged``."""
    explainers, checks = doc.get("explainers") or {}, doc.get("checks") or {}
    old_explainers, old_checks = previous.get("explainers") or {}, previous.get("checks") or {}

    def carried(e: str, c: str) -> bool:
        if c not in old_checks or e not in old_explainers:
            return False
        if e in explainers and c in checks:
            return False  # this run computed it
        return e not in explainers or _explainer_signature(old_explainers[e]) == _explainer_signature(explainers[e])

    pairs = sorted({(r["explainer"], r["check"]) for r in previous.get("records") or []
                    if isinstance(r, dict) and carried(r.get("explainer"), r.get("check"))})
    if not pairs:
        return doc
    keep = set(pairs)
    out = _merge(previous, doc, pairs, keep, explainers, checks, old_explainers, old_checks)
    return _noise_rule_after_merge(out)


def _noise_rule_after_merge(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The noise rule over a merged document: a noise ceiling computed by one run and a randomization by
    another meet only here. Every verdict of a randomization check is decided again from the merged records by
    its recorded rule, then the rule applied, exactly as ``validate`` recomputes them. A document without a
    noise-ceiling check is returned as it is."""
    from ..checks.base import get_check
    from ..checks.sampling import split_noise_rule
    from ..results import VerdictRule

    checks = {}
    for name, info in (doc.get("checks") or {}).items():
        try:
            checks[name] = get_check(name, **(info.get("params") or {}))
        except SanityCheckError:
            continue
    ceilings, randomizations = split_noise_rule(checks)
    if not ceilings:
        return doc
    records = [Record(**r) for r in doc.get("records") or []]
    fresh = []
    for v in doc.get("verdicts") or []:
        rule = (doc["checks"].get(v["check"]) or {}).get("verdict_rule")
        if v["check"] not in randomizations or not rule or "sequential" in v:
            fresh.append(v)
            continue
        recs = [r for r in records if r.explainer == v["explainer"] and r.check == v["check"]]
        base = decide(VerdictRule(**rule), v["explainer"], v["check"], recs)
        fresh.append(verdicts_to_json(apply_noise_ceiling([base], records, ceilings, randomizations))[0])
    return {**doc, "verdicts": fresh}


def _merge(previous: Dict[str, Any], doc: Dict[str, Any], pairs: List[Tuple[str, str]], keep: set,
           explainers: Dict[str, Any], checks: Dict[str, Any], old_explainers: Dict[str, Any],
           old_checks: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(doc)
    out["records"] = list(doc.get("records") or []) + [
        r for r in previous.get("records") or [] if (r.get("explainer"), r.get("check")) in keep]
    out["verdicts"] = list(doc.get("verdicts") or []) + [
        v for v in previous.get("verdicts") or [] if (v.get("explainer"), v.get("check")) in keep]
    names = {e for e, _ in pairs}
    out["explainers"] = {**explainers, **{e: old_explainers[e] for e in sorted(names) if e not in explainers}}
    out["checks"] = {**checks, **{c: old_checks[c] for _, c in pairs if c not in checks}}
    out["skipped"] = list(doc.get("skipped") or []) + [
        s for s in previous.get("skipped") or [] if s.get("explainer") not in explainers]
    per_sample = {e: dict(v) for e, v in (doc.get("per_sample") or {}).items()}
    for e, c in pairs:
        old = ((previous.get("per_sample") or {}).get(e) or {}).get(c)
        if old is not None:
            per_sample.setdefault(e, {})[c] = old
    out["per_sample"] = per_sample
    examples = dict(doc.get("examples") or {})
    if "explainers" in examples:
        ex = {e: dict(v) for e, v in examples["explainers"].items()}
        old_ex = (previous.get("examples") or {}).get("explainers") or {}
        for e, c in pairs:
            if c in (old_ex.get(e) or {}):
                ex.setdefault(e, {})[c] = old_ex[e][c]
        examples["explainers"] = ex
        out["examples"] = examples
    post = dict(doc.get("postprocessing") or {})
    if isinstance(post.get("channel_reduction"), dict):
        old_cr = (previous.get("postprocessing") or {}).get("channel_reduction") or {}
        post["channel_reduction"] = {**post["channel_reduction"],
                                     **{e: old_cr.get(e) for e in names if e not in explainers}}
        out["postprocessing"] = post
    state_info = dict(doc.get("state_info") or {})
    new_checks = {c for _, c in pairs if c not in checks}
    for key, value in (previous.get("state_info") or {}).items():
        check = key.split("/", 1)[0]
        if key not in state_info and check in new_checks:
            state_info[key] = value
        elif isinstance(state_info.get(key), dict) and isinstance(value, dict) and "/" not in key:
            state_info[key] = {**{e: v for e, v in value.items() if e in names and (e, check) in keep}, **state_info[key]}
    out["state_info"] = state_info
    for key in ("summaries", "not_applicable"):  # text suites: per check
        old = previous.get(key) or {}
        extra = {c: v for c, v in old.items() if c in new_checks and c not in (doc.get(key) or {})}
        if extra:
            out[key] = {**(doc.get(key) or {}), **extra}
    if doc.get("input_kind") != "text":  # reliability ranks methods per image: over the merged methods
        from ..report.reliability import reliability_report

        summaries = [(c, step, m, hib) for c, info in out["checks"].items()
                     for m, hib in (info.get("higher_is_better") or {}).items()
                     for step in info.get("steps") or [] if info.get("kind") == "evaluation" and not step.isdigit()]
        out["reliability"] = clean_json(reliability_report(per_sample, summaries)) if summaries else None
    out["merged"] = {"note": "results of an earlier run into this --out (same suite, seed and sample) that this run "
                             "did not recompute", "created": previous.get("created"),
                     "carried": [f"{e}/{c}" for e, c in pairs]}
    return out
