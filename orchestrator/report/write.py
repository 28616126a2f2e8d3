"""Write a sweep's report folder: index.html, models/ (a page per model), report.md, figures/ and csv/."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine

from badnet_prune.db.session import session_scope
from badnet_prune.orchestrator.exports import to_csv
from badnet_prune.orchestrator.report.data import read_report
from badnet_prune.orchestrator.report.html import render_index, render_model
from badnet_prune.orchestrator.report.markdown import render_markdown
from badnet_prune.orchestrator.report.pages import ReportPages, build_pages


def write_report(engine: Engine, sweep_id: int, out: Path, *, asr_bound: float = 5.0, samples_per_set: int = 6) -> Path:
    """Read the sweep (LookupError if absent), draw and write everything; the path of index.html."""
    with session_scope(engine) as session:
        report = read_report(session, sweep_id, asr_bound)
    pages = build_pages(report, samples_per_set)
    out.mkdir(parents=True, exist_ok=True)
    (out / "csv").mkdir(exist_ok=True)
    for table in pages.tables.values():
        (out / "csv" / f"{table.name}.csv").write_text(to_csv(table.columns, table.rows), encoding="utf-8")
    figures = _write_figures(pages, out / "figures")
    (out / "report.md").write_text(render_markdown(pages, figures), encoding="utf-8")
    (out / "models").mkdir(exist_ok=True)
    for page in pages.models:
        (out / page.file).write_text(render_model(pages, page), encoding="utf-8")
    index = out / "index.html"
    index.write_text(render_index(pages), encoding="utf-8")
    return index


def _write_figures(pages: ReportPages, folder: Path) -> dict[int, dict[str, str]]:
    """The PNGs that report.md links to, named by position and model so that names never clash."""
    folder.mkdir(exist_ok=True)
    names: dict[int, dict[str, str]] = {}
    for position, page in enumerate(pages.models, start=1):
        stem = f"{position:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', page.model.name)}"
        images = {"curve": page.curve_png, "samples": page.samples_png,
                  **{section.slug: section.png for section in page.sections}}
        for kind, png in images.items():
            if png is not None:
                (folder / f"{stem}-{kind}.png").write_bytes(png)
                names.setdefault(page.model.id, {})[kind] = f"figures/{stem}-{kind}.png"
    return names
