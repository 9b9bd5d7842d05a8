"""The engine picks the run class by the suite's input kind; runner and text_runner do not import each other."""

import ast
from pathlib import Path

import pytest

import sanitycheck
from sanitycheck import engine, runner
from sanitycheck.errors import ConfigError, SanityCheckError
from sanitycheck.suites import load_suite

PACKAGE = Path(sanitycheck.__file__).parent


def _imported_modules(path: Path, package: str):
    """The modules a file of ``package`` imports anywhere (top level or inside functions), relative imports
    resolved against ``package`` (the package that holds the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            found.add(stem)
            found.update(f"{stem}.{a.name}" for a in node.names)
    return found


def test_each_input_kind_maps_to_its_run_class():
    from sanitycheck.text_runner import TextAuditRun

    assert engine.run_class_for("image") is runner.AuditRun
    assert engine.run_class_for("image_text") is runner.AuditRun
    assert engine.run_class_for("text") is TextAuditRun
    assert set(engine.RUN_CLASSES) == {"image", "image_text", "text"}


def test_audit_run_for_builds_the_class_of_the_suites_input_kind(tmp_path):
    from sanitycheck.text_runner import TextAuditRun

    text = engine.audit_run_for(load_suite("jain_wallace2019"), out_dir=tmp_path / "t", progress=False)
    image = engine.audit_run_for(load_suite("adebayo2018"), out_dir=tmp_path / "i", explainers=["gradient"],
                                 progress=False)
    assert type(text) is TextAuditRun
    assert type(image) is runner.AuditRun
    assert image.out_dir == tmp_path / "i" and list(image.explainers) == ["gradient"]


def test_an_unknown_input_kind_is_named_with_the_known_ones():
    with pytest.raises(ConfigError) as info:
        engine.run_class_for("audio")
    assert isinstance(info.value, SanityCheckError)
    assert "'audio'" in str(info.value) and "image, image_text, text" in str(info.value)


def test_runner_does_not_import_text_runner_and_the_engine_imports_neither():
    runner_imports = _imported_modules(PACKAGE / "runner.py", "sanitycheck")
    assert "sanitycheck.suites" in runner_imports  # the resolution works: runner's own imports are seen
    assert not any(m.startswith("sanitycheck.text_runner") for m in runner_imports)
    files = sorted((PACKAGE / "engine").glob("*.py"))
    assert files
    for path in files:
        imported = _imported_modules(path, "sanitycheck.engine")
        assert not any(m.startswith(("sanitycheck.runner", "sanitycheck.text_runner")) for m in imported), path


def test_the_flat_api_reaches_the_engine_and_runner_no_longer_picks_run_classes():
    assert sanitycheck.run_suite is engine.run_suite
    assert not hasattr(runner, "audit_run_for")
