"""Explainers that share a factor (input gradient; upsampled Grad-CAM) compute it once per model state, rows and
target, and their maps are bit-identical (torch.equal) to the unshared ones."""

from __future__ import annotations

import copy

import pytest
import torch

from sanitycheck.data import load_dataset
from sanitycheck.engine import sharing
from sanitycheck.engine.run import explain_maps
from sanitycheck.explainers.cam import GradCAM, GuidedGradCAM
from sanitycheck.explainers.gradients import Gradient, GradientXInput, GuidedBackprop
from sanitycheck.modalities.base import AuditInputs
from sanitycheck.modalities.image import ImageModality
from sanitycheck.models import load_model
from sanitycheck.targets import ClassTarget

BATCH = 5  # 12 images: batches of 5, 5, 2


@pytest.fixture(scope="module")
def fmnist():
    model = load_model("fmnist_cnn", progress=False).eval()
    x = load_dataset("fashion_mnist", split="test").head(12).images.float()
    with torch.no_grad():
        logits = model(x)
    inputs = AuditInputs(dataset=None, model=model, model_name="fmnist_cnn", x=x, logits=logits,
                         labels=logits.argmax(1), target=ClassTarget(logits.argmax(1)))
    return model, inputs


def randomized(model, seed=3):
    """A copy with every parameter redrawn (a fully randomized cascade state)."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return out.eval()


def explainers():
    return {"gradient": Gradient(), "gradient_x_input": GradientXInput(), "gradcam": GradCAM(),
            "guided_gradcam": GuidedGradCAM()}


def maps_of(model, inputs, names, target=None):
    exps = explainers()
    return {n: explain_maps(ImageModality(), exps[n], model, inputs, target or inputs.target, batch_size=BATCH,
                            name=n) for n in names}


@pytest.mark.parametrize("state", ["trained", "randomized"])
@pytest.mark.parametrize("order", [("gradient", "gradient_x_input", "gradcam", "guided_gradcam"),
                                   ("guided_gradcam", "gradient_x_input", "gradcam", "gradient")])
def test_shared_maps_equal_unshared(fmnist, state, order):
    model, inputs = fmnist
    model = model if state == "trained" else randomized(model)
    unshared = maps_of(model, inputs, order)
    # the unshared maps are the explainers' own direct calls, batch by batch
    direct = torch.cat([GradientXInput()(model, inputs.x[s:s + BATCH], inputs.target.select(slice(s, s + BATCH)))
                        for s in range(0, 12, BATCH)])
    assert torch.equal(unshared["gradient_x_input"], direct)
    with sharing.scope(explainers().values()) as memo:
        assert memo is not None and sharing.current_memo() is memo
        shared = maps_of(model, inputs, order)
        # 3 batches x 2 factors computed once each, and taken once more by the second consumer
        assert (memo.computed, memo.reused) == (6, 6)
        assert memo.entries == {}  # every factor freed once its last consumer took it
    assert sharing.current_memo() is None
    for name in order:
        assert torch.equal(shared[name], unshared[name]), name
    assert unshared["gradcam"].abs().sum() > 0 and unshared["gradient"].abs().sum() > 0


def test_no_sharing_with_one_consumer_or_when_off(fmnist, monkeypatch):
    model, inputs = fmnist
    with sharing.scope([Gradient(), GradCAM(), GuidedBackprop()]) as memo:
        assert memo is None  # no factor with two consumers: nothing to keep
    # Grad-CAM upsampled another way is another factor: nothing shared between them
    with sharing.scope([Gradient(), GradCAM(upsample="nearest"), GuidedGradCAM()]) as memo:
        assert memo is None
    memo = sharing.FactorMemo([Gradient(), GradCAM(upsample="nearest"), GuidedGradCAM(), GradCAM()])
    assert memo.consumers == {("input_gradient",): 1, ("gradcam_upsampled", None, "nearest"): 1,
                              ("gradcam_upsampled", None, "bilinear"): 2}
    assert memo.shares(("gradcam_upsampled", None, "bilinear")) and not memo.shares(("input_gradient",))
    monkeypatch.setenv("SANITYCHECK_SHARE_FACTORS", "0")
    with sharing.scope(explainers().values()) as memo:
        assert memo is None
        maps_of(model, inputs, ["gradient", "gradient_x_input"])


def test_memo_never_crosses_states_or_targets(fmnist):
    model, inputs = fmnist
    other = randomized(model, seed=5)
    flipped = ClassTarget((inputs.target.class_indices() + 1) % 10)
    want_other = maps_of(other, inputs, ["gradient_x_input"])["gradient_x_input"]
    want_flipped = maps_of(model, inputs, ["gradient_x_input"], target=flipped)["gradient_x_input"]
    pair = [Gradient(), GradientXInput()]
    with sharing.scope(pair) as memo:
        maps_of(model, inputs, ["gradient"])
        assert memo.computed == 3 and len(memo.entries) == 3
        # another model object, then another target: the trained model's gradients are never handed out
        assert torch.equal(maps_of(other, inputs, ["gradient_x_input"])["gradient_x_input"], want_other)
        assert torch.equal(maps_of(model, inputs, ["gradient_x_input"], target=flipped)["gradient_x_input"],
                           want_flipped)
        assert memo.reused == 0
    assert memo.entries == {}
    # the same model object changed in place (a cascade that randomizes in place): its weights' checksum differs
    work = copy.deepcopy(model)
    want = maps_of(randomized(work, seed=7), inputs, ["gradient_x_input"])["gradient_x_input"]
    with sharing.scope(pair) as memo:
        maps_of(work, inputs, ["gradient"])
        with torch.no_grad():
            for p, q in zip(work.parameters(), randomized(work, seed=7).parameters()):
                p.copy_(q)
        assert torch.equal(maps_of(work, inputs, ["gradient_x_input"])["gradient_x_input"], want)
        assert memo.reused == 0


def test_per_state_scopes_free_factors_between_states(fmnist):
    model, inputs = fmnist
    seen = []
    states = sharing.per_state(iter([model, randomized(model)]), [Gradient(), GradientXInput()])
    for m in states:
        memo = sharing.current_memo()
        assert memo is not None and memo not in seen
        seen.append(memo)
        maps_of(m, inputs, ["gradient"])
        assert len(memo.entries) == 3
    assert sharing.current_memo() is None
    assert all(memo.entries == {} for memo in seen)
    # a state loop that stops early (a unit raised) closes its scope too
    states = sharing.per_state(iter([model, model]), [Gradient(), GradientXInput()])
    next(states)
    assert sharing.current_memo() is not None
    states.close()
    assert sharing.current_memo() is None


def test_subclasses_and_non_default_explainers_do_not_share():
    class MyGradient(Gradient):
        pass

    assert sharing.factor_of(MyGradient()) is None
    assert sharing.factor_of(Gradient()) is not None
    odd = Gradient()
    odd.attribute_kwargs = {"abs": True}
    assert sharing.factor_of(odd) is None
    assert sharing.factor_of(GradCAM(relu=False)) is None


def test_engine_run_identical_with_sharing_on_and_off(tmp_path, monkeypatch):
    """A cascade over a tiny CNN with the four sharing explainers (two shards): per-sample scores, records and
    verdicts equal with sharing on and off, and with it on the factors were taken from the memo."""
    from helpers import digits_batch, make_tiny_cnn

    from sanitycheck.data import ImageDataset
    from sanitycheck.runner import AuditRun
    from sanitycheck.suites import parse_suite

    suite = parse_suite({
        "name": "unit", "version": "0.0.1", "description": "sharing", "dataset": {"name": "digits"},
        "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 2,
        "explainers": ["gradient", "gradient_x_input", "gradcam", "guided_gradcam", "sobel"],
        "metrics": ["spearman_abs", "ssim"],
        "checks": [{"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}}]})
    x, y = digits_batch(8)
    dataset = ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")
    taken = []
    real_take = sharing.FactorMemo.take

    def take(memo, *args, **kwargs):
        before = memo.reused
        out = real_take(memo, *args, **kwargs)
        taken.append(memo.reused - before)
        return out

    monkeypatch.setattr(sharing.FactorMemo, "take", take)
    docs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("SANITYCHECK_SHARE_FACTORS", mode)
        docs[mode] = AuditRun(suite, out_dir=tmp_path / mode, model=make_tiny_cnn(0), dataset=dataset,
                              progress=False, figures=False, shard_size=4).execute()
        if mode == "1":
            # trained model + 4 cascade states (tiny CNN: fc2, fc1, conv2, conv1), 2 shards of one batch, 2 factors
            assert sum(taken) == 5 * 2 * 2 and len(taken) == 2 * sum(taken)
    assert len(taken) == 40  # sharing off: the memo is never consulted
    for key in ("per_sample", "records", "verdicts", "examples"):
        assert docs["1"][key] == docs["0"][key], key
