"""report.md: the same report as plain Markdown, for a terminal, a pull request or a wiki.

Figures cannot be inlined in Markdown portably, so they are linked from figures/ beside it.
"""

from __future__ import annotations

from orchestrator.report.pages import ModelPage, ReportPages
from orchestrator.report.tables import Table


def render_markdown(pages: ReportPages, figure_names: dict[int, dict[str, str]]) -> str:
    """figure_names: per model id, {'curve': 'figures/...png', 'samples': ...} as written."""
    report = pages.report
    lines = [f"# Sweep {report.id}: {report.name}", "", pages.description(), "", "## Across models", "",
             pages.summary_caption(), "", *table_markdown(pages.tables["summary"]), ""]
    if report.failed_models:
        lines += ["### Failed models", "", *table_markdown(pages.failed_table()), ""]
    if report.unfinished_models:
        lines += ["Not finished yet: " + ", ".join(f"{m.name} ({m.status})" for m in report.unfinished_models), ""]
    for page in pages.models:
        lines += _model_lines(page, figure_names.get(page.model.id, {}))
    return "\n".join(lines) + "\n"


def _model_lines(page: ModelPage, figures: dict[str, str]) -> list[str]:
    model = page.model
    header, rows = model.lab_table()
    lab = Table("lab", header, [dict(zip(header, row, strict=True)) for row in rows])
    lines = [f"## {model.name}", "", page.description(), "", "### B, B' and G on test data", "",
             *table_markdown(lab), "", "### Pruning curve (clean validation data)", "",
             f"![{model.name}: pruning curve]({figures['curve']})", "", "### Sample test images", ""]
    lines += [f"*{text}*\n" for text in page.samples.missing]
    if "samples" in figures:
        lines += [page.samples_caption(), "", f"![{model.name}: samples]({figures['samples']})", "",
                  *table_markdown(page.samples_table()), ""]
    lines += [f"### Ranking ({len(page.ranking.rows)} channels, pruned in this order)", "",
              *table_markdown(page.ranking), ""]
    return lines


def table_markdown(table: Table) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"

    return [line(table.columns), line(["---"] * len(table.columns)), *(line(cells) for cells in table.cells())]
