import time

import pytest
import torch
import torch.nn.functional as F

from sanitycheck.checks.randomization import CascadingRandomization
from sanitycheck.data.scenes import class_prompts
from sanitycheck.models.clip import (TINY_MODEL_NAME, VOCAB, ClipSimilarity, WordTokenizer, load_image,
                                    load_open_clip)
from sanitycheck.errors import DataError, UnknownNameError, WeightsUnavailableError


def test_vocabulary_and_tokenizer():
    assert len(VOCAB) == 24 and VOCAB[0] == "<pad>" and VOCAB[-1] == "<eot>"
    tok = WordTokenizer(context_length=16)
    ids = tok(["a photo of an ankle boot at the top left"])
    assert ids.shape == (1, 16)
    assert int(ids[0].argmax()) == 11  # <eot> has the largest id: open_clip pools there
    with pytest.raises(DataError, match="vocabulary"):
        tok("a photo of a cat")
    with pytest.raises(DataError, match="16"):
        tok(" ".join(["a"] * 15))
    with pytest.raises(DataError, match="empty"):
        tok("  ")


def test_tiny_model_is_registered_with_open_clip(tiny_clip):
    from sanitycheck.models.clip import import_open_clip

    oc = import_open_clip()
    assert TINY_MODEL_NAME in oc.list_models()
    assert tiny_clip.visual.grid_size == (8, 8)
    assert len(tiny_clip.visual.transformer.resblocks) == 4
    again = load_open_clip(TINY_MODEL_NAME, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), tiny_clip.state_dict().values()))


@pytest.mark.parametrize("scale", [False, True])
def test_similarity_equals_open_clip_cosine(tiny_clip, batch, scale):
    x, _ = batch
    prompts = class_prompts()
    sim = ClipSimilarity(tiny_clip, prompts, scale=scale)
    with torch.no_grad():
        img = F.normalize(tiny_clip.encode_image((x - 0.5) / 0.5), dim=-1)
        txt = F.normalize(tiny_clip.encode_text(tiny_clip.sanitycheck_tokenizer(prompts)), dim=-1)
        expected = img @ txt.t()
        if scale:
            expected = expected * tiny_clip.logit_scale.exp()
        got = sim(x)
    assert got.shape == (4, len(prompts))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert sim.scaled == scale and sim.config()["score"] == "cosine"
    soft = ClipSimilarity(tiny_clip, prompts, score="softmax")
    with torch.no_grad():
        p = soft(x)
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    torch.testing.assert_close(p, (expected if scale else expected * tiny_clip.logit_scale.exp()).softmax(1),
                               atol=1e-5, rtol=1e-5)
    # one channel is expanded to three
    with torch.no_grad():
        torch.testing.assert_close(sim(x[:, :1]), got)


def test_query_errors(tiny_clip):
    with pytest.raises(DataError, match="empty"):
        ClipSimilarity(tiny_clip, "")
    with pytest.raises(DataError, match="no query"):
        ClipSimilarity(tiny_clip, [])
    with pytest.raises(DataError, match="context length is 16"):
        ClipSimilarity(tiny_clip, "a photo of a shirt at the top left " * 2)


def test_open_clip_tokenizer_too_long_is_an_error():
    from sanitycheck.models.clip import import_open_clip, tokenize

    tok = import_open_clip().get_tokenizer("ViT-B-32")  # BPE vocabulary ships with open_clip
    assert tokenize(tok, ["a photo of a dog"], 77).shape == (1, 77)
    with pytest.raises(DataError, match="context length is 77"):
        tokenize(tok, ["dog " * 80], 77)


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(UnknownNameError, match="ViT-B-32"):
        load_open_clip("ViT-B-32x")
    with pytest.raises(UnknownNameError, match="laion2b"):
        load_open_clip("ViT-B-32", pretrained="laion2b_s34b_b79kk")


@pytest.mark.parametrize("tag", ["laion2b_s34b_b79k", "openai"])
def test_offline_pretrained_weights_fail_fast(tmp_path, monkeypatch, tag):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        load_open_clip("ViT-B-32", pretrained=tag, cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 15
    msg = str(info.value)
    assert "ViT-B-32" in msg and tag in msg and "pretrained=<path" in msg


def test_offline_with_downloads_allowed_but_no_network(tmp_path, monkeypatch):
    import sanitycheck.data._net as net

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(net, "reachable", lambda url, timeout=3.0: False)
    with pytest.raises(WeightsUnavailableError, match="cannot be reached"):
        load_open_clip("ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path))


def test_load_image(tmp_path):
    from PIL import Image

    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (40, 20), (255, 0, 0)).save(rgb)
    x = load_image(rgb, 16)
    assert x.shape == (3, 16, 16) and float(x[0].min()) > 0.99 and float(x[1].max()) < 0.01
    gray = tmp_path / "gray.png"
    Image.new("L", (20, 20), 128).save(gray)
    with pytest.raises(DataError, match="grayscale"):
        load_image(gray, 16)
    with pytest.warns(UserWarning, match="grayscale"):
        g = load_image(gray, 16, grayscale="convert")
    assert g.shape == (3, 16, 16) and torch.allclose(g[0], g[2])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        load_image(bad, 16)
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "missing.png", 16)


def test_cascading_randomization_of_the_visual_tower(sim, batch):
    x, _ = batch
    before = {k: v.clone() for k, v in sim.state_dict().items()}
    check = CascadingRandomization()
    steps = check.steps(sim, x)
    assert steps[-1] == "visual.conv1" and "normalize" not in steps
    assert not any(s.startswith("text") for s in steps)
    last = None
    for state in check.states(sim, seed=0, example_input=x):
        last = state.model
    assert last is not sim
    changed = {n: not torch.equal(p, before[n]) for n, p in last.named_parameters()}
    assert changed and all(changed.values()), [n for n, c in changed.items() if not c]
    for name in ("visual.positional_embedding", "visual.class_embedding", "projection.weight",
                 "visual.transformer.resblocks.0.attn.in_proj_weight"):
        assert changed[name]
    assert torch.equal(last.text_features, before["text_features"])  # the text side is fixed
    assert torch.equal(last.logit_scale, before["logit_scale"])
    after = sim.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # the original is untouched
    with torch.no_grad():
        assert not torch.allclose(last(x), sim(x))


def test_train_tiny_clip_is_deterministic_and_cached(tmp_path):
    from sanitycheck.models.clip import TinyClipSpec, checkpoint_path, train_tiny_clip

    try:
        from sanitycheck.data.fashion_mnist import load_fashion_mnist

        load_fashion_mnist("train")
    except DataError as err:
        pytest.skip(f"Fashion-MNIST unavailable: {err}")
    spec = TinyClipSpec(layers=1, text_layers=1, n_train=48, n_test=16, steps=3, batch_size=16, warmup=1)
    a = train_tiny_clip(spec, cache_dir=tmp_path / "a", progress=False)
    assert a.sanitycheck_info["from_cache"] is False and not a.training
    for key in ("zero_shot_present", "zero_shot_chance", "image_to_text", "text_to_image", "train_seconds"):
        assert key in a.sanitycheck_info
    assert checkpoint_path(spec, tmp_path / "a").is_file()
    assert checkpoint_path(spec, tmp_path / "a").with_suffix(".json").is_file()
    cached = train_tiny_clip(spec, cache_dir=tmp_path / "a", progress=False)
    assert cached.sanitycheck_info["from_cache"] is True
    again = train_tiny_clip(spec, cache_dir=tmp_path / "b", progress=False)
    for (name, p), q, r in zip(a.state_dict().items(), cached.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q) and torch.equal(p, r), name
    assert spec.key() != TinyClipSpec(layers=1, text_layers=1, n_train=48, n_test=16, steps=4, batch_size=16,
                                      warmup=1).key()


def test_factories(tiny_clip):
    from clip_fixtures import CLIP_REGISTRY_ENTRIES as REGISTRY_ENTRIES
    from sanitycheck.models.clip import clip_similarity
    from sanitycheck.registry import load_object

    for group in REGISTRY_ENTRIES.values():
        for path in group.values():
            assert callable(load_object(path))
    sim = clip_similarity(pretrained=None, seed=0)
    assert sim.n_prompts == 10
    theirs = tiny_clip.visual.state_dict()
    ours = {**sim.visual.state_dict(), "proj": sim.projection.weight}
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
