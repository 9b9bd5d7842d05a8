"""TCAV with the paper's statistical test (sanitycheck.metrics.tcav) on a hand-built CNN that reads the left
half of the image (tests/tcav_fixtures.py): the planted concept is significant, random sets are not,
Bonferroni is applied, activations are computed once per layer, results are deterministic, bad input fails
clearly."""

from __future__ import annotations

import pytest
import torch

from sanitycheck.errors import ConfigError, DataError, SanityCheckError
from sanitycheck.metrics.tcav import directional_scores, tcav_test, train_cavs
from tcav_fixtures import ConceptSet, HalfReader, bright_left, explained_inputs, noise, random_sets

N = 40


def run(concepts, *, layers=("conv",), model=None, **kw):
    model = model or HalfReader("left").eval()
    kw.setdefault("n_runs", 20)
    return tcav_test(model, explained_inputs(), 1, concepts, random_sets(kw["n_runs"] + 1, N), list(layers), **kw)


def test_planted_concept_is_significant_random_concepts_much_less():
    randoms = [ConceptSet(f"noise_{k}", noise(N, k, "other"), "concept") for k in range(5)]
    res = run([bright_left(N)] + randoms)
    planted = res.test("bright_left", "conv")
    assert planted.significant and planted.p_value < 1e-6 and planted.p_value < planted.threshold
    assert planted.summary.mean > 0.9 and planted.summary.ci_low <= planted.summary.mean <= planted.summary.ci_high
    assert planted.random_summary.mean < 0.8
    assert planted.scores.shape == (20,) and planted.random_scores.shape == (20,)
    # a noise set tested as a concept: its p-values are orders of magnitude above the planted concept's.
    # (Not always above alpha: one fixed set against one held-out random set differs by chance in what the
    # model reads; the ground-truth check measures that false-positive rate over seeds.)
    ps = sorted(res.test(r.name, "conv").p_value for r in randoms)
    assert ps[len(ps) // 2] > 1e3 * planted.p_value


def test_rotating_null_runs():
    res = run([bright_left(N)], null="rotating")
    assert res.test("bright_left", "conv").significant
    with pytest.raises(ConfigError, match="null must be one of"):
        run([bright_left(N)], null="nope")


def test_bonferroni_over_concepts_times_layers():
    res = run([bright_left(N), ConceptSet("noise_concept", noise(N, 0, "other"), "concept")],
              layers=("conv", "pool"), alpha=0.05)
    assert res.n_comparisons == 4
    for t in res.tests:
        assert t.threshold == pytest.approx(0.05 / 4)
        assert t.p_adjusted == pytest.approx(min(1.0, t.p_value * 4))
        assert t.significant == (t.p_value < 0.05 / 4)


def test_concept_identical_to_a_random_set_is_not_significant():
    rs = random_sets(21, N)
    same_as_null = ConceptSet("copy_of_random_0", rs[0].images.clone(), "concept")
    same_as_run = ConceptSet("copy_of_random_1", rs[1].images.clone(), "concept")
    res = tcav_test(HalfReader("left").eval(), explained_inputs(), 1, [same_as_null, same_as_run], rs, ["conv"])
    t0 = res.test("copy_of_random_0", "conv")
    assert not t0.significant and t0.p_value == 1.0
    t1 = res.test("copy_of_random_1", "conv")
    assert torch.isnan(t1.scores[0])  # that run's CAV is zero: no direction, dropped and counted
    assert "1 concept and 0 random runs dropped" in t1.reason
    # every run identical: nothing defined to test, "not significant" with the reason
    only = ConceptSet("only", rs[0].images.clone(), "concept")
    same = [ConceptSet(f"r{i}", rs[0].images.clone(), "random") for i in range(21)]
    t = tcav_test(HalfReader("left").eval(), explained_inputs(), 1, [only], same, ["conv"]).test("only", "conv")
    assert not t.significant and t.p_value == 1.0 and "not significant" in t.reason


def test_activations_and_gradients_computed_once_per_layer():
    model = HalfReader("left").eval()
    calls = {"conv": 0, "pool": 0}
    for name in calls:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls[name] + 1))
    rs = random_sets(21, N)
    concepts = [bright_left(N), ConceptSet("noise_concept", noise(N, 0, "other"), "concept")]
    tcav_test(model, explained_inputs(), 1, concepts, rs, ["conv", "pool"], batch_size=10_000)
    # one forward pass of all concept and random sets, one forward(+backward) of the inputs, per layer:
    # not one per run, concept or random set (2 concepts x 20 runs + 20 null runs = 60 CAVs per layer)
    assert calls == {"conv": 2, "pool": 2}


def test_deterministic():
    a = run([bright_left(N)], seed=3)
    b = run([bright_left(N)], seed=3)
    ta, tb = a.test("bright_left", "conv"), b.test("bright_left", "conv")
    assert torch.equal(ta.scores, tb.scores) and torch.equal(ta.random_scores, tb.random_scores)
    assert ta.p_value == tb.p_value and ta.summary == tb.summary


def test_cav_direction_matches_captum_classifier():
    from captum.concept._utils.classifier import DefaultClassifier
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    axis = torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    pos = torch.randn(150, 5, generator=g, dtype=torch.float64) * 0.5 + axis
    neg = torch.randn(150, 5, generator=g, dtype=torch.float64) * 0.5 - axis
    ours = train_cavs([pos, neg], [(0, 1)])[0]
    with torch.random.fork_rng():  # captum splits train/test with the global RNG
        torch.manual_seed(0)
        clf = DefaultClassifier()
        x = torch.cat([pos, neg]).float()
        y = torch.cat([torch.zeros(150), torch.ones(150)]).long()  # captum: concept index 0 = the concept
        clf.train_and_eval(DataLoader(TensorDataset(x, y), batch_size=300))
        theirs = clf.weights()[0].double()  # the row pointing towards concept 0
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=0)
    assert cos > 0.9, (ours, theirs)


def test_directional_scores_sign_and_magnitude():
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    cavs = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    sign, mag = directional_scores(grads, cavs)
    assert sign[0] == pytest.approx(1 / 3) and mag[0] == pytest.approx(0.5)
    assert torch.isnan(sign[1]) and torch.isnan(mag[1])


def test_bad_input_errors():
    rs = random_sets(21, N)
    model = HalfReader("left").eval()
    with pytest.raises(DataError, match="fewer than the 10"):
        tcav_test(model, explained_inputs(), 1, [bright_left(5)], rs, ["conv"])
    with pytest.raises(ConfigError, match=r"did you mean \['conv'\]"):
        tcav_test(model, explained_inputs(), 1, [bright_left(N)], rs, ["cnov"])
    big = ConceptSet("big", torch.rand(N, 1, 32, 32), "concept")
    with pytest.raises(DataError, match=r"\(1, 32, 32\).*\(1, 16, 16\)"):
        tcav_test(model, explained_inputs(), 1, [big], rs, ["conv"])
    with pytest.raises(ConfigError, match="n_runs must be an integer >= 20"):
        tcav_test(model, explained_inputs(), 1, [bright_left(N)], rs, ["conv"], n_runs=5)
    with pytest.raises(ConfigError, match="need 21 random sets"):
        tcav_test(model, explained_inputs(), 1, [bright_left(N)], rs[:10], ["conv"])
    with pytest.raises(SanityCheckError):
        tcav_test(model, explained_inputs(), 1, [bright_left(N)], rs, ["conv"], score="nope")
