"""Reading a report back as a user sees it: the tables and images of an HTML page, the tables of
report.md, the CSV files; and the formatting rule the report promises, restated independently."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path


@dataclass
class HtmlTable:
    attrs: dict[str, str]
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    section: str | None = None  # data-model of the enclosing section


@dataclass
class Page:
    tables: list[HtmlTable]
    images: list[tuple[dict[str, str], str | None]]  # (attrs, section)
    links: list[str] = field(default_factory=list)  # every <a href>
    classes: list[list[list[str]]] = field(default_factory=list)  # per table, per body row, each cell's class

    def tables_of(self, css_class: str, section: str | None = None) -> list[HtmlTable]:
        return [t for t in self.tables if css_class in t.attrs.get("class", "").split()
                and (section is None or t.section == section)]

    def by_id(self, element_id: str) -> HtmlTable:
        return next(t for t in self.tables if t.attrs.get("id") == element_id)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[HtmlTable] = []
        self.images: list[tuple[dict[str, str], str | None]] = []
        self.section: str | None = None
        self.table: HtmlTable | None = None
        self.row: list[str] | None = None
        self.cell: list[str] | None = None
        self.in_head = False
        self.links: list[str] = []
        self.classes: list[list[list[str]]] = []
        self.row_classes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "section" and "data-model" in values:
            self.section = values["data-model"]
        elif tag == "table":
            self.table = HtmlTable(values, section=self.section)
            self.classes.append([])
        elif tag == "thead":
            self.in_head = True
        elif tag == "tr":
            self.row, self.row_classes = [], []
        elif tag in ("td", "th"):
            self.cell = []
            self.row_classes.append(values.get("class", ""))
        elif tag == "img":
            self.images.append((values, self.section))
        elif tag == "a" and "href" in values:
            self.links.append(values["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section = None
        elif tag == "table" and self.table is not None:
            self.tables.append(self.table)
            self.table = None
        elif tag == "thead":
            self.in_head = False
        elif tag in ("td", "th") and self.row is not None and self.cell is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr" and self.table is not None and self.row is not None:
            if self.in_head:
                self.table.header = self.row
            else:
                self.table.rows.append(self.row)
                self.classes[-1].append(self.row_classes)
            self.row = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def parse_page(text: str) -> Page:
    parser = _Parser()
    parser.feed(text)
    return Page(parser.tables, parser.images, parser.links, parser.classes)


def cell_classes(page: Page, table: HtmlTable) -> list[list[str]]:
    """Each body cell's class attribute of one of the page's tables."""
    return page.classes[next(i for i, t in enumerate(page.tables) if t is table)]


def model_page(out: Path, name: str) -> Page:
    """A model's own page, found through index.html's link to it."""
    index = parse_page((out / "index.html").read_text(encoding="utf-8"))
    [href] = [link for link in set(index.links) if link.startswith("models/") and link.endswith(f"/{name}.html")]
    return parse_page((out / href).read_text(encoding="utf-8"))


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table of a Markdown text: (header, rows)."""
    tables, lines = [], text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].startswith("| ") and index + 1 < len(lines) and lines[index + 1].startswith("| ---"):
            header = _cells(lines[index])
            index += 2
            rows = []
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(_cells(lines[index]))
                index += 1
            tables.append((header, rows))
        else:
            index += 1
    return tables


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip()[1:-1].split(" | ")]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def percent(value: float | None) -> str:
    """Accuracies, ASRs and rates: 2 decimals; nothing for a missing value."""
    return "" if value is None else f"{value:.2f}"


def fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def threshold(value: float) -> str:
    return f"{value * 100:g}%"


def exact(text: str) -> float | None:
    """A CSV cell back to the float it was written from (Python writes floats round-trip exact)."""
    return None if text == "" else float(text)
