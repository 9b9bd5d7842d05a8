"""The side-by-side Quantus benchmark's table and bookkeeping (no Quantus, no model: fast)."""

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_quantus.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quantus_under_test", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cell(check, explainer, sc, floor, q, error=None):
    return {"check": check, "explainer": explainer, "sanitycheck_s": sc, "floor_s": floor, "quantus_s": q,
            "quantus_error": error, "sanitycheck_over_floor": sc / floor,
            "quantus_over_sanitycheck": None if q is None else q / sc}


def test_every_explainer_has_a_floor_and_ig_runs_quantus_fixed_steps(bench):
    assert set(bench.PASSES) == set(bench.EXPLAINERS)
    assert bench.EXPLAINERS["integrated_gradients"] == {"n_steps": 10}  # Quantus 0.6 hard-codes 10 steps
    assert set(bench.CHECKS) == {"cascading_randomization", "random_logit", "deletion", "faithfulness_correlation"}
    params = bench.CHECKS["faithfulness_correlation"]["params"]
    assert (params["n_perturbations"], params["subset_size"]) == (20, 64)


def test_table_reports_ratios_and_cells_quantus_cannot_compute(bench):
    cells = [_cell("deletion", "gradient", 2.0, 1.0, 4.0),
             _cell("cascading_randomization", "gradcam", 1.0, 0.5, None, "ValueError: attributions all zero | x")]
    table = bench.markdown_table(cells)
    lines = table.splitlines()
    assert lines[0].startswith("| check | explainer | sanitycheck s | floor s | Quantus s")
    assert "| deletion | gradient | 2.00 | 1.000 | 4.00 | 2.00x | 2.00x |" in lines
    row = next(line for line in lines if "gradcam" in line)
    assert "cannot: ValueError: attributions all zero / x" in row and row.endswith("| 2.00x | — |")
    # the total compares only the cells both tools computed
    assert lines[-1] == "| **all** | | 3.00 | 1.500 | 4.00 (1 cells) | 2.00x | 2.00x (same 1 cells) |"


def test_resnet18_workload_is_seeded_and_leaves_the_global_rng_alone(bench):
    import torch

    state = torch.random.get_rng_state()
    a = bench.Workload(n=2, kind="resnet18")
    assert torch.equal(torch.random.get_rng_state(), state), "the workload must not move the global RNG"
    b = bench.Workload(n=2, kind="resnet18")
    assert torch.equal(a.x, b.x) and a.x.shape == (2, 3, 64, 64)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert a.n_layers == 41  # 20 convolutions, 20 batch norms, the classifier
    assert (a.deletion_steps, a.pixels_per_step) == (32, 128)
    suite = bench._suite(["deletion"], ["gradient"], a)
    assert suite.checks[0].params["n_steps"] == 32
    with pytest.raises(ValueError, match="unknown workload"):
        bench.Workload(kind="vit")


def test_resnet18_cell_runs_through_the_engine(bench, tmp_path):
    w = bench.Workload(n=2, kind="resnet18")
    results = bench.run_sanitycheck(w, "random_logit", "gradient", tmp_path / "cell")
    assert results["records"] and results["dataset"]["n"] == 2
