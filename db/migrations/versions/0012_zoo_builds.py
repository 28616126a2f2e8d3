"""Zoo builds: one row per model of a zoo built on the workers.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

- zoo_builds: what to build (the model's folder, its zoo, attack, seed, settings, cache entry) and the
  build's life as a task's (state, lease, attempts, worker, times, error), with the built model's record.
  The roles get their privileges on it from 0003's default privileges.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None

STATES = "state IN ('pending', 'queued', 'running', 'done', 'failed', 'retrying')"


def upgrade() -> None:
    moment = sa.DateTime(timezone=True)
    op.create_table(
        "zoo_builds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("folder", sa.String(), nullable=False),
        sa.Column("zoo", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("attack", sa.String(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("cache_key", sa.String(), nullable=False),
        sa.Column("cache_dir", sa.String(), nullable=False),
        sa.Column("created_at", moment, nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(), nullable=True),
        sa.Column("message_id", sa.String(), nullable=True),
        sa.Column("lease_token", sa.String(), nullable=True),
        sa.Column("lease_expires_at", moment, nullable=True),
        sa.Column("enqueued_at", moment, nullable=True),
        sa.Column("started_at", moment, nullable=True),
        sa.Column("finished_at", moment, nullable=True),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("record", sa.JSON(), nullable=True),
        sa.CheckConstraint(STATES, name="ck_zoo_builds_state"),
        sa.PrimaryKeyConstraint("id", name="pk_zoo_builds"),
        sa.UniqueConstraint("folder", name="uq_zoo_builds_folder"),
    )


def downgrade() -> None:
    op.drop_table("zoo_builds")
