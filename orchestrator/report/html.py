"""index.html: one self-contained page (inline CSS, PNGs as data: URIs, a tiny table sorter).

Self-contained so it can be mailed, attached to a ticket or opened from an artifact store
with no server and no network; every text from the database is escaped.
"""

from __future__ import annotations

import base64
from html import escape

from orchestrator.report.pages import ModelPage, ReportPages
from orchestrator.report.tables import Table

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .6em}th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer}table.sortable th:hover{background:#e0e8ff}
td.removed{background:#e3f6e3}td.kept{background:#fbe3e3}
p.missing{color:#a33}img{max-width:100%}.meta{color:#555}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}div.scroll{overflow-x:auto}
"""

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


def render_html(pages: ReportPages) -> str:
    report = pages.report
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>badnet-prune report: sweep {report.id}</title><style>{STYLE}</style></head><body>",
        f"<h1>Sweep {report.id}: {escape(report.name)}</h1>",
        f'<p class="meta">{escape(pages.description())}</p>',
        '<section id="across-models"><h2>Across models</h2>',
        f"<p>{escape(pages.summary_caption())} Click a column to sort.</p>",
        table_html(pages.tables["summary"], "sortable", "summary"),
    ]
    if report.failed_models:
        parts += ["<h3>Failed models</h3>", table_html(pages.failed_table(), "failed", "failed")]
    if report.unfinished_models:
        names = ", ".join(f"{m.name} ({m.status})" for m in report.unfinished_models)
        parts.append(f'<p class="missing">Not finished yet: {escape(names)}.</p>')
    parts.append("</section>")
    parts += [_model_section(page) for page in pages.models]
    parts += [f"<script>{SORTER}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _model_section(page: ModelPage) -> str:
    model = page.model
    header, rows = model.lab_table()
    lab = Table("lab", header, [dict(zip(header, row, strict=True)) for row in rows])
    parts = [
        f'<section class="model" data-model="{escape(model.name)}">',
        f"<h2>{escape(model.name)}</h2>",
        f'<p class="meta">{escape(page.description())}</p>',
        "<h3>B, B' and G on test data</h3>",
        table_html(lab, "lab"),
        "<h3>Pruning curve (clean validation data)</h3>",
        _img(page.curve_png, "curve", f"{model.name}: accuracy and ASR against the fraction pruned"),
    ]
    if page.fine_tune_png is not None:
        parts += ["<h3>Fine-pruning curves (clean validation data)</h3>", f"<p>{escape(page.fine_tune_caption())}</p>",
                  _img(page.fine_tune_png, "fine-tune", f"{model.name}: hold-out accuracy and ASR against the epoch")]
    parts += [
        "<h3>Sample test images</h3>",
    ]
    samples = page.samples
    parts += [f'<p class="missing">{escape(text)}</p>' for text in samples.missing]
    if page.samples_png is not None:
        parts.append(f"<p>{escape(page.samples_caption())}</p>")
        parts.append(_img(page.samples_png, "samples", f"{model.name}: sample images"))
        parts.append(table_html(page.samples_table(), "samples"))
    parts += [
        f"<details><summary>Ranking ({len(model.results.ranking)} channels, pruned in this order)</summary>",
        table_html(page.ranking, "ranking"),
        "</details>",
        f"<details><summary>Steps ({len(page.steps.rows)})</summary>",
        table_html(page.steps, "steps"),
        "</details></section>",
    ]
    return "\n".join(parts)


def table_html(table: Table, css_class: str, element_id: str | None = None) -> str:
    ident = f' id="{element_id}"' if element_id else ""
    head = "".join(f"<th>{escape(column)}</th>" for column in table.columns)
    body = []
    for cells in table.cells():
        tds = "".join(_td(column, cell) for column, cell in zip(table.columns, cells, strict=True))
        body.append(f"<tr>{tds}</tr>")
    return (f'<div class="scroll"><table class="{css_class}"{ident}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _td(column: str, cell: str) -> str:
    if column in ("removed", "kept", "fine_removed", "fine_kept") and cell:
        return f'<td class="{column.removeprefix("fine_")}">{escape(cell)}</td>'
    return f'<td class="num">{escape(cell)}</td>' if _is_number(cell) else f"<td>{escape(cell)}</td>"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _img(png: bytes, css_class: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'
