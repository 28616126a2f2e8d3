"""Commands that read a sweep name what they cannot find in one line and exit 2, instead of printing a header."""

from __future__ import annotations

from pathlib import Path

import pytest

from badnet_prune.db.repository import add_model, create_sweep
from badnet_prune.db.session import prepare_database, session_scope
from tests.helpers import run_cli


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
    (["leaderboard", "7"], "sweep 7: no such sweep"),
    (["fit-verdict", "r", "--sweep", "7"], "sweep 7: no such sweep"),
    # beyond a 64-bit key the driver would overflow: refused as a usage error before the database is asked
    (["status", str(2**64)], "Invalid value for 'SWEEP': Input should be less than or equal to 9223372036854775807"),
    (["steps", "0"], "Invalid value for 'SWEEP': Input should be greater than or equal to 1"),
    (["leaderboard", str(2**64)], "Invalid value for 'SWEEP'"),
    (["report", str(2**64), "--out", "r"], "Invalid value for 'SWEEP'"),
    (["sweep", "resume", str(2**64)], "Invalid value for 'SWEEP'"),
    (["fit-verdict", "r", "--sweep", str(2**64)], "Invalid value for '--sweep'"),
])
def test_what_a_sweep_lacks_is_one_line(database: str, args: list[str], phrase: str) -> None:
    done = run_cli(*args, "--db", database)
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and phrase in line, line


def test_a_model_of_the_sweep_prints_its_header(database: str) -> None:
    done = run_cli("steps", "1", "--model", "m0", "--db", database)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["model,step,channel,fraction_pruned,clean_accuracy"]


def test_report_can_say_what_it_wrote_as_json(database: str, tmp_path: Path) -> None:
    import json

    done = run_cli("report", "1", "--out", str(tmp_path / "r"), "--samples", "0", "--json", "--db", database)
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert written["sweep"] == 1 and Path(written["index"]).is_file() and Path(written["report_md"]).is_file()
    assert written["csv"] and all(Path(path).is_file() for path in written["csv"])


def test_a_broker_that_does_not_answer_is_one_line_and_registers_nothing(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from tests.helpers import synthetic_sweep

    sweep_file = synthetic_sweep(tmp_path / "sw")
    database = tmp_path / "broker.db"
    env = {"PATH": "/usr/bin:/bin", "BADNET_PRUNE_BROKER": "redis://127.0.0.1:1/0", "BADNET_PRUNE_DB": str(database)}
    done = run_cli("sweep", str(sweep_file), "--wait", env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in done.stderr.splitlines() if "127.0.0.1:1" in line], done.stderr
    assert len(errors) == 1 and "BADNET_PRUNE_BROKER" in errors[0] and "nothing was registered" in errors[0]
    with create_engine(f"sqlite:///{database}").connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM sweeps")).scalar() == 0


def test_status_with_a_broker_that_does_not_answer_is_one_line(database: str) -> None:
    from tests.helpers import run_cli

    done = run_cli("status", "1", "--db", database, "--broker", "redis://127.0.0.1:1/0", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and done.stdout == "", done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: BADNET_PRUNE_BROKER: the broker at redis://127.0.0.1:1/0 does not answer within 3 s")
    assert "without --broker and BADNET_PRUNE_BROKER it reads the database alone" in line


def test_a_worker_gives_up_on_a_dead_broker_after_its_wait_in_one_line(tmp_path: Path) -> None:
    """No Celery banner (whose masked password the URL does not have), no retrying for ever."""
    from tests.helpers import run_console_script

    env = {"PATH": "/usr/bin:/bin", "BADNET_PRUNE_BROKER_WAIT": "1", "BADNET_PRUNE_DB": str(tmp_path / "w.db")}
    done = run_console_script("worker", "--broker", "redis://127.0.0.1:1/0", env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "error: BADNET_PRUNE_BROKER: the broker at redis://127.0.0.1:1/0 does not answer within 1 s (Error 111 "
        "connecting to 127.0.0.1:1. Connection refused.); BADNET_PRUNE_BROKER_WAIT sets how long a worker waits"]
    assert done.stdout == ""
