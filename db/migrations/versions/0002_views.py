"""Views for SQL users: steps, selections and evaluations, each with its model's name and sweep.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

The tables are keyed by model id, so every question ("which models keep ASR above 50% after
G at 4%?") would otherwise start with a join on models. These views make it one SELECT:

- step_results: sweep_id, model_id, model, step, channel, fraction_pruned, clean_accuracy,
  poison, asr, hits. One row per step and poison (ASR as rows, so any number of poisons fits
  one column); a step of a model without poisoned data has one row with poison NULL.
- selection_results: sweep_id, model_id, model, threshold, step, fraction_pruned,
  clean_valid_accuracy, acc0. step is NULL where pruning never reached the threshold.
- evaluation_results: sweep_id, model_id, model, network ('B', 'B_prime', 'G'), threshold
  (0 for B), dataset ('clean' or the poison name), accuracy (clean accuracy, or the ASR on a
  poison), flagged (G only: % classified as N), image_count.

Percentages are 0..100. The SQL is plain SQL-92 (joins, aliases), the same on SQLite and
PostgreSQL; it is spelled out here, not imported, so the migration never changes afterwards.
Views are not tables: the ORM metadata does not list them, and neither does
inspect(...).get_table_names(), so the schema comparison in tests/db is unaffected.
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

VIEWS = {
    "step_results": """
        SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, s.step AS step,
               s.channel AS channel, s.fraction_pruned AS fraction_pruned,
               s.clean_accuracy AS clean_accuracy, a.poison_name AS poison, a.asr AS asr, a.hits AS hits
        FROM steps s
        JOIN models m ON m.id = s.model_id
        LEFT JOIN step_asr a ON a.model_id = s.model_id AND a.step = s.step
    """,
    "selection_results": """
        SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, x.threshold AS threshold,
               x.step AS step, s.fraction_pruned AS fraction_pruned,
               x.clean_valid_accuracy AS clean_valid_accuracy, m.acc0 AS acc0
        FROM selections x
        JOIN models m ON m.id = x.model_id
        LEFT JOIN steps s ON s.model_id = x.model_id AND s.step = x.step
    """,
    "evaluation_results": """
        SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, e.network AS network,
               e.threshold AS threshold, e.dataset AS dataset, e.accuracy AS accuracy,
               e.flagged AS flagged, e.image_count AS image_count
        FROM evaluations e
        JOIN models m ON m.id = e.model_id
    """,
}


def upgrade() -> None:
    for name, select in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {select.strip()}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
