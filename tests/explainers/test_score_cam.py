"""Score-CAM (Wang et al. 2020) against a direct, channel-by-channel implementation of the paper."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from sanitycheck.errors import ConfigError, NotApplicableError
from sanitycheck.explainers import get_explainer
from sanitycheck.explainers.score_cam import ScoreCAM


def direct_score_cam(model, x1, cls, layer_name: str, max_channels: Optional[int] = None,
                     rectify: bool = True) -> torch.Tensor:
    """One image, one channel at a time: H_k = minmax(Up(A_k)); CIC_k = P(cls | x ⊙ H_k) - P(cls | baseline);
    α = softmax(CIC) over the non-constant channels; map = ReLU(Σ α_k Up(A_k))."""
    layer = model.get_submodule(layer_name)
    acts = []
    h = layer.register_forward_hook(lambda _m, _i, o: acts.append(o.detach()))
    with torch.no_grad():
        model(x1[None])
        baseline = model(torch.zeros_like(x1)[None]).softmax(1)[0, cls]
    h.remove()
    a = acts[0][0].relu() if rectify else acts[0][0]                 # (K, h, w)
    channels = range(a.shape[0])
    if max_channels is not None:
        means = [float(a[k].mean()) for k in channels]
        channels = sorted(channels, key=lambda k: (-means[k], k))[:max_channels]
    cics, ups = [], []
    for k in channels:
        up = F.interpolate(a[k][None, None], size=x1.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        if up.max() == up.min():
            continue
        norm = (up - up.min()) / (up.max() - up.min())
        with torch.no_grad():
            cics.append(model((x1 * norm)[None]).softmax(1)[0, cls] - baseline)
        ups.append(up)
    alpha = torch.softmax(torch.stack(cics), 0)
    return F.relu(sum(w * u for w, u in zip(alpha, ups)))


@pytest.mark.parametrize("layer,rectify", [("relu2", True), ("conv2", True), ("conv2", False), ("relu1", True)])
def test_matches_direct_implementation(tiny_cnn, tiny_batch, layer, rectify):
    x, y = tiny_batch
    x, y = x[:3], y[:3]
    maps = ScoreCAM(layer=layer, rectify=rectify, max_batch=5)(tiny_cnn, x, y)
    for i in range(3):
        torch.testing.assert_close(maps[i], direct_score_cam(tiny_cnn, x[i], int(y[i]), layer, rectify=rectify),
                                   atol=1e-6, rtol=1e-5)
    if rectify:  # non-negative activations: a non-trivial map
        assert (maps.flatten(1).amax(1) > 0).all()


def test_rectified_conv_is_the_following_relu(tiny_cnn, tiny_batch):
    """conv2 -> relu2 in the tiny CNN: the rectified conv output is relu2's; unrectified it is another map."""
    x, y = tiny_batch
    rectified = ScoreCAM(layer="conv2")(tiny_cnn, x[:4], y[:4])
    torch.testing.assert_close(rectified, ScoreCAM(layer="relu2", rectify=False)(tiny_cnn, x[:4], y[:4]))
    assert not torch.allclose(rectified, ScoreCAM(layer="conv2", rectify=False)(tiny_cnn, x[:4], y[:4]))


def test_max_channels_matches_direct(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    maps = ScoreCAM(layer="relu2", max_channels=5)(tiny_cnn, x[:2], y[:2])
    full = ScoreCAM(layer="relu2")(tiny_cnn, x[:2], y[:2])
    for i in range(2):
        torch.testing.assert_close(maps[i], direct_score_cam(tiny_cnn, x[i], int(y[i]), "relu2", 5), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(maps, full)


def test_default_layer_is_grad_cams(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    e = ScoreCAM()
    torch.testing.assert_close(e(tiny_cnn, x[:2], y[:2]), ScoreCAM(layer="conv2")(tiny_cnn, x[:2], y[:2]))
    assert e.last_layer == "conv2" and e.last_channels == 16


def test_deterministic_and_batch_invariant(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    e = ScoreCAM(layer="relu2", max_batch=9)
    full = e(tiny_cnn, x, y)
    assert torch.equal(full, e(tiny_cnn, x, y))
    torch.testing.assert_close(e(tiny_cnn, x[3:6], y[3:6]), full[3:6], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ScoreCAM(layer="relu2", max_batch=1000)(tiny_cnn, x, y), full, atol=1e-6, rtol=1e-5)


def test_model_without_conv_layer_is_a_clear_error(tiny_mlp, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(NotApplicableError, match=r"score_cam: TinyMLP has no nn.Conv2d layer.*layer="):
        ScoreCAM()(tiny_mlp, x[:2], y[:2])


def test_non_spatial_layer_is_a_clear_error(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(NotApplicableError, match="'fc1'.*not spatial maps"):
        ScoreCAM(layer="fc1")(tiny_cnn, x[:2], y[:2])


def test_evaluations_per_map(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    e = ScoreCAM(layer="relu2")
    with pytest.raises(ConfigError, match="not known yet"):
        e.evaluations_per_map(x.shape)
    assert e.evaluations_per_map(x.shape, tiny_cnn) == 1 + 16
    assert ScoreCAM(max_channels=5).evaluations_per_map(x.shape, tiny_cnn) == 1 + 5
    assert ScoreCAM(max_channels=500).evaluations_per_map(x.shape, tiny_cnn) == 1 + 16
    calls = []
    handle = tiny_cnn.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    try:
        e(tiny_cnn, x[:3], y[:3])
    finally:
        handle.remove()
    assert sum(calls) == 3 * e.evaluations_per_map(x.shape)


@pytest.mark.parametrize("kwargs", [{"layer": 3}, {"max_channels": 0}, {"max_batch": 0}])
def test_bad_parameters(kwargs):
    with pytest.raises(ConfigError):
        ScoreCAM(**kwargs)


def test_registered():
    from sanitycheck.registry import EXPLAINERS

    assert isinstance(get_explainer("score_cam"), ScoreCAM)
    assert EXPLAINERS.supports("score_cam", "image")
