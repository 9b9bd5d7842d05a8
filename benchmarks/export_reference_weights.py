"""Maintainers: (re)export the reference weights of every built-in suite's models, then measure the
test accuracy of the float16 files against the float32 models they were rounded from.

    python benchmarks/export_reference_weights.py [SUITE ...] [--measure-only]

Each suite runs through ``sanitycheck train SUITE --export-reference`` (models come from the model cache,
or are trained there first). Writes sanitycheck/weights/*.safetensors and manifest.json; commit them and
regenerate the leaderboard (its results name the weights' sha256).
"""

from __future__ import annotations

import sys

import torch

from sanitycheck.io import atomic_write_json
from sanitycheck.models import weights as W
from sanitycheck.models.reference_models import train

SUITES = ["adebayo2018", "jain_wallace2019", "wiegreffe_pinter2019", "clip_text2img", "jain_wallace2019_minilm"]


def _text_accuracy(model, dataset: str) -> float:
    from sanitycheck.models import attention as A
    from sanitycheck.models.text_zoo import load_text_task

    _, test = load_text_task(dataset)
    enc = model.sanitycheck_encoder.encode(test)
    return A._accuracy(model, (*tuple(enc)[:4], test.labels))


def measure(name: str) -> dict:
    """Accuracy of the shipped (upcast) model; the float32 model's is in the entry's ``produced``."""
    from sanitycheck.models import load_model
    from sanitycheck.models.reference_models import RECIPES

    torch.set_grad_enabled(False)
    if name == "tiny_clip":
        from sanitycheck.data.scenes import load_clip_scenes
        from sanitycheck.models.clip import DEFAULT_TINY_SPEC, evaluate_retrieval, register_tiny_config, train_tiny_clip

        register_tiny_config()
        clip = train_tiny_clip(DEFAULT_TINY_SPEC, progress=False)
        assert clip.sanitycheck_info["reference"] is True
        spec = clip.sanitycheck_spec
        test = load_clip_scenes("test", spec.n_test, spec.scene_seed, **spec.scene_params())
        return {k: float(v) for k, v in evaluate_retrieval(clip, test).items()}
    model_name, params = RECIPES[name]
    model = load_model(model_name, progress=False, **params)
    assert model.sanitycheck_info["reference"] is True, name
    if name == "fmnist_cnn":
        from sanitycheck.data import load_dataset
        from sanitycheck.models.zoo import _accuracy

        test = load_dataset("fashion_mnist", split="test")
        return {"test_accuracy": _accuracy(model, test.images, test.labels, "cpu")}
    return {"test_accuracy": _text_accuracy(model, params["dataset"])}


def main(argv) -> int:
    measure_only = "--measure-only" in argv  # the float16 accuracies of what is shipped, nothing exported
    suites = [] if measure_only else ([a for a in argv if not a.startswith("-")] or SUITES)
    for suite in suites:
        models = train(suite, export_reference=True, progress=False)
        print(suite, [m.sanitycheck_info["cache_key"] for m in models], flush=True)
    doc = W.manifest()
    for name, entry in doc["models"].items():
        if entry["dtype"] != "float16":
            continue
        try:
            got = measure(name)
        except Exception as err:  # noqa: BLE001 - report and go on
            print(f"could not measure {name}: {type(err).__name__}: {err}", flush=True)
            continue
        entry["produced"]["float16_metrics"] = got
        entry["info"].update(got)  # the shipped model's own numbers (results report these)
        print(name, "float32:", entry["produced"].get("test_accuracy_float32"), "float16:", got, flush=True)
    atomic_write_json(W.WEIGHTS_DIR / W.MANIFEST_NAME, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
