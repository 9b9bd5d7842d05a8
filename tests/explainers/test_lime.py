"""LIME (sanitycheck.explainers.lime) against the ``lime`` package (test-only reference, lime==0.2.0.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sanitycheck.errors import ConfigError
from sanitycheck.explainers.lime import Lime
from sanitycheck.explainers.superpixels import Superpixels, evaluate_masks
from sanitycheck.targets import as_target
from tests.helpers import digits_batch, make_tiny_cnn


class RGBNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                 nn.Linear(64, 5))

    def forward(self, x):
        return self.net(x)


def _rgb_images(n=2, size=32):
    g = torch.Generator().manual_seed(1)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_lime_matches_lime_package_on_same_segments_and_masks():
    lime_image = pytest.importorskip("lime.lime_image")
    model = RGBNet().eval()
    x = _rgb_images(1)
    target = 3
    ours = Lime(n_samples=300, segmentation="slic", n_segments=12, seed=5)
    segments = ours.superpixels(x)
    masks = ours.masks(x, segments)[0].numpy().astype(int)
    seg_np = segments[0].numpy()
    n_seg = int(seg_np.max()) + 1
    assert n_seg >= 6

    class FixedMasks:  # lime's data_labels draws randint(0, 2, S * n): hand it our masks instead
        def randint(self, low, high, size):
            assert size == masks.size
            return masks.reshape(-1).copy()

    def classifier_fn(images):  # (N, H, W, 3) numpy -> logits (N, classes)
        with torch.no_grad():
            t = torch.as_tensor(np.asarray(images), dtype=torch.float32).permute(0, 3, 1, 2)
            return model(t).numpy().astype(np.float64)

    ref = lime_image.LimeImageExplainer(kernel_width=0.25)
    ref.random_state = FixedMasks()
    exp = ref.explain_instance(x[0].permute(1, 2, 0).numpy().copy(), classifier_fn, labels=(target,), top_labels=None,
                               hide_color=None, num_samples=masks.shape[0], batch_size=64,
                               segmentation_fn=lambda img: seg_np, random_seed=0)
    coef = np.zeros(n_seg)
    for j, c in exp.local_exp[target]:
        coef[j] = c
    maps = ours(model, x, torch.tensor([target]))[0].numpy()
    expected = coef[seg_np]
    assert np.abs(expected).max() > 1e-3  # a map that says something
    np.testing.assert_allclose(maps, expected, atol=1e-5, rtol=0)


def test_grayscale_fashion_mnist_sized_input_gets_several_superpixels():
    x, _ = digits_batch(4, size=28)
    segs = Superpixels()(x)  # auto: slic on 28x28
    counts = [int(s.max()) + 1 for s in segs]
    assert all(c >= 8 for c in counts), counts
    assert all(torch.equal(torch.unique(s), torch.arange(c)) for s, c in zip(segs, counts))


def test_one_superpixel_is_a_clear_error():
    x, y = digits_batch(1)  # quickshift with LIME's kernel_size=4 merges a 16x16 digit into one segment
    with pytest.raises(ConfigError, match="yielded 1 superpixel"):
        Lime(n_samples=10, segmentation="quickshift")(make_tiny_cnn(), x, y)


def test_deterministic_batch_invariant_and_seeded():
    model = make_tiny_cnn()
    x, y = digits_batch(4)
    e = Lime(n_samples=64, max_batch=50)
    both = e(model, x, y)
    assert torch.equal(both, e(model, x, y))
    alone = Lime(n_samples=64, max_batch=7)(model, x[2:3], y[2:3])
    torch.testing.assert_close(alone[0], both[2], atol=1e-6, rtol=1e-5)
    other = type(e)(**{**e.config(), "seed": 1})(model, x, y)
    assert not torch.equal(other, both)
    doubled = type(e)(**{**e.config(), "n_samples": 128})
    assert doubled.n_samples == 128 and doubled.evaluations_per_map(tuple(x.shape[1:])) == 128


def test_masks_are_the_same_under_another_model_state():
    x, _ = digits_batch(2)
    e = Lime(n_samples=32)
    segs = e.superpixels(x)
    m1, m2 = e.masks(x, segs), e.masks(x.clone(), e.superpixels(x.clone()))
    assert all(torch.equal(a, b) for a, b in zip(m1, m2))
    assert all(torch.equal(m[0], torch.ones_like(m[0])) for m in m1)  # LIME: the first sample is the image


def test_evaluate_masks_counts_and_fills():
    model = make_tiny_cnn()
    x, y = digits_batch(2)
    segs = Superpixels()(x)
    masks = [torch.ones(3, int(s.max()) + 1) for s in segs]
    masks[1][1] = 0.0
    fills = torch.zeros_like(x)
    scores = evaluate_masks(model, x, as_target(y),
                            segs, masks, fills, max_batch=4)
    with torch.no_grad():
        full = model(x).gather(1, y[:, None])[:, 0]
        empty = model(fills[1:2])[0, y[1]]
    torch.testing.assert_close(scores[0], full[0].expand(3))
    torch.testing.assert_close(scores[1][1], empty)


def test_bad_parameters():
    with pytest.raises(ConfigError, match="segmentation"):
        Lime(segmentation="watershed")
    with pytest.raises(ConfigError, match="kernel_width"):
        Lime(kernel_width=0)
    with pytest.raises(ConfigError, match="hide_color"):
        Lime(hide_color="mean")
