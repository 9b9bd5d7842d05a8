"""Leaderboard fixtures: real result documents of a tiny suite (an untrained CNN on 12 digits, no
training), split into per-method submissions; a board directory; and a headless Chromium session."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict

import pytest

from leaderboard_helpers import (CHROMIUM, EVIL_SOURCE, METHODS, SUITE, SUITE_YAML, chromedriver_path,
                                 chromedriver_session, tampered, write_submission)

@pytest.fixture(scope="session")
def tiny_docs(tmp_path_factory) -> Dict[str, Any]:
    """{"suites": dir holding tinyboard.yaml, "docs": {method: submission document}} from one real run."""
    from helpers import digits_batch, make_tiny_cnn
    from sanitycheck.data import ImageDataset
    from sanitycheck.explainers import get_explainer
    from sanitycheck.results import split_by_explainer
    from sanitycheck.runner import AuditRun
    from sanitycheck.suites import load_suite

    base = tmp_path_factory.mktemp("tinyboard")
    suites = base / "suites"
    suites.mkdir()
    (suites / f"{SUITE}.yaml").write_text(SUITE_YAML, encoding="utf-8")
    x, y = digits_batch(12)
    dataset = ImageDataset("digits16", x, y, [str(i) for i in range(10)], "sklearn", "test")
    model = make_tiny_cnn(0)
    model.sanitycheck_info = {"test_accuracy": 0.125}
    results = AuditRun(load_suite(str(suites / f"{SUITE}.yaml")), out_dir=base / "run", model=model, dataset=dataset,
                       explainer_objects={m: get_explainer(m) for m in METHODS}, progress=False,
                       figures=False).execute()
    # the board checks each method's source hash against the installed source: a real file, whose path carries
    # markup so that the escaping of the source column is tested too
    import hashlib

    source = base / f"{EVIL_SOURCE}.py"
    source.write_text("# stands in for the methods' source in the leaderboard tests\n", encoding="utf-8")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    docs = {}
    for name, doc in split_by_explainer(results).items():
        doc["method"] = {"name": name, "source": f"{source}:{name}", "source_sha256": digest}
        doc["model"]["weights_sha256"] = hashlib.sha256(b"tiny cnn, seed 0").hexdigest()
        docs[name] = doc
    return {"suites": suites, "docs": docs}


@pytest.fixture
def board_root(tiny_docs, tmp_path, monkeypatch) -> Path:
    """tmp/leaderboard with the three valid submissions, a tampered copy of `gradient` and a submission whose
    method name carries HTML; SANITYCHECK_SUITES points at the tiny suite so validation can find it."""
    monkeypatch.setenv("SANITYCHECK_SUITES", str(tiny_docs["suites"]))
    root = tmp_path / "leaderboard"
    for doc in tiny_docs["docs"].values():
        write_submission(root, doc)
    write_submission(root, tampered(tiny_docs["docs"]["gradient"], "gradient_edited"))
    evil = copy.deepcopy(tiny_docs["docs"]["sobel"])
    evil["method"]["name"] = "<script>alert('name')</script>"
    write_submission(root, evil, method="evil_name")
    return root


@pytest.fixture
def chromium(tmp_path):
    """A WebDriver session on headless Chromium; skipped only when Chromium or chromedriver is not installed."""
    if not os.path.exists(CHROMIUM) or chromedriver_path() is None:
        pytest.skip("Chromium not installed: apt-get install chromium chromium-driver")
    with chromedriver_session(tmp_path / "chromium-profile") as wd:
        yield wd
