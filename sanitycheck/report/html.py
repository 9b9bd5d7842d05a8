"""The leaderboard as one static, self-contained HTML page (``index.html``).

Inline CSS and JavaScript only, and a Content-Security-Policy that forbids every request except
the page's own thumbnails, so opening the page contacts nothing. Tables sort by clicking a column
header (numeric for score columns, read from ``data-sort``; text otherwise; a second click
reverses). Every string taken from a result document is escaped with :func:`html.escape`.
"""

from __future__ import annotations

from html import escape
from typing import Any, Dict, List
from urllib.parse import quote

from .board_data import BADGE_RULE, Row, SuiteTable
from .board_text import (BADGE_MARKS, GENERATED_NOTE, STATUS_LEGEND, reliability_lines, rules_text, score_header,
                         setting_text)

CSP = ("default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --head:#f6f8fa; --pass:#1a7f37; --pass-bg:#dafbe1;
        --fail:#cf222e; --fail-bg:#ffebe9; --ctl-bg:#fff8c5; --accent:#0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: var(--fg);
       background: #fff; }
header, main { max-width: 1800px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { font-size: 24px; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 28px 0 6px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h2 .ver { font-weight: normal; color: var(--muted); font-size: 15px; }
.generated { display: inline-block; margin: 4px 0 8px; padding: 4px 10px; border: 1px solid #d4a72c;
             background: var(--ctl-bg); border-radius: 6px; font-size: 13px; }
.intro, .desc, .meta-line { max-width: 1100px; margin: 4px 0; }
.muted, .meta-line { color: var(--muted); }
nav ul { list-style: none; padding: 0; margin: 6px 0; display: flex; gap: 14px; flex-wrap: wrap; }
a { color: var(--accent); }
code { font: 12.5px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; background: var(--head); padding: 1px 4px;
       border-radius: 4px; }
.scroll { overflow-x: auto; margin: 10px 0 6px; border: 1px solid var(--line); border-radius: 6px; }
table.board { border-collapse: collapse; width: 100%; }
table.board caption { caption-side: top; text-align: left; padding: 6px 10px; color: var(--muted); font-size: 13px; }
th, td { padding: 5px 8px; border-top: 1px solid var(--line); vertical-align: middle; text-align: left; }
thead th { background: var(--head); font-size: 12.5px; border-top: 0; }
thead tr + tr th { white-space: normal; max-width: 130px; line-height: 1.25; }
thead th[scope=colgroup] { text-align: center; border-left: 1px solid var(--line); }
thead tr:first-child th { border-bottom: 1px solid var(--line); }
th[data-sort] button { all: unset; cursor: pointer; display: inline-flex; gap: 4px; align-items: center;
                       font-weight: 600; }
th[data-sort] button:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }
th[data-sort] button::after { content: "\\2195"; color: #9aa4ae; font-weight: normal; }
th[aria-sort=ascending] button::after { content: "\\25B2"; color: var(--fg); }
th[aria-sort=descending] button::after { content: "\\25BC"; color: var(--fg); }
tbody tr:nth-child(even) { background: #fbfcfd; }
tbody tr:hover { background: #f3f7fb; }
tbody th[scope=row] { font-weight: 600; white-space: nowrap; }
tbody th .meta { font-weight: normal; font-size: 11.5px; color: var(--muted); max-width: 180px; overflow: hidden;
                 text-overflow: ellipsis; }
tr.control { background: var(--ctl-bg) !important; }
.badge { display: inline-block; font-size: 11px; font-weight: 600; padding: 1px 6px; border-radius: 10px;
         vertical-align: 1px; }
.badge.control { background: #d4a72c; color: #fff; }
td.verdict { white-space: nowrap; border-left: 1px solid var(--line); cursor: help; }
td.verdict .val { display: block; margin-top: 2px; color: var(--muted); font-size: 12px; }
.pill { display: inline-block; min-width: 44px; text-align: center; font-weight: 700; font-size: 12px;
        padding: 1px 7px; border-radius: 10px; margin-right: 4px; }
.pass .pill { color: var(--pass); background: var(--pass-bg); border: 1px solid var(--pass); }
.fail .pill { color: var(--fail); background: var(--fail-bg); border: 1px solid var(--fail); }
.none .pill { color: var(--muted); border: 1px solid var(--line); }
.val { font-variant-numeric: tabular-nums; font-size: 12.5px; }
td.score { font-variant-numeric: tabular-nums; white-space: nowrap; font-size: 12.5px; }
td.score b { font-size: 14px; }
td.score .ci { display: block; color: var(--muted); font-size: 11.5px; white-space: normal; max-width: 150px; }
td.score.undef { white-space: normal; color: var(--muted); font-style: italic; font-size: 11.5px; max-width: 180px; }
td.thumb { padding: 4px 8px; }
td.thumb img { display: block; background: #fff; }
td.thumb.maps img { width: auto; height: auto; max-height: 80px; max-width: 480px; }
td.thumb.curves img { width: 184px; height: auto; }
td.verdict.other .pill { background: #fff3cd; color: #664d03; }
td.overall { font-size: 12.5px; white-space: nowrap; }
td.overall.passes { color: var(--pass, #146c2e); font-weight: 600; }
#rejected li { margin: 4px 0; }
#rejected .problems li { color: var(--fail); font-size: 13px; }
footer { max-width: 1800px; margin: 30px auto 20px; padding: 0 20px; color: var(--muted); font-size: 12px; }
"""

JS = """
(function () {
  function key(cell, type) {
    var v = cell.getAttribute('data-sort');
    if (v === null) { v = cell.textContent.trim(); }
    if (type === 'num') { var f = parseFloat(v); return isNaN(f) ? null : f; }
    return v.toLowerCase();
  }
  function sortBy(table, th) {
    var col = parseInt(th.getAttribute('data-col'), 10), type = th.getAttribute('data-sort');
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    Array.prototype.forEach.call(table.querySelectorAll('thead th[data-sort]'), function (h) {
      h.setAttribute('aria-sort', 'none');
    });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col], type), y = key(b.cells[col], type);
      if (x === null || y === null) { return (x === null) - (y === null); }  // undefined scores last, always
      var c = type === 'num' ? x - y : x.localeCompare(y, undefined, {numeric: true});
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.board'), function (table) {
    Array.prototype.forEach.call(table.querySelectorAll('thead th[data-sort]'), function (th) {
      th.addEventListener('click', function () { sortBy(table, th); });
    });
  });
})();
"""


def _e(s: Any) -> str:
    return escape(str(s), quote=True)


def _img(rel: str, alt: str) -> str:
    url = _e(quote(rel))
    return f'<a href="{url}"><img src="{url}" alt="{_e(alt)}" decoding="async"></a>'


def _row_html(t: SuiteTable, row: Row, with_setting: bool) -> str:
    cls = ' class="control"' if row.control else ""
    badge = (' <span class="badge control" title="ignores the model (requires_model: false): a control, which '
             'must fail every check">control</span>' if row.control else "")
    meta = f"source {_e(row.source)} · sha256 {_e(row.source_sha256[:12])}…"
    if row.explainer != row.method:
        meta = f"explainer {_e(row.explainer)} · " + meta
    cells = [f'<th scope="row" data-sort="{_e(row.method)}"><span class="method">{_e(row.method)}</span>{badge}'
             f'<div class="meta" title="{_e(row.source)}">{meta}</div></th>']
    if with_setting:
        cells.append(f"<td>{setting_text(row.setting, md=False)}</td>")
    for c in row.cells:
        state = {"pass": "pass", "fail": "fail"}.get(c.status, "none" if c.status == "none" else
                                                      f"other {c.status.replace('_', '-')}")
        word, _, value = c.verdict_text.partition(" ")
        cells.append(f'<td class="verdict {state}" title="{_e(c.reason)}" data-sort="{_e(c.verdict_text)}">'
                     f'<span class="pill">{_e(word)}</span><span class="val">{_e(value)}</span></td>')
        if c.score_sort is None:
            cells.append(f'<td class="score undef" data-sort="">{_e(c.score_text)}</td>')
        else:
            mean, _, rest = c.score_text.partition(" ")
            cells.append(f'<td class="score" data-sort="{c.score_sort!r}"><b>{_e(mean)}</b> '
                         f'<span class="ci">{_e(rest)}</span></td>')
    what = f"method {row.method}{' (control)' if row.control else ''} on suite {t.suite}"
    maps_alt = f"Saliency maps of {what}: input image 0, the original model, then each cascading randomization step"
    curves_alt = f"Randomization curves of {what}: verdict metric versus randomization step per check, 95% CI bands, threshold"
    cells.append(f'<td class="thumb maps">{_img(row.maps, maps_alt) if row.maps else "–"}</td>')
    cells.append(f'<td class="thumb curves">{_img(row.curves, curves_alt) if row.curves else "–"}</td>')
    if any(r.badge for r in t.rows):
        cells.append(f'<td class="overall {_e((row.badge or "none").replace(" ", "-"))}" title="{_e(row.badge_reason)}" '
                     f'data-sort="{_e(row.badge or "")}">{_e(BADGE_MARKS.get(row.badge or "", "–"))}</td>')
    return f'<tr{cls} data-method="{_e(row.method)}">' + "".join(cells) + "</tr>"


def _table_html(t: SuiteTable) -> List[str]:
    sid = _e(t.suite)
    settings = t.settings
    with_setting = len(settings) > 1
    out = [f'<section id="suite-{sid}" aria-labelledby="h-{sid}">',
           f'<h2 id="h-{sid}">{sid} <span class="ver">v{_e(t.version)}</span></h2>']
    if t.description:
        out.append(f'<p class="desc">{_e(t.description)}</p>')
    if t.reference:
        out.append(f'<p class="meta-line">Reference: {_e(t.reference)}</p>')
    if with_setting:
        out.append('<p class="meta-line">Settings differ between submissions: see the <i>setting</i> column.</p>')
    else:
        s = setting_text(settings[0], md=False)
        out.append(f'<p class="meta-line">{s[0].upper() + s[1:]}.</p>')
    out.append(f'<p class="meta-line">Rules: {rules_text(t, md=False)}.</p>')
    rel = reliability_lines(t.reliability, _e)
    if rel:
        out.append('<div class="reliability"><p class="meta-line">Reliability of these scores as rankings of '
                   'methods (Tomsett et al. 2020):</p><ul>' + "".join(f"<li>{line}</li>" for line in rel) + "</ul></div>")
    n = len(t.rows)
    out += ['<div class="scroll">', f'<table class="board" id="board-{sid}">',
            f"<caption>{sid} v{_e(t.version)}: {n} method{'s' if n != 1 else ''}. Select a column header to sort; "
            "hover a verdict for its full reason.</caption>", "<thead>"]
    top = ['<th scope="col" rowspan="2" data-col="0" data-sort="text" aria-sort="none"><button type="button">'
           'method</button></th>']
    sub, col = [], 1
    if with_setting:
        top.append(f'<th scope="col" rowspan="2" data-col="{col}" data-sort="text" aria-sort="none">'
                   '<button type="button">setting</button></th>')
        col += 1
    for c in t.checks:
        top.append(f'<th scope="colgroup" colspan="2">{_e(c)}</th>')
        sub.append(f'<th scope="col" data-col="{col}" data-sort="text" aria-sort="none"><button type="button">'
                   f'verdict</button></th>')
        sub.append(f'<th scope="col" data-col="{col + 1}" data-sort="num" aria-sort="none"><button type="button">'
                   f'{_e(score_header(t, c))}</button></th>')
        col += 2
    top.append('<th scope="col" rowspan="2">maps (image 0)</th>')
    top.append('<th scope="col" rowspan="2">randomization curves</th>')
    if any(r.badge for r in t.rows):
        top.append(f'<th scope="col" rowspan="2" data-col="{col}" data-sort="text" aria-sort="none" '
                   f'title="{_e(BADGE_RULE)}"><button type="button">overall</button></th>')
    out += ["<tr>" + "".join(top) + "</tr>", "<tr>" + "".join(sub) + "</tr>", "</thead>", "<tbody>"]
    out += [_row_html(t, row, with_setting) for row in t.rows]
    out += ["</tbody>", "</table>", "</div>", "</section>"]
    return out


def render_html(tables: Dict[str, SuiteTable], rejected: Dict[str, List[str]], validation: str = "") -> str:
    note = _e(GENERATED_NOTE).replace("`", "")
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
           '<meta name="generator" content="sanitycheck leaderboard">',
           "<title>sanitycheck leaderboard</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           "<!-- GENERATED FILE: do not edit by hand. Rebuild with `sanitycheck leaderboard`. -->",
           "<header>", "<h1>sanitycheck leaderboard</h1>",
           f'<p class="generated" role="note"><b>Generated file.</b> {note}</p>',
           '<p class="intro">Does a saliency explanation depend on the model it explains? Each method is run on a '
           "trained model and on randomized versions of it (Adebayo et al., <i>Sanity Checks for Saliency Maps</i>, "
           "NeurIPS 2018). A method <b>passes</b> a check when its maps lose their similarity to the trained model's "
           "maps: the upper bound of the 95% bootstrap CI of the check's metric must stay below the suite's threshold "
           "at the steps its rule reads. A verdict shows that deciding upper bound and the step it was measured at "
           "(hover for the full reason); a score is the metric after the check's last step, mean [95% CI] n. "
           '<span class="badge control">control</span> rows ignore the model and must fail.</p>',
           f'<p class="intro">{_e(STATUS_LEGEND)}</p>',
           f'<p class="intro" id="badge-rule"><b>Overall badge.</b> {_e(BADGE_RULE).replace("`", "")}</p>']
    if validation:
        out.append(f'<p class="intro" id="validation"><b>Validation.</b> {_e(validation).replace("`", "")}</p>')
    links = [f'<li><a href="#suite-{_e(s)}">{_e(s)}</a> ({len(t.rows)})</li>' for s, t in tables.items()]
    links.append(f'<li><a href="#rejected">Rejected result files</a> ({len(rejected)})</li>')
    out += ['<nav aria-label="Suites"><ul>' + "".join(links) + "</ul></nav>", "</header>", "<main>"]
    if not tables:
        out.append("<p><i>No valid submissions yet.</i></p>")
    for t in tables.values():
        out += _table_html(t)
    out += ['<section id="rejected" aria-labelledby="h-rejected">', '<h2 id="h-rejected">Rejected result files</h2>']
    if not rejected:
        out.append("<p>None: every submitted file passed validation.</p>")
    else:
        out.append("<p>These files were refused and are not on the board:</p><ul>")
        for path, problems in sorted(rejected.items()):
            out.append(f'<li><code>{_e(path)}</code><ul class="problems">'
                       + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul></li>")
        out.append("</ul>")
    out += ["</section>", "</main>",
            "<footer>sanitycheck leaderboard — static page: no external requests, no tracking.</footer>",
            f"<script>{JS}</script>", "</body>", "</html>"]
    return "\n".join(out) + "\n"
