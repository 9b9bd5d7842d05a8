"""Issue 10, data: the README's text_file command end to end, train/test split rules, and long texts bounded."""

from __future__ import annotations

import csv
import json

import pytest

from sanitycheck.cli import main
from sanitycheck.data.text import load_text_file
from sanitycheck.errors import DataError
from sanitycheck.models.text_zoo import MAX_TOKENS, TextEncoder, load_text_task

POS, NEG = ["great", "wonderful", "fine", "superb"], ["dull", "awful", "boring", "bad"]
FILLER = "the movie film plot was acting and a of this it".split()
LONG = ("a long review of the plot " * 4000)[:100_000] + " great"  # 100k characters, ~23k tokens


def _rows(n=48, split=True, long_first=False):
    rows = []
    for i in range(n):
        lab = i % 2
        words = [FILLER[(i * 7 + k) % len(FILLER)] for k in range(6)]
        words.insert(i % 7, (POS if lab else NEG)[i % 4])
        row = {"text": " ".join(words), "label": "pos" if lab else "neg"}
        if split:
            row["split"] = "test" if i % 4 in (0, 1) else "train"
        rows.append(row)
    if long_first:
        rows[0]["text"] = LONG
    return rows


def _write(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------- split rules
def test_split_column_selects_rows_and_classes_come_from_the_whole_file(tmp_path):
    rows = _rows()
    rows[2]["label"] = "meh"  # a class present only in the train split
    p = _write(tmp_path / "reviews.csv", rows)
    train, test = load_text_file(p, split="train"), load_text_file(p, split="test")
    assert len(train) == 24 and len(test) == 24
    assert train.classes == test.classes == ["meh", "neg", "pos"]
    assert test.meta["split_rule"] == "column 'split' == 'test'" and test.meta["split_counts"] == {"test": 24, "train": 24}
    assert train.checksum != test.checksum and train.meta["split_rule"] == "column 'split' == 'train'"
    assert len(load_text_file(p)) == 48
    with pytest.raises(DataError, match=r"no row has split='validation'.*'test': 24"):
        load_text_file(p, split="validation")
    rows[5]["split"] = " "
    with pytest.raises(DataError, match=r"empty 'split' in row\(s\) 6"):
        load_text_file(_write(tmp_path / "blank.csv", rows), split="train")


def test_directory_of_split_files(tmp_path):
    rows = _rows(split=False)
    _write(tmp_path / "train.csv", rows[:30])
    _write(tmp_path / "test.csv", rows[30:])
    train, test = load_text_task("text_file", {"path": str(tmp_path)})
    assert (len(train), len(test)) == (30, 18)
    assert train.meta["split_rule"].startswith("file train.csv") and test.meta["split_rule"].startswith("file test.csv")
    with pytest.raises(DataError, match="needs split='train' or split='test'"):
        load_text_file(tmp_path)
    (tmp_path / "test.csv").unlink()
    with pytest.raises(DataError, match="holds no test.csv"):
        load_text_file(tmp_path, split="test")


def test_training_and_testing_on_the_same_file_is_refused_unless_asked(tmp_path):
    p = _write(tmp_path / "reviews.csv", _rows(split=False))
    with pytest.raises(DataError, match=r"same 48 texts for training and for testing.*'split' column.*train_on_test=true"):
        load_text_task("text_file", {"path": str(p)})
    train, test = load_text_task("text_file", {"path": str(p)}, train_on_test=True)
    assert train.checksum == test.checksum and len(train) == 48


def test_a_field_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    rows = _rows(split=False)
    rows[0]["text"] = "word " * 60_000  # 300k characters: the csv module's default limit is 131072
    ds = load_text_file(_write(tmp_path / "big.csv", rows))
    assert len(ds.texts[0]) == 60_000


# ------------------------------------------------------------------------------------------- long texts
def test_a_100k_character_text_is_cut_to_the_models_limit_and_recorded(tmp_path):
    p = _write(tmp_path / "r.csv", _rows(long_first=True))
    test = load_text_file(p, split="test")
    assert len(test.texts[0]) > 20_000  # tokenizing 100k characters is linear (a regex): the file keeps it all
    from sanitycheck.data.text import Vocabulary

    enc = TextEncoder("vocabulary", vocabulary=Vocabulary.build(test.texts), classes=test.classes,
                      max_len=MAX_TOKENS, truncate=True)
    batch = enc.encode(test)
    assert batch.ids.shape == (24, MAX_TOKENS) and int(batch.lengths[0]) == MAX_TOKENS
    assert batch.pieces[0] == test.texts[0][:MAX_TOKENS]
    assert batch.truncation == {"texts": 1, "max_tokens": MAX_TOKENS, "longest": len(test.texts[0]),
                                "rule": f"the first {MAX_TOKENS} tokens of a longer text are kept", "indices": [0]}
    short = test.head(1)
    short.texts[0] = short.texts[0][:5]
    assert enc.encode(short).truncation is None  # nothing cut, nothing recorded
    strict = TextEncoder("vocabulary", vocabulary=enc.vocabulary, classes=test.classes, max_len=MAX_TOKENS)
    with pytest.raises(DataError, match=rf"text 0 of 'r' has {len(test.texts[0])} tokens, more than the model's maximum 512"):
        strict.encode(test)


# ------------------------------------------------------------------------------------------- end to end
TINY = ["--model-param", "embed_dim=8", "--model-param", "hidden=8", "--model-param", "epochs=1"]


def _run(tmp_path, data_root, *extra):
    out = tmp_path / "out"
    args = ["run", "jain_wallace2019", "--dataset", "text_file", "--data-root", str(data_root), "--out", str(out),
            "--n", "8", "--checks", "importance_agreement", "--explainers", "attention,gradient,leave_one_out",
            "--cache-dir", str(tmp_path / "cache"), "--no-figures", "--no-progress", *TINY, *extra]
    return main(args), out


def test_readme_text_file_command_runs_on_a_csv_with_a_split_column(tmp_path):
    p = _write(tmp_path / "reviews.csv", _rows(long_first=True))
    code, out = _run(tmp_path, p, "--model-param", "max_tokens=64")  # leave-one-out stays cheap at 64 tokens
    assert code in (0, 1)  # 1: a verdict failed; the run itself completed
    doc = json.loads((out / "results.json").read_text())
    assert doc["dataset"]["name"] == "text_file" and doc["dataset"]["n"] == 8
    assert doc["dataset"]["split_rule"] == "column 'split' == 'test'"
    assert doc["dataset"]["truncation"]["texts"] == 1 and doc["dataset"]["truncation"]["max_tokens"] == 64
    assert doc["dataset"]["truncation"]["longest"] > 20_000
    assert doc["dataset"]["max_length"] == 64 and doc["model"]["params"]["max_tokens"] == 64
    assert doc["model"]["info"]["n_train"] == 24 and doc["model"]["info"]["n_test"] == 24
    assert "train_on_test" not in doc["model"]["info"]
    assert any(r["check"] == "importance_agreement" for r in doc["records"])


def test_readme_text_file_command_refuses_one_unsplit_file_unless_asked(tmp_path, capsys):
    p = _write(tmp_path / "reviews.csv", _rows(split=False))
    code, out = _run(tmp_path, p)
    assert code == 2
    assert "train_on_test=true" in capsys.readouterr().err
    assert not (out / "results.json").exists()
    code, out = _run(tmp_path, p, "--model-param", "train_on_test=true")
    assert code in (0, 1)
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"]["info"]["train_on_test"] is True and doc["model"]["params"]["train_on_test"] is True
