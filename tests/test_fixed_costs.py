"""Fixed per-run costs computed once per process (issue 12), and recomputed when what they describe changes."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys

import pytest

from sanitycheck import provenance, results
from sanitycheck.errors import ConfigError
from sanitycheck.suites import parse_suite


def _bump_mtime(path, ns):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + ns))


def test_source_text_memo_is_reused_and_invalidated_by_an_edit(tmp_path, monkeypatch):
    mod = tmp_path / "memo_mod_speed.py"
    mod.write_text("class Thing:\n    x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = importlib.import_module("memo_mod_speed")
    first = provenance.source_text(m.Thing)
    key1 = provenance.source_key(m.Thing)
    assert "x = 1" in first

    real = inspect.getsource
    calls = []
    monkeypatch.setattr(inspect, "getsource", lambda o: calls.append(o) or real(o))
    assert provenance.source_text(m.Thing) == first
    assert calls == [], "an unchanged file is read from the memo"

    mod.write_text("class Thing:\n    x = 2  # edited\n")
    _bump_mtime(mod, 10 ** 9)
    second = provenance.source_text(m.Thing)
    assert "x = 2" in second and calls == [m.Thing]
    assert provenance.source_key(m.Thing) != key1, "an edited source changes the hash"
    sys.modules.pop("memo_mod_speed", None)


def test_explainer_code_hash_unchanged_by_the_memo():
    from sanitycheck.explainers import get_explainer

    e = get_explainer("guided_gradcam")
    provenance._SOURCE_MEMO.clear()
    cold = e.code_hash()
    assert e.code_hash() == cold
    assert len(provenance._SOURCE_MEMO) > 0


def test_suite_validation_error_is_the_same_with_the_cached_validator():
    import jsonschema

    from sanitycheck.suites import SUITE_SCHEMA

    bad = {"name": "x", "version": "1", "description": "d", "dataset": {"name": "fashion_mnist"},
           "model": {"name": "fmnist_cnn"}, "explainers": ["gradient"], "metrics": ["spearman_abs"],
           "checks": [{"name": "random_logit"}], "batch_size": "big"}
    with pytest.raises(jsonschema.ValidationError) as ref:
        jsonschema.validate(bad, SUITE_SCHEMA)
    for _ in range(2):  # cold and warm validator
        with pytest.raises(ConfigError) as err:
            parse_suite(bad)
        assert ref.value.message in str(err.value)


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_git_hash_memo_follows_edits_and_commits(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("a = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head1 = _git(tmp_path, "rev-parse", "HEAD")
    assert results.git_hash(pkg) == head1
    assert results.git_hash(pkg) == head1  # from the memo
    assert results._GIT_MEMO[str(pkg)][0] is not None

    (pkg / "a.py").write_text("a = 2\n")
    _bump_mtime(pkg / "a.py", 10 ** 9)
    assert results.git_hash(pkg) == head1 + "-dirty"

    _git(tmp_path, "commit", "-q", "-am", "two")
    head2 = _git(tmp_path, "rev-parse", "HEAD")
    assert head2 != head1
    assert results.git_hash(pkg) == head2


def test_git_hash_outside_git_is_none(tmp_path):
    assert results.git_hash(tmp_path) is None


def test_package_versions_memo_hands_out_copies():
    v = results.package_versions()
    assert v["python"]
    v["torch"] = "tampered"
    assert results.package_versions()["torch"] != "tampered"
