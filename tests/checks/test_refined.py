"""Refined randomization checks (random logit, smooth MPRT, efficient MPRT) and the eMPRT metric."""

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from sanitycheck.checks import get_check
from sanitycheck.checks.randomization import CascadingRandomization
from sanitycheck.checks.refined import EfficientMPRT, RandomLogit, SmoothMPRT
from sanitycheck.errors import ConfigError
from sanitycheck.explainers import get_explainer
from sanitycheck.explainers.noise_tunnel import NoiseTunnel
from sanitycheck.metrics.similarity import entropy_increase, histogram_entropy, spearman_abs
from sanitycheck.registry import METRICS
from sanitycheck.targets import CallableTarget, ClassTarget


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registry_names_resolve():
    assert isinstance(get_check("random_logit"), RandomLogit)
    assert isinstance(get_check("smooth_mprt"), SmoothMPRT)
    assert isinstance(get_check("efficient_mprt"), EfficientMPRT)
    assert METRICS.get("entropy_increase") is entropy_increase
    assert entropy_increase.info.higher_is_better and entropy_increase.info.category == "randomization"


# ----------------------------------------------------------------------------- random logit

@pytest.fixture
def many_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 16, 16, generator=g)
    logits = torch.randn(64, 10, generator=g)
    return x, logits, ClassTarget(logits.argmax(1))


def test_random_logit_picks_a_different_class_for_every_sample(many_inputs):
    x, logits, target = many_inputs
    new = RandomLogit().transform_target(target, logits, seed=0, x=x)
    assert isinstance(new, ClassTarget)
    assert (new.classes != target.classes).all()
    assert ((new.classes >= 0) & (new.classes < 10)).all()
    # uniform over the other classes: with 64 samples most of the 9 alternatives occur
    assert len(set((new.classes - target.classes).remainder(10).tolist())) >= 7
    # also keyed on logits when no input is given
    by_logits = RandomLogit().transform_target(target, logits, seed=0)
    assert (by_logits.classes != target.classes).all()


def test_random_logit_is_deterministic_seeded_and_batch_invariant(many_inputs):
    x, logits, target = many_inputs
    check = RandomLogit()
    full = check.transform_target(target, logits, seed=3, x=x).classes
    assert torch.equal(full, check.transform_target(target, logits, seed=3, x=x).classes)
    assert not torch.equal(full, check.transform_target(target, logits, seed=4, x=x).classes)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))[:20]
    part = check.transform_target(target.select(perm), logits[perm], seed=3, x=x[perm]).classes
    assert torch.equal(part, full[perm])
    full_l = check.transform_target(target, logits, seed=3).classes
    part_l = check.transform_target(target.select(perm), logits[perm], seed=3).classes
    assert torch.equal(part_l, full_l[perm])


def test_random_logit_respects_n_classes_and_softmax_and_rejects_non_class_targets(many_inputs):
    x, logits, _ = many_inputs
    target = ClassTarget(torch.zeros(64, dtype=torch.long), softmax=True)
    new = RandomLogit(n_classes=2).transform_target(target, logits, seed=0, x=x)
    assert new.softmax and (new.classes == 1).all()
    with pytest.raises(ConfigError):
        RandomLogit(n_classes=11).transform_target(target, logits, seed=0)
    with pytest.raises(ConfigError):
        RandomLogit().transform_target(CallableTarget(lambda out: out[:, 0]), logits, seed=0)
    with pytest.raises(ConfigError):
        RandomLogit(n_classes=1)


def test_random_logit_state_is_the_trained_model_and_maps_change(tiny_cnn, tiny_batch):
    x = tiny_batch[0]
    check = RandomLogit()
    assert check.steps(tiny_cnn, x) == ["random_logit"]
    states = list(check.states(tiny_cnn, seed=0, example_input=x))
    assert [s.step for s in states] == ["random_logit"]
    assert states[0].model is not tiny_cnn and _same(_state(tiny_cnn), _state(states[0].model))
    logits = tiny_cnn(x).detach()
    target = ClassTarget(logits.argmax(1))
    other = check.transform_target(target, logits, seed=0, x=x)
    explainer = check_explainer = get_explainer("gradient")
    assert getattr(check, "transform_explainer", lambda e: e)(explainer) is check_explainer
    original = explainer(tiny_cnn, x, target)
    random_maps = explainer(states[0].model, x, other)
    assert spearman_abs(original, random_maps).max() < 0.999  # the gradient is class sensitive


# ----------------------------------------------------------------------------- smooth MPRT

def test_smooth_mprt_wraps_the_explainer_in_a_noise_tunnel():
    check = SmoothMPRT(n_samples=7, noise_level=0.2)
    for name in ("gradient", "sobel"):  # a model-free control too
        base = get_explainer(name)
        wrapped = check.transform_explainer(base)
        assert isinstance(wrapped, NoiseTunnel)
        assert wrapped.base is base and wrapped.kind == "smoothgrad"
        assert (wrapped.n_samples, wrapped.noise_level) == (7, 0.2)
        assert wrapped.requires_model == base.requires_model
    default = SmoothMPRT()
    assert (default.n_samples, default.noise_level) == (50, 0.1)
    assert default.config() == {"layers": None, "n_samples": 50, "noise_level": 0.1}
    with pytest.raises(ConfigError):
        SmoothMPRT(n_samples=0)


def test_smooth_mprt_states_are_the_cascading_states(tiny_cnn, tiny_batch):
    x = tiny_batch[0]
    smooth = [(s.step, _state(s.model)) for s in SmoothMPRT().states(tiny_cnn, seed=5, example_input=x)]
    casc = [(s.step, _state(s.model)) for s in CascadingRandomization().states(tiny_cnn, seed=5, example_input=x)]
    assert [s for s, _ in smooth] == [s for s, _ in casc] == ["fc2", "fc1", "conv2", "conv1"]
    assert all(_same(a, b) for (_, a), (_, b) in zip(smooth, casc))
    assert SmoothMPRT().steps(tiny_cnn, x) == CascadingRandomization().steps(tiny_cnn, x)


def test_smooth_mprt_maps_are_smoothed_and_run(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    explainer = SmoothMPRT(n_samples=4).transform_explainer(get_explainer("gradient"))
    maps = explainer(tiny_cnn, x, ClassTarget(y))
    assert maps.shape == (8, 16, 16)
    assert not torch.allclose(maps, get_explainer("gradient")(tiny_cnn, x, ClassTarget(y)))


# ----------------------------------------------------------------------------- efficient MPRT

def test_efficient_mprt_state_is_the_last_cascading_state(tiny_cnn, tiny_batch):
    x = tiny_batch[0]
    original = _state(tiny_cnn)
    check = EfficientMPRT()
    assert check.steps(tiny_cnn, x) == ["fully_randomized"]
    states = list(check.states(tiny_cnn, seed=2, example_input=x))
    assert [s.step for s in states] == ["fully_randomized"]
    assert states[0].info["randomized_layers"] == ["fc2", "fc1", "conv2", "conv1"]
    for last in CascadingRandomization().states(tiny_cnn, seed=2, example_input=x):
        pass
    assert _same(_state(states[0].model), _state(last.model))
    assert _same(original, _state(tiny_cnn)) and states[0].model is not tiny_cnn
    assert not tiny_cnn.training


def test_efficient_mprt_with_a_layer_subset(tiny_cnn, tiny_batch):
    x = tiny_batch[0]
    state = next(EfficientMPRT(layers=["fc1", "fc2"]).states(tiny_cnn, seed=0, example_input=x))
    for last in CascadingRandomization(layers=["fc1", "fc2"]).states(tiny_cnn, seed=0, example_input=x):
        pass
    assert _same(_state(state.model), _state(last.model))
    assert torch.equal(state.model.conv1.weight, tiny_cnn.conv1.weight)
    assert not torch.equal(state.model.fc1.weight, tiny_cnn.fc1.weight)
    with pytest.raises(ConfigError, match="fc9"):
        list(EfficientMPRT(layers=["fc9"]).states(tiny_cnn, seed=0, example_input=x))


# ----------------------------------------------------------------------------- entropy increase

def _peaked(b=4, size=16):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centers = torch.arange(b) * 2 + 4
    d2 = (yy - centers.view(-1, 1, 1)) ** 2 + (xx - centers.view(-1, 1, 1)) ** 2
    return torch.exp(-d2 / 4.0).to(torch.float32)


def test_entropy_increase_zero_for_identical_and_positive_for_noise():
    ref = _peaked()
    assert torch.equal(entropy_increase(ref, ref.clone()), torch.zeros(4))
    noise = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(0))
    score = entropy_increase(ref, noise)
    assert (score > 0).all() and torch.isfinite(score).all()
    assert score.dtype == torch.float32


def test_entropy_increase_nan_only_for_a_constant_reference():
    ref = _peaked(3)
    ref[1] = 0.7  # constant reference
    other = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(1))
    other[2] = 0.0  # constant other: H = 0, score -1 (defined)
    score = entropy_increase(ref, other)
    assert torch.isnan(score).tolist() == [False, True, False]
    assert score[2].item() == pytest.approx(-1.0)
    tiny = torch.zeros(1, 8, 8)
    tiny[0, 0, 0] = 1e-30  # any non-constant map is defined
    assert torch.isfinite(entropy_increase(tiny, torch.rand(1, 8, 8))).all()


def test_entropy_increase_batched_equals_per_sample_and_matches_numpy():
    g = torch.Generator().manual_seed(2)
    ref = torch.cat([_peaked(3).double(), torch.randn(3, 16, 16, generator=g, dtype=torch.float64)])
    other = torch.randn(6, 16, 16, generator=g, dtype=torch.float64).pow(3)
    batched = entropy_increase(ref, other)
    single = torch.cat([entropy_increase(ref[i:i + 1], other[i:i + 1]) for i in range(6)])
    assert torch.equal(batched, single)
    for i in range(6):
        h_ref = scipy_entropy(np.histogram(ref[i].numpy(), bins=100)[0])
        h_oth = scipy_entropy(np.histogram(other[i].numpy(), bins=100)[0])
        assert batched[i].item() == pytest.approx((h_oth - h_ref) / h_ref, rel=1e-12, abs=1e-12)
        assert histogram_entropy(ref[i:i + 1]).item() == pytest.approx(h_ref, rel=1e-12)
    # invariant to positive affine rescaling (the bins follow each map's range)
    assert torch.allclose(entropy_increase(3 * ref + 1, other), batched)
    assert entropy_increase(ref[:0], other[:0]).shape == (0,)
