"""The ``activations`` modality: audits of sparse-autoencoder features (issue 15).

What is explained is a model's activations at one or more sites, and the "explainers" are dictionaries (SAEs,
:mod:`sanitycheck.explainers.sae`) that decompose them into sparse features. The audited inputs are texts
(a :class:`~sanitycheck.data.token_corpus.WordCorpus`, tokenizer-independent: each site tokenizes them itself).

* ``x``: one int64 per text, the first 8 bytes of the sha256 of its words (the run's data hash is a content hash;
  no tensor of token ids is shared by sites with different tokenizers);
* an explainer's map of a text: the fraction of variance its dictionary leaves unexplained at each site,
  ``(N, n_sites)`` — what the trained model's "maps" are for the records' ``original`` state;
* checks (:mod:`sanitycheck.checks.sae`) read the run's :class:`~sanitycheck.models.activation_sites.SAEWorkspace`
  from ``inputs.extra["workspace"]``: activations of every site and state, and every fitted dictionary, once.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from .base import AuditInputs, Modality

#: the dataset params that name the SAE's training text (not passed to the audited dataset's loader)
TRAIN_PARAMS = ("train_split", "train_n")
CONCEPT_PARAMS = ("concepts_n",)


def text_keys(words: Any) -> Tensor:
    """One int64 per text: the first 8 bytes of the sha256 of its words (content, not position)."""
    keys = [int.from_bytes(hashlib.sha256("\x1f".join(w).encode()).digest()[:8], "little", signed=True)
            for w in words]
    return torch.tensor(keys, dtype=torch.int64)


def corpus_subset(corpus: Any, indices: Any) -> Any:
    """The texts ``indices`` of a word corpus (a re-run of sampled inputs, as ``validate`` draws them)."""
    from ..data.token_corpus import WordCorpus

    idx = [int(i) for i in indices]
    return WordCorpus(corpus.name, [corpus.words[i] for i in idx], corpus.labels[idx],
                      {k: [v[i] for i in idx] for k, v in corpus.concepts.items()}, meta=dict(corpus.meta))


class ActivationsModality(Modality):
    name = "activations"
    unit = "texts"
    figures = "sanitycheck.report.sae_figures:draw_sae"
    # a submitted dictionary is data (SAELens cfg.json + safetensors, loaded without code): nothing runs sandboxed
    sandboxed_methods = False
    scores_per_record = True

    def load(self, settings: Any) -> AuditInputs:
        from ..data import load_dataset
        from ..models import load_model
        from ..models.activation_sites import ActivationSites, SAEWorkspace

        suite = settings.suite
        ds_cfg = suite.dataset
        name = settings.dataset_name or ds_cfg["name"]
        params = dict(ds_cfg.get("params", {})) if name == ds_cfg["name"] else {}
        train = {k: params.pop(k) for k in TRAIN_PARAMS if k in params}
        concepts_n = params.pop("concepts_n", None)
        dataset = settings.dataset
        if dataset is None:
            dataset = load_dataset(name, split=ds_cfg.get("split", "test"), n=settings.n or ds_cfg.get("n"), **params)
        if not hasattr(dataset, "words"):
            raise ConfigError(f"suite {suite.name!r} audits activations over texts, but dataset {name!r} is a "
                              f"{type(dataset).__name__} without .words (use review_words)")
        if settings.indices is not None:
            dataset = corpus_subset(dataset, settings.indices)
        model = settings.model
        if model is None:
            mname = settings.model_name or suite.model["name"]
            mparams = dict(suite.model.get("params", {})) if mname == suite.model["name"] else {}
            mparams.update(settings.model_params)
            model = load_model(mname, seed=mparams.pop("seed", 0), cache_dir=settings.cache_dir,
                               progress=settings.progress, device=settings.device, **mparams)
        if not isinstance(model, ActivationSites):
            raise ConfigError(f"an activations suite audits ActivationSites (model activation_sites), got "
                              f"{type(model).__name__}")
        model.eval()
        train_corpus = lambda: load_dataset(name, split=train.get("train_split", "train"),  # noqa: E731
                                            n=train.get("train_n"), **params)

        def concepts() -> Any:
            from ..data.token_corpus import concept_words

            return concept_words(**({"n": int(concepts_n)} if concepts_n else {}), seed=settings.seed)

        workspace = SAEWorkspace(model, {"train": train_corpus, "eval": dataset, "concepts": concepts},
                                 seed=settings.seed, cache_dir=settings.cache_dir, progress=settings.progress,
                                 device=settings.device, batch_size=settings.batch_size)
        n = len(dataset.words)
        inputs = AuditInputs(dataset=dataset, model=model, model_name=settings.model_name or suite.model["name"],
                             x=text_keys(dataset.words), logits=torch.zeros(n, 0), labels=dataset.labels,
                             target=None, extra={"workspace": workspace})
        return inputs

    # ------------------------------------------------------------------ batching
    def model_inputs(self, inputs: AuditInputs, sl: slice, device: Any = "cpu") -> Any:
        raise NotApplicableError("an activations audit has no model inputs of its own: each site tokenizes the "
                                 "texts (ActivationSites.sources[name].encode)")

    def logits(self, model: nn.Module, inputs: AuditInputs, batch_size: int, device: Any = "cpu") -> Tensor:
        return torch.zeros(len(inputs), 0)

    def example_input(self, inputs: AuditInputs, device: Any = "cpu") -> Any:
        return None

    def explain(self, explainer: Any, model: nn.Module, inputs: AuditInputs, target: Any, *, batch_size: int,
                name: str, where: str = "", rows: Optional[slice] = None) -> Tensor:
        """Per text and site, the fraction of variance ``explainer``'s dictionary leaves unexplained: ``(N, S)``."""
        fit = getattr(explainer, "fit", None)
        if fit is None:
            raise NotApplicableError(f"{name} is not a dictionary (no fit(source, activations)); an activations "
                                     "suite runs sparse autoencoders (sae_relu, sae_topk, sae_file)")
        ws = inputs.extra["workspace"]
        if model is not inputs.model:
            raise NotApplicableError("an activations audit explains the trained sites; model states are the SAE "
                                     "checks' own (sae_randomized_control)")
        rows = rows or slice(0, len(inputs))
        start, stop = rows.start or 0, len(inputs) if rows.stop is None else rows.stop
        out = []
        for site in model.names:
            from ..metrics.sae import reconstruction_per_doc

            acts = ws.activations(site, "eval")
            sae = ws.sae(explainer, site)
            x_hat, _ = ws.reconstruct(sae, acts)
            x = acts.acts.float()
            _, total = ws.statistics(site)
            per_doc = reconstruction_per_doc(x, x_hat, acts.doc, len(inputs), total)
            out.append(per_doc["fvu"][start:stop].float())
        return torch.stack(out, 1)

    # ------------------------------------------------------------------ results
    def example(self, inputs: AuditInputs, maps: Dict[str, Dict[str, Dict[str, Tensor]]]) -> Dict[str, Any]:
        from ..results import encode_array

        return {"text": list(inputs.dataset.words[0]),
                "explainers": {n: {c: {s: encode_array(m[0]) for s, m in steps.items()} for c, steps in per.items()}
                               for n, per in maps.items()}}

    def describe(self, doc: Dict[str, Any], inputs: AuditInputs, settings: Any) -> None:
        from ..results import clean_json

        ds = inputs.dataset
        doc["dataset"].update({"input_shape": [], "split": settings.suite.dataset.get("split", "test"),
                               "texts": len(ds.words), "words": int(sum(len(w) for w in ds.words))})
        doc["model"]["params"] = clean_json({**dict(settings.suite.model.get("params", {})), **settings.model_params})
        ws = inputs.extra["workspace"]
        doc["activation_sites"] = clean_json({
            site: {"d_in": int(src.d_in), "site": getattr(src, "site", site),
                   "tokens": {key[1]: int(acts.acts.shape[0]) for key, acts in ws._acts.items()
                              if key[0] == site and key[2] == "trained" and hasattr(acts, "acts")}}
            for site, src in inputs.model.sources.items()})

    def figure_inputs(self, inputs: AuditInputs, k: int) -> Dict[str, Any]:
        return {"inputs": inputs.x[:k], "tokens": [list(w) for w in inputs.dataset.words[:k]]}

    def accepts(self, method_kind: str) -> bool:
        return method_kind == self.name
