"""The leaderboard's Markdown and HTML: rows and verdicts of every valid submission, controls marked,
tampered and malformed files refused visibly, untrusted strings escaped, thumbnails written."""

from __future__ import annotations

import copy
import re

from PIL import Image

from leaderboard_helpers import METHODS, SUITE, write_submission
from sanitycheck.report.leaderboard import build_leaderboard, format_score, format_verdict


def md_row(md: str, method: str) -> str:
    rows = [line for line in md.splitlines() if line.startswith(f"| `{method}`")]
    assert len(rows) == 1, f"expected one Markdown row for {method}, got {rows}"
    return rows[0]


def html_row(page: str, method: str) -> str:
    rows = re.findall(rf'<tr[^>]*data-method="{re.escape(method)}">(.*?)</tr>', page, flags=re.S)
    assert len(rows) == 1, f"expected one HTML row for {method}, got {len(rows)}"
    return rows[0]


def section(text: str, start: str, end: str = None) -> str:
    i = text.index(start)
    return text[i:text.index(end, i)] if end else text[i:]


def last_record(doc, check):
    rule = doc["checks"][check]["verdict_rule"]
    last = doc["checks"][check]["steps"][-1]
    return next(r for r in doc["records"] if (r["check"], r["metric"], r["step"]) == (check, rule["metric"], last))


def test_every_valid_method_has_a_row_with_its_verdicts_scores_and_thumbnails(board_root, tiny_docs):
    summary = build_leaderboard(board_root, rerun=False)
    assert sorted(summary["suites"]) == [SUITE] and sorted(summary["suites"][SUITE]) == sorted(METHODS)
    md = (board_root / "LEADERBOARD.md").read_text(encoding="utf-8")
    page = (board_root / "index.html").read_text(encoding="utf-8")
    assert "do not edit by hand" in md.splitlines()[2] + md.splitlines()[4] and "do not edit by hand" in page
    assert f"## {SUITE} v0.1.0" in md and "test accuracy 12.5%" in md and "(n = 12), seed 0" in md
    for method, doc in tiny_docs["docs"].items():
        row, hrow = md_row(md, method), html_row(page, method)
        for check in doc["checks"]:
            verdict = next(v for v in doc["verdicts"] if v["check"] == check)
            text = format_verdict(verdict)
            assert re.fullmatch(r"(pass|fail) -?\d\.\d{3} @ \w+", text)
            assert text in row and f"{verdict['measured']:.3f}" in hrow
            assert verdict["reason"].replace("'", "&#x27;") in hrow  # the tooltip carries the full reason
            score = format_score(last_record(doc, check))
            assert re.fullmatch(r"-?\d\.\d\d \[-?\d\.\d\d, -?\d\.\d\d\] n=\d+(, \d+ undefined)?", score), score
            assert score in row
        for kind in ("maps", "curves"):
            rel = f"assets/{SUITE}/{method}_{kind}.png"
            assert rel in summary["files"] and f"]({rel})" in row and f'src="{rel}"' in hrow
            with Image.open(board_root / rel) as im:
                w, h = im.size
            if kind == "maps":  # input, original and the 4 cascading steps of the tiny CNN
                assert 100 <= h <= 140 and w > 4 * h
            else:
                assert (w, h) == (320, 200)
        assert re.search(rf'alt="[^"]*{method}[^"]*{SUITE}', hrow)
    assert {"LEADERBOARD.md", "index.html"} <= set(summary["files"])
    assert not list(board_root.rglob("*.tmp")), "atomic writes leave no temporaries"


def test_model_ignoring_control_is_marked_and_fails_the_cascading_check(board_root, tiny_docs):
    build_leaderboard(board_root, rerun=False)
    md = (board_root / "LEADERBOARD.md").read_text(encoding="utf-8")
    page = (board_root / "index.html").read_text(encoding="utf-8")
    verdict = next(v for v in tiny_docs["docs"]["sobel"]["verdicts"] if v["check"] == "cascading_randomization")
    assert not verdict["passed"] and verdict["measured"] > 0.99
    row = md_row(md, "sobel")
    assert "(control)" in row and "❌ fail 1.000 @ fc2" in row
    assert re.search(r'<tr class="control" data-method="sobel">', page)
    assert 'class="verdict fail"' in html_row(page, "sobel").split("</td>")[0] + "</td>"
    assert "(control)" not in md_row(md, "gradient") and 'class="control" data-method="gradient"' not in page
    # controls sort after the methods that depend on the model
    assert md.index("| `sobel`") > md.index("| `gradient`")


def test_hand_edited_copy_is_refused_visibly_and_kept_off_the_table(board_root):
    summary = build_leaderboard(board_root, rerun=False)
    path = "submissions/gradient_edited/tinyboard.json"
    assert path in summary["rejected"]
    assert any(p.startswith("tampered: record gradient/") for p in summary["rejected"][path])
    assert "gradient_edited" not in summary["suites"][SUITE]
    md = (board_root / "LEADERBOARD.md").read_text(encoding="utf-8")
    page = (board_root / "index.html").read_text(encoding="utf-8")
    assert "gradient_edited" not in section(md, f"## {SUITE}", "## Rejected result files")
    rejected_md = section(md, "## Rejected result files")
    assert path in rejected_md and "tampered: record gradient/" in rejected_md
    assert 'data-method="gradient_edited"' not in page
    rejected_html = section(page, '<section id="rejected"', "</section>")
    assert f"<code>{path}</code>" in rejected_html and "tampered: record gradient/" in rejected_html
    assert not (board_root / "assets" / SUITE / "gradient_edited_maps.png").exists()


def test_strings_from_documents_are_escaped(board_root):
    summary = build_leaderboard(board_root, rerun=False)
    # a method name with HTML in it breaks the schema (method names are [A-Za-z0-9_.-]+) and is refused ...
    problems = summary["rejected"]["submissions/evil_name/tinyboard.json"]
    assert any("<script>alert('name')</script>" in p for p in problems)
    md = (board_root / "LEADERBOARD.md").read_text(encoding="utf-8")
    page = (board_root / "index.html").read_text(encoding="utf-8")
    # ... and shown escaped, like the suite description and (in the HTML) every method's free-text source
    for text in (page, md):
        assert "<script>alert(" not in text and "<b>board</b>" not in text and "<img src=x" not in text
        assert "&lt;script&gt;alert(&#x27;suite&#x27;)" in text or "&lt;script&gt;alert('suite')" in text
        assert "&lt;script&gt;alert(" in section(text, "Rejected result files")
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quoted&quot;" in html_row(page, "gradient")
    assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # the page's own sorting script, nothing else
    # Markdown: no link or table syntax smuggled in by a document
    assert "](http" not in md and "description \\| for" not in md and "\\| for leaderboard tests" in md
    # HTML: self-contained, nothing is fetched from elsewhere
    assert 'http-equiv="Content-Security-Policy"' in page and "default-src 'none'" in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert not re.match(r"^(?:[a-z]+:)?//", attr, flags=re.I), attr


def test_undefined_scores_say_why():
    rec = {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "n_undefined": 12,
           "undefined_reason": "12 constant maps in this state (12 all zero)"}
    assert format_score(rec) == "undefined (12 constant maps in this state (12 all zero))"
    rec = {"mean": 0.123, "ci_low": 0.1, "ci_high": 0.15, "n": 10, "n_undefined": 2, "undefined_reason": "x"}
    assert format_score(rec) == "0.12 [0.10, 0.15] n=10, 2 undefined"
    assert format_verdict({"passed": True, "measured": None, "step": "conv1"}) == "pass undefined @ conv1"


def test_misplaced_file_is_refused_and_rebuilds_are_stable(board_root, tiny_docs):
    other = copy.deepcopy(tiny_docs["docs"]["gradient"])
    write_submission(board_root, other, method="impostor")  # valid document, filed under another method's name
    first = build_leaderboard(board_root, rerun=False)
    assert any(p.startswith("misplaced: method.name 'gradient'")
               for p in first["rejected"]["submissions/impostor/tinyboard.json"])
    outputs = {f: (board_root / f).read_bytes() for f in first["files"]}
    # a rebuild of unchanged submissions changes no byte; a withdrawn method's thumbnails go away
    (board_root / "submissions" / "gradient_x_input" / f"{SUITE}.json").unlink()
    second = build_leaderboard(board_root, rerun=False)
    assert "gradient_x_input" not in second["suites"][SUITE]
    assert not (board_root / "assets" / SUITE / "gradient_x_input_maps.png").exists()
    for f in second["files"]:
        if f.startswith("assets/"):
            assert (board_root / f).read_bytes() == outputs[f], f


def test_rerun_suites_re_runs_only_the_named_suites_files_and_the_board_says_so(board_root, monkeypatch):
    """`make run` rebuilds the board after one suite's audit: re-running 4 inputs of every file on the board (the
    ImageNet cascades among them) took 11 minutes, so it re-runs its own suite's files and validates the others
    statically, and the note under the board names the suites that were re-run."""
    import sanitycheck.submissions as submissions

    asked = []

    def fake_validate_files(paths, **kwargs):
        asked.extend(paths)
        return {str(p): [] for p in paths}

    monkeypatch.setattr(submissions, "validate_files", fake_validate_files)
    summary = build_leaderboard(board_root, rerun=["another_suite"])
    assert asked == [] and summary["rerun"] == ["another_suite"]
    assert sorted(summary["suites"][SUITE]) == sorted(METHODS)
    md = (board_root / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert "The files of `another_suite` also had 4 inputs" in md and "--rerun-suites" in md
    summary = build_leaderboard(board_root, rerun=[SUITE], sample=2)
    assert set(METHODS) <= {p.parent.name for p in asked} and all(p.stem == SUITE for p in asked)
    assert f"The files of `{SUITE}` also had 2 inputs" in (board_root / "LEADERBOARD.md").read_text(encoding="utf-8")


def test_a_noise_ceiling_column_shows_its_value_in_the_verdicts_metric_and_draws_no_curve():
    """The ceiling has no verdict of its own and no direction metadata: its column reads the metric of the
    randomization verdicts it bounds (here spearman_abs at step another_seed), and the curves thumbnail, which
    plots verdict metrics over randomization steps, leaves it out instead of failing."""
    from sanitycheck.report.board_data import _cell, check_rule

    doc = {"checks": {"cascading_randomization": {"kind": "randomization", "steps": ["fc2"],
                                                  "verdict_rule": {"metric": "spearman_abs", "threshold": 0.5,
                                                                   "rule": "all_steps", "direction": "below"}},
                      "noise_ceiling": {"kind": "randomization", "params": {}, "higher_is_better": None,
                                        "verdict_rule": None, "steps": ["another_seed"]}},
           "metrics": {"ssim": {}, "spearman_abs": {}}, "verdicts": [], "skipped": [],
           "records": [{"explainer": "lime", "check": "noise_ceiling", "metric": "spearman_abs",
                        "step": "another_seed", "mean": 0.936, "ci_low": 0.924, "ci_high": 0.946, "n": 128,
                        "n_undefined": 0}]}
    assert check_rule(doc["checks"]["noise_ceiling"], doc)["metric"] == "spearman_abs"
    cell = _cell(doc, "lime", "noise_ceiling")
    assert cell.passed is None and "0.94 [0.92, 0.95]" in cell.score_text and cell.score_sort == 0.936
