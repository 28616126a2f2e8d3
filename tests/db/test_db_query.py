"""The CLI's read-only query on both backends: rows for a SELECT, one-line refusals for anything that
writes, a statement timeout that stops endless queries, and a missing SQLite file left uncreated."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from badnet_prune.db.errors import DatabaseUnavailable, ReadOnlyQueryError
from badnet_prune.db.query import run_read_only_query
from badnet_prune.db.repository import create_sweep, get_sweep
from badnet_prune.db.session import prepare_database, session_scope

TIMEOUT_S = 30
WRITES = [
    "INSERT INTO sweeps (name) VALUES ('x')",
    "delete from sweeps",
    "UPDATE sweeps SET name = 'y'",
    "DROP TABLE sweeps",
    "  -- a comment first\n  /* and another */ drop table sweeps;",
    "CREATE TABLE t (a int)",
    "ALTER TABLE sweeps ADD COLUMN x int",
    "SELECT 1; DELETE FROM sweeps",
    "SELECT 1; COMMIT; DROP TABLE sweeps",
    "WITH gone AS (DELETE FROM sweeps RETURNING id) SELECT * FROM gone",
    "WITH x AS (SELECT 1) DELETE FROM sweeps",
    "WITH x AS (INSERT INTO sweeps (name) VALUES ('x') RETURNING id) SELECT * FROM x",
    "",
]
ENDLESS = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
VIEWS = ["step_results", "selection_results", "evaluation_results"]


def query(db_url: str, sql: str, timeout_s: float = TIMEOUT_S):
    return run_read_only_query(db_url, sql, timeout_s=timeout_s)


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


def test_a_select_returns_columns_and_rows(db_url: str, sweep_id: int) -> None:
    columns, rows = query(db_url, "SELECT id, name, range_size FROM sweeps ORDER BY id;")
    assert columns == ["id", "name", "range_size"]
    assert rows == [(sweep_id, "lab", 10)]
    assert query(db_url, "select name from sweeps where name like 'nothing%'") == (["name"], [])
    columns, rows = query(db_url, "WITH s AS (SELECT name FROM sweeps) SELECT count(*) AS n FROM s")
    assert (columns, rows) == (["n"], [(1,)])


def test_the_documented_views_are_readable(db_url: str, engine: Engine) -> None:
    for view in VIEWS:
        assert query(db_url, f"SELECT * FROM {view}")[1] == []


def test_anything_that_writes_is_refused(db_url: str, sweep_id: int, engine: Engine) -> None:
    for sql in WRITES:
        with pytest.raises(ReadOnlyQueryError) as raised:
            query(db_url, sql)
        assert "\n" not in str(raised.value), sql
    with session_scope(engine) as session:
        assert get_sweep(session, sweep_id).name == "lab"
    assert query(db_url, "SELECT count(*) FROM sweeps")[1] == [(1,)]


def test_a_failing_select_is_one_line(db_url: str, engine: Engine) -> None:
    with pytest.raises(ReadOnlyQueryError, match="query refused or failed") as raised:
        query(db_url, "SELECT * FROM no_such_table")
    assert "\n" not in str(raised.value)


def test_an_endless_recursive_query_stops_at_the_timeout(db_url: str, engine: Engine) -> None:
    started = time.monotonic()
    with pytest.raises(ReadOnlyQueryError, match="statement timeout of 1 s") as raised:
        query(db_url, ENDLESS, timeout_s=1)
    assert time.monotonic() - started < 10
    assert "BADNET_PRUNE_STATEMENT_TIMEOUT" in str(raised.value) and "\n" not in str(raised.value)


def test_a_missing_sqlite_file_is_unavailable_and_never_created(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "folder" / "missing.db"
    with pytest.raises(DatabaseUnavailable, match="no such file"):
        query(f"sqlite:///{target}", "SELECT 1")
    assert not (tmp_path / "no").exists()


def test_sqlite_refuses_pragmas_and_extensions_through_a_select(sqlite_url: str) -> None:
    prepare_database(sqlite_url).dispose()
    for sql in ("SELECT * FROM pragma_journal_mode('delete')", "SELECT load_extension('/tmp/evil')"):
        with pytest.raises(ReadOnlyQueryError):
            query(sqlite_url, sql)


# ---- the sql command ------------------------------------------------------------------------------


def run_sql(monkeypatch, capfd, *args: str) -> tuple[int, str, str]:
    """`badnet-prune sql ...` as the console script runs it, in this process: (exit code, stdout, stderr)."""
    from badnet_prune.orchestrator.cli import main

    monkeypatch.setattr(sys, "argv", ["badnet-prune", "sql", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capfd.readouterr()
    code = exited.value.code
    return (0 if code is None else code if isinstance(code, int) else 1), out, err


def test_the_sql_command_never_creates_a_database(tmp_path: Path, monkeypatch, capfd) -> None:
    target = tmp_path / "typo" / "badnet-prune.db"
    code, out, err = run_sql(monkeypatch, capfd, "--db", str(target), "SELECT 1")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and str(target) in err and "no such file" in err, err
    assert not (tmp_path / "typo").exists()


def test_the_sql_command_stops_an_endless_query_in_one_line(sqlite_url: str, monkeypatch, capfd) -> None:
    prepare_database(sqlite_url).dispose()
    monkeypatch.setenv("BADNET_PRUNE_STATEMENT_TIMEOUT", "1")
    code, _, err = run_sql(monkeypatch, capfd, "--db", sqlite_url, ENDLESS)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "statement timeout of 1 s" in err, err


LONG = "x" * 300


def test_piped_output_is_csv_with_whole_values(db_url: str, engine: Engine, monkeypatch, capfd) -> None:
    sql = f"SELECT '{LONG}' AS long, 2 AS n, '=HYPERLINK(1)' AS formula"
    code, out, err = run_sql(monkeypatch, capfd, "--db", db_url, sql)
    assert code == 0, err
    assert out == f"long,n,formula\n{LONG},2,'=HYPERLINK(1)\n"


def test_json_output(db_url: str, engine: Engine, monkeypatch, capfd) -> None:
    code, out, err = run_sql(monkeypatch, capfd, "--db", db_url, "--json", f"SELECT '{LONG}' AS long, 2 AS n")
    assert code == 0, err
    assert json.loads(out) == [{"long": LONG, "n": 2}]
    code, _, err = run_sql(monkeypatch, capfd, "--db", db_url, "--json", "SELECT 1 AS a, 2 AS a")
    assert code == 2 and "more than once" in err


def test_a_terminal_gets_a_table_with_whole_values() -> None:
    """On a terminal narrower than a value, the table folds the value onto more lines instead of cutting it,
    and a stored value is shown as written, never read as Rich markup."""
    from rich.console import Console

    from badnet_prune.orchestrator.commands.sql import print_table

    console = Console(width=60, record=True, file=io.StringIO())
    print_table(["long", "markup"], [(LONG, "[b]m[/b]")], console)
    shown = console.export_text()
    assert shown.count("x") == len(LONG)
    assert "[b]m[/b]" in shown
