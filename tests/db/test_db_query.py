"""The CLI's read-only query: rows for a SELECT, a clear refusal for anything that writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from db.errors import DatabaseUnavailable, ReadOnlyQueryError
from db.query import run_read_only_query
from db.repository import create_sweep, get_sweep
from db.session import make_engine, session_scope

WRITES = [
    "INSERT INTO sweeps (name) VALUES ('x')",
    "delete from sweeps",
    "UPDATE sweeps SET name = 'y'",
    "DROP TABLE sweeps",
    "  -- a comment first\n  /* and another */ drop table sweeps;",
    "CREATE TABLE t (a int)",
    "SELECT 1; DELETE FROM sweeps",
    "SELECT 1; COMMIT; DROP TABLE sweeps",
    "WITH gone AS (DELETE FROM sweeps RETURNING id) SELECT * FROM gone",
    "WITH x AS (SELECT 1) DELETE FROM sweeps",
    "",
]


@pytest.fixture
def sweep_id(engine: Engine) -> int:
    with session_scope(engine) as session:
        return create_sweep(
            session,
            name="lab",
            config={"a": 1},
            thresholds=[0.02],
            policy="first",
            prune_layer="conv_3",
            rank_layer="pool_3",
            range_size=10,
            artifact_dir="art",
        )


def test_a_select_returns_columns_and_rows(engine: Engine, sweep_id: int) -> None:
    columns, rows = run_read_only_query(engine, "SELECT id, name, range_size FROM sweeps ORDER BY id;")
    assert columns == ["id", "name", "range_size"]
    assert rows == [(sweep_id, "lab", 10)]
    assert run_read_only_query(engine, "select name from sweeps where name like 'nothing%'") == (["name"], [])
    columns, rows = run_read_only_query(engine, "WITH s AS (SELECT name FROM sweeps) SELECT count(*) AS n FROM s")
    assert (columns, rows) == (["n"], [(1,)])


def test_anything_that_writes_is_refused(engine: Engine, sweep_id: int) -> None:
    for sql in WRITES:
        with pytest.raises(ReadOnlyQueryError) as raised:
            run_read_only_query(engine, sql)
        assert "\n" not in str(raised.value), sql
    with session_scope(engine) as session:
        assert get_sweep(session, sweep_id).name == "lab"
    assert run_read_only_query(engine, "SELECT count(*) FROM sweeps")[1] == [(1,)]


def test_a_failing_select_is_one_line(engine: Engine) -> None:
    with pytest.raises(ReadOnlyQueryError, match="query refused or failed") as raised:
        run_read_only_query(engine, "SELECT * FROM no_such_table")
    assert "\n" not in str(raised.value)


def test_a_missing_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(DatabaseUnavailable, match="no such file"):
        run_read_only_query(engine, "SELECT 1")
    assert not (tmp_path / "missing.db").exists()
