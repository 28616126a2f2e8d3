"""index.html (the across-models view) and one page per model under models/, each self-contained
(inline CSS, PNGs as data: URIs, a tiny table sorter).

Self-contained so that the folder can be mailed, attached to a ticket or opened from an artifact store
with no server and no network; every text from the database is escaped.
"""

from __future__ import annotations

import base64
import re
from html import escape
from urllib.parse import quote

from badnet_prune.orchestrator.report.pages import ModelPage, ReportPages
from badnet_prune.orchestrator.report.tables import KEPT, REMOVED, Table, label

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1800px;color:#222;padding:0 1.5em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .35em}th{background:#f0f0f0;font-weight:600;vertical-align:bottom}
td.long{overflow-wrap:anywhere}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.sortable th{cursor:pointer}table.sortable th:hover{background:#e0e8ff}
td.removed{background:#e3f6e3}td.kept{background:#fbe3e3}
td.attack{background:#fbe3e3;color:#a00;font-weight:600}td.flagged{background:#e3ecfb;color:#1a4fa0;font-weight:600}
span.attack{color:#c00;font-weight:600}span.flagged{color:#1a4fa0;font-weight:600}
p.missing{color:#a33}img{max-width:100%}.meta{color:#555}nav{margin:.5em 0}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}div.scroll{overflow-x:auto}
ul.models{columns:14em;padding-left:1.2em}
"""

LONG_CELL = 20  # characters

SORTER = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var up = th.dataset.dir !== 'up'; th.dataset.dir = up ? 'up' : 'down';
      function key(row){ var t = row.cells[col].textContent.trim(), n = parseFloat(t);
        return isNaN(n) ? t : n; }
      rows.sort(function(a, b){ var x = key(a), y = key(b);
        var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
        return up ? c : -c; });
      rows.forEach(function(row){ body.appendChild(row); });
    });
  });
});
"""


def render_index(pages: ReportPages) -> str:
    """The main page: the across-models view only, each model's detail on its own page (models/), so that
    the page of a 1,000-model sweep stays small enough to open in seconds."""
    report = pages.report
    parts = [
        _head(f"badnet-prune report: sweep {report.id}"),
        f"<h1>Sweep {report.id}: {escape(report.name)}</h1>",
        f'<p class="meta">{escape(pages.description())}</p>',
        *_leaderboard(pages),
        '<section id="verdict"><h2>Verdict: which backdoors were removed, at what cost</h2>',
        f"<p>{escape(pages.verdict_caption())}</p>",
        table_html(pages.verdict, "sortable verdict", "verdict", links=_links(pages)),
        "</section>",
        '<section id="across-models"><h2>Across models</h2>',
        f"<p>{escape(pages.summary_caption())} Click a column to sort.</p>",
        table_html(pages.overview, "sortable summary", "summary", links=_links(pages)),
    ]
    if report.failed_models:
        parts += ["<h3>Failed models</h3>", table_html(pages.failed_table(), "failed", "failed")]
    if report.unfinished_models:
        names = ", ".join(f"{m.name} ({m.status})" for m in report.unfinished_models)
        parts.append(f'<p class="missing">Not finished yet: {escape(names)}.</p>')
    parts.append("</section>")
    if pages.models:
        items = "".join(f'<li><a href="{_href(page.file)}">{escape(page.model.name)}</a></li>' for page in pages.models)
        parts.append(f'<section id="models"><h2>Models</h2><ul class="models">{items}</ul></section>')
    parts += [f"<script>{SORTER}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _leaderboard(pages: ReportPages) -> list[str]:
    if not pages.leaderboard:
        return []
    parts = ['<section id="leaderboard"><h2>Leaderboard: the defenses across the models</h2>',
             f"<p>{escape(pages.leaderboard_caption())} Click a column to sort.</p>"]
    titles = {"leaderboard": None, "leaderboard_by_attack": "By attack kind", "clean_models": "Clean models",
              "detectors": "Detectors: is the model backdoored?"}
    for table in pages.leaderboard:
        if titles[table.name]:
            parts.append(f"<h3>{titles[table.name]}</h3>")
        parts.append(table_html(table, f"sortable {table.name}", table.name))
    for attack, png in pages.leaderboard_pngs.items():
        parts.append(_img(png, "leaderboard-plot", f"{attack}: ASR after against clean drop, per model"))
    parts.append("</section>")
    return parts


def render_model(pages: ReportPages, page: ModelPage) -> str:
    """One model's page (models/<name>.html): its verdict and rows of the across-models view, the lab's
    table, curves, samples, ranking and steps; self-contained like the main page."""
    model = page.model
    header, rows = model.lab_table()
    lab = Table("lab", header, [dict(zip(header, row, strict=True)) for row in rows])
    parts = [
        _head(f"badnet-prune report: sweep {pages.report.id}, {model.name}"),
        f'<nav><a href="../index.html">Sweep {pages.report.id}: {escape(pages.report.name)}</a></nav>',
        f'<section class="model" data-model="{escape(model.name)}">',
        f"<h1>{escape(model.name)}</h1>",
        f'<p class="meta">{escape(page.description())}</p>',
        "<h2>Verdict</h2>",
        f"<p>{escape(pages.verdict_caption())}</p>",
        table_html(page.verdict, "verdict"),
        "<h2>Per threshold and poison</h2>",
        table_html(page.overview, "summary"),
        "<h2>B, B' and G on test data</h2>",
        table_html(lab, "lab"),
        "<h2>Pruning curve (clean validation data)</h2>",
        _img(page.curve_png, "curve", f"{model.name}: accuracy and ASR against the fraction pruned"),
    ]
    for section in page.sections:
        parts += [f"<h2>{escape(section.title)}</h2>", f"<p>{escape(section.caption)}</p>"]
        if section.png is not None:
            parts.append(_img(section.png, section.slug, f"{model.name}: {section.title}"))
        if section.table is not None:
            parts.append(table_html(section.table, section.slug))
    parts.append("<h2>Sample test images</h2>")
    samples = page.samples
    parts += [f'<p class="missing">{escape(text)}</p>' for text in samples.missing]
    if page.samples_png is not None:
        parts.append(f"<p>{escape(page.samples_caption())}</p>")
        parts.append(_img(page.samples_png, "samples", f"{model.name}: sample images"))
        parts.append(table_html(page.samples_table(), "samples", marks=page.sample_marks()))
    parts += [
        f"<details><summary>Ranking ({len(model.results.ranking)} channels, pruned in this order)</summary>",
        table_html(page.ranking, "ranking"),
        "</details>",
        f"<details><summary>Steps ({len(page.steps.rows)})</summary>",
        table_html(page.steps, "steps"),
        "</details></section></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _breakable(header: str) -> str:
    """A header, escaped, that may wrap after an underscore or hyphen too (poison names are identifiers), so
    that a long name does not widen its column past its figures."""
    return re.sub(r"([_-])", r"\1<wbr>", escape(header))


def _head(title: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>")


def _links(pages: ReportPages) -> dict[str, str]:
    return {page.model.name: page.file for page in pages.models}


def _href(relative: str) -> str:
    return escape(quote(relative, safe="/"))


def table_html(table: Table, css_class: str, element_id: str | None = None, *, links: dict[str, str] | None = None,
               marks: list[dict[str, str]] | None = None) -> str:
    """A table with human headers; links: model name -> its page, for the model column; marks: per row,
    column -> CSS class (the samples' "attack" and "flagged")."""
    ident = f' id="{element_id}"' if element_id else ""
    head = "".join(f"<th>{_breakable(label(column))}</th>" for column in table.columns)
    body = []
    for position, cells in enumerate(table.cells()):
        marked = marks[position] if marks else {}
        tds = "".join(_td(column, cell, links or {}, marked.get(column))
                      for column, cell in zip(table.columns, cells, strict=True))
        body.append(f"<tr>{tds}</tr>")
    return (f'<div class="scroll"><table class="{css_class}"{ident}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _td(column: str, cell: str, links: dict[str, str], mark: str | None) -> str:
    if mark:
        return f'<td class="{mark}">{escape(cell)}</td>'
    if column.endswith("_verdict") and cell in (REMOVED, KEPT):
        return f'<td class="{cell}">{escape(cell)}</td>'
    if column == "model" and cell in links:
        css = ' class="long"' if len(cell) > LONG_CELL else ""
        return f'<td{css}><a href="{_href(links[cell])}">{escape(cell)}</a></td>'
    if _is_number(cell):
        return f'<td class="num">{escape(cell)}</td>'
    # a long name or path may break anywhere, so that it cannot widen the table past the page; short words never do
    return f'<td class="long">{escape(cell)}</td>' if len(cell) > LONG_CELL else f"<td>{escape(cell)}</td>"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _img(png: bytes, css_class: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'
