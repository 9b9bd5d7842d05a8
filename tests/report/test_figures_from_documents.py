"""Figures are functions of a run's documents (results.json and the figure maps it names), never of the live run:
an image run's figures are redrawn, byte for byte, by ``sanitycheck figures OUT`` in a process that cannot import
the engine or any model; figure modules import no engine module; bad figure-maps files are refused clearly."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import digits_batch, make_tiny_cnn
from sanitycheck.data import ImageDataset
from sanitycheck.explainers import get_explainer
from sanitycheck.report.figure_maps import (FIGURE_MAPS_FILE, FigureMapsError, load_figure_maps,
                                            save_figure_maps)
from sanitycheck.runner import AuditRun
from sanitycheck.suites import parse_suite
from sanitycheck.validation import schema_problems

ROOT = Path(__file__).resolve().parents[2]

#: a process that redraws figures may not import these: the engine and the models
BLOCKED = ("sanitycheck.runner", "sanitycheck.text_runner", "sanitycheck.engine", "sanitycheck.models")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A tiny image run with a randomization check, a check that transforms explainers (smooth MPRT) and a
    faithfulness family (deletion: curves and perturbation sequences), figures on."""
    suite = parse_suite({
        "name": "unitfig", "version": "0.0.1", "description": "figures from documents", "seed": 0,
        "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 16, "figure_images": 2,
        "explainers": ["gradient", "sobel"], "metrics": ["spearman_abs", "ssim"],
        "checks": [{"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}},
                   {"name": "smooth_mprt", "params": {"n_samples": 2},
                    "verdict": {"metric": "spearman_abs", "threshold": 0.5}},
                   {"name": "deletion", "params": {"n_steps": 4}}]})
    x, y = digits_batch(8)
    data = ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")
    out = tmp_path_factory.mktemp("figrun") / "out"
    res = AuditRun(suite, out_dir=out, model=make_tiny_cnn(0), dataset=data,
                   explainer_objects={"gradient": get_explainer("gradient"), "sobel": get_explainer("sobel")},
                   progress=False, figures=True).execute()
    return out, res


def _pngs(d: Path):
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.png"))}


def test_results_name_the_figure_maps_file_and_still_match_the_schema(image_run):
    out, res = image_run
    assert res["files"] == {"figure_maps": FIGURE_MAPS_FILE}
    assert (out / FIGURE_MAPS_FILE).is_file()
    assert json.loads((out / "results.json").read_text())["files"] == {"figure_maps": FIGURE_MAPS_FILE}
    assert schema_problems(res) == []
    fm = load_figure_maps(out, res)
    assert fm.k == 2 and fm.inputs.shape == (2, 1, 16, 16)
    assert set(fm.originals) == {"gradient", "sobel"} and fm.originals["gradient"].shape == (2, 16, 16)
    assert set(fm.variant_originals) == {"smooth_mprt"}
    assert fm.states["cascading_randomization"].keys() == set(res["checks"]["cascading_randomization"]["steps"])
    assert "deletion" not in fm.states  # evaluation checks keep no per-state maps
    curves = fm.extras["curves"]["deletion"]  # the sequence figures' panel values, full precision
    assert set(curves) == {"gradient", "sobel"} and set(curves["gradient"]) == {str(i) for i in range(5)}
    assert curves["gradient"]["0"].dtype == torch.float64 and curves["gradient"]["0"].shape == (2,)
    assert fm.scope == {"checks": ["cascading_randomization", "smooth_mprt", "deletion"],
                        "explainers": ["gradient", "sobel"]}


def test_published_documents_do_not_name_the_run_local_figure_maps(image_run):
    from sanitycheck.results import split_by_explainer

    _, res = image_run
    assert all("files" not in doc for doc in split_by_explainer(res).values())


def test_an_image_run_is_redrawn_byte_for_byte_without_engine_or_model(image_run, tmp_path):
    out, res = image_run
    before = _pngs(out)
    drawn = {f for files in res["figures"].values() for f in files}
    assert set(before) == drawn and {"cascading_randomization_maps.png", "smooth_mprt_maps.png",
                                     "deletion_curves.png", "deletion_sequence_1.png"} <= drawn
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.png", "cache"))  # no maps cache, no figures
    block = ("import sys\n"
             "class Block:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             f"        if name.startswith({BLOCKED!r}):\n"
             "            raise ImportError('figures must not import ' + name)\n"
             "sys.meta_path.insert(0, Block())\n"
             "from sanitycheck.cli import main\n"
             f"sys.exit(main(['figures', {str(copy)!r}]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SANITYCHECK_CACHE": str(tmp_path / "empty-cache"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", block], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"redrew {len(before)} figure(s)" in proc.stdout
    assert _pngs(copy) == before  # same names, same bytes


def test_figures_of_a_run_without_figure_maps_are_the_ones_that_need_no_maps(image_run, tmp_path):
    from sanitycheck.report.run_figures import write_figures

    out, res = image_run
    old = {k: v for k, v in res.items() if k != "files"}  # a results.json written before figure maps existed
    files = write_figures(tmp_path, old)
    names = {f for fs in files.values() for f in fs}
    assert "cascading_randomization_spearman_abs.png" in names and "deletion_curves.png" in names
    assert not {n for n in names if n.endswith("_maps.png") or "_sequence_" in n}
    assert (tmp_path / "cascading_randomization_spearman_abs.png").read_bytes() == \
        (out / "cascading_randomization_spearman_abs.png").read_bytes()


def test_report_modules_import_no_engine_module():
    """Reports read documents: no module of sanitycheck/report imports the runner, the text runner or the engine."""
    bad = []
    for path in sorted((ROOT / "sanitycheck" / "report").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                mod = "." * node.level + (node.module or "")
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.lstrip(".").split(".")
                if parts and parts[0] == "sanitycheck":
                    parts = parts[1:]
                if parts and parts[0] in ("runner", "text_runner", "engine"):
                    bad.append(f"{path.name}: {name}")
    assert bad == []


def test_figure_maps_file_refuses_bad_names_missing_and_corrupt_files(tmp_path):
    name = save_figure_maps(tmp_path, inputs=torch.zeros(2, 1, 4, 4), originals={"g": torch.ones(2, 4, 4)},
                            states={"c": {"s": {"g": torch.ones(2, 4, 4)}}}, extras={"note": [1, 2.5, "x"]})
    fm = load_figure_maps(tmp_path, {"files": {"figure_maps": name}})
    assert fm.extras == {"note": [1, 2.5, "x"]} and torch.equal(fm.states["c"]["s"]["g"], torch.ones(2, 4, 4))
    assert load_figure_maps(tmp_path, {}) is None  # an old run: no figure maps
    with pytest.raises(FigureMapsError, match="not a path"):
        load_figure_maps(tmp_path, {"files": {"figure_maps": "../x.pt"}})
    with pytest.raises(FigureMapsError, match="does not exist"):
        load_figure_maps(tmp_path, {"files": {"figure_maps": "other.pt"}})
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FigureMapsError, match="corrupt"):
        load_figure_maps(tmp_path, {"files": {"figure_maps": name}})
    with pytest.raises(FigureMapsError, match="first dimension 2"):
        save_figure_maps(tmp_path, inputs=torch.zeros(2, 1, 4, 4), originals={"g": torch.ones(3, 4, 4)}, states={})


def test_figures_command_on_a_directory_without_results_is_a_clear_error(tmp_path, capsys):
    from sanitycheck.cli import main

    assert main(["figures", str(tmp_path)]) == 2
    assert "holds no results.json" in capsys.readouterr().err


def test_maps_figures_are_drawn_for_every_figure_image(image_run):
    """Adebayo et al.'s Figure 2 for several inputs: one maps figure per figure image (the suite's
    figure_images is 2), image 0 under the name it always had."""
    from PIL import Image

    out, res = image_run
    drawn = res["figures"]["cascading_randomization"]
    assert "cascading_randomization_maps.png" in drawn and "cascading_randomization_maps_1.png" in drawn
    assert "cascading_randomization_maps_2.png" not in drawn and not (out / "cascading_randomization_maps_2.png").exists()
    assert "smooth_mprt_maps_1.png" in res["figures"]["smooth_mprt"]
    first, second = (out / "cascading_randomization_maps.png"), (out / "cascading_randomization_maps_1.png")
    assert first.read_bytes() != second.read_bytes()  # another image's maps, not a copy
    with Image.open(first) as a, Image.open(second) as b:
        assert a.size == b.size


def test_long_cascades_on_photos_show_every_kth_step_and_the_last(tmp_path):
    from PIL import Image

    from sanitycheck.report.figures import plot_state_maps, shown_steps

    assert shown_steps([str(i) for i in range(5)]) == ([0, 1, 2, 3, 4], "")
    idx, note = shown_steps([f"block{i}" for i in range(20)])
    assert idx == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 19] and "1 in 2 of the 20 steps" in note
    assert shown_steps([str(i) for i in range(12)])[1] == "" and len(shown_steps([str(i) for i in range(13)])[0]) <= 12
    g = torch.Generator().manual_seed(0)
    steps = [f"block{i}" for i in range(20)]
    maps = {name: [torch.rand(224, 224, generator=g) for _ in range(21)] for name in ("gradient", "gradcam")}
    path = plot_state_maps(tmp_path / "m.png", "photo", torch.rand(3, 224, 224, generator=g), list(maps), steps, maps)
    with Image.open(path) as im:
        # input + original + 11 of the 20 steps, 1.6-inch panels at 110 dpi
        assert im.size[0] == round((1.6 * 13 + 1.2) * 110)
