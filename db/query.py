"""One user-supplied SELECT, run so that it cannot write: the CLI's `query` command.

The first word is checked only to give a clear refusal early; the guarantee comes from the
database. SQLite: the file is opened read-only (mode=ro) with query_only on, and sqlite3 runs
one statement per call. PostgreSQL: the transaction is READ ONLY, and the query is sent in pipeline mode, whose
extended protocol refuses several statements (so no "SELECT 1; COMMIT; DROP ...").
The PostgreSQL connection is then discarded, so nothing the query set can leak into the pool.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine

from db.errors import DatabaseUnavailable, ReadOnlyQueryError, one_line
from db.session import SQLITE_BUSY_TIMEOUT_S

READING_KEYWORDS = frozenset({"select", "with", "values", "table"})
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*([A-Za-z]*)", re.DOTALL)


def run_read_only_query(engine: Engine, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one SELECT (or WITH ... SELECT, VALUES) and return (column names, rows).

    Raises ReadOnlyQueryError when the query would write, is several statements or fails,
    and DatabaseUnavailable when the database cannot be opened.
    """
    sql = sql.strip().rstrip(";").rstrip()
    first_word = _FIRST_WORD.match(sql).group(1).lower()  # type: ignore[union-attr]
    if first_word not in READING_KEYWORDS:
        shown = first_word.upper() or "an empty query"
        raise ReadOnlyQueryError(f"refused: only one SELECT statement may run, not {shown}")
    dialect = engine.dialect.name
    if dialect == "sqlite":
        return _run_sqlite(engine, sql)
    if dialect == "postgresql":
        return _run_postgresql(engine, sql)
    raise ReadOnlyQueryError(f"read-only queries need SQLite or PostgreSQL, not {dialect}")


def _run_sqlite(engine: Engine, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    database = engine.url.database
    if not database or database == ":memory:":
        raise ReadOnlyQueryError("read-only queries need a SQLite file, not an in-memory database")
    path = Path(database).absolute()
    if not path.is_file():
        raise DatabaseUnavailable(str(path), "no such file")
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
    except sqlite3.Error as error:
        raise DatabaseUnavailable(str(path), str(error)) from error
    try:
        connection.execute("PRAGMA query_only = ON")
        cursor = connection.execute(sql)
        columns = [description[0] for description in cursor.description or ()]
        return columns, cursor.fetchall()
    except sqlite3.Error as error:  # includes "You can only execute one statement at a time."
        raise ReadOnlyQueryError(f"query refused or failed: {one_line(error)}") from error
    finally:
        connection.close()


def _run_postgresql(engine: Engine, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with engine.connect() as connection:
        try:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            driver_connection: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
            cursor = driver_connection.cursor()
            with driver_connection.pipeline():  # pipeline mode always uses the extended protocol
                cursor.execute(sql)  # type: ignore[arg-type]
            columns = [column.name for column in cursor.description or ()]
            return columns, cursor.fetchall()
        except psycopg.Error as error:
            raise ReadOnlyQueryError(f"query refused or failed: {one_line(error)}") from error
        finally:
            connection.invalidate()
