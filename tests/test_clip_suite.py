"""The CLIP suite through the runner (a random tiny CLIP, a few scenes), the suite file, and the
deletion/insertion families on a similarity model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from sanitycheck.errors import ConfigError, DataError


def _suite(tmp_path, **over):
    data = {
        "name": "tinyclip", "version": "0.0.1", "description": "CLIP end-to-end test suite",
        "seed": 0, "batch_size": 8, "figure_images": 2, "input_kind": "image_text", "target": "label",
        "dataset": {"name": "clip_scenes", "split": "test", "n": 8, "params": {"n": 16, "seed": 3}},
        "model": {"name": "clip_similarity", "params": {"pretrained": None, "score": "cosine"}},
        "explainers": ["gradient", "vit_chefer", "vit_attention_rollout", "sobel"],
        "metrics": ["spearman_abs", "ssim"],
        "checks": [
            {"name": "cascading_randomization", "params": {"group_depth": 4},
             "verdict": {"metric": "spearman_abs", "threshold": 0.5}},
            {"name": "text_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5, "rule": "final_step"}},
            {"name": "pointing_game"},
            {"name": "deletion", "params": {"softmax": False, "n_steps": 4}},
            {"name": "insertion", "params": {"softmax": False, "n_steps": 4}},
        ],
    }
    data.update(over)
    path = tmp_path / "tinyclip.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, scenes):
    from sanitycheck.engine import run_suite

    tmp = tmp_path_factory.mktemp("clip_e2e")
    mp = pytest.MonkeyPatch()
    mp.setenv("SANITYCHECK_CACHE", str(tmp / "cache"))
    try:
        res = run_suite(str(_suite(tmp)), out=tmp / "out", progress=False)
    finally:
        mp.undo()
    return res, tmp / "out"


def test_run_records_checks_and_chance_levels(clip_run):
    res, out = clip_run
    assert res["input_kind"] == "image_text" and res["dataset"]["n"] == 8
    assert res["model"]["info"]["score"] == "cosine"  # the similarity the maps explain, recorded
    steps = res["checks"]["cascading_randomization"]["steps"]
    assert steps[0] == "projection" and steps[-1] == "visual.conv1" and len(steps) == 9
    assert res["checks"]["text_randomization"]["steps"] == ["unrelated_prompt"]
    assert res["checks"]["pointing_game"]["kind"] == "evaluation"
    recs = res["records"]
    pg = {r["explainer"]: r for r in recs if r["check"] == "pointing_game" and r["metric"] == "pointing"}
    assert set(pg) == {"gradient", "vit_chefer", "vit_attention_rollout", "sobel"}
    assert all(r["n"] + r["n_undefined"] == 8 for r in pg.values())
    notes = res["state_info"]["pointing_game"]["gradient"]
    assert notes["chance_area"] == pytest.approx(28 * 28 / 64 ** 2) and 0.25 <= notes["chance_cell"] <= 0.5
    verdicts = {(v["explainer"], v["check"]) for v in res["verdicts"]}
    assert ("gradient", "text_randomization") in verdicts and ("sobel", "cascading_randomization") in verdicts
    sobel_text = [r for r in recs if r["explainer"] == "sobel" and r["check"] == "text_randomization"
                  and r["metric"] == "spearman_abs" and r["step"] == "unrelated_prompt"][0]
    assert sobel_text["mean"] == pytest.approx(1.0)  # the control ignores the query
    rollout = [r for r in recs if r["explainer"] == "vit_attention_rollout" and r["check"] == "text_randomization"
               and r["metric"] == "spearman_abs" and r["step"] == "unrelated_prompt"][0]
    assert rollout["mean"] == pytest.approx(1.0)  # class-agnostic by construction
    assert (out / "clip_query_maps.png").is_file() and "clip_queries" in res["figures"]
    assert (out / "cascading_randomization_maps.png").is_file()


def test_deletion_curve_is_the_raw_cosine(clip_run, tmp_path):
    res, _ = clip_run
    from sanitycheck.data.scenes import load_clip_scenes
    from sanitycheck.models.clip import clip_similarity

    sim = clip_similarity(pretrained=None, seed=0)
    scenes = load_clip_scenes("test", 16, seed=3, cache_dir=tmp_path).head(8)
    with torch.no_grad():
        cos = sim(scenes.images.contiguous())[torch.arange(8), scenes.caption_classes]
    for check in ("deletion", "insertion"):
        assert res["checks"][check]["params"]["softmax"] is False
    state0 = res["per_sample"]["gradient"]["deletion"]["0"]
    assert list(state0) == ["score"]  # the curve of the target's score, not a probability
    assert torch.allclose(torch.tensor(state0["score"], dtype=torch.float64), cos.double(), atol=1e-5)
    last = res["per_sample"]["gradient"]["insertion"]["4"]["score"]
    assert torch.allclose(torch.tensor(last, dtype=torch.float64), cos.double(), atol=1e-5)  # ends at the image


def test_validate_style_rerun_of_a_subset_reproduces_scores(tmp_path, scenes, clip_run, monkeypatch):
    from sanitycheck.runner import AuditRun
    from sanitycheck.suites import load_suite

    res, _ = clip_run
    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "cache"))
    idx = [6, 1, 4]
    sub = AuditRun(load_suite(str(_suite(tmp_path))), out_dir=tmp_path / "rerun", progress=False, figures=False,
                   indices=idx, checks=["text_randomization", "pointing_game"], explainers=["gradient", "vit_chefer"]
                   ).execute()
    for name in ("gradient", "vit_chefer"):
        for check, step, metric in (("pointing_game", "score", "energy_pointing"),
                                    ("text_randomization", "unrelated_prompt", "spearman_abs")):
            full = res["per_sample"][name][check][step][metric]
            again = sub["per_sample"][name][check][step][metric]
            assert again == pytest.approx([full[i] for i in idx], abs=1e-5)


def test_a_check_needing_scenes_on_other_data_is_a_clear_error(tmp_path, monkeypatch, scenes):
    from sanitycheck.engine import run_suite

    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "cache"))
    path = _suite(tmp_path, dataset={"name": "digits", "split": "test", "n": 4},
                  model={"name": "digits_cnn"}, explainers=["gradient"], input_kind="image",
                  checks=[{"name": "pointing_game"}])
    with pytest.raises(ConfigError, match="clip_scenes"):
        run_suite(str(path), out=tmp_path / "out", progress=False)


def test_the_suite_file():
    from sanitycheck.submissions import suites_for
    from sanitycheck.suites import load_suite

    suite = load_suite("clip_text2img")
    assert suite.version == "1.1.0" and suite.input_kind == "image_text" and suite.target == "label"
    assert suite.dataset == {"name": "clip_scenes", "split": "test", "n": 128}
    assert suite.model["name"] == "clip_similarity" and suite.model["params"]["score"] == "cosine"
    assert suite.explainer_names == ["gradient", "gradient_x_input", "integrated_gradients", "smoothgrad",
                                     "vit_gradcam", "vit_chefer", "vit_attention_rollout", "occlusion", "lime", "kernel_shap", "rise",
                                     "gradient_shap", "sobel", "noise"]
    params = dict(suite.explainers)
    assert params["integrated_gradients"]["n_steps"] == 20 and params["smoothgrad"]["n_samples"] == 16
    checks = {c.name: c for c in suite.checks}
    assert list(checks) == ["cascading_randomization", "independent_randomization", "text_randomization",
                            "pointing_game", "deletion", "insertion", "noise_ceiling", "sampling_convergence"]
    assert checks["cascading_randomization"].verdict.rule == "all_steps"
    assert checks["text_randomization"].verdict.threshold == 0.5
    assert checks["deletion"].params["softmax"] is False and checks["insertion"].params["softmax"] is False
    # the perturbation methods explain the raw similarity and segment with SLIC (quickshift: 1 superpixel here)
    assert params["rise"]["probability"] is False and params["lime"]["segmentation"] == "slic"
    assert suites_for("image_text") == ["clip_text2img"]
    assert "clip_text2img" not in suites_for("image")


def test_curve_softmax_flag_on_similarity_models(sim, batch):
    from sanitycheck.data.scenes import class_prompts
    from sanitycheck.models.clip import ClipSimilarity
    from sanitycheck.metrics.curves import Deletion

    x, y = batch
    with torch.no_grad():
        out = sim(x)
    raw = Deletion(softmax=False, n_steps=2).evaluate(sim, x, y, torch.rand(4, 64, 64), seed=0)
    assert torch.allclose(raw.curve[:, 0], out[torch.arange(4), y]) and raw.curve_metric == "score"
    # softmax=True on cosines would be a softmax over the prompts of raw cosines (nearly uniform, ~0.1), and
    # on a softmax score a second softmax: both are refused with what to pass instead
    assert (out.softmax(1)[torch.arange(4), y] - 0.1).abs().max() < 0.05
    with pytest.raises(ConfigError, match="outputs cosine scores, not logits; pass softmax=False"):
        Deletion(softmax=True, n_steps=2).evaluate(sim, x, y, torch.rand(4, 64, 64), seed=0)
    probs = ClipSimilarity(sim_model(sim), class_prompts(), score="softmax")
    with pytest.raises(ConfigError, match="outputs softmax scores"):
        Deletion(softmax=True, n_steps=2).evaluate(probs, x, y, torch.rand(4, 64, 64), seed=0)


def sim_model(sim):
    from sanitycheck.models.clip import build_tiny_clip

    return build_tiny_clip(seed=0)


def test_similarity_resizes_inputs_to_the_tower(sim, batch):
    import torch.nn.functional as F

    from sanitycheck.data.scenes import class_prompts
    from sanitycheck.models.clip import ClipSimilarity, build_tiny_clip

    x, _ = batch
    small = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        direct = sim(F.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False))
        assert torch.allclose(sim(small), direct, atol=1e-6)
    strict = ClipSimilarity(build_tiny_clip(seed=0), class_prompts(), resize=False)
    with pytest.raises(DataError, match="64x64"):
        strict(small)
    assert sim.config()["input_size"] == [64, 64]


def test_similarity_unpickles_where_open_clip_is_not_imported_yet(sim, batch, tmp_path):
    """The sandbox worker of ``sanitycheck submit`` receives the model as a pickle; open_clip must be
    imported through sanitycheck's torchvision shim, not by the unpickler."""
    import copy
    import io

    x, _ = batch
    buf = io.BytesIO()
    torch.save({"model": sim, "x": x[:2]}, buf)
    (tmp_path / "m.pt").write_bytes(buf.getvalue())
    with torch.no_grad():
        torch.save(sim(x[:2]), tmp_path / "out.pt")
    code = ("import sys, torch\nassert 'open_clip' not in sys.modules\n"
            f"d = torch.load({str(tmp_path / 'm.pt')!r}, weights_only=False)\n"
            f"ref = torch.load({str(tmp_path / 'out.pt')!r})\n"
            "with torch.no_grad():\n    assert torch.equal(d['model'](d['x']), ref)\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
    twin = copy.deepcopy(sim)  # deepcopy is unchanged: parameters copied, nothing shared
    assert twin.projection.weight is not sim.projection.weight
    with torch.no_grad():
        assert torch.equal(twin(x), sim(x))
    assert json.dumps(sim.config())


def test_factory_takes_model_as_an_alias_of_name(monkeypatch):
    """``name`` is the registry's own argument (``load_model(name, **params)``): suites pass ``model``."""
    from sanitycheck.models.clip import TINY_MODEL_NAME, clip_similarity
    from sanitycheck.errors import WeightsUnavailableError
    from sanitycheck.models import load_model

    sim = load_model("clip_similarity", model=TINY_MODEL_NAME, pretrained="none", score="softmax")
    assert sim.sanitycheck_info["pretrained"] is None and sim.score == "softmax"
    with pytest.raises(ConfigError, match="disagree"):
        clip_similarity(name="ViT-B-32", model="RN50")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="not on this machine"):
        load_model("clip_similarity", model="ViT-B-32", pretrained="openai")


def test_a_clip_run_is_redrawn_from_its_documents_alone(clip_run, tmp_path, monkeypatch):
    """The two-query maps were computed at run time and kept in the figure maps: redrawing needs no model."""
    import shutil

    import sanitycheck.models as models
    from sanitycheck.report.run_figures import write_figures

    def refuse(*a, **k):
        raise AssertionError("figures must not load a model")

    monkeypatch.setattr(models, "load_model", refuse)
    res, out = clip_run
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert "clip_query_maps.png" in before and res["files"] == {"figure_maps": "figure_maps.pt"}
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.png", "cache"))
    files = write_figures(copy)
    assert files == res["figures"]
    assert {p.name: p.read_bytes() for p in copy.glob("*.png")} == before
