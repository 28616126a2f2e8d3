"""report.md: the same report as plain Markdown, for a terminal, a pull request or a wiki.

Figures cannot be inlined in Markdown portably, so they are linked from figures/ beside it.
Every text that comes from the sweep (sweep, model and poison names, paths, error messages) is
escaped before it is embedded: Markdown renderers pass raw HTML through, so a model named
`<img src=x onerror=...>` would otherwise run its script in whoever opens the report, and a name
with brackets could turn into a link.
"""

from __future__ import annotations

import html
import re
from urllib.parse import quote

from badnet_prune.orchestrator.report.pages import ModelPage, ReportPages
from badnet_prune.orchestrator.report.tables import Table, label

# Characters that start Markdown markup which could make a link, an image, code or emphasis of a name.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]!|])")


def escape(text: object) -> str:
    """`text` as literal Markdown on one line: HTML's <, > and & as entities, markup characters
    backslash-escaped, line breaks as spaces (so a name cannot start a new block)."""
    flat = " ".join(str(text).splitlines())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def render_markdown(pages: ReportPages, figure_names: dict[int, dict[str, str]]) -> str:
    """figure_names: per model id, {'curve': 'figures/...png', 'samples': ...} as written."""
    report = pages.report
    unfinished = ", ".join(f"{escape(m.name)} ({escape(m.status)})" for m in report.unfinished_models)
    lines = [f"# Sweep {report.id}: {escape(report.name)}", "", escape(pages.description()), "",
             "## Verdict: which backdoors were removed, at what cost", "", escape(pages.verdict_caption()), "",
             *table_markdown(pages.verdict), "", "## Across models", "", escape(pages.summary_caption()), "",
             *table_markdown(pages.overview), ""]
    if report.failed_models:
        lines += ["### Failed models", "", *table_markdown(pages.failed_table()), ""]
    if report.unfinished_models:
        lines += ["Not finished yet: " + unfinished, ""]
    for page in pages.models:
        lines += _model_lines(page, figure_names.get(page.model.id, {}))
    return "\n".join(lines) + "\n"


def _model_lines(page: ModelPage, figures: dict[str, str]) -> list[str]:
    model = page.model
    name = escape(model.name)
    header, rows = model.lab_table()
    lab = Table("lab", header, [dict(zip(header, row, strict=True)) for row in rows])
    lines = [f"## {name}", "", escape(page.description()), "", "### B, B' and G on test data", "",
             *table_markdown(lab), "", "### Pruning curve (clean validation data)", "",
             f"![{name}: pruning curve]({_link(figures['curve'])})", ""]
    for section in page.sections:
        lines += [f"### {escape(section.title)}", "", escape(section.caption), ""]
        if section.slug in figures:
            lines += [f"![{name}: {escape(section.title)}]({_link(figures[section.slug])})", ""]
        if section.table is not None:
            lines += [*table_markdown(section.table), ""]
    lines += ["### Sample test images", ""]
    lines += [f"*{escape(text)}*\n" for text in page.samples.missing]
    if "samples" in figures:
        lines += [escape(page.samples_caption()), "", f"![{name}: samples]({_link(figures['samples'])})", "",
                  *table_markdown(page.samples_table()), ""]
    lines += [f"### Ranking ({len(page.ranking.rows)} channels, pruned in this order)", "",
              *table_markdown(page.ranking), ""]
    return lines


def _link(relative: str) -> str:
    """A figure's relative path as a link target: percent-encoded, so no character of it ends the link."""
    return quote(relative, safe="/")


def table_markdown(table: Table) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(escape(cell) for cell in cells) + " |"

    return [line([label(column) for column in table.columns]), line(["---"] * len(table.columns)),
            *(line(cells) for cells in table.cells())]
