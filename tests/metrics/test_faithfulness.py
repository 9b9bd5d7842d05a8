"""Faithfulness correlation, infidelity, max-sensitivity and ROAD: on a linear model the true
contributions beat a random map on every score; determinism, batch invariance, NaN for undefined
scores, and Noisy Linear Imputation against a dense reference solve."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from helpers import digits_batch, make_tiny_cnn
from sanitycheck.errors import AttributionError, ConfigError, ModelError
from sanitycheck.explainers import get_explainer
from sanitycheck.metrics.base import Evaluation, FaithfulnessFamily
from sanitycheck.metrics.faithfulness import (
    ROAD,
    FaithfulnessCorrelation,
    Infidelity,
    MaxSensitivity,
    _solve_linear_imputation,
    noisy_linear_impute,
)
from sanitycheck.targets import CallableTarget, ClassTarget

FAMILIES = [FaithfulnessCorrelation, Infidelity, MaxSensitivity, ROAD]


# ----------------------------------------------------------------------------- fixtures
def _linear(n_in: int = 256, n_classes: int = 10, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_classes))
    with torch.no_grad():
        model[1].weight.copy_(0.3 * torch.randn(n_classes, n_in, generator=g))
        model[1].bias.copy_(0.1 * torch.randn(n_classes, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def linear_setup():
    """A linear model on 32 zero-mean random 1x16x16 images, one class per image, and maps:
    the true contributions ``w_c * x``, the gradient ``w_c`` and a seeded random map."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 1, 16, 16, generator=g)
    model = _linear()
    classes = torch.arange(32) % 10
    w = model[1].weight.detach()[classes].view(32, 16, 16)
    maps = {"true": w * x[:, 0], "gradient": w.clone(), "random": torch.rand(32, 16, 16, generator=g)}
    return model, x, ClassTarget(classes), maps


@pytest.fixture(scope="module")
def cnn_setup():
    model = make_tiny_cnn(0)
    x, _ = digits_batch(12)
    with torch.no_grad():
        classes = model(x).argmax(1)
    target = ClassTarget(classes)
    maps = get_explainer("gradient")(model, x, target)
    return model, x, target, maps


def _evaluate(family, model, x, target, maps, seed=0):
    kwargs = {"explainer": get_explainer("gradient")} if isinstance(family, MaxSensitivity) else {}
    return family.evaluate(model, x, target, maps, seed=seed, **kwargs)


# ----------------------------------------------------------------------------- interface
@pytest.mark.parametrize("cls", FAMILIES)
def test_family_interface(cls):
    fam = cls()
    assert isinstance(fam, FaithfulnessFamily)
    assert fam.higher_is_better and all(isinstance(v, bool) for v in fam.higher_is_better.values())
    assert fam.reference and fam.description and "20" in (cls.__doc__ or "")
    cfg = fam.config()
    assert cls(**cfg).config() == cfg  # keyword-only parameters round-trip through config()
    with pytest.raises(TypeError):
        cls(1)  # keyword-only


def test_registry_names_resolve():
    from sanitycheck.registry import CHECKS

    for name, cls in [("faithfulness_correlation", FaithfulnessCorrelation), ("infidelity", Infidelity),
                      ("max_sensitivity", MaxSensitivity), ("road", ROAD)]:
        assert CHECKS.get(name).metric_class is cls  # the check applies this metric to each explainer's maps


@pytest.mark.parametrize("cls", FAMILIES)
def test_scores_shapes_and_steps(cls, cnn_setup):
    model, x, target, maps = cnn_setup
    fam = cls()
    ev = _evaluate(fam, model, x, target, maps)
    assert isinstance(ev, Evaluation)
    assert set(ev.scores) == set(fam.higher_is_better)
    for v in ev.scores.values():
        assert v.shape == (x.shape[0],) and v.dtype == torch.float64 and torch.isfinite(v).all()
    if cls is ROAD:
        assert ev.summary_step == "auc" and ev.curve.shape == (x.shape[0], 18)
        assert ev.notes["curve_steps"][0] == "morf@0.1" and ev.notes["curve_steps"][9] == "lerf@0.1"
        assert ((ev.curve >= 0) & (ev.curve <= 1)).all()
        torch.testing.assert_close(ev.scores["road_morf_auc"], ev.curve[:, :9].mean(dim=1))
    else:
        assert ev.summary_step == "score" and ev.curve is None


@pytest.mark.parametrize("bad", [
    lambda: FaithfulnessCorrelation(n_perturbations=1),
    lambda: FaithfulnessCorrelation(subset_size=0),
    lambda: FaithfulnessCorrelation(subset_size=1.5),
    lambda: Infidelity(n_perturbations=0),
    lambda: Infidelity(noise_std=-1),
    lambda: MaxSensitivity(radius=float("nan")),
    lambda: ROAD(percentages=(0.1, 1.2)),
    lambda: ROAD(percentages=()),
    lambda: ROAD(orders=("morf", "sideways")),
    lambda: ROAD(noise_std=-0.01),
])
def test_bad_parameters_raise_config_error(bad):
    with pytest.raises(ConfigError):
        bad()


def test_errors(cnn_setup):
    model, x, target, maps = cnn_setup
    with pytest.raises(AttributionError):
        ROAD().evaluate(model, x, target, maps[:, :8], seed=0)
    bad = maps.clone()
    bad[3, 0, 0] = float("nan")
    with pytest.raises(AttributionError):
        FaithfulnessCorrelation().evaluate(model, x, target, bad, seed=0)
    with pytest.raises(ConfigError, match="explainer"):
        MaxSensitivity().evaluate(model, x, target, maps, seed=0)
    with pytest.raises(ConfigError, match="class target"):
        ROAD().evaluate(model, x, CallableTarget(lambda out: out[:, 0]), maps, seed=0)
    train = make_tiny_cnn(0).train()
    with pytest.raises(ModelError):
        Infidelity().evaluate(train, x, target, maps, seed=0)


def test_softmax_refuses_probability_outputs(cnn_setup):
    model, x, target, maps = cnn_setup
    probs = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    with pytest.raises(ConfigError, match="probabilities"):
        ROAD(percentages=(0.5,)).evaluate(probs, x, target, maps, seed=0)
    # a ClassTarget that asks for probabilities gets one softmax, not two
    a = ROAD(percentages=(0.5,)).evaluate(model, x, target, maps, seed=0).curve
    b = ROAD(percentages=(0.5,)).evaluate(model, x, ClassTarget(target.classes, softmax=True), maps, seed=0).curve
    torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- true map beats random
def test_faithfulness_correlation_linear(linear_setup):
    model, x, target, maps = linear_setup
    fam = FaithfulnessCorrelation()  # baseline 0: the score drop is exactly the mass of w_c * x in S
    true = fam.evaluate(model, x, target, maps["true"], seed=0).scores["faithfulness_correlation"]
    rand = fam.evaluate(model, x, target, maps["random"], seed=0).scores["faithfulness_correlation"]
    assert torch.allclose(true, torch.ones_like(true), atol=1e-6)
    assert (true > rand).all() and rand.abs().mean() < 0.2


def test_infidelity_linear(linear_setup):
    model, x, target, maps = linear_setup
    rand = Infidelity().evaluate(model, x, target, maps["random"], seed=0).scores["infidelity"]
    # additive perturbations (local maps): the gradient w_c is the exact explanation
    grad = Infidelity().evaluate(model, x, target, maps["gradient"], seed=0).scores["infidelity"]
    assert grad.max() < 1e-8 and rand.min() > 1e-2
    # normalize makes the score invariant to the map's scale
    scaled = Infidelity().evaluate(model, x, target, 7.0 * maps["gradient"], seed=0).scores["infidelity"]
    assert scaled.max() < 1e-8
    # multiplicative perturbations (captum's multiply_by_inputs): the contributions w_c * x are exact
    fam = Infidelity(multiply_by_inputs=True)
    true = fam.evaluate(model, x, target, maps["true"], seed=0).scores["infidelity"]
    rand_m = fam.evaluate(model, x, target, maps["random"], seed=0).scores["infidelity"]
    assert true.max() < 1e-8 and (true < rand_m).all()
    # without normalize, the unscaled exact map still has zero infidelity, a scaled one does not
    raw = Infidelity(normalize=False)
    assert raw.evaluate(model, x, target, maps["gradient"], seed=0).scores["infidelity"].max() < 1e-8
    assert raw.evaluate(model, x, target, 2 * maps["gradient"], seed=0).scores["infidelity"].min() > 1e-3


def test_infidelity_on_digits_prefers_contributions_to_random():
    model = _linear()
    x, _ = digits_batch(32)
    classes = torch.arange(32) % 10
    w = model[1].weight.detach()[classes].view(32, 16, 16)
    g = torch.Generator().manual_seed(3)
    fam = Infidelity()
    true = fam.evaluate(model, x, ClassTarget(classes), w * x[:, 0], seed=0).scores["infidelity"]
    rand = fam.evaluate(model, x, ClassTarget(classes), torch.rand(32, 16, 16, generator=g), seed=0).scores["infidelity"]
    assert true.mean() < rand.mean()


def test_max_sensitivity_linear(linear_setup):
    model, x, target, maps = linear_setup
    fam = MaxSensitivity()
    grad = fam.evaluate(model, x, target, maps["gradient"], seed=0, explainer=get_explainer("gradient"))
    noise = fam.evaluate(model, x, target, maps["gradient"], seed=0, explainer=get_explainer("noise"))
    assert grad.scores["max_sensitivity"].max() < 1e-6  # the gradient of a linear model is constant in x
    assert noise.scores["max_sensitivity"].min() > 0.3
    # gradient x input moves with the input, by about radius / |x| relative
    gxi = fam.evaluate(model, x, target, maps["true"], seed=0, explainer=get_explainer("gradient_x_input"))
    assert 0 < gxi.scores["max_sensitivity"].max() < 0.2
    # the explainer may also be named in the constructor
    named = MaxSensitivity(explainer="noise").evaluate(model, x, target, maps["gradient"], seed=0)
    torch.testing.assert_close(named.scores["max_sensitivity"], noise.scores["max_sensitivity"])


def test_max_sensitivity_batches_all_perturbations_into_one_call(linear_setup):
    model, x, target, maps = linear_setup
    calls = []

    def recording(model, xs, classes):
        calls.append(xs.shape[0])
        return model[1].weight[classes].view(-1, 16, 16).detach()

    ex = get_explainer(recording)
    MaxSensitivity(n_perturbations=5).evaluate(model, x, target, maps["gradient"], seed=0, explainer=ex)
    assert calls == [32 * 6]


def test_road_linear(linear_setup):
    model, x, target, maps = linear_setup
    for softmax in (False, True):  # on the logit, and on the probability
        fam = ROAD(softmax=softmax)
        true = fam.evaluate(model, x, target, maps["true"], seed=0).scores
        rand = fam.evaluate(model, x, target, maps["random"], seed=0).scores
        assert (true["road_morf_auc"] < rand["road_morf_auc"]).all()
        assert (true["road_lerf_auc"] > rand["road_lerf_auc"]).all()
    # removing the top 10 % of the contributions lowers every logit, removing the bottom 10 % raises it
    curve = ROAD(softmax=False).evaluate(model, x, target, maps["true"], seed=0).curve
    with torch.no_grad():
        clean = target(model(x)).double()
    assert (curve[:, 0] < clean).all() and (curve[:, 9] > clean).all()


# ----------------------------------------------------------------------------- determinism, invariance, NaN
@pytest.mark.parametrize("cls", FAMILIES)
def test_deterministic_and_batch_invariant(cls, cnn_setup):
    model, x, target, maps = cnn_setup
    fam = cls()
    a = _evaluate(fam, model, x, target, maps, seed=5).scores
    b = _evaluate(fam, model, x, target, maps, seed=5).scores
    for k in a:
        assert torch.equal(a[k], b[k])
    # a permuted batch and a sub-batch give the same per-sample scores
    perm = torch.tensor([7, 2, 11, 0, 5, 9, 1, 3, 10, 4, 8, 6])
    c = _evaluate(fam, model, x[perm], target.select(perm), maps[perm], seed=5).scores
    d = _evaluate(fam, model, x[:4], target.select(slice(0, 4)), maps[:4], seed=5).scores
    for k in a:
        torch.testing.assert_close(c[k], a[k][perm], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(d[k], a[k][:4], rtol=1e-5, atol=1e-6)
    # another seed draws other perturbations
    e = _evaluate(fam, model, x, target, maps, seed=6).scores
    assert any(not torch.equal(a[k], e[k]) for k in a)


def test_constant_map_gives_nan_correlation_for_that_sample_only(cnn_setup):
    model, x, target, maps = cnn_setup
    maps = maps.clone()
    maps[2] = 0.5
    maps[5] = 0.0
    ev = FaithfulnessCorrelation().evaluate(model, x, target, maps, seed=0)
    score = ev.scores["faithfulness_correlation"]
    assert torch.isnan(score[[2, 5]]).all()
    assert torch.isfinite(score[[i for i in range(12) if i not in (2, 5)]]).all()
    assert ev.notes["constant_maps"] == 2
    # ROAD ranks a constant map at random (recorded), as the deletion curves do
    road = ROAD(percentages=(0.3, 0.6)).evaluate(model, x, target, maps, seed=0)
    assert torch.isfinite(road.curve).all() and road.notes["constant_maps"] == 2


def test_zero_map_gives_nan_max_sensitivity(cnn_setup):
    model, x, target, maps = cnn_setup

    def zero_for_first(model, xs, classes):
        out = torch.ones(xs.shape[0], 16, 16)
        out[: 3] = 0.0  # the first sample's reference map (row 0) and two of its perturbed maps
        return out

    ev = MaxSensitivity(n_perturbations=4).evaluate(model, x, target, maps, seed=0,
                                                   explainer=get_explainer(zero_for_first))
    s = ev.scores["max_sensitivity"]
    assert torch.isnan(s[0]) and (s[1:] == 0).all()


def test_model_that_ignores_subsets_gives_nan_correlation():
    x, _ = digits_batch(4)
    x[:, :, :, :8] = 0.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 3)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
    maps = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0))
    s = FaithfulnessCorrelation(n_perturbations=20).evaluate(model, x, ClassTarget([0, 1, 2, 0]), maps, seed=0)
    assert torch.isnan(s.scores["faithfulness_correlation"]).all()


def test_subset_size_default_and_forms():
    assert FaithfulnessCorrelation().subset_pixels(28, 28) == 31
    assert FaithfulnessCorrelation().subset_pixels(16, 16) == 10
    assert FaithfulnessCorrelation(subset_size=0.1).subset_pixels(28, 28) == 78
    assert FaithfulnessCorrelation(subset_size=50).subset_pixels(28, 28) == 50


# ----------------------------------------------------------------------------- noisy linear imputation
_WEIGHTS = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6, (0, 1): 1 / 6,
            (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12}


def _dense_reference(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Rong et al.'s system, written out densely: for each removed pixel, the sum over its
    in-image neighbours of w_n * (x_n - x_i) is 0; solved with numpy."""
    c, h, w = img.shape
    idx = {p: k for k, p in enumerate(zip(*np.nonzero(removed)))}
    a = np.zeros((len(idx), len(idx)))
    b = np.zeros((len(idx), c))
    for (i, j), k in idx.items():
        for (di, dj), wt in _WEIGHTS.items():
            ni, nj = i + di, j + dj
            if not (0 <= ni < h and 0 <= nj < w):
                continue
            a[k, k] -= wt
            if (ni, nj) in idx:
                a[k, idx[(ni, nj)]] += wt
            else:
                b[k] -= wt * img[:, ni, nj]
    out = img.copy()
    if idx:
        sol = np.linalg.solve(a, b)
        for (i, j), k in idx.items():
            out[:, i, j] = sol[k]
    return out


def test_imputation_matches_dense_reference_solve():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 2, 9, 7, generator=g, dtype=torch.float64)
    removed = torch.rand(6, 9, 7, generator=g) < torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.95]).view(6, 1, 1)
    removed[0, 0, 0] = True  # a corner
    out = noisy_linear_impute(x, removed)
    for i in range(6):
        ref = _dense_reference(x[i].numpy(), removed[i].numpy())
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-8)
    # float32 inputs are solved in float32 to ~1e-5
    out32 = noisy_linear_impute(x.float(), removed)
    torch.testing.assert_close(out32, out.float(), atol=5e-5, rtol=0)


def test_imputation_reproduces_a_linear_ramp_and_keeps_pixels():
    h, w = 20, 24
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ramp = torch.stack([0.03 * yy - 0.02 * xx + 0.4, 0.01 * xx + 0.05 * yy - 1.0]).unsqueeze(0).repeat(3, 1, 1, 1)
    g = torch.Generator().manual_seed(2)
    removed = torch.rand(3, h, w, generator=g) < torch.tensor([0.2, 0.6, 0.9]).view(3, 1, 1)
    removed[:, 0, :] = removed[:, -1, :] = removed[:, :, 0] = removed[:, :, -1] = False  # interior only
    removed[1, 5:15, 4:20] = True  # and a large hole
    scrambled = torch.where(removed.unsqueeze(1), torch.rand(ramp.shape, generator=g) * 5, ramp)
    out = noisy_linear_impute(scrambled, removed)
    torch.testing.assert_close(out, ramp, atol=1e-4, rtol=0)
    kept = ~removed.unsqueeze(1).expand_as(ramp)
    assert torch.equal(out[kept], scrambled[kept])  # bit for bit
    # noise goes to the removed pixels only
    noise = 0.01 * torch.randn(ramp.shape, generator=g)
    noisy = noisy_linear_impute(scrambled, removed, noise=noise)
    assert torch.equal(noisy[kept], scrambled[kept])
    torch.testing.assert_close(noisy[~kept], (out + noise)[~kept])


def test_imputation_edge_cases():
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    removed = torch.zeros(3, 6, 6, dtype=torch.bool)
    removed[1] = True  # everything removed: nothing to interpolate from -> 0
    removed[2, 2, 3] = True  # one pixel: the weighted mean of its 8 neighbours
    out = noisy_linear_impute(x, removed)
    assert torch.equal(out[0], x[0]) and (out[1] == 0).all()
    nb = x[2, 0, 1:4, 2:5]
    wts = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
    torch.testing.assert_close(out[2, 0, 2, 3], (nb * wts).sum(), atol=1e-6, rtol=0)
    values, res, iters = _solve_linear_imputation(x, removed)
    assert iters <= 50 and res < 1e-5


def test_road_masks_count_and_order():
    maps = torch.arange(16.0).view(1, 4, 4)
    fam = ROAD(percentages=(0.25, 0.5, 0.99))
    masks = fam.removal_masks(maps, torch.rand(1, 16))
    assert masks.shape == (1, 2, 3, 4, 4)
    assert masks.sum(dim=(-2, -1)).tolist() == [[[4, 8, 15], [4, 8, 15]]]
    flat = masks.view(2, 3, 16)
    assert flat[0, 0].nonzero().flatten().tolist() == [12, 13, 14, 15]  # MoRF: largest values
    assert flat[1, 0].nonzero().flatten().tolist() == [0, 1, 2, 3]  # LeRF: smallest values
    # ties follow the random keys; removal is nested across percentages
    tied = torch.zeros(1, 4, 4)
    keys = torch.rand(1, 16, generator=torch.Generator().manual_seed(0))
    m = fam.removal_masks(tied, keys).view(2, 3, 16)
    assert set(m[0, 0].nonzero().flatten().tolist()) == set(keys[0].argsort()[:4].tolist())
    assert (m[:, 0] <= m[:, 1]).all() and (m[:, 1] <= m[:, 2]).all()
    assert ROAD(orders="lerf").removal_masks(maps, keys).shape == (1, 1, 9, 4, 4)
