"""Initial schema: sweeps, data files, models and their data, tasks, and per-model results.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Written to match db/models.py (tests/db compares the two). Constraint names follow the
naming convention of db.models, spelled out here so that the migration never changes when
the models do.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _model_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=f"fk_{table}_model_id_models", ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("policy", sa.String(), nullable=False),
        sa.Column("prune_layer", sa.String(), nullable=False),
        sa.Column("rank_layer", sa.String(), nullable=False),
        sa.Column("range_size", sa.Integer(), nullable=False),
        sa.Column("artifact_dir", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("policy IN ('first', 'notebook')", name="ck_sweeps_policy"),
        sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name="ck_sweeps_status"),
        sa.CheckConstraint("range_size > 0", name="ck_sweeps_range_size"),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
    )
    op.create_index("ix_sweeps_name", "sweeps", ["name"])

    op.create_table(
        "data_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("image_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_data_files"),
        sa.UniqueConstraint("path", "sha256", name="uq_data_files_path_sha256"),
    )

    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("input_scale", sa.Double(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("acc0", sa.Double(), nullable=True),
        sa.Column("channel_count", sa.Integer(), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name="ck_models_status"),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.id"], name="fk_models_sweep_id_sweeps", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("sweep_id", "name", name="uq_models_sweep_id_name"),
    )

    op.create_table(
        "model_data",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("poison_name", sa.String(), nullable=False),
        sa.Column("data_file_id", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "(role IN ('clean_valid', 'clean_test') AND poison_name = '')"
            " OR (role IN ('poisoned_valid', 'poisoned_test') AND poison_name <> '')",
            name="ck_model_data_role",
        ),
        _model_fk("model_data"),
        sa.ForeignKeyConstraint(["data_file_id"], ["data_files.id"], name="fk_model_data_data_file_id_data_files"),
        sa.PrimaryKeyConstraint("id", name="pk_model_data"),
        sa.UniqueConstraint("model_id", "role", "poison_name", name="uq_model_data_model_id_role_poison_name"),
    )
    op.create_index("ix_model_data_data_file_id", "model_data", ["data_file_id"])

    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(), nullable=True),
        sa.Column("celery_id", sa.String(), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("kind IN ('rank', 'prune_range', 'threshold', 'finish')", name="ck_tasks_kind"),
        sa.CheckConstraint(
            "state IN ('pending', 'queued', 'running', 'done', 'failed', 'retrying')", name="ck_tasks_state"
        ),
        sa.CheckConstraint(
            "(kind = 'finish' AND model_id IS NULL) OR (kind <> 'finish' AND model_id IS NOT NULL)",
            name="ck_tasks_model_scope",
        ),
        _model_fk("tasks"),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.id"], name="fk_tasks_sweep_id_sweeps", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
    )
    op.create_index("ix_tasks_model_id", "tasks", ["model_id"])
    op.create_index("ix_tasks_sweep_id_state", "tasks", ["sweep_id", "state"])
    # NULLs are distinct in unique constraints: one partial unique index per task scope.
    with_model = sa.text("model_id IS NOT NULL")
    without_model = sa.text("model_id IS NULL")
    op.create_index(
        "uq_tasks_model_task",
        "tasks",
        ["sweep_id", "model_id", "kind", "key"],
        unique=True,
        sqlite_where=with_model,
        postgresql_where=with_model,
    )
    op.create_index(
        "uq_tasks_sweep_task",
        "tasks",
        ["sweep_id", "kind", "key"],
        unique=True,
        sqlite_where=without_model,
        postgresql_where=without_model,
    )

    op.create_table(
        "rankings",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("mean_activation", sa.Double(), nullable=False),
        _model_fk("rankings"),
        sa.PrimaryKeyConstraint("model_id", "channel", name="pk_rankings"),
    )

    op.create_table(
        "steps",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("channel", sa.Integer(), nullable=True),
        sa.Column("fraction_pruned", sa.Double(), nullable=False),
        sa.Column("clean_accuracy", sa.Double(), nullable=False),
        sa.Column("clean_correct", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "(step = 0 AND channel IS NULL) OR (step > 0 AND channel IS NOT NULL)", name="ck_steps_channel"
        ),
        _model_fk("steps"),
        sa.PrimaryKeyConstraint("model_id", "step", name="pk_steps"),
    )

    op.create_table(
        "step_asr",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("poison_name", sa.String(), nullable=False),
        sa.Column("asr", sa.Double(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id", "step"],
            ["steps.model_id", "steps.step"],
            name="fk_step_asr_model_id_step_steps",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", "step", "poison_name", name="pk_step_asr"),
    )

    op.create_table(
        "selections",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("clean_valid_accuracy", sa.Double(), nullable=True),
        _model_fk("selections"),
        sa.PrimaryKeyConstraint("model_id", "threshold", name="pk_selections"),
    )

    op.create_table(
        "evaluations",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("network", sa.String(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("dataset", sa.String(), nullable=False),
        sa.Column("accuracy", sa.Double(), nullable=False),
        sa.Column("flagged", sa.Double(), nullable=True),
        sa.Column("image_count", sa.Integer(), nullable=False),
        sa.CheckConstraint("network IN ('B', 'B_prime', 'G')", name="ck_evaluations_network"),
        sa.CheckConstraint("network <> 'B' OR threshold = 0", name="ck_evaluations_b_threshold"),
        sa.CheckConstraint("network = 'G' OR flagged IS NULL", name="ck_evaluations_flagged"),
        _model_fk("evaluations"),
        sa.PrimaryKeyConstraint("model_id", "network", "threshold", "dataset", name="pk_evaluations"),
    )

    op.create_table(
        "artifacts",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.CheckConstraint("kind IN ('B_prime', 'G')", name="ck_artifacts_kind"),
        _model_fk("artifacts"),
        sa.PrimaryKeyConstraint("model_id", "threshold", "kind", name="pk_artifacts"),
    )


def downgrade() -> None:
    for table in (
        "artifacts",
        "evaluations",
        "selections",
        "step_asr",
        "steps",
        "rankings",
        "tasks",
        "model_data",
        "models",
        "data_files",
        "sweeps",
    ):
        op.drop_table(table)  # indexes go with their table
