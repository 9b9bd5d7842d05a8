"""Audits of attention as explanation, as suite checks: Jain & Wallace (2019) and Wiegreffe & Pinter (2019).

These checks are audits (:class:`~sanitycheck.checks.base.AuditCheck`) of a text suite on an attention model
(``has_attention``; :class:`~sanitycheck.models.attention.AttentionClassifier` or the MiniLM classifier) in
float64. Each returns per-instance scores per (step, explainer), which the runner turns into records with
bootstrap CIs and, where the suite states a rule, verdicts — the same ``results.json`` as the image checks.

Jain & Wallace, "Attention is not Explanation" (NAACL 2019):

* ``importance_agreement`` — per instance, Kendall τ-b between the audited method's importances and each
  reference method's (by magnitude), the share of instances with p ≤ 0.05, and the top-20 % overlap.
  Steps are the reference methods; the audited method (``attention`` by default) is the record's explainer.
* ``attention_permutation`` — median output change (TVD) over random permutations of the attention.
* ``adversarial_attention`` — the largest JSD from the model's attention among K searched distributions
  that keep the output within ε (optimized at 0.01, reported at 0.05).

Wiegreffe & Pinter, "Attention is not not Explanation" (EMNLP 2019), below (training in
:mod:`sanitycheck.checks.wiegreffe_pinter`):

* ``uniform_attention`` — accuracy and F1 with the attention replaced by the uniform distribution;
* ``seed_variance`` — attention JSD/TVD to the same architecture retrained with other seeds;
* ``diagnostic_mlp`` — a context-free MLP with attention frozen to guide weights (UNIFORM, TRAINED MLP,
  ADVERSARY, BASE), Table 3;
* ``adversarial_training`` — model-consistent adversaries over λ, the TVD–JSD trade-off of Figure 4.

Attention-level checks (permutation, adversarial, the W&P checks) produce records for the explainer named
``attention``, which the suite must list (its importances are the attention weights being audited).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError, NotApplicableError
from .base import ORIGINAL_MAPS, TRAIN_SPLIT, AuditCheck, CheckOutput

__all__ = ["TextCheck", "TextCheckOutput", "ImportanceAgreement", "AttentionPermutation",
           "AdversarialAttentionCheck", "UniformAttentionCheck", "SeedVarianceCheck", "DiagnosticMLPCheck",
           "AdversarialTrainingCheck", "ATTENTION"]

ATTENTION = "attention"


#: what an attention audit returns (the common audit output)
TextCheckOutput = CheckOutput


class TextCheck(AuditCheck):
    """Base of the attention audits: ``evaluate(ctx) -> CheckOutput``; stateless apart from parameters.
    ``ctx.originals`` holds every explainer's importances of the trained model."""

    #: the attention-level audits read the model and the audited texts only; importance agreement adds the maps
    needs: frozenset = frozenset()

    name = "text_check"
    description = ""
    #: metric -> higher is better (recorded with the results)
    higher_is_better: Dict[str, bool] = {}

    def config(self) -> Dict[str, Any]:
        return {}

    def evaluate(self, ctx: Any) -> TextCheckOutput:  # pragma: no cover
        raise NotImplementedError

    # helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def require_attention_explainer(ctx: Any, check: str) -> None:
        if ATTENTION not in ctx.explainers:
            raise ConfigError(f"check {check!r} audits the model's attention: list the explainer {ATTENTION!r} "
                              f"in the suite (it has {list(ctx.explainers)})")
        if not getattr(ctx.model, "has_attention", False):
            raise NotApplicableError(f"check {check!r}: {type(ctx.model).__name__} has no attention "
                                     "(has_attention is not set)")

    @staticmethod
    def undefined(values: Tensor, why: str) -> Optional[str]:
        n = int(torch.isnan(values).sum())
        return f"{n} instances undefined: {why}" if n else None


def _as_float(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float64)


class ImportanceAgreement(TextCheck):
    """Jain & Wallace's Table 2/3: does the audited importance agree with gradients and leave-one-out?

    Per instance and reference method r: Kendall τ-b between |audited| and |r| over the real tokens, with
    its asymptotic two-sided p-value (``significant`` = 1 where p ≤ ``alpha``), and the share of the top
    ``top_share`` tokens of |audited| that are also top tokens of |r|. Magnitudes, as J&W's code ranks them.
    A constant importance vector (e.g. leave-one-out on a saturated output) has no ranks: undefined.
    """

    needs = frozenset({ORIGINAL_MAPS})

    name = "importance_agreement"
    description = "rank agreement of attention with gradient and leave-one-out importances (Jain & Wallace 2019)"
    higher_is_better = {"kendall_tau": True, "significant": True, "topk_overlap": True}

    def __init__(self, audited: Sequence[str] = (ATTENTION,), references: Optional[Sequence[str]] = None,
                 alpha: float = 0.05, top_share: float = 0.2):
        self.audited = [audited] if isinstance(audited, str) else list(audited)
        self.references = None if references is None else list(references)
        if not 0 < alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
        if not 0 < top_share <= 1:
            raise ConfigError(f"top_share must be in (0, 1], got {top_share!r}")
        self.alpha, self.top_share = float(alpha), float(top_share)

    def config(self) -> Dict[str, Any]:
        return {"audited": self.audited, "references": self.references, "alpha": self.alpha,
                "top_share": self.top_share}

    def evaluate(self, ctx: Any) -> TextCheckOutput:
        originals = ctx.originals
        from ..metrics.rank import kendall_tau, topk_overlap

        # a run of a subset of the suite's explainers (e.g. re-validating one) audits those present; the
        # references must be there for anything to be compared
        missing = [n for n in (self.references or []) if n not in ctx.explainers]
        if missing:
            raise ConfigError(f"{self.name}: reference explainers {missing} are not in the run "
                              f"(it has {list(ctx.explainers)})")
        refs = self.references or [n for n in ctx.explainers if n not in self.audited]
        lengths = ctx.inputs.batch.lengths
        out = TextCheckOutput(steps=[], scores={})
        for r in refs:
            if r not in originals:
                continue
            for a in self.audited:
                if a == r or a not in originals:
                    continue
                ea, er = originals[a].abs(), originals[r].abs()
                tau, p = kendall_tau(ea, er, lengths)
                sig = torch.where(torch.isnan(p), p, (p <= self.alpha).to(torch.float64))
                top = topk_overlap(ea, er, lengths, k=self.top_share)
                if r not in out.steps:
                    out.steps.append(r)
                out.scores[(r, a)] = {"kendall_tau": _as_float(tau), "significant": _as_float(sig),
                                      "topk_overlap": _as_float(top)}
                why = "a constant importance vector (or a one-token text) has no ranks"
                out.reasons[(r, a)] = {"kendall_tau": self.undefined(tau, why), "significant": self.undefined(sig, why),
                                       "topk_overlap": None}
        out.notes = {"alpha": self.alpha, "top_share": self.top_share, "by_magnitude": True}
        return out


class AttentionPermutation(TextCheck):
    """Jain & Wallace's Figure 3: the median output change (TVD) when the attention is randomly permuted."""

    name = "attention_permutation"
    description = "median output change when attention weights are permuted (Jain & Wallace 2019)"
    higher_is_better = {"median_output_change": True, "saturated": False}

    def __init__(self, n_permutations: int = 100, batch_size: int = 256):
        self.n_permutations, self.batch_size = int(n_permutations), int(batch_size)

    def config(self) -> Dict[str, Any]:
        return {"n_permutations": self.n_permutations}

    def evaluate(self, ctx: Any) -> TextCheckOutput:
        from .adversarial_attention import permutation_test

        self.require_attention_explainer(ctx, self.name)
        med, sat = [], []
        for sl in ctx.slices(self.batch_size):
            b = ctx.model_inputs(sl)
            res = permutation_test(ctx.model, *b, n_permutations=self.n_permutations, seed=ctx.seed)
            med.append(_as_float(res.median_output_change))
            sat.append(res.saturated.to(torch.float64).cpu())
        scores = {"median_output_change": torch.cat(med), "saturated": torch.cat(sat)}
        return TextCheckOutput(steps=["score"], scores={("score", ATTENTION): scores},
                               notes={"n_permutations": self.n_permutations, "output_change": "TVD of the softmax",
                                      "saturated": "original max probability > 0.99"})


class AdversarialAttentionCheck(TextCheck):
    """Jain & Wallace's §4.2: maximally different attention (JSD) that keeps the output within ε.

    Per instance, ``k`` candidates optimized jointly (Adam, ``steps``, ``lr``; ε = ``epsilon`` in the
    loss); ``max_jsd`` is the largest JSD(candidate, attention) over candidates whose output change is at
    most ``report_epsilon`` (undefined where none is); ``found`` marks instances with such a candidate.
    The figure keeps, for the first instances, the attention, the best candidate and both outputs.
    """

    name = "adversarial_attention"
    description = "maximally different attention with the same output (Jain & Wallace 2019)"
    higher_is_better = {"max_jsd": False, "found": False, "output_change": True, "saturated": False}

    def __init__(self, k: int = 5, steps: int = 500, lr: float = 0.01, epsilon: float = 0.01,
                 report_epsilon: float = 0.05, batch_size: int = 128, figure_instances: int = 6):
        self.k, self.steps, self.lr = int(k), int(steps), float(lr)
        self.epsilon, self.report_epsilon = float(epsilon), float(report_epsilon)
        self.batch_size, self.figure_instances = int(batch_size), int(figure_instances)

    def config(self) -> Dict[str, Any]:
        return {"k": self.k, "steps": self.steps, "lr": self.lr, "epsilon": self.epsilon,
                "report_epsilon": self.report_epsilon}

    def evaluate(self, ctx: Any) -> TextCheckOutput:
        from .adversarial_attention import LN2, adversarial_attention

        self.require_attention_explainer(ctx, self.name)
        parts: Dict[str, List[Tensor]] = {"max_jsd": [], "found": [], "output_change": [], "saturated": []}
        figure: Dict[str, Any] = {"instances": []}
        slices = list(ctx.slices(self.batch_size))
        for sl in ctx.progress_bar(slices, desc="adversarial attention"):
            b = ctx.model_inputs(sl)
            res = adversarial_attention(ctx.model, *b, k=self.k, steps=self.steps, lr=self.lr, epsilon=self.epsilon,
                                        report_epsilon=self.report_epsilon, seed=ctx.seed)
            parts["max_jsd"].append(_as_float(res.max_jsd))
            parts["found"].append(res.found.to(torch.float64).cpu())
            # the output change of the candidate reported (the most different one within report_epsilon)
            div = res.jsd.masked_fill(res.output_change > self.report_epsilon, float("-inf"))
            best = div.argmax(1)
            change = res.output_change.gather(1, best[:, None]).squeeze(1)
            parts["output_change"].append(torch.where(res.found, change, torch.full_like(change, float("nan"))).cpu())
            parts["saturated"].append(res.saturated.to(torch.float64).cpu())
            need = self.figure_instances - len(figure["instances"])
            for i in range(min(need, len(best))):
                if not bool(res.found[i]):
                    continue
                one = ctx.model_inputs(slice(sl.start + i, sl.start + i + 1))
                n = int(one[1][0])
                cand = res.candidates[i, best[i], :n]
                with torch.no_grad():
                    adv_out = torch.softmax(ctx.model(*one, attention=cand[None].to(ctx.dtype)), dim=-1)[0]
                pieces = getattr(ctx.inputs.batch, "pieces", None)
                figure["instances"].append({
                    "index": sl.start + i, "tokens": list(pieces[sl.start + i]) if pieces else None,
                    "attention": res.attention[i, :n].tolist(), "adversarial": cand.tolist(),
                    "jsd": float(res.jsd[i, best[i]]), "output_change": float(res.output_change[i, best[i]]),
                    "original_output": res.original_output[i].tolist(), "adversarial_output": adv_out.tolist()})
        scores = {k: torch.cat(v) for k, v in parts.items()}
        why = f"no candidate kept the output change within {self.report_epsilon}"
        reasons = {"max_jsd": self.undefined(scores["max_jsd"], why),
                   "output_change": self.undefined(scores["output_change"], why)}
        return TextCheckOutput(steps=["score"], scores={("score", ATTENTION): scores},
                               reasons={("score", ATTENTION): reasons}, figure=figure,
                               notes={**self.config(), "jsd_upper_bound": LN2, "jsd_units": "nats",
                                      "output_change": "TVD of the softmax (|Δp| for two classes)"})


# --------------------------------------------------------------------------------------------------------
# Wiegreffe & Pinter, "Attention is not not Explanation" (EMNLP 2019). The training functions live in
# :mod:`sanitycheck.checks.wiegreffe_pinter`; these checks evaluate on the audited sample.


def _audited_data(ctx: Any) -> Tuple[Tensor, ...]:
    return (*ctx.inputs.batch, ctx.labels)


def _train_spec(ctx: Any, check: str) -> Any:
    from ..models.attention import TextTrainSpec

    spec = getattr(ctx.model, "sanitycheck_spec", None)
    if not isinstance(spec, TextTrainSpec):
        raise NotApplicableError(f"{check} retrains models of the audited architecture: it needs a Jain & Wallace "
                                 f"attention classifier (text_attention), not {type(ctx.model).__name__}")
    return spec


def _correct(pred: Tensor, labels: Tensor) -> Tensor:
    return (pred.cpu() == labels.cpu()).to(torch.float64)


def _f1_summary(ctx: Any, label: str, pred: Tensor, check: str) -> Dict[str, Any]:
    from .wiegreffe_pinter import bootstrap_f1

    n_classes = len(ctx.classes)
    s = bootstrap_f1(pred.cpu(), ctx.labels.cpu(), n_classes, seed_parts=(ctx.seed, "f1", check, label))
    return {"check": check, "step": label, "statistic": "f1_positive" if n_classes == 2 else "f1_macro",
            "value": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": len(pred),
            "n_undefined_resamples": s.n_undefined, "bootstrap": "percentile, 2000 resamples of instances"}


class UniformAttentionCheck(TextCheck):
    """W&P §3.1: replace the attention by the uniform distribution over the real tokens. Does accuracy drop?

    Per instance: ``correct`` (trained attention), ``correct_uniform``, ``accuracy_drop`` (their difference,
    whose mean is the drop in accuracy) and ``output_tvd`` between the two output distributions. F1 of both
    (positive class; macro for more classes) with bootstrap CIs is in the summaries. When the drop is ~0 the
    task does not need attention, and the other attention checks say little (W&P's first test).
    """

    name = "uniform_attention"
    description = "accuracy with uniform attention imposed (Wiegreffe & Pinter 2019, baseline)"
    higher_is_better = {"accuracy_drop": True, "output_tvd": True, "correct": True, "correct_uniform": True}

    def evaluate(self, ctx: Any) -> TextCheckOutput:
        from .adversarial_attention import tvd
        from .wiegreffe_pinter import model_outputs, uniform_outputs

        self.require_attention_explainer(ctx, self.name)
        data = _audited_data(ctx)
        trained, uniform = model_outputs(ctx.model, data), uniform_outputs(ctx.model, data)
        c, cu = _correct(trained.predictions, ctx.labels), _correct(uniform.predictions, ctx.labels)
        scores = {"correct": c, "correct_uniform": cu, "accuracy_drop": c - cu,
                  "output_tvd": _as_float(tvd(trained.probabilities, uniform.probabilities))}
        return TextCheckOutput(
            steps=["score"], scores={("score", ATTENTION): scores},
            summaries=[_f1_summary(ctx, "trained attention", trained.predictions, self.name),
                       _f1_summary(ctx, "uniform attention", uniform.predictions, self.name)],
            notes={"uniform": "1/length on every real token, imposed through forward(attention=)"})


class SeedVarianceCheck(TextCheck):
    """W&P §3.2: how far is the attention of the same model retrained with other seeds (JSD, TVD)?

    Steps are the seeds; per instance the JSD and TVD of the attention to the audited model's and the TVD of
    the outputs. Large attention divergence with equal outputs means attention is one of many equally good.
    """

    needs = frozenset({TRAIN_SPLIT})

    name = "seed_variance"
    description = "attention of the same architecture retrained with other seeds (Wiegreffe & Pinter 2019)"
    higher_is_better = {"attention_jsd": False, "attention_tvd": False, "output_tvd": False}

    def __init__(self, seeds: Sequence[int] = (1, 2)):
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ConfigError("seed_variance needs at least one seed")

    def config(self) -> Dict[str, Any]:
        return {"seeds": self.seeds}

    def evaluate(self, ctx: Any) -> TextCheckOutput:
        from .wiegreffe_pinter import attention_divergence, train_seed_variants

        self.require_attention_explainer(ctx, self.name)
        spec = _train_spec(ctx, self.name)
        if spec.seed in self.seeds:
            raise ConfigError(f"seed_variance: seed {spec.seed} is the audited model's own seed")
        train, test = ctx.train_split()
        models = train_seed_variants(spec, train, test, self.seeds, cache_dir=ctx.cache_dir, progress=ctx.progress)
        data = _audited_data(ctx)
        out = TextCheckOutput(steps=[], scores={})
        accuracies = {}
        for seed, model in zip(self.seeds, models):
            step = f"seed={seed}"
            div = attention_divergence(ctx.model, model, data)
            out.steps.append(step)
            out.scores[(step, ATTENTION)] = {k: _as_float(v) for k, v in div.items()}
            accuracies[step] = model.sanitycheck_info.get("test_accuracy")
        out.notes = {"seeds": self.seeds, "base_seed": spec.seed, "test_accuracy": accuracies}
        return out


class DiagnosticMLPCheck(TextCheck):
    """W&P §4 (Table 3): an MLP without context (the Average encoder) whose attention is frozen to guide weights.

    Guides: ``uniform``, ``trained_mlp`` (the MLP learns its own attention), ``adversary`` (imposed from a
    model-consistent adversary trained with λ = ``adversary_lambda``) and ``base`` (imposed from the audited
    model) — in that order, so the final step is the audited model's. Per instance ``correct`` and
    ``gain_over_uniform`` (correct minus the uniform guide's correct); F1 per guide with bootstrap CIs is in
    the summaries. W&P's finding is the ordering UNIFORM < TRAINED MLP < BASE LSTM: attention learned by the
    model carries information usable by another model. A task that uniform attention solves cannot show it.
    """

    needs = frozenset({TRAIN_SPLIT})

    name = "diagnostic_mlp"
    description = "a context-free MLP guided by frozen attention weights (Wiegreffe & Pinter 2019, Table 3)"
    higher_is_better = {"correct": True, "gain_over_uniform": True}

    def __init__(self, adversary_lambda: float = 1e-4):
        if not (isinstance(adversary_lambda, (int, float)) and adversary_lambda >= 0):
            raise ConfigError(f"adversary_lambda must be a number >= 0, got {adversary_lambda!r}")
        self.adversary_lambda = float(adversary_lambda)

    def config(self) -> Dict[str, Any]:
        return {"adversary_lambda": self.adversary_lambda}

    def evaluate(self, ctx: Any) -> TextCheckOutput:
        from .wiegreffe_pinter import train_adversary, train_diagnostic

        self.require_attention_explainer(ctx, self.name)
        spec = _train_spec(ctx, self.name)
        train, test = ctx.train_split()
        common = {"cache_dir": ctx.cache_dir, "progress": ctx.progress}
        adversary = train_adversary(ctx.model, spec, train, test, self.adversary_lambda, **common)
        guides = [("uniform", "uniform", None), ("trained_mlp", "trained", None),
                  ("adversary", "imposed", adversary), ("base", "imposed", ctx.model)]
        data = _audited_data(ctx)
        out = TextCheckOutput(steps=[], scores={})
        correct: Dict[str, Tensor] = {}
        info = {}
        for step, guide, guide_model in guides:
            res = train_diagnostic(guide, spec, train, test, guide_model=guide_model, **common)
            pred = res.predict(data).predictions
            correct[step] = _correct(pred, ctx.labels)
            out.steps.append(step)
            out.summaries.append(_f1_summary(ctx, step, pred, self.name))
            info[step] = {"test_accuracy": res.accuracy, "test_f1": res.f1}
        for step in out.steps:
            out.scores[(step, ATTENTION)] = {"correct": correct[step],
                                             "gain_over_uniform": correct[step] - correct["uniform"]}
        out.notes = {"guides": info, "adversary_lambda": self.adversary_lambda,
                     "adversary": {k: adversary.sanitycheck_info.get(k) for k in
                                   ("test_accuracy", "mean_test_output_tvd", "mean_test_attention_jsd")},
                     "diagnostic": "Average encoder (projection + tanh per token), attention frozen to the guide"}
        return out


class AdversarialTrainingCheck(TextCheck):
    """W&P §5 (Figure 4): model-consistent adversaries trained with TVD(ŷ_adv, ŷ) − λ·KL(α_adv ‖ α), λ swept.

    Steps are the λ values; per instance the output TVD and attention JSD between each adversary and the
    audited model, and whether the adversary is still correct. The figure plots mean TVD against mean JSD
    (with bootstrap CIs): attention that is easy to change without changing outputs sits low and right.
    """

    needs = frozenset({TRAIN_SPLIT})

    name = "adversarial_training"
    description = "model-consistent adversarial attention training, lambda swept (Wiegreffe & Pinter 2019)"
    higher_is_better = {"output_tvd": True, "attention_jsd": False, "correct": True}

    def __init__(self, lambdas: Sequence[float] = (0.0, 1e-4, 1e-3, 1e-2)):
        self.lambdas = [float(x) for x in lambdas]
        if not self.lambdas or any(x < 0 for x in self.lambdas):
            raise ConfigError(f"lambdas must be a non-empty list of numbers >= 0, got {lambdas!r}")

    def config(self) -> Dict[str, Any]:
        return {"lambdas": self.lambdas}

    def evaluate(self, ctx: Any) -> TextCheckOutput:
        from ..stats import bootstrap_ci
        from .wiegreffe_pinter import lambda_sweep, model_outputs

        self.require_attention_explainer(ctx, self.name)
        spec = _train_spec(ctx, self.name)
        train, test = ctx.train_split()
        data = _audited_data(ctx)
        sweep = lambda_sweep(ctx.model, spec, train, data, self.lambdas, cache_dir=ctx.cache_dir,
                             progress=ctx.progress)
        out = TextCheckOutput(steps=[], scores={}, figure={"tradeoff": []})
        for k, lam in enumerate(self.lambdas):
            step = f"lambda={lam:g}"
            pred = model_outputs(sweep.adversaries[k], data).predictions
            tv, js = _as_float(sweep.output_tvd[k]), _as_float(sweep.attention_jsd[k])
            out.steps.append(step)
            out.scores[(step, ATTENTION)] = {"output_tvd": tv, "attention_jsd": js,
                                             "correct": _correct(pred, ctx.labels)}
            st = bootstrap_ci(tv, seed_parts=(ctx.seed, "bootstrap", self.name, step, "output_tvd"))
            sj = bootstrap_ci(js, seed_parts=(ctx.seed, "bootstrap", self.name, step, "attention_jsd"))
            out.figure["tradeoff"].append({"label": f"λ={lam:g}", "tvd": st.mean, "tvd_low": st.ci_low,
                                           "tvd_high": st.ci_high, "jsd": sj.mean, "jsd_low": sj.ci_low,
                                           "jsd_high": sj.ci_high})
        out.notes = {"lambdas": self.lambdas, "loss": "TVD(y_adv, y_base) - lambda * KL(alpha_adv || alpha_base)"}
        return out
