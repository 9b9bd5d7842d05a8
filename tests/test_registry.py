from importlib.metadata import EntryPoint

import pytest

from sanitycheck import registry as registry_module
from sanitycheck.errors import UnknownNameError
from sanitycheck.registry import EXPLAINERS, Registry, load_object


def test_unknown_name_gets_did_you_mean():
    with pytest.raises(UnknownNameError) as err:
        EXPLAINERS.get("smoothgard")
    assert "Did you mean 'smoothgrad'" in str(err.value)


def test_builtins_are_lazy_until_asked_for():
    reg = Registry("thing", "sanitycheck.test_things")
    reg.register("json_dumps", "json:dumps")
    assert "json_dumps" in reg and "json_dumps" in reg._lazy
    import json

    assert reg.get("json_dumps") is json.dumps


def test_entry_points_add_parts_without_touching_the_package(monkeypatch):
    reg = Registry("explainer", "sanitycheck.explainers")
    fake = [EntryPoint(name="my_method", value="json:loads", group="sanitycheck.explainers")]
    monkeypatch.setattr(registry_module, "entry_points",
                        lambda group: [e for e in fake if e.group == group])
    import json

    assert "my_method" in reg.names() and reg.get("my_method") is json.loads


def test_import_paths_and_files(tmp_path):
    f = tmp_path / "method.py"
    f.write_text("def explain(model, x, target):\n    return x\n")
    assert load_object(f"{f}:explain").__name__ == "explain"
    assert EXPLAINERS.get("json:dumps").__name__ == "dumps"
    with pytest.raises(UnknownNameError, match="has no attribute"):
        load_object("json:nope")
    with pytest.raises(UnknownNameError, match="does not exist"):
        load_object(str(tmp_path / "missing.py") + ":f")


def test_double_registration_needs_overwrite():
    reg = Registry("thing", "sanitycheck.test_things")
    reg.register("a", 1)
    with pytest.raises(ValueError):
        reg.register("a", 2)
    reg.register("a", 2, overwrite=True)
    assert reg.get("a") == 2
