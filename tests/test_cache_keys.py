"""Cache files are keyed by the explainer's canonical spec (class, code hash, config; for a file explainer its
content hash), never by the raw name the user typed (issue 10: an absolute-path explainer wrote ``m.py:fn.pt``
beside the user's source file and crashed; a ``../`` one reported fc2's value at every step)."""

import hashlib
import os

import pytest
from helpers import digits_batch, make_tiny_cnn
from sanitycheck.engine import run as engine_run
from sanitycheck.data import ImageDataset
from sanitycheck.explainers import get_explainer
from sanitycheck.registry import file_module_name
from sanitycheck.runner import AuditRun, explainer_cache_key
from sanitycheck.suites import parse_suite

SOURCE = '''
from sanitycheck.explainers import get_explainer

_gradient = get_explainer("gradient")


def fn(model, x, target):
    return _gradient(model, x, target)
'''


def suite():
    return parse_suite({
        "name": "unit", "version": "0.0.1", "description": "cache key tests",
        "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "batch_size": 4, "figure_images": 2,
        "explainers": ["gradient"], "metrics": ["spearman_abs", "ssim"],
        "checks": [{"name": "cascading_randomization", "verdict": {"metric": "spearman_abs", "threshold": 0.5}}],
    })


@pytest.fixture
def dataset():
    x, y = digits_batch(8)
    return ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """tmp/src/m.py (the user's explainer) and tmp/work (the current directory)."""
    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    work.mkdir()
    (src / "m.py").write_text(SOURCE)
    monkeypatch.chdir(work)
    return tmp_path, src, work


def run(out, spec, dataset):
    return AuditRun(suite(), out_dir=out, model=make_tiny_cnn(0), dataset=dataset, explainers=[spec],
                    progress=False, figures=False).execute()


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_absolute_relative_and_dotdot_specs_give_identical_results_and_write_only_under_out(layout, dataset):
    tmp, src, work = layout
    specs = {"abs": f"{src / 'm.py'}:fn", "dotdot": "../src/m.py:fn", "rel": "../work/../src/m.py:fn"}
    before = set(files_under(tmp))
    results = {k: run(work / "outs" / k, spec, dataset) for k, spec in specs.items()}
    # nothing written beside the user's file, nor anywhere outside --out
    assert files_under(src) == ["m.py"]
    new = set(files_under(tmp)) - before
    assert new and all(f.startswith("work/outs/") for f in new), sorted(new)
    assert not any(":" in f for f in new)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "explainer"} for r in rs]  # noqa: E731
    a = results["abs"]
    for k in ("dotdot", "rel"):
        assert strip(results[k]["records"]) == strip(a["records"])
        assert strip(results[k]["verdicts"]) == strip(a["verdicts"])
        assert results[k]["per_sample"][specs[k]] == a["per_sample"][specs["abs"]]
    # the document names the explainer as the user gave it
    for k, spec in specs.items():
        assert list(results[k]["explainers"]) == [spec]
    # each step has its own file: the steps' scores differ (a shared file gave fc2's value at every step)
    steps = [r for r in a["records"] if r["metric"] == "spearman_abs" and r["step"] != "original"]
    assert len(steps) == 4 and len({r["mean"] for r in steps}) == 4


def test_the_file_explainers_module_name_comes_from_its_content(layout):
    tmp, src, work = layout
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    assert file_module_name(src / "m.py", SOURCE.encode()) == f"_sanitycheck_user_m_{digest}"
    a = get_explainer(f"{src / 'm.py'}:fn")
    b = get_explainer("../src/m.py:fn")
    assert a.config() == b.config() == {"function": f"_sanitycheck_user_m_{digest}.fn"}
    assert explainer_cache_key(f"{src / 'm.py'}:fn", a) == explainer_cache_key("../src/m.py:fn", b)
    # the readable part is the attribute's name, never a path
    assert explainer_cache_key(f"{src / 'm.py'}:fn", a).startswith("fn-")


def test_a_file_explainer_resumes_and_an_edited_one_is_recomputed(layout, dataset, monkeypatch):
    tmp, src, work = layout
    out = work / "out"
    first = run(out, f"{src / 'm.py'}:fn", dataset)
    (out / "results.json").unlink()
    calls = []
    real = engine_run.explain_maps
    monkeypatch.setattr(engine_run, "explain_maps", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run(out, "../src/m.py:fn", dataset)  # another spelling of the same file: resumes from the cache
    assert calls == []
    assert again["per_sample"]["../src/m.py:fn"] == first["per_sample"][f"{src / 'm.py'}:fn"]

    (src / "m.py").write_text(SOURCE.replace("_gradient(model, x, target)", "_gradient(model, x, target).abs()"))
    run(out, "../src/m.py:fn", dataset)
    assert len(calls) == 5  # original maps and four randomized states: the edited file is not the cached one


def test_cache_paths_are_single_safe_components(tmp_path):
    from sanitycheck.runner import _path_part

    for text in ("../x", "/abs/m.py:fn", "a/b", "..", ".", ""):
        part = _path_part(text)
        assert "/" not in part and part not in ("..", ".", "") and not os.path.isabs(part)
    assert _path_part("layer1.0.conv1") == "layer1.0.conv1"
    assert _path_part("../x") != _path_part("__x")

