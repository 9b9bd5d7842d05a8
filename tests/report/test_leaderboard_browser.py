"""index.html in headless Chromium (W3C WebDriver over plain HTTP): every row and thumbnail is there and
loads from the file:// page (under its Content-Security-Policy), and clicking a header sorts the table."""

from __future__ import annotations

from PIL import Image

from leaderboard_helpers import METHODS, SUITE
from sanitycheck.report.leaderboard import build_leaderboard

STATE = """
return {
  tables: Array.from(document.querySelectorAll('table.board')).map(function (t) {
    return {id: t.id, rows: Array.from(t.tBodies[0].rows).map(function (r) { return r.getAttribute('data-method'); })};
  }),
  images: Array.from(document.images).map(function (i) {
    return {src: i.getAttribute('src'), alt: i.getAttribute('alt'), loaded: i.complete && i.naturalWidth > 0};
  }),
  sorted: Array.from(document.querySelectorAll('th[aria-sort]:not([aria-sort=none])')).map(function (h) {
    return [h.textContent.trim(), h.getAttribute('aria-sort')];
  }),
  rejected: document.querySelectorAll('#rejected .problems').length
};
"""


def mean_after_last_step(doc, check):
    rule, steps = doc["checks"][check]["verdict_rule"], doc["checks"][check]["steps"]
    return next(r["mean"] for r in doc["records"]
                if (r["check"], r["metric"], r["step"]) == (check, rule["metric"], steps[-1]))


def rows(chromium):
    tables = chromium.execute(STATE)["tables"]
    assert [t["id"] for t in tables] == [f"board-{SUITE}"]
    return tables[0]["rows"]


def test_board_renders_loads_every_thumbnail_and_sorts(board_root, tiny_docs, chromium, tmp_path):
    summary = build_leaderboard(board_root, rerun=False)
    chromium.get((board_root / "index.html").resolve().as_uri())
    state = chromium.execute(STATE)
    assert rows(chromium) == summary["suites"][SUITE] and sorted(summary["suites"][SUITE]) == sorted(METHODS)
    assert len(state["images"]) == 2 * len(METHODS)
    for img in state["images"]:
        assert img["loaded"], f"thumbnail did not load: {img['src']}"
        assert SUITE in img["alt"] and any(m in img["alt"] for m in METHODS), img["alt"]
    assert state["rejected"] == len(summary["rejected"]) == 2  # the tampered copy and the HTML-named file

    shot = chromium.screenshot(tmp_path / "leaderboard.png")
    with Image.open(shot) as im:
        assert im.size[0] >= 1000 and len(im.convert("L").getcolors(maxcolors=1 << 16) or range(21)) > 20  # not a blank page

    # text column: method name, ascending then descending
    by_name = sorted(METHODS, key=str.lower)
    chromium.click(chromium.find(f"#board-{SUITE} th[data-col='0'] button"))
    assert rows(chromium) == by_name
    assert chromium.execute(STATE)["sorted"] == [["method", "ascending"]]
    chromium.click(chromium.find(f"#board-{SUITE} th[data-col='0'] button"))
    assert rows(chromium) == by_name[::-1]

    # numeric column (data-sort): the cascading check's verdict metric after its last step
    check = "cascading_randomization"
    means = {m: mean_after_last_step(doc, check) for m, doc in tiny_docs["docs"].items()}
    assert len(set(means.values())) == len(means), "distinct means make the expected order unambiguous"
    ascending = sorted(means, key=means.get)
    chromium.click(chromium.find(f"#board-{SUITE} th[data-col='2'] button"))
    assert rows(chromium) == ascending
    chromium.click(chromium.find(f"#board-{SUITE} th[data-col='2'] button"))
    assert rows(chromium) == ascending[::-1]
    assert ascending[-1] == "sobel"  # the control keeps its maps: similarity 1.0, highest
