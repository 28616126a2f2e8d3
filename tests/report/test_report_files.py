"""The report's sample grid and its behaviour when files or the sweep are missing."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

from tests.report.conftest import CLI, ReportedSweep, run_cli
from tests.report.page import parse_page


def test_samples_are_labelled_by_b_and_each_g(reported: ReportedSweep) -> None:
    page = parse_page((reported.out / "index.html").read_text(encoding="utf-8"))
    sections = {table.section for table in page.tables_of("lab")}
    assert sections == {"quick", "scaled"}
    for model in sections:
        [samples] = page.tables_of("samples", model)
        assert samples.header[:4] == ["dataset", "index", "label", "B"] and len(samples.header) == 7
        datasets = {row[0] for row in samples.rows}
        assert datasets == ({"clean", "sunglasses", "copy"} if model == "quick" else {"clean", "sunglasses"})
        assert len(samples.rows) == 6 * len(datasets)
        for row in samples.rows:  # G gives B's label, or N where B and B' disagree
            assert all(label in (row[3], "N") for label in row[4:]), row
        assert any(attrs.get("class") == "samples" and section == model for attrs, section in page.images)


def test_missing_model_files_are_reported_not_fatal(reported: ReportedSweep, tmp_path: Path) -> None:
    database = tmp_path / "moved.db"
    shutil.copy(reported.db_url.removeprefix("sqlite:///"), database)
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE artifacts SET path = path || '.moved' WHERE kind = 'G' AND threshold = '0.04'")
        connection.execute("UPDATE models SET path = path || '.moved' WHERE name = 'scaled'")
    out = tmp_path / "report"
    run_cli("report", str(reported.sweep_id), "--out", str(out), "--db", f"sqlite:///{database}", env=reported.env)
    text = (out / "index.html").read_text(encoding="utf-8")
    page = parse_page(text)
    [quick] = page.tables_of("samples", "quick")
    assert "G 4%" not in quick.header and "G 10%" in quick.header
    assert "G_0.04.keras.moved (G for 4%) is missing" in text
    assert page.tables_of("samples", "scaled") == [] and "(the model B) is missing" in text
    assert len(page.tables_of("lab")) == 2, "the tables come from the database, not the files"
    assert "is missing" in (out / "report.md").read_text(encoding="utf-8")


def test_an_unknown_sweep_is_a_one_line_error(reported: ReportedSweep, tmp_path: Path) -> None:
    result = subprocess.run([CLI, "report", "999", "--out", str(tmp_path / "r"), "--db", reported.db_url],
                            capture_output=True, text=True, env=reported.env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: sweep 999: no such sweep in this database"
