"""``sanitycheck clip-saliency IMAGE QUERY``: each saliency method's map of the cosine similarity between
an image and a text query under a CLIP model, written as PNGs over the image.

Models: any open_clip model with a pretrained tag or a local weights file (default ``ViT-B-32`` /
``openai``; weights are read from the local caches only unless ``HF_HUB_OFFLINE=0`` — when they are
not there the command stops at once and says how to get them), ``--pretrained none`` for a seeded
random initialization (a smoke test: its maps explain nothing), or the tiny CLIP trained here,
``--model sanitycheck-tiny-vit`` (``--pretrained trained``, the default for it: trained on first use,
≈4 min, then cached), which works offline but knows only the 21 words of the synthetic scenes'
captions (Fashion-MNIST classes and positions) and 64 x 64 grayscale-like scenes.

Output (``--out``, default ``runs/clip-saliency-<image>-<time>``): ``<method>.png`` per method (the
map's magnitude, scaled by its 99th percentile, as a heat map over the dimmed image, ``--size`` pixels
square), ``grid.png`` (the image and every map), ``maps.pt`` (the raw maps at the model's input
resolution) and ``summary.json`` (model, query, cosine similarity, per-method seconds and files, and
the methods that do not apply to this model with the reason).
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch

from ..errors import ConfigError, DataError, NotApplicableError, WeightsUnavailableError

__all__ = ["DEFAULT_METHODS", "DEFAULT_MODEL", "DEFAULT_PRETRAINED", "METHOD_PARAMS", "clip_saliency",
           "resolve_pretrained"]

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
#: the methods drawn by default (the explainers of suite clip_text2img, without the controls)
DEFAULT_METHODS = ["gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "vit_gradcam", "vit_chefer",
                   "vit_attention_rollout", "occlusion"]
#: parameters of the methods here (the suite's; small internal batches for 224-pixel towers on a CPU)
METHOD_PARAMS: Dict[str, Dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 20, "internal_batch_size": 20},
    "smoothgrad": {"n_samples": 16, "max_batch": 16},
    "occlusion": {"batch_size": 64},
}
NO_WEIGHTS = ("none", "random")


def resolve_pretrained(model: str, pretrained: Optional[str]) -> Optional[str]:
    """The weights to load: ``None`` for random initialization (``"none"``/``"random"``); by default
    ``"trained"`` for the tiny model and ``"openai"`` for an open_clip model that has that tag."""
    from ..models.clip import TINY_MODEL_NAME, import_open_clip

    if pretrained is not None:
        return None if str(pretrained).lower() in NO_WEIGHTS else str(pretrained)
    if model == TINY_MODEL_NAME:
        return "trained"
    oc = import_open_clip()
    tags = oc.list_pretrained_tags_by_model(model) if model in oc.list_models() else []
    if DEFAULT_PRETRAINED in tags:
        return DEFAULT_PRETRAINED
    if model not in oc.list_models():
        return DEFAULT_PRETRAINED  # load_open_clip raises the unknown-name error with suggestions
    raise ConfigError(f"open_clip model {model!r} has no {DEFAULT_PRETRAINED!r} weights; pass --pretrained with one of "
                      f"{tags or '(no tags)'}, a weights file, or 'none' for random weights")


def _methods(names: Optional[Sequence[str]]):
    from ..explainers import get_explainer

    names = list(DEFAULT_METHODS if not names else names)
    if len(set(names)) != len(names):
        raise ConfigError(f"methods listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    return {name: get_explainer(name, **METHOD_PARAMS.get(name, {})) for name in names}


def _check_query_early(model: str, query: str) -> None:
    """Tokenize ``query`` with the open_clip model's tokenizer before any weights are loaded (too long a
    query fails at once); skipped when the tokenizer itself is not at hand (the model load then says why)."""
    from ..models.clip import import_open_clip, tokenize

    oc = import_open_clip()
    if model not in oc.list_models():
        return
    try:
        tokenizer = oc.get_tokenizer(model)
        n_ctx = int((oc.get_model_config(model) or {}).get("text_cfg", {}).get("context_length", 77))
    except Exception:  # noqa: BLE001 - e.g. a Hugging Face tokenizer that is not cached
        return
    tokenize(tokenizer, [query], n_ctx)


def _load(image: Union[str, Path], side: int, grayscale: str) -> torch.Tensor:
    from ..models.clip import load_image

    try:
        return load_image(image, side, grayscale=grayscale)
    except DataError as err:
        if "grayscale" in str(err):
            raise DataError(f"{err} (command line: --convert-grayscale)") from err
        raise


def default_out(image: Union[str, Path]) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"clip-saliency-{Path(image).stem}-{stamp}"


def clip_saliency(image: Union[str, Path], query: str, *, model: str = DEFAULT_MODEL, pretrained: Optional[str] = None,
                  methods: Optional[Sequence[str]] = None, out: Optional[Union[str, Path]] = None, size: int = 224,
                  grayscale: str = "error", seed: int = 0, device: str = "cpu", progress: bool = True,
                  figures: bool = True) -> Dict[str, Any]:
    """Maps of every method for ``query`` on ``image``; writes PNGs (see the module doc) and returns the summary.

    Cheap checks come first, so that bad input fails before a model is loaded or trained: the query
    (empty), the method names, the output size, the model name, the query's words and length (the
    tiny model's vocabulary), the image (missing, unreadable, grayscale unless ``grayscale="convert"``),
    then the weights.
    """
    from ..io import atomic_torch_save, atomic_write_json
    from ..models.clip import (DEFAULT_TINY_SPEC, TINY_MODEL_NAME, VOCAB, ClipSimilarity, WordTokenizer, load_open_clip,
                        tokenize, train_tiny_clip)

    if not isinstance(query, str) or not query.strip():
        raise DataError(f"empty query {query!r}: give a text such as 'a photo of a cat'")
    explainers = _methods(methods)
    if not (isinstance(size, int) and 16 <= size <= 4096):
        raise ConfigError(f"--size must be an integer number of pixels in [16, 4096], got {size!r}")
    weights = resolve_pretrained(model, pretrained)
    t0 = time.perf_counter()
    if model == TINY_MODEL_NAME:
        # the vocabulary and context length are known without the weights: check the query before training
        tokenize(WordTokenizer(VOCAB, DEFAULT_TINY_SPEC.context_length), [query], DEFAULT_TINY_SPEC.context_length)
        x = _load(image, DEFAULT_TINY_SPEC.image_size, grayscale)
        if weights == "trained":
            clip_model = train_tiny_clip(DEFAULT_TINY_SPEC, progress=progress)
        else:
            clip_model = load_open_clip(model, weights, device, seed=seed)
    else:
        _check_query_early(model, query)
        try:
            clip_model = load_open_clip(model, weights, device, seed=seed)
        except WeightsUnavailableError as err:
            raise WeightsUnavailableError(
                f"{err} Without those weights: --model {TINY_MODEL_NAME} (the tiny CLIP trained here, offline; it knows "
                f"only the words {VOCAB[2:-1]}), or --pretrained none (random weights, a smoke test).") from err
        side = getattr(getattr(clip_model, "visual", None), "image_size", 224)
        side = int(side[0] if isinstance(side, (tuple, list)) else side)
        x = _load(image, side, grayscale)
    load_seconds = time.perf_counter() - t0
    sim = ClipSimilarity(clip_model.to(device), [query], score="cosine")  # tokenizes: too long / bad words raise
    x = x[None].to(device)
    with torch.no_grad():
        similarity = float(sim(x)[0, 0])
    out_dir = Path(out) if out is not None else default_out(image)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = torch.zeros(1, dtype=torch.long)
    maps: Dict[str, torch.Tensor] = {}
    rows: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, str] = {}
    for name, explainer in explainers.items():
        start = time.perf_counter()
        try:
            m = explainer(sim, x, target)[0].detach().to("cpu", torch.float32)
        except NotApplicableError as err:
            skipped[name] = str(err)
            continue
        seconds = time.perf_counter() - start
        maps[name] = m
        rows[name] = {"seconds": round(seconds, 3), "config": explainer.config()}
    from .clip_figures import plot_method_grid, save_overlay_png

    image_cpu = x[0].cpu()
    if figures:
        for name, m in maps.items():
            rows[name]["file"] = save_overlay_png(out_dir / f"{name}.png", image_cpu, m, size, title=name).name
        if maps:
            plot_method_grid(out_dir / "grid.png", image_cpu, maps, query, size=min(size, 256),
                             subtitle=f"{model} ({weights or 'random weights'}), cosine {similarity:.3f}")
    atomic_torch_save(out_dir / "maps.pt", {"image": image_cpu, "maps": maps, "query": query})
    info = getattr(clip_model, "sanitycheck_info", {}) or {}
    summary = {
        "image": str(image), "query": query, "model": model, "pretrained": weights,
        "input_size": list(image_cpu.shape[-2:]), "cosine_similarity": similarity,
        "model_seconds": round(load_seconds, 2),
        "model_info": {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))},
        "methods": rows, "skipped": skipped, "grid": "grid.png" if figures and maps else None,
        "out": str(out_dir), "note": "maps explain the cosine similarity of the image and the query (target: the query)",
    }
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
