"""Combined-verdict rules, and the view model_verdicts.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

- verdict_rules: a rule fitted on one sweep's models with ground truth (`badnet-prune fit-verdict`), by
  name: its detectors, weights, bias and standardisation, the sweep it was fitted on, and the sha256 of each
  model file it saw.
- model_verdicts: one row per model and rule that judged it (the detection_verdict stage's outcomes): the
  model's ground truth where the sweep file gives one, the rule's probability that the model is backdoored,
  and the verdict at the cut-off 0.5.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

READER = "badnet_reader"
APP = "badnet_app"

VIEW = """
    SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, m.truth_backdoored AS backdoored,
           m.truth_attack AS attack, o.key AS rule, o.score AS probability,
           CASE WHEN o.score >= 0.5 THEN 'backdoored' ELSE 'clean' END AS verdict
    FROM stage_outcomes o
    JOIN models m ON m.id = o.model_id
    WHERE o.stage = 'detection_verdict'
"""


def upgrade() -> None:
    op.create_table(
        "verdict_rules",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rule", sa.JSON(), nullable=False),
        sa.Column("fitted_sweep_id", sa.Integer(), nullable=False),
        sa.Column("fitted_models", sa.JSON(), nullable=False),
        sa.Column("backdoored_models", sa.Integer(), nullable=False),
        sa.Column("clean_models", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_verdict_rules"),
    )
    op.execute(f"CREATE VIEW model_verdicts AS {VIEW.strip()}")
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for role, privileges in ((READER, "SELECT"), (APP, "SELECT, INSERT")):
        if bind.scalar(sa.text("SELECT count(*) FROM pg_roles WHERE rolname = :name"), {"name": role}):
            op.execute(f"GRANT {privileges} ON verdict_rules TO {role}")
            op.execute(f"GRANT SELECT ON model_verdicts TO {role}")
    # a stored rule is never changed: the sweeps judged by it must keep meaning it (0003's default privileges
    # give the application UPDATE and DELETE on new tables)
    if bind.scalar(sa.text("SELECT count(*) FROM pg_roles WHERE rolname = :name"), {"name": APP}):
        op.execute(f"REVOKE UPDATE, DELETE ON verdict_rules FROM {APP}")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS model_verdicts")
    op.drop_table("verdict_rules")
