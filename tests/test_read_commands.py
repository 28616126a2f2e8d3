"""Commands that read a sweep name what they cannot find in one line and exit 2, instead of printing a header."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.repository import add_model, create_sweep
from db.session import prepare_database, session_scope
from tests.helpers import run_console_script


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'read.db'}"
    engine = prepare_database(url)
    with session_scope(engine) as session:
        sweep_id = create_sweep(session, name="s", config={}, thresholds=["0.02"], policy="first", prune_layer="conv_3",
                                rank_layer="pool_3", range_size=10, artifact_dir=str(tmp_path / "a"))
        add_model(session, sweep_id, name="m0", path="p", sha256="s", input_scale=1.0, data=[])
    engine.dispose()
    return url


@pytest.mark.parametrize(("args", "phrase"), [
    (["steps", "1", "--model", "nosuch"], "--model: sweep 1 has no model 'nosuch' (its models: m0)"),
    (["steps", "7"], "sweep 7: no such sweep"),
    (["status", "7"], "sweep 7: no such sweep"),
])
def test_what_a_sweep_lacks_is_one_line(database: str, args: list[str], phrase: str) -> None:
    done = run_console_script(*args, "--db", database)
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and phrase in line, line


def test_a_model_of_the_sweep_prints_its_header(database: str) -> None:
    done = run_console_script("steps", "1", "--model", "m0", "--db", database)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["model,step,channel,fraction_pruned,clean_accuracy"]


def test_report_can_say_what_it_wrote_as_json(database: str, tmp_path: Path) -> None:
    import json

    done = run_console_script("report", "1", "--out", str(tmp_path / "r"), "--samples", "0", "--json", "--db", database)
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert written["sweep"] == 1 and Path(written["index"]).is_file() and Path(written["report_md"]).is_file()
    assert written["csv"] and all(Path(path).is_file() for path in written["csv"])
