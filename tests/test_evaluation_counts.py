"""results.json records the model evaluations per map of the explainers that state them (issue 14)."""

from __future__ import annotations

import json

import pytest

from sanitycheck.explainers.costs import evaluations_per_map
from sanitycheck.registry import EXPLAINERS


def test_results_record_evaluations_per_map_for_sampled_and_perturbation_methods(tmp_path):
    import sanitycheck as sc

    out = tmp_path / "run"
    from sanitycheck.explainers.gradients import Gradient
    from sanitycheck.explainers.occlusion import Occlusion
    from sanitycheck.explainers.rise import Rise

    objects = {"gradient": Gradient(), "rise": Rise(n_samples=64), "occlusion": Occlusion()}
    sc.run_suite("petsiuk2018", out=out, n=4, checks=["deletion"], explainer_objects=objects, figures=False,
                 progress=False)
    doc = json.loads((out / "results.json").read_text())
    entries = doc["explainers"]
    # the counts are the methods' own: RISE's masks, occlusion's windows (28x28, window 8, stride 8: 4x4 + 1)
    assert entries["rise"]["evaluations_per_map"] == entries["rise"]["config"]["n_samples"]
    assert entries["occlusion"]["evaluations_per_map"] == 4 * 4 + 1
    # explainers that state no count get no field (the published documents of the gradient methods are unchanged)
    assert "evaluations_per_map" not in entries["gradient"]


@pytest.mark.parametrize("name", ["lime", "kernel_shap", "rise", "deeplift", "deeplift_shap", "gradient_shap",
                                  "lrp", "score_cam", "occlusion"])
def test_every_issue14_explainer_states_its_cost(name):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10)).eval()
    explainer = EXPLAINERS.get(name)()
    n = evaluations_per_map(explainer, (1, 1, 28, 28), model)
    assert isinstance(n, int) and n >= 1
