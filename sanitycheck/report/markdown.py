"""The leaderboard as Markdown (``LEADERBOARD.md``): one table per suite, verdict reasons, rejected files.

Every string taken from a document is escaped with :func:`.board_text.md_text` (table cells, list items)
or :func:`.board_text.md_attr` (tooltips).
"""

from __future__ import annotations

from typing import Dict, List
from urllib.parse import quote

from .board_data import BADGE_RULE, SuiteTable
from .board_text import (BADGE_MARKS, GENERATED_NOTE, STATUS_LEGEND, STATUS_MARKS, md_attr, md_code, md_text,
                         reliability_lines, rules_text, score_header, setting_text)


def render_markdown(tables: Dict[str, SuiteTable], rejected: Dict[str, List[str]],
                    validation: str = "") -> str:
    lines = ["# sanitycheck leaderboard", "",
             "<!-- GENERATED FILE: do not edit by hand. Rebuild with `sanitycheck leaderboard`. -->", "",
             f"> **{GENERATED_NOTE}** The same board, sortable, is in [`index.html`](index.html).", "",
             "A method passes a check when its maps lose their similarity to the trained model's maps as the model "
             "is randomized: the upper bound of the 95% bootstrap CI of the check's metric must stay below the "
             "suite's threshold at the steps its rule reads. The verdict shows that deciding upper bound and the "
             "step it was measured at (hover for the full reason); the score is the metric after the check's last "
             "step, `mean [95% CI] n`. **Controls** ignore the model (`requires_model: false`) and must fail.", "",
             STATUS_LEGEND, "", f"**Overall badge.** {BADGE_RULE}", ""]
    if validation:
        lines += [f"**Validation.** {validation}", ""]
    if not tables:
        lines += ["*No valid submissions yet.*", ""]
    for t in tables.values():
        lines += [f"## {md_text(t.suite)} v{md_text(t.version)}", ""]
        if t.description:
            lines += [md_text(t.description), ""]
        if t.reference:
            lines += [f"Reference: {md_text(t.reference)}", ""]
        settings = t.settings
        if len(settings) == 1:
            lines += [setting_text(settings[0], md=True)[0].upper() + setting_text(settings[0], md=True)[1:] + ".", ""]
        else:
            lines += ["Settings differ between submissions: see the *setting* column.", ""]
        lines += [f"Rules: {rules_text(t, md=True)}.", ""]
        rel = reliability_lines(t.reliability, md_text)
        if rel:
            lines += ["Reliability of these scores as rankings of methods (Tomsett et al. 2020):", ""]
            lines += [f"- {line}" for line in rel] + [""]
        badged = any(r.badge for r in t.rows)
        head = ["method"]
        for c in t.checks:
            head += [f"{md_text(c)} verdict",
                     md_text(score_header(t, c))]
        head += ["maps (image 0)", "randomization curves"] + (["overall"] if badged else [])
        if len(settings) > 1:
            head.insert(1, "setting")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in t.rows:
            name = md_code(row.method) + (" **(control)**" if row.control else "")
            cells = [name]
            if len(settings) > 1:
                cells.append(setting_text(row.setting, md=True))
            for c in row.cells:
                mark = STATUS_MARKS.get(c.status, "–")
                cells.append(f'<span title="{md_attr(c.reason)}">{mark} {md_text(c.verdict_text)}</span>')
                cells.append(md_text(c.score_text))
            for kind, rel in (("maps", row.maps), ("randomization curves", row.curves)):
                cells.append(f"![{kind} of {md_text(row.method)} on {md_text(t.suite)}]({quote(rel)})" if rel else "–")
            if badged:
                cells.append(f'<span title="{md_attr(row.badge_reason)}">{BADGE_MARKS.get(row.badge or "", "–")}</span>')
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "<details><summary>Verdict reasons</summary>", ""]
        for row in t.rows:
            if row.badge:
                lines.append(f"- {md_code(row.method)} / overall: {md_text(row.badge)}: {md_text(row.badge_reason)}")
            for c in row.cells:
                lines.append(f"- {md_code(row.method)} / {md_text(c.check)}: {md_text(c.reason)}")
        lines += ["", "</details>", ""]
    lines += ["## Rejected result files", ""]
    if not rejected:
        lines += ["None: every submitted file passed validation.", ""]
    else:
        lines += ["These files were refused and are not on the board (see `sanitycheck validate`):", ""]
        for path, problems in sorted(rejected.items()):
            lines.append(f"- {md_text(path)}")
            lines += [f"  - {md_text(p)}" for p in problems]
        lines.append("")
    return "\n".join(lines)
