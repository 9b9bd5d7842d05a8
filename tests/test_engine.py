"""One engine for every input kind: modalities own what differs, checks follow one contract, work is planned
as keyed units; nothing outside the modality registry compares input kinds."""

import ast
import re
from pathlib import Path

import pytest

import sanitycheck
from sanitycheck import engine
from sanitycheck.checks.base import NEEDS, get_check
from sanitycheck.engine.units import WorkUnit, shards, unit_key
from sanitycheck.errors import ConfigError, SanityCheckError
from sanitycheck.modalities import MODALITIES, modality_for
from sanitycheck.registry import CHECKS
from sanitycheck.suites import load_suite

PACKAGE = Path(sanitycheck.__file__).parent


def test_every_input_kind_has_a_modality_and_one_engine_class_runs_them_all(tmp_path):
    assert set(MODALITIES) == {"image", "text", "image_text", "activations"}
    for kind in MODALITIES:
        assert modality_for(kind).name == kind
    text = engine.audit_run_for(load_suite("jain_wallace2019"), out_dir=tmp_path / "t", progress=False)
    image = engine.audit_run_for(load_suite("adebayo2018"), out_dir=tmp_path / "i", explainers=["gradient"],
                                 progress=False)
    assert type(text) is type(image) is engine.AuditRun
    assert text.modality.name == "text" and image.modality.name == "image"
    assert image.out_dir == tmp_path / "i" and list(image.explainers) == ["gradient"]


def test_an_unknown_input_kind_is_named_with_the_known_ones():
    with pytest.raises(ConfigError) as info:
        modality_for("audio")
    assert isinstance(info.value, SanityCheckError)
    assert "'audio'" in str(info.value) and "image, image_text, text" in str(info.value)


def test_no_input_kind_comparison_outside_the_modality_registry():
    pattern = re.compile(r"""input_kind\s*[!=]=|[!=]=\s*input_kind|\.name\s*==\s*["'](text|image|image_text)["']""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "modalities":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_engine_reads_no_private_run_state_in_checks_and_sniffs_no_signatures():
    for path in [*(PACKAGE / "checks").glob("*.py"), *(PACKAGE / "engine").glob("*.py")]:
        text = path.read_text()
        assert "inspect.signature" not in text or path.name == "base.py", path
        assert "run._model" not in text and "run.train_data" not in text and "run.batch_slice" not in text, path
        assert "hasattr(check" not in text, path


def test_every_registered_check_follows_the_contract():
    for name in CHECKS.names():
        check = get_check(name)
        assert check.unit in ("state", "explainer", "check"), name
        assert set(check.needs) <= NEEDS, name
        if check.unit == "state":
            assert "model_states" in check.needs and callable(check.model_states), name
        elif check.unit == "explainer":
            assert "original_maps" in check.needs and callable(check.evaluate_maps), name
        else:
            assert callable(check.evaluate), name


def test_a_check_cannot_use_what_it_did_not_declare():
    from sanitycheck.engine.context import CheckContext

    check = get_check("cascading_randomization")
    ctx = CheckContext(check=check, modality=modality_for("image"), inputs=None, explainers={}, seed=0,
                       device="cpu", batch_size=4, progress=False, cache_dir=None)
    for attribute in ("originals", "dataset", "twin_model"):
        with pytest.raises(ConfigError, match="does not declare the need"):
            getattr(ctx, attribute)
    with pytest.raises(ConfigError, match="train_split"):
        ctx.train_split()


def test_unit_keys_are_deterministic_and_change_with_every_part():
    base = ("run", "state", "cascading_randomization", {"layers": None}, "fc2", "gradient-abc", (0, 16))
    key = unit_key(*base)
    assert key == unit_key(*base) and len(key) == 16
    for i, other in enumerate(["run2", "maps", "independent", {"layers": ["fc1"]}, "fc1", "gradient-abd", (0, 8)]):
        changed = list(base)
        changed[i] = other
        assert unit_key(*changed) != key
    unit = WorkUnit("state", "c", "../x", "g", (0, 16), key, "gradient-abc")
    path = unit.cache_path(Path("/out/cache"))
    assert path.is_relative_to("/out/cache") and ".." not in path.parts


def test_shards_cover_every_row_once():
    for n, size in ((10, 4), (8, 8), (1, 5), (17, 16)):
        rows = [i for a, b in shards(n, size) for i in range(a, b)]
        assert rows == list(range(n))


def test_engine_modules_do_not_import_reports_at_module_level():
    for path in sorted((PACKAGE / "engine").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                assert "report" not in node.module, (path, node.module)


def test_the_flat_api_reaches_the_engine():
    assert sanitycheck.run_suite is engine.run_suite
    assert sanitycheck.AuditRun is engine.AuditRun


def test_ls_shows_each_checks_work_unit_and_needs_and_the_modalities(capsys):
    from sanitycheck.cli import main

    assert main(["ls", "checks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = {line.split()[0]: line for line in lines[1:]}
    assert "state: model_states" in row["cascading_randomization"]
    assert "state: model_states, twin_model" in row["data_randomization"]
    assert "explainer: dataset, original_maps" in row["pointing_game"]
    assert "check: train_split" in row["seed_variance"]
    assert main(["ls", "modalities"]) == 0
    out = capsys.readouterr().out
    assert all(kind in out for kind in MODALITIES)


def test_the_training_split_is_loaded_once_per_run_and_shared_by_the_checks(tmp_path, monkeypatch):
    run = engine.audit_run_for(load_suite("wiegreffe_pinter2019"), out_dir=tmp_path, progress=False)
    loads = []
    monkeypatch.setattr(type(run.modality), "train_split", lambda self, inputs: loads.append(1) or ("train", "test"))
    run.inputs = object()  # what the modality would have loaded; the stub loader ignores it
    checks = [get_check(name) for name in ("seed_variance", "diagnostic_mlp", "adversarial_training")]
    assert all("train_split" in c.needs for c in checks)
    assert [run.context(c).train_split() for c in checks] == [("train", "test")] * 3
    assert loads == [1]
