"""Sanity checks of sparse-autoencoder features (issue 15): audits (``unit = "check"``) of dictionaries.

The saliency sanity check transposed to features: does the explanation depend on what the model learned, and does
it beat a trivial baseline? Every check reads the run's :class:`~sanitycheck.models.activation_sites.SAEWorkspace`
(activations of each site and model state, each dictionary fitted once) and records under each dictionary's name
(the board's rows are SAE variants).

* ``sae_reconstruction`` — per text: MSE, fraction of variance unexplained (FVU), L0, and the loss with the
  reconstruction spliced in against the clean model and zero-ablation (the LM's next-token cross-entropy; MiniLM's
  downstream sentiment task). Summaries: loss recovered (Bricken et al. 2023's "about 80 %"), dead and dense latents.
* ``sae_seed_similarity`` — per latent, the max cosine between its decoder direction and any direction of the same
  recipe trained with another seed (the deck's "about 0.7" across runs).
* ``sae_splitting`` — dictionaries of growing width on the same activations; per latent of the smaller, how many
  latents of the larger it splits into (decoder cosine above a threshold), and the tree for the figure.
* ``sae_randomized_control`` — Heap et al. 2025: the same dictionaries trained on the same text through the model
  with every weight re-initialized, and with all but the embeddings re-initialized. Each offline interpretability
  measure (the share of a latent's variance explained by the current token's identity; sparse probing of known
  concepts) must separate the trained model's dictionary from the randomized ones: the 95 % CI of the difference
  must exclude 0. A measure that cannot separate them fails as a measure of interpretability.
* ``sae_baselines`` — AxBench (Wu et al. 2025), DeepMind (2025): per concept, the detection AUROC of the best single
  latent and of a k-sparse probe on latents, against difference-in-means and a logistic probe on the raw
  activations. A dictionary passes where its probe is not significantly worse than the best baseline.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..models.activation_sites import RANDOMIZED, TRAINED
from ..results import Verdict
from ..seeding import derive_seed, generator
from ..stats import bootstrap_ci
from .base import DATASET, AuditCheck, CheckOutput, RecordedAudit

__all__ = ["SAEReconstruction", "SAESeedSimilarity", "SAESplitting", "SAERandomizedControl", "SAEBaselines",
           "ALL_DEAD"]

ALL_DEAD = "every latent of the dictionary is dead on these tokens: no feature to measure"
#: bootstrap resamples of the differences the verdicts read (2,000 as the engine's records)
N_BOOT = 2000


# ---------------------------------------------------------------------------------------------------- helpers
def _percentile_ci(samples: Tensor, confidence: float = 0.95) -> Tuple[Optional[float], Optional[float]]:
    s = samples[~torch.isnan(samples)].double()
    if s.numel() == 0:
        return None, None
    q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(s, q).tolist()
    return float(lo), float(hi)


def _mean_or_none(t: Tensor) -> Optional[float]:
    t = t[~torch.isnan(t)]
    return float(t.double().mean()) if t.numel() else None


def independent_difference_ci(a: Tensor, b: Tensor, *, seed_parts: tuple, n_boot: int = N_BOOT
                              ) -> Dict[str, Any]:
    """Mean(a) - mean(b) of two independent samples (NaN = undefined) with a percentile bootstrap CI (each sample
    resampled on its own, one seeded generator)."""
    a, b = a[~torch.isnan(a)].double(), b[~torch.isnan(b)].double()
    out: Dict[str, Any] = {"n_a": int(a.numel()), "n_b": int(b.numel())}
    if a.numel() == 0 or b.numel() == 0:
        return {**out, "value": None, "ci_low": None, "ci_high": None}
    g = generator(*seed_parts)
    ia = torch.randint(0, a.numel(), (n_boot, a.numel()), generator=g)
    ib = torch.randint(0, b.numel(), (n_boot, b.numel()), generator=g)
    diffs = a[ia].mean(1) - b[ib].mean(1)
    lo, hi = _percentile_ci(diffs)
    return {**out, "value": float(a.mean() - b.mean()), "ci_low": lo, "ci_high": hi}


def grouped_resamples(groups: Tensor, n_boot: int, *, seed_parts: tuple) -> Tensor:
    """``(n_boot, n_items)`` counts: how often each item is drawn when its groups (texts) are resampled with
    replacement — the bootstrap that keeps the tokens of one text together."""
    uniq, inv = torch.unique(groups, return_inverse=True)
    g = generator(*seed_parts)
    picks = torch.randint(0, uniq.numel(), (n_boot, uniq.numel()), generator=g)
    group_counts = torch.zeros(n_boot, uniq.numel(), dtype=torch.float64)
    group_counts.scatter_add_(1, picks, torch.ones_like(picks, dtype=torch.float64))
    return group_counts[:, inv]


def weighted_auroc(scores: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """AUROC of ``scores`` (n,) for binary ``labels`` under integer resampling ``weights`` (B, n) — each row one
    bootstrap resample — with ties counted one half: ``(B,)``. Batched over resamples (one sort)."""
    order = torch.argsort(scores)
    s, y, w = scores[order], labels[order].bool(), weights[:, order]
    wp, wn = w * y, w * (~y)
    # negatives strictly below each position, plus half the negatives tied with it
    uniq, inv, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    neg_in_tie = torch.zeros(w.shape[0], uniq.numel(), dtype=w.dtype).index_add_(1, inv, wn)
    neg_below_tie = torch.cumsum(neg_in_tie, 1) - neg_in_tie
    below = neg_below_tie[:, inv] + 0.5 * neg_in_tie[:, inv]
    num = (wp * below).sum(1)
    den = wp.sum(1) * wn.sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, float("nan")))


def paired_auroc_difference(score_a: Tensor, score_b: Tensor, labels: Tensor, groups: Tensor, *, seed_parts: tuple,
                            n_boot: int = N_BOOT) -> Dict[str, Any]:
    """AUROC(a) - AUROC(b) on the same examples, with a CI from resampling ``groups`` (texts) — paired."""
    from ..metrics.sae import auroc

    w = grouped_resamples(groups, n_boot, seed_parts=seed_parts)
    a, b = float(auroc(score_a, labels)), float(auroc(score_b, labels))
    diffs = weighted_auroc(score_a.double(), labels, w) - weighted_auroc(score_b.double(), labels, w)
    lo, hi = _percentile_ci(diffs)
    return {"a": a, "b": b, "value": a - b, "ci_low": lo, "ci_high": hi, "n": int(labels.numel()),
            "n_groups": int(torch.unique(groups).numel())}


def auroc_with_ci(score: Tensor, labels: Tensor, groups: Tensor, *, seed_parts: tuple, n_boot: int = N_BOOT
                  ) -> Dict[str, Any]:
    from ..metrics.sae import auroc

    w = grouped_resamples(groups, n_boot, seed_parts=seed_parts)
    lo, hi = _percentile_ci(weighted_auroc(score.double(), labels, w))
    return {"value": float(auroc(score, labels)), "ci_low": lo, "ci_high": hi, "n": int(labels.numel()),
            "n_groups": int(torch.unique(groups).numel())}


def token_concept_labels(corpus: Any, acts: Any, concept: str) -> Tensor:
    """Per token of ``acts``: the concept label of the word it comes from (0/1; -1 where it does not apply)."""
    per_text = corpus.concepts[concept]
    width = max((len(w) for w in per_text), default=0)
    table = torch.full((len(per_text), max(width, 1) + 1), -1, dtype=torch.int64)
    for i, labels in enumerate(per_text):  # one row per text (building the lookup table, not a hot path)
        if labels:
            table[i, :len(labels)] = torch.as_tensor(labels, dtype=torch.int64)
    wi = acts.word_index.long()
    return torch.where(wi >= 0, table[acts.doc.long(), wi.clamp_min(0)], torch.full_like(wi, -1))


def text_split(n_texts: int, *, seed_parts: tuple) -> Tensor:
    """A seeded half of the texts (True: train) — probes are fitted on one half and scored on the other."""
    g = generator(*seed_parts)
    perm = torch.randperm(n_texts, generator=g)
    train = torch.zeros(n_texts, dtype=torch.bool)
    train[perm[: n_texts // 2]] = True
    return train


def pooled(x: Tensor, doc: Tensor, n_docs: int) -> Tensor:
    """Mean over each text's tokens: ``(n_docs, d)``."""
    sums = torch.zeros(n_docs, x.shape[1], dtype=torch.float32).index_add_(0, doc.long(), x.float())
    counts = torch.bincount(doc.long(), minlength=n_docs).clamp_min(1).unsqueeze(1)
    return sums / counts


class _SAECheck(AuditCheck):
    """Shared plumbing: the workspace, the sites a check reads, and the dictionaries (the run's SAE explainers)."""

    needs = frozenset({DATASET})

    def __init__(self, sites: Sequence[str] = ()):
        self.site_names = [sites] if isinstance(sites, str) else list(sites)

    def config(self) -> Dict[str, Any]:
        return {"sites": self.site_names}

    @staticmethod
    def workspace(ctx: Any) -> Any:
        ws = (getattr(ctx.inputs, "extra", None) or {}).get("workspace")
        if ws is None:
            raise ConfigError("SAE checks run in activations suites (input_kind: activations, model "
                              "activation_sites), whose inputs carry the activation workspace")
        return ws

    def sites(self, ctx: Any) -> List[str]:
        names = self.workspace(ctx).sites.names
        unknown = [s for s in self.site_names if s not in names]
        if unknown:
            raise ConfigError(f"check {self.name!r}: sites {unknown} are not audited by this run ({names})")
        return self.site_names or names

    @staticmethod
    def dictionaries(ctx: Any) -> Dict[str, Any]:
        return {n: e for n, e in ctx.explainers.items() if hasattr(e, "fit")}

    @staticmethod
    def applies(explainer: Any, site: str, sites: Sequence[str]) -> bool:
        fn = getattr(explainer, "applies_to", None)
        return True if fn is None else bool(fn(site, sites))


# ---------------------------------------------------------------------------------------------------- quality
class SAEReconstruction(_SAECheck):
    name = "sae_reconstruction"
    description = ("Per text: MSE, fraction of variance unexplained, L0, and the loss with the reconstruction "
                   "spliced in (LM: next-token cross-entropy; MiniLM: the downstream task) against the clean model "
                   "and zero-ablation. Loss recovered = (zero - spliced) / (zero - clean), with a bootstrap CI over "
                   "texts; dead (never fire) and dense (fire on > 10 % of tokens) latents.")
    higher_is_better = {"fvu": False, "mse": False, "l0": False, "ce_clean": False, "ce_spliced": False,
                        "ce_zero_ablated": False, "ce_mean_ablated": False}

    def __init__(self, sites: Sequence[str] = (), dense_threshold: float = 0.1, max_len: int = 64):
        super().__init__(sites)
        self.dense_threshold, self.max_len = float(dense_threshold), int(max_len)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "dense_threshold": self.dense_threshold, "max_len": self.max_len}

    def losses(self, ctx: Any, source: Any, replace: Any) -> Tensor:
        ds = ctx.dataset
        ids, mask, _ = source.encode([list(w) for w in ds.words], self.max_len)
        labels = torch.as_tensor(ds.labels)
        out = []
        with torch.no_grad():
            for i in range(0, ids.shape[0], ctx.batch_size):
                sl = slice(i, i + ctx.batch_size)
                out.append(source.loss_with(ids[sl], mask[sl], labels[sl], replace=replace).double().cpu())
        return torch.cat(out)

    def evaluate(self, ctx: Any) -> CheckOutput:
        from ..metrics.sae import dead_dense, l0_per_doc, latent_frequencies, reconstruction_per_doc

        ws, n = self.workspace(ctx), len(ctx)
        sites = self.sites(ctx)
        out = CheckOutput(steps=list(sites), scores={})
        frontier: Dict[str, Any] = {}
        for site in sites:
            source = ws.source(site)
            acts = ws.activations(site, "eval")
            x = acts.acts.float()
            # FVU relative to, and mean-ablation with, the training text's statistics (a text's scores do not
            # depend on which other texts are audited)
            mean, total = ws.statistics(site)
            ce_clean = self.losses(ctx, source, None)
            ce_zero = self.losses(ctx, source, ws.splice(None))
            # mean-ablation: the site's mean activation everywhere — the stricter reference, since a
            # reconstruction that keeps only the mean already "recovers" what zeroing destroys
            ce_mean = self.losses(ctx, source, lambda a: mean.to(a.dtype).expand_as(a).clone())
            for name, explainer in self.dictionaries(ctx).items():
                if not self.applies(explainer, site, sites):
                    continue
                sae = ws.sae(explainer, site)
                x_hat, z = ws.reconstruct(sae, acts)
                rec = reconstruction_per_doc(x, x_hat, acts.doc, n, total)
                l0 = l0_per_doc(z, acts.doc, n)
                ce_spliced = self.losses(ctx, source, ws.splice(sae))
                out.scores[(site, name)] = {"mse": rec["mse"].double(), "fvu": rec["fvu"].double(),
                                            "l0": l0.double(), "ce_clean": ce_clean, "ce_spliced": ce_spliced,
                                            "ce_zero_ablated": ce_zero, "ce_mean_ablated": ce_mean}
                freq = latent_frequencies(z)
                dd = dead_dense(freq, dense_threshold=self.dense_threshold)
                parts = (ctx.seed, "sae_reconstruction", site, name)
                recovered = self.loss_recovered(ce_clean, ce_spliced, ce_zero, seed_parts=parts)
                out.summaries.append({"check": self.name, "explainer": name, "step": site,
                                      "statistic": "loss_recovered", **recovered,
                                      "definition": "(mean CE zero-ablated - mean CE spliced) / (mean CE zero-ablated "
                                                    "- mean CE clean); CI: bootstrap over texts (paired)"})
                vs_mean = self.loss_recovered(ce_clean, ce_spliced, ce_mean, seed_parts=(*parts, "mean"))
                vs_mean["ce_mean_ablated"] = vs_mean.pop("ce_zero_ablated", None)
                out.summaries.append({"check": self.name, "explainer": name, "step": site,
                                      "statistic": "loss_recovered_vs_mean_ablation", **vs_mean,
                                      "definition": "as loss_recovered, with the mean activation in place of zeros"})
                for what in ("dead", "dense"):
                    s = bootstrap_ci(dd[what].double(), seed_parts=(*parts, what))
                    out.summaries.append({"check": self.name, "explainer": name, "step": site,
                                          "statistic": f"{what}_fraction", "value": s.mean, "ci_low": s.ci_low,
                                          "ci_high": s.ci_high, "n": s.n, "unit": "latents",
                                          "tokens": int(z.shape[0])})
                frontier.setdefault(site, {})[name] = {
                    "l0": _mean_or_none(l0.double()), "fvu": _mean_or_none(rec["fvu"].double()),
                    "loss_recovered": recovered["value"], "d_sae": int(z.shape[1]),
                    "dead_fraction": float(dd["dead"].double().mean())}
                if bool(dd["dead"].all()):
                    out.reasons[(site, name)] = {"l0": ALL_DEAD}
        out.figure = {"frontier": frontier}
        out.notes = {"sites": sites}
        return out

    @staticmethod
    def loss_recovered(clean: Tensor, spliced: Tensor, zero: Tensor, *, seed_parts: tuple, n_boot: int = N_BOOT
                       ) -> Dict[str, Any]:
        ok = ~(torch.isnan(clean) | torch.isnan(spliced) | torch.isnan(zero))
        c, s, z = clean[ok], spliced[ok], zero[ok]
        n = int(c.numel())
        if n == 0:
            return {"value": None, "ci_low": None, "ci_high": None, "n": 0}

        def ratio(cm: Tensor, sm: Tensor, zm: Tensor) -> Tensor:
            den = zm - cm
            return torch.where(den.abs() > 1e-12, (zm - sm) / den, torch.full_like(den, float("nan")))

        g = generator(*seed_parts, "loss_recovered")
        idx = torch.randint(0, n, (n_boot, n), generator=g)
        boot = ratio(c[idx].mean(1), s[idx].mean(1), z[idx].mean(1))
        lo, hi = _percentile_ci(boot)
        value = float(ratio(c.mean()[None], s.mean()[None], z.mean()[None])[0])
        return {"value": None if math.isnan(value) else value, "ci_low": lo, "ci_high": hi, "n": n,
                "ce_clean": float(c.mean()), "ce_spliced": float(s.mean()), "ce_zero_ablated": float(z.mean())}


# ---------------------------------------------------------------------------------------------------- seeds
class SAESeedSimilarity(_SAECheck):
    name = "sae_seed_similarity"
    description = ("Per latent (alive on the audited tokens), the max cosine between its decoder direction and any "
                   "decoder direction of the same recipe trained with another seed on the same activations "
                   "(Bricken et al. 2023 report about 0.7 between runs).")
    higher_is_better = {"max_cosine": True}
    sample_unit = "latents"

    def __init__(self, sites: Sequence[str] = (), other_seed_offset: int = 1):
        super().__init__(sites)
        self.other_seed_offset = int(other_seed_offset)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "other_seed_offset": self.other_seed_offset}

    def evaluate(self, ctx: Any) -> CheckOutput:
        from ..metrics.sae import latent_frequencies, max_cosine

        ws = self.workspace(ctx)
        sites = self.sites(ctx)
        out = CheckOutput(steps=list(sites), scores={})
        for site in sites:
            acts = ws.activations(site, "eval")
            for name, explainer in self.dictionaries(ctx).items():
                if not self.applies(explainer, site, sites):
                    continue
                a = ws.sae(explainer, site)
                seed = int(a.cfg.seed) + self.other_seed_offset
                b = ws.sae(explainer, site, seed=seed)
                alive_a = latent_frequencies(ws.encode(a, acts)) > 0
                alive_b = latent_frequencies(ws.encode(b, acts)) > 0
                mc = max_cosine(a.W_dec.detach(), b.W_dec.detach(), alive_a=alive_a, alive_b=alive_b)
                out.scores[(site, name)] = {"max_cosine": mc.double()}
                # chance: the same statistic against a dictionary of random directions of b's size
                g = generator(ctx.seed, self.name, "chance", site, name)
                rand = torch.randn(b.W_dec.shape, generator=g, dtype=torch.float32)
                chance = max_cosine(a.W_dec.detach(), rand, alive_a=alive_a).double()
                s = bootstrap_ci(chance, seed_parts=(ctx.seed, self.name, "chance", site, name))
                out.summaries.append({"check": self.name, "explainer": name, "step": site,
                                      "statistic": "chance_max_cosine", "value": s.mean, "ci_low": s.ci_low,
                                      "ci_high": s.ci_high, "n": s.n, "unit": "latents",
                                      "definition": "max cosine of each alive latent to a dictionary of as many "
                                                    "random Gaussian directions (what seeds that share nothing give)"})
                if not bool(alive_a.any()):
                    out.reasons[(site, name)] = {"max_cosine": ALL_DEAD}
        out.notes = {"sites": sites, "reference": "Bricken et al. 2023: about 0.7 between dictionaries trained on "
                                                  "the same data"}
        return out


# ---------------------------------------------------------------------------------------------------- splitting
class SAESplitting(_SAECheck):
    name = "sae_splitting"
    description = ("Dictionaries of growing width (expansion factors) on the same activations: per latent of the "
                   "smaller, the number of latents of the larger whose decoder directions have cosine above the "
                   "threshold with it (Bricken et al. 2023's feature splitting, 512 -> 4,096 -> 16,384).")
    higher_is_better = {"n_children": True, "max_child_cosine": True}
    sample_unit = "latents"

    def __init__(self, sites: Sequence[str] = (), expansions: Sequence[int] = (2, 4, 8), threshold: float = 0.5,
                 tree_parents: int = 12):
        super().__init__(sites)
        self.expansions = sorted(int(e) for e in expansions)
        if len(self.expansions) < 2 or self.expansions[0] < 1:
            raise ConfigError(f"sae_splitting needs at least two expansion factors >= 1, got {list(expansions)}")
        self.threshold, self.tree_parents = float(threshold), int(tree_parents)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "expansions": self.expansions, "threshold": self.threshold,
                "tree_parents": self.tree_parents}

    def evaluate(self, ctx: Any) -> CheckOutput:
        from ..metrics.sae import latent_frequencies, max_cosine, splitting_tree

        ws = self.workspace(ctx)
        sites = self.sites(ctx)
        out = CheckOutput(steps=[], scores={})
        trees: Dict[str, Any] = {}
        for site in sites:
            acts = ws.activations(site, "eval")
            for name, explainer in self.dictionaries(ctx).items():
                if not self.applies(explainer, site, sites):
                    continue
                saes = {e: ws.sae(explainer, site, expansion=e) for e in self.expansions}
                alive = {e: latent_frequencies(ws.encode(s, acts)) > 0 for e, s in saes.items()}
                for small, large in zip(self.expansions, self.expansions[1:]):
                    step = f"{site}|x{small}->x{large}"
                    if step not in out.steps:
                        out.steps.append(step)
                    tree = splitting_tree(saes[small].W_dec.detach(), saes[large].W_dec.detach(),
                                          threshold=self.threshold, alive_small=alive[small],
                                          alive_large=alive[large])
                    n_children = torch.as_tensor(tree["n_children"], dtype=torch.float64)
                    best = max_cosine(saes[small].W_dec.detach(), saes[large].W_dec.detach(),
                                      alive_a=alive[small], alive_b=alive[large]).double()
                    dead = ~alive[small]
                    n_children[dead], best[dead] = float("nan"), float("nan")
                    out.scores[(step, name)] = {"n_children": n_children, "max_child_cosine": best}
                    if not bool(alive[small].any()):
                        out.reasons[(step, name)] = {"n_children": ALL_DEAD, "max_child_cosine": ALL_DEAD}
                    trees.setdefault(site, {}).setdefault(name, {})[f"x{small}->x{large}"] = _trim_tree(
                        tree, self.tree_parents)
        out.figure = {"trees": trees, "threshold": self.threshold}
        out.notes = {"sites": sites, "expansions": self.expansions}
        return out


def _trim_tree(tree: Dict[str, Any], k: int) -> Dict[str, Any]:
    """The ``k`` parents with the most children (the figure's tree), JSON-safe."""
    parents = sorted(tree.get("parents") or [], key=lambda p: (-int(p.get("n_children", 0)), p.get("parent", 0)))
    return {"parents": parents[:k], "n_parents": len(tree.get("n_children") or []),
            "orphans": tree.get("orphans"), "threshold": tree.get("threshold"), "similarity": tree.get("similarity")}


# ---------------------------------------------------------------------------------------------------- controls
#: the offline interpretability measures the randomized-model control reads
MEASURES = ("token_identity", "sparse_probing")
#: concepts with per-token ground truth in the generated texts (sanitycheck.data.token_corpus.concept_words)
TOKEN_CONCEPTS = ("negation_scope", "after_but", "babi_entity", "babi_location")


class SAERandomizedControl(_SAECheck):
    name = "sae_randomized_control"
    description = ("Heap et al. 2025: the same dictionaries trained on the same text through the model with every "
                   "weight re-initialized, and with all but the embeddings re-initialized. Each interpretability "
                   "measure must separate the trained model's dictionary from the randomized ones (95 % CI of the "
                   "difference excludes 0): the share of a latent's variance explained by the current token's "
                   "identity (per latent; CI from resampling latents), and sparse probing of known concepts (best "
                   "single latent's AUROC, mean over concepts; CI from resampling texts, paired).")
    higher_is_better = {"token_identity_share": False}
    sample_unit = "latents"
    decides = True

    def __init__(self, sites: Sequence[str] = (), controls: Sequence[str] = tuple(RANDOMIZED),
                 measures: Sequence[str] = MEASURES, concepts: Sequence[str] = TOKEN_CONCEPTS, min_token_count: int = 5,
                 top_features: int = 6, top_contexts: int = 5):
        super().__init__(sites)
        self.controls = [controls] if isinstance(controls, str) else list(controls)
        bad = [c for c in self.controls if c not in RANDOMIZED]
        if bad or not self.controls:
            raise ConfigError(f"sae_randomized_control: controls must be among {list(RANDOMIZED)}, got {self.controls}")
        self.measures = [measures] if isinstance(measures, str) else list(measures)
        bad = [m for m in self.measures if m not in MEASURES]
        if bad or not self.measures:
            raise ConfigError(f"sae_randomized_control: measures must be among {list(MEASURES)}, got {self.measures}")
        self.concepts = list(concepts)
        self.min_token_count = int(min_token_count)
        self.top_features, self.top_contexts = int(top_features), int(top_contexts)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "controls": self.controls, "measures": self.measures, "concepts": self.concepts,
                "min_token_count": self.min_token_count, "top_features": self.top_features,
                "top_contexts": self.top_contexts}

    def evaluate(self, ctx: Any) -> CheckOutput:
        from ..metrics.sae import token_identity_share

        ws = self.workspace(ctx)
        sites = self.sites(ctx)
        states = [TRAINED, *self.controls]
        out = CheckOutput(steps=[f"{s}|{st}" for s in sites for st in states], scores={})
        contexts: Dict[str, Any] = {}
        for site in sites:
            for name, explainer in self.dictionaries(ctx).items():
                if not self.applies(explainer, site, sites):
                    continue
                shares: Dict[str, Tensor] = {}
                probes: Dict[str, Dict[str, Any]] = {}
                for state in states:
                    sae = ws.sae(explainer, site, state)
                    acts = ws.activations(site, "eval", state)
                    z = ws.encode(sae, acts)
                    share = token_identity_share(z, acts.token_ids, min_count=self.min_token_count).double()
                    shares[state] = share
                    out.scores[(f"{site}|{state}", name)] = {"token_identity_share": share}
                    if bool(torch.isnan(share).all()):
                        out.reasons[(f"{site}|{state}", name)] = {"token_identity_share": ALL_DEAD}
                    if "sparse_probing" in self.measures:
                        probes[state] = self.best_latents(ctx, ws, sae, site, state)
                    contexts.setdefault(site, {}).setdefault(name, {})[state] = self.top_activating(
                        ctx, ws, z, acts, share)
                    del z
                for control in self.controls:
                    parts = (ctx.seed, self.name, site, name, control)
                    if "token_identity" in self.measures:
                        d = independent_difference_ci(shares[TRAINED], shares[control], seed_parts=(*parts, "tokens"))
                        out.summaries.append(self.summary(name, site, control, "token_identity", d, {
                            "trained": _mean_or_none(shares[TRAINED]), "control": _mean_or_none(shares[control]),
                            "unit": "latents (alive, tokens seen >= min_token_count)"}))
                    if "sparse_probing" in self.measures:
                        out.summaries.append(self.summary(name, site, control, "sparse_probing",
                                                          self.probe_difference(probes[TRAINED], probes[control],
                                                                                seed_parts=(*parts, "probing")), {}))
        out.figure = {"top_contexts": contexts}
        out.notes = {"sites": sites, "controls": self.controls, "measures": self.measures,
                     "threshold": 0.0, "rule": "the 95% CI of trained - randomized must exclude 0"}
        return out

    # ------------------------------------------------------------------ measures
    def concept_names(self, corpus: Any) -> List[str]:
        unknown = [c for c in self.concepts if c not in corpus.concepts]
        if unknown:
            raise ConfigError(f"{self.name}: concepts {unknown} are not labelled in {corpus.name!r} "
                              f"(labelled: {sorted(corpus.concepts)})")
        return list(self.concepts)

    def best_latents(self, ctx: Any, ws: Any, sae: Any, site: str, state: str) -> Dict[str, Any]:
        """Per concept: the latent chosen on the train half of the concept texts (max |AUROC - 0.5|, sign
        corrected) and its scores on the test half's tokens."""
        corpus = ws.corpus("concepts")
        acts = ws.activations(site, "concepts", state)
        z = ws.encode(sae, acts)
        train_text = text_split(len(corpus.words), seed_parts=(ctx.seed, "sae_probe_split"))
        per: Dict[str, Any] = {}
        for concept in self.concept_names(corpus):
            y = token_concept_labels(corpus, acts, concept)
            ok = y >= 0
            tr, te = ok & train_text[acts.doc.long()], ok & ~train_text[acts.doc.long()]
            if int(y[tr].unique().numel()) < 2 or int(y[te].unique().numel()) < 2:
                raise DataError(f"concept {concept!r} has one class among the probe's tokens ({int(y[ok].sum())} "
                                f"positive of {int(ok.sum())}); a concept needs both classes in train and test")
            from ..metrics.sae import best_latent_auroc

            r = best_latent_auroc(z[tr], y[tr], z[te], y[te], concept=concept)
            per[concept] = {"latent": r.get("latent"), "score": r.get("test_scores"), "labels": y[te],
                            "groups": acts.doc[te].long()}
        return per

    @staticmethod
    def probe_difference(trained: Dict[str, Any], control: Dict[str, Any], *, seed_parts: tuple,
                         n_boot: int = N_BOOT) -> Dict[str, Any]:
        """Mean over concepts of AUROC(trained's best latent) - AUROC(control's), paired over test texts."""
        concepts = sorted(trained)
        if not concepts:
            return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
        per, boots = {}, []
        if any(trained[c]["score"] is None or control[c]["score"] is None for c in concepts):
            return {"value": None, "ci_low": None, "ci_high": None, "n": len(concepts), "undefined_reason": ALL_DEAD}
        for c in concepts:
            t, r = trained[c], control[c]
            w = grouped_resamples(t["groups"], n_boot, seed_parts=(*seed_parts, c))
            labels = t["labels"]
            bt = weighted_auroc(t["score"].double(), labels, w)
            br = weighted_auroc(r["score"].double(), labels, w)
            boots.append(bt - br)
            from ..metrics.sae import auroc

            a_t, a_r = float(auroc(t["score"], labels)), float(auroc(r["score"], labels))
            lo, hi = _percentile_ci(bt - br)
            per[c] = {"trained": a_t, "control": a_r, "value": a_t - a_r, "ci_low": lo, "ci_high": hi,
                      "latent_trained": t["latent"], "latent_control": r["latent"]}
        lo, hi = _percentile_ci(torch.stack(boots).mean(0))
        value = sum(p["value"] for p in per.values()) / len(per)
        return {"value": value, "ci_low": lo, "ci_high": hi, "n": len(concepts), "per_concept": per,
                "trained": sum(p["trained"] for p in per.values()) / len(per),
                "control": sum(p["control"] for p in per.values()) / len(per)}

    def top_activating(self, ctx: Any, ws: Any, z: Tensor, acts: Any, share: Tensor) -> Dict[str, Any]:
        """The figure's data: for the most frequently firing latents, their top-activating contexts (words around
        the token) and their token-identity share."""
        corpus = ws.corpus("eval")
        freq = (z > 0).float().mean(0)
        latents = torch.argsort(freq, descending=True)[: self.top_features].tolist()
        out = []
        for j in latents:
            if float(freq[j]) == 0:
                continue
            vals, idx = torch.topk(z[:, j], min(self.top_contexts, z.shape[0]))
            ctxs = []
            for v, i in zip(vals.tolist(), idx.tolist()):
                d, w = int(acts.doc[i]), int(acts.word_index[i])
                words = corpus.words[d]
                lo = max(0, w - 6)
                ctxs.append({"activation": v, "left": " ".join(words[lo:w]) if w >= 0 else "",
                             "token": words[w] if 0 <= w < len(words) else "",
                             "right": " ".join(words[w + 1:w + 4]) if w >= 0 else ""})
            out.append({"latent": j, "frequency": float(freq[j]),
                        "token_identity_share": None if math.isnan(float(share[j])) else float(share[j]),
                        "contexts": ctxs})
        return {"features": out}

    def summary(self, name: str, site: str, control: str, measure: str, d: Dict[str, Any],
                extra: Dict[str, Any]) -> Dict[str, Any]:
        lo, hi = d.get("ci_low"), d.get("ci_high")
        separates = None if lo is None or hi is None else bool(lo > 0 or hi < 0)
        means = {k: d[k] for k in ("trained", "control") if k in d}
        means.update({k: extra[k] for k in ("trained", "control") if k in extra})
        rest = {k: v for k, v in {**d, **extra}.items() if k not in ("trained", "control")}
        return {"check": self.name, "explainer": name, "step": f"{site}|{control}", "site": site, "control": control,
                "statistic": f"{measure}_difference", "measure": measure, **rest,
                "trained_mean": means.get("trained"), "control_mean": means.get("control"), "separates": separates}

    # ------------------------------------------------------------------ verdicts
    def decide(self, recorded: RecordedAudit) -> List[Verdict]:
        """Per dictionary: PASS when every measure separates trained from every control at every site; FAIL
        naming the measures that cannot (they fail as measures of interpretability); UNDEFINED when a measure is
        undefined (a dead dictionary)."""
        by: Dict[str, List[Dict[str, Any]]] = {}
        for s in recorded.summaries:
            if s.get("statistic", "").endswith("_difference"):
                by.setdefault(s["explainer"], []).append(s)
        verdicts = []
        rule = "the 95% CI of (trained - randomized) must exclude 0 for every measure, site and control"
        for name, rows in by.items():
            undefined = [r for r in rows if r.get("separates") is None]
            failing = [r for r in rows if r.get("separates") is False]
            describe = lambda r: (f"{r['measure']} at {r['step']}: {_fmt(r.get('value'))} "  # noqa: E731
                                  f"[{_fmt(r.get('ci_low'))}, {_fmt(r.get('ci_high'))}]")
            if undefined:
                status, deciding = "undefined", undefined[0]
                text = f"undefined ({ALL_DEAD}): " + "; ".join(describe(r) for r in undefined)
            elif failing:
                status = "fail"
                deciding = min(failing, key=lambda r: abs(r.get("value") or 0.0))
                text = ("cannot separate the trained model's dictionary from the randomized: "
                        + "; ".join(describe(r) for r in failing)
                        + f". These measures fail as measures of interpretability ({rule})")
            else:
                status = "pass"
                deciding = min(rows, key=lambda r: min(abs(r["ci_low"]), abs(r["ci_high"])))
                text = "every measure separates trained from randomized: " + "; ".join(describe(r) for r in rows)
            n = int(deciding.get("n") or deciding.get("n_a") or 0)
            verdicts.append(Verdict(name, recorded.check, status == "pass", f"{status.upper()}: {text}",
                                    deciding.get("statistic", "difference"), "all_steps", 0.0,
                                    deciding.get("value"), deciding.get("step"), status, "two_sided", n, 2))
        return verdicts


def _fmt(v: Any, sign: str = "+") -> str:
    return "undefined" if v is None else f"{v:{sign}.3f}"


# ---------------------------------------------------------------------------------------------------- baselines
class SAEBaselines(_SAECheck):
    name = "sae_baselines"
    description = ("AxBench (Wu et al. 2025), DeepMind (2025): per concept with ground truth (negation scope, the "
                   "clause after 'but', bAbI entities and locations: per token; review sentiment: per text, "
                   "mean-pooled), the test AUROC of the best single latent and of a k-sparse logistic probe on "
                   "latents, against difference-in-means and a logistic probe on the raw activations (fitted on one "
                   "half of the texts, scored on the other; CIs from resampling texts). A dictionary passes where its "
                   "k-sparse probe is not significantly worse than the best baseline.")
    decides = True

    def __init__(self, sites: Sequence[str] = (), concepts: Sequence[str] = TOKEN_CONCEPTS, k: int = 8,
                 text_concepts: Sequence[str] = ("review_sentiment",), margin: float = 0.01):
        super().__init__(sites)
        self.concepts, self.k, self.text_concepts = list(concepts), int(k), list(text_concepts)
        if self.k < 1:
            raise ConfigError(f"sae_baselines: k must be >= 1, got {k!r}")
        if not 0 <= float(margin) < 0.5:
            raise ConfigError(f"sae_baselines: margin must be in [0, 0.5) (AUROC), got {margin!r}")
        self.margin = float(margin)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "concepts": self.concepts, "k": self.k, "text_concepts": self.text_concepts,
                "margin": self.margin}

    def datasets(self, ctx: Any, ws: Any, site: str) -> Dict[str, Dict[str, Any]]:
        """Per concept: raw features, labels, text groups and the train mask (tokens, or texts mean-pooled)."""
        out: Dict[str, Dict[str, Any]] = {}
        corpus = ws.corpus("concepts")
        acts = ws.activations(site, "concepts")
        train_text = text_split(len(corpus.words), seed_parts=(ctx.seed, "sae_probe_split"))
        unknown = [c for c in self.concepts if c not in corpus.concepts]
        if unknown:
            raise ConfigError(f"{self.name}: concepts {unknown} are not labelled in {corpus.name!r} "
                              f"(labelled: {sorted(corpus.concepts)})")
        for concept in [c for c in self.concepts if c not in self.text_concepts]:
            y = token_concept_labels(corpus, acts, concept)
            ok = y >= 0
            out[concept] = {"acts": acts, "rows": ok, "y": y[ok], "groups": acts.doc[ok].long(),
                            "train": train_text[acts.doc.long()][ok], "level": "token"}
        for concept in self.text_concepts:
            ev = ws.activations(site, "eval")
            labels = torch.as_tensor(ctx.dataset.labels).long()
            n = len(ctx.dataset.words)
            split = text_split(n, seed_parts=(ctx.seed, "sae_probe_split", "texts"))
            out[concept] = {"acts": ev, "pooled": True, "y": labels, "groups": torch.arange(n), "train": split,
                            "level": "text", "n_docs": n}
        for concept, d in out.items():
            y, tr = d["y"], d["train"]
            for part, mask in (("train", tr), ("test", ~tr)):
                classes = torch.unique(y[mask])
                if classes.numel() < 2:
                    raise DataError(f"concept {concept!r} has one class ({classes.tolist()}) among the {part} "
                                    f"{d['level']}s at site {site}: a detection AUROC needs both; give texts with "
                                    "both classes")
        return out

    @staticmethod
    def features(d: Dict[str, Any], x: Tensor) -> Tensor:
        if d.get("pooled"):
            return pooled(x, d["acts"].doc, d["n_docs"])
        return x[d["rows"]]

    def evaluate(self, ctx: Any) -> CheckOutput:
        from ..metrics.sae import (best_latent_auroc, diff_in_means_auroc, k_sparse_probe_auroc,
                                   logistic_probe_auroc)

        ws = self.workspace(ctx)
        sites = self.sites(ctx)
        out = CheckOutput(steps=[], scores={})
        bars: Dict[str, Any] = {}
        for site in sites:
            data = self.datasets(ctx, ws, site)
            for concept, d in data.items():
                step = f"{site}|{concept}"
                out.steps.append(step)
                raw = self.features(d, d["acts"].acts.float())
                y, tr, groups = d["y"], d["train"], d["groups"]
                seed = derive_seed(ctx.seed, self.name, site, concept)
                base = {"difference_in_means": diff_in_means_auroc(raw[tr], y[tr], raw[~tr], y[~tr]),
                        "logistic_probe": logistic_probe_auroc(raw[tr], y[tr], raw[~tr], y[~tr], seed=seed)}
                base_scores = {m: r["test_scores"] for m, r in base.items()}
                for m, r in base.items():
                    ci = auroc_with_ci(base_scores[m], y[~tr], groups[~tr], seed_parts=(ctx.seed, self.name, step, m))
                    out.summaries.append({"check": self.name, "explainer": None, "step": step, "statistic": "auroc",
                                          "method": m, "level": d["level"], **ci})
                    bars.setdefault(step, {})[m] = ci
                best_base = max(base, key=lambda m: base[m]["auroc"])
                for name, explainer in self.dictionaries(ctx).items():
                    if not self.applies(explainer, site, sites):
                        continue
                    sae = ws.sae(explainer, site)
                    z = self.features(d, ws.encode(sae, d["acts"]))
                    mine = {"best_latent": best_latent_auroc(z[tr], y[tr], z[~tr], y[~tr]),
                            "k_sparse_probe": k_sparse_probe_auroc(z[tr], y[tr], z[~tr], y[~tr], k=self.k,
                                                                   seed=seed)}
                    for m, r in mine.items():
                        if r.get("test_scores") is None:  # every latent dead: undefined, with the reason
                            ci = {"value": None, "ci_low": None, "ci_high": None, "n": int((~tr).sum()),
                                  "undefined_reason": r.get("undefined_reason") or ALL_DEAD}
                        else:
                            ci = auroc_with_ci(r["test_scores"], y[~tr], groups[~tr],
                                               seed_parts=(ctx.seed, self.name, step, name, m))
                        out.summaries.append({"check": self.name, "explainer": name, "step": step,
                                              "statistic": "auroc", "method": m, "level": d["level"], **ci,
                                              **({"latent": r.get("latent")} if "latent" in r else {})})
                        bars.setdefault(step, {})[f"{name}:{m}"] = ci
                    probe = mine["k_sparse_probe"].get("test_scores")
                    if probe is None:
                        d_ = {"a": None, "b": base[best_base]["auroc"], "value": None, "ci_low": None,
                              "ci_high": None, "n": int((~tr).sum()), "undefined_reason": ALL_DEAD}
                    else:
                        d_ = paired_auroc_difference(probe, base_scores[best_base], y[~tr], groups[~tr],
                                                     seed_parts=(ctx.seed, self.name, step, name))
                    # non-inferiority: worse only where the whole CI lies below -margin (AUROC 0.99997 against
                    # 1.00000 on 20,000 tokens is "significantly" lower, and no worse for detection)
                    worse = d_["ci_high"] is not None and d_["ci_high"] < -self.margin
                    out.summaries.append({"check": self.name, "explainer": name, "step": step,
                                          "statistic": "probe_minus_best_baseline", "baseline": best_base,
                                          "k": self.k, **d_, "worse": worse})
        out.figure = {"auroc": bars}
        out.notes = {"sites": sites, "k": self.k, "threshold": -self.margin,
                     "rule": f"fail where the 95% CI of AUROC(k-sparse probe) - AUROC(best baseline) lies below "
                             f"-{self.margin} (non-inferiority margin)"}
        return out

    def decide(self, recorded: RecordedAudit) -> List[Verdict]:
        """Per dictionary: PASS where its k-sparse probe is not significantly worse than the best baseline on any
        concept and site; FAIL naming the concepts where it is."""
        by: Dict[str, List[Dict[str, Any]]] = {}
        for s in recorded.summaries:
            if s.get("statistic") == "probe_minus_best_baseline":
                by.setdefault(s["explainer"], []).append(s)
        verdicts = []
        for name, rows in by.items():
            worse = [r for r in rows if r.get("ci_high") is not None and r["ci_high"] < -self.margin]
            undefined = [r for r in rows if r.get("ci_high") is None]
            describe = lambda r: (f"{r['step']}: probe {_fmt(r['a'], '')} vs {r['baseline']} "  # noqa: E731
                                  f"{_fmt(r['b'], '')}, difference {_fmt(r['value'])} [{_fmt(r['ci_low'])}, "
                                  f"{_fmt(r['ci_high'])}]")
            if undefined:
                status, deciding = "undefined", undefined[0]
                text = f"undefined ({ALL_DEAD}) at " + "; ".join(r["step"] for r in undefined)
            elif worse:
                status, deciding = "fail", min(worse, key=lambda r: r["ci_high"])
                text = "worse than the best baseline on " + "; ".join(describe(r) for r in worse)
            else:
                status = "pass"
                deciding = min(rows, key=lambda r: r["ci_high"] if r["ci_high"] is not None else math.inf)
                text = "not significantly worse than the best baseline anywhere: " + "; ".join(
                    describe(r) for r in rows)
            verdicts.append(Verdict(name, recorded.check, status == "pass", f"{status.upper()}: {text} (threshold: "
                                    f"the CI's upper bound must reach -{self.margin})",
                                    "probe_minus_best_baseline", "all_steps", -self.margin, deciding.get("ci_high"),
                                    deciding.get("step"), status, "above", int(deciding.get("n") or 0), 2))
        return verdicts
