"""Wall time of each CLIP saliency method, CPU: the tiny CLIP of this project on a batch of 16 scenes
(64x64, patch 8, 4 blocks), and open_clip ViT-B-32 with random weights on 2 images at 224x224.

Run: ``python -m pytest benchmarks/bench_clip.py --benchmark-only -q`` (``--benchmark-enable`` without
``--benchmark-only`` also runs them once as a smoke test). Timing does not depend on the weights, so
both models are randomly initialized (seeded): nothing is trained or downloaded.
"""

from __future__ import annotations

import pytest
import torch

from sanitycheck.data.scenes import class_prompts
from sanitycheck.report.saliency_grid import DEFAULT_METHODS
from sanitycheck.explainers import get_explainer

#: the parameters of suite clip_text2img
PARAMS = {"integrated_gradients": {"n_steps": 20, "internal_batch_size": 256},
          "smoothgrad": {"n_samples": 16, "max_batch": 256}, "occlusion": {"batch_size": 256}}
METHODS = [*DEFAULT_METHODS, "sobel"]


@pytest.fixture(scope="module")
def tiny_batch():
    from sanitycheck.models.clip import ClipSimilarity, build_tiny_clip

    sim = ClipSimilarity(build_tiny_clip(seed=0), class_prompts())
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(16, 1, 64, 64, generator=g) > 0.7).float().expand(-1, 3, -1, -1).contiguous()
    return sim, x, torch.randint(0, 10, (16,), generator=g)


@pytest.fixture(scope="module")
def vit_b32_batch():
    from sanitycheck.models.clip import ClipSimilarity, import_open_clip

    oc = import_open_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = oc.create_model("ViT-B-32").eval()  # no pretrained weights: random, offline
    sim = ClipSimilarity(model, ["a photo of a cat", "a photo of a dog"], tokenizer=oc.get_tokenizer("ViT-B-32"),
                         mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    g = torch.Generator().manual_seed(0)
    return sim, torch.rand(2, 3, 224, 224, generator=g), torch.tensor([0, 1])


@pytest.mark.parametrize("name", METHODS)
def test_tiny_clip(benchmark, name, tiny_batch):
    sim, x, y = tiny_batch
    explainer = get_explainer(name, **PARAMS.get(name, {}))
    benchmark.group = "CLIP saliency: tiny ViT (64x64, patch 8, 4 blocks), 16 scenes, CPU"
    benchmark.extra_info["config"] = explainer.config()
    maps = benchmark.pedantic(explainer, args=(sim, x, y), rounds=3, iterations=1, warmup_rounds=1)
    assert maps.shape == (16, 64, 64)


@pytest.mark.parametrize("name", METHODS)
def test_vit_b32(benchmark, name, vit_b32_batch):
    sim, x, y = vit_b32_batch
    explainer = get_explainer(name, **{**PARAMS.get(name, {}), **({"batch_size": 64} if name == "occlusion" else {})})
    benchmark.group = "CLIP saliency: open_clip ViT-B-32 (random weights), 2 images 224x224, CPU"
    benchmark.extra_info["config"] = explainer.config()
    maps = benchmark.pedantic(explainer, args=(sim, x, y), rounds=2, iterations=1, warmup_rounds=1)
    assert maps.shape == (2, 224, 224)
