"""INSERT ... ON CONFLICT DO UPDATE on SQLite and PostgreSQL: how every result is written.

Celery may deliver a task twice (a worker lost, a timeout); the second run repeats the
first's writes. Keyed by a unique constraint, the second write rewrites the first's row
instead of adding a duplicate or failing, on both backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from badnet_prune.db.models import Base


def upsert_statement(
    session: Session,
    model: type[Base],
    *,
    key: Sequence[str],
    update: Sequence[str],
    index_where: ColumnElement[bool] | None = None,
) -> Any:
    """An INSERT into `model`'s table that, on a conflict on `key`, sets the `update` columns.

    Give it values with .values(row) (add .returning(...) for ids) or run it with a list of
    rows (executemany). With no column to update, the key is rewritten to itself, so that
    RETURNING still yields the existing row's id. `index_where` names a partial unique index.
    """
    table: Table = model.__table__  # type: ignore[assignment]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:
        raise ValueError(f"upserts need SQLite or PostgreSQL, not {dialect}")
    columns = list(update) or [key[-1]]
    return statement.on_conflict_do_update(
        index_elements=list(key),
        index_where=index_where,
        set_={column: statement.excluded[column] for column in columns},
    )


def upsert_rows(session: Session, model: type[Base], rows: Sequence[dict[str, Any]], *, key: Sequence[str]) -> None:
    """Write many rows of `model` keyed by `key`, every other given column rewritten."""
    if not rows:
        return
    update = [column for column in rows[0] if column not in key]
    session.execute(upsert_statement(session, model, key=key, update=update), list(rows))
