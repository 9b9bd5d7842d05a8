"""Deletion / insertion (Petsiuk et al. 2018) and AOPC (Samek et al. 2017): hand-computed values,
the batched core against a per-image, per-step loop, and the documented edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from helpers import digits_batch, make_tiny_cnn
from sanitycheck.errors import AttributionError, ConfigError
from sanitycheck.metrics.base import Evaluation, FaithfulnessFamily
from sanitycheck.metrics.curves import (
    AOPCLeRF,
    AOPCMoRF,
    Deletion,
    Insertion,
    gaussian_kernel,
    perturbation_curve,
    step_counts,
    trapezoid_auc,
)
from sanitycheck.seeding import per_sample_draw
from sanitycheck.targets import CallableTarget, ClassTarget


# ----------------------------------------------------------------------------- naive reference
def _reference_blur(img: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """The RISE reference: gkern (gaussian_filter of a delta) applied per channel, zero padding."""
    delta = np.zeros((k, k))
    delta[k // 2, k // 2] = 1
    kern = torch.tensor(gaussian_filter(delta, sigma), dtype=img.dtype)
    c = img.shape[0]
    return nn.functional.conv2d(img[None], kern.expand(c, 1, k, k), padding=k // 2, groups=c)[0]


def perturbation_curve_naive(model, x, classes, maps, *, order="morf", mode="delete", n_steps=28,
                             pixels_per_step=None, substrate="zero", blur_kernel=11, blur_sigma=5.0,
                             seed=0, name="perturbation_curve"):
    """One image at a time, one state at a time, pixels copied step by step as in RISE's
    ``CausalMetric.single_run``; ties ordered by the same per-image uniform draw."""
    b, c, h, w = x.shape
    n = h * w
    if pixels_per_step is not None:
        s = math.ceil(n / pixels_per_step)
        counts = [min(i * pixels_per_step, n) for i in range(s + 1)]
    else:
        s = n_steps
        counts = [i * n // n_steps for i in range(s + 1)]
    curves = []
    for i in range(b):
        img = x[i]
        vals = maps[i].reshape(-1).tolist()
        u = per_sample_draw(x[i : i + 1], (n,), seed, name, "ties", kind="uniform")[0].tolist()
        sign = -1.0 if order == "morf" else 1.0
        ranked = sorted(range(n), key=lambda j: (sign * vals[j], u[j]))
        if substrate == "zero":
            sub = torch.zeros_like(img)
        elif substrate == "mean":
            sub = img.mean(dim=(1, 2), keepdim=True).expand_as(img).clone()
        elif substrate == "blur":
            sub = _reference_blur(img, blur_kernel, blur_sigma)
        else:
            sub = torch.full_like(img, float(substrate))
        start, finish = (img.clone(), sub) if mode == "delete" else (sub.clone(), img)
        start, finish = start.reshape(c, n), finish.reshape(c, n)
        row = []
        for k in range(s + 1):
            with torch.no_grad():
                out = model(start.reshape(1, c, h, w))
            row.append(out.softmax(dim=1)[0, int(classes[i])].item())
            if k < s:
                coords = torch.tensor(ranked[counts[k] : counts[k + 1]], dtype=torch.long)
                start[:, coords] = finish[:, coords]
        curves.append(row)
    return torch.tensor(curves, dtype=torch.float64)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cnn():
    return make_tiny_cnn(0)


@pytest.fixture(scope="module")
def batch8():
    x, _ = digits_batch(8)
    model = make_tiny_cnn(0)
    with torch.no_grad():
        y = model(x).argmax(1)
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(8, 16, 16, generator=g)
    return x, y, maps


def _linear_model(weights: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    lin = nn.Linear(weights.shape[1], weights.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weights)
        lin.bias.copy_(bias)
    return nn.Sequential(nn.Flatten(), lin).eval()


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# ----------------------------------------------------------------------------- (a) hand-computed
@pytest.fixture
def hand():
    # class 0 logit = w.x, class 1 logit = 0: p(class 0) = sigmoid(w.x)
    w = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    model = _linear_model(w, torch.zeros(2))
    x = torch.ones(1, 1, 2, 2)
    maps = torch.tensor([[[1.0, 2.0], [-1.0, 0.5]]])  # = w * x: order 1, 0, 3, 2
    return model, x, maps


def test_deletion_hand_computed(hand):
    model, x, maps = hand
    ev = Deletion(pixels_per_step=1).evaluate(model, x, ClassTarget([0]), maps, seed=0)
    # logits 2.5 -> remove idx1 (2) -> 0.5 -> idx0 (1) -> -0.5 -> idx3 (0.5) -> -1 -> idx2 (-1) -> 0
    p = [_sig(z) for z in (2.5, 0.5, -0.5, -1.0, 0.0)]
    auc = (p[0] / 2 + p[1] + p[2] + p[3] + p[4] / 2) / 4
    assert isinstance(ev, Evaluation)
    assert ev.curve.shape == (1, 5)
    torch.testing.assert_close(ev.curve[0].double(), torch.tensor(p, dtype=torch.float64), atol=1e-6, rtol=0)
    assert ev.scores["auc"].item() == pytest.approx(auc, abs=1e-6)
    assert ev.summary_step == "auc" and ev.curve_metric == "probability"
    assert ev.notes["n_steps"] == 4 and ev.notes["maps_with_ties"] == 0


def test_insertion_and_aopc_hand_computed(hand):
    model, x, maps = hand
    ins = Insertion(pixels_per_step=1, substrate="zero").evaluate(model, x, ClassTarget([0]), maps, seed=0)
    p_ins = [_sig(z) for z in (0.0, 2.0, 3.0, 3.5, 2.5)]
    assert ins.scores["auc"].item() == pytest.approx((p_ins[0] / 2 + sum(p_ins[1:4]) + p_ins[4] / 2) / 4, abs=1e-6)

    morf = AOPCMoRF(pixels_per_step=1).evaluate(model, x, ClassTarget([0]), maps, seed=0)
    p = [_sig(z) for z in (2.5, 0.5, -0.5, -1.0, 0.0)]
    assert morf.scores["aopc"].item() == pytest.approx(sum(p[0] - q for q in p) / 5, abs=1e-6)
    assert morf.summary_step == "aopc"

    lerf = AOPCLeRF(pixels_per_step=1).evaluate(model, x, ClassTarget([0]), maps, seed=0)
    # least relevant first: idx2 (-1), idx3 (0.5), idx0 (1), idx1 (2)
    q = [_sig(z) for z in (2.5, 3.5, 3.0, 2.0, 0.0)]
    assert lerf.scores["aopc"].item() == pytest.approx(sum(q[0] - v for v in q) / 5, abs=1e-6)

    # the "mean" and constant substrates: deleting to the image mean (1) changes nothing here
    mean = Deletion(pixels_per_step=1, substrate="mean").evaluate(model, x, ClassTarget([0]), maps, seed=0)
    torch.testing.assert_close(mean.curve, torch.full((1, 5), _sig(2.5)), atol=1e-6, rtol=0)
    const = Deletion(pixels_per_step=4, substrate=2.0).evaluate(model, x, ClassTarget([0]), maps, seed=0)
    assert const.curve[0, 1].item() == pytest.approx(_sig(5.0), abs=1e-6)


def test_metadata():
    assert Deletion.higher_is_better == {"auc": False}
    assert Insertion.higher_is_better == {"auc": True}
    assert AOPCMoRF.higher_is_better == {"aopc": True}
    assert AOPCLeRF.higher_is_better == {"aopc": False}
    for cls in (Deletion, Insertion, AOPCMoRF, AOPCLeRF):
        assert issubclass(cls, FaithfulnessFamily)
    assert Insertion().config()["substrate"] == "blur" and Insertion().config()["blur_kernel"] == 11
    assert Deletion().config()["substrate"] == "zero"
    from sanitycheck.registry import load_object

    for name, cls in {"Deletion": Deletion, "Insertion": Insertion, "AOPCMoRF": AOPCMoRF, "AOPCLeRF": AOPCLeRF}.items():
        assert load_object(f"sanitycheck.metrics.curves:{name}") is cls


def test_step_schedule():
    # pixels_per_step not dividing H*W: ceil(256 / 10) = 26 steps, the last one takes the remaining 6
    c = step_counts(256, 28, 10)
    assert len(c) == 27 and c[-1] == 256 and c[-1] - c[-2] == 6
    # default: exactly n_steps steps of H*W / n_steps pixels, spread evenly
    c = step_counts(256, 28, None)
    d = c.diff()
    assert len(c) == 29 and c[-1] == 256 and set(d.tolist()) <= {9, 10}
    assert step_counts(784, 28, None).diff().eq(28).all()


def test_blur_kernel_matches_reference():
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    np.testing.assert_allclose(gaussian_kernel(11, 5.0).numpy(), gaussian_filter(delta, 5.0), atol=1e-12)


def test_trapezoid():
    torch.testing.assert_close(trapezoid_auc(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])), torch.tensor([1.0, 0.25]))


# ----------------------------------------------------------------------------- (b) batched == naive
CASES = {
    "deletion": (dict(order="morf", mode="delete", substrate="zero"), Deletion, dict()),
    "insertion": (dict(order="morf", mode="insert", substrate="blur"), Insertion, dict()),
    "aopc_morf": (dict(order="morf", mode="delete", substrate="zero"), AOPCMoRF, dict()),
    "aopc_lerf": (dict(order="lerf", mode="delete", substrate="zero"), AOPCLeRF, dict()),
    "deletion_mean": (dict(order="morf", mode="delete", substrate="mean"), Deletion, dict(substrate="mean")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batched_equals_naive(case, cnn, batch8):
    x, y, maps = batch8
    kw, cls, extra = CASES[case]
    family = cls(pixels_per_step=10, batch_size=100, **extra)  # 26 steps; chunks straddle images
    ev = family.evaluate(cnn, x, ClassTarget(y), maps, seed=7)
    naive = perturbation_curve_naive(cnn, x, y, maps, pixels_per_step=10, seed=7, name=family.name, **kw)
    assert ev.curve.shape == (8, 27)
    torch.testing.assert_close(ev.curve.double(), naive, atol=1e-5, rtol=0)
    if "auc" in ev.scores:
        torch.testing.assert_close(ev.scores["auc"].double(), trapezoid_auc(naive), atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(ev.scores["aopc"].double(), (naive[:, :1] - naive).mean(1), atol=1e-5, rtol=0)


def test_batched_equals_naive_with_ties_and_default_schedule(cnn, batch8):
    x, y, maps = batch8
    tied = (maps * 2).round() / 2  # few distinct values: many ties
    ev = Deletion(n_steps=28).evaluate(cnn, x, ClassTarget(y), tied, seed=1)
    naive = perturbation_curve_naive(cnn, x, y, tied, n_steps=28, seed=1, name="deletion")
    torch.testing.assert_close(ev.curve.double(), naive, atol=1e-5, rtol=0)
    assert ev.notes["maps_with_ties"] == 8


# ----------------------------------------------------------------------------- (c) linear model
@pytest.fixture(scope="module")
def linear_setup():
    x, _ = digits_batch(32)
    g = torch.Generator().manual_seed(11)
    w = torch.randn(2, 256, generator=g) * 0.3
    b = torch.randn(2, generator=g) * 0.1
    model = _linear_model(w, b)
    with torch.no_grad():
        y = model(x).argmax(1)
    # exact contribution of each pixel to the log-odds of the explained class
    true = (w[y] - w[1 - y]).reshape(-1, 16, 16) * x[:, 0]
    rand = torch.randn(32, 16, 16, generator=g)
    return model, x, y, true, rand


def test_true_contributions_beat_random_map(linear_setup):
    model, x, y, true, rand = linear_setup
    t = ClassTarget(y)

    def run(family, maps):
        return family.evaluate(model, x, t, maps, seed=0).scores

    d_true, d_rand = run(Deletion(), true)["auc"], run(Deletion(), rand)["auc"]
    # with the zero substrate, deleting the largest contributions first gives the lowest possible
    # log-odds after every step: true <= random for every image
    assert (d_true <= d_rand + 1e-6).all() and d_true.mean() < d_rand.mean() - 0.05
    i_true, i_rand = run(Insertion(substrate="zero"), true)["auc"], run(Insertion(substrate="zero"), rand)["auc"]
    assert (i_true >= i_rand - 1e-6).all() and i_true.mean() > i_rand.mean() + 0.05
    # default blur substrate: on average
    assert run(Insertion(), true)["auc"].mean() > run(Insertion(), rand)["auc"].mean()
    a_true, a_rand = run(AOPCMoRF(), true)["aopc"], run(AOPCMoRF(), rand)["aopc"]
    assert (a_true >= a_rand - 1e-6).all() and a_true.mean() > a_rand.mean() + 0.05
    # least relevant first: removing the most negative contributions raises the probability
    assert run(AOPCLeRF(), true)["aopc"].mean() < run(AOPCLeRF(), rand)["aopc"].mean()


# ----------------------------------------------------------------------------- (d) ties
def test_constant_maps_ties_broken_deterministically(cnn, batch8):
    x, y, _ = batch8
    const = torch.ones(8, 16, 16)
    a = Deletion().evaluate(cnn, x, ClassTarget(y), const, seed=5)
    b = Deletion().evaluate(cnn, x, ClassTarget(y), const, seed=5)
    torch.testing.assert_close(a.curve, b.curve, atol=0, rtol=0)
    assert a.notes["maps_with_ties"] == 8 and a.notes["constant_maps"] == 8
    assert "random" in a.notes["ties"]
    # another seed gives another random order (a different curve for some image)
    c = Deletion().evaluate(cnn, x, ClassTarget(y), const, seed=6)
    assert not torch.equal(a.curve, c.curve)
    # one constant map among distinct ones
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(8, 16, 16, generator=g)
    maps[2] = 0.0
    ev = Insertion().evaluate(cnn, x, ClassTarget(y), maps, seed=5)
    assert ev.notes["maps_with_ties"] == 1 and ev.notes["constant_maps"] == 1


# ----------------------------------------------------------------------------- (e) errors
def test_bad_maps_raise(cnn, batch8):
    x, y, maps = batch8
    with pytest.raises(AttributionError, match="do not match"):
        Deletion().evaluate(cnn, x, ClassTarget(y), maps[:, :15], seed=0)
    with pytest.raises(AttributionError, match="do not match"):
        Deletion().evaluate(cnn, x, ClassTarget(y), maps[:7], seed=0)
    with pytest.raises(AttributionError, match="do not match"):
        Deletion().evaluate(cnn, x, ClassTarget(y), maps[:, None], seed=0)
    bad = maps.clone()
    bad[3, 4, 4] = float("nan")
    with pytest.raises(AttributionError, match="NaN"):
        Insertion().evaluate(cnn, x, ClassTarget(y), bad, seed=0)


def test_probability_model_with_softmax_raises(cnn, batch8):
    x, y, maps = batch8
    prob_model = nn.Sequential(cnn, nn.Softmax(dim=1)).eval()
    with pytest.raises(ConfigError, match="pass softmax=False"):
        Deletion().evaluate(prob_model, x, ClassTarget(y), maps, seed=0)
    # with softmax=False the model's probabilities are used as they are: the same curve
    ours = Deletion(softmax=False).evaluate(prob_model, x, ClassTarget(y), maps, seed=0)
    ref = Deletion().evaluate(cnn, x, ClassTarget(y), maps, seed=0)
    torch.testing.assert_close(ours.curve, ref.curve, atol=1e-6, rtol=0)
    assert ours.curve_metric == "score"


def test_generic_target(cnn, batch8):
    x, _, maps = batch8
    logit0 = CallableTarget(lambda out: out[:, 0])
    with pytest.raises(ConfigError, match="softmax=False"):
        Deletion().evaluate(cnn, x, logit0, maps, seed=0)
    a = Deletion(softmax=False).evaluate(cnn, x, logit0, maps, seed=0)
    b = Deletion(softmax=False).evaluate(cnn, x, ClassTarget(torch.zeros(8, dtype=torch.long)), maps, seed=0)
    torch.testing.assert_close(a.curve, b.curve)
    # a class target that itself applies softmax, with softmax=False: probabilities again
    c = Deletion(softmax=False).evaluate(cnn, x, ClassTarget(torch.zeros(8, dtype=torch.long), softmax=True), maps, seed=0)
    d = Deletion().evaluate(cnn, x, ClassTarget(torch.zeros(8, dtype=torch.long)), maps, seed=0)
    torch.testing.assert_close(c.curve, d.curve)


def test_bad_config():
    for kwargs in (dict(pixels_per_step=0), dict(n_steps=0), dict(substrate="noise"), dict(batch_size=0),
                   dict(substrate=float("nan"))):
        with pytest.raises(ConfigError):
            Deletion(**kwargs)
    with pytest.raises(ConfigError):
        Insertion(blur_kernel=4)


# ----------------------------------------------------------------------------- (f) batch invariance
@pytest.mark.parametrize("cls", [Deletion, Insertion, AOPCMoRF, AOPCLeRF])
def test_batch_invariance(cls, cnn, batch8):
    x, y, maps = batch8
    maps = (maps * 2).round() / 2  # with ties, so the random tie order must be keyed per sample
    maps[1] = 0.0
    fam = cls(batch_size=37)
    full = fam.evaluate(cnn, x, ClassTarget(y), maps, seed=3)
    part = fam.evaluate(cnn, x[:3], ClassTarget(y[:3]), maps[:3], seed=3)
    key = next(iter(full.scores))
    torch.testing.assert_close(part.scores[key], full.scores[key][:3], atol=1e-6, rtol=0)
    torch.testing.assert_close(part.curve, full.curve[:3], atol=1e-6, rtol=0)


def test_core_function_direct(cnn, batch8):
    x, y, maps = batch8
    curve, info = perturbation_curve(cnn, x, y, maps, order="lerf", mode="insert", pixels_per_step=64)
    assert curve.shape == (8, 5) and info["n_steps"] == 4 and info["last_step_pixels"] == 64
    with pytest.raises(ConfigError):
        perturbation_curve(cnn, x, y, maps, order="random")


def test_results_do_not_depend_on_batch_size(cnn, batch8):
    x, y, maps = batch8
    a = Insertion(pixels_per_step=10, batch_size=7).evaluate(cnn, x, ClassTarget(y), maps, seed=0)
    b = Insertion(pixels_per_step=10).evaluate(cnn, x, ClassTarget(y), maps, seed=0)
    torch.testing.assert_close(a.curve, b.curve, atol=1e-6, rtol=0)
