"""Executes a text suite (``input_kind: text``): attention models audited like the image classifiers.

Same data flow and ``results.json`` as :class:`sanitycheck.runner.AuditRun`, which this class extends:

* inputs are a registered text dataset (the suite's split, ``test`` by default) encoded by the model's own
  encoder (its vocabulary, or MiniLM's WordPiece tokenizer); the model is a registered text model trained on
  the *train* split of the same dataset (``dataset=`` is passed to the model loader) and cached;
* analyses run on a float64 copy of the model (a float32 softmax saturates and leaves rank statistics
  undefined, see REFERENCES.md); the explained class is the trained model's prediction;
* explainers are token explainers (registry ``sanitycheck.token_explainers``): maps are (N, L) token
  importances, 0 at padding; similarity metrics are token metrics reading each text's real tokens only;
* the parameter randomization checks (cascading, independent) work unchanged on the model; the attention
  checks of Jain & Wallace and Wiegreffe & Pinter (:class:`~sanitycheck.checks.attention_audits.TextCheck`)
  return per-instance scores per step, cached per check so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .checks.attention_audits import TextCheck, TextCheckOutput
from .errors import ConfigError, DataError, NotApplicableError
from .explainers import check_eval_mode
from .explainers.attention import TextBatch
from .explainers.base import ModelWatch, call_explainer
from .io import save_checked
from .registry import TOKEN_EXPLAINERS
from .results import clean_json, encode_array
from .runner import AuditRun, _progress, _undefined_reason

__all__ = ["TextAuditRun", "get_token_explainer", "text_subset"]


def get_token_explainer(spec: Any, **params: Any) -> Any:
    """A token explainer by registry name or import path (``package.module:Class``), or any object."""
    obj = TOKEN_EXPLAINERS.get(spec) if isinstance(spec, str) else spec
    if inspect.isclass(obj):
        try:
            obj = obj(**params)
        except TypeError as err:
            raise ConfigError(f"bad parameters {params} for token explainer {spec!r}: {err}") from err
    elif params:
        raise ConfigError(f"token explainer {spec!r} is an instance: it takes no parameters ({params})")
    if not callable(obj):
        raise ConfigError(f"token explainer {spec!r} is not callable as (model, TextBatch, classes) -> (B, L)")
    return obj


def text_subset(dataset: Any, indices: Sequence[int]) -> Any:
    """The texts ``indices`` of a TextDataset (same name, classes and source)."""
    from .data.text import TextDataset

    idx = list(indices)
    if idx and (min(idx) < 0 or max(idx) >= len(dataset)):
        raise DataError(f"indices must lie in [0, {len(dataset)}), got [{min(idx)}, {max(idx)}]")
    pick = lambda seq: None if seq is None else [seq[i] for i in idx]  # noqa: E731
    return TextDataset(name=dataset.name, texts=pick(dataset.texts), labels=dataset.labels[idx],
                       classes=list(dataset.classes), queries=pick(dataset.queries),
                       rationales=pick(dataset.rationales), source=dataset.source,
                       meta={**dataset.meta, "indices": idx})


class TextAuditRun(AuditRun):
    """One execution of a text suite; see the module docstring. Use :func:`sanitycheck.engine.run_suite`."""

    def __init__(self, suite: Any, *, explainers: Optional[Sequence[str]] = None,
                 explainer_objects: Optional[Dict[str, Any]] = None, **kwargs: Any):
        if not explainer_objects:
            wanted = list(explainers) if explainers else suite.explainer_names
            params = dict(suite.explainers)
            explainer_objects = {n: get_token_explainer(n, **params.get(n, {})) for n in wanted}
        super().__init__(suite, explainer_objects=explainer_objects, **kwargs)
        self.text_outputs: Dict[str, TextCheckOutput] = {}
        self.text_checks: Dict[str, TextCheck] = {}  # the check objects run_checks built, for the results
        self.not_applicable: Dict[str, str] = {}

    # ---------------------------------------------------------------- inputs
    def load_inputs(self) -> None:
        from .data import load_dataset
        from .models import load_model
        from .registry import MODELS

        t0 = time.perf_counter()
        ds_cfg = self.suite.dataset
        ds_name = self.dataset_name or ds_cfg["name"]
        if self._dataset is None:
            params = dict(ds_cfg.get("params", {})) if ds_name == ds_cfg["name"] else {}
            params["split"] = ds_cfg.get("split", "test")
            if self.data_root:
                params["path"] = self.data_root
            self._dataset = load_dataset(ds_name, **params)
        if not hasattr(self._dataset, "texts"):
            raise ConfigError(f"suite {self.suite.name!r} audits text, but dataset {ds_name!r} is not a text dataset")
        self.dataset = self._dataset.head(self.n or len(self._dataset))
        if self.indices is not None:
            self.dataset = text_subset(self.dataset, self.indices)
        if self._model is None:
            name = self._model_name or self.suite.model["name"]
            params = dict(self.suite.model.get("params", {})) if name == self.suite.model["name"] else {}
            params.update(self.model_params)
            accepted = inspect.signature(MODELS.get(name)).parameters
            if "dataset" in accepted:
                params.setdefault("dataset", ds_name)  # trained on the train split of the audited dataset
                if self.data_root and params["dataset"] == ds_name and "dataset_params" in accepted:
                    # --data-root names the audited file: the model trains on the same source's train split
                    params["dataset_params"] = {**dict(params.get("dataset_params") or {}), "path": self.data_root}
            offered = {"seed": params.pop("seed", 0), "device": self.device, "progress": self.progress,
                       "cache_dir": self.cache_dir}
            offered = {k: v for k, v in offered.items() if k in accepted}
            self._model = load_model(name, **offered, **params)
        encoder = getattr(self._model, "sanitycheck_encoder", None)
        if encoder is None:
            raise ConfigError(f"model {type(self._model).__name__} has no sanitycheck_encoder: a text audit needs the "
                              "model's tokenizer (see sanitycheck.models.text_zoo.TextEncoder)")
        check_eval_mode(self._model)
        # analyses in float64: the trained float32 model is converted on a copy-free path (cast in place)
        self.model = self._model.double().eval()
        self.model_dtype = torch.float64
        self.model_name = self._model_name or self.suite.model["name"]
        self.batch = encoder.encode(self.dataset)
        self.x = self.batch.ids
        self.labels = self.dataset.labels
        with torch.no_grad():
            self.logits = torch.cat([self.model(*self.batch_slice(sl)).cpu() for sl in self.slices(self.batch_size)])
        self.predicted = self.logits.argmax(1)
        self.target = self.predicted if self.suite.target == "predicted" else self.labels
        self.accuracy_on_sample = float((self.predicted == self.labels).double().mean())
        self.timing["load_seconds"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- batching helpers (used by the checks)
    def slices(self, size: int) -> Iterator[slice]:
        n = self.batch.ids.shape[0]
        for start in range(0, n, size):
            yield slice(start, min(n, start + size))

    def batch_slice(self, sl: slice) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """``(ids, lengths, query_ids, query_lengths)`` of rows ``sl``, padding trimmed to the longest text."""
        ids, lengths, q, ql = self.batch
        lb = lengths[sl]
        width = int(lb.max())
        out_q = out_ql = None
        if q is not None:
            out_ql = ql[sl]
            out_q = q[sl, : int(out_ql.max())]
        return ids[sl, :width], lb, out_q, out_ql

    def progress_bar(self, iterable: Any, **kwargs: Any) -> Any:
        return _progress(iterable, disable=not self.progress, leave=False, **kwargs)

    def train_data(self) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        """The model's training and test splits, encoded: ``((ids, lengths, q, ql, labels), (...))``."""
        if not hasattr(self, "_train_data"):
            from .models.text_zoo import load_text_task

            task = getattr(self._model, "sanitycheck_task", None)
            if not task:
                raise NotApplicableError("the model records no training task (sanitycheck_task): checks that "
                                         "retrain models need the dataset it was trained on")
            train, test = load_text_task(task["dataset"], task.get("params"),
                                         train_on_test=bool(task.get("train_on_test", False)))
            enc = self._model.sanitycheck_encoder
            self._train_data = ((*enc.encode(train), train.labels), (*enc.encode(test), test.labels))
        return self._train_data

    # ---------------------------------------------------------------- hooks of AuditRun
    def explain(self, explainer: Any, model: nn.Module, target: Any) -> Tensor:
        width = self.batch.ids.shape[1]
        name, where = self.explainer_name(explainer)
        out = []
        watch = ModelWatch(model)
        for sl in self.slices(self.batch_size):
            ids, lengths, q, ql = self.batch_slice(sl)
            loc = ", ".join(p for p in (where, f"texts {sl.start}..{sl.stop - 1}") if p)
            m = call_explainer(explainer, name, loc, model, TextBatch(ids, lengths, q, ql), target[sl], watch=watch)
            m = m.detach().to("cpu", torch.float64)
            out.append(torch.nn.functional.pad(m, (0, width - m.shape[1])))
        return torch.cat(out)

    def example_input(self) -> Any:
        ids, lengths, q, ql = self.batch_slice(slice(0, 2))
        return (ids, lengths) if q is None else (ids, lengths, q, ql)

    def compare(self, metric: Any, reference: Tensor, other: Tensor) -> Tensor:
        if getattr(metric, "input_kind", "image") != "text":
            raise ConfigError(f"metric {metric.name!r} compares images; a text suite needs token metrics "
                              "(token_kendall_abs, token_kendall, token_topk_overlap)")
        return metric(reference, other, self.batch.lengths).to(torch.float64).cpu()

    def undefined_reason(self, ref: Tensor, other: Tensor, scores: Tensor) -> Optional[str]:
        # padding holds 0: fill it with each row's first value so "constant over the real tokens" is seen
        pad = torch.arange(ref.shape[1])[None, :] >= self.batch.lengths[:, None]
        fill = lambda m: torch.where(pad, m[:, :1].expand_as(m), m)  # noqa: E731
        reason = _undefined_reason(fill(ref), fill(other), scores)
        return reason.replace("maps", "importance vectors") if reason else None

    def run_special_check(self, spec: Any, check: Any, originals: Dict[str, Tensor],
                          results: Dict[Tuple[str, str], Dict[str, Any]]) -> bool:
        if not isinstance(check, TextCheck):
            return False
        self.text_checks[spec.name] = check
        self.check_kinds[spec.name] = "evaluation"
        # one file for the check's results on all explainers: keyed by the explainers' canonical specs
        units = sorted(self.unit_file(n, e) for n, e in self.explainers.items())
        path = self._cache_path("scores", spec.name, "check-" + hashlib.sha256("\n".join(units).encode()).hexdigest()[:16]
                                + ".pt")
        out: Optional[TextCheckOutput] = None
        cached = self.load_cached(path, weights_only=False)
        if cached is not None:
            out = TextCheckOutput(**cached)
        else:
            self._where = (None, f"check {spec.name!r}")
            try:
                out = check.evaluate(self, originals)
            except NotApplicableError as err:
                self.not_applicable[spec.name] = str(err)
                self.steps[spec.name] = []
                return True
            finally:
                self._where = (None, "")
            save_checked(path, dict(out.__dict__))
        self.steps[spec.name] = list(out.steps)
        self.text_outputs[spec.name] = out
        if out.notes:
            self.state_info[spec.name] = out.notes
        for (step, name), scores in out.scores.items():
            reasons = out.reasons.get((step, name), {})
            results.setdefault((spec.name, step), {})[name] = {
                "scores": scores, "reasons": {m: reasons.get(m) for m in scores}, "examples": None}
        return True

    def example_maps(self, originals: Dict[str, Tensor], scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Any]:
        """Text 0 (its tokens) and its importances in every state, float16, for the leaderboard."""
        from .results import ORIGINAL_STEP

        n = int(self.batch.lengths[0])
        explainers: Dict[str, Any] = {}
        for name in originals:
            per_check = {}
            for spec in self.check_specs:
                if self.check_kinds.get(spec.name) == "evaluation":
                    continue
                maps = {ORIGINAL_STEP: encode_array(originals[name][0, :n])}
                for step in self.steps.get(spec.name, []):
                    entry = scored.get((spec.name, step), {}).get(name)
                    if entry is not None and entry["examples"] is not None:
                        maps[step] = encode_array(entry["examples"][0, :n])
                per_check[spec.name] = maps
            explainers[name] = per_check
        pieces = getattr(self.batch, "pieces", None)
        return {"text": list(pieces[0]) if pieces else [], "explainers": explainers}

    def results_dict(self, records: List[Any], verdicts: List[Any], originals: Dict[str, Tensor],
                     scored: Dict[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Any]:
        doc = super().results_dict(records, verdicts, originals, scored)
        info = dict(getattr(self._model, "sanitycheck_info", {}) or {})
        doc["model"]["params"] = clean_json({**dict(self.suite.model.get("params", {})), **self.model_params})
        doc["model"]["test_accuracy"] = info.get("test_accuracy")
        doc["model"]["analysis_dtype"] = "float64"
        lengths = self.batch.lengths.double()
        doc["dataset"].update({"input_shape": [int(self.batch.ids.shape[1])], "split": self.suite.dataset.get("split", "test"),
                               "mean_length": float(lengths.mean()), "max_length": int(lengths.max()),
                               "has_queries": self.batch.query_ids is not None,
                               "unknown_token_rate": info.get("unknown_token_rate_test")})
        if getattr(self.batch, "truncation", None):
            doc["dataset"]["truncation"] = clean_json(self.batch.truncation)  # texts cut to the model's limit
        doc["target"]["description"] = ("class logit of the trained model's predicted class" if self.suite.target ==
                                         "predicted" else "class logit of the true label") + ", in every model state"
        doc["postprocessing"] = {
            "token_kendall_abs": "Kendall tau-b of |importance| over each text's real tokens (padding ignored)",
            "token_kendall": "Kendall tau-b of signed importances over the real tokens",
            "token_topk_overlap": "share of the top 20% tokens by |importance| that stay in the top 20%",
            "analysis_dtype": "float64"}
        for name, check in self.text_checks.items():
            if name in doc["checks"]:
                doc["checks"][name]["higher_is_better"] = dict(check.higher_is_better)
                doc["checks"][name]["description"] = check.description
        doc["summaries"] = clean_json({name: out.summaries for name, out in self.text_outputs.items() if out.summaries})
        if self.not_applicable:
            doc["not_applicable"] = dict(self.not_applicable)
        doc["reliability"] = None  # Tomsett et al.'s reliability ranks methods per image: not defined here
        return doc
