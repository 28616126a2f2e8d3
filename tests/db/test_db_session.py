"""Engines and sessions: SQLite file placement and settings, transactions, several writers,
and a one-line DatabaseUnavailable when the database cannot be reached."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, make_url

from badnet_prune.db.errors import DatabaseUnavailable
from badnet_prune.db.repository import add_model, create_sweep, get_sweep, list_models
from badnet_prune.db.results import steps_stored
from badnet_prune.db.session import make_engine, prepare_database, session_scope

SWEEP = {
    "name": "s",
    "config": {},
    "thresholds": [0.02],
    "policy": "first",
    "prune_layer": "conv_3",
    "rank_layer": "pool_3",
    "range_size": 10,
    "artifact_dir": "a",
}

WRITER_SETUP = """
from badnet_prune.db.session import make_engine, session_scope
from badnet_prune.db.results import StepRow, save_steps, steps_stored
from badnet_prune.db.tasks import end_task, plan_tasks, stage_tasks, take_lease
"""
# Read, then write, in each transaction: with SQLite's default deferred BEGIN this fails at once
# with "database is locked" when another process wrote in between.
WRITER_WORK = """
url, sweep_id, model_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = make_engine(url)
for step in range(12):
    with session_scope(engine) as session:
        assert not steps_stored(session, model_id, step, step + 1)
        plan_tasks(session, sweep_id, model_id, "prune_range", [(f"{step}-{step + 1}", {})])
        task = stage_tasks(session, sweep_id, model_id, "prune_range")[-1].id
        assert take_lease(session, task, "t", str(model_id), 30)
        save_steps(session, model_id, [StepRow(step, step or None, step / 60, 90.0, 9, {"p": (50.0, 5)})])
        assert end_task(session, task, "t", "done")
engine.dispose()
"""


def test_a_relative_sqlite_url_is_a_file_in_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    engine = prepare_database("sqlite:///badnet-prune.db")
    try:
        assert engine.url.database == str(tmp_path / "badnet-prune.db")
        monkeypatch.chdir(tmp_path.parent)  # a later chdir does not move the database
        with session_scope(engine) as session:
            create_sweep(session, **SWEEP)
        assert (tmp_path / "badnet-prune.db").is_file()
        assert (tmp_path / "badnet-prune.db-wal").is_file()  # WAL mode, while the engine holds it open
    finally:
        engine.dispose()


def test_a_sqlite_file_gets_its_folders_made(tmp_path: Path) -> None:
    engine = prepare_database(f"sqlite:///{tmp_path / 'a' / 'b' / 'state.db'}")
    engine.dispose()
    assert (tmp_path / "a" / "b" / "state.db").is_file()


def test_a_session_scope_commits_or_rolls_back(engine: Engine) -> None:
    with session_scope(engine) as session:
        kept = create_sweep(session, **SWEEP)
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        lost = create_sweep(session, **SWEEP)
        raise RuntimeError("worker died")
    with session_scope(engine) as session:
        assert get_sweep(session, kept).name == "s"
        with pytest.raises(LookupError):
            get_sweep(session, lost)


def test_several_processes_write_at_once(engine: Engine, db_url: str, run_together) -> None:
    with session_scope(engine) as session:
        sweep_id = create_sweep(session, **SWEEP)
        for name in ("a", "b", "c"):
            add_model(session, sweep_id, name=name, path=name, sha256=name, input_scale=1.0, data=[])
    with session_scope(engine) as session:
        model_ids = [model.id for model in list_models(session, sweep_id)]
    run_together(WRITER_SETUP, WRITER_WORK, [[db_url, str(sweep_id), str(model_id)] for model_id in model_ids])
    with session_scope(engine) as session:
        for model_id in model_ids:
            assert steps_stored(session, model_id, 0, 12) and not steps_stored(session, model_id, 0, 13)


def test_an_unreachable_postgres_is_one_line() -> None:
    with pytest.raises(DatabaseUnavailable) as raised:
        prepare_database("postgresql+psycopg://postgres:secret@127.0.0.1:1/test")
    message = str(raised.value)
    assert message.startswith("cannot reach database postgresql+psycopg://postgres:***@127.0.0.1:1/test: ")
    assert "\n" not in message and "secret" not in message


@pytest.mark.parametrize("kind", ["folder is a file", "not a database"])
def test_an_unusable_sqlite_file_is_one_line(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"this is not a database\n" * 100)
    path = blocker / "state.db" if kind == "folder is a file" else blocker
    with pytest.raises(DatabaseUnavailable) as raised:
        prepare_database(f"sqlite:///{path}")
    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_urls() -> None:
    assert make_engine("postgresql://u@h/d").url.drivername == "postgresql+psycopg"
    with pytest.raises(DatabaseUnavailable, match="mysql is not supported"):
        make_engine("mysql://u@h/d")
    assert make_url(str(make_engine("sqlite:///x.db").url)).database == str(Path("x.db").absolute())


def test_the_pool_settings_bound_a_postgres_engine_and_a_bad_one_is_one_line(postgres_url: str) -> None:
    from badnet_prune.numerics.errors import BadInputError
    from badnet_prune.settings import Settings

    settings = Settings.from_env({"BADNET_PRUNE_DB": postgres_url, "BADNET_PRUNE_DB_POOL_SIZE": "3",
                                  "BADNET_PRUNE_DB_MAX_OVERFLOW": "0"})
    engine = prepare_database(settings.db_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
    try:
        with engine.connect(), engine.connect():  # a task's session and its lease heartbeat's
            assert engine.pool.checkedout() == 2
        assert (engine.pool.size(), engine.pool._max_overflow) == (3, 0)  # a fourth would wait for one of them
    finally:
        engine.dispose()
    for name, value in (("BADNET_PRUNE_DB_POOL_SIZE", "1"), ("BADNET_PRUNE_DB_MAX_OVERFLOW", "some")):
        with pytest.raises(BadInputError) as refused:
            Settings.from_env({name: value})
        assert str(refused.value).startswith(f"{name}: expected a whole number of connections")
        assert "\n" not in str(refused.value)
