"""Faithfulness families and refined randomization checks through the runner (tiny CNN, real digits)."""


from helpers import digits_batch, make_tiny_cnn
from sanitycheck.data import ImageDataset
from sanitycheck.explainers import get_explainer
from sanitycheck.runner import AuditRun
from sanitycheck.suites import parse_suite
from sanitycheck.validation import aggregate_problems, schema_problems


def run(tmp_path, checks, metrics=("spearman_abs",)):
    suite = parse_suite({
        "name": "unitfaith", "version": "0.0.1", "description": "runner faithfulness tests",
        "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 16,
        "explainers": ["gradient", "sobel"], "metrics": list(metrics), "checks": checks})
    x, y = digits_batch(16)
    data = ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")
    return AuditRun(suite, out_dir=tmp_path / "out", model=make_tiny_cnn(0), dataset=data,
                    explainer_objects={"gradient": get_explainer("gradient"), "sobel": get_explainer("sobel")},
                    progress=False, figures=True).execute()


def test_deletion_and_insertion_records_curves_and_auc_without_verdicts(tmp_path):
    res = run(tmp_path, [{"name": "deletion", "params": {"n_steps": 8}}, {"name": "insertion", "params": {"n_steps": 8}}])
    assert res["verdicts"] == []
    steps = res["checks"]["deletion"]["steps"]
    assert steps == [str(i) for i in range(9)] + ["auc"]
    auc = [r for r in res["records"] if r["check"] == "deletion" and r["step"] == "auc"]
    assert {r["explainer"] for r in auc} == {"gradient", "sobel"} and all(r["metric"] == "auc" for r in auc)
    assert all(r["n"] == 16 and 0 <= r["mean"] <= 1 for r in auc)
    assert not [r for r in res["records"] if r["step"] == "original"]
    assert schema_problems(res) == [] and aggregate_problems(res) == []
    rel = res["reliability"]["scores"]
    assert set(rel) == {"deletion/auc", "insertion/auc"} and rel["deletion/auc"]["n_methods"] == 2
    assert (tmp_path / "out" / "deletion_curves.png").stat().st_size > 1000
    assert (tmp_path / "out" / "insertion_sequence_0.png").stat().st_size > 1000


def test_refined_randomization_checks_give_records_and_verdicts(tmp_path):
    res = run(tmp_path, [
        {"name": "random_logit", "verdict": {"metric": "spearman_abs", "threshold": 0.5, "rule": "final_step"}},
        {"name": "smooth_mprt", "params": {"n_samples": 3},
         "verdict": {"metric": "spearman_abs", "threshold": 0.5}},
        {"name": "efficient_mprt",
         "verdict": {"metric": "entropy_increase", "threshold": 0.0, "rule": "final_step", "direction": "above"}},
    ], metrics=("spearman_abs", "entropy_increase"))
    verdicts = {(v["explainer"], v["check"]): v for v in res["verdicts"]}
    assert len(verdicts) == 6
    # the edge detector ignores the model and the class: it must fail random-logit and smooth MPRT
    assert not verdicts[("sobel", "random_logit")]["passed"]
    assert not verdicts[("sobel", "smooth_mprt")]["passed"]
    assert "lower 95% CI bound of entropy_increase" in verdicts[("gradient", "efficient_mprt")]["reason"]
    assert res["checks"]["random_logit"]["steps"] == ["random_logit"]
    assert res["checks"]["efficient_mprt"]["steps"] == ["fully_randomized"]
    assert schema_problems(res) == [] and aggregate_problems(res) == []
