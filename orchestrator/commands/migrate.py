"""`badnet-prune migrate`: upgrade the database schema to the newest migration."""

from __future__ import annotations

from orchestrator.options import DbOption, load_settings


def migrate(db: DbOption = None) -> None:
    """Create or upgrade the schema (every other command also does this on first use)."""
    from db.session import display_url, prepare_database

    url = load_settings(db=db).db_url
    prepare_database(url).dispose()
    print(f"database {display_url(url)} is at the newest schema")
