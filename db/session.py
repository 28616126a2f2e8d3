"""Engines and sessions made from a URL, and bringing a database's schema up to date.

Nothing here runs at import time: every process (orchestrator, each Celery worker, a test)
makes its own engine from the URL it was given, so pointing at another database is a new
argument, not a patched module.

SQLite is tuned for several worker processes writing one file: WAL (readers never block the
writer), foreign keys on (SQLite leaves them off), a 30 s busy timeout, and every transaction
opened with BEGIN IMMEDIATE, which takes the write lock up front. A deferred transaction that
reads and then writes fails at once with "database is locked" when another process wrote in
between, whatever the timeout; an immediate one waits its turn instead.
"""

from __future__ import annotations

import re
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Engine, create_engine, event, func, make_url, select, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session

from badnet_prune.db.errors import DatabaseUnavailable, one_line

SQLITE_BUSY_TIMEOUT_S = 30
POSTGRES_CONNECT_TIMEOUT_S = 10
# Key of the PostgreSQL advisory lock that serialises migrations (b"bnprune1" as an int64).
MIGRATION_LOCK_KEY = int.from_bytes(b"bnprune1", "big") & 0x7FFF_FFFF_FFFF_FFFF
ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
POSTGRES_DRIVERS = ("postgres", "postgresql", "postgresql+psycopg")  # all mean psycopg 3, the driver we ship
SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
MAINTENANCE_DATABASE = "postgres"
POOL_SIZE, MAX_OVERFLOW = 5, 10  # SQLAlchemy's own defaults, and the settings' (db_pool_size, db_max_overflow)

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def normalise_database_url(value: str) -> str:
    """The one spelling of a database given as a URL or a plain path; ValueError naming what is wrong.

    A plain path (no scheme) is a SQLite file; SQLite paths become absolute, so that a later chdir
    cannot move the database; postgres://, postgresql:// and postgresql+psycopg:// all become
    postgresql+psycopg://. Any other scheme is refused rather than failing later inside SQLAlchemy.
    """
    text = value.strip()
    if not text:
        raise ValueError("empty")
    if "://" not in text:
        if any(char in text for char in ":?#\x00"):
            raise ValueError("neither a database URL nor a plain file path")
        return _render(URL.create("sqlite", database=str(Path(text).expanduser().absolute())))
    try:
        url = make_url(text)
    except ArgumentError:
        raise ValueError("not a database URL") from None
    if url.drivername in POSTGRES_DRIVERS:
        if not url.database:
            raise ValueError("the URL names no database (postgresql://USER@HOST/DB)")
        return _render(url.set(drivername="postgresql+psycopg"))
    if url.drivername in SQLITE_DRIVERS:
        if url.database and url.database != ":memory:" and not url.query.get("uri"):
            url = url.set(database=str(Path(url.database).expanduser().absolute()))
        return _render(url)
    raise ValueError(f"{url.drivername} is not supported: use SQLite (a file path) or PostgreSQL")


def make_engine(url: str | URL, *, create: bool = True, pool_size: int = POOL_SIZE,
                max_overflow: int = MAX_OVERFLOW) -> Engine:
    """An engine for a SQLite file (path relative to the cwd) or PostgreSQL through psycopg 3.

    create=False (commands that only read): a SQLite file that does not exist is a one-line
    DatabaseUnavailable, and nothing (no file, no folder) is created. Connection failures surface
    as DatabaseUnavailable when a connection is first needed. pool_size and max_overflow bound the
    PostgreSQL connections this engine holds (settings db_pool_size, db_max_overflow); it opens
    only as many as are in use at once.
    """
    try:
        parsed = make_url(normalise_database_url(url) if isinstance(url, str) else url)
    except ValueError as error:
        raise DatabaseUnavailable(display_url(url), str(error)) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = _sqlite_engine(parsed, create=create)
    elif backend == "postgresql":
        if parsed.drivername == "postgresql":  # the bare scheme means psycopg2, which we do not ship
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, pool_size=pool_size,
                               max_overflow=max_overflow)
    else:
        raise DatabaseUnavailable(display_url(parsed), "unsupported: use sqlite:///FILE or postgresql+psycopg://...")
    event.listen(engine, "handle_error", _unavailable_on_connect_failure)
    _engines.add(engine)
    return engine


def create_database_if_missing(url: str | URL) -> bool:
    """Create the PostgreSQL database `url` names, through the `postgres` maintenance database; True if created.

    A SQLite URL needs nothing (make_engine creates the file). Without the right to connect or to
    create, the DatabaseUnavailable line says which database to create and how.
    """
    parsed = make_url(normalise_database_url(url) if isinstance(url, str) else url)
    if parsed.get_backend_name() != "postgresql":
        return False
    name = parsed.database or ""
    how = f"create it first (createdb -h {parsed.host or 'localhost'} -U {parsed.username or 'postgres'} {name})"
    admin = create_engine(parsed.set(database=MAINTENANCE_DATABASE), isolation_level="AUTOCOMMIT",
                          connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S})
    try:
        with admin.connect() as connection:
            found = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name})
            if found.first() is not None:
                return False
            connection.execute(text(f"CREATE DATABASE {admin.dialect.identifier_preparer.quote(name)}"))
    except DBAPIError as error:
        if "already exists" in str(error.orig):  # another process created it in between
            return False
        raise DatabaseUnavailable(display_url(parsed), f"{one_line(error.orig)}; {how}") from None
    finally:
        admin.dispose()
    return True


def dispose_engines() -> None:
    """Close every pooled connection of this process's engines.

    The interpreter's teardown would close them; a process that skips it (the console script)
    calls this instead, so that SQLite folds its write-ahead log back into the database file
    as the last connection closes, and the file alone holds every committed row.
    """
    for engine in list(_engines):
        engine.dispose()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commits when the block ends, rolls back if it raises.

    Loaded objects stay readable after the commit (expire_on_commit=False), so a caller can
    return them from the block.
    """
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def prepare_database(url: str | URL, *, create: bool = True, pool_size: int = POOL_SIZE,
                     max_overflow: int = MAX_OVERFLOW) -> Engine:
    """An engine for `url` whose schema has been upgraded to the newest migration.

    Call it once per process before any other use; a database already at head costs a
    version check. Safe when several processes call it at once: the upgrade runs in one
    transaction that holds a PostgreSQL advisory lock, or SQLite's write lock (BEGIN
    IMMEDIATE), so the others wait, then find the schema current. create=False for commands that
    only read: a SQLite file that does not exist is refused instead of created; the pool as in make_engine.
    """
    engine = make_engine(url, create=create, pool_size=pool_size, max_overflow=max_overflow)
    config = Config(str(ALEMBIC_INI))
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except BaseException:
        engine.dispose()
        raise
    return engine


def display_url(engine_or_url: Engine | str | URL) -> str:
    """The URL without its password, for messages; text that is no URL keeps no user:password@ part."""
    if isinstance(engine_or_url, Engine):
        return engine_or_url.url.render_as_string(hide_password=True)
    try:
        return make_url(engine_or_url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return re.sub(r"[^/@;]*@", "***@", str(engine_or_url))


def _render(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _sqlite_engine(url: URL, *, create: bool) -> Engine:
    database = url.database
    if database and database != ":memory:" and not url.query.get("uri"):
        path = Path(database).expanduser().absolute()  # fixed now, so a later chdir cannot move it
        if path.is_dir():
            raise DatabaseUnavailable(str(path), "is a folder, not a SQLite database file")
        if not create and not path.is_file():
            raise DatabaseUnavailable(str(path), "no such database file (only sweep, defend and migrate create one; "
                                      "check --db or BADNET_PRUNE_DB)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DatabaseUnavailable(str(path), f"cannot create its folder: {error}") from error
        url = url.set(database=str(path))
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_immediate)
    return engine


def _configure_sqlite_connection(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # sqlite3 must not issue its own (deferred) BEGIN: _begin_immediate does.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """Switch a new database file to WAL, waiting while another process holds it.

    Leaving the rollback journal needs an exclusive lock, and SQLite answers "database is locked" at once,
    without its busy handler, when processes open a fresh file together: so the wait is ours, bounded by
    the same busy timeout. Once the file is in WAL mode the pragma is a no-op that takes no lock.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _unavailable_on_connect_failure(context: ExceptionContext) -> DatabaseUnavailable | None:
    """A failure to open a connection (no server, bad file) becomes a one-line DatabaseUnavailable."""
    if context.connection is not None or context.engine is None:
        return None
    reason = one_line(context.original_exception)
    if context.engine.dialect.name == "postgresql" and re.search(r'database ".*" does not exist', reason):
        reason += " (`badnet-prune migrate` creates it)"
    return DatabaseUnavailable(display_url(context.engine), reason)
