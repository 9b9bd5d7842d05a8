"""Batch sizes chosen from the model and the free memory (``--batch-size auto``, issue 12 deliverable 5)."""

import argparse

import pytest
import torch

from helpers import digits_batch, make_tiny_cnn
from sanitycheck.data import ImageDataset
from sanitycheck.engine import batching
from sanitycheck.errors import ConfigError
from sanitycheck.explainers import get_explainer
from sanitycheck.options import add_run_options
from sanitycheck.runner import AuditRun
from sanitycheck.suites import parse_suite
from sanitycheck.validation import schema_problems


def test_the_probe_sums_the_activations_of_one_input():
    model = make_tiny_cnn(0)
    x = torch.zeros(5, 1, 16, 16)
    # input 256; conv1/relu1 8x16x16 each; pool1 8x8x8; conv2/relu2 16x8x8 each; pool2 16x4x4; flatten 256;
    # fc1/relu3 32 each; fc2 10 -- float32, one input whatever the batch given
    floats = 256 + 2 * 2048 + 512 + 2 * 1024 + 256 + 256 + 2 * 32 + 10
    assert batching.activation_bytes_per_input(model, x) == 4 * floats


def test_expanding_explainers_put_more_rows_through_the_model_up_to_their_own_chunk():
    assert batching.expansion(get_explainer("gradient")) == 1
    ig = get_explainer("integrated_gradients", n_steps=50, internal_batch_size=None)
    assert batching.expansion(ig) == 50
    assert batching.peak_rows(ig, 8) == 400
    chunked = get_explainer("integrated_gradients", n_steps=50, internal_batch_size=100)
    assert batching.peak_rows(chunked, 8) == 100  # captum runs 100 scaled inputs at a time
    assert batching.peak_rows(chunked, 300) == 300  # never less than one step of the whole batch
    assert batching.peak_rows(get_explainer("smoothgrad", n_samples=20), 4) == 80


def test_the_batch_grows_with_free_memory_and_shrinks_with_expansion():
    model, x = make_tiny_cnn(0), torch.zeros(2, 1, 16, 16)
    per_row = batching.activation_bytes_per_input(model, x) * 3
    grad = [get_explainer("gradient")]
    small = batching.choose_batch_size(model, x, grad, free_bytes=per_row * 40, fraction=0.5)
    assert small.value == 20 and small.source == "auto" and small.bytes_per_input == per_row
    big = batching.choose_batch_size(model, x, grad, free_bytes=per_row * 400, fraction=0.5)
    assert big.value == 200
    ig = [get_explainer("integrated_gradients", n_steps=10, internal_batch_size=None)]
    assert batching.choose_batch_size(model, x, ig, free_bytes=per_row * 400, fraction=0.5).value == 20
    capped = batching.choose_batch_size(model, x, grad, free_bytes=per_row * 10 ** 6, cap=256)
    assert capped.value == 256 and "capped at 256" in capped.why


def test_too_little_memory_for_one_input_is_a_config_error_that_says_what_to_do():
    with pytest.raises(ConfigError, match="--batch-size 1"):
        batching.choose_batch_size(make_tiny_cnn(0), torch.zeros(1, 1, 16, 16), [], free_bytes=1000)
    with pytest.raises(ConfigError, match="fraction"):
        batching.choose_batch_size(make_tiny_cnn(0), torch.zeros(1, 1, 16, 16), [], free_bytes=10 ** 9,
                                   fraction=0)


def test_free_memory_is_read_on_the_cpu():
    assert batching.free_memory_bytes("cpu") > 0


def test_the_option_accepts_auto_and_positive_numbers_only():
    parser = argparse.ArgumentParser()
    add_run_options(parser)
    assert parser.parse_args(["--batch-size", "auto"]).batch_size == "auto"
    assert parser.parse_args(["--batch-size", "AUTO"]).batch_size == "auto"
    assert parser.parse_args(["--batch-size", "16"]).batch_size == 16
    assert parser.parse_args([]).batch_size is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch-size", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch-size", "big"])


@pytest.mark.parametrize("bad", [0, -3, "x", 2.5, True])
def test_audit_run_refuses_a_batch_size_that_is_neither_a_count_nor_auto(bad, tmp_path):
    with pytest.raises(ConfigError, match="positive integer or 'auto'"):
        AuditRun(tiny_suite(), out_dir=tmp_path, batch_size=bad, model=make_tiny_cnn(0),
                 explainer_objects={"gradient": get_explainer("gradient")}, progress=False, figures=False)


def tiny_suite():
    return parse_suite({
        "name": "unit", "version": "0.0.1", "description": "batching unit tests",
        "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 2,
        "explainers": ["gradient", "sobel"], "metrics": ["spearman_abs"],
        "checks": [{"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}}],
    })


def run(tmp_path, **kw):
    x, y = digits_batch(8)
    dataset = ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")
    objects = {"gradient": get_explainer("gradient"), "sobel": get_explainer("sobel")}
    return AuditRun(tiny_suite(), out_dir=tmp_path, model=make_tiny_cnn(0), dataset=dataset,
                    explainer_objects=objects, progress=False, figures=False, **kw).execute()


def test_results_record_the_batch_size_and_where_it_came_from(tmp_path):
    suite = run(tmp_path / "suite")
    assert suite["resources"]["batch_size"]["value"] == 4
    assert suite["resources"]["batch_size"]["source"] == "suite"
    given = run(tmp_path / "given", batch_size=3)
    assert given["resources"]["batch_size"] == {"value": 3, "source": "option",
                                                "why": "given by --batch-size / batch_size="}
    auto = run(tmp_path / "auto", batch_size="auto")
    choice = auto["resources"]["batch_size"]
    assert choice["source"] == "auto" and choice["value"] >= 1 and choice["bytes_per_input"] > 0
    assert "free" in choice["why"]
    for doc in (suite, given, auto):
        assert schema_problems(doc) == []
    # gradient and sobel maps do not depend on the batch size here: the same numbers at every batch size
    assert suite["records"] == given["records"] == auto["records"]
    assert suite["per_sample"] == given["per_sample"] == auto["per_sample"]


def _fmnist_cnn_or_skip():
    from sanitycheck.models import load_model

    try:  # the shipped reference weights (sanitycheck/weights/), never retrained
        return load_model("fmnist_cnn", progress=False)
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"fmnist_cnn cannot be loaded here ({type(err).__name__}: {err})")


@pytest.mark.parametrize("name,params", [("gradient", {}), ("gradient_x_input", {}), ("guided_backprop", {}),
                                         ("gradcam", {}), ("guided_gradcam", {}),
                                         ("smoothgrad", {"n_samples": 10, "noise_level": 0.15})])
def test_fmnist_cnn_maps_do_not_depend_on_the_batch_size(name, params):
    """The evidence for keeping the suite's batch size as the default: these explainers give bit-identical maps
    at any batch size on fmnist_cnn, but integrated gradients differs in the last float32 bit (measured: 1.2e-7
    between batches of 64 and 16, since captum's scaled-input passes change shape), so ``auto`` would move
    published numbers and stays opt-in."""
    from sanitycheck.data import load_dataset
    from sanitycheck.targets import ClassTarget

    model = _fmnist_cnn_or_skip()
    x = load_dataset("fashion_mnist", split="test").head(24).images.float()
    with torch.no_grad():
        target = model(x).argmax(1)
    explainer = get_explainer(name, **params)

    def maps(b):
        return torch.cat([explainer(model, x[s:s + b], ClassTarget(target[s:s + b])).detach()
                          for s in range(0, len(x), b)])

    whole = maps(24)
    assert torch.equal(whole, maps(5))
    assert torch.equal(whole, maps(8))
