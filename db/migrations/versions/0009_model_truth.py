"""A model's ground truth from the sweep file's [model.truth] table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

- models.truth_backdoored: whether the model has a backdoor; NULL where the sweep file gives no truth.
- models.truth_attack: the attack's identifier (clean, sunglasses, pruning-aware, patch, blended,
  multi-trigger for the zoo's models; any identifier for a user's), NULL where not given.
- models.truth_targets: the attacker's targets as JSON: a list of class ids, or an object of poison
  name -> class id.

Columns are added, never altered, and no CHECK is added: SQLite changes a table's constraints only by
rebuilding it, and rebuilding models would cascade-delete every row that refers to it (see 0006).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("models", sa.Column("truth_backdoored", sa.Boolean(), nullable=True))
    op.add_column("models", sa.Column("truth_attack", sa.String(), nullable=True))
    op.add_column("models", sa.Column("truth_targets", sa.JSON(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later), not a batch rebuild of models (see 0006)
    op.drop_column("models", "truth_targets")
    op.drop_column("models", "truth_attack")
    op.drop_column("models", "truth_backdoored")
