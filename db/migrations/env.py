"""Alembic environment: migrates the connection db.session hands in, never a global engine.

db.session.prepare_database opens a transaction (holding the migration lock), puts its
connection in config.attributes["connection"], and Alembic runs inside that transaction.
From the command line a URL comes from `-x url=...` or the `sqlalchemy.url` main option.
Offline (--sql) mode is not supported: the migrations need a live connection's dialect.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from badnet_prune.db.models import Base
from badnet_prune.db.session import make_engine


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    config = context.config
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported; run against a database")
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database given: pass -x url=... or set sqlalchemy.url")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


main()
