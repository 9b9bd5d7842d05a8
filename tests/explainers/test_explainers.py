"""Correctness of each built-in explainer, and the ways of wrapping user code."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sanitycheck.errors import AttributionError, ConfigError, NotApplicableError
from sanitycheck.explainers import CaptumExplainer, FunctionExplainer, get_explainer
from sanitycheck.explainers.cam import GradCAM, GuidedGradCAM, find_last_conv
from sanitycheck.explainers.controls import SobelEdges, UniformNoise
from sanitycheck.explainers.gradients import Gradient, GradientXInput, GuidedBackprop, IntegratedGradients
from sanitycheck.explainers.noise_tunnel import NoiseTunnel, SmoothGrad, VarGrad
from sanitycheck.targets import CallableTarget, ClassTarget


def autograd_gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x)
    return grad


# --- gradients -------------------------------------------------------------------------------

def test_gradient_is_autograd_gradient(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    expected = autograd_gradient(tiny_cnn, x, y)[:, 0]
    torch.testing.assert_close(Gradient()(tiny_cnn, x, y), expected)
    assert (expected < 0).any() and (expected > 0).any()  # the sign is kept


def test_gradient_x_input(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    expected = (autograd_gradient(tiny_cnn, x, y) * x)[:, 0]
    torch.testing.assert_close(GradientXInput()(tiny_cnn, x, y), expected)


def test_channel_reduction_on_rgb():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([1, 4])
    grad = autograd_gradient(model, x, y)
    torch.testing.assert_close(Gradient()(model, x, y), grad.sum(1))
    torch.testing.assert_close(Gradient(channel_reduction="max_abs")(model, x, y), grad.abs().amax(1))
    with pytest.raises(ConfigError):
        Gradient(channel_reduction="mean")


@pytest.mark.parametrize("n_steps,tol", [(50, 0.05), (200, 0.01)])
def test_integrated_gradients_completeness(tiny_cnn, tiny_batch, n_steps, tol):
    x, y = tiny_batch
    maps = IntegratedGradients(n_steps=n_steps)(tiny_cnn, x, y)
    with torch.no_grad():
        gap = (tiny_cnn(x) - tiny_cnn(torch.zeros_like(x))).gather(1, y[:, None]).squeeze(1)
    err = (maps.flatten(1).sum(1) - gap).abs()
    assert (err <= tol * gap.abs().max() + 1e-4).all(), (err, gap)


def test_integrated_gradients_internal_batching_does_not_change_maps(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    a = IntegratedGradients(n_steps=20, internal_batch_size=None)(tiny_cnn, x, y)
    b = IntegratedGradients(n_steps=20, internal_batch_size=16)(tiny_cnn, x, y)  # < batch: one step per pass
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert "internal_batch_size" not in IntegratedGradients().config()


def test_guided_backprop_differs_from_gradient_and_needs_relu_modules(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    gb, grad = GuidedBackprop()(tiny_cnn, x, y), Gradient()(tiny_cnn, x, y)
    assert not torch.allclose(gb, grad)
    functional = nn.Sequential(nn.Flatten(), nn.Linear(256, 10)).eval()
    with pytest.raises(NotApplicableError, match="nn.ReLU"):
        GuidedBackprop()(functional, x, y)


# --- targets other than a class logit --------------------------------------------------------

EXPLAINER_FACTORIES = [Gradient, GradientXInput, lambda: IntegratedGradients(n_steps=16, internal_batch_size=8),
                       GuidedBackprop, lambda: SmoothGrad(n_samples=4), GradCAM, GuidedGradCAM]


@pytest.mark.parametrize("factory", EXPLAINER_FACTORIES)
def test_callable_target_equals_class_target(factory, tiny_cnn, tiny_batch):
    """A plain callable goes through the forward function (captum gets no class indices)."""
    x, _ = tiny_batch
    explainer = factory()
    by_class = explainer(tiny_cnn, x, ClassTarget([3] * len(x)))
    by_callable = explainer(tiny_cnn, x, CallableTarget(lambda out: out[:, 3]))
    torch.testing.assert_close(by_callable, by_class, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("factory", EXPLAINER_FACTORIES)
def test_per_sample_target_is_expanded_with_the_batch(factory, tiny_cnn, tiny_batch):
    """Softmax class targets pass their per-sample classes as additional_forward_args: batch-expanding
    methods must expand them alongside the inputs (compare with one sample at a time)."""
    x, y = tiny_batch
    x, y = x[:4], y[:4]
    explainer = factory()
    batched = explainer(tiny_cnn, x, ClassTarget(y, softmax=True))
    one_by_one = torch.cat([explainer(tiny_cnn, x[i:i + 1], CallableTarget(lambda o, c=int(y[i]): o.softmax(1)[:, c]))
                            for i in range(len(x))])
    torch.testing.assert_close(batched, one_by_one, atol=1e-6, rtol=1e-4)


# --- noise tunnel ----------------------------------------------------------------------------

def test_smoothgrad_without_noise_is_gradient(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    torch.testing.assert_close(SmoothGrad(noise_level=0.0, n_samples=5)(tiny_cnn, x, y), Gradient()(tiny_cnn, x, y))


def test_vargrad_nonnegative_and_smoothgrad_sq(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    var = VarGrad(n_samples=10)(tiny_cnn, x, y)
    assert (var >= 0).all() and var.max() > 0
    mean = SmoothGrad(n_samples=10)(tiny_cnn, x, y)
    sq = NoiseTunnel(base="gradient", n_samples=10, kind="smoothgrad_sq")(tiny_cnn, x, y)
    torch.testing.assert_close(var, sq - mean ** 2, atol=1e-9, rtol=1e-3)  # same noise: var = E[g^2] - E[g]^2
    assert VarGrad(n_samples=10, noise_level=0.0)(tiny_cnn, x, y).abs().max() < 1e-12


def test_noise_tunnel_chunking_seed_and_model_independence(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    ref = SmoothGrad(n_samples=6)(tiny_cnn, x, y)
    torch.testing.assert_close(SmoothGrad(n_samples=6, max_batch=7)(tiny_cnn, x, y), ref, atol=1e-7, rtol=1e-5)
    assert not torch.allclose(SmoothGrad(n_samples=6, seed=1)(tiny_cnn, x, y), ref)
    # common random numbers: the noisy inputs depend on the input only
    tunnel = NoiseTunnel(base={"name": "gradient_x_input"}, n_samples=3)
    assert torch.equal(tunnel.noisy_inputs(x), tunnel.noisy_inputs(x.clone()))
    assert tunnel.name == "smoothgrad[gradient_x_input]"
    # sigma is relative to each sample's range
    noisy = NoiseTunnel(n_samples=200, noise_level=0.1).noisy_inputs(x[:1] * 10)
    assert abs(float((noisy - x[:1] * 10).std()) - 0.1 * 10 * float(x[0].max() - x[0].min())) < 0.05
    with pytest.raises(ConfigError):
        NoiseTunnel(kind="median")


# --- CAM -------------------------------------------------------------------------------------

def test_find_last_conv_and_layer_choice(tiny_cnn, tiny_batch, snapshot, same_snapshot):
    x, y = tiny_batch
    before = snapshot(tiny_cnn)
    assert find_last_conv(tiny_cnn, x) == "conv2"
    same_snapshot(before, snapshot(tiny_cnn))
    cam = GradCAM()
    default = cam(tiny_cnn, x, y)
    assert cam.last_layer == "conv2"
    torch.testing.assert_close(GradCAM(layer="conv2")(tiny_cnn, x, y), default)
    first = GradCAM(layer="conv1")(tiny_cnn, x, y)
    assert not torch.allclose(first, default)
    model = copy.deepcopy(tiny_cnn)
    model.sanitycheck_cam_layer = "conv1"
    torch.testing.assert_close(GradCAM()(model, x, y), first)
    with pytest.raises(ConfigError, match="conv2"):
        GradCAM(layer="nope")(tiny_cnn, x, y)


def test_gradcam_matches_definition(tiny_cnn, tiny_batch):
    """ReLU(sum_k alpha_k A^k), alpha_k = spatial mean of d y_c / d A^k, at conv2's 8x8 map, upsampled."""
    x, y = tiny_batch
    acts = {}
    handle = tiny_cnn.conv2.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    try:
        logits = tiny_cnn(x)
    finally:
        handle.remove()
    a = acts["a"]
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), a)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    expected = nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(GradCAM()(tiny_cnn, x, y), expected.detach())
    assert (GradCAM()(tiny_cnn, x, y) >= 0).all()
    assert (GradCAM(relu=False)(tiny_cnn, x, y) < 0).any()


def test_guided_gradcam_is_product(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    expected = GuidedBackprop()(tiny_cnn, x, y) * GradCAM()(tiny_cnn, x, y)
    torch.testing.assert_close(GuidedGradCAM()(tiny_cnn, x, y), expected)


@pytest.mark.parametrize("cls", [GradCAM, GuidedGradCAM])
def test_cam_on_mlp_not_applicable(cls, tiny_mlp, tiny_batch, snapshot, same_snapshot):
    x, y = tiny_batch
    before = snapshot(tiny_mlp)
    with pytest.raises(NotApplicableError, match="no nn.Conv2d"):
        cls()(tiny_mlp, x, y)
    same_snapshot(before, snapshot(tiny_mlp))


def test_cam_on_non_spatial_layer_not_applicable(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(NotApplicableError, match="spatial"):
        GradCAM(layer="fc1")(tiny_cnn, x, y)


# --- controls --------------------------------------------------------------------------------

def test_sobel_vertical_step_is_maximal_at_edge():
    x = torch.zeros(2, 1, 12, 12)
    x[0, :, :, 6:] = 1.0
    x[1, :, :, 3:] = 1.0
    maps = SobelEdges()(None, x, [0, 0])
    for i, edge in enumerate((6, 3)):
        col_profile = maps[i].mean(0)
        assert int(col_profile.argmax()) in (edge - 1, edge)
        assert torch.all(maps[i][:, [c for c in range(12) if c not in (edge - 1, edge)]] == 0)  # no border edges


def test_sobel_sums_channels():
    x = torch.rand(1, 3, 8, 8)
    per_channel = torch.stack([SobelEdges()(None, x[:, c:c + 1], [0]) for c in range(3)]).sum(0)
    torch.testing.assert_close(SobelEdges()(None, x, [0]), per_channel)


def test_uniform_noise(tiny_batch):
    x, y = tiny_batch
    maps = UniformNoise()(None, x, y)
    assert maps.min() >= 0 and maps.max() < 1 and 0.4 < float(maps.mean()) < 0.6
    assert not torch.equal(maps, UniformNoise(seed=1)(None, x, y))


# --- wrapping user code ----------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_captum_class_by_import_path(tiny_cnn, tiny_batch):
    x, y = tiny_batch
    explainer = get_explainer("captum.attr:Saliency")  # captum's default abs=True
    assert isinstance(explainer, CaptumExplainer) and explainer.name == "Saliency"
    torch.testing.assert_close(explainer(tiny_cnn, x, y), autograd_gradient(tiny_cnn, x, y).abs()[:, 0])
    guided = get_explainer("captum.attr:GuidedBackprop")  # takes the model, not a forward function
    torch.testing.assert_close(guided(tiny_cnn, x, CallableTarget(lambda o: o[:, 2])),
                               GuidedBackprop()(tiny_cnn, x, [2] * len(x)))


def test_plain_callable(tiny_cnn, tiny_batch):
    x, y = tiny_batch

    def grad_fn(model, inputs, classes):
        inputs = inputs.clone().requires_grad_(True)
        return torch.autograd.grad(model(inputs).gather(1, classes[:, None]).sum(), inputs)[0]

    explainer = get_explainer(grad_fn)
    assert isinstance(explainer, FunctionExplainer) and explainer.name == "grad_fn"
    with torch.no_grad():  # the wrapper enables gradients
        maps = explainer(tiny_cnn, x, y)
    torch.testing.assert_close(maps, Gradient()(tiny_cnn, x, y))


def test_file_path(tmp_path, tiny_cnn, tiny_batch):
    x, y = tiny_batch
    file = tmp_path / "my_explainer.py"
    file.write_text("import torch\n\n"
                    "def edge_free(model, x, target):\n"
                    "    return x.abs().sum(1) + 0 * model(x).sum()\n")
    explainer = get_explainer(f"{file}:edge_free")
    assert explainer.name == "edge_free"
    torch.testing.assert_close(explainer(tiny_cnn, x, y), x[:, 0])


@pytest.mark.parametrize("bad,match", [
    (lambda model, x, t: torch.zeros(x.shape[0], 5, 5), "shape"),
    (lambda model, x, t: torch.zeros(x.shape[0] - 1, *x.shape[2:]), "shape"),
    (lambda model, x, t: torch.full((x.shape[0], *x.shape[2:]), float("nan")), "NaN"),
    (lambda model, x, t: torch.zeros(x.shape[0], *x.shape[2:]).index_fill(0, torch.tensor([1]), float("inf")), "NaN"),
])
def test_bad_callable_raises_attribution_error(bad, match, tiny_cnn, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(AttributionError, match=match):
        get_explainer(bad)(tiny_cnn, x, y)
