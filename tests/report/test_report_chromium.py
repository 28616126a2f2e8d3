"""index.html as a real browser builds it: headless Chromium's DOM has each model's table and
inlined curve, and the cross-model table has one row per model and threshold."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import Engine

from db.repository import list_models
from db.results import read_selections
from db.session import session_scope
from tests.report.conftest import ReportedSweep
from tests.report.page import parse_page

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        reason = "no chromium installed (Debian: apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true must have it")
        pytest.skip(reason)
    return found


def run_chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / "chromium-profile"
    result = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_chromium_renders_every_models_table_and_curve(reported: ReportedSweep, engine: Engine,
                                                       tmp_path: Path) -> None:
    dom = run_chromium(tmp_path, "--dump-dom", (reported.out / "index.html").resolve().as_uri())
    page = parse_page(dom)
    with session_scope(engine) as session:
        models = list_models(session, reported.sweep_id)
        done = [m for m in models if m.status == "done"]
        thresholds = {m.name: [s.threshold for s in read_selections(session, m.id)] for m in done}
    assert len(done) >= 2
    for model in done:
        assert len(page.tables_of("lab", model.name)) == 1, model.name
        curves = [attrs for attrs, section in page.images if section == model.name and attrs.get("class") == "curve"]
        assert len(curves) == 1 and curves[0]["src"].startswith("data:image/png;base64,"), model.name
        assert len(curves[0]["src"]) > 5000, "an empty image"
    summary = page.by_id("summary")
    column = {name: index for index, name in enumerate(summary.header)}
    shown = sorted((row[column["model"]], row[column["threshold"]]) for row in summary.rows)
    assert shown == sorted((name, f"{float(t) * 100:g}%") for name, ts in thresholds.items() for t in ts)
    assert [row[0] for row in page.by_id("failed").rows] == [m.name for m in models if m.status == "failed"]
    assert all(not src.startswith(("http:", "https:")) for attrs, _ in page.images for src in [attrs.get("src", "")])


def test_chromium_screenshot_of_the_page(reported: ReportedSweep, tmp_path: Path) -> None:
    """A screenshot is written (a person can look at it; the test only checks it is a real PNG)."""
    shot = tmp_path / "report.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400",
                 (reported.out / "index.html").resolve().as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
