"""`badnet-prune migrate`: upgrade the database schema to the newest migration."""

from __future__ import annotations

from badnet_prune.orchestrator.options import DbOption, load_settings


def migrate(db: DbOption = None) -> None:
    """Create the database if it does not exist (PostgreSQL: via the `postgres` database), then upgrade its schema.

    Example: badnet-prune migrate --db postgresql://postgres@127.0.0.1:5432/badnet
    """
    url = load_settings(db=db).db_url

    from badnet_prune.db.session import create_database_if_missing, display_url, prepare_database

    if create_database_if_missing(url):
        print(f"created database {display_url(url)}")
    prepare_database(url).dispose()
    print(f"database {display_url(url)} is at the newest schema")
