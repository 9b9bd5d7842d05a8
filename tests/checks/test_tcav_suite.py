"""The TCAV audits on the board (issue 16): their own verdicts (AuditCheck.decide) recomputed from what results.json
records, a flipped verdict caught by validation, the shipped ``tcav`` suite, the ``tcav`` explainer (concept
sensitivity map) and the figures drawn from a saved results document. Tiny models: the hand-built half-reading CNN
(tests/tcav_fixtures.py) and digits_cnn."""

from __future__ import annotations

import json

import pytest
import torch

from sanitycheck.checks.base import RecordedAudit, get_check
from sanitycheck.errors import ConfigError, UnknownNameError
from tcav_fixtures import ConceptSet, HalfReader, bright_left, explained_inputs, noise, tcav_context

N = 40


def fake_sets(name, *, size, n, seed, channels=1):
    if name == "bright_left":
        return [bright_left(n, seed)]
    if name.startswith("random_noise_"):
        return [ConceptSet(name, noise(n, seed, "random_noise", int(name.rsplit("_", 1)[1])), "random")]
    raise KeyError(name)


@pytest.fixture
def fixture_sets(monkeypatch):
    monkeypatch.setattr("sanitycheck.checks.tcav.load_concept_sets", fake_sets)


context = tcav_context


def recorded_of(check, out):
    """What results.json records of the audit, read back as JSON (the engine's and validate's input to decide)."""
    doc = json.loads(json.dumps({"summaries": out.summaries, "notes": out.notes}, default=float))
    return RecordedAudit(check.name, [], doc["summaries"], doc["notes"])


def test_decide_recomputes_the_checks_verdicts_from_the_recorded_p_values(fixture_sets, monkeypatch):
    check = get_check("tcav_random_concepts", concepts=["bright_left"], layers=["conv", "pool"], n_images=N)
    out = check.evaluate(context(check))
    (v,) = check.decide(recorded_of(check, out))
    assert v.status == out.notes["verdict"]["status"] == "pass" and v.explainer == "tcav"
    assert v.threshold == pytest.approx(0.05 / 2) and v.measured < v.threshold and v.metric == "p_value"
    assert v.step in ("bright_left@conv", "bright_left@pool")
    assert v.reason.startswith("PASS") and "bright_left" in v.reason
    # the threshold comes from the recorded configuration, not the rows: a row that claims significance with a
    # p-value above alpha / (concepts x layers) does not make the check pass
    rec = recorded_of(check, out)
    for r in rec.summaries:
        r.update(p_value=0.04, significant=True, threshold=0.05)
    (forged,) = check.decide(rec)
    assert forged.status == "fail" and forged.measured == pytest.approx(0.04)

    gt = get_check("tcav_ground_truth", concepts=["bright_left"], layers=["conv"], n_images=N, seeds=[0, 1, 2])
    out = gt.evaluate(context(gt, twin=lambda: HalfReader("right")))
    (v,) = gt.decide(recorded_of(gt, out))
    assert v.status == out.notes["verdict"]["status"]
    assert len(out.summaries) == 6 and {r["step"] for r in out.summaries} == {"decides|bright_left",
                                                                             "independent|bright_left"}
    rates = out.notes["verdict"]["concepts"]["bright_left"]
    assert v.measured == pytest.approx(rates["false_positive_rate"] if rates["detection_rate"] >= 0.8
                                       else rates["detection_rate"])

    import sanitycheck.checks.randomization as rnd

    def zero(module, *, seed, layer_name):  # the gradient vanishes above the bottleneck: significance is lost
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.zero_()

    monkeypatch.setattr(rnd, "randomize_layer_", zero)
    mr = get_check("tcav_model_randomization", concepts=["bright_left"], layers=["conv"], n_images=N)
    out = mr.evaluate(context(mr))
    (v,) = mr.decide(recorded_of(mr, out))
    assert v.status == out.notes["verdict"]["status"] == "pass" and v.step == "fc|bright_left@conv"
    assert v.measured >= v.threshold and v.direction == "above" and "lost at step 'fc'" in v.reason


def test_decide_without_records_is_insufficient_data():
    check = get_check("tcav_random_concepts", concepts=["stripes"], layers=["conv"])
    (v,) = check.decide(RecordedAudit(check.name, [], [], check.config()))
    assert v.status == "insufficient_data" and not v.passed


def test_the_tcav_suite_parses_and_every_part_builds():
    from sanitycheck.explainers import get_explainer
    from sanitycheck.suites import load_suite

    suite = load_suite("tcav")
    assert suite.version == "1.0.0" and suite.model["name"] == "textured_fmnist_cnn"
    names = [c.name for c in suite.checks]
    assert names == ["tcav_random_concepts", "tcav_model_randomization", "tcav_ground_truth"]
    for spec in suite.checks:
        check = get_check(spec.name, **spec.params)
        assert check.decides and spec.verdict is None and check.record_as == "tcav"
        assert check.n_runs >= 20
    twin = get_check("tcav_ground_truth", **suite.checks[2].params).twin
    assert twin == {"name": "textured_fmnist_cnn", "params": {"variant": "texture_independent", "texture": "stripes"}}
    (name, params), = suite.explainers
    assert name == "tcav" and get_explainer(name, **params).config()["layer"] == "pool2"


def test_the_twin_is_named_through_the_model_registry():
    with pytest.raises(UnknownNameError, match="textured_fmnist_cnn"):
        get_check("tcav_ground_truth", concepts=["stripes"], layers=["conv"], twin="textured_fmnist_cn")
    with pytest.raises(ConfigError, match="twin must be"):
        get_check("tcav_ground_truth", concepts=["stripes"], layers=["conv"], twin={"params": {}})
    check = get_check("tcav_ground_truth", concepts=["stripes"], layers=["conv"], twin="digits_cnn")
    assert check.config()["twin"] == {"name": "digits_cnn", "params": {}}


def test_the_tcav_explainer_maps_the_directional_derivative(fixture_sets):
    from sanitycheck.explainers import get_explainer
    from sanitycheck.explainers.base import ModelWatch, call_explainer
    from sanitycheck.metrics.tcav import layer_gradients

    model = HalfReader("left").eval()
    x = explained_inputs()
    e = get_explainer("tcav", concept="bright_left", layer="conv", n_images=N)
    watch = ModelWatch(model)
    ones = torch.ones(12, dtype=torch.long)
    maps = call_explainer(e, "tcav", "test", model, x, ones, watch=watch)  # weights and mode unchanged
    assert maps.shape == (12, 16, 16)
    # conv keeps the input's 16x16 grid: the map sums to grad . CAV, TCAV's per-input directional derivative
    g = layer_gradients(model, x, 1, ["conv"])["conv"]
    assert torch.allclose(maps.flatten(1).sum(1).double(), g @ e.cav(model, (1, 16, 16)), atol=1e-4)
    # the planted concept raises the class-1 logit: every input's derivative is positive
    assert bool((maps.flatten(1).sum(1) > 0).all())
    with pytest.raises(ConfigError, match="spatial layer"):
        get_explainer("tcav", concept="bright_left", layer="fc", n_images=N)(model, x, ones)
    with pytest.raises(ConfigError, match="did you mean"):
        get_explainer("tcav", concept="bright_left", layer="cnv", n_images=N)(model, x, ones)


def test_the_tcav_suite_through_the_engine_validates_and_draws(tmp_path, monkeypatch):
    """digits_cnn (trains in ~2 s) with the TCAV audits recording under the ``tcav`` explainer: the engine's
    verdicts equal those validate recomputes from the document, a flipped one is caught, and the figures are drawn
    from the saved results.json alone."""
    import yaml

    import sanitycheck as sc
    from sanitycheck.io import read_json
    from sanitycheck.report.tcav_figures import write_tcav_figures
    from sanitycheck.seeding import generator
    from sanitycheck.suites import load_suite
    from sanitycheck.validation import verdict_problems

    def sets_at_size(name, *, size, n, seed, channels):
        x = torch.rand(n, channels, size, size, generator=generator(seed, "e2e", name))
        if name == "bright_left":
            x[..., : size // 2] = 0.5 + 0.5 * x[..., : size // 2]
        return [ConceptSet(name, x, "random" if name.startswith("random") else "concept")]

    monkeypatch.setattr("sanitycheck.checks.tcav.load_concept_sets", sets_at_size)
    suites = tmp_path / "suites"
    suites.mkdir()
    common = {"concepts": ["bright_left"], "layers": ["conv2"], "n_images": 20, "target": 3}
    (suites / "toy_tcav.yaml").write_text(yaml.safe_dump({
        "name": "toy_tcav", "version": "0.0.1", "description": "tcav on the board", "input_kind": "image", "seed": 0,
        "batch_size": 32, "dataset": {"name": "digits", "split": "test", "n": 16}, "model": {"name": "digits_cnn"},
        "explainers": [{"tcav": {"concept": "bright_left", "layer": "conv2", "n_images": 20, "random_sets": 2}}],
        "metrics": ["spearman_abs"],
        "checks": [{"name": "tcav_random_concepts", "params": common},
                   {"name": "tcav_ground_truth", "params": {**common, "seeds": [0, 1], "twin": "digits_cnn"}}]}))
    monkeypatch.setenv("SANITYCHECK_SUITES", str(suites))
    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "cache"))
    results = sc.run_suite("toy_tcav", out=tmp_path / "run", progress=False, figures=True)
    mine = {v["check"]: v for v in results["verdicts"] if v["explainer"] == "tcav"}
    assert set(mine) == {"tcav_random_concepts", "tcav_ground_truth"}
    assert results["explainers"]["tcav"]["config"]["concept"] == "bright_left"
    # the twin is the same model here: detection and false positives are the same seeds
    gt = results["state_info"]["tcav_ground_truth"]["verdict"]["concepts"]["bright_left"]
    assert gt["detection_rate"] == gt["false_positive_rate"]
    assert mine["tcav_ground_truth"]["status"] == "fail"  # either too few detections or too many false positives
    suite = load_suite("toy_tcav")
    doc = read_json(tmp_path / "run" / "results.json")
    assert verdict_problems(doc, suite) == []
    forged = json.loads(json.dumps(doc))
    v = next(v for v in forged["verdicts"] if v["check"] == "tcav_random_concepts")
    flipped = "fail" if v["status"] == "pass" else "pass"
    v.update(status=flipped, passed=flipped == "pass")
    assert any("tcav_random_concepts" in p for p in verdict_problems(forged, suite))
    assert results["figures"]["tcav_random_concepts"] == ["tcav_random_concepts_scores.png"]
    out = tmp_path / "redrawn"
    out.mkdir()
    assert write_tcav_figures(out, doc, "tcav_ground_truth") == ["tcav_ground_truth_rates.png"]
    assert (out / "tcav_ground_truth_rates.png").stat().st_size > 1000
    assert write_tcav_figures(out, {}, "tcav_random_concepts") == []  # nothing recorded: nothing drawn
