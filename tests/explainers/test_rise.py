"""RISE (Petsiuk et al. 2018): the paper's formula, the reference code's masks, determinism, batch invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sanitycheck.errors import ConfigError
from sanitycheck.explainers import get_explainer
from sanitycheck.explainers.occlusion import Occlusion
from sanitycheck.explainers.rise import Rise, rise_masks


@pytest.mark.parametrize("s,h,w", [(7, 28, 28), (4, 16, 16), (5, 17, 23)])
def test_masks_match_the_reference_code(s, h, w):
    """The reference code's generate_masks: skimage resize(order=1, mode='reflect', anti_aliasing=False) of the
    s x s grid to (s + 1) * cell, cropped at the shift."""
    from skimage.transform import resize

    g = torch.Generator().manual_seed(3)
    grids = torch.rand(6, s, s, generator=g) < 0.5
    ch, cw = math.ceil(h / s), math.ceil(w / s)
    shifts = torch.stack([torch.randint(0, ch, (6,), generator=g), torch.randint(0, cw, (6,), generator=g)], 1)
    ours = rise_masks(grids, shifts, (h, w)).numpy()
    ref = np.stack([resize(grids[i].numpy().astype(float), ((s + 1) * ch, (s + 1) * cw), order=1, mode="reflect",
                           anti_aliasing=False)[shifts[i, 0]:shifts[i, 0] + h, shifts[i, 1]:shifts[i, 1] + w]
                    for i in range(6)])
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
    assert ours.min() >= 0 and ours.max() <= 1 and ours.std() > 0.1


def test_matches_the_papers_formula(tiny_cnn, tiny_batch):
    """S = 1/(N p) Σ_i P(class | x ⊙ M_i) M_i, computed mask by mask on the same masks."""
    x, y = tiny_batch
    x, y = x[:3], y[:3]
    e = Rise(n_samples=40, grid=4, p=0.3, seed=5, max_batch=7)
    maps = e(tiny_cnn, x, y)
    grids, shifts = e.draws(x)
    for i in range(3):
        expected = torch.zeros(x.shape[-2:], dtype=torch.float64)
        for j in range(40):
            mask = rise_masks(grids[i, j:j + 1], shifts[i, j:j + 1], tuple(x.shape[-2:]))[0]
            with torch.no_grad():
                prob = tiny_cnn((x[i] * mask)[None]).softmax(1)[0, y[i]]
            expected += float(prob) * mask.double()
        expected /= 40 * 0.3
        torch.testing.assert_close(maps[i].double(), expected, atol=1e-6, rtol=1e-5)
    # the masks follow the configuration: about p of the cells kept, shifts inside one cell
    assert 0.15 < grids.float().mean() < 0.45
    assert shifts.min() >= 0 and shifts.max() < math.ceil(16 / 4)


def test_logit_scores_when_probability_is_off(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    prob = Rise(n_samples=16, seed=1)(tiny_cnn, x[:2], y[:2])
    logit = Rise(n_samples=16, seed=1, probability=False)(tiny_cnn, x[:2], y[:2])
    assert not torch.allclose(prob, logit)
    assert prob.min() >= 0 and prob.max() <= 1 / 0.5 + 1e-6  # a mean of probabilities over masks / p


def test_deterministic_batch_invariant_and_seeded(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    e = Rise(n_samples=64, seed=2, max_batch=50)
    full = e(tiny_cnn, x, y)
    assert torch.equal(full, e(tiny_cnn, x, y))
    torch.testing.assert_close(e(tiny_cnn, x[2:5], y[2:5]), full[2:5], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(Rise(n_samples=64, seed=2, max_batch=1000)(tiny_cnn, x, y), full, atol=1e-6, rtol=1e-5)
    other_seed = type(e)(**{**e.config(), "seed": 3})(tiny_cnn, x, y)
    assert not torch.allclose(other_seed, full)
    # common random numbers: the masks do not depend on the model
    g1, s1 = e.draws(x)
    g2, s2 = type(e)(**e.config()).draws(x.clone())
    assert torch.equal(g1, g2) and torch.equal(s1, s2)


def test_config_rebuilds_and_doubles(tiny_cnn):
    e = Rise(n_samples=30, grid=5, p=0.4, seed=7)
    assert type(e)(**e.config()).config() == e.config()
    twice = type(e)(**{**e.config(), "n_samples": 60})
    assert twice.n_samples == 60 and twice.grid == 5 and twice.seed == 7
    assert twice.evaluations_per_map((1, 1, 16, 16)) == 60 and e.evaluations_per_map((1, 3, 224, 224)) == 30


@pytest.mark.parametrize("kwargs", [{"n_samples": 0}, {"grid": 0}, {"p": 0.0}, {"p": 1.5}, {"max_batch": 0}])
def test_bad_parameters(kwargs):
    with pytest.raises(ConfigError):
        Rise(**kwargs)


def test_grid_larger_than_input(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ConfigError, match="grid 20"):
        Rise(n_samples=4, grid=20)(tiny_cnn, x[:1], y[:1])


def test_registered_for_images_and_clip():
    from sanitycheck.registry import EXPLAINERS

    assert isinstance(get_explainer("rise"), Rise)
    assert EXPLAINERS.supports("rise", "image") and EXPLAINERS.supports("rise", "image_text")


def test_occlusion_evaluations_per_map(tiny_cnn, tiny_batch):
    """Windows + 1 (the unoccluded input); equal to the forward passes counted during a call; the class
    source (hashed into published maps) is unchanged by the added method."""
    import inspect

    x, y = tiny_batch
    assert "evaluations_per_map" not in inspect.getsource(Occlusion)
    assert Occlusion(window=4).evaluations_per_map((1, 1, 16, 16)) == 16 + 1
    assert Occlusion(window=4, stride=2).evaluations_per_map((1, 1, 16, 16)) == 7 * 7 + 1
    assert Occlusion(window=5, stride=4).evaluations_per_map((1, 1, 16, 16)) == 4 * 4 + 1  # last window flush
    with pytest.raises(ConfigError, match="window=None"):
        Occlusion().evaluations_per_map((1, 1, 16, 16))
    e = Occlusion(batch_size=7)
    assert e.evaluations_per_map((1, 1, 16, 16), tiny_cnn) == 4 + 1
    calls = []
    handle = tiny_cnn.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    try:
        e(tiny_cnn, x[:2], y[:2])
    finally:
        handle.remove()
    assert sum(calls) == 2 * e.evaluations_per_map((1, 1, 16, 16))
    from sanitycheck.explainers.costs import evaluations_per_map

    assert evaluations_per_map(Occlusion(), (1, 1, 16, 16), tiny_cnn) == 5
    assert evaluations_per_map(Rise(n_samples=9), (1, 1, 16, 16), tiny_cnn) == 9
    assert evaluations_per_map(get_explainer("gradient"), (1, 1, 16, 16)) is None


def test_on_a_clip_similarity(sim, scenes):
    """image_text: RISE of the raw cosine similarity (probability=False, as the CLIP suite's curves use it);
    batch-invariant, and equal to the formula on the similarity scores."""
    x = scenes.images[:4].contiguous()
    y = scenes.caption_classes[:4]
    e = Rise(n_samples=24, probability=False, seed=1, max_batch=10)
    maps = e(sim, x, y)
    torch.testing.assert_close(e(sim, x[1:3], y[1:3]), maps[1:3], atol=1e-5, rtol=1e-4)
    grids, shifts = e.draws(x[:1])
    masks = rise_masks(grids[0], shifts[0], tuple(x.shape[-2:]))
    with torch.no_grad():
        scores = sim(x[0] * masks[:, None]).gather(1, y[:1].repeat(24)[:, None])[:, 0]
    expected = (scores[:, None, None].double() * masks.double()).sum(0) / (24 * 0.5)
    torch.testing.assert_close(maps[0].double(), expected, atol=1e-5, rtol=1e-4)
