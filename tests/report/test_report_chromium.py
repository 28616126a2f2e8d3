"""The report as a real browser builds it: headless Chromium's DOM of index.html links each model's page,
which has its table and inlined curve; the across-models table has every model and threshold; and laid
out at 1400 and 1920 px, no table is wider than the page (measured in the browser, not read off the HTML)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import Engine

from badnet_prune.db.repository import list_models
from badnet_prune.db.results import read_selections
from badnet_prune.db.session import prepare_database, session_scope
from badnet_prune.orchestrator.report.write import write_report
from bench.report_scale import synthetic_sweep
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
    index = run_chromium(tmp_path, "--dump-dom", (reported.out / "index.html").resolve().as_uri())
    page = parse_page(index)
    with session_scope(engine) as session:
        models = list_models(session, reported.sweep_id)
        done = [m for m in models if m.status == "done"]
        thresholds = {m.name: [s.threshold for s in read_selections(session, m.id)] for m in done}
    assert len(done) >= 2
    assert page.images == [], "the main page has no figures: they are on the models' pages"
    for model in done:
        [href] = {link for link in page.links if link.endswith(f"/{model.name}.html")}
        own = parse_page(run_chromium(tmp_path, "--dump-dom", (reported.out / href).resolve().as_uri()))
        assert len(own.tables_of("lab", model.name)) == 1, model.name
        curves = [attrs for attrs, section in own.images if section == model.name and attrs.get("class") == "curve"]
        assert len(curves) == 1 and curves[0]["src"].startswith("data:image/png;base64,"), model.name
        assert len(curves[0]["src"]) > 5000, "an empty image"
        assert "../index.html" in own.links
        assert all(not src.startswith(("http:", "https:")) for attrs, _ in own.images for src in [attrs.get("src", "")])
    summary = page.by_id("summary")
    column = {name: index for index, name in enumerate(summary.header)}
    shown = {(row[column["model"]], row[column["threshold"]]) for row in summary.rows}
    assert shown == {(name, f"{float(t) * 100:g}%") for name, ts in thresholds.items() for t in ts}
    assert [row[0] for row in page.by_id("failed").rows] == [m.name for m in models if m.status == "failed"]


# Appended to a copy of a page: after load, how wide each table is against the box that holds it, the
# document against the window, and how much the sample grid is scaled; written into the DOM for --dump-dom.
PROBE = """<script>window.addEventListener('load', function(){
  var r = {window: window.innerWidth, document: document.documentElement.scrollWidth,
           viewport: document.documentElement.clientWidth, tables: [], samples: []};
  document.querySelectorAll('table').forEach(function(t){
    r.tables.push({name: t.id || t.className, scroll: t.parentElement.scrollWidth,
                   client: t.parentElement.clientWidth, table: t.getBoundingClientRect().width});
  });
  document.querySelectorAll('img.samples').forEach(function(i){
    r.samples.push({natural: i.naturalWidth, shown: i.getBoundingClientRect().width});
  });
  var out = document.createElement('pre'); out.id = 'layout-probe'; out.textContent = JSON.stringify(r);
  document.body.appendChild(out);
});</script>"""


def layout(tmp_path: Path, page: Path, width: int) -> dict:
    """The PROBE's findings for `page` in a window `width` pixels wide."""
    probed = page.with_name(f"probe-{page.name}")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = run_chromium(tmp_path, "--dump-dom", f"--window-size={width},1000", probed.resolve().as_uri())
    found = re.search(r'<pre id="layout-probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run"
    result = json.loads(html.unescape(found.group(1)))
    assert result["window"] == width
    return result


def assert_fits(result: dict, what: str) -> None:
    for table in result["tables"]:
        assert table["scroll"] <= table["client"], f"{what}: table {table['name']} scrolls: {table}"
    assert result["document"] <= result["viewport"], f"{what}: the page scrolls sideways: {result}"


@pytest.mark.parametrize("width", [1400, 1920])
def test_the_tables_fit_the_window_without_scrolling(reported: ReportedSweep, tmp_path: Path, width: int) -> None:
    copy = tmp_path / "report"
    shutil.copytree(reported.out, copy)
    result = layout(tmp_path, copy / "index.html", width)
    assert {"verdict", "summary"} <= {table["name"] for table in result["tables"]}
    assert_fits(result, "index.html")
    for page in sorted((copy / "models").glob("*.html")):
        result = layout(tmp_path, page, width)
        assert_fits(result, page.name)
        for grid in result["samples"]:  # captions are 10 pt at 100 dpi in the PNG: 13.9 px at its own size
            assert grid["shown"] >= grid["natural"] * 10 / 13.9 * 0.99, f"{page.name}: captions under 10 px: {grid}"
        assert result["samples"], f"{page.name} has no sample grid"


def test_a_wide_sweep_fits_too(tmp_path: Path) -> None:
    """Five poisons with long names, fine-pruning's columns and long model names: the page still fits at 1400."""
    engine = prepare_database(f"sqlite:///{tmp_path / 'wide.db'}")
    poisons = ("sunglasses", "lipstick", "eyebrows_trigger_long_name", "a", "yellow_square_bottom_right")
    names = ["m", "a_model_whose_name_is_much_longer_than_any_column_header_0123456789", "m-2"]
    sweep_id = synthetic_sweep(engine, len(names), poisons=poisons, fine_tune=True, names=names)
    index = write_report(engine, sweep_id, tmp_path / "report", samples_per_set=0)
    engine.dispose()
    result = layout(tmp_path, index, 1400)
    assert_fits(result, "index.html")
    assert_fits(layout(tmp_path, tmp_path / "report" / "models" / f"{names[1]}.html", 1400), "a model page")


def test_chromium_screenshot_of_the_page(reported: ReportedSweep, tmp_path: Path) -> None:
    """Screenshots are written (a person can look at them; the test only checks they are real PNGs)."""
    for name, page in (("index", reported.out / "index.html"), ("model", next((reported.out / "models").iterdir()))):
        shot = tmp_path / f"{name}.png"
        run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,2400", page.resolve().as_uri())
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
