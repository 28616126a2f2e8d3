"""One user-supplied SELECT, run with the least privilege that can answer it: the CLI's `sql` command.

The first word is checked only to give a clear refusal early; the guarantees come from the database.

PostgreSQL: the query runs on a connection of its own, logged in AS the reader role that migration 0003
creates (badnet_reader: SELECT on the project's tables and views, nothing else). Logging in as it, not
SET ROLE from the caller's user, matters: a superuser session could set_config('role', ...) back, and
would still run pg_read_file, pg_ls_dir, pg_reload_conf or pg_terminate_backend. The reader is also
checked not to be a superuser before the query runs. The transaction is READ ONLY, a statement
timeout applies (and a client-side cancel a moment later, in case the query changes the setting), and
the query goes out in pipeline mode, whose extended protocol refuses several statements (so no
"SELECT 1; COMMIT; DROP ...").

SQLite: the file is opened read-only (mode=ro, never created) with query_only on, an authorizer that
allows only reading, and a progress handler that aborts the query at the deadline (a recursive CTE
would otherwise run forever); sqlite3 runs one statement per call.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy import URL, make_url

from badnet_prune.db.errors import DatabaseUnavailable, ReadOnlyQueryError, one_line
from badnet_prune.db.session import SQLITE_BUSY_TIMEOUT_S

READER_ROLE = "badnet_reader"
READING_KEYWORDS = frozenset({"select", "with", "values", "table"})
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*([A-Za-z]*)", re.DOTALL)
CONNECT_TIMEOUT_S = 10
# How long after the server's own statement timeout the client cancels the query itself.
CANCEL_GRACE_S = 2.0
# SQLite calls the progress handler every this many virtual-machine instructions.
PROGRESS_STEPS = 10_000
TIMEOUT_HINT = "statement_timeout_s, BADNET_PRUNE_STATEMENT_TIMEOUT"

Rows = tuple[list[str], list[tuple[Any, ...]]]


def run_read_only_query(url: str | URL, sql: str, *, timeout_s: float) -> Rows:
    """Run one SELECT (or WITH ... SELECT, VALUES, TABLE) against the database at `url`; (columns, rows).

    Raises ReadOnlyQueryError when the query would write, is several statements, is not allowed,
    runs past timeout_s or fails, and DatabaseUnavailable when the database cannot be opened (a
    missing SQLite file is never created).
    """
    sql = sql.strip().rstrip(";").rstrip()
    first_word = _FIRST_WORD.match(sql).group(1).lower()  # type: ignore[union-attr]
    if first_word not in READING_KEYWORDS:
        shown = first_word.upper() or "an empty query"
        raise ReadOnlyQueryError(f"refused: only one SELECT statement may run, not {shown}")
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _run_sqlite(parsed, sql, timeout_s)
    if backend == "postgresql":
        return _run_postgresql(reader_url(parsed), sql, timeout_s)
    raise ReadOnlyQueryError(f"read-only queries need SQLite or PostgreSQL, not {backend}")


def reader_url(url: URL) -> URL:
    """The URL the sql command connects with: the same server, database and options, as the reader role.

    The password is dropped, not reused: the reader's comes from a libpq password file (~/.pgpass,
    or `passfile=` in the URL's query, e.g. a compose secret), or trust authentication on a local server.
    """
    return URL.create("postgresql+psycopg", username=READER_ROLE, password=None, host=url.host, port=url.port,
                      database=url.database, query=url.query)


def _timed_out(timeout_s: float) -> ReadOnlyQueryError:
    return ReadOnlyQueryError(f"query stopped: it ran longer than the statement timeout of {timeout_s:g} s "
                              f"({TIMEOUT_HINT})")


# ---- SQLite ---------------------------------------------------------------------------------------

# What a read-only query needs: read columns, run SELECTs, call functions, recurse in a CTE.
_SQLITE_ALLOWED = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                             getattr(sqlite3, "SQLITE_RECURSIVE", 33)})


def _sqlite_authorizer(action: int, *_args: Any) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_ALLOWED else sqlite3.SQLITE_DENY


def _run_sqlite(url: URL, sql: str, timeout_s: float) -> Rows:
    database = url.database
    if not database or database == ":memory:":
        raise ReadOnlyQueryError("read-only queries need a SQLite file, not an in-memory database")
    path = Path(database).expanduser().absolute()
    if not path.is_file():
        raise DatabaseUnavailable(str(path), "no such file (sql never creates a database)")
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
    except sqlite3.Error as error:
        raise DatabaseUnavailable(str(path), str(error)) from error
    deadline = time.monotonic() + timeout_s
    expired = threading.Event()

    def past_deadline() -> int:
        if time.monotonic() > deadline:
            expired.set()
            return 1  # non-zero aborts the statement with "interrupted"
        return 0

    try:
        connection.execute("PRAGMA query_only = ON")
        connection.set_authorizer(_sqlite_authorizer)
        connection.set_progress_handler(past_deadline, PROGRESS_STEPS)
        cursor = connection.execute(sql)
        columns = [description[0] for description in cursor.description or ()]
        return columns, cursor.fetchall()
    except sqlite3.Error as error:  # includes "You can only execute one statement at a time."
        if expired.is_set():
            raise _timed_out(timeout_s) from error
        raise ReadOnlyQueryError(f"query refused or failed: {one_line(error)}") from error
    finally:
        connection.close()


# ---- PostgreSQL -----------------------------------------------------------------------------------


def _connect_args(url: URL) -> dict[str, Any]:
    args: dict[str, Any] = url.translate_connect_args(username="user", database="dbname")
    args.update({key: value if isinstance(value, str) else value[-1] for key, value in url.query.items()})
    args.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    return args


def _run_postgresql(url: URL, sql: str, timeout_s: float) -> Rows:
    target = url.render_as_string(hide_password=True)
    try:
        connection = psycopg.connect(**_connect_args(url), autocommit=True)
    except psycopg.Error as error:
        raise DatabaseUnavailable(
            target, f"{one_line(error)} (the sql command logs in as the role {READER_ROLE!r}, which "
            f"`badnet-prune migrate` creates; its password comes from a libpq password file)"
        ) from error
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('is_superuser')")
            if cursor.fetchone() != ("off",):
                raise ReadOnlyQueryError(f"refused: the role {READER_ROLE!r} is a superuser on {target}; "
                                         "the sql command runs only as an unprivileged reader")
            cursor.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(timeout_s * 1000)}ms",))
        return _run_in_read_only_transaction(connection, sql, timeout_s)
    finally:
        connection.close()


def _run_in_read_only_transaction(connection: psycopg.Connection[Any], sql: str, timeout_s: float) -> Rows:
    cancel = threading.Timer(timeout_s + CANCEL_GRACE_S, _canceller(connection))
    cancel.daemon = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("BEGIN READ ONLY")
            cancel.start()
            with connection.pipeline():  # pipeline mode always uses the extended protocol
                cursor.execute(sql)  # type: ignore[arg-type]
            columns = [column.name for column in cursor.description or ()]
            return columns, cursor.fetchall()
    except pg_errors.QueryCanceled as error:
        raise _timed_out(timeout_s) from error
    except psycopg.Error as error:
        raise ReadOnlyQueryError(f"query refused or failed: {one_line(error)}") from error
    finally:
        cancel.cancel()


def _canceller(connection: psycopg.Connection[Any]) -> Callable[[], None]:
    def cancel() -> None:
        with contextlib.suppress(psycopg.Error):  # the query ended meanwhile, or the connection is gone
            connection.cancel_safe()

    return cancel
