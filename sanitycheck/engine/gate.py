"""The sequential gate: verdicts that stop when decided (``--strict``).

A gate run adds images in rounds (16 new images each, up to the budget: the suite's ``n`` or ``--budget``) and stops each (explainer, check) cell as soon as its verdict is decided at the stated
confidence. The decision reads the anytime-valid betting confidence sequences of
:mod:`sanitycheck.sequential` (Waudby-Smith & Ramdas 2023), never a bootstrap CI re-read after every peek:
an ``all_steps`` rule (a cascade) goes through :func:`~sanitycheck.sequential.sequential_decision_steps`
(one CS per step at ``alpha / S``; ``fail`` at the first step whose CS lies wholly on the failing side,
``pass`` once every step's lies on the passing side), a ``final_step`` rule through the same with one step.

Each round runs the one engine (:class:`~sanitycheck.engine.run.AuditRun`) on that round's new images only
(``indices`` into the budget's sample, so the images are those of the full run, in the same order), with only
the checks and explainers still undecided: decided cells cost nothing in later rounds, and no image is
explained twice. (Checks whose undecided explainers differ run as separate groups in a round; a later group
finds the trained model's maps of that round's images in the cache, linked from the earlier groups.) Rounds run in ``<out>/gate/round-<r>-<g>/`` with their own unit cache, so an interrupted
gate resumes.

The document written to ``<out>/results.json`` is a normal result document over the images each cell
consumed (records with bootstrap CIs over those images), whose verdicts are the gate's, each with a
``sequential`` block (stopped or not, after how many images, the CS, why), and a top-level ``gate`` block
(rounds, budget, alpha, model evaluations of the gate against the full run).

*Model evaluations* (the cost unit): one explainer's map of one image in one model state, weighted by the
explainer's passes (``n_samples`` for SmoothGrad/VarGrad, ``n_steps`` for integrated gradients, else 1);
a model-independent control costs nothing in randomized states (its maps are reused); an evaluation check
adds one forward pass per image and curve step.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from ..io import atomic_write_json
from ..results import Record, Verdict, clean_json, decide, records_to_json, verdicts_to_json
from ..sequential import SequentialDecision, sequential_decision_steps
from ..stats import bootstrap_ci_many
from ..suites import Suite
from .scoring import bootstrap_label

__all__ = ["GATE_ALPHA", "FIRST_ROUND", "round_bounds", "gate_decision", "explainer_cost", "run_gate"]

GATE_ALPHA = 0.05     # the verdicts' stated confidence (95 %), as the bootstrap CIs of a full run
FIRST_ROUND = 16      # new images per round (the betting CS needs a few dozen images to decide at 95 %)
#: the bets' truncation c (lambda <= c / m): 3/4 rather than the module's default 1/2 — both are the paper's
#: choices, validity holds for any c < 1, and 3/4 lets clear-cut cells decide sooner (replaying adebayo2018's
#: per-image scores: 2.1x fewer model evaluations against 1.8x with 1/2)
GATE_BET_CAP = 0.75
SCORE_BOUNDS = (-1.0, 1.0)  # the CS assumes scores bounded in this range (rank correlations, SSIM, ...)


def round_bounds(budget: int, first: int = FIRST_ROUND) -> List[Tuple[int, int]]:
    """Row ranges of the rounds: ``first`` new images each, the last cut at ``budget``."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"the gate's budget must be a positive number of images, got {budget!r}")
    if isinstance(first, bool) or not isinstance(first, int) or first < 1:
        raise ConfigError(f"the gate's first round must be a positive number of images, got {first!r}")
    return [(a, min(budget, a + first)) for a in range(0, budget, first)]


def gate_decision(rounds: Sequence[Any], threshold: float, direction: str, *, alpha: float = GATE_ALPHA,
                  budget: Optional[int] = None, lower: float = SCORE_BOUNDS[0],
                  upper: float = SCORE_BOUNDS[1], c: float = GATE_BET_CAP) -> SequentialDecision:
    """The gate's decision for one cell from its rounds of ``(S, k)`` scores (the rule's steps x new images).

    NaN scores (undefined) are dropped image-wise (an image undefined at any read step is left out of that
    round). A thin wrapper over :func:`~sanitycheck.sequential.sequential_decision_steps`, so the gate and the
    statistics' tests read the same code.
    """
    def clean(r: Any) -> torch.Tensor:
        t = torch.as_tensor(r, dtype=torch.float64)
        if t.dim() == 1:
            t = t.unsqueeze(0)
        return t[:, ~torch.isnan(t).any(dim=0)]

    # lazily: a generator of rounds stops being evaluated once the verdict is decided
    return sequential_decision_steps((clean(r) for r in rounds), float(threshold), direction, alpha, lower=lower,
                                     upper=upper, budget=budget, c=c)


def explainer_cost(explainer: Any) -> int:
    """Passes of one map of one image (see the module docstring)."""
    cfg = explainer.config() if callable(getattr(explainer, "config", None)) else {}
    for key in ("n_samples", "n_steps"):
        v = cfg.get(key) if isinstance(cfg, dict) else None
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return 1


def _evaluations(doc: Dict[str, Any], costs: Dict[str, int], model_free: Dict[str, bool],
                 trained_done: Sequence[str] = ()) -> int:
    """Model evaluations of one result document: its images x (originals + every state / curve step).
    ``trained_done``: explainers whose trained-model maps of these images came from the round's shared cache."""
    n = int(doc["dataset"]["n"])
    total = 0
    for e in doc.get("explainers", {}):
        if e not in costs:
            continue
        if e not in trained_done:
            total += n * costs[e]  # the trained model's maps
        for c, info in doc.get("checks", {}).items():
            steps = info.get("steps") or []
            if info.get("kind") == "evaluation":
                total += n * len(steps)
            elif not model_free.get(e):
                total += n * len(steps) * costs[e]
    return total


def _share_trained_maps(earlier: Sequence[Path], group_dir: Path) -> None:
    """Give a round's later group the trained model's maps its earlier groups computed for the same images.

    The groups of one round differ only in their checks and explainers, which the engine's cache fingerprint and
    unit keys leave out of the trained maps' key, so those unit files are valid as they are: they are hard-linked
    (copied where links are impossible) into ``group_dir``'s cache, where the engine finds them as cache hits
    (and still checks each file's sha256 header)."""
    for src_dir in earlier:
        src = src_dir / "cache" / "units" / "original"
        if not src.is_dir():
            continue
        for f in sorted(src.rglob("*.pt")):
            target = group_dir / "cache" / "units" / "original" / f.relative_to(src)
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)


def _cell_rounds(per_sample: Dict[str, Any], e: str, c: str, steps: List[str], metric: str) -> Optional[torch.Tensor]:
    got = ((per_sample.get(e) or {}).get(c) or {})
    if not all(s in got and metric in got[s] for s in steps):
        return None
    return torch.tensor([[float("nan") if v is None else float(v) for v in got[s][metric]] for s in steps],
                        dtype=torch.float64)


def _fmt(v: float) -> str:
    return f"{v:.3f}"


def run_gate(suite: Suite, *, out_dir: Path, budget: Optional[int] = None, alpha: float = GATE_ALPHA,
             first_round: int = FIRST_ROUND, explainers: Optional[Sequence[str]] = None,
             checks: Optional[Sequence[str]] = None, n: Optional[int] = None, figures: bool = False,
             **run_kwargs: Any) -> Dict[str, Any]:
    """Run ``suite`` as a sequential gate (see the module docstring); returns and writes the result document."""
    from . import audit_run_for

    budget = int(budget or n or suite.dataset.get("n") or 0)
    bounds = round_bounds(budget, first_round)
    out_dir = Path(out_dir)
    specs = [c for c in suite.checks if (not checks or c.name in checks)]
    if checks:
        missing = set(checks) - {c.name for c in suite.checks}
        if missing:
            raise ConfigError(f"checks {sorted(missing)} are not in suite {suite.name!r} "
                              f"(it has {[c.name for c in suite.checks]})")
    objects = run_kwargs.pop("explainer_objects", None)
    names = list(objects) if objects else (list(explainers) if explainers else list(suite.explainer_names))
    live = {(e, c.name) for e in names for c in specs if c.verdict is not None}
    # noise-ceiling checks have no verdict of their own: they run beside an explainer's undecided cells, on the
    # same images, so the noise rule can turn a gated pass of a method whose maps are sampling noise into NOISE
    from ..checks.sampling import noise_rule_checks

    ceilings, randomizations = noise_rule_checks(specs)
    data: Dict[Tuple[str, str], List[torch.Tensor]] = {cell: [] for cell in live}
    decisions: Dict[Tuple[str, str], SequentialDecision] = {}
    images: Dict[Tuple[str, str], int] = {cell: 0 for cell in live}
    per_sample: Dict[str, Any] = {}
    base: Optional[Dict[str, Any]] = None
    costs: Dict[str, int] = {}
    model_free: Dict[str, bool] = {}
    rounds_log: List[Dict[str, Any]] = []
    evaluations = 0
    spec_of = {c.name: c for c in specs}
    for r, (a, b) in enumerate(bounds):
        if not live:
            break
        # group the undecided checks by their undecided explainers: one engine run per group
        groups: Dict[Tuple[str, ...], List[str]] = {}
        undecided = {e for e, _ in live}
        for c in [s.name for s in specs]:
            es = tuple(e for e in names if ((e, c) in live) or (c in ceilings and e in undecided))
            if es:
                groups.setdefault(es, []).append(c)
        trained_done: List[str] = []  # explainers whose trained maps of this round's images are computed
        for g, (es, cs) in enumerate(groups.items()):
            chosen = ({"explainer_objects": {e: objects[e] for e in es}} if objects else {"explainers": list(es)})
            group_dir = out_dir / "gate" / f"round-{r}-{g}"
            _share_trained_maps([out_dir / "gate" / f"round-{r}-{h}" for h in range(g)], group_dir)
            run = audit_run_for(suite, out_dir=group_dir, checks=cs, n=budget,
                                indices=list(range(a, b)), figures=False, **chosen, **run_kwargs)
            doc = run.execute()
            for name, exp in run.explainers.items():
                costs.setdefault(name, explainer_cost(exp))
                model_free.setdefault(name, not getattr(exp, "requires_model", True))
            spent = _evaluations(doc, costs, model_free, trained_done)
            trained_done.extend(e for e in es if e not in trained_done)
            evaluations += spent
            rounds_log.append({"round": r, "rows": [a, b], "explainers": list(es), "checks": list(cs),
                               "model_evaluations": spent})
            if base is None:
                base = doc
            else:
                base["checks"].update({k: v for k, v in doc["checks"].items() if k not in base["checks"]})
            for e, by_check in (doc.get("per_sample") or {}).items():
                for c, by_step in by_check.items():
                    for step, by_metric in by_step.items():
                        slot = per_sample.setdefault(e, {}).setdefault(c, {}).setdefault(step, {})
                        for m, vals in by_metric.items():
                            slot.setdefault(m, []).extend(vals)
            for c in cs:
                rule = spec_of[c].verdict
                if rule is None:  # a noise ceiling: recorded over the images it ran on, never gated on
                    continue
                steps = doc["checks"][c]["steps"]
                read = steps if rule.rule == "all_steps" else steps[-1:]
                for e in es:
                    cell = (e, c)
                    new = _cell_rounds(doc.get("per_sample") or {}, e, c, read, rule.metric)
                    if new is None:  # skipped explainer or no scores: nothing to gate on
                        live.discard(cell)
                        continue
                    images[cell] += b - a
                    data[cell].append(new)
                    vals = torch.cat(data[cell], dim=1)
                    if bool(((vals < SCORE_BOUNDS[0]) | (vals > SCORE_BOUNDS[1])).any()):
                        continue  # unbounded scores: no CS; runs to budget, the fixed-n verdict decides
                    d = gate_decision(data[cell], rule.threshold, rule.direction, alpha=alpha, budget=budget)
                    decisions[cell] = d
                    if d.decided:
                        live.discard(cell)
    if base is None:
        raise ConfigError(f"suite {suite.name!r}: no (explainer, check) with a verdict rule to gate on")
    return _assemble(suite, out_dir, base, per_sample, decisions, images, budget, alpha, bounds, rounds_log,
                     evaluations, costs, model_free, specs, names, (ceilings, randomizations))


def _assemble(suite, out_dir, base, per_sample, decisions, images, budget, alpha, bounds, rounds_log,
              evaluations, costs, model_free, specs, names, noise_rule=((), ())) -> Dict[str, Any]:
    doc = dict(base)
    seed = doc["seed"]
    records: List[Record] = []
    verdicts: List[Verdict] = []
    for spec in specs:
        steps = doc["checks"].get(spec.name, {}).get("steps") or []
        for e in names:
            got = (per_sample.get(e) or {}).get(spec.name)
            if not got:
                continue
            rows, keys = [], []
            for i, step in enumerate(steps, start=1):
                for m, vals in (got.get(step) or {}).items():
                    rows.append(torch.tensor([float("nan") if v is None else float(v) for v in vals],
                                             dtype=torch.float64))
                    keys.append((m, step, i))
            if not rows:
                continue
            width = max(len(t) for t in rows)
            stacked = torch.stack([torch.cat([t, torch.full((width - len(t),), float("nan"), dtype=torch.float64)])
                                   for t in rows])
            sums = bootstrap_ci_many(stacked, seed_parts=(seed, "bootstrap", spec.name, bootstrap_label(e)))
            recs = [Record(e, spec.name, m, step, idx, s.mean, s.ci_low, s.ci_high, s.n,
                           s.n_undefined - (width - len(rows[j])), None)
                    for j, ((m, step, idx), s) in enumerate(zip(keys, sums))]
            records.extend(recs)
            if spec.verdict is None:
                continue
            v = decide(spec.verdict, e, spec.name, recs)
            verdicts.append(_gated(v, decisions.get((e, spec.name)), images.get((e, spec.name), 0), budget,
                                   spec.verdict, steps))
    if noise_rule[0]:  # the rule the full run and the board apply, on the ceilings measured beside the cells
        from ..results import apply_noise_ceiling

        ruled = apply_noise_ceiling([v for v, _ in verdicts], records, *noise_rule)
        verdicts = [(new, seq) for new, (_, seq) in zip(ruled, verdicts)]
    full = _evaluations({"dataset": {"n": budget}, "explainers": {e: None for e in costs},
                         "checks": {k: v for k, v in doc["checks"].items()}}, costs, model_free)
    doc["dataset"] = {**doc["dataset"], "n": budget}
    doc["records"] = records_to_json(records)
    doc["verdicts"] = [{**verdicts_to_json([v])[0], "sequential": seq} for v, seq in verdicts]
    doc["per_sample"] = per_sample
    doc["gate"] = {
        "method": "betting confidence sequences (Waudby-Smith & Ramdas 2023), hedged capital, predictable "
                  f"plug-in bets truncated at c = {GATE_BET_CAP}; all_steps rules: one CS per step at alpha/S "
                  "(Bonferroni)",
        "alpha": alpha, "budget": budget, "rounds": [list(b) for b in bounds], "runs": rounds_log,
        "model_evaluations": {"gate": evaluations, "full_run": full,
                              "ratio": (full / evaluations) if evaluations else None,
                              "definition": "one explainer's map of one image in one model state, weighted by the "
                                            "explainer's passes (n_samples for SmoothGrad/VarGrad, n_steps for "
                                            "integrated gradients, else 1); model-independent controls cost 0 in "
                                            "randomized states; evaluation checks add one forward per image and "
                                            "curve step; full_run is the same count for every cell on all "
                                            "budget images"}}
    doc.pop("examples", None)
    doc["examples"] = {"explainers": {}}
    doc.pop("reliability", None)
    doc = clean_json(doc)
    atomic_write_json(out_dir / "results.json", doc)
    return doc


def _gated(v: Verdict, d: Optional[SequentialDecision], n_images: int, budget: int, rule: Any,
           steps: List[str]) -> Tuple[Verdict, Dict[str, Any]]:
    """The fixed-n verdict ``v`` replaced by the gate's decision ``d`` (kept when the CS could not be read)."""
    thr = float(rule.threshold)
    if d is None or v.status in ("undefined", "insufficient_data"):
        why = (f"not gated: {v.status}" if d is None or v.status in ("undefined", "insufficient_data")
               else "")
        return v, {"stopped": False, "stop": "not_gated", "n_images": n_images, "cs_low": None, "cs_high": None,
                   "confidence": 1 - GATE_ALPHA, "reason": f"{why} after {n_images} images: the fixed-n verdict "
                                                           f"stands"}
    read = steps if rule.rule == "all_steps" else steps[-1:]
    step = read[d.step] if d.step is not None and d.step < len(read) else (read[-1] if read else None)
    below = rule.direction == "below"
    if d.decided:
        if d.status == "pass":
            text = (f"upper CS bound {_fmt(d.ci_high)} < {thr:g}" if below else f"lower CS bound {_fmt(d.ci_low)} > {thr:g}")
        else:
            text = (f"lower CS bound {_fmt(d.ci_low)} >= {thr:g}" if below else f"upper CS bound {_fmt(d.ci_high)} <= {thr:g}")
        where = f" at step {step}" if rule.rule == "all_steps" and d.status == "fail" else ""
        why = f"decided: {text}{where} after {n_images} images"
        status = d.status
    else:
        why = (f"budget spent: CS [{_fmt(d.ci_low)}, {_fmt(d.ci_high)}] straddles {thr:g}"
               f"{' at step ' + str(step) if rule.rule == 'all_steps' else ''} after {n_images} images")
        status = "inconclusive"
    measured = d.ci_high if below else d.ci_low
    out = Verdict(v.explainer, v.check, status == "pass", f"{status.upper()} (sequential gate): {why}. {d.reason}",
                  v.metric, v.rule, v.threshold, measured, step, status, v.direction, int(d.n), v.min_n)
    return out, {"stopped": d.decided and n_images < budget, "stop": "decided" if d.decided else "budget",
                 "n_images": n_images, "cs_low": d.ci_low, "cs_high": d.ci_high, "confidence": 1 - d.alpha,
                 "reason": why}
