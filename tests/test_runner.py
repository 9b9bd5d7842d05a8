"""The runner on a tiny untrained CNN and real digits: bad input, undefined maps, interruption."""

import pytest
import torch

from helpers import digits_batch, make_tiny_cnn
from sanitycheck.data import ImageDataset
from sanitycheck.errors import AttributionError, ConfigError, DataError, ModelError
from sanitycheck.explainers import FunctionExplainer, get_explainer
from sanitycheck.runner import AuditRun
from sanitycheck.suites import parse_suite


def suite(checks=("cascading_randomization",)):
    return parse_suite({
        "name": "unit", "version": "0.0.1", "description": "runner unit tests",
        "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 2,
        "explainers": ["gradient", "sobel"], "metrics": ["spearman_abs", "ssim"],
        "checks": [{"name": c, "verdict": {"metric": "spearman_abs", "threshold": 0.5}} for c in checks],
    })


@pytest.fixture
def dataset():
    x, y = digits_batch(12)
    return ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")


def run(tmp_path, dataset, model=None, explainers=None, **kw):
    objects = explainers or {"gradient": get_explainer("gradient"), "sobel": get_explainer("sobel")}
    return AuditRun(suite(**kw), out_dir=tmp_path / "out", model=model or make_tiny_cnn(0), dataset=dataset,
                    explainer_objects=objects, progress=False, figures=False).execute()


def test_model_in_train_mode_is_refused(tmp_path, dataset):
    model = make_tiny_cnn(0).train()
    with pytest.raises(ModelError, match="train mode"):
        run(tmp_path, dataset, model=model)


def test_nan_maps_are_an_error_naming_the_explainer(tmp_path, dataset):
    def nan_maps(model, x, target):
        return torch.full(x.shape, float("nan"))

    with pytest.raises(AttributionError, match="nan_maps: maps contain NaN"):
        run(tmp_path, dataset, explainers={"nan_maps": FunctionExplainer(nan_maps)})


def test_wrong_shape_is_an_error_naming_the_explainer(tmp_path, dataset):
    def small(model, x, target):
        return x[:, :, :4, :4]

    with pytest.raises(AttributionError, match=r"small: maps have shape \(4, 4, 4\), expected \(4, 16, 16\)"):
        run(tmp_path, dataset, explainers={"small": FunctionExplainer(small)})


def test_constant_maps_become_undefined_records_with_a_reason_never_nan(tmp_path, dataset):
    def zeros_when_randomized(model, x, target):
        g = get_explainer("gradient")(model, x, target)
        trained = torch.equal(model.fc2.weight, make_tiny_cnn(0).fc2.weight)
        return g if trained else torch.zeros_like(g)

    res = run(tmp_path, dataset, explainers={"flaky": FunctionExplainer(zeros_when_randomized)})
    text = (tmp_path / "out" / "results.json").read_text()
    assert "NaN" not in text
    randomized = [r for r in res["records"] if r["step"] != "original"]
    assert randomized and all(r["mean"] is None and r["n"] == 0 and r["n_undefined"] == 12 for r in randomized)
    assert all("12 constant maps in this state (12 all zero)" in r["undefined_reason"] for r in randomized)
    verdict, = res["verdicts"]
    assert verdict["passed"] and "every map was undefined" in verdict["reason"]


def test_unreadable_dataset_path_is_a_clear_error(tmp_path):
    from sanitycheck.data import load_dataset

    with pytest.raises(DataError, match="does-not-exist"):
        load_dataset("image_folder", root=str(tmp_path / "does-not-exist"))


def test_an_interrupted_run_resumes_from_its_cache(tmp_path, dataset):
    calls = {"n": 0}

    def gradient_then_crash(model, x, target):
        calls["n"] += 1
        if calls["n"] == 7:  # original maps (3 batches), then crash in the second randomized state
            raise KeyboardInterrupt
        return get_explainer("gradient")(model, x, target)

    explainers = {"g": FunctionExplainer(gradient_then_crash, name="g")}
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, dataset, explainers=explainers)
    assert not (tmp_path / "out" / "results.json").exists()
    units = tmp_path / "out" / "cache" / "units"  # units/<check>/<step>/<name>-<spec hash>-<unit key>.pt
    done = sorted(p.parent.name for p in units.rglob("g-*.pt") if p.parent.parent.name != "original")
    assert done == ["fc2"]
    calls["n"] = 100
    resumed = run(tmp_path, dataset, explainers=explainers)
    assert calls["n"] == 100 + 3 * 3  # fc1, conv2, conv1 recomputed (3 batches each); original and fc2 not

    fresh = AuditRun(suite(), out_dir=tmp_path / "fresh", model=make_tiny_cnn(0), dataset=dataset,
                     explainer_objects={"g": get_explainer("gradient")}, progress=False, figures=False).execute()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "explainer"} for r in rs]
    assert strip(resumed["records"]) == strip(fresh["records"])


def test_same_command_gives_the_same_numbers(tmp_path, dataset):
    a = run(tmp_path / "a", dataset)
    b = run(tmp_path / "b", dataset)
    assert a["records"] == b["records"] and a["verdicts"] == b["verdicts"]


def test_model_independent_explainers_are_computed_once_not_once_per_state(tmp_path):
    """The controls ignore the model: the runner reuses their trained-model maps in every randomized state
    (same scores as recomputing them), and calls them again only where the target changes (random logit)."""
    from sanitycheck.engine import audit_run_for
    from sanitycheck.explainers.controls import SobelEdges
    from sanitycheck.suites import load_suite

    calls = []

    class CountingSobel(SobelEdges):
        def attribute(self, model, x, target):
            calls.append(x.shape[0])
            return super().attribute(model, x, target)

    suite = load_suite("adebayo2018")
    run = audit_run_for(suite, out_dir=tmp_path / "run", n=16, progress=False, figures=False,
                        explainer_objects={"sobel": CountingSobel()}, checks=["cascading_randomization"])
    res = run.execute()
    assert sum(calls) == 16  # the original maps only, not once more per cascade step
    scores = [r for r in res["records"] if r["metric"] == "spearman_abs" and r["step"] != "original"]
    assert len(scores) == 4 and all(r["mean"] == 1.0 for r in scores)


def test_sharded_work_units_give_the_numbers_of_one_shard(tmp_path, dataset):
    """Units over shards of the inputs (whole batches) reproduce the one-shard run exactly, and an interrupted
    sharded run keeps one cache file per shard."""
    whole = run(tmp_path / "whole", dataset)
    objects = {"gradient": get_explainer("gradient"), "sobel": get_explainer("sobel")}
    sharded = AuditRun(suite(), out_dir=tmp_path / "sharded", model=make_tiny_cnn(0), dataset=dataset,
                       explainer_objects=objects, progress=False, figures=False,
                       shard_size=5).execute()  # 12 inputs, batches of 4: shards of 8 and 4
    assert sharded["per_sample"] == whole["per_sample"]
    assert sharded["records"] == whole["records"] and sharded["verdicts"] == whole["verdicts"]
    units = tmp_path / "sharded" / "cache" / "units"
    per_step = [p for p in units.rglob("*.pt") if p.parent.name == "fc2"]
    assert len(per_step) == 4  # one unit per (explainer, shard)


def test_an_unknown_executor_is_named_with_the_known_ones(tmp_path, dataset):
    with pytest.raises(ConfigError, match="unknown executor 'spark'.*local"):
        AuditRun(suite(), out_dir=tmp_path / "x", model=make_tiny_cnn(0), dataset=dataset, executor="spark")
