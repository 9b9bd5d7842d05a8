"""Executes a suite: explanations of each model state computed once and shared by every metric.

Data flow (see DESIGN.md): dataset -> (x, target); model -> original state, then each
check's states, lazily, one at a time; explainer x state -> maps (batched); every
metric compares those maps with the original model's maps; per-sample scores are
cached atomically in ``<out>/cache`` as each (check, step, explainer) finishes, so an
interrupted run resumes where it stopped; aggregates carry bootstrap CIs; verdicts
apply the suite's thresholds; ``results.json`` and figures are written last.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import json
import os
import re
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .checks.base import Check, get_check
from .errors import ConfigError, NotApplicableError, SanityCheckError
from .explainers import Explainer, check_eval_mode, get_explainer
from .explainers.base import ExplainerError, ModelWatch, call_explainer
from .io import CorruptCacheError, atomic_write_json, load_checked, read_json, save_checked
from .registry import METRICS
from .results import (ORIGINAL_STEP, SCHEMA_VERSION, Record, Verdict, clean_json, decide, encode_array, git_hash,
                      package_versions, records_to_json, verdicts_to_json)
from .stats import bootstrap_ci_many
from .suites import Suite
from .targets import ClassTarget


def _progress(iterable=None, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


_F32 = torch.finfo(torch.float32)


def to_float32_maps(maps: Tensor, name: str, where: str = "") -> Tuple[Tensor, int]:
    """``(maps as float32 on the CPU, number of maps rescaled)``.

    A float64 map whose largest |value| lies outside float32's normal range (below ~1.2e-38 or above ~3.4e38) is
    multiplied by an exact power of two that brings its largest |value| into [1, 2): order, signs and ratios are
    kept, so a scale factor cannot change a rank-based verdict (casting would flush it to zeros or infinities).
    Maps in the normal range are never rescaled (infidelity and other metrics depend on scale). A map of a
    narrower type whose non-zero values are all below the float32 normal range has lost its precision already
    and is refused."""
    at = f" ({where})" if where else ""
    maps = maps.detach()
    flat = maps.reshape(maps.shape[0], -1) if maps.ndim > 1 else maps.reshape(1, -1)
    rescaled = 0
    if maps.dtype == torch.float64:
        amax = flat.abs().amax(1) if flat.shape[1] else torch.zeros(flat.shape[0], dtype=torch.float64)
        out = (amax > 0) & ((amax < _F32.tiny) | (amax > _F32.max))
        if out.any():
            exp = -torch.floor(torch.log2(amax[out]))  # 2**exp * amax lies in [1, 2)
            half = torch.floor(exp / 2)  # two exact steps: 2**exp alone overflows for float64 subnormals
            view = (-1,) + (1,) * (maps.ndim - 1)
            maps = maps.clone()
            maps[out] = maps[out] * torch.pow(2.0, half).reshape(view) * torch.pow(2.0, exp - half).reshape(view)
            rescaled = int(out.sum())
        return maps.to("cpu", torch.float32), rescaled
    maps = maps.to("cpu", torch.float32)
    amax = maps.reshape(maps.shape[0], -1).abs().amax(1) if maps.numel() else torch.zeros(0)
    tiny = (amax > 0) & (amax < _F32.tiny)
    if tiny.any():
        bad = tiny.nonzero().flatten().tolist()
        raise ExplainerError(
            f"explainer {name!r} returned maps whose non-zero values are all subnormal in float32 (largest |value| "
            f"{float(amax[tiny].max()):.3g} < {_F32.tiny:.3g}) for samples {bad[:10]} of the batch{at}: their "
            "ranking is already lost to rounding. Return unscaled maps, or float64 maps (rescaled here by an exact "
            "power of two)")
    return maps, rescaled


def explain_batched(explainer: Explainer, model: nn.Module, x: Tensor, target: ClassTarget,
                    batch_size: int, name: Optional[str] = None, where: str = "") -> Tensor:
    """Maps for all of ``x``, ``batch_size`` inputs per explainer call, on the model's device, as float32.

    Each call is checked (:func:`~sanitycheck.explainers.base.call_explainer`): an exception, an output that is
    not a real floating tensor, or a change of the model's weights or mode is an error naming the explainer,
    ``where`` (check and step) and the inputs of the batch. Maps outside float32's range are rescaled by a
    power of two (:func:`to_float32_maps`)."""
    name = name or getattr(explainer, "name", None) or type(explainer).__name__
    device = next((p.device for p in model.parameters()), x.device)
    out, rescaled = [], 0
    watch = ModelWatch(model)  # weights checksum and train/eval flags, verified after every call
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        xb = x[sl].to(device)
        stop = min(start + batch_size, x.shape[0])
        loc = ", ".join(p for p in (where, f"inputs {start}..{stop - 1}") if p)
        maps = call_explainer(explainer, name, loc, model, xb, target.select(sl), watch=watch)
        maps, n = to_float32_maps(maps, name, loc)
        rescaled += n
        out.append(maps)
    if rescaled:
        warnings.warn(f"explainer {name!r}: {rescaled} float64 maps outside float32's normal range were rescaled "
                      f"by an exact power of two ({where or 'maps'}); ranks and ratios are unchanged", stacklevel=2)
    return torch.cat(out)


def bootstrap_label(name: str) -> str:
    """The explainer's part of its bootstrap seed: the attribute of an import path (``../m.py:fn`` -> ``fn``), so
    that absolute, relative and ``../`` spellings of one explainer get the same CIs; a plain name is unchanged."""
    return name.rpartition(":")[2] if ":" in name else name


def _slug(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``_.-``), at most 40 characters, never empty."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:40] or "x"


def _path_part(text: str) -> str:
    """``text`` as one path component: kept when already safe, else its slug and a hash (never ``..``, ``/``)."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,80}", text):
        return text
    return f"{_slug(text)}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def explainer_cache_key(name: str, explainer: Any) -> str:
    """The cache file stem of an explainer: a readable slug of its name (last part of an import path) and
    16 hex digits of SHA-256 over its canonical spec — class, code hash and config (for a file explainer the
    module name, which holds the file's content hash) — never the raw name the user typed."""
    code_hash = getattr(explainer, "code_hash", None)
    config = getattr(explainer, "config", None)
    canon = {"class": f"{type(explainer).__module__}.{type(explainer).__qualname__}",
             "code_hash": code_hash() if callable(code_hash) else None,
             "config": config() if callable(config) else repr(explainer)}
    digest = hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest()[:16]
    base = name.rpartition(":")[2] if ":" in name else name
    return f"{_slug(base.rpartition('/')[2])}-{digest}"


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


def _accepted(fn: Any, **offered: Any) -> Dict[str, Any]:
    """The keyword arguments of ``offered`` that ``fn`` takes (optional hooks of checks and families,
    e.g. ``dataset=`` for checks that need the run's ground truth)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in offered.items() if k in params}


def _undefined_reason(ref: Tensor, other: Tensor, scores: Tensor) -> Optional[str]:
    nan = torch.isnan(scores)
    if not nan.any():
        return None
    flat_r, flat_o = ref.flatten(1), other.flatten(1)
    const_r = (flat_r.amax(1) == flat_r.amin(1)) & nan
    const_o = (flat_o.amax(1) == flat_o.amin(1)) & nan
    parts = []
    if const_o.any():
        zero = int(((flat_o.abs().amax(1) == 0) & const_o).sum())
        parts.append(f"{int(const_o.sum())} constant maps in this state" + (f" ({zero} all zero)" if zero else ""))
    if const_r.any():
        parts.append(f"{int(const_r.sum())} constant maps of the original model")
    other_nan = int((nan & ~const_r & ~const_o).sum())
    if other_nan:
        parts.append(f"{other_nan} scores undefined for another reason")
    return "; ".join(parts) + " (a constant map has no ranks and no [0,1] normalization)"


class AuditRun:
    """One execution of a suite. Use :func:`sanitycheck.engine.run_suite` unless you need the pieces."""

    def __init__(self, suite: Suite, *, out_dir: Path, explainers: Optional[Sequence[str]] = None,
                 n: Optional[int] = None, seed: Optional[int] = None, device: str = "cpu",
                 batch_size: Optional[int] = None, progress: bool = True, cache_dir: Optional[str] = None,
                 model: Optional[nn.Module] = None, model_name: Optional[str] = None,
                 dataset: Any = None, explainer_objects: Optional[Dict[str, Explainer]] = None,
                 figures: bool = True, checks: Optional[Sequence[str]] = None,
                 context: Optional[Dict[str, Any]] = None, indices: Optional[Sequence[int]] = None,
                 dataset_name: Optional[str] = None, data_root: Optional[str] = None,
                 model_params: Optional[Dict[str, Any]] = None):
        self.suite = suite
        self.model_params = dict(model_params or {})  # overrides of the suite's model parameters
        self.out_dir = Path(out_dir)
        self.seed = suite.seed if seed is None else int(seed)
        self.n = n or suite.dataset.get("n")  # None: the whole dataset
        self.device = device
        self.batch_size = batch_size or suite.batch_size
        self.progress = progress
        self.cache_dir = cache_dir
        self.figures = figures
        self.indices = list(indices) if indices is not None else None  # a subset of the first n images
        self.context = dict(context or {})  # extra check context, e.g. random_label_model=
        self._model, self._model_name, self._dataset = model, model_name, dataset
        self.dataset_name, self.data_root = dataset_name, data_root  # overrides of the suite's dataset
        # explainers: from the suite, filtered by name, or given as objects (plugin / submissions)
        if explainer_objects:
            self.explainers = dict(explainer_objects)
        else:
            # names outside the suite (registered, or import paths) run with their default parameters
            wanted = list(explainers) if explainers else suite.explainer_names
            params = dict(suite.explainers)
            built = {name: get_explainer(name, **params.get(name, {})) for name in wanted}
            self.explainers = built
        self.check_specs = [c for c in suite.checks if not checks or c.name in checks]
        if checks:
            missing = set(checks) - {c.name for c in suite.checks}
            if missing:
                raise ConfigError(f"checks {sorted(missing)} are not in suite {suite.name!r} "
                                  f"(it has {[c.name for c in suite.checks]})")
        self.metrics = {name: METRICS.get(name) for name in suite.metrics}
        self.skipped: Dict[str, str] = {}
        self.state_info: Dict[str, Dict[str, Any]] = {}
        self.steps: Dict[str, List[str]] = {}
        self.check_kinds: Dict[str, str] = {}
        self.check_directions: Dict[str, Dict[str, bool]] = {}
        self.families: Dict[str, Any] = {}
        self.variant_originals: Dict[str, Dict[str, Tensor]] = {}
        self.examples: Dict[Tuple[str, str, str], Tensor] = {}
        self.timing: Dict[str, float] = {}
        self.recomputed: List[str] = []  # cache files found corrupt and recomputed
        self._where: Tuple[Optional[str], str] = (None, "")

    # ---------------------------------------------------------------- inputs
    def load_inputs(self) -> None:
        from .data import load_dataset
        from .models import load_model

        t0 = time.perf_counter()
        ds_cfg = self.suite.dataset
        if self._dataset is None:
            if self.dataset_name and self.dataset_name != ds_cfg["name"]:
                params = {}  # another dataset: the suite's loader parameters do not apply
            else:
                params = dict(ds_cfg.get("params", {}))
                if "split" in ds_cfg:
                    params.setdefault("split", ds_cfg["split"])
            if self.data_root:
                params["root"] = self.data_root
            self._dataset = load_dataset(self.dataset_name or ds_cfg["name"], **params)
        self.dataset = self._dataset.head(self.n or len(self._dataset))
        if self.indices is not None:
            from .data import ImageDataset

            idx = torch.tensor(self.indices, dtype=torch.long)
            self.dataset = ImageDataset(self.dataset.name, self.dataset.images[idx], self.dataset.labels[idx],
                                        self.dataset.classes, self.dataset.source, self.dataset.checksum,
                                        {**self.dataset.meta, "indices": self.indices})
        if self._model is None:
            name = self._model_name or self.suite.model["name"]
            params = dict(self.suite.model.get("params", {})) if name == self.suite.model["name"] else {}
            params.update(self.model_params)
            from .registry import MODELS

            offered = {"seed": params.pop("seed", 0), "device": self.device, "progress": self.progress,
                       "cache_dir": self.cache_dir}
            accepted = inspect.signature(MODELS.get(name)).parameters
            offered = {k: v for k, v in offered.items() if k in accepted}  # torchvision adapters keep no cache
            self._model = load_model(name, **offered, **params)
        self.model = self._model
        check_eval_mode(self.model)
        self.model_name = self._model_name or self.suite.model["name"]
        self.x = self.dataset.images.to(torch.float32)
        with torch.no_grad():
            logits = torch.cat([self.model(self.x[i:i + self.batch_size].to(self.device)).cpu()
                                for i in range(0, len(self.x), self.batch_size)])
        self.logits = logits
        self.predicted = logits.argmax(1)
        classes = self.predicted if self.suite.target == "predicted" else self.dataset.labels
        self.target = ClassTarget(classes)
        self.accuracy_on_sample = float((self.predicted == self.dataset.labels).float().mean())
        self.timing["load_seconds"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- cache
    def weights_sha256(self) -> str:
        """sha256 of the audited model's state_dict: the one its loader recorded (of the weights as loaded, before
        a text run's float64 cast), else computed once here; the run cache's key and the results' record."""
        if getattr(self, "_weights_sha256", None) is None:
            from .models.weights import state_dict_sha256

            info = getattr(self.model, "sanitycheck_info", {}) or {}
            self._weights_sha256 = info.get("weights_sha256") or state_dict_sha256(self.model)
        return self._weights_sha256

    def fingerprint(self) -> Dict[str, Any]:
        return clean_json({
            "suite": self.suite.name, "suite_version": self.suite.version, "suite_sha256": self.suite.sha256,
            "seed": self.seed, "n": len(self.x), "indices": self.indices, "model": self.model_name,
            "dataset": self.dataset_name or self.suite.dataset["name"],
            # the weights themselves (state_dict sha256): other weights never resume this cache
            "model_key": self.weights_sha256(),
            "data_sha256": hashlib.sha256(self.x.numpy().tobytes()).hexdigest()[:16],
            "explainers": {k: [e.code_hash(), json.dumps(e.config(), sort_keys=True, default=str)]
                           for k, e in self.explainers.items()},
            "metrics": sorted(self.metrics), "target": self.suite.target, "model_params": self.model_params,
        })

    def _cache_path(self, *parts: str) -> Path:
        """``<out>/cache/<parts>``; every part is one safe path component (no ``/``, ``..`` or absolute path)."""
        return self.out_dir / "cache" / Path(*(_path_part(str(p)) for p in parts))

    def unit_file(self, name: str, explainer: Any) -> str:
        """The cache file name of ``explainer``'s results: from its canonical spec, not from ``name`` as typed
        (an absolute or ``../`` path would otherwise write outside ``--out`` or share one file across steps)."""
        keys = self.__dict__.setdefault("_unit_files", {})
        if id(explainer) not in keys:
            keys[id(explainer)] = (explainer, explainer_cache_key(name, explainer) + ".pt")
        return keys[id(explainer)][1]

    def load_cached(self, path: Path, weights_only: bool = True) -> Any:
        """The checked content of cache file ``path``, or None when it is missing or corrupt (a corrupt file is
        named in a warning, removed and recomputed)."""
        if not path.exists():
            return None
        try:
            return load_checked(path, weights_only=weights_only)
        except CorruptCacheError as err:
            warnings.warn(f"cache file {path} is corrupt: {err}; recomputing it", stacklevel=2)
            self.recomputed.append(str(path.relative_to(self.out_dir)))
            try:
                path.unlink()
            except OSError:
                pass
            return None

    def explain_unit(self, name: str, explainer: Any, model: nn.Module, target: Any, check: str, step: str) -> Tensor:
        """:meth:`explain` of one cache unit; an explainer's failure names the explainer, check, step and inputs."""
        self._where = (name, f"check {check!r}, step {step!r}")
        try:
            return self.explain(explainer, model, target)
        except ExplainerError as err:
            raise ExplainerError(f"{err}. Work finished before this is cached in {self._cache_path()}: fix the "
                                 "explainer and re-run with the same --out to resume") from (err.__cause__ or err)
        finally:
            self._where = (None, "")

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
            shared = {k: v for k, v in old.items() if k != "explainers"}
            if shared != {k: v for k, v in fp.items() if k != "explainers"}:
                raise ConfigError(
                    f"{self.out_dir} holds a run with different settings "
                    f"({', '.join(k for k in shared if shared[k] != fp.get(k))} differ); "
                    "use another --out directory to start a new run")
            # cache files are keyed by each explainer's code and parameters: changed ones are recomputed
            merged = dict(old.get("explainers", {}))
            merged.update(fp["explainers"])
            fp["explainers"] = merged
        atomic_write_json(path, fp)

    # ---------------------------------------------------------------- work
    def original_maps(self, explainers: Optional[Dict[str, Explainer]] = None, variant: str = "") -> Dict[str, Tensor]:
        """Maps of the trained model, once per explainer (``variant``: a check that transforms explainers)."""
        maps: Dict[str, Tensor] = {}
        items = [(n, e) for n, e in (explainers or self.explainers).items() if n not in self.skipped]
        bar = _progress(items, desc=f"original maps{' (' + variant + ')' if variant else ''}",
                        disable=not self.progress, leave=False)
        for name, explainer in bar:
            path = self._cache_path("original", *([variant] if variant else []), self.unit_file(name, explainer))
            cached = self.load_cached(path)
            if cached is not None:
                maps[name] = cached
                continue
            try:
                m = self.explain_unit(name, explainer, self.model, self.target, variant or "original maps", "original")
            except NotApplicableError as err:
                self.skipped[name] = str(err)
                continue
            save_checked(path, m)
            maps[name] = m
        return maps

    def is_evaluation(self, check: Any) -> bool:
        from .metrics.base import FaithfulnessFamily

        return isinstance(check, FaithfulnessFamily)

    def evaluate_family(self, spec: Any, family: Any, originals: Dict[str, Tensor]) -> Dict[Tuple[str, str], Dict[str, Any]]:
        """A faithfulness family on the trained model's maps: per-image scores per step, cached per explainer."""
        out: Dict[Tuple[str, str], Dict[str, Any]] = {}
        steps: List[str] = []
        live = [n for n in self.explainers if n not in self.skipped]
        for name in _progress(live, desc=spec.name, disable=not self.progress, leave=False):
            path = self._cache_path("scores", spec.name, self.unit_file(name, self.explainers[name]))
            per_step = self.load_cached(path)
            if per_step is None:
                kwargs = _accepted(family.evaluate, explainer=self.explainers[name], dataset=self.dataset)
                try:
                    ev = family.evaluate(self.model, self.x.to(self.device), self.target,
                                         originals[name].to(self.device), seed=self.seed, **kwargs)
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
                per_step = {}
                if ev.curve is not None:
                    for i in range(ev.curve.shape[1]):
                        per_step[str(i)] = {ev.curve_metric: ev.curve[:, i].detach().to("cpu", torch.float64)}
                per_step[ev.summary_step] = {k: v.detach().to("cpu", torch.float64) for k, v in ev.scores.items()}
                per_step = {"steps": per_step, "notes": dict(ev.notes or {})}
                save_checked(path, per_step)
            if per_step["notes"]:
                self.state_info.setdefault(spec.name, {})[name] = per_step["notes"]
            for step, scores in per_step["steps"].items():
                if step not in steps:
                    steps.append(step)
                reasons = {m: (f"{int(torch.isnan(v).sum())} scores undefined (e.g. a constant map has no correlation)"
                               if torch.isnan(v).any() else None) for m, v in scores.items()}
                out.setdefault((spec.name, step), {})[name] = {"scores": scores, "reasons": reasons, "examples": None}
        self.steps[spec.name] = steps
        return out

    def score_state(self, check: str, step: str, model: nn.Module, originals: Dict[str, Tensor], bar,
                    explainers: Optional[Dict[str, Explainer]] = None, target: Any = None) -> Dict[str, Dict[str, Any]]:
        out = {}
        k = self.suite.figure_images
        target = self.target if target is None else target
        for name, explainer in (explainers or self.explainers).items():
            if name in self.skipped or name not in originals:
                continue
            path = self._cache_path("scores", check, step, self.unit_file(name, explainer))
            cached = self.load_cached(path)
            if cached is not None:
                out[name] = cached
            else:
                bar.set_postfix_str(f"{step}: {name}")
                ref = originals[name]
                if not getattr(explainer, "requires_model", True) and target is self.target:
                    # a model-independent explainer (a control) explains the same inputs and target the same way
                    # in every state: its maps are the trained model's, computed once per run
                    maps = ref
                else:
                    maps = self.explain_unit(name, explainer, model, target, check, step)
                scores, reasons = {}, {}
                for mname, metric in self.metrics.items():
                    s = self.compare(metric, ref, maps)
                    scores[mname], reasons[mname] = s, self.undefined_reason(ref, maps, s)
                out[name] = {"scores": scores, "reasons": reasons, "examples": maps[:k].clone()}
                save_checked(path, out[name])
            bar.update(1)
        return out

    def run_checks(self, originals: Dict[str, Tensor]) -> Dict[Tuple[str, str], Dict[str, Any]]:
        results: Dict[Tuple[str, str], Dict[str, Any]] = {}
        context = {"cache_dir": self.cache_dir, "device": self.device, "progress": self.progress, **self.context}
        example = self.example_input()
        for spec in self.check_specs:
            t0 = time.perf_counter()
            check: Check = get_check(spec.name, **spec.params)
            if self.run_special_check(spec, check, originals, results):
                self.timing[f"{spec.name}_seconds"] = time.perf_counter() - t0
                continue
            if self.is_evaluation(check):
                self.check_kinds[spec.name] = "evaluation"
                self.check_directions[spec.name] = dict(check.higher_is_better)
                self.families[spec.name] = check
                results.update(self.evaluate_family(spec, check, originals))
                self.timing[f"{spec.name}_seconds"] = time.perf_counter() - t0
                continue
            self.check_kinds[spec.name] = "randomization"
            explainers, refs = self.explainers, originals
            if type(check).transform_explainer is not Check.transform_explainer:  # e.g. smooth MPRT
                explainers = {n: check.transform_explainer(e) for n, e in self.explainers.items()}
                refs = self.original_maps(explainers, variant=spec.name)
                self.variant_originals[spec.name] = refs
            target = check.transform_target(self.target, self.logits, seed=self.seed, x=self.x,
                                            **_accepted(check.transform_target, dataset=self.dataset))
            live = [n for n in explainers if n not in self.skipped]
            steps = check.steps(self.model, example) if hasattr(check, "steps") else None
            total = len(steps) * len(live) if steps else None
            self.steps[spec.name] = []
            with _progress(total=total, desc=spec.name, disable=not self.progress, unit="map set") as bar:
                for state in check.states(self.model, seed=self.seed, example_input=example, context=context):
                    state.model.eval()
                    self.steps[spec.name].append(state.step)
                    if state.info:
                        self.state_info[f"{spec.name}/{state.step}"] = state.info
                    results[(spec.name, state.step)] = self.score_state(spec.name, state.step, state.model, refs,
                                                                        bar, explainers, target)
            self.timing[f"{spec.name}_seconds"] = time.perf_counter() - t0
        return results

    def explain(self, explainer: Any, model: nn.Module, target: Any) -> Tensor:
        """Maps of every audited input under ``model`` (batched, each call checked)."""
        name, where = self.explainer_name(explainer)
        return explain_batched(explainer, model, self.x, target, self.batch_size, name=name, where=where)

    def explainer_name(self, explainer: Any) -> Tuple[str, str]:
        """``(name, where)`` of the explainer being run: the unit's, else its name in this run."""
        name, where = getattr(self, "_where", (None, ""))
        if name is None:
            name = next((n for n, e in self.explainers.items() if e is explainer), None) or \
                getattr(explainer, "name", None) or type(explainer).__name__
        return name, where

    def example_input(self) -> Any:
        """A small input that the randomization checks trace to order the model's layers."""
        return self.x[:2].to(self.device)

    def run_special_check(self, spec: Any, check: Any, originals: Dict[str, Tensor],
                          results: Dict[Tuple[str, str], Dict[str, Any]]) -> bool:
        """Hook for checks that are neither model states nor faithfulness families (text audits); False here."""
        return False

    def undefined_reason(self, ref: Tensor, other: Tensor, scores: Tensor) -> Optional[str]:
        return _undefined_reason(ref, other, scores)

    def compare(self, metric: Any, reference: Tensor, other: Tensor) -> Tensor:
        """Per-sample scores (float64, CPU) of ``metric`` between the original maps and another state's."""
        return metric(reference, other).to(torch.float64).cpu()

    def originals_of(self, check: str, originals: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return self.variant_originals.get(check, originals)

    # ---------------------------------------------------------------- aggregate
    def aggregate(self, originals: Dict[str, Tensor],
                  scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Tuple[List[Record], List[Verdict]]:
        records: List[Record] = []
        verdicts: List[Verdict] = []
        for spec in self.check_specs:
            steps = self.steps.get(spec.name, [])
            evaluation = self.check_kinds.get(spec.name) == "evaluation"
            refs = self.originals_of(spec.name, originals)
            for name in self.explainers:
                if name in self.skipped or name not in refs:
                    continue
                per_metric_rows, keys = [], []
                if not evaluation:
                    # step 0: the original model compared with itself (1 where defined; shows constant originals)
                    ref = refs[name]
                    for mname, metric in self.metrics.items():
                        s = self.compare(metric, ref, ref)
                        per_metric_rows.append(s)
                        keys.append((mname, ORIGINAL_STEP, 0, self.undefined_reason(ref, ref, s)))
                for i, step in enumerate(steps, start=1):
                    entry = scored.get((spec.name, step), {}).get(name)
                    if entry is None:  # a check that audits only some explainers (e.g. the attention itself)
                        continue
                    for mname, values in entry["scores"].items():
                        per_metric_rows.append(values)
                        keys.append((mname, step, i, entry["reasons"].get(mname)))
                if not per_metric_rows or (not evaluation and len(keys) == len(self.metrics)):
                    continue
                summaries = bootstrap_ci_many(torch.stack(per_metric_rows),
                                              seed_parts=(self.seed, "bootstrap", spec.name, bootstrap_label(name)))
                recs = [Record(name, spec.name, mname, step, idx, s.mean, s.ci_low, s.ci_high, s.n,
                               s.n_undefined, reason if s.n_undefined else None)
                        for (mname, step, idx, reason), s in zip(keys, summaries)]
                records.extend(recs)
                if spec.verdict is not None:
                    verdicts.append(decide(spec.verdict, name, spec.name, recs))
        return records, verdicts

    # ---------------------------------------------------------------- main
    def execute(self) -> Dict[str, Any]:
        t_start = time.perf_counter()
        check_out_dir(self.out_dir)
        self.load_inputs()
        self.prepare_cache()
        t0 = time.perf_counter()
        originals = self.original_maps()
        self.timing["original_maps_seconds"] = time.perf_counter() - t0
        scored = self.run_checks(originals)
        records, verdicts = self.aggregate(originals, scored)
        self.timing["total_seconds"] = time.perf_counter() - t_start
        results = self.results_dict(records, verdicts, originals, scored)
        if self.recomputed:
            results["cache_recomputed"] = list(self.recomputed)
        previous = self.previous_results()
        results = merge_results(previous, results) if previous else results
        if self.figures:  # the example maps the figures draw: one file that results.json names
            from .engine.figure_payload import collect
            from .report.figure_maps import save_figure_maps

            results["files"] = {**(results.get("files") or {}),
                                "figure_maps": save_figure_maps(self.out_dir, **collect(self, originals, scored))}
        atomic_write_json(self.out_dir / "results.json", results)
        if self.figures:
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
        """The figures, drawn from the run's documents only (``results`` and the figure maps it names)."""
        from .report.run_figures import write_figures

        return write_figures(self.out_dir, results)

    def per_sample(self, scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Any]:
        """Per-image scores {explainer: {check: {step: {metric: [...]}}}}: what ``validate`` re-runs and re-aggregates."""
        out: Dict[str, Any] = {}
        for (check, step), by_explainer in scored.items():
            for name, entry in by_explainer.items():
                out.setdefault(name, {}).setdefault(check, {})[step] = {
                    m: [None if v != v else round(float(v), 7) for v in s.tolist()] for m, s in entry["scores"].items()}
        return out

    def example_maps(self, originals: Dict[str, Tensor], scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Any]:
        """Image 0 and its maps in every state, float16: the leaderboard draws thumbnails from these."""
        explainers: Dict[str, Any] = {}
        for name in originals:
            per_check = {}
            for spec in self.check_specs:
                refs = self.originals_of(spec.name, originals)
                if self.check_kinds.get(spec.name) == "evaluation" or name not in refs:
                    continue
                maps = {ORIGINAL_STEP: encode_array(refs[name][0])}
                for step in self.steps.get(spec.name, []):
                    maps[step] = encode_array(scored[(spec.name, step)][name]["examples"][0])
                per_check[spec.name] = maps
            explainers[name] = per_check
        return {"image": encode_array(self.x[0]), "explainers": explainers}

    def results_dict(self, records: List[Record], verdicts: List[Verdict], originals: Dict[str, Tensor],
                     scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Any]:
        model_info = dict(getattr(self.model, "sanitycheck_info", {}) or {})
        spec = getattr(self.model, "sanitycheck_spec", None)
        per_sample = self.per_sample(scored)
        from .report.reliability import reliability_report

        summaries = [(c, step, m, hib) for c, d in self.check_directions.items() for m, hib in d.items()
                     for step in self.steps.get(c, []) if not step.isdigit()]
        reliability = reliability_report(per_sample, summaries) if summaries else None
        return clean_json({
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
                      "accuracy_on_audited_sample": self.accuracy_on_sample},
            "dataset": {"name": self.dataset_name or self.suite.dataset["name"], "split": self.suite.dataset.get("split"),
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
                                   "ratios kept); maps already subnormal in float32 are refused",
                "spearman_abs": "Spearman rank correlation of |map| (average ranks for ties)",
                "spearman": "Spearman rank correlation of the signed map",
                "ssim": "SSIM of |map| min-max normalized to [0,1], Gaussian window sigma 1.5",
                "hog": "Spearman correlation of HOG features of |map| normalized to [0,1]"},
            "versions": package_versions(),
            "git_hash": git_hash(),
            "explainers": {k: {"class": f"{type(e).__module__}.{type(e).__qualname__}", "config": e.config(),
                               "code_hash": e.code_hash(), "requires_model": e.requires_model}
                           for k, e in self.explainers.items()},
            "skipped": [{"explainer": k, "reason": v} for k, v in self.skipped.items()],
            "metrics": {k: asdict(m.info) for k, m in self.metrics.items()},
            "checks": {c.name: {"kind": self.check_kinds.get(c.name, "randomization"), "params": c.params,
                                "higher_is_better": self.check_directions.get(c.name),
                                "verdict_rule": asdict(c.verdict) if c.verdict is not None else None,
                                "steps": self.steps.get(c.name, [])} for c in self.check_specs},
            "state_info": self.state_info,
            "bootstrap": {"resamples": 2000, "confidence": 0.95, "method": "percentile"},
            "timing": self.timing,
            "records": records_to_json(records),
            "verdicts": verdicts_to_json(verdicts),
            "per_sample": per_sample,
            "reliability": reliability,
            "examples": self.example_maps(originals, scored),
        })


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
        from .report.reliability import reliability_report

        summaries = [(c, step, m, hib) for c, info in out["checks"].items()
                     for m, hib in (info.get("higher_is_better") or {}).items()
                     for step in info.get("steps") or [] if info.get("kind") == "evaluation" and not step.isdigit()]
        out["reliability"] = clean_json(reliability_report(per_sample, summaries)) if summaries else None
    out["merged"] = {"note": "results of an earlier run into this --out (same suite, seed and sample) that this run "
                             "did not recompute", "created": previous.get("created"),
                     "carried": [f"{e}/{c}" for e, c in pairs]}
    return out
