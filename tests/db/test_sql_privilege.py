"""The sql command is least privilege on PostgreSQL, tried as an attacker would on the real server.

It logs in as badnet_reader (migration 0003), which can SELECT the project's tables and views and nothing
else: reading the server's files, listing its folders, reloading its configuration, ending other roles'
sessions, taking a superuser's role back, and every write fail in one line. badnet_app, the role of the
workers and the orchestrator, can write rows but not change the schema or the migration history.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, make_url, text

from badnet_prune.db.errors import ReadOnlyQueryError
from badnet_prune.db.query import READER_ROLE, reader_url, run_read_only_query
from badnet_prune.db.repository import create_sweep
from badnet_prune.db.session import make_engine, prepare_database, session_scope
from tests.db.test_db_query import run_sql

APP_ROLE = "badnet_app"
NOT_ALLOWED = r"permission denied|must be a superuser|must be a member"
ATTACKS = {
    "server file": "SELECT pg_read_file('/etc/passwd')",
    "server file, binary": "SELECT pg_read_binary_file('/etc/passwd')",
    "server folder": "SELECT * FROM pg_ls_dir('.')",
    "file facts": "SELECT * FROM pg_stat_file('/etc/passwd')",
    "reload configuration": "SELECT pg_reload_conf()",
    "large object import": "SELECT lo_import('/etc/passwd')",
    "password hashes": "SELECT rolpassword FROM pg_authid",
    "take a superuser role back": "SELECT set_config('role', 'postgres', false)",
    "session authorization": "SELECT set_config('session_authorization', 'postgres', false)",
    "write the schema's sequence": "SELECT nextval(pg_get_serial_sequence('sweeps', 'id'))",
    "leave read-only": "SELECT set_config('transaction_read_only', 'off', true)",
    "insert": "INSERT INTO sweeps (name) VALUES ('x')",
    "update": "UPDATE sweeps SET name = 'y'",
    "delete": "DELETE FROM sweeps",
    "ddl": "CREATE TABLE evil (a int)",
    "drop": "DROP TABLE sweeps",
    "write in a CTE": "WITH gone AS (DELETE FROM sweeps RETURNING id) SELECT * FROM gone",
    "several statements": "SELECT 1; COMMIT; DROP TABLE sweeps",
}


@pytest.fixture
def migrated(postgres_url: str) -> Iterator[tuple[str, Engine]]:
    """A migrated schema of its own holding one sweep: (its owner's URL, the owner's engine)."""
    engine = prepare_database(postgres_url)
    with session_scope(engine) as session:
        create_sweep(session, name="lab", config={}, thresholds=[0.02], policy="first", prune_layer="conv_3",
                     rank_layer="pool_3", range_size=10, artifact_dir="art")
    yield postgres_url, engine
    engine.dispose()


def sweep_names(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(text("SELECT name FROM sweeps")))


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_attack_through_the_sql_command_fails_in_one_line(migrated, attack: str) -> None:
    url, engine = migrated
    with pytest.raises(ReadOnlyQueryError) as raised:
        run_read_only_query(url, ATTACKS[attack], timeout_s=30)
    assert "\n" not in str(raised.value)
    assert "root:" not in str(raised.value)
    assert sweep_names(engine) == ["lab"]


def test_the_query_runs_as_the_unprivileged_reader(migrated) -> None:
    url, _ = migrated
    _, rows = run_read_only_query(
        url, "SELECT current_user, session_user, current_setting('is_superuser') AS superuser, "
        "current_setting('transaction_read_only') AS read_only", timeout_s=30)
    assert rows == [(READER_ROLE, READER_ROLE, "off", "on")]
    assert make_url(url).username == "postgres"  # the caller's URL names the superuser: it is not used


def test_the_projects_tables_and_views_stay_readable(migrated) -> None:
    url, _ = migrated
    assert run_read_only_query(url, "SELECT name FROM sweeps", timeout_s=30)[1] == [("lab",)]
    for view in ("step_results", "selection_results", "evaluation_results"):
        assert run_read_only_query(url, f"SELECT count(*) FROM {view}", timeout_s=30)[1] == [(0,)]


def test_other_roles_sessions_cannot_be_terminated(migrated) -> None:
    url, engine = migrated
    app = make_engine(make_url(url).set(username=APP_ROLE))
    try:
        with engine.connect() as owner, app.connect() as worker:
            pids = [connection.scalar(text("SELECT pg_backend_pid()")) for connection in (owner, worker)]
            for pid in pids:
                with pytest.raises(ReadOnlyQueryError, match=NOT_ALLOWED) as raised:
                    run_read_only_query(url, f"SELECT pg_terminate_backend({pid})", timeout_s=30)
                assert "\n" not in str(raised.value)
            assert owner.scalar(text("SELECT 1")) == 1 and worker.scalar(text("SELECT 1")) == 1
    finally:
        app.dispose()


def test_pg_sleep_stops_at_the_statement_timeout(migrated) -> None:
    url, _ = migrated
    started = time.monotonic()
    with pytest.raises(ReadOnlyQueryError, match="statement timeout of 1 s"):
        run_read_only_query(url, "SELECT pg_sleep(40)", timeout_s=1)
    assert time.monotonic() - started < 10


def test_a_query_that_turns_the_timeout_off_is_still_stopped(migrated) -> None:
    url, _ = migrated
    started = time.monotonic()
    with pytest.raises(ReadOnlyQueryError, match="statement timeout of 1 s"):
        run_read_only_query(url, "SELECT set_config('statement_timeout', '0', false), pg_sleep(40)", timeout_s=1)
    assert time.monotonic() - started < 10


def test_the_reader_url_names_the_reader_and_carries_no_password(migrated) -> None:
    url, _ = migrated
    assert reader_url(make_url(url)).username == READER_ROLE
    assert reader_url(make_url(url).set(password="secret")).password is None


def test_the_application_role_writes_rows_but_not_the_schema(migrated) -> None:
    url, _ = migrated
    app = make_engine(make_url(url).set(username=APP_ROLE))
    try:
        with session_scope(app) as session:
            create_sweep(session, name="by the app", config={}, thresholds=[0.02], policy="first",
                         prune_layer="conv_3", rank_layer="pool_3", range_size=10, artifact_dir="art")
        with app.connect() as connection:
            assert connection.scalar(text("SELECT current_setting('is_superuser')")) == "off"
            assert connection.scalar(text("SELECT count(*) FROM sweeps")) == 2
            assert connection.scalar(text("SELECT count(*) FROM step_results")) == 0
        for statement in ("CREATE TABLE evil (a int)", "UPDATE alembic_version SET version_num = '0001'",
                          "DROP TABLE sweeps", "TRUNCATE sweeps", "SELECT pg_read_file('/etc/passwd')"):
            with pytest.raises(Exception, match=r"permission denied|must be owner"), app.begin() as connection:
                connection.execute(text(statement))
        prepare_database(make_url(url).set(username=APP_ROLE)).dispose()  # a worker's start: schema at head
    finally:
        app.dispose()


def test_the_roles_have_no_administrative_power(migrated) -> None:
    _, engine = migrated
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin "
            "FROM pg_roles WHERE rolname IN (:reader, :app) ORDER BY rolname"),
            {"reader": READER_ROLE, "app": APP_ROLE})
        assert [tuple(row) for row in rows] == [(APP_ROLE, False, False, False, False, False, True),
                                               (READER_ROLE, False, False, False, False, False, True)]


# ---- through the command line --------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["server file", "reload configuration", "insert", "ddl"])
def test_the_sql_command_refuses_in_one_line(migrated, attack: str, monkeypatch, capfd) -> None:
    url, _ = migrated
    code, out, err = run_sql(monkeypatch, capfd, "--db", url, ATTACKS[attack])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_the_sql_command_times_out_in_one_line(migrated, monkeypatch, capfd) -> None:
    url, _ = migrated
    monkeypatch.setenv("BADNET_PRUNE_STATEMENT_TIMEOUT", "1")
    code, _, err = run_sql(monkeypatch, capfd, "--db", url, "SELECT pg_sleep(40)")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "statement timeout of 1 s" in err, err


def test_the_reader_connection_is_closed_afterwards(migrated) -> None:
    url, engine = migrated
    run_read_only_query(url, "SELECT 1", timeout_s=30)
    with engine.connect() as connection:
        left = connection.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE usename = :r AND pid <> "
                                      "pg_backend_pid() AND state = 'idle in transaction'"), {"r": READER_ROLE})
    assert left == 0


def test_downgrading_past_0003_revokes_the_grants_and_upgrading_restores_them(migrated) -> None:
    from alembic import command
    from alembic.config import Config

    from badnet_prune.db.session import ALEMBIC_INI

    url, engine = migrated
    grants = text("SELECT count(*) FROM information_schema.role_table_grants "
                  "WHERE grantee IN (:reader, :app) AND table_schema = current_schema()")
    roles = {"reader": READER_ROLE, "app": APP_ROLE}
    config = Config(str(ALEMBIC_INI))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    with engine.connect() as connection:
        assert connection.scalar(grants, roles) == 0
    with pytest.raises(ReadOnlyQueryError, match=r"permission denied|does not exist"):  # no USAGE on the schema
        run_read_only_query(url, "SELECT name FROM sweeps", timeout_s=30)
    prepare_database(url).dispose()
    with engine.connect() as connection:
        assert connection.scalar(grants, roles) > 0
    assert run_read_only_query(url, "SELECT name FROM sweeps", timeout_s=30)[1] == [("lab",)]
