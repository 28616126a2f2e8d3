"""The selection policy `within`: B'_t is the most pruning whose clean accuracy drop stays within t.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

sweeps.policy's CHECK takes the new value. PostgreSQL replaces the constraint. SQLite would rebuild the
table to change a CHECK, and dropping the old sweeps table would cascade-delete every model, task and
result below it (its foreign keys are on, and a transaction cannot turn them off); widening a CHECK
changes nothing stored, so SQLite's own procedure for such changes is used instead: the table's
definition is rewritten in sqlite_schema and the schema version bumped, in this transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

OLD = "policy IN ('first', 'notebook')"
NEW = "policy IN ('first', 'within', 'notebook')"


def _set_check(old: str, new: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # the constraint's name as 0001 made it (the metadata's naming convention applied to it), found by its text
        names = bind.scalars(sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'sweeps'::regclass AND contype = 'c' "
            "AND pg_get_constraintdef(oid) LIKE '%notebook%'")).all()
        if len(names) != 1:
            raise RuntimeError(f"sweeps has {len(names)} CHECKs on the policy, not one")
        op.execute(f'ALTER TABLE sweeps DROP CONSTRAINT "{names[0]}"')
        op.execute(f'ALTER TABLE sweeps ADD CONSTRAINT "{names[0]}" CHECK ({new})')
        return
    definition = bind.scalar(sa.text("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'sweeps'"))
    if old not in definition:
        raise RuntimeError(f"sweeps has no CHECK ({old}) to rewrite")
    version = bind.scalar(sa.text("PRAGMA schema_version"))
    op.execute("PRAGMA writable_schema = ON")
    bind.execute(sa.text("UPDATE sqlite_schema SET sql = :sql WHERE type = 'table' AND name = 'sweeps'"),
                 {"sql": definition.replace(old, new)})
    op.execute(f"PRAGMA schema_version = {int(version) + 1}")
    op.execute("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    _set_check(OLD, NEW)


def downgrade() -> None:
    op.execute("UPDATE sweeps SET policy = 'first' WHERE policy = 'within'")
    _set_check(NEW, OLD)
