"""Database roles for least privilege on PostgreSQL: a reader for `sql`, an application role for the rest.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

- badnet_reader (LOGIN): SELECT on the project's tables and views in this schema, nothing else; read-only
  by default. The `sql` command logs in as it, so a user's query cannot read the server's files
  (pg_read_file, pg_ls_dir, pg_stat_file), reload its configuration or end other roles' sessions.
- badnet_app (LOGIN): SELECT, INSERT, UPDATE and DELETE on the tables, USAGE on their sequences; no
  superuser, no CREATE, no TRUNCATE, and only SELECT on alembic_version. Workers and the orchestrator
  connect as it; the migrations keep running as the owner (a superuser or the schema's owner).

Roles belong to the whole server, so they are created only when absent (and a concurrent creation by
another database's migration is not an error); an existing role with one of these names loses any
superuser or role-creation power it had. No password is set here: on a local server with trust
authentication the roles just work, and a deployment sets them (ALTER ROLE ... PASSWORD, as compose's
initialisation does) and hands them to libpq in a password file. A URL for a role is the owner's URL
with the user replaced: postgresql+psycopg://badnet_app@HOST:5432/DB.

Default privileges make the tables and sequences that later migrations create (as the same owner)
carry the same grants. The migrating user needs the CREATEROLE privilege (or superuser) the first
time; where it lacks it and the roles are absent, the grants are skipped with a warning, and the sql
command then refuses to run (it never falls back to a privileged user). On SQLite there are no roles:
nothing to do. Downgrading revokes this schema's grants and keeps the roles, which other databases
on the server may use.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

READER = "badnet_reader"
APP = "badnet_app"
ROLE_LIMITS = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


def _create_role(name: str, extra: str) -> str:
    """A DO block that creates `name` if absent and strips an existing one of administrative powers."""
    return f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
                BEGIN
                    CREATE ROLE {name} LOGIN {ROLE_LIMITS};
                EXCEPTION
                    WHEN duplicate_object OR unique_violation THEN NULL;  -- created meanwhile elsewhere
                    WHEN insufficient_privilege THEN
                        RAISE WARNING 'cannot create the role {name} (the migrating user lacks CREATEROLE)';
                        RETURN;
                END;
            END IF;
            BEGIN
                -- only where needed: roles are the server's, shared by every database migrating at once, and two
                -- concurrent ALTERs of one role fail with "tuple concurrently updated"
                IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}' AND (rolsuper OR rolcreatedb OR rolcreaterole
                           OR rolreplication OR rolbypassrls OR NOT rolcanlogin)) THEN
                    ALTER ROLE {name} LOGIN {ROLE_LIMITS};
                END IF;
                {extra}
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE WARNING 'cannot check the attributes of the role {name}';
            END;
        END
        $$
    """


def _role_exists(name: str) -> bool:
    return bool(op.get_bind().scalar(text("SELECT count(*) FROM pg_roles WHERE rolname = :name"), {"name": name}))


def _schema() -> str:
    bind = op.get_bind()
    return bind.dialect.identifier_preparer.quote(bind.scalar(text("SELECT current_schema()")))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    read_only = (f"IF NOT EXISTS (SELECT FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                 f"WHERE r.rolname = '{READER}' AND s.setdatabase = 0 "
                 f"AND 'default_transaction_read_only=on' = ANY(s.setconfig)) THEN "
                 f"ALTER ROLE {READER} SET default_transaction_read_only = on; END IF;")
    op.execute(_create_role(READER, read_only))
    op.execute(_create_role(APP, ""))
    schema = _schema()
    if _role_exists(READER):
        op.execute(f"GRANT USAGE ON SCHEMA {schema} TO {READER}")
        op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {READER}")  # views included
        op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {READER}")
    if _role_exists(APP):
        op.execute(f"GRANT USAGE ON SCHEMA {schema} TO {APP}")
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {APP}")
        op.execute(f"REVOKE INSERT, UPDATE, DELETE ON {schema}.alembic_version FROM {APP}")
        op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {APP}")
        op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE "
                   f"ON TABLES TO {APP}")
        op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE ON SEQUENCES TO {APP}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    schema = _schema()
    for role in (READER, APP):
        if not _role_exists(role):
            continue
        op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON TABLES FROM {role}")
        op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON SEQUENCES FROM {role}")
        op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}")
        op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}")
        op.execute(f"REVOKE ALL ON SCHEMA {schema} FROM {role}")
