"""A new explainer, metric and check plug in through the public API alone (registries, base classes, a suite
as data), and run through the same engine, records, CIs and verdicts as the built-ins."""

from __future__ import annotations

import copy
import json

import torch
import yaml

import sanitycheck as sc


class ScaledInput(sc.Explainer):
    """A toy explainer: |x| times a constant (model-independent, so it must fail a randomization check)."""

    name = "toy_scaled_input"
    requires_model = False

    def attribute(self, model, x, target):
        return x.abs() * 2.0


@sc.metric("toy_cosine", higher_is_better=True, category="similarity", description="cosine of the flattened maps")
def toy_cosine(a, b):
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


class ZeroLastLayer(sc.StateCheck):
    """A toy check: one state, the last linear layer's weights set to zero (a copy; the model is untouched)."""

    name = "toy_zero_last_layer"

    def states(self, model, *, seed, example_input, context=None):
        copied = copy.deepcopy(model)
        last = [m for m in copied.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
        yield sc.ModelState("last_layer_zeroed", copied)


def test_a_toy_explainer_metric_and_check_run_through_the_engine(tmp_path, monkeypatch):
    for registry in (sc.EXPLAINERS, sc.METRICS, sc.CHECKS):  # the toy parts leave with the test (invariant tests
        monkeypatch.setattr(registry, "_objects", dict(registry._objects))  # run over every registered part)
        monkeypatch.setattr(registry, "_lazy", dict(registry._lazy))
    sc.EXPLAINERS.register("toy_scaled_input", ScaledInput, overwrite=True)
    sc.METRICS.register("toy_cosine", toy_cosine, overwrite=True)
    sc.CHECKS.register("toy_zero_last_layer", ZeroLastLayer, overwrite=True)
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "toy.yaml").write_text(yaml.safe_dump({
        "name": "toy", "version": "0.0.1", "description": "toy parts", "input_kind": "image", "seed": 0,
        "batch_size": 32, "dataset": {"name": "digits", "split": "test", "n": 24}, "model": {"name": "digits_cnn"},
        "explainers": ["toy_scaled_input", "gradient"], "metrics": ["toy_cosine", "spearman_abs"],
        "checks": [{"name": "toy_zero_last_layer", "verdict": {"metric": "toy_cosine", "threshold": 0.5}}]}))
    monkeypatch.setenv("SANITYCHECK_SUITES", str(suites))
    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "cache"))
    results = sc.run_suite("toy", out=tmp_path / "run", progress=False, figures=False)
    verdicts = {(v["explainer"], v["check"]): v for v in results["verdicts"]}
    toy = verdicts[("toy_scaled_input", "toy_zero_last_layer")]
    assert toy["status"] == "fail" and toy["metric"] == "toy_cosine"  # model-independent maps stay identical
    rec = next(r for r in results["records"] if r["explainer"] == "toy_scaled_input" and r["metric"] == "toy_cosine"
               and r["step"] == "last_layer_zeroed")
    assert rec["mean"] == 1.0 and rec["n"] == 24
    # a zeroed last layer makes every logit constant: the gradient's maps are all zero, i.e. undefined
    grad = next(r for r in results["records"] if r["explainer"] == "gradient" and r["metric"] == "spearman_abs"
                and r["step"] == "last_layer_zeroed")
    assert grad["n_undefined"] == 24 and grad["mean"] is None
    assert results["metrics"]["toy_cosine"]["category"] == "similarity"


def _run_toy_audit(tmp_path, monkeypatch, name, check_cls, check):
    """Register ``check_cls`` as ``check["name"]`` (leaving with the test) and run a 12-image digits suite with it."""
    for registry in (sc.EXPLAINERS, sc.METRICS, sc.CHECKS):
        monkeypatch.setattr(registry, "_objects", dict(registry._objects))
        monkeypatch.setattr(registry, "_lazy", dict(registry._lazy))
    sc.CHECKS.register(check["name"], check_cls, overwrite=True)
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / f"{name}.yaml").write_text(yaml.safe_dump({
        "name": name, "version": "0.0.1", "description": "a toy audit", "input_kind": "image", "seed": 0,
        "batch_size": 32, "dataset": {"name": "digits", "split": "test", "n": 12}, "model": {"name": "digits_cnn"},
        "explainers": ["gradient", "noise"] if name == "toyaudit" else ["gradient"], "metrics": ["spearman_abs"],
        "checks": [check]}))
    monkeypatch.setenv("SANITYCHECK_SUITES", str(suites))
    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "cache"))
    return sc.run_suite(name, out=tmp_path / "run", progress=False, figures=False)


class MapEnergyAudit(sc.AuditCheck):
    """A toy audit that decides its own verdict: the mean of each explainer's trained-model map energy, per
    image, must exceed ``threshold``; the decision reads only what results.json records (summaries, notes)."""

    name = "toy_map_energy"
    needs = frozenset({"original_maps"})
    higher_is_better = {"energy": True}
    decides = True

    def __init__(self, threshold: float = 1e-3):
        self.threshold = float(threshold)

    def config(self):
        return {"threshold": self.threshold}

    def evaluate(self, ctx):
        out = sc.CheckOutput(steps=["trained"], scores={})
        for name, maps in ctx.originals.items():
            energy = maps.flatten(1).abs().mean(1).double()
            out.scores[("trained", name)] = {"energy": energy}
            out.summaries.append({"check": self.name, "explainer": name, "statistic": "median_energy",
                                  "value": float(energy.median()), "n": int(energy.numel())})
        out.notes = {"threshold": self.threshold}
        return out

    def decide(self, recorded):
        verdicts = []
        for s in recorded.summaries:
            ok = s["value"] > recorded.notes["threshold"]
            status = "pass" if ok else "fail"
            verdicts.append(sc.Verdict(s["explainer"], recorded.check, ok,
                                       f"{status.upper()}: median energy {s['value']:.3g} vs {self.threshold}",
                                       "median_energy", "toy", self.threshold, s["value"], "trained", status,
                                       "above", s["n"], 2))
        return verdicts


def test_an_audit_that_decides_its_own_verdicts_is_recorded_and_revalidated(tmp_path, monkeypatch):
    """``AuditCheck.decides``: the engine records the check's own verdicts, and ``validate`` recomputes them from
    the document, so a flipped verdict is caught like a forged rule-decided one."""
    from sanitycheck.suites import load_suite
    from sanitycheck.validation import verdict_problems

    results = _run_toy_audit(tmp_path, monkeypatch, "toyaudit", MapEnergyAudit,
                             {"name": "toy_map_energy", "params": {"threshold": 1e-3}})
    mine = {v["explainer"]: v for v in results["verdicts"] if v["check"] == "toy_map_energy"}
    assert set(mine) == {"gradient", "noise"}
    assert all(v["status"] == "pass" and v["metric"] == "median_energy" for v in mine.values())
    suite = load_suite("toyaudit")
    assert verdict_problems(results, suite) == []
    forged = json.loads(json.dumps(results))
    v = next(v for v in forged["verdicts"] if v["check"] == "toy_map_energy")
    v.update(status="fail", passed=False)
    assert any("tampered" in p and "toy_map_energy" in p for p in verdict_problems(forged, suite))


class RowEnergyAudit(sc.AuditCheck):
    """A toy audit whose scores are not one per input (``sample_unit``): per image row of input 0's map, at two
    "sizes" (the first 5 and the first 7 rows), as an SAE check scores latents of dictionaries of two sizes."""

    name = "toy_row_energy"
    needs = frozenset({"original_maps"})
    higher_is_better = {"row_energy": True}
    sample_unit = "rows"

    def evaluate(self, ctx):
        out = sc.CheckOutput(steps=["five", "seven"], scores={})
        for name, maps in ctx.originals.items():
            rows = maps[0].abs().mean(-1).double()
            out.scores[("five", name)] = {"row_energy": rows[:5]}
            out.scores[("seven", name)] = {"row_energy": rows[:7]}
        return out


def test_an_audit_scoring_other_units_than_inputs_is_recorded_and_revalidated(tmp_path, monkeypatch):
    """``sample_unit``: rows of different lengths are bootstrapped per length and recorded; ``validate``
    re-aggregates them instead of refusing their counts, and still catches a forged record."""
    from sanitycheck.validation import aggregate_problems, size_problems

    results = _run_toy_audit(tmp_path, monkeypatch, "toyrows", RowEnergyAudit, {"name": "toy_row_energy"})
    assert results["checks"]["toy_row_energy"]["sample_unit"] == "rows"
    recs = {r["step"]: r for r in results["records"] if r["check"] == "toy_row_energy"}
    assert recs["five"]["n"] + recs["five"]["n_undefined"] == 5 and recs["seven"]["n"] + recs["seven"]["n_undefined"] == 7
    assert size_problems(results) == [] and aggregate_problems(results) == []
    forged = json.loads(json.dumps(results))
    next(r for r in forged["records"] if r["check"] == "toy_row_energy")["mean"] += 0.5
    assert any("tampered" in p for p in aggregate_problems(forged))
    del forged["checks"]["toy_row_energy"]["sample_unit"]  # claimed per input: the counts give it away
    assert size_problems(forged)
