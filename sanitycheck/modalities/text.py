"""Token sequences: a registered text dataset encoded by the model's own encoder, maps of shape (N, L).

Analyses run on a float64 copy of the model (a float32 softmax saturates and leaves rank statistics
undefined, see REFERENCES.md); padding holds 0 in every map and the metrics read each text's real tokens
only, through the :meth:`TextModality.mask`.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import AuditInputs, Modality


class TextModality(Modality):
    figures = "sanitycheck.report.run_figures:draw_text"
    name = "text"
    unit = "tokens"
    sandboxed_methods = False  # the sandbox protocol carries image batches only
    scores_per_record = True

    def load(self, settings: Any) -> AuditInputs:
        from ..data import load_dataset
        from ..data.text import text_subset
        from ..explainers import check_eval_mode
        from ..models import load_model
        from ..registry import MODELS

        suite = settings.suite
        ds_cfg = suite.dataset
        ds_name = settings.dataset_name or ds_cfg["name"]
        dataset = settings.dataset
        if dataset is None:
            params = dict(ds_cfg.get("params", {})) if ds_name == ds_cfg["name"] else {}
            params["split"] = ds_cfg.get("split", "test")
            if settings.data_root:
                params["path"] = settings.data_root
            dataset = load_dataset(ds_name, **params)
        if not hasattr(dataset, "texts"):
            raise ConfigError(f"suite {suite.name!r} audits text, but dataset {ds_name!r} is not a text dataset")
        dataset = dataset.head(settings.n or len(dataset))
        if settings.indices is not None:
            dataset = text_subset(dataset, settings.indices)
        model = settings.model
        if model is None:
            name = settings.model_name or suite.model["name"]
            params = dict(suite.model.get("params", {})) if name == suite.model["name"] else {}
            params.update(settings.model_params)
            accepted = inspect.signature(MODELS.get(name)).parameters
            if "dataset" in accepted:
                params.setdefault("dataset", ds_name)  # trained on the train split of the audited dataset
                if settings.data_root and params["dataset"] == ds_name and "dataset_params" in accepted:
                    # --data-root names the audited file: the model trains on the same source's train split
                    params["dataset_params"] = {**dict(params.get("dataset_params") or {}), "path": settings.data_root}
            offered = {"seed": params.pop("seed", 0), "device": settings.device, "progress": settings.progress,
                       "cache_dir": settings.cache_dir}
            offered = {k: v for k, v in offered.items() if k in accepted}
            model = load_model(name, **offered, **params)
        encoder = getattr(model, "sanitycheck_encoder", None)
        if encoder is None:
            raise ConfigError(f"model {type(model).__name__} has no sanitycheck_encoder: a text audit needs the "
                              "model's tokenizer (see sanitycheck.models.text_zoo.TextEncoder)")
        check_eval_mode(model)
        model = model.double().eval()  # analyses in float64, cast in place (no second copy)
        batch = encoder.encode(dataset)
        inputs = AuditInputs(dataset=dataset, model=model, model_name=settings.model_name or suite.model["name"],
                             x=batch.ids, logits=torch.empty(0), labels=dataset.labels, target=None, batch=batch,
                             dtype=torch.float64)
        inputs.logits = self.logits(model, inputs, settings.batch_size)
        inputs.target = inputs.predicted if suite.target == "predicted" else dataset.labels
        inputs.accuracy = float((inputs.predicted == dataset.labels).double().mean())
        return inputs

    def model_inputs(self, inputs: AuditInputs, sl: slice, device: Any = "cpu") -> Tuple[Any, ...]:
        """``(ids, lengths, query_ids, query_lengths)`` of rows ``sl``, padding trimmed to the longest text."""
        ids, lengths, q, ql = inputs.batch
        lb = lengths[sl]
        width = int(lb.max())
        out_q = out_ql = None
        if q is not None:
            out_ql = ql[sl]
            out_q = q[sl, : int(out_ql.max())]
        return ids[sl, :width], lb, out_q, out_ql

    def example_input(self, inputs: AuditInputs, device: Any = "cpu") -> Any:
        ids, lengths, q, ql = self.model_inputs(inputs, slice(0, 2))
        return (ids, lengths) if q is None else (ids, lengths, q, ql)

    def explain(self, explainer: Any, model: nn.Module, inputs: AuditInputs, target: Any, *, batch_size: int,
                name: str, where: str = "", rows: Optional[slice] = None) -> Tensor:
        """Token importances (float64), padded with 0 to the longest text of the run."""
        from ..explainers.attention import TextBatch
        from ..explainers.base import ModelWatch, call_explainer

        width = inputs.batch.ids.shape[1]
        out = []
        watch = ModelWatch(model)
        for sl in self.slices(inputs, batch_size, rows):
            ids, lengths, q, ql = self.model_inputs(inputs, sl)
            loc = ", ".join(p for p in (where, f"texts {sl.start}..{sl.stop - 1}") if p)
            m = call_explainer(explainer, name, loc, model, TextBatch(ids, lengths, q, ql), target[sl], watch=watch)
            m = m.detach().to("cpu", torch.float64)
            out.append(torch.nn.functional.pad(m, (0, width - m.shape[1])))
        return torch.cat(out)

    def mask(self, inputs: AuditInputs) -> Optional[Tensor]:
        lengths = inputs.batch.lengths
        return torch.arange(inputs.batch.ids.shape[1])[None, :] < lengths[:, None]

    def undefined_reason(self, reference: Tensor, other: Tensor, scores: Tensor, inputs: AuditInputs,
                         rows: slice = slice(None)) -> Optional[str]:
        from ..engine.scoring import undefined_reason

        # padding holds 0: fill it with each row's first value so "constant over the real tokens" is seen
        pad = ~self.mask(inputs)[rows]
        fill = lambda m: torch.where(pad, m[:, :1].expand_as(m), m)  # noqa: E731
        reason = undefined_reason(fill(reference), fill(other), scores)
        return reason.replace("maps", "importance vectors") if reason else None

    def example(self, inputs: AuditInputs, maps: Dict[str, Dict[str, Tensor]]) -> Dict[str, Any]:
        """Text 0 (its tokens) and its importances in every state, float16."""
        from ..results import encode_array

        n = int(inputs.batch.lengths[0])
        pieces = getattr(inputs.batch, "pieces", None)
        return {"text": list(pieces[0]) if pieces else [],
                "explainers": {name: {c: {s: encode_array(m[0, :n]) for s, m in steps.items()}
                                      for c, steps in per.items()} for name, per in maps.items()}}

    def describe(self, doc: Dict[str, Any], inputs: AuditInputs, settings: Any) -> None:
        from ..results import clean_json

        suite = settings.suite
        info = dict(getattr(inputs.model, "sanitycheck_info", {}) or {})
        doc["model"]["params"] = clean_json({**dict(suite.model.get("params", {})), **settings.model_params})
        doc["model"]["test_accuracy"] = info.get("test_accuracy")
        doc["model"]["analysis_dtype"] = "float64"
        batch = inputs.batch
        lengths = batch.lengths.double()
        doc["dataset"].update({"input_shape": [int(batch.ids.shape[1])], "split": suite.dataset.get("split", "test"),
                               "mean_length": float(lengths.mean()), "max_length": int(lengths.max()),
                               "has_queries": batch.query_ids is not None,
                               "unknown_token_rate": info.get("unknown_token_rate_test")})
        if getattr(batch, "truncation", None):
            doc["dataset"]["truncation"] = clean_json(batch.truncation)  # texts cut to the model's limit
        doc["target"]["description"] = ("class logit of the trained model's predicted class" if suite.target ==
                                         "predicted" else "class logit of the true label") + ", in every model state"
        doc["postprocessing"] = {
            "token_kendall_abs": "Kendall tau-b of |importance| over each text's real tokens (padding ignored)",
            "token_kendall": "Kendall tau-b of signed importances over the real tokens",
            "token_topk_overlap": "share of the top 20% tokens by |importance| that stay in the top 20%",
            "analysis_dtype": "float64"}
        doc["summaries"] = {}  # audits add their statistics (F1 with CIs, ...)
        doc["reliability"] = None  # Tomsett et al.'s reliability ranks methods per image: not defined here

    def train_split(self, inputs: AuditInputs) -> Any:
        """The model's training and test splits, encoded: ``((ids, lengths, q, ql, labels), (...))``."""
        from ..errors import NotApplicableError
        from ..models.text_zoo import load_text_task

        model = inputs.model
        task = getattr(model, "sanitycheck_task", None)
        if not task:
            raise NotApplicableError("the model records no training task (sanitycheck_task): checks that "
                                     "retrain models need the dataset it was trained on")
        train, test = load_text_task(task["dataset"], task.get("params"),
                                     train_on_test=bool(task.get("train_on_test", False)))
        enc = model.sanitycheck_encoder
        return (*enc.encode(train), train.labels), (*enc.encode(test), test.labels)

    def figure_inputs(self, inputs: AuditInputs, k: int) -> Dict[str, Any]:
        """The first ``k`` texts: their token ids and token strings (the ids when the encoder keeps no pieces)."""
        batch = inputs.batch
        pieces = getattr(batch, "pieces", None)
        tokens = [list(pieces[i]) if pieces else [str(t) for t in batch.ids[i, : int(batch.lengths[i])].tolist()]
                  for i in range(k)]
        return {"inputs": inputs.x[:k], "tokens": tokens}
