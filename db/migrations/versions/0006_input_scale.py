"""The input scale chosen or checked by the rank stage, and its one line.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

- models.input_scale_auto: the rank stage chose models.input_scale (the sweep asked for "auto"); a
  model registered for auto holds input_scale 0 (badnet_prune.numerics.input_scale.AUTO_INPUT_SCALE) until then.
- models.input_scale_note: the rank stage's one line on the scale (B's accuracy on a sample of the
  clean validation data at both scales); a warning starts with "warning:".

Columns are added, never altered: SQLite changes a column only by rebuilding the table, and rebuilding
models would cascade-delete every row that refers to it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("models", sa.Column("input_scale_auto", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("models", sa.Column("input_scale_note", sa.Text(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later), not a batch rebuild of models (see above)
    op.drop_column("models", "input_scale_note")
    op.drop_column("models", "input_scale_auto")
