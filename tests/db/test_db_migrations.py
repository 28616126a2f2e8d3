"""Migrations: a fresh database reaches head, again is a no-op, and the schema matches the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from badnet_prune.db.models import Base
from badnet_prune.db.session import ALEMBIC_INI, prepare_database

TABLES = {table.name for table in Base.metadata.sorted_tables}


def head_revision() -> str | None:
    return ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_fresh_database_is_upgraded_to_head(engine: Engine) -> None:
    assert head_revision() is not None
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}


def test_upgrading_again_is_a_no_op(engine: Engine, db_url: str) -> None:
    again = prepare_database(db_url)
    try:
        assert current_revision(again) == head_revision()
        assert set(inspect(again).get_table_names()) == TABLES | {"alembic_version"}
    finally:
        again.dispose()


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_processes_preparing_a_fresh_database_at_once_all_succeed(db_url: str, run_together) -> None:
    run_together("from db.session import prepare_database", "prepare_database(sys.argv[1]).dispose()", [[db_url]] * 3)
    engine = prepare_database(db_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_the_within_policy_migration_keeps_every_row_on_sqlite(tmp_path) -> None:
    """0008 widens sweeps.policy's CHECK without rebuilding the table (a rebuild would cascade-delete models)."""
    from alembic import command
    from sqlalchemy import text

    from badnet_prune.db.session import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config(str(ALEMBIC_INI))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0007")
        connection.execute(text(
            "INSERT INTO sweeps (id, name, created_at, config, thresholds, policy, prune_layer, rank_layer, range_size,"
            " artifact_dir, status) VALUES (1, 's', '2026-12-01', '{}', '[]', 'first', 'conv_3', 'pool_3', 10, 'a',"
            " 'done')"))
        connection.execute(text("INSERT INTO models (id, sweep_id, name, path, sha256, input_scale, input_scale_auto,"
                                " status) VALUES (1, 1, 'm', 'p', 's', 1.0, 0, 'done')"))
    engine.dispose()
    engine = prepare_database(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM models")).scalar() == 1
        connection.execute(text("UPDATE sweeps SET policy = 'within'"))
        assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    engine.dispose()
