"""A defense declared in one test module (tests/stages/extra_defense.py) runs end to end with no other file
edited: its settings table in a sweep file, its flag and options in defend, its stored outcome, curve and
networks, its column in csv/summary.csv, its section in the report, and its progress unit in status. Real
Celery workers run it too (tests/integration/test_pipeline_messages.py).

Through the console script: the CLI takes a stage module's flags and report columns from the modules it loads
when its process starts (orchestrator/cli.py), so a process of its own is what a user's run is."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sqlalchemy import select

from badnet_prune.db.models import CurvePoint, Evaluation, StageOutcome
from badnet_prune.db.session import make_engine, session_scope
from tests.helpers import cached_quick_badnet, model_entry, run_console_script, write_sweep_toml
from tests.stages.test_stage_contract import env_for

PLUGIN = "tests.stages.extra_defense"


def plugin_env(folder: Path) -> dict[str, str]:
    return {**env_for(folder, plugin=False), "BADNET_PRUNE_STAGE_MODULES": PLUGIN}


def test_a_defense_declared_in_one_module_runs_stores_and_reports(tmp_path: Path) -> None:
    sweep_file = write_sweep_toml(tmp_path / "sweep.toml", [model_entry("m0", cached_quick_badnet(0))],
                                  range_size=61)
    with open(sweep_file, "a", encoding="utf-8") as handle:
        handle.write("\n[random_prune]\ncount = 4\nseed = 7\n")
    env = plugin_env(tmp_path)
    done = run_console_script("sweep", str(sweep_file), env=env)
    assert done.returncode == 0, done.stderr
    sweep_id = done.stdout.split()[0]
    engine = make_engine(env["BADNET_PRUNE_DB"])
    with session_scope(engine) as session:
        (outcome,) = session.scalars(select(StageOutcome).where(StageOutcome.stage == "random_prune")).all()
        points = session.scalars(select(CurvePoint).where(CurvePoint.stage == "random_prune")
                                 .order_by(CurvePoint.point)).all()
        networks = {(e.network, e.role) for e in session.scalars(select(Evaluation))}
    engine.dispose()
    chosen = outcome.document["channels"]
    assert len(set(chosen)) == 4 and outcome.key == "random"
    assert [p.point for p in points] == [0, 1, 2, 3, 4] and points[0].clean_accuracy is not None
    assert {("B_random", "clean_test"), ("G_random", "clean_test"), ("G_random", "poisoned_test")} <= networks

    status = json.loads(run_console_script("status", sweep_id, "--json", env=env).stdout)
    assert status["models"][0]["units"]["random_prune"] == [4, 4]

    report = run_console_script("report", sweep_id, "--out", str(tmp_path / "report"), "--samples", "0", env=env)
    assert report.returncode == 0, report.stderr
    with open(tmp_path / "report" / "csv" / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {row["random_channels"] for row in rows} == {" ".join(map(str, chosen))}
    page = next((tmp_path / "report" / "models").glob("*.html")).read_text(encoding="utf-8")
    assert "Random pruning (a test&#x27;s straw man)" in page or "Random pruning (a test's straw man)" in page
    assert (tmp_path / "report" / "figures" / "01-m0-random_prune-0.png").is_file()
    index = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "random pruning (Grand)" in index, "the verdict names the defense's repaired net"


def test_defend_takes_the_defense_s_flag_and_options_from_its_declaration(tmp_path: Path) -> None:
    root = cached_quick_badnet(0)
    env = {key: value for key, value in plugin_env(tmp_path).items() if key != "BADNET_PRUNE_DB"}
    helped = run_console_script("defend", "-h", env={**env, "COLUMNS": "200"})
    assert "--random-prune-count" in helped.stdout and "--random-prune " in helped.stdout
    args = ["defend", "--model", str(root / "models" / "bd_weights.h5"), "--clean-valid",
            str(root / "data/cl/valid.h5"), "--clean-test", str(root / "data/cl/test.h5"),
            "--poisoned", f"sunglasses={root / 'data/bd/bd_valid.h5'},{root / 'data/bd/bd_test.h5'}",
            "--out", str(tmp_path / "out"), "--thresholds", "0.1"]
    refused = run_console_script(*args, "--random-prune-count", "2", env=env)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "error: --random-prune-count: only with --random-prune")
    done = run_console_script(*args, "--random-prune", "--random-prune-count", "2", env={**env, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["random_prune"]["channels"]) == 2
    assert "B'rand random" in done.stdout and "Grand random" in done.stdout
    assert (tmp_path / "out" / "models" / "G_random_random.keras").is_file()
