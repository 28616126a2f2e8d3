"""The view defense_outcomes: one row per model, defense setting and poison, what the leaderboard aggregates.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Per model and network other than B (B'_t, G_t, B''_t, G''_t and each later defense's), per setting (a
threshold's key, or a defense's own) and per poisoned test set: the model's ground truth (backdoored,
attack; NULL where the sweep file gives none), B's clean test accuracy and the network's, B's ASR on the
poison and the network's, robust accuracy (where the file carries true labels), the share of the poison's
images the network flagged as N and of the clean ones (false alarms; repaired nets only), and TrojAI's
fidelity: (ASR before - ASR after) / ASR before x (clean accuracy after / clean accuracy before), NULL where
B's ASR or clean accuracy is 0. A model without poisoned test sets has one row per network and setting,
poison NULL. Percentages are 0..100; the SQL is spelled out here, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

READER = "badnet_reader"

VIEW = """
    SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, m.truth_backdoored AS backdoored,
           m.truth_attack AS attack, c.network AS network, c.threshold AS setting, e.poison_name AS poison,
           bc.accuracy AS b_clean_accuracy, c.accuracy AS clean_accuracy, b.accuracy AS b_asr, e.accuracy AS asr,
           e.robust_accuracy AS robust_accuracy, e.flagged AS detected, c.flagged AS false_alarms,
           CASE WHEN b.accuracy > 0 AND bc.accuracy > 0
                THEN ((b.accuracy - e.accuracy) / b.accuracy) * (c.accuracy / bc.accuracy) END AS fidelity
    FROM evaluations c
    JOIN models m ON m.id = c.model_id
    JOIN evaluations bc ON bc.model_id = c.model_id AND bc.network = 'B' AND bc.role = 'clean_test'
    LEFT JOIN evaluations e ON e.model_id = c.model_id AND e.network = c.network AND e.threshold = c.threshold
         AND e.role = 'poisoned_test'
    LEFT JOIN evaluations b ON b.model_id = c.model_id AND b.network = 'B' AND b.role = 'poisoned_test'
         AND b.poison_name = e.poison_name
    WHERE c.role = 'clean_test' AND c.network <> 'B'
"""


def upgrade() -> None:
    op.execute(f"CREATE VIEW defense_outcomes AS {VIEW.strip()}")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and bind.scalar(
            sa.text("SELECT count(*) FROM pg_roles WHERE rolname = :name"), {"name": READER}):
        op.execute(f"GRANT SELECT ON defense_outcomes TO {READER}")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS defense_outcomes")
