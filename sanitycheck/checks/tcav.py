"""TCAV under the same sanity checks (issue 16): audits (``unit = "check"``) of concept explanations.

* ``tcav_random_concepts`` — the paper's test (Kim et al. 2018, §3.2): the concept's TCAV scores over
  ``n_runs`` runs against different random sets differ from random concepts' (two-sided t-test, Bonferroni
  over concepts × layers). Pass when every concept is significant at some layer.
* ``tcav_model_randomization`` — new: cascading randomization (:mod:`sanitycheck.checks.randomization`) of
  the layers **above** the bottleneck layer, from the logits down. The CAVs do not change (the activations at
  the bottleneck do not depend on the layers above it); the gradients do. Per step: is the concept still
  significant? A concept whose significance survives the fully randomized top is not explaining the model:
  fail. Pass when significance is lost at some step (recorded: the first step where it is lost).
* ``tcav_ground_truth`` — two models: the audited one, where the texture decides the label, and a twin
  where it does not (``twin_model``: the run's ``context={"random_label_model": ...}``, a module or a
  callable returning one — the same slot :class:`~sanitycheck.checks.data_randomization.DataRandomization`
  reads). Over ``seeds`` (fresh concept and random sets per seed): the detection rate in the first model and
  the false-positive rate in the twin. Pass when detection >= ``min_detection`` and the false-positive rate
  <= ``max_false_positive_rate``.

Concept sets come by name from :func:`sanitycheck.data.concepts.concept_sets` (``concepts``: e.g.
``["stripes"]``; random sets ``f"{random}_{i}"`` for i = 0..n_runs). Each check returns per-run scores as
records (``tcav_score``, ``random_tcav_score``, ``tcav_minus_random``; ground truth: ``significant`` per seed)
under the explainer name ``record_as`` (default ``"tcav"``), its own verdict with the p-values, threshold and
reason in ``notes["verdict"]`` (and one summary per test in ``summaries``), and the figure's data in
``figure``: per layer, the concept's mean score with its CI beside the random runs' scores.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelError
from ..metrics.tcav import MIN_RUNS, NULLS, SCORES, CAVBank, TCAVResult, fit_cavs, resolve_layers, score_cavs
from ..seeding import derive_seed
from .base import TWIN_MODEL, AuditCheck, CheckOutput, RecordedAudit

__all__ = ["TCAVRandomConcepts", "TCAVModelRandomization", "TCAVGroundTruth", "load_concept_sets", "layers_above",
           "FIGURES"]

TRAINED = "trained"
#: the figures of the TCAV audits: a function of the results document (``sanitycheck.report.tcav_figures``)
FIGURES = "sanitycheck.report.tcav_figures:write_tcav_figures"
#: Fashion-MNIST items stamped with a texture (the controlled data set's concept), and plain items as random sets
_ITEMS_RE = re.compile(r"^fmnist_items_(stripes|dots)$")
_PLAIN_RE = re.compile(r"^random_fmnist_items_(\d+)$")


def load_concept_sets(name: str, *, size: Any, n: int, seed: int, channels: int = 3) -> List[Any]:
    """The contract's loader (:func:`sanitycheck.data.concepts.concept_sets`), at the model's size and channels.

    Two more families for the controlled data set (:mod:`sanitycheck.data.textured_fmnist`, 1x28x28):
    ``"fmnist_items_stripes"`` / ``"fmnist_items_dots"`` (Fashion-MNIST test items stamped with the texture, as
    in training) and ``"random_fmnist_items_<i>"`` (plain items: random sets from the same distribution)."""
    items, plain = _ITEMS_RE.match(str(name)), _PLAIN_RE.match(str(name))
    if items or plain:
        if channels != 1 or size not in (28, (28, 28)):
            raise ConfigError(f"concept set {name!r} holds 1x28x28 Fashion-MNIST items, but the model's inputs are "
                              f"{channels}x{size}; use the procedural sets (stripes, random_noise_<i>) for it")
        from ..data.textured_fmnist import item_concept_set

        return [item_concept_set(name, n, seed=seed, texture=items.group(1) if items else None)]
    try:
        from ..data.concepts import concept_sets
    except ImportError as err:  # pragma: no cover - until part tcavdata is merged
        raise ConfigError("TCAV checks read concept sets from sanitycheck.data.concepts.concept_sets, which is not "
                          f"available ({err})") from err
    return list(concept_sets(name, size=size, n=n, seed=seed, channels=channels))


def layers_above(model: nn.Module, layer: str, example_input: Tensor) -> List[str]:
    """Parameterized layers (:func:`~sanitycheck.checks.randomization.parameter_layers`) first used after
    ``layer`` has produced its output, in forward order: the layers cascading randomization above the bottleneck
    re-initializes. ``layer`` itself, its children and its ancestors are never among them."""
    from .randomization import ROOT, _FirstUse

    resolve_layers(model, [layer])
    owner_of = {}
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owner_of.setdefault(id(p), name or ROOT)
    mode = _FirstUse(owner_of)
    done: List[int] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda *_: done.append(len(mode.order)))
    try:
        with torch.no_grad(), mode:
            model(example_input)
    finally:
        handle.remove()
    if not done:
        raise ModelError(f"layer {layer!r} is not called in the forward pass of {type(model).__name__}")
    inside = lambda n: n == layer or n.startswith(layer + ".") or layer.startswith(n + ".") or n == ROOT  # noqa: E731
    return [n for n in mode.order[done[-1]:] if not inside(n)]


def _threshold(notes: Dict[str, Any]) -> Tuple[float, int]:
    """The Bonferroni-corrected alpha the recorded configuration gives: alpha / (concepts x layers)."""
    m = len(notes["concepts"]) * len(notes["layers"])
    return float(notes["alpha"]) / m, m


def _verdict(recorded: RecordedAudit, status: str, reason: str, metric: str, rule: str, threshold: float,
             measured: Optional[float], step: Optional[str], direction: str, n: int) -> Any:
    from ..results import STATUS_WORDS, Verdict

    return Verdict(str(recorded.notes.get("record_as", "tcav")), recorded.check, status == "pass",
                   f"{STATUS_WORDS[status]}: {reason}", metric, rule, float(threshold),
                   None if measured is None else float(measured), step, status, direction, int(n), 2)


def _no_records(recorded: RecordedAudit, threshold: float, rule: str, direction: str) -> List[Any]:
    return [_verdict(recorded, "insufficient_data", "the results record no test of this check", "p_value", rule,
                     threshold, None, None, direction, 0)]


def _rows(recorded: RecordedAudit) -> List[Dict[str, Any]]:
    return [r for r in recorded.summaries if r.get("check", recorded.check) == recorded.check and "p_value" in r]


class _TCAVCheck(AuditCheck):
    """Shared parameters and plumbing of the TCAV audits."""

    needs: frozenset = frozenset()
    higher_is_better = {"tcav_score": True, "random_tcav_score": False, "tcav_minus_random": True}
    #: the verdict is the t-test's (Bonferroni), recomputed from the recorded p-values by :meth:`decide`
    decides = True
    #: the audit draws its own figures from the results document (``sanitycheck.report.figures``)
    figures = FIGURES

    def __init__(self, concepts: Sequence[str] = ("stripes",), layers: Sequence[str] = (), random: str = "random_noise",
                 n_runs: int = MIN_RUNS, alpha: float = 0.05, n_images: int = 50, min_images: int = 10,
                 score: str = "sign", null: str = "counterpart", ridge: float = 1.0, target: Optional[int] = None,
                 record_as: str = "tcav"):
        self.concepts = [concepts] if isinstance(concepts, str) else list(concepts)
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.concepts:
            raise ConfigError(f"{type(self).__name__}: name at least one concept set (concepts=[...])")
        if isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < MIN_RUNS:
            raise ConfigError(f"n_runs must be an integer >= {MIN_RUNS} (the paper's test), got {n_runs!r}")
        if not 0 < alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
        if score not in SCORES or null not in NULLS:
            raise ConfigError(f"score must be one of {SCORES} (got {score!r}) and null one of {NULLS} (got {null!r})")
        if int(n_images) < int(min_images):
            raise ConfigError(f"n_images={n_images} is fewer than min_images={min_images} the test needs")
        self.random, self.n_runs, self.alpha = random, int(n_runs), float(alpha)
        self.n_images, self.min_images, self.score, self.null = int(n_images), int(min_images), score, null
        self.ridge, self.target, self.record_as = float(ridge), target, record_as

    def config(self) -> Dict[str, Any]:
        return {"concepts": self.concepts, "layers": self.layers, "random": self.random, "n_runs": self.n_runs,
                "alpha": self.alpha, "n_images": self.n_images, "min_images": self.min_images, "score": self.score,
                "null": self.null, "ridge": self.ridge, "target": self.target, "record_as": self.record_as}

    # ------------------------------------------------------------------ plumbing
    def sets(self, ctx: Any, seed: int) -> Tuple[List[Any], List[Any]]:
        c, h, w = (int(v) for v in ctx.x.shape[-3:])
        kw = dict(size=h if h == w else (h, w), n=self.n_images, seed=seed, channels=c)
        concepts = [s for name in self.concepts for s in load_concept_sets(name, **kw)]
        randoms = [s for i in range(self.n_runs + 1) for s in load_concept_sets(f"{self.random}_{i}", **kw)]
        return concepts, randoms

    def target_of(self, ctx: Any) -> Any:
        """The class whose logit TCAV differentiates: ``target`` if given, else the run's class targets."""
        if self.target is not None:
            return int(self.target)
        t = ctx.target
        if isinstance(t, (int, Tensor)):
            return t
        classes = getattr(t, "classes", None)
        if isinstance(classes, Tensor):  # sanitycheck.targets.ClassTarget (logit or probability: the class)
            return classes
        raise ConfigError(f"{self.name}: TCAV differentiates a class logit, but the run's target is "
                          f"{type(t).__name__}; set the check's target= (a class index)")

    def bank(self, ctx: Any, model: nn.Module, seed: int) -> CAVBank:
        if not self.layers:  # checked here, not in __init__: get_check(name) builds every check without params
            raise ConfigError(f"check {self.name!r}: name at least one layer (params: layers: [...], e.g. "
                              "'net.block6')")
        concepts, randoms = self.sets(ctx, seed)
        return fit_cavs(model, concepts, randoms, self.layers, shape=tuple(ctx.x.shape[1:]), n_runs=self.n_runs,
                        min_images=self.min_images, batch_size=ctx.batch_size, device=ctx.device, ridge=self.ridge,
                        null=self.null, dtype=ctx.x.dtype)

    def result(self, ctx: Any, bank: CAVBank, model: nn.Module, label: str = "") -> TCAVResult:
        return score_cavs(bank, model, ctx.x, self.target_of(ctx), alpha=self.alpha, seed=ctx.seed, score=self.score,
                          batch_size=ctx.batch_size, device=ctx.device, label=label)

    def add_scores(self, out: CheckOutput, res: TCAVResult, prefix: str = "") -> None:
        for t in res.tests:
            step = f"{prefix}{t.concept}@{t.layer}"
            out.steps.append(step)
            # per explained input (what results.json's per_sample holds, re-runnable on a sample of inputs): the
            # share of runs in which its directional derivative is positive; the mean over inputs is the mean
            # sign-count TCAV score over runs. The runs' own scores, CIs and the test are in the summary row.
            out.scores[(step, self.record_as)] = {
                "tcav_score": t.per_input.double(), "random_tcav_score": t.random_per_input.double(),
                "tcav_minus_random": (t.per_input - t.random_per_input).double()}
            undefined = "every run has a zero CAV (identical sets): no direction"
            out.reasons[(step, self.record_as)] = {m: (undefined if bool(torch.isnan(v).any()) else None)
                                                   for m, v in out.scores[(step, self.record_as)].items()}
            # the common summary row (check, step, statistic, value, CI, n) plus the test
            out.summaries.append({
                "check": self.name, "step": step, "statistic": f"tcav_{self.score}", "value": t.summary.mean,
                "ci_low": t.summary.ci_low, "ci_high": t.summary.ci_high, "n": t.summary.n,
                "random_value": t.random_summary.mean, "random_ci_low": t.random_summary.ci_low,
                "random_ci_high": t.random_summary.ci_high, "p_value": t.p_value, "p_adjusted": t.p_adjusted,
                "threshold": t.threshold, "significant": t.significant, "reason": t.reason,
                "test": "two-sided t-test (scipy.stats.ttest_ind), Bonferroni over concepts x layers",
                "bootstrap": "percentile, 2000 resamples of runs", "layer": t.layer, "concept": t.concept,
                "scores": [None if v != v else round(float(v), 7) for v in t.scores.tolist()],
                "random_scores": [None if v != v else round(float(v), 7) for v in t.random_scores.tolist()]})

    @staticmethod
    def figure_of(res: TCAVResult) -> Dict[str, Any]:
        """Per layer: each concept's mean score with its CI, and the random runs' scores (the null)."""
        layers: Dict[str, Any] = {}
        for t in res.tests:
            entry = layers.setdefault(t.layer, {"concepts": {}, "random_scores": t.random_scores.tolist(),
                                                 "random_summary": t.random_summary.as_dict()})
            entry["concepts"][t.concept] = {**t.summary.as_dict(), "scores": t.scores.tolist(),
                                            "p_value": t.p_value, "significant": t.significant}
        return {"layers": layers, "score": res.score, "alpha": res.alpha, "n_comparisons": res.n_comparisons}


class TCAVRandomConcepts(_TCAVCheck):
    name = "tcav_random_concepts"
    description = ("TCAV's statistical test (Kim et al. 2018): the concept's scores over runs against different "
                   "random sets must differ from random concepts' (two-sided t-test, Bonferroni over concepts x "
                   "layers).")

    def evaluate(self, ctx: Any) -> CheckOutput:
        res = self.result(ctx, self.bank(ctx, ctx.model, ctx.seed), ctx.model)
        out = CheckOutput(steps=[], scores={}, figure={TRAINED: self.figure_of(res)})
        self.add_scores(out, res)
        per_concept = {}
        for c in self.concepts_of(res):
            tests = [t for t in res.tests if t.concept == c]
            best = min(tests, key=lambda t: t.p_value)
            per_concept[c] = {"significant": any(t.significant for t in tests), "p_value": best.p_value,
                              "layer": best.layer, "threshold": best.threshold, "reason": best.reason}
        passed = all(v["significant"] for v in per_concept.values())
        failing = [c for c, v in per_concept.items() if not v["significant"]]
        reason = ("every concept is significant at some layer after Bonferroni: " if passed else
                  f"not significant at any layer after Bonferroni: {failing}; ") + "; ".join(
            f"{c}: min p = {v['p_value']:.3g} at {v['layer']} (threshold {v['threshold']:.3g})"
            for c, v in per_concept.items())
        out.notes = {"verdict": {"status": "pass" if passed else "fail", "passed": passed, "concepts": per_concept,
                                 "threshold": res.tests[0].threshold, "reason": reason},
                     "passes": res.passes, **self.config()}
        return out

    @staticmethod
    def concepts_of(res: TCAVResult) -> List[str]:
        return list(dict.fromkeys(t.concept for t in res.tests))

    def decide(self, recorded: RecordedAudit) -> List[Any]:
        """Pass when every concept's recorded p-value at some layer is below alpha / (concepts x layers);
        measured: the deciding p-value (a failing concept's smallest, else the weakest concept's smallest)."""
        thr, m = _threshold(recorded.notes)
        rule = "all_steps"  # every (concept, layer) test: a t-test, Bonferroni
        rows = _rows(recorded)
        if not rows:
            return _no_records(recorded, thr, rule, "below")
        best: Dict[str, Dict[str, Any]] = {}
        for r in rows:
            concept, layer = str(r["step"]).split("@", 1)
            if concept not in best or float(r["p_value"]) < best[concept]["p"]:
                best[concept] = {"p": float(r["p_value"]), "layer": layer, "n": int(r.get("n") or 0), "step": r["step"]}
        failing = [c for c, v in best.items() if not v["p"] < thr]
        decider = failing[0] if failing else max(best, key=lambda c: best[c]["p"])
        d = best[decider]
        each = "; ".join(f"{c}: min p = {v['p']:.3g} at {v['layer']}" for c, v in best.items())
        if failing:
            reason = (f"concept(s) {failing} not significant at any layer: {decider}'s smallest p = {d['p']:.3g} "
                      f"(at {d['layer']}) >= {thr:.3g} (alpha {recorded.notes['alpha']} / {m} concepts x layers, "
                      f"two-sided t-test of {d['n']} runs against random concepts); {each}")
        else:
            reason = (f"every concept is significant at some layer; the weakest, {decider}, has p = {d['p']:.3g} at "
                      f"{d['layer']} < {thr:.3g} (alpha {recorded.notes['alpha']} / {m} concepts x layers, two-sided "
                      f"t-test of {d['n']} runs against random concepts); {each}")
        return [_verdict(recorded, "fail" if failing else "pass", reason, "p_value", rule, thr, d["p"], d["step"],
                         "below", d["n"])]


class TCAVModelRandomization(_TCAVCheck):
    name = "tcav_model_randomization"
    description = ("Cascading randomization of the layers above the bottleneck layer: a concept whose TCAV "
                   "significance survives the randomized model is not explaining the model.")

    def evaluate(self, ctx: Any) -> CheckOutput:
        from .randomization import CascadingRandomization

        model = ctx.model
        bank = self.bank(ctx, model, ctx.seed)
        example = ctx.x[:1].to(ctx.device)
        trained = self.result(ctx, bank, model, label=TRAINED)
        out = CheckOutput(steps=[], scores={}, figure={TRAINED: self.figure_of(trained)})
        self.add_scores(out, trained, prefix=f"{TRAINED}|")
        history: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
        for t in trained.tests:
            history[(t.concept, t.layer)] = [{"step": TRAINED, "p_value": t.p_value, "significant": t.significant}]
        above_of = {layer: layers_above(model, layer, example) for layer in self.layers}
        for layer in self.layers:
            above = above_of[layer]
            if not above:
                raise ConfigError(f"layer {layer!r} has no parameterized layer above it in {type(model).__name__}: "
                                  "nothing to randomize; choose a lower bottleneck layer")
            sub = CAVBank(bank.concepts, [layer], {layer: bank.cavs[layer]}, bank.n_runs, bank.shape,
                          bank.set_forward_batches)
            check = CascadingRandomization(layers=above)
            for state in check.states(model, seed=ctx.seed, example_input=example):
                res = score_cavs(sub, state.model, ctx.x, self.target_of(ctx), alpha=self.alpha, seed=ctx.seed,
                                 score=self.score, batch_size=ctx.batch_size, device=ctx.device,
                                 n_comparisons=trained.n_comparisons, label=state.step)
                self.add_scores(out, res, prefix=f"{state.step}|")
                for t in res.tests:
                    history[(t.concept, t.layer)].append({"step": state.step, "p_value": t.p_value,
                                                          "significant": t.significant})
                out.figure[f"{layer}|{state.step}"] = self.figure_of(res)
        per: Dict[str, Any] = {}
        statuses = []
        for (concept, layer), steps in history.items():
            key = f"{concept}@{layer}"
            lost = next((s["step"] for s in steps[1:] if not s["significant"]), None)
            if not steps[0]["significant"]:
                status, why = "inconclusive", "not significant on the trained model: nothing to lose"
            elif steps[-1]["significant"]:
                status, why = "fail", (f"still significant with every layer above {layer} randomized (p = "
                                       f"{steps[-1]['p_value']:.3g}): the concept does not explain the model")
            else:
                status, why = "pass", f"significance lost at step {lost!r} (first randomized step where p >= threshold)"
            statuses.append(status)
            per[key] = {"status": status, "lost_at": lost, "steps": steps, "reason": why}
        overall = "fail" if "fail" in statuses else ("pass" if statuses and all(s == "pass" for s in statuses)
                                                     else "inconclusive")
        out.notes = {"verdict": {"status": overall, "passed": overall == "pass", "tests": per,
                                 "threshold": trained.tests[0].threshold,
                                 "reason": "; ".join(f"{k}: {v['status']} ({v['reason']})" for k, v in per.items())},
                     "layers_above": above_of, **self.config()}
        return out


    def decide(self, recorded: RecordedAudit) -> List[Any]:
        """Per (concept, layer), from the recorded p-values of the trained model and each cascade step (in the
        order recorded): inconclusive when not significant on the trained model, fail when still significant at
        the last step (every layer above the bottleneck randomized), pass when significance is lost; the check
        fails if any test fails, passes if all pass. Measured: the deciding test's p-value at its deciding step."""
        thr, m = _threshold(recorded.notes)
        rule = "all_steps"  # every (concept, layer) test at every cascade step
        rows = _rows(recorded)
        if not rows:
            return _no_records(recorded, thr, rule, "above")
        tests: Dict[str, List[Tuple[str, float, int]]] = {}
        for r in rows:
            step, key = str(r["step"]).split("|", 1)
            tests.setdefault(key, []).append((step, float(r["p_value"]), int(r.get("n") or 0)))
        per: Dict[str, Tuple[str, Tuple[str, float, int], str]] = {}
        for key, steps in tests.items():
            sig = [p < thr for _, p, _ in steps]
            if not sig[0]:
                per[key] = ("inconclusive", steps[0], f"{key}: not significant on the trained model (p = "
                            f"{steps[0][1]:.3g} >= {thr:.3g}): nothing to lose")
            elif len(steps) < 2:
                per[key] = ("insufficient_data", steps[0], f"{key}: no randomized step recorded")
            elif sig[-1]:
                first = next((s for s, ok in zip(steps[1:], sig[1:]) if not ok), None)
                lost = (f"; significance was first lost at step {first[0]!r} (p = {first[1]:.3g}) and came back "
                        f"on a more randomized model" if first else "; it is significant at every step")
                per[key] = ("fail", steps[-1], f"{key}: still significant with every layer above the bottleneck "
                            f"randomized (step {steps[-1][0]!r}: p = {steps[-1][1]:.3g} < {thr:.3g}): the concept "
                            f"does not explain the model{lost}")
            else:
                lost = next(s for s, ok in zip(steps[1:], sig[1:]) if not ok)
                per[key] = ("pass", lost, f"{key}: significant on the trained model (p = {steps[0][1]:.3g}), "
                            f"significance lost at step {lost[0]!r} (p = {lost[1]:.3g} >= {thr:.3g})")
        statuses = [v[0] for v in per.values()]
        overall = ("fail" if "fail" in statuses else "pass" if all(s == "pass" for s in statuses) else
                   "insufficient_data" if "insufficient_data" in statuses else "inconclusive")
        key = next(k for k, v in per.items() if v[0] == overall)
        _, (step, p, n), _ = per[key]
        reason = (f"decided by {key} (Bonferroni alpha {recorded.notes['alpha']} / {m}); "
                  + "; ".join(f"{v[0]}: {v[2]}" for v in per.values()))
        return [_verdict(recorded, overall, reason, "p_value", rule, thr, p, f"{step}|{key}", "above", n)]


class TCAVGroundTruth(_TCAVCheck):
    name = "tcav_ground_truth"
    description = ("Significant for the texture in the model where it decides the label, not in the twin where it "
                   "does not; detection and false-positive rates over seeds.")
    needs = frozenset({TWIN_MODEL})

    def __init__(self, *args: Any, seeds: Sequence[int] = (0, 1, 2, 3, 4), min_detection: float = 0.8,
                 max_false_positive_rate: float = 0.2, twin: Optional[Union[str, Dict[str, Any]]] = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ConfigError("tcav_ground_truth needs at least one seed (seeds=[...])")
        self.min_detection, self.max_fpr = float(min_detection), float(max_false_positive_rate)
        self.twin = self._twin_spec(twin)

    @staticmethod
    def _twin_spec(twin: Any) -> Optional[Dict[str, Any]]:
        """``twin``: a registered model name, or ``{name, params}`` (as a suite's ``model``); checked here."""
        if twin is None:
            return None
        spec = {"name": twin} if isinstance(twin, str) else dict(twin) if isinstance(twin, dict) else None
        if spec is None or not isinstance(spec.get("name"), str) or set(spec) - {"name", "params"} \
                or not isinstance(spec.get("params", {}), dict):
            raise ConfigError(f"tcav_ground_truth: twin must be a registered model name or {{name: ..., params: "
                              f"{{...}}}}, got {twin!r}")
        from ..registry import MODELS

        MODELS.get(spec["name"])  # an unknown name fails here, with close matches
        return {"name": spec["name"], "params": dict(spec.get("params") or {})}

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "seeds": self.seeds, "min_detection": self.min_detection,
                "max_false_positive_rate": self.max_fpr, "twin": self.twin}

    def load_twin(self, ctx: Any) -> nn.Module:
        """The twin named by ``twin`` through the model registry (cached zoo models load, never retrain twice)."""
        from ..models import load_model

        # the suite names the twin's parameters; the run's cache directory is passed when one was given (the
        # engine's contract: checks never sniff signatures, so a twin loader takes cache_dir like the zoo's)
        name, params = self.twin["name"], dict(self.twin["params"])
        if ctx.cache_dir is not None:
            params.setdefault("cache_dir", ctx.cache_dir)
        return load_model(name, **params)

    def evaluate(self, ctx: Any) -> CheckOutput:
        twin = ctx.twin_model
        if twin is None and self.twin is not None:
            twin = self.load_twin(ctx)
        if twin is None:
            raise ModelError("tcav_ground_truth needs the model where the texture does not decide the label: name it "
                             "in the check's params (twin: {name: ..., params: {...}}) or pass it as the run's "
                             "context random_label_model=... (a model or a callable returning one)")
        if callable(twin) and not isinstance(twin, nn.Module):
            twin = twin()
        twin.eval()
        models = {"decides": ctx.model, "independent": twin}
        sig = {step: {c: [] for c in self.concepts} for step in models}
        pvals = {step: {c: [] for c in self.concepts} for step in models}
        shares: Dict[Tuple[str, str], List[Tuple[Tensor, Tensor]]] = {}
        figure: Dict[str, Any] = {}
        rows: List[Dict[str, Any]] = []
        for s in self.seeds:
            seed = derive_seed(ctx.seed, "tcav_ground_truth", s)
            for step, model in models.items():
                res = self.result(ctx, self.bank(ctx, model, seed), model, label=f"{step}/{s}")
                for c in self.concepts:
                    tests = [t for t in res.tests if t.concept == c]
                    shares.setdefault((step, c), []).extend((t.per_input, t.random_per_input) for t in tests)
                    best = min(tests, key=lambda t: t.p_value)
                    sig[step][c].append(float(any(t.significant for t in tests)))
                    pvals[step][c].append(best.p_value)
                    # one row per (model, concept, seed): the smallest p over the layers, what decide() reads
                    rows.append({"check": self.name, "step": f"{step}|{c}", "seed": s, "statistic": "min_p_value",
                                 "value": best.p_value, "p_value": best.p_value, "layer": best.layer,
                                 "threshold": best.threshold, "significant": any(t.significant for t in tests),
                                 "tcav_mean": best.summary.mean, "tcav_ci_low": best.summary.ci_low,
                                 "tcav_ci_high": best.summary.ci_high, "random_mean": best.random_summary.mean,
                                 "n": best.summary.n})
                if s == self.seeds[0]:
                    figure[step] = self.figure_of(res)
        out = CheckOutput(steps=[], scores={}, figure=figure)
        out.summaries.extend(rows)
        per: Dict[str, Any] = {}
        for c in self.concepts:
            for step in models:
                key = f"{step}|{c}"
                out.steps.append(key)
                # per input: the share of runs (over seeds and layers) with a positive directional derivative;
                # the decision reads the per-seed p-values of the summary rows
                pairs = shares[(step, c)]
                concept_share = torch.stack([a for a, _ in pairs]).nanmean(0).double()
                random_share = torch.stack([b for _, b in pairs]).nanmean(0).double()
                out.scores[(key, self.record_as)] = {"tcav_score": concept_share, "random_tcav_score": random_share,
                                                     "tcav_minus_random": concept_share - random_share}
            detection = sum(sig["decides"][c]) / len(self.seeds)
            fpr = sum(sig["independent"][c]) / len(self.seeds)
            ok = detection >= self.min_detection and fpr <= self.max_fpr
            per[c] = {"detection_rate": detection, "false_positive_rate": fpr, "passed": ok,
                      "p_values": {k: v[c] for k, v in pvals.items()},
                      "reason": (f"significant in the model where the texture decides the label on {detection:.0%} of "
                                 f"{len(self.seeds)} seeds (needs >= {self.min_detection:.0%}), in the model where it "
                                 f"does not on {fpr:.0%} (false positives; allowed <= {self.max_fpr:.0%})")}
        passed = all(v["passed"] for v in per.values())
        out.notes = {"verdict": {"status": "pass" if passed else "fail", "passed": passed, "concepts": per,
                                 "threshold": self.alpha / (len(self.concepts) * len(self.layers)),
                                 "reason": "; ".join(f"{c}: {v['reason']}" for c, v in per.items())},
                     **self.config()}
        return out

    def decide(self, recorded: RecordedAudit) -> List[Any]:
        """From the recorded per-seed p-values (the smallest over the layers) of the two models: the detection
        rate (share of seeds significant at alpha / (concepts x layers) in the model where the texture decides the
        label) and the false-positive rate (the same in the twin). Pass when every concept's detection rate >=
        ``min_detection`` and its false-positive rate <= ``max_false_positive_rate``. Measured: the deciding rate
        (the detection rate where it is too low, else the false-positive rate)."""
        thr, m = _threshold(recorded.notes)
        rule = "all_steps"  # every seed of both models
        rows = _rows(recorded)
        if not rows:
            return _no_records(recorded, thr, rule, "below")
        min_det = float(recorded.notes["min_detection"])
        max_fpr = float(recorded.notes["max_false_positive_rate"])
        rates: Dict[str, Dict[str, List[bool]]] = {}
        for r in rows:
            step, concept = str(r["step"]).split("|", 1)
            rates.setdefault(concept, {}).setdefault(step, []).append(float(r["p_value"]) < thr)
        out: List[Tuple[str, str, float, float, str, int, str]] = []
        for concept, by in rates.items():
            det, fp = by.get("decides", []), by.get("independent", [])
            if not det or not fp:
                out.append(("insufficient_data", "detection_rate", min_det, None, concept, 0, "above"))
                continue
            d, f = sum(det) / len(det), sum(fp) / len(fp)
            status = "pass" if d >= min_det and f <= max_fpr else "fail"
            if d < min_det:
                out.append((status, "detection_rate", min_det, d, concept, len(det), "above"))
            else:
                out.append((status, "false_positive_rate", max_fpr, f, concept, len(fp), "below"))
        decider = next((o for o in out if o[0] == "fail"), None) or next(
            (o for o in out if o[0] != "pass"), None) or out[0]
        status, metric, threshold, measured, concept, n, direction = decider
        each = "; ".join(
            f"{c}: significant (p < {thr:.3g}, alpha {recorded.notes['alpha']} / {m}) in the model where the texture "
            f"decides the label on {sum(by.get('decides', []))}/{len(by.get('decides', []))} seeds (detection; needs "
            f">= {min_det:.0%}), in the twin where it does not on {sum(by.get('independent', []))}/"
            f"{len(by.get('independent', []))} (false positives; allowed <= {max_fpr:.0%})" for c, by in rates.items())
        status = "fail" if any(o[0] == "fail" for o in out) else status
        return [_verdict(recorded, status, f"decided by {concept}'s {metric.replace('_', ' ')}; {each}", metric, rule,
                         threshold, measured, f"{'decides' if metric == 'detection_rate' else 'independent'}|{concept}",
                         direction, n)]
