"""Stages on one contract, exact threshold keys and typed test-set roles.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

- tasks: `kind` becomes `stage` (any declared stage: the CHECK listing four kinds goes, and so
  does the one tying 'finish' to a missing model; the stage registry owns both rules now);
  `arguments` holds the stage's typed arguments, read by the worker instead of the message;
  `celery_id` (never written) becomes `message_id` (written on every send); a lease
  (`lease_token`, `lease_expires_at`) keeps a redelivered copy from running beside the task.
- thresholds are exact decimal keys (text) in selections, evaluations and artifacts, and in
  sweeps.thresholds, instead of floats (keys were formatted with :g and collided past the
  sixth digit). Existing values are rewritten as the shortest decimal of the stored float.
- evaluations: `dataset` ('clean' or a poison name, one namespace) becomes `role`
  (clean_test, poisoned_test) and `poison_name` ('' for clean); B's threshold is '' (was 0).
- The views are rebuilt on the new columns; they keep their columns for SQL users
  (`threshold` as a number, 0 for B; `dataset`) and add `threshold_key`, `role` and `poison`.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

THRESHOLD_NUMBER = "CASE WHEN {column} = '' THEN 0 ELSE CAST({column} AS DOUBLE PRECISION) END"

VIEWS = {
    "step_results": """
        SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, s.step AS step,
               s.channel AS channel, s.fraction_pruned AS fraction_pruned,
               s.clean_accuracy AS clean_accuracy, a.poison_name AS poison, a.asr AS asr, a.hits AS hits
        FROM steps s
        JOIN models m ON m.id = s.model_id
        LEFT JOIN step_asr a ON a.model_id = s.model_id AND a.step = s.step
    """,
    "selection_results": f"""
        SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model,
               {THRESHOLD_NUMBER.format(column="x.threshold")} AS threshold, x.threshold AS threshold_key,
               x.step AS step, s.fraction_pruned AS fraction_pruned,
               x.clean_valid_accuracy AS clean_valid_accuracy, m.acc0 AS acc0
        FROM selections x
        JOIN models m ON m.id = x.model_id
        LEFT JOIN steps s ON s.model_id = x.model_id AND s.step = x.step
    """,
    "evaluation_results": f"""
        SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, e.network AS network,
               {THRESHOLD_NUMBER.format(column="e.threshold")} AS threshold, e.threshold AS threshold_key,
               CASE WHEN e.role = 'clean_test' THEN 'clean' ELSE e.poison_name END AS dataset,
               e.role AS role, CASE WHEN e.role = 'clean_test' THEN NULL ELSE e.poison_name END AS poison,
               e.accuracy AS accuracy, e.flagged AS flagged, e.image_count AS image_count
        FROM evaluations e
        JOIN models m ON m.id = e.model_id
    """,
}

OLD_VIEWS = {
    "step_results": VIEWS["step_results"],
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

ROLE_CHECK = "(role = 'clean_test' AND poison_name = '') OR (role = 'poisoned_test' AND poison_name <> '')"


def _threshold_key(value: Any) -> str:
    """The shortest decimal of a stored float ('0.02'), as badnet_prune.numerics.thresholds writes keys."""
    number = float(value)
    text = repr(number)
    if "e" in text or "E" in text:
        text = format(number, ".17f").rstrip("0").rstrip(".")
    return text


def _json(name: str) -> sa.BindParameter:
    return sa.bindparam(name, type_=sa.JSON())


def _rewrite_thresholds(table: str, key_columns: tuple[str, ...], *, b_rows_blank: bool = False) -> None:
    """After a column became text, rewrite each value as the exact key of its old float."""
    connection = op.get_bind()
    columns = ", ".join((*key_columns, "threshold"))
    for row in connection.execute(sa.text(f"SELECT {columns} FROM {table}")).mappings().all():
        old = row["threshold"]
        blank = b_rows_blank and row.get("network") == "B"
        new = "" if blank else _threshold_key(old)
        if new != old:
            where = " AND ".join(f"{column} = :{column}" for column in (*key_columns, "threshold"))
            connection.execute(sa.text(f"UPDATE {table} SET threshold = :new WHERE {where}"), {**row, "new": new})


def upgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    _upgrade_tasks()
    _upgrade_thresholds()
    _upgrade_evaluations()
    for name, select in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {select.strip()}")


def _upgrade_tasks() -> None:
    op.drop_index("uq_tasks_model_task", table_name="tasks")
    op.drop_index("uq_tasks_sweep_task", table_name="tasks")
    with op.batch_alter_table("tasks", recreate="auto") as batch:
        batch.drop_constraint("ck_tasks_kind", type_="check")
        batch.drop_constraint("ck_tasks_model_scope", type_="check")
        batch.alter_column("kind", new_column_name="stage", existing_type=sa.String(), existing_nullable=False)
        batch.alter_column("celery_id", new_column_name="message_id", existing_type=sa.String())
        batch.add_column(sa.Column("arguments", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("lease_token", sa.String(), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    connection = op.get_bind()
    for task_id, stage, key in connection.execute(sa.text("SELECT id, stage, key FROM tasks")).all():
        if stage == "prune_range":
            start, stop = (int(part) for part in key.split("-"))
            arguments: dict[str, Any] = {"start": start, "stop": stop}
        elif stage == "threshold":
            key = _threshold_key(key)
            arguments = {"threshold": key}
        else:
            arguments = {}
        statement = sa.text("UPDATE tasks SET arguments = :arguments, key = :key WHERE id = :id")
        values = {"arguments": arguments, "key": key, "id": task_id}
        connection.execute(statement.bindparams(_json("arguments")), values)
    with op.batch_alter_table("tasks", recreate="auto") as batch:
        batch.alter_column("arguments", existing_type=sa.JSON(), nullable=False)
    _task_indexes("stage")


def _task_indexes(column: str) -> None:
    with_model, without_model = sa.text("model_id IS NOT NULL"), sa.text("model_id IS NULL")
    op.create_index("uq_tasks_model_task", "tasks", ["sweep_id", "model_id", column, "key"], unique=True,
                    sqlite_where=with_model, postgresql_where=with_model)
    op.create_index("uq_tasks_sweep_task", "tasks", ["sweep_id", column, "key"], unique=True,
                    sqlite_where=without_model, postgresql_where=without_model)


def _upgrade_thresholds() -> None:
    for table in ("selections", "artifacts"):
        with op.batch_alter_table(table, recreate="auto") as batch:
            batch.alter_column("threshold", type_=sa.String(), existing_type=sa.Double(), existing_nullable=False,
                               postgresql_using="threshold::text")
    _rewrite_thresholds("selections", ("model_id",))
    _rewrite_thresholds("artifacts", ("model_id", "kind"))
    connection = op.get_bind()
    for sweep_id, thresholds in connection.execute(sa.text("SELECT id, thresholds FROM sweeps")).all():
        values = json.loads(thresholds) if isinstance(thresholds, str) else thresholds
        keys = [_threshold_key(value) for value in values]
        connection.execute(sa.text("UPDATE sweeps SET thresholds = :keys WHERE id = :id").bindparams(_json("keys")),
                           {"keys": keys, "id": sweep_id})


def _upgrade_evaluations() -> None:
    with op.batch_alter_table("evaluations", recreate="auto") as batch:
        batch.drop_constraint("ck_evaluations_b_threshold", type_="check")
        batch.drop_constraint("pk_evaluations", type_="primary")
        batch.alter_column("threshold", type_=sa.String(), existing_type=sa.Double(), existing_nullable=False,
                           postgresql_using="threshold::text")
        batch.add_column(sa.Column("role", sa.String(), nullable=True))
        batch.add_column(sa.Column("poison_name", sa.String(), nullable=True))
    op.execute("UPDATE evaluations SET role = CASE WHEN dataset = 'clean' THEN 'clean_test' ELSE 'poisoned_test' END, "
               "poison_name = CASE WHEN dataset = 'clean' THEN '' ELSE dataset END")
    _rewrite_thresholds("evaluations", ("model_id", "network", "dataset"), b_rows_blank=True)
    with op.batch_alter_table("evaluations", recreate="auto") as batch:
        batch.alter_column("role", existing_type=sa.String(), nullable=False)
        batch.alter_column("poison_name", existing_type=sa.String(), nullable=False)
        batch.drop_column("dataset")
        batch.create_primary_key("pk_evaluations", ["model_id", "network", "threshold", "role", "poison_name"])
        batch.create_check_constraint("ck_evaluations_b_threshold", "(network = 'B') = (threshold = '')")
        batch.create_check_constraint("ck_evaluations_role", ROLE_CHECK)


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("evaluations", recreate="auto") as batch:
        batch.drop_constraint("ck_evaluations_role", type_="check")
        batch.drop_constraint("ck_evaluations_b_threshold", type_="check")
        batch.drop_constraint("pk_evaluations", type_="primary")
        batch.add_column(sa.Column("dataset", sa.String(), nullable=True))
    op.execute("UPDATE evaluations SET dataset = CASE WHEN role = 'clean_test' THEN 'clean' ELSE poison_name END, "
               "threshold = CASE WHEN threshold = '' THEN '0' ELSE threshold END")
    with op.batch_alter_table("evaluations", recreate="auto") as batch:
        batch.drop_column("role")
        batch.drop_column("poison_name")
        batch.alter_column("dataset", existing_type=sa.String(), nullable=False)
        batch.alter_column("threshold", type_=sa.Double(), existing_type=sa.String(), existing_nullable=False,
                           postgresql_using="threshold::double precision")
        batch.create_primary_key("pk_evaluations", ["model_id", "network", "threshold", "dataset"])
        batch.create_check_constraint("ck_evaluations_b_threshold", "network <> 'B' OR threshold = 0")
    for table in ("selections", "artifacts"):
        with op.batch_alter_table(table, recreate="auto") as batch:
            batch.alter_column("threshold", type_=sa.Double(), existing_type=sa.String(), existing_nullable=False,
                               postgresql_using="threshold::double precision")
    connection = op.get_bind()
    for sweep_id, thresholds in connection.execute(sa.text("SELECT id, thresholds FROM sweeps")).all():
        values = json.loads(thresholds) if isinstance(thresholds, str) else thresholds
        connection.execute(sa.text("UPDATE sweeps SET thresholds = :values WHERE id = :id").bindparams(_json("values")),
                           {"values": [float(value) for value in values], "id": sweep_id})
    op.drop_index("uq_tasks_model_task", table_name="tasks")
    op.drop_index("uq_tasks_sweep_task", table_name="tasks")
    with op.batch_alter_table("tasks", recreate="auto") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_token")
        batch.drop_column("arguments")
        batch.alter_column("message_id", new_column_name="celery_id", existing_type=sa.String())
        batch.alter_column("stage", new_column_name="kind", existing_type=sa.String(), existing_nullable=False)
        batch.create_check_constraint("ck_tasks_kind", "kind IN ('rank', 'prune_range', 'threshold', 'finish')")
        batch.create_check_constraint(
            "ck_tasks_model_scope",
            "(kind = 'finish' AND model_id IS NULL) OR (kind <> 'finish' AND model_id IS NOT NULL)",
        )
    _task_indexes("kind")
    for name, select in OLD_VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {select.strip()}")
