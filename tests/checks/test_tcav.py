"""The TCAV audits (sanitycheck.checks.tcav) on the hand-built half-reading CNN (tests/tcav_fixtures.py), through
the engine's CheckContext, with the concept-set loader replaced by the fixtures' sets (the contract's
``concept_sets(name, *, size, n, seed)``)."""

from __future__ import annotations

import json

import pytest
import torch

from sanitycheck.checks.base import get_check
from sanitycheck.checks.tcav import TCAVModelRandomization, layers_above
from sanitycheck.checks.tcav import load_concept_sets as real_loader  # before the fixture replaces it
from sanitycheck.errors import ConfigError, DataError, ModelError
from tcav_fixtures import ConceptSet, HalfReader, bright_left, explained_inputs, noise, tcav_context

N = 40


def fake_sets(name, *, size, n, seed, channels=1):
    if name == "bright_left":
        return [bright_left(n, seed)]
    if name == "noise_concept":
        return [ConceptSet(name, noise(n, seed, "noise_concept"), "concept")]
    if name.startswith("random_noise_"):
        return [ConceptSet(name, noise(n, seed, "random_noise", int(name.rsplit("_", 1)[1])), "random")]
    if name == "big":
        return [ConceptSet(name, torch.rand(n, 1, 2 * size, 2 * size), "concept")]
    raise KeyError(name)


@pytest.fixture(autouse=True)
def concept_loader(monkeypatch):
    monkeypatch.setattr("sanitycheck.checks.tcav.load_concept_sets", fake_sets)


context = tcav_context


def test_random_concepts_check_passes_for_planted_concept_with_records_and_figure():
    check = get_check("tcav_random_concepts", concepts=["bright_left"], layers=["conv", "pool"], n_images=N)
    assert check.unit == "check"
    out = check.evaluate(context(check))
    v = out.notes["verdict"]
    assert v["status"] == "pass" and v["passed"] and v["threshold"] == pytest.approx(0.05 / 2)
    assert v["concepts"]["bright_left"]["p_value"] < v["threshold"] and "threshold" in v["reason"]
    assert out.steps == ["bright_left@conv", "bright_left@pool"]
    scores = out.scores[("bright_left@conv", "tcav")]
    assert set(scores) == {"tcav_score", "random_tcav_score", "tcav_minus_random"}
    # one score per explained input (re-runnable on a sample of inputs): the share of runs whose directional
    # derivative is positive; its mean over inputs is the mean sign-count score over the 20 runs (summary row)
    assert all(s.shape == (12,) for s in scores.values())
    assert len(out.summaries[0]["scores"]) == 20 == len(out.summaries[0]["random_scores"])
    assert float(scores["tcav_score"].mean()) == pytest.approx(sum(out.summaries[0]["scores"]) / 20, abs=1e-6)
    fig = out.figure["trained"]["layers"]["conv"]
    assert len(fig["random_scores"]) == 20 and fig["concepts"]["bright_left"]["ci_low"] is not None
    assert {s["step"] for s in out.summaries} == set(out.steps)
    row = out.summaries[0]
    assert row["check"] == "tcav_random_concepts" and row["statistic"] == "tcav_sign"
    assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["n"] == 20 and row["significant"]
    json.dumps({"notes": out.notes, "figure": out.figure, "summaries": out.summaries})  # lands in results.json


def test_random_concepts_check_fails_for_concept_identical_to_random(monkeypatch):
    def copy_of_random(name, *, size, n, seed, channels=1):
        if name == "noise_concept":  # the "concept" is the held-out random set itself
            return [ConceptSet(name, fake_sets("random_noise_0", size=size, n=n, seed=seed)[0].images, "concept")]
        return fake_sets(name, size=size, n=n, seed=seed)

    monkeypatch.setattr("sanitycheck.checks.tcav.load_concept_sets", copy_of_random)
    check = get_check("tcav_random_concepts", concepts=["noise_concept"], layers=["conv"], n_images=N)
    out = check.evaluate(context(check))
    v = out.notes["verdict"]
    assert v["status"] == "fail" and v["concepts"]["noise_concept"]["p_value"] == 1.0


def test_layers_above_the_bottleneck():
    model = HalfReader("left").eval()
    x = explained_inputs()[:1]
    assert layers_above(model, "conv", x) == ["fc"]
    assert layers_above(model, "pool", x) == ["fc"]
    assert layers_above(model, "fc", x) == []
    with pytest.raises(ConfigError, match="did you mean"):
        layers_above(model, "pol", x)


def test_model_randomization_reports_each_step_and_the_verdict():
    check = get_check("tcav_model_randomization", concepts=["bright_left"], layers=["conv"], n_images=N)
    calls = []
    model = HalfReader("left").eval()
    model.conv.register_forward_hook(lambda *a: calls.append(1))
    out = check.evaluate(context(check, model))
    v = out.notes["verdict"]
    t = v["tests"]["bright_left@conv"]
    assert [s["step"] for s in t["steps"]] == ["trained", "fc"]
    assert t["steps"][0]["significant"]
    # on this toy model the concept stays significant with a random fc: the fixed CAV still projects
    # consistently on the (now random) gradient, so the check fails -- TCAV's test alone does not see it
    assert t["status"] == ("fail" if t["steps"][-1]["significant"] else "pass") == v["status"]
    assert out.steps == ["trained|bright_left@conv", "fc|bright_left@conv"]
    assert out.notes["layers_above"] == {"conv": ["fc"]}
    assert "conv|fc" in out.figure
    # the concept and random sets (1 concept + 21 random sets of 40) went through conv once, in batches of 64
    # (the CAVs are reused by every state); the inputs once per model state (trained, fc; the state's deep
    # copy keeps the hook); two tracing passes order the layers (layers_above, the cascade's groups)
    assert len(calls) == -(-22 * N // 64) + 2 + 2


def test_model_randomization_reports_where_significance_is_lost(monkeypatch):
    # a randomization that zeroes the layer: the gradient vanishes, every score is 0, nothing is significant
    import sanitycheck.checks.randomization as rnd

    def zero(module, *, seed, layer_name):
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.zero_()

    monkeypatch.setattr(rnd, "randomize_layer_", zero)
    check = TCAVModelRandomization(concepts=["bright_left"], layers=["conv"], n_images=N)
    v = check.evaluate(context(check)).notes["verdict"]
    t = v["tests"]["bright_left@conv"]
    assert t["lost_at"] == "fc" and t["status"] == "pass" and v["status"] == "pass"


def test_model_randomization_fails_when_significance_survives(monkeypatch):
    # a "randomization" that leaves the model as trained: significance survives every step -> fail
    import sanitycheck.checks.randomization as rnd

    monkeypatch.setattr(rnd, "randomize_layer_", lambda module, *, seed, layer_name: None)
    check = TCAVModelRandomization(concepts=["bright_left"], layers=["conv"], n_images=N)
    v = check.evaluate(context(check)).notes["verdict"]
    assert v["status"] == "fail" and "still significant" in v["tests"]["bright_left@conv"]["reason"]


def test_ground_truth_detection_and_false_positive_rate():
    check = get_check("tcav_ground_truth", concepts=["bright_left"], layers=["conv"], n_images=N, seeds=[0, 1, 2])
    out = check.evaluate(context(check, twin=lambda: HalfReader("right")))
    v = out.notes["verdict"]["concepts"]["bright_left"]
    # the per-seed decisions are summary rows (p-value per model, concept and seed); the records are per input
    sig_model = [r["significant"] for r in out.summaries if r["step"] == "decides|bright_left"]
    sig_twin = [r["significant"] for r in out.summaries if r["step"] == "independent|bright_left"]
    assert len(sig_model) == 3 and len(sig_twin) == 3
    assert out.scores[("decides|bright_left", "tcav")]["tcav_score"].shape == (12,)
    assert v["detection_rate"] == pytest.approx(sum(sig_model) / 3) == 1.0
    assert v["false_positive_rate"] == pytest.approx(sum(sig_twin) / 3)
    assert len(v["p_values"]["independent"]) == 3
    assert out.notes["verdict"]["passed"] == (v["false_positive_rate"] <= 0.2)
    assert set(out.figure) == {"decides", "independent"}


def test_ground_truth_needs_the_twin():
    check = get_check("tcav_ground_truth", concepts=["bright_left"], layers=["conv"], n_images=N, seeds=[0])
    with pytest.raises(ModelError, match="random_label_model"):
        check.evaluate(context(check))
    # the need is declared: a check without it cannot read the twin
    other = get_check("tcav_random_concepts", concepts=["bright_left"], layers=["conv"])
    with pytest.raises(ConfigError, match="does not declare the need"):
        context(other).twin_model


def test_bad_input():
    with pytest.raises(ConfigError, match="n_runs must be an integer >= 20"):
        get_check("tcav_random_concepts", concepts=["bright_left"], layers=["conv"], n_runs=10)
    check = get_check("tcav_random_concepts", concepts=["bright_left"])
    with pytest.raises(ConfigError, match="at least one layer"):
        check.evaluate(context(check))
    check = get_check("tcav_random_concepts", concepts=["bright_left"], layers=["conv"], n_images=5, min_images=5)
    check.min_images = 10  # a loader that returns fewer images than the test needs
    with pytest.raises(DataError, match="fewer than the 10"):
        check.evaluate(context(check))
    check = get_check("tcav_random_concepts", concepts=["bright_left"], layers=["convv"], n_images=N)
    with pytest.raises(ConfigError, match=r"did you mean \['conv'\]"):
        check.evaluate(context(check))
    check = get_check("tcav_random_concepts", concepts=["big"], layers=["conv"], n_images=N)
    with pytest.raises(DataError, match="size"):
        check.evaluate(context(check))


def test_through_the_engine_records_summaries_and_notes_in_results(tmp_path, monkeypatch):
    """One audit unit through sanitycheck's engine (digits_cnn trains in ~2 s): per-run records with bootstrap
    CIs under ``record_as``, the summaries and the check's own verdict in results.json."""
    import yaml

    import sanitycheck as sc
    from sanitycheck.seeding import generator

    def sets_at_size(name, *, size, n, seed, channels):
        assert channels == 1  # the model's channels reach the loader
        x = torch.rand(n, 1, size, size, generator=generator(seed, "e2e", name))
        if name == "bright_left":
            x[..., : size // 2] = 0.5 + 0.5 * x[..., : size // 2]
        return [ConceptSet(name, x, "random" if name.startswith("random") else "concept")]

    monkeypatch.setattr("sanitycheck.checks.tcav.load_concept_sets", sets_at_size)
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "toy_tcav.yaml").write_text(yaml.safe_dump({
        "name": "toy_tcav", "version": "0.0.1", "description": "tcav plumbing", "input_kind": "image", "seed": 0,
        "batch_size": 32, "dataset": {"name": "digits", "split": "test", "n": 16}, "model": {"name": "digits_cnn"},
        "explainers": ["gradient"], "metrics": ["spearman_abs"],
        "checks": [{"name": "tcav_random_concepts", "params": {
            "concepts": ["bright_left"], "layers": ["conv2"], "n_images": 20, "record_as": "gradient"}}]}))
    monkeypatch.setenv("SANITYCHECK_SUITES", str(suites))
    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "cache"))
    results = sc.run_suite("toy_tcav", out=tmp_path / "run", progress=False, figures=False)
    recs = [r for r in results["records"] if r["check"] == "tcav_random_concepts"]
    assert {(r["step"], r["metric"]) for r in recs} == {
        ("bright_left@conv2", m) for m in ("tcav_score", "random_tcav_score", "tcav_minus_random")}
    assert all(r["n"] + r["n_undefined"] == 16 and r["explainer"] == "gradient" for r in recs)  # per input
    row = results["summaries"]["tcav_random_concepts"][0]
    assert row["step"] == "bright_left@conv2" and 0.0 <= row["p_value"] <= 1.0
    verdict = results["state_info"]["tcav_random_concepts"]["verdict"]
    assert verdict["status"] in ("pass", "fail") and "threshold" in verdict["reason"]


def test_the_built_in_loader_gives_sets_at_the_models_size_and_channels():
    pytest.importorskip("sanitycheck.data.concepts")  # part tcavdata
    (s,) = real_loader("stripes", size=16, n=3, seed=0, channels=1)
    assert tuple(s.images.shape) == (3, 1, 16, 16) and s.name == "stripes"
    (r,) = real_loader("random_noise_4", size=16, n=3, seed=0, channels=1)
    assert r.name == "random_noise_4"
