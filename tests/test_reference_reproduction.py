"""The board rests on the shipped weights: one committed leaderboard file per suite names the reference
weights' sha256 and re-validates, with re-run, on an empty model cache (a fresh machine).

Slow (a re-run per suite); the cheap half (the hash named in each file) runs always.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sanitycheck.models import weights as W

BOARD = Path(__file__).resolve().parent.parent / "leaderboard" / "submissions"
# one file per suite, and the reference weights its model is
FILES = {
    "gradient/adebayo2018.json": "fmnist_cnn",
    "gradient/petsiuk2018.json": "fmnist_cnn",
    "gradient/faithfulness.json": "fmnist_cnn",
    "attention/jain_wallace2019.json": "text_attention_rotten_tomatoes",
    "attention/jain_wallace2019_minilm.json": "minilm_attention_rotten_tomatoes",
    "attention/wiegreffe_pinter2019.json": "text_attention_synthetic_sentiment",
    "vit_chefer/clip_text2img.json": "tiny_clip",
}


@pytest.mark.parametrize("rel", sorted(FILES))
def test_each_committed_board_file_names_the_reference_weights(rel):
    doc = json.loads((BOARD / rel).read_text())
    entry = W.reference_entry(FILES[rel])
    assert doc["model"].get("reference_weights") is True, f"{rel}: not computed with the shipped weights"
    assert doc["model"].get("weights_sha256") == entry["weights_sha256"], rel


@pytest.mark.slow
@pytest.mark.parametrize("rel", sorted(FILES))
def test_each_committed_board_file_revalidates_on_an_empty_cache(rel, tmp_path, monkeypatch):
    from sanitycheck.submissions import validate_file

    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path / "cache"))  # a fresh machine: nothing trained
    monkeypatch.delenv(W.ENV_VAR, raising=False)

    assert validate_file(BOARD / rel, work_root=tmp_path / "validate") == []
    # every training path caches its checkpoint (*.pt) in the model cache: none may have been written, i.e.
    # nothing was retrained (patching the training functions would change the cache keys they are part of)
    written = [p for p in (tmp_path / "cache").rglob("*.pt") if "data" not in p.relative_to(tmp_path / "cache").parts]
    assert not written  # (generated data, e.g. the CLIP scenes, is cached under data/ and may be)
