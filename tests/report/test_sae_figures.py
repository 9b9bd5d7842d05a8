"""The SAE audit's figures (issue 15) are functions of the run's documents: a synthetic results.json and figure-maps
file shaped as the five SAE checks write them are enough to draw every figure; a check the run did not compute gets
no figure, and a run without figure maps still gets the figures that need none."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest
import torch

from sanitycheck.io import atomic_write_json
from sanitycheck.report.figure_maps import FIGURE_MAPS_FILE, load_figure_maps, save_figure_maps
from sanitycheck.report.sae_figures import (SAE_CHECKS, _parent_entries, draw_sae, frontier_points,
                                            plot_splitting_tree)

PNG = b"\x89PNG\r\n\x1a\n"
SITES = ("lm.mlp", "minilm.l3")
SAES = ("sae_relu", "sae_topk")
STATES = ("trained", "randomized_all", "randomized_keep_embeddings")
CONCEPTS = ("negation_scope", "review_sentiment")


def _record(explainer: str, check: str, metric: str, step: str, i: int, mean: float, half: float, n: int
            ) -> Dict[str, Any]:
    return {"explainer": explainer, "check": check, "metric": metric, "step": step, "step_index": i,
            "mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n, "n_undefined": 0,
            "undefined_reason": None}


def _ci(value: Optional[float], half: float = 0.03) -> Dict[str, Any]:
    if value is None:
        return {"value": None, "ci_low": None, "ci_high": None}
    return {"value": value, "ci_low": value - half, "ci_high": value + half}


def sae_documents(checks: Sequence[str] = SAE_CHECKS, *, n_latents: int = 40, sites: Sequence[str] = SITES
                  ) -> Dict[str, Any]:
    """``{"results": results document, "extras": figure-maps extras}`` of a synthetic SAE run, in the shapes the five
    checks of :mod:`sanitycheck.checks.sae` write (records, summaries, per_sample; ``figure`` under
    ``extras["text_checks"][check]``)."""
    g = torch.Generator().manual_seed(0)
    records: List[Dict[str, Any]] = []
    summaries: Dict[str, List[Dict[str, Any]]] = {}
    per_sample: Dict[str, Dict[str, Any]] = {}
    text_checks: Dict[str, Any] = {}
    steps: Dict[str, List[str]] = {}

    def sample(name: str, check: str, step: str, metric: str, values: torch.Tensor) -> None:
        per_sample.setdefault(name, {}).setdefault(check, {}).setdefault(step, {})[metric] = [
            None if v != v else round(float(v), 7) for v in values.tolist()]

    if "sae_reconstruction" in checks:
        c = "sae_reconstruction"
        steps[c] = list(sites)
        frontier: Dict[str, Any] = {}
        for i, site in enumerate(sites):
            for j, name in enumerate(SAES):
                l0, fvu = 8.0 + 30 * j + i, 0.3 - 0.1 * j + 0.02 * i
                records += [_record(name, c, "l0", site, i, l0, 1.5, 40),
                            _record(name, c, "fvu", site, i, fvu, 0.02, 40)]
                summaries.setdefault(c, []).append({"check": c, "explainer": name, "step": site,
                                                    "statistic": "loss_recovered", **_ci(0.8 - 0.1 * j), "n": 40})
                frontier.setdefault(site, {})[name] = {"l0": l0, "fvu": fvu, "loss_recovered": 0.8 - 0.1 * j,
                                                       "d_sae": 512, "dead_fraction": 0.05 * j}
        text_checks[c] = {"frontier": frontier}
    if "sae_randomized_control" in checks:
        c = "sae_randomized_control"
        steps[c] = [f"{s}|{st}" for s in sites for st in STATES]
        contexts: Dict[str, Any] = {}
        for site in sites:
            for name in SAES:
                for k, state in enumerate(STATES):
                    share = torch.rand(n_latents, generator=g) * (0.4 if k == 0 else 0.9)
                    share[0] = float("nan")  # a latent seen too rarely: undefined
                    sample(name, c, f"{site}|{state}", "token_identity_share", share)
                    feats = [{"latent": 3 * f + k, "frequency": 0.05 / (f + 1), "token_identity_share": 0.2 + 0.1 * f,
                              "contexts": [{"activation": 4.0 - a, "left": "the film was not at all what I",
                                            "token": "expected" if a else "$5", "right": "from the trailer"}
                                           for a in range(3)]} for f in range(4 - k)]
                    contexts.setdefault(site, {}).setdefault(name, {})[state] = {"features": feats}
                for ctl in STATES[1:]:
                    for measure, v in (("token_identity", -0.2), ("sparse_probing", 0.01)):
                        # as SAERandomizedControl.summary writes them: "control" ends up the control's mean
                        summaries.setdefault(c, []).append({
                            "check": c, "explainer": name, "step": f"{site}|{ctl}", "site": site, "control": 0.45,
                            "statistic": f"{measure}_difference", "measure": measure, **_ci(v, 0.05), "n": 30,
                            "trained": 0.25, "separates": abs(v) > 0.05})
        summaries[c][-1].update(value=None, ci_low=None, ci_high=None, separates=None)  # a dead dictionary
        text_checks[c] = {"top_contexts": contexts}
    if "sae_splitting" in checks:
        c = "sae_splitting"
        steps[c] = [f"{s}|{lv}" for s in sites for lv in ("x2->x4", "x4->x8")]
        trees: Dict[str, Any] = {}
        for site in sites:
            for name in SAES:
                lv1 = {"parents": [{"parent": p, "n_children": 3,
                                    "children": [{"child": 10 * p + q, "similarity": 0.9 - 0.1 * q} for q in range(3)]}
                                   for p in range(5)], "n_parents": 64}
                # the brief's assumed shape: ints with a parallel cosines list (and an entry with no parent id)
                lv2 = {"parents": [{"parent": 10 * p, "children": [100 * p + q for q in range(2)],
                                    "cosines": [0.8, 0.6]} for p in range(3)] + [{"children": [1]},
                                                                                 {"parent": 999, "children": [7]}],
                       "n_parents": 128}
                trees.setdefault(site, {})[name] = {"x2->x4": lv1, "x4->x8": lv2}
                for lv in ("x2->x4", "x4->x8"):
                    sample(name, c, f"{site}|{lv}", "n_children",
                           torch.randint(0, 4, (n_latents,), generator=g).double())
        text_checks[c] = {"trees": trees, "threshold": 0.5}
    if "sae_baselines" in checks:
        c = "sae_baselines"
        steps[c] = [f"{s}|{k}" for s in sites for k in CONCEPTS]
        rows = []
        for site in sites:
            for concept in CONCEPTS:
                step = f"{site}|{concept}"
                for m, v in (("difference_in_means", 0.9), ("logistic_probe", 0.93)):
                    rows.append({"check": c, "explainer": None, "step": step, "statistic": "auroc", "method": m,
                                 "level": "token", **_ci(v), "n": 200, "n_groups": 20})
                for name in SAES:
                    for m, v in (("best_latent", 0.7), ("k_sparse_probe", 0.85)):
                        rows.append({"check": c, "explainer": name, "step": step, "statistic": "auroc", "method": m,
                                     "level": "token", **_ci(v), "n": 200, "n_groups": 20, "latent": 4})
                    rows.append({"check": c, "explainer": name, "step": step, "statistic": "probe_minus_best_baseline",
                                 "baseline": "logistic_probe", "k": 8, "a": 0.85, "b": 0.93, **_ci(-0.08), "n": 200,
                                 "worse": True})
        summaries[c] = rows
        text_checks[c] = {"auroc": {}}
    if "sae_seed_similarity" in checks:
        c = "sae_seed_similarity"
        steps[c] = list(sites)
        for site in sites:
            for name in SAES:
                sample(name, c, site, "max_cosine", torch.rand(n_latents, generator=g))
    results = {"suite": "sae_features", "input_kind": "activations", "model": {"name": "tiny_lm"},
               "dataset": {"name": "movie-reviews", "n": 40}, "explainers": {n: {} for n in SAES},
               "checks": {c: {"kind": "audit", "steps": steps[c]} for c in checks},
               "records": records, "summaries": summaries, "per_sample": per_sample,
               "files": {"figure_maps": FIGURE_MAPS_FILE}}
    return {"results": results, "extras": {"text_checks": text_checks, "text_scores": {}}}


def write_run(out: Path, docs: Dict[str, Any], *, with_maps: bool = True) -> Dict[str, Any]:
    """results.json and (``with_maps``) a real figure-maps file in ``out``; returns the results document."""
    out.mkdir(parents=True, exist_ok=True)
    results = copy.deepcopy(docs["results"])
    if with_maps:
        save_figure_maps(out, inputs=torch.zeros(2, dtype=torch.int64), originals={}, states={},
                         scope={"checks": list(results["checks"]), "explainers": list(results["explainers"])},
                         extras=docs["extras"])
    else:
        results["files"] = {}
    atomic_write_json(out / "results.json", results)
    return results


def _assert_pngs(out: Path, files: Dict[str, List[str]]) -> None:
    for check, names in files.items():
        assert names, check
        for name in names:
            data = (out / name).read_bytes()
            assert data[:8] == PNG and len(data) > 2000, (check, name, len(data))


def expected_files(sites: Sequence[str] = SITES) -> Dict[str, set]:
    return {
        "sae_reconstruction": {"sae_reconstruction_frontier.png"},
        "sae_randomized_control": {f"sae_randomized_control_contexts_{s}_{n}.png" for s in sites for n in SAES}
        | {"sae_randomized_control_differences.png"} | {f"sae_randomized_control_share_{s}.png" for s in sites},
        "sae_splitting": {f"sae_splitting_tree_{s}_{n}.png" for s in sites for n in SAES}
        | {f"sae_splitting_children_{s}.png" for s in sites},
        "sae_baselines": {f"sae_baselines_auroc_{s}.png" for s in sites},
        "sae_seed_similarity": {f"sae_seed_similarity_{s}.png" for s in sites},
    }


def test_every_sae_figure_is_drawn_from_the_documents(tmp_path):
    results = write_run(tmp_path, sae_documents(sites=SITES[:1]))
    files = draw_sae(tmp_path, results, load_figure_maps(tmp_path, results))
    assert {c: set(v) for c, v in files.items()} == expected_files(SITES[:1])
    _assert_pngs(tmp_path, files)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_a_run_without_some_checks_draws_only_the_others(tmp_path):
    results = write_run(tmp_path, sae_documents(("sae_reconstruction", "sae_baselines")))
    files = draw_sae(tmp_path, results, load_figure_maps(tmp_path, results))
    assert set(files) == {"sae_reconstruction", "sae_baselines"}
    drawn = {p.name for p in tmp_path.glob("*.png")}
    assert drawn == expected_files()["sae_reconstruction"] | expected_files()["sae_baselines"]
    _assert_pngs(tmp_path, files)


def test_without_figure_maps_only_the_figures_that_need_them_are_left_out(tmp_path):
    """No figure-maps file: contexts and trees (the checks' figure data) are left out; the frontier, forest plot,
    AUROC bars and histograms come from results.json alone."""
    results = write_run(tmp_path, sae_documents(sites=SITES[1:]), with_maps=False)
    assert load_figure_maps(tmp_path, results) is None
    files = draw_sae(tmp_path, results, None)
    exp = expected_files(SITES[1:])
    assert set(files["sae_randomized_control"]) == exp["sae_randomized_control"] - {
        f"sae_randomized_control_contexts_{s}_{n}.png" for s in SITES for n in SAES}
    assert set(files["sae_splitting"]) == {f"sae_splitting_children_{s}.png" for s in SITES[1:]}
    assert set(files["sae_baselines"]) == exp["sae_baselines"]
    assert set(files["sae_reconstruction"]) == exp["sae_reconstruction"]
    _assert_pngs(tmp_path, files)


def test_write_figures_dispatches_an_activations_run_to_draw_sae(tmp_path):
    """``sanitycheck figures OUT`` on an SAE run: the activations modality names draw_sae."""
    from sanitycheck.report.run_figures import write_figures

    write_run(tmp_path, sae_documents(("sae_seed_similarity",)))
    files = write_figures(tmp_path)
    assert files == {"sae_seed_similarity": [f"sae_seed_similarity_{s}.png" for s in SITES]}


def test_a_check_listed_without_data_gets_no_figure(tmp_path):
    docs = sae_documents(("sae_reconstruction", "sae_seed_similarity"))
    docs["results"]["records"], docs["results"]["summaries"], docs["results"]["per_sample"] = [], {}, {}
    docs["extras"]["text_checks"] = {}
    results = write_run(tmp_path, docs)
    assert draw_sae(tmp_path, results, load_figure_maps(tmp_path, results)) == {}
    assert not list(tmp_path.glob("*.png"))


def test_frontier_points_read_record_cis_and_loss_recovered():
    docs = sae_documents(("sae_reconstruction",))
    pts = frontier_points(docs["results"], docs["extras"])
    p = pts["lm.mlp"]["sae_topk"]
    assert p["l0"] == pytest.approx(38.0) and p["l0_ci"] == pytest.approx((36.5, 39.5))
    assert p["fvu"] == pytest.approx(0.2) and p["fvu_ci"] == pytest.approx((0.18, 0.22))
    assert p["loss_recovered"] == pytest.approx(0.7) and p["loss_recovered_ci"] == pytest.approx((0.67, 0.73))
    assert p["d_sae"] == 512 and p["dead_fraction"] == pytest.approx(0.05)
    # without records, the figure data's frontier still places the points (no CIs)
    docs["results"]["records"] = []
    docs["results"]["summaries"] = {}
    p = frontier_points(docs["results"], docs["extras"])["minilm.l3"]["sae_relu"]
    assert p["l0"] == pytest.approx(9.0) and "l0_ci" not in p and p["loss_recovered"] == pytest.approx(0.8)


def test_splitting_tree_reads_both_children_shapes(tmp_path):
    dicts = {"parents": [{"parent": 2, "n_children": 2, "children": [{"child": 5, "similarity": 0.9},
                                                                      {"child": 6, "similarity": 0.55}]}]}
    ints = {"parents": [{"parent": 5, "children": [11, 12], "cosines": [0.7]}, {"children": [3]}, "junk"]}
    assert _parent_entries(dicts) == [(2, [(5, 0.9), (6, 0.55)])]
    assert _parent_entries(ints) == [(5, [(11, 0.7), (12, None)])]
    assert _parent_entries({}) == []
    p = plot_splitting_tree(tmp_path / "t.png", "tree", {"x4->x8": ints, "x2->x4": dicts}, threshold=0.5)
    assert p.read_bytes()[:8] == PNG
