"""The report's sample grid and its behaviour when files or the sweep are missing."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from badnet_prune.orchestrator.report.samples import pick_samples
from tests import helpers
from tests.report.conftest import ReportedSweep, run_cli
from tests.report.page import cell_classes, model_page, parse_page


def test_samples_are_labelled_by_b_and_each_g(reported: ReportedSweep) -> None:
    for model in ("quick", "scaled"):
        page = model_page(reported.out, model)
        [samples] = page.tables_of("samples", model)
        assert samples.header[:4] == ["dataset", "index", "label", "B"] and len(samples.header) == 7
        datasets = {row[0] for row in samples.rows}
        assert datasets == ({"clean", "sunglasses", "copy"} if model == "quick" else {"clean", "sunglasses"})
        assert len(samples.rows) == 6 * len(datasets)
        for row, classes in zip(samples.rows, cell_classes(page, samples), strict=True):
            assert all(label in (row[3], "N") for label in row[4:]), row  # G gives B's label, or N
            for label, css in zip(row[3:], classes[3:], strict=True):  # B and each G, coloured by what they said
                attack = row[0] != "clean" and label == row[2]
                assert css == ("flagged" if label == "N" else "attack" if attack else "num"), (row, classes)
        assert any(attrs.get("class") == "samples" and section == model for attrs, section in page.images)


def test_samples_show_gs_misses_not_only_evenly_spaced_images() -> None:
    misses = np.zeros(240, dtype=bool)
    misses[[7, 100, 101, 239]] = True
    picked = pick_samples(misses, 6)
    assert picked == sorted(picked) and len(set(picked)) == 6
    assert sum(misses[picked]) == 3, "half of the shown images are misses where there are enough"
    assert pick_samples(np.zeros(240, dtype=bool), 6) == [0, 48, 96, 143, 191, 239], "no misses: evenly spaced"
    assert pick_samples(np.ones(5, dtype=bool), 6) == [0, 1, 2, 3, 4], "never more than there are"
    assert sum(p >= 200 for p in pick_samples(np.array([True] * 200 + [False] * 2), 6)) == 2, "misses fill in"
    assert pick_samples(misses, 0) == []


def test_missing_model_files_are_reported_not_fatal(reported: ReportedSweep, tmp_path: Path) -> None:
    database = tmp_path / "moved.db"
    shutil.copy(reported.db_url.removeprefix("sqlite:///"), database)
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE artifacts SET path = path || '.moved' WHERE kind = 'G' AND threshold = '0.04'")
        connection.execute("UPDATE models SET path = path || '.moved' WHERE name = 'scaled'")
    out = tmp_path / "report"
    run_cli("report", str(reported.sweep_id), "--out", str(out), "--db", f"sqlite:///{database}", env=reported.env)
    text = (out / "index.html").read_text(encoding="utf-8")
    quick, scaled = model_page(out, "quick"), model_page(out, "scaled")
    [samples] = quick.tables_of("samples", "quick")
    assert "G 4%" not in samples.header and "G 10%" in samples.header
    pages = {name: (out / "models" / f"{name}.html").read_text(encoding="utf-8") for name in ("quick", "scaled")}
    assert "G_0.04.keras.moved (G 4%) is missing" in pages["quick"]
    assert scaled.tables_of("samples", "scaled") == [] and "(the model B) is missing" in pages["scaled"]
    assert len(quick.tables_of("lab") + scaled.tables_of("lab")) == 2, "the tables come from the database"
    assert parse_page(text).by_id("verdict").rows, "the main page needs no file"
    assert "is missing" in (out / "report.md").read_text(encoding="utf-8")


def test_an_unknown_sweep_is_a_one_line_error(reported: ReportedSweep, tmp_path: Path) -> None:
    result = helpers.run_cli("report", "999", "--out", str(tmp_path / "r"), "--db", reported.db_url, env=reported.env)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: sweep 999: no such sweep in this database"


HOSTILE = ["<script>alert(1)</script>", "../../escape", "a\"onmouseover=\"alert(1)", "x/../../y?z#w", "ok_name-1"]


def test_hostile_model_names_stay_text_and_their_pages_stay_in_models(tmp_path: Path) -> None:
    """The attacker's test: names that are markup, paths or attribute breakers are printed as text, and each
    model's page is a plain file under models/ that the main page links to."""
    from badnet_prune.db.session import prepare_database
    from badnet_prune.orchestrator.report.write import write_report
    from bench.report_scale import synthetic_sweep

    engine = prepare_database(f"sqlite:///{tmp_path / 'hostile.db'}")
    sweep_id = synthetic_sweep(engine, len(HOSTILE), names=HOSTILE)
    index = write_report(engine, sweep_id, tmp_path / "report", samples_per_set=0)
    engine.dispose()
    text = index.read_text(encoding="utf-8")
    assert "<script>alert" not in text and 'onmouseover="' not in text
    page = parse_page(text)
    verdict = page.by_id("verdict")
    assert {row[0] for row in verdict.rows} == set(HOSTILE)
    pages = sorted(link for link in set(page.links) if link != "../index.html")
    assert len(pages) == len(HOSTILE)
    folder = (tmp_path / "report" / "models").resolve()
    for link in pages:
        target = (tmp_path / "report" / unquote(link)).resolve()
        assert target.parent == folder and target.is_file(), link
    assert sorted(p.name for p in folder.iterdir())[-1] == "ok_name-1.html", "an identifier is its own file name"
    for target in folder.iterdir():
        assert "<script>alert" not in target.read_text(encoding="utf-8")
