"""The Ray executor (issue 12): bit-identical to local (explainer and evaluation units), objects sent once,
failures retried then named, finished units cached, a dead --address refused within seconds, a clear error when
ray is missing. One local two-worker cluster is shared by the module (ray start-up is slow); tests skip with the
reason when ray is absent."""

import functools
import os
import socket
import sys
from collections import Counter

import pytest
import torch

from helpers import digits_batch, make_tiny_cnn
from sanitycheck.data import ImageDataset
from sanitycheck.checks.evaluation import Deletion as DeletionCheck
from sanitycheck.checks.evaluation import MaxSensitivity as MaxSensitivityCheck
from sanitycheck.engine import ray_executor
from sanitycheck.engine.executors import get_executor
from sanitycheck.errors import ConfigError
from sanitycheck.explainers import ExplainerError, FunctionExplainer, get_explainer
from sanitycheck.metrics.faithfulness import MaxSensitivity as MaxSensitivityMetric
from sanitycheck.runner import AuditRun
from sanitycheck.suites import parse_suite


def suite():
    return parse_suite({
        "name": "unit", "version": "0.0.1", "description": "ray executor tests",
        "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 2,
        "explainers": ["gradient", "sobel"], "metrics": ["spearman_abs", "ssim"],
        "checks": [{"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}}],
    })


@pytest.fixture(scope="module")
def dataset():
    x, y = digits_batch(8)
    return ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'sanitycheck[ray]')")
    # the workers import this test's tiny models (tests/helpers.py) and this checkout of sanitycheck
    here = os.path.dirname(os.path.abspath(__file__))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.path.dirname(here)] + ([old] if old else []))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def run(out, dataset, explainers, executor="local", **options):
    return AuditRun(suite(), out_dir=out, model=make_tiny_cnn(0), dataset=dataset, explainer_objects=explainers,
                    shard_size=4, progress=False, figures=False, executor=executor,
                    executor_options=options).execute()


def explainers():
    return {"gradient": get_explainer("gradient"), "sobel": get_explainer("sobel"),
            "ig": get_explainer("integrated_gradients")}


def comparable(doc):
    return {k: doc[k] for k in ("records", "verdicts", "per_sample", "state_info", "skipped")}


def test_ray_gives_the_local_executors_scores_records_and_verdicts(tmp_path, dataset, cluster):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: float sums are then computed in the same order
    try:
        local = run(tmp_path / "local", dataset, explainers())
    finally:
        torch.set_num_threads(threads)
    remote = run(tmp_path / "ray", dataset, explainers(), "ray", workers=2)
    assert remote["per_sample"] and remote["verdicts"]
    assert comparable(remote) == comparable(local)
    # every unit was saved by the driver: a rerun computes nothing and gives the same document
    units = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray" / "cache" / "units").rglob("*.pt"))
    assert units == sorted(p.relative_to(tmp_path / "local")
                           for p in (tmp_path / "local" / "cache" / "units").rglob("*.pt"))
    again = run(tmp_path / "ray", dataset, explainers(), "ray", workers=2)
    assert comparable(again) == comparable(remote)


def test_each_model_state_and_explainer_is_put_once_not_once_per_unit(tmp_path, dataset, cluster):
    puts = []
    real = cluster.put

    def counting_put(obj, *a, **k):
        puts.append(type(obj).__name__)
        return real(obj, *a, **k)

    cluster.put = counting_put
    try:
        run(tmp_path / "out", dataset, explainers(), "ray", workers=2)
    finally:
        cluster.put = real
    # 22 units went to the workers (3 explainers x 2 shards of original maps, 2 model-dependent explainers x 2
    # shards x 4 cascade states; the sobel control reuses its original maps) but only 13 objects were put
    assert Counter(puts) == {"dict": 1,  # the audited inputs, once per run
                             "TinyCNN": 5,  # the trained model once, each of the 4 cascade states once
                             "ClassTarget": 2, "Gradient": 2, "IntegratedGradients": 2,  # once per executor call
                             "SobelEdges": 1}, puts


def flaky(marks, row4, model, x, target):
    """Gradient maps; on the batch of rows 4..7 it raises until ``marks/disarm`` exists or ``marks/fail_times``
    attempts were made (each attempt leaves a file: workers are other processes)."""
    import uuid

    (marks / f"call-{uuid.uuid4().hex}").touch()
    if torch.equal(x[0], row4) and not (marks / "disarm").exists():
        attempts = len(list(marks.glob("attempt-*")))
        (marks / f"attempt-{uuid.uuid4().hex}").touch()
        if attempts < int((marks / "fail_times").read_text()):
            if (marks / "die").exists():
                os._exit(1)  # the worker process dies mid-unit
            raise RuntimeError("out of luck")
    return get_explainer("gradient")(model, x, target)


def flaky_explainers(marks, dataset, fail_times, die=False):
    marks.mkdir(exist_ok=True)
    if die:
        (marks / "die").touch()
    (marks / "fail_times").write_text(str(fail_times))
    return {"gradient": get_explainer("gradient"),
            "flaky": FunctionExplainer(functools.partial(flaky, marks, dataset.images[4].clone()), name="flaky")}


@pytest.mark.parametrize("die", [False, True], ids=["raises", "worker-dies"])
def test_a_unit_that_fails_once_is_retried_and_changes_nothing(tmp_path, dataset, cluster, die):
    marks = tmp_path / "marks"
    done = run(tmp_path / "ray", dataset, flaky_explainers(marks, dataset, 1, die), "ray", workers=2)
    assert len(list(marks.glob("attempt-*"))) > 1  # it failed, and the retry went through
    plain = run(tmp_path / "plain", dataset, flaky_explainers(tmp_path / "m2", dataset, 0), "ray", workers=2)
    assert done["records"] == plain["records"] and done["verdicts"] == plain["verdicts"]


def test_a_unit_that_keeps_failing_is_named_the_rest_is_cached_and_a_rerun_resumes(tmp_path, dataset, cluster):
    marks, out = tmp_path / "marks", tmp_path / "out"
    with pytest.raises(ExplainerError) as info:
        run(out, dataset, flaky_explainers(marks, dataset, 99), "ray", workers=2)
    msg = str(info.value)
    for part in ("'flaky'", "inputs 4..7", "RuntimeError: out of luck", "re-run with the same --out"):
        assert part in msg, msg
    assert len(list(marks.glob("attempt-*"))) == 3  # the first try and 2 retries
    # the other original-maps units finished and were saved by the driver
    cached = list((out / "cache" / "units" / "original").rglob("*.pt"))
    assert len(cached) == 3, cached  # gradient rows 0..3 and 4..7, flaky rows 0..3
    for f in marks.glob("call-*"):
        f.unlink()
    (marks / "disarm").touch()
    resumed = run(out, dataset, flaky_explainers(marks, dataset, 99), "ray", workers=2)
    # flaky's rows 4..7 of the trained model, then 4 cascade states x 2 shards: rows 0..3 came from the cache
    assert len(list(marks.glob("call-*"))) == 1 + 4 * 2
    assert resumed["verdicts"]


def test_an_unreachable_address_is_a_clear_error_within_seconds(monkeypatch):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'sanitycheck[ray]')")
    with socket.socket() as s:  # a port nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at --address '127.0.0.1:{port}'"):
        get_executor("ray", address=f"127.0.0.1:{port}")
    # a host that never answers: the connection attempt is bounded by the timeout, before ray.init can hang
    seen = []

    def silent(address, timeout=None):
        seen.append((address, timeout))
        raise socket.timeout("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(ConfigError, match=r"cannot reach.*'ray://head' \(head:10001: timed out, waited at most 3 s\)"):
        get_executor("ray", address="ray://head")
    assert seen == [(("head", 10001), 3.0)]
    with pytest.raises(ConfigError, match="not host:port"):
        get_executor("ray", address="nonsense:port")


def test_without_ray_the_executor_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'sanitycheck\[ray\]'"):
        get_executor("ray")


def test_local_refuses_cluster_options_and_the_cli_passes_them():
    with pytest.raises(ConfigError, match="--executor local takes no --address"):
        get_executor("local", address="localhost:6379")
    from sanitycheck.cli import build_parser
    from sanitycheck.options import run_kwargs

    ns = build_parser().parse_args(["run", "adebayo2018", "--executor", "ray", "--address", "h:1", "--workers",
                                    "2", "--worker-threads", "3"])
    kw = run_kwargs(ns)
    assert kw["executor"] == "ray" and kw["executor_options"] == {"address": "h:1", "workers": 2, "threads": 3}


def eval_suite():
    return parse_suite({
        "name": "unit_eval", "version": "0.0.1", "description": "ray executor: evaluation units on workers",
        "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 2,
        "explainers": ["gradient", "sobel"], "metrics": ["spearman_abs"],
        "checks": [{"name": "deletion", "params": {"n_steps": 4}},
                   {"name": "insertion", "params": {"n_steps": 4, "substrate": "blur"}},
                   {"name": "faithfulness_correlation", "params": {"n_perturbations": 6, "subset_size": 16}},
                   # a state check (Sixt et al.): its units go to the workers as explainer calls
                   {"name": "random_logit", "verdict": {"metric": "spearman_abs", "threshold": 0.5}}],
    })


def eval_run(out, dataset, explainers, executor="local", **options):
    return AuditRun(eval_suite(), out_dir=out, model=make_tiny_cnn(0), dataset=dataset,
                    explainer_objects=explainers, shard_size=4, progress=False, figures=False, executor=executor,
                    executor_options=options).execute()


def test_evaluation_units_run_on_workers_and_equal_local_bit_for_bit(tmp_path, dataset, cluster, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = eval_run(tmp_path / "local", dataset, {"gradient": get_explainer("gradient"),
                                                        "sobel": get_explainer("sobel")})
    finally:
        torch.set_num_threads(threads)
    # the driver must not score any evaluation unit itself: its evaluate_maps refuses to run here
    from sanitycheck.checks.evaluation import EvaluationCheck

    def not_here(self, ctx, explainer, maps):
        raise AssertionError(f"{self.name} on {explainer} was scored on the driver")

    monkeypatch.setattr(EvaluationCheck, "evaluate_maps", not_here)
    monkeypatch.setattr("sanitycheck.engine.ray_executor.ship", lambda check: True)
    puts = []
    real = cluster.put

    def counting_put(obj, *a, **k):
        puts.append(type(obj).__name__)
        return real(obj, *a, **k)

    monkeypatch.setattr(cluster, "put", counting_put)
    remote = eval_run(tmp_path / "ray", dataset, {"gradient": get_explainer("gradient"),
                                                  "sobel": get_explainer("sobel")}, "ray", workers=2)
    for check in ("deletion", "insertion", "faithfulness_correlation", "random_logit"):
        assert any(r["check"] == check for r in remote["records"]), check
    assert remote["verdicts"]
    assert comparable(remote) == comparable(local)
    # the trained model went to the object store once for the whole run (original maps and 3 evaluation
    # checks); each evaluation check's unit of each explainer sent its maps once
    counts = Counter(puts)
    assert counts["TinyCNN"] == 1 + 1, puts  # the trained model, and random_logit's one state
    assert counts["Tensor"] == 3 * 2, puts  # 3 evaluation checks x 2 explainers' maps
    assert counts["Deletion"] == counts["Insertion"] == counts["FaithfulnessCorrelation"] == 1, puts
    units = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray" / "cache" / "units").rglob("*.pt"))
    assert units == sorted(p.relative_to(tmp_path / "local")
                           for p in (tmp_path / "local" / "cache" / "units").rglob("*.pt"))


class FlakyMaxSensitivity(MaxSensitivityMetric):
    """Max-sensitivity that raises on the ``Gradient`` explainer's unit until ``marks/fail_times`` attempts were
    made (each attempt leaves a file: the workers are other processes)."""

    def __init__(self, *, marks: str, **params):
        super().__init__(**params)
        self.marks = marks

    def config(self):
        return {**super().config(), "marks": self.marks}

    def evaluate(self, model, x, target, maps, *, seed, explainer=None):
        import pathlib
        import uuid

        if type(explainer).__name__ == "Gradient":
            marks = pathlib.Path(self.marks)
            attempts = len(list(marks.glob("attempt-*")))
            (marks / f"attempt-{uuid.uuid4().hex}").touch()
            if attempts < int((marks / "fail_times").read_text()):
                if (marks / "die").exists():
                    os._exit(1)  # the worker process dies mid-unit
                raise RuntimeError("evaluation out of luck")
        return super().evaluate(model, x, target, maps, seed=seed, explainer=explainer)


class FlakyMaxSensitivityCheck(MaxSensitivityCheck):  # evaluate_maps is the built-in one: the unit ships
    metric_class = FlakyMaxSensitivity


def flaky_eval_run(out, dataset, marks, executor="ray", **options):
    doc = {"name": "unit_eval", "version": "0.0.1", "description": "a flaky evaluation check",
           "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 2,
           "explainers": ["gradient", "sobel"], "metrics": ["spearman_abs"],
           "checks": [{"name": f"{__name__}:FlakyMaxSensitivityCheck",
                       "params": {"marks": str(marks), "n_perturbations": 2}}]}
    return AuditRun(parse_suite(doc), out_dir=out, model=make_tiny_cnn(0), dataset=dataset,
                    explainer_objects={"gradient": get_explainer("gradient"), "sobel": get_explainer("sobel")},
                    shard_size=4, progress=False, figures=False, executor=executor,
                    executor_options=options).execute()


@pytest.mark.parametrize("die", [False, True], ids=["raises", "worker-dies"])
def test_an_evaluation_unit_that_fails_once_is_retried_and_changes_nothing(tmp_path, dataset, cluster, die):
    assert ray_executor.ship(FlakyMaxSensitivityCheck(marks="x"))
    marks = tmp_path / "marks"
    marks.mkdir()
    if die:
        (marks / "die").touch()
    (marks / "fail_times").write_text("1")
    done = flaky_eval_run(tmp_path / "ray", dataset, marks, workers=2)
    assert len(list(marks.glob("attempt-*"))) == 2  # it failed on a worker, and the retry went through
    (marks / "fail_times").write_text("0")
    (marks / "die").unlink(missing_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = flaky_eval_run(tmp_path / "local", dataset, marks, "local")
    finally:
        torch.set_num_threads(threads)
    assert comparable(done) == comparable(local)


def test_an_evaluation_unit_that_keeps_failing_is_named_and_the_rest_is_cached(tmp_path, dataset, cluster):
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "fail_times").write_text("99")
    out = tmp_path / "out"
    with pytest.raises(ExplainerError) as info:
        flaky_eval_run(out, dataset, marks, workers=2)
    msg = str(info.value)
    for part in ("explainer 'gradient'", "max_sensitivity", "RuntimeError: evaluation out of luck", "inputs 0..7",
                 "re-run with the same --out"):
        assert part in msg, msg
    assert len(list(marks.glob("attempt-*"))) == 3  # the first try and 2 retries
    # sobel's evaluation unit finished on the other worker and the driver saved it
    assert [p.name.startswith("sobel") for p in (out / "cache" / "units" / "max_sensitivity").rglob("*.pt")] == [True]


class OwnScoringDeletion(DeletionCheck):
    """A check with its own evaluate_maps: scored in place on the driver by the ray executor."""

    def evaluate_maps(self, ctx, explainer, maps):
        import os

        ev = super().evaluate_maps(ctx, explainer, maps)
        here = os.getpid() == int(os.environ.get("DRIVER_PID", "-1"))
        ev.notes = {**(ev.notes or {}), "scored_in": "driver" if here else "worker"}
        return ev


def test_a_check_with_its_own_evaluate_maps_is_scored_on_the_driver(tmp_path, dataset, cluster, monkeypatch):
    monkeypatch.setenv("DRIVER_PID", str(os.getpid()))
    doc = {"name": "unit_eval", "version": "0.0.1", "description": "own scoring", "dataset": {"name": "digits"},
           "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 2, "explainers": ["gradient"],
           "metrics": ["spearman_abs"], "checks": [{"name": f"{__name__}:OwnScoringDeletion",
                                                     "params": {"n_steps": 4}}]}
    res = {}
    for executor in ("local", "ray"):
        res[executor] = AuditRun(parse_suite(doc), out_dir=tmp_path / executor, model=make_tiny_cnn(0),
                                 dataset=dataset, explainer_objects={"gradient": get_explainer("gradient")},
                                 shard_size=4, progress=False, figures=False, executor=executor,
                                 executor_options={"workers": 2} if executor == "ray" else {}).execute()
    assert res["ray"]["state_info"][f"{__name__}:OwnScoringDeletion"]["gradient"]["scored_in"] == "driver"
    assert comparable(res["ray"]) == comparable(res["local"])


def test_only_checks_scored_by_a_builtin_evaluate_maps_ship_to_workers():
    from sanitycheck.checks.base import TRAIN_SPLIT, get_check

    for name in ("deletion", "insertion", "faithfulness_correlation", "aopc_morf", "pointing_game"):
        assert ray_executor.ship(get_check(name)), name

    class OwnScoring(MaxSensitivityCheck):  # may read other explainers' maps from its context: the driver
        def evaluate_maps(self, ctx, explainer, maps):
            return super().evaluate_maps(ctx, explainer, maps)

    class NeedsTraining(MaxSensitivityCheck):
        needs = MaxSensitivityCheck.needs | {TRAIN_SPLIT}

    assert not ray_executor.ship(OwnScoring())
    assert not ray_executor.ship(NeedsTraining())
