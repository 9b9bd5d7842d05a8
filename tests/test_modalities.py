"""One explainer registry and one metric registry: every part declares the modalities (input kinds) it supports.

A name has one implementation per modality (``gradient``: the image gradient and the token gradient of text
models); lookups by modality, the "did you mean" errors that say which modalities a name supports, the mask of
the one metric contract (token metrics read the real tokens; bit-identical to the lengths they took before)."""

from importlib.metadata import EntryPoint

import pytest
import torch
import yaml

from sanitycheck import registry as registry_module
from sanitycheck.errors import AttributionError, ConfigError, DataError, UnknownNameError
from sanitycheck.explainers import Explainer, get_explainer
from sanitycheck.explainers.attention import EmbeddingGradient, TokenExplainer
from sanitycheck.explainers.gradients import Gradient
from sanitycheck.metrics.base import Metric, MetricInfo, TokenMetric, metric, token_mask
from sanitycheck.metrics.rank import kendall_tau, topk_overlap
from sanitycheck.registry import (EXPLAINERS, METRICS, MODALITIES, TOKEN_EXPLAINERS, Registry, modalities_of)
from sanitycheck.suites import DEFAULT_SUITE, available_suites, load_suite


def _implementations(registry):
    for name in registry.names():
        for modality in registry.modalities(name):
            yield name, modality


@pytest.mark.parametrize("name, modality", list(_implementations(EXPLAINERS)))
def test_every_registered_explainer_declares_its_modalities(name, modality):
    obj = EXPLAINERS.get(name, modality=modality)
    declared = modalities_of(obj)
    assert declared and set(declared) <= set(MODALITIES), (name, declared)
    assert modality in declared
    # what the registry line says is what the class says (listing and suite validation import nothing)
    for key in EXPLAINERS._keys(name):
        if key in EXPLAINERS._declared and modality in EXPLAINERS._declared[key]:
            assert EXPLAINERS._declared[key] == declared, (name, EXPLAINERS._declared[key], declared)


@pytest.mark.parametrize("name", METRICS.names())
def test_every_registered_metric_declares_its_modalities(name):
    obj = METRICS.get(name)
    declared = modalities_of(obj)
    assert declared and set(declared) <= set(MODALITIES)
    assert METRICS.modalities(name) == declared
    assert isinstance(obj, Metric) and obj.modalities == declared


def test_one_name_one_implementation_per_modality():
    assert EXPLAINERS.get("gradient") is Gradient  # without a modality: the image one, as before
    assert EXPLAINERS.get("gradient", modality="image") is Gradient
    assert EXPLAINERS.get("gradient", modality="image_text") is Gradient  # CLIP suites run the image explainers
    assert EXPLAINERS.get("gradient", modality="text") is EmbeddingGradient
    assert EXPLAINERS.modalities("gradient") == ("image", "text", "image_text")
    assert EXPLAINERS.modalities("attention") == ("text",)
    assert EXPLAINERS.modalities("vit_gradcam") == ("image_text",)  # declares input_kind image_text only
    assert "attention" in EXPLAINERS.names("text") and "attention" not in EXPLAINERS.names("image")
    assert "gradcam" in EXPLAINERS.names("image") and "gradcam" not in EXPLAINERS.names("text")
    # the text view is what the token registry was: names, membership, lookups
    assert TOKEN_EXPLAINERS.names() == EXPLAINERS.names("text")
    assert "leave_one_out" in TOKEN_EXPLAINERS and "gradcam" not in TOKEN_EXPLAINERS
    assert TOKEN_EXPLAINERS.get("gradient") is EmbeddingGradient
    assert EXPLAINERS.import_path("gradient", "text") == "sanitycheck.explainers.attention:EmbeddingGradient"
    assert EXPLAINERS.import_path("gradient") == "sanitycheck.explainers.gradients:Gradient"
    assert issubclass(EXPLAINERS.get("attention", modality="text"), TokenExplainer)


def test_get_explainer_builds_the_implementation_of_the_modality():
    image = get_explainer("gradient")
    text = get_explainer("gradient", modality="text")
    assert isinstance(image, Explainer) and isinstance(image, Gradient)
    assert isinstance(text, EmbeddingGradient) and not isinstance(text, Explainer)
    with pytest.raises(ConfigError, match="bad parameters .* for token explainer 'attention'"):
        get_explainer("attention", modality="text", nope=1)


def test_a_name_without_the_modality_says_which_modalities_it_supports():
    with pytest.raises(UnknownNameError) as err:
        EXPLAINERS.get("attention", modality="image")
    message = str(err.value)
    assert "'attention' has no implementation for image inputs: it supports text" in message
    assert "Known image explainers:" in message and "gradcam (image, image_text)" in message
    assert "leave_one_out" not in message  # a text explainer is not offered for images


def test_unknown_names_get_did_you_mean_among_the_modality_with_modalities_listed():
    with pytest.raises(UnknownNameError) as err:
        EXPLAINERS.get("leave_one_ot", modality="text")
    message = str(err.value)
    assert "unknown explainer 'leave_one_ot' for text inputs. Did you mean 'leave_one_out'" in message
    assert "gradient (image, text, image_text)" in message and "attention (text)" in message
    with pytest.raises(UnknownNameError, match=r"Did you mean 'smoothgrad'.*smoothgrad \(image, image_text\)"):
        EXPLAINERS.get("smoothgard")


def test_registering_a_second_implementation_needs_other_modalities_or_overwrite():
    reg = Registry("thing", "sanitycheck.test_things", default_modality="image")
    reg.register("a", "json:dumps", modalities=("image",))
    reg.register("a", "json:loads", modalities=("text",))
    import json

    assert reg.get("a") is json.dumps and reg.get("a", modality="text") is json.loads
    assert reg.names() == ["a"] and reg.modalities("a") == ("image", "text")
    with pytest.raises(ValueError, match="already registered for text"):
        reg.register("a", "json:load", modalities=("text", "image_text"))
    reg.register("a", "json:load", modalities=("text", "image_text"), overwrite=True)
    assert reg.get("a", modality="image_text") is json.load and reg.get("a", modality="text") is json.load
    assert reg.get("a", modality="image") is json.dumps  # the other implementation is untouched
    with pytest.raises(ConfigError, match="modalities must be a non-empty tuple of image, text, image_text"):
        reg.register("b", "json:dumps", modalities=("audio",))


def test_token_explainer_entry_points_join_the_one_registry_as_text(monkeypatch):
    reg = Registry("explainer", "sanitycheck.explainers", default_modality="image",
                   modal_groups={"sanitycheck.token_explainers": ("text",)})
    fake = [EntryPoint(name="my_tokens", value="json:loads", group="sanitycheck.token_explainers"),
            EntryPoint(name="my_maps", value="json:dumps", group="sanitycheck.explainers")]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [e for e in fake if e.group == group])
    import json

    assert reg.names("text") == ["my_tokens"] and reg.get("my_tokens", modality="text") is json.loads
    assert reg.modalities("my_maps") == ("image", "image_text")  # declares nothing: an image part, as before
    with pytest.raises(UnknownNameError, match="it supports text"):
        reg.get("my_tokens", modality="image")


# ----------------------------------------------------------------------------- suites
def _suite(tmp_path, **changes):
    data = yaml.safe_load(open(available_suites()[DEFAULT_SUITE]))
    data.update(changes)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_suite_names_explainers_of_its_input_kind(tmp_path):
    with pytest.raises(ConfigError, match="'attention' has no implementation for image inputs: it supports text"):
        load_suite(_suite(tmp_path, explainers=["gradient", "attention"]))
    with pytest.raises(ConfigError, match="metric 'token_kendall_abs' compares text maps, but the suite's "
                                          "input_kind is 'image'"):
        load_suite(_suite(tmp_path, metrics=["spearman_abs", "token_kendall_abs"]))
    clip = load_suite("clip_text2img")  # image explainers and metrics serve image-text suites too
    assert "gradient" in clip.explainer_names and "vit_gradcam" in clip.explainer_names


# ----------------------------------------------------------------------------- metrics and masks
def _token_maps(seed=0, B=32, L=24):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    lengths[:3] = torch.tensor([0, 1, L])
    a = torch.randn(B, L, generator=g, dtype=torch.float64)
    b = a + 0.7 * torch.randn(B, L, generator=g, dtype=torch.float64)
    a[4] = 2.0  # a constant row: undefined
    pad = torch.arange(L)[None] >= lengths[:, None]
    return a.masked_fill(pad, 0.0), b.masked_fill(pad, 0.0), lengths


def test_token_mask_marks_the_real_tokens():
    assert token_mask(torch.tensor([0, 2, 3]), 3).tolist() == [[False, False, False], [True, True, False],
                                                               [True, True, True]]


@pytest.mark.parametrize("name", ["token_kendall_abs", "token_kendall", "token_topk_overlap"])
def test_token_metrics_read_the_mask_and_match_the_lengths_bit_for_bit(name):
    a, b, lengths = _token_maps()
    m = METRICS.get(name)
    with_mask = m(a, b, mask=token_mask(lengths, a.shape[1]))
    legacy = m(a, b, lengths)  # the call of code written before the mask
    assert torch.equal(with_mask.isnan(), legacy.isnan()) and bool(with_mask.isnan().any())
    assert torch.equal(with_mask.nan_to_num(-7.0), legacy.nan_to_num(-7.0))
    # what the functions computed from lengths before the mask existed
    ref = {"token_kendall_abs": lambda: kendall_tau(a.abs(), b.abs(), lengths)[0],
           "token_kendall": lambda: kendall_tau(a, b, lengths)[0],
           "token_topk_overlap": lambda: topk_overlap(a.abs(), b.abs(), lengths, k=0.2)}[name]()
    assert torch.equal(with_mask.nan_to_num(-7.0), ref.nan_to_num(-7.0))
    with pytest.raises(DataError, match="pass mask="):
        m(a, b)
    with pytest.raises(DataError, match="mask must be a bool tensor"):
        m(a, b, mask=token_mask(lengths, a.shape[1]).long())


def test_a_mask_need_not_be_a_prefix():
    # padding on the left: the same real tokens at the end of each row give the same scores
    a, b, lengths = _token_maps(seed=1)
    L = a.shape[1]
    shift = lambda x: torch.stack([torch.roll(row, L - int(n)) for row, n in zip(x, lengths)])  # noqa: E731
    left = torch.arange(L)[None] >= (L - lengths)[:, None]
    m = METRICS.get("token_kendall_abs")
    right = m(a, b, mask=token_mask(lengths, L))
    assert torch.equal(m(shift(a), shift(b), mask=left).nan_to_num(-7.0), right.nan_to_num(-7.0))


def test_image_metrics_compare_whole_maps():
    ssim, spearman = METRICS.get("ssim"), METRICS.get("spearman_abs")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 8, 8, generator=g), torch.rand(4, 8, 8, generator=g)
    full = torch.ones(4, 8, 8, dtype=torch.bool)
    assert torch.equal(spearman(x, y, mask=full), spearman(x, y)) and torch.equal(ssim(x, y, mask=None), ssim(x, y))
    partial = full.clone()
    partial[0, 0, 0] = False
    with pytest.raises(AttributionError, match="compares whole maps and cannot leave out masked entries"):
        spearman(x, y, mask=partial)


def test_a_metric_declares_its_modalities_and_whether_it_reads_the_mask():
    @metric("toy_masked_mean_gap", higher_is_better=False, category="similarity", description="test",
            modalities=("text",), uses_mask=True)
    def gap(a, b, mask):
        return ((a - b).abs() * mask).sum(1) / mask.sum(1).clamp_min(1)

    assert gap.modalities == ("text",) and modalities_of(gap) == ("text",) and gap.input_kind == "text"
    a = torch.tensor([[1.0, 2.0, 100.0]])
    b = torch.tensor([[1.0, 4.0, -100.0]])
    assert gap(a, b, mask=torch.tensor([[True, True, False]])).tolist() == [1.0]
    plain = Metric(lambda a, b: a.sum(1), MetricInfo("toy_sum", True, "similarity", "test"))
    assert plain.modalities == ("image", "image_text")
    assert TokenMetric(lambda a, b, mask: mask.sum(1), MetricInfo("t", True, "s", "d")).modalities == ("text",)


def test_ls_shows_each_explainers_and_metrics_modalities(capsys):
    from sanitycheck.cli import main

    assert main(["ls", "explainers"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["gradient"].split(None, 1)[1] == "image, text, image_text"
    assert lines["attention"].split(None, 1)[1] == "text"
    assert lines["vit_chefer"].split(None, 1)[1] == "image_text"
    assert main(["ls", "metrics"]) == 0
    out = capsys.readouterr().out
    assert "modalities" in out.splitlines()[0]
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["token_kendall_abs"].split(None, 1)[1] == "text"
    assert lines["ssim"].split(None, 1)[1] == "image, image_text"


def test_result_thumbnails_are_at_most_64_pixels_a_side_and_small_inputs_are_kept_exactly():
    """A 224x224 ImageNet map of every model state inside results.json made one board file 5.7 MB; thumbnails
    are area averages (a constant map stays constant), and Fashion-MNIST's 28x28 maps are stored as they are."""
    import torch

    from sanitycheck.modalities.base import THUMBNAIL_SIDE, thumbnail

    big = torch.rand(3, 224, 224)
    small = thumbnail(big)
    assert small.shape == (3, 64, 64) and max(small.shape[-2:]) == THUMBNAIL_SIDE
    assert abs(float(small.mean() - big.mean())) < 2e-3  # overlapping windows at 224 -> 64
    assert torch.equal(thumbnail(torch.full((224, 160), 2.5)), torch.full((64, 46), 2.5))
    fmnist = torch.rand(28, 28)
    assert thumbnail(fmnist) is fmnist
