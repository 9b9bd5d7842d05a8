"""The leaderboard (orchestration): ``LEADERBOARD.md`` and a static ``index.html``, generated (never hand-edited).

:func:`build_leaderboard` reads ``<root>/submissions/<method>/<suite>.json``, keeps only the
documents that pass :func:`sanitycheck.validation.load_valid_documents` (schema, current suite
version and hash, records equal to the bootstrap of their per-image scores, verdicts equal to the
suite's rule on those records) — it reads validated JSON only and never imports submitted code —
and writes, each file atomically:

* ``LEADERBOARD.md`` and ``index.html``: one table per suite, one row per method, per check the
  verdict (pass/fail, the deciding value: the upper 95 % CI bound at the deciding step, and the
  full reason as a tooltip) and the verdict metric after the check's last step as
  ``mean [ci_low, ci_high] n=…``; thumbnails of the method's maps and randomization curves;
  controls (explainers that ignore the model) marked; and a *Rejected result files* section that
  lists every refused file with its problems, so a tampered file is visibly refused;
* ``assets/<suite>/<method>_maps.png`` (image 0 of the cascading check: input, original, every
  step) and ``assets/<suite>/<method>_curves.png`` (verdict metric vs step per check, 95 % CI
  bands, threshold), drawn with matplotlib's Agg backend from the documents' ``examples`` and
  ``records``.

The output depends only on the submissions (no timestamps), so rebuilding an unchanged board
changes no file. Every string taken from a document is escaped (HTML, and Markdown table syntax).

The work is split by job, dependencies one way: :mod:`.board_data` (data model, statuses, badge rule,
collection and re-validation) <- :mod:`.board_text` (shared wording, escaping) <- :mod:`.markdown`, :mod:`.html`;
:mod:`.thumbnails` (PNG assets); this module only orchestrates and re-exports the public names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from ..errors import ConfigError
from ..io import atomic_write_bytes, atomic_write_text
from .board_data import (BADGE_RULE, FAITHFULNESS_SUITE, NOISE, STATUS_WORDS, Cell, Row, SuiteTable,
                         assign_badges, beats_noise, check_rule, collect, format_score, format_verdict, last_step,
                         submission_paths, verdict_status)
from .board_text import (BADGE_MARKS, GENERATED_NOTE, STATUS_LEGEND, STATUS_MARKS, md_attr, md_text,
                         reliability_lines, score_header, validation_note)
from .html import render_html
from .markdown import render_markdown
from .thumbnails import CASCADING, maps_check, render_curves_png, render_maps_png

#: the board's public names, re-exported here for callers of ``sanitycheck.report.leaderboard``
__all__ = ["BADGE_MARKS", "BADGE_RULE", "CASCADING", "FAITHFULNESS_SUITE", "GENERATED_NOTE", "NOISE",
           "STATUS_LEGEND", "STATUS_MARKS", "STATUS_WORDS", "Cell", "Row", "SuiteTable", "assign_badges",
           "beats_noise", "build_leaderboard", "check_rule", "collect", "format_score", "format_verdict",
           "last_step", "maps_check", "md_attr", "md_text", "reliability_lines", "render_curves_png",
           "render_html", "render_maps_png", "render_markdown", "score_header", "submission_paths",
           "validation_note", "verdict_status"]


# --------------------------------------------------------------------------- build
def build_leaderboard(root: Path = Path("leaderboard"), *, rerun: Union[bool, Sequence[str]] = True, sample: int = 4,
                      progress: bool = False, **limits: Any) -> Dict[str, Any]:
    """Validate ``root/submissions/*/*.json`` and write ``LEADERBOARD.md``, ``index.html`` and ``assets/``.

    Every build re-validates every file: the suite's current rules on its per-image scores and, unless ``rerun``
    is off, a re-run of ``sample`` inputs per file drawn at random now (``rerun`` may instead name the suites whose
    files are re-run: ``make run`` re-runs its own suite's files, not the whole board's) (``limits``: ``timeout_s``, ``memory_mb``
    of the sandboxed re-run). The verdicts shown are the ones recomputed here.

    Returns ``{"suites": {suite: [method, ...]}, "rejected": {path: [problem, ...]}, "files": [path, ...],
    "warnings": [...]}`` (paths relative to ``root``; ``files`` lists every file written, in order; rows are in
    board order; ``warnings`` names thumbnails that could not be drawn).
    """
    root = Path(root)
    tables, rejected, docs = collect(root, rerun=rerun, sample=sample, progress=progress, limits=limits)
    note = validation_note(rerun, sample)
    written: List[Path] = []
    warnings: List[str] = []
    for t in tables.values():
        for row in t.rows:
            doc = docs[(t.suite, row.method)]
            for kind, render in (("maps", render_maps_png), ("curves", render_curves_png)):
                try:
                    data = render(doc)
                except (ValueError, TypeError, KeyError, IndexError, ConfigError) as err:
                    # a valid document whose thumbnails cannot be drawn still gets its row
                    warnings.append(f"{t.suite}/{row.method}: no {kind} thumbnail ({type(err).__name__}: {err})")
                    data = None
                if data is None:
                    continue
                rel = f"assets/{t.suite}/{row.method}_{kind}.png"
                written.append(atomic_write_bytes(root / rel, data))
                setattr(row, kind, rel)
    # assets/ is generated: drop thumbnails of methods no longer on the board
    keep = {p.resolve() for p in written}
    assets = root / "assets"
    if assets.is_dir():
        for p in assets.glob("*/*.png"):
            if p.resolve() not in keep:
                p.unlink()
        for d in assets.iterdir():
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    written.append(atomic_write_text(root / "LEADERBOARD.md", render_markdown(tables, rejected, note)))
    written.append(atomic_write_text(root / "index.html", render_html(tables, rejected, note)))
    return {"suites": {s: [r.method for r in t.rows] for s, t in tables.items()},
            "rejected": rejected,
            "files": [p.relative_to(root).as_posix() for p in written],
            "warnings": warnings, "rerun": rerun if isinstance(rerun, bool) else sorted(rerun),
            "sample": sample if rerun else 0,
            "badges": {s: {r.method: r.badge for r in t.rows if r.badge} for s, t in tables.items()}}
