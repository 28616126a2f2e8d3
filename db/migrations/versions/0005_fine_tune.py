"""Fine-pruning's results: the outcome per (model, threshold), its epochs, their ASR, and B''/G''.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

- fine_tunes: per model and threshold key, the epoch kept (NULL when the threshold selected no
  step, so nothing was fine-tuned), the settings as JSON, the seed and the split's digest.
- fine_tune_epochs: per epoch (0 = B'_t before any update), training loss and hold-out clean
  accuracy; fine_tune_asr: the ASR of each poisoned validation set at each epoch.
- evaluations and artifacts take the networks B_fine (B''_t) and G_fine (G''_t); G_fine flags
  images as G does.
- The view fine_tune_results: one row per model, threshold, epoch and data set ('holdout' for the
  hold-out clean accuracy, else the poison's name, with `role` and `poison` to tell them apart as
  evaluation_results does), its value, whether the epoch is the one kept, and the epoch's loss.

CHECK constraints are named as 0004 names them (the naming convention is applied to the given
name on both backends alike). On PostgreSQL the reader role of 0003 gets SELECT on the new tables
and the view explicitly: 0003's default privileges cover only objects created by the role that set
them, and a deployment may migrate as another owner.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

READER = "badnet_reader"
APP = "badnet_app"
TABLES = ("fine_tunes", "fine_tune_epochs", "fine_tune_asr")
THRESHOLD_NUMBER = "CAST({column} AS DOUBLE PRECISION)"

VIEW = f"""
    SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model,
           {THRESHOLD_NUMBER.format(column="e.threshold")} AS threshold, e.threshold AS threshold_key,
           e.epoch AS epoch, 'holdout' AS dataset, 'clean_holdout' AS role, NULL AS poison,
           e.holdout_accuracy AS value, e.epoch = f.kept_epoch AS kept, e.train_loss AS train_loss
    FROM fine_tune_epochs e
    JOIN fine_tunes f ON f.model_id = e.model_id AND f.threshold = e.threshold
    JOIN models m ON m.id = e.model_id
    UNION ALL
    SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model,
           {THRESHOLD_NUMBER.format(column="a.threshold")} AS threshold, a.threshold AS threshold_key,
           a.epoch AS epoch, a.poison_name AS dataset, 'poisoned_valid' AS role, a.poison_name AS poison,
           a.asr AS value, a.epoch = f.kept_epoch AS kept, e.train_loss AS train_loss
    FROM fine_tune_asr a
    JOIN fine_tune_epochs e ON e.model_id = a.model_id AND e.threshold = a.threshold AND e.epoch = a.epoch
    JOIN fine_tunes f ON f.model_id = a.model_id AND f.threshold = a.threshold
    JOIN models m ON m.id = a.model_id
"""

# 0004's evaluation_results, as it stands: SQLite rebuilds a table to change a CHECK, and refuses to
# rename the rebuilt table while a view reads it, so the view is dropped and made again around that.
EVALUATION_RESULTS = f"""
    SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, e.network AS network,
           CASE WHEN e.threshold = '' THEN 0 ELSE {THRESHOLD_NUMBER.format(column="e.threshold")} END AS threshold,
           e.threshold AS threshold_key,
           CASE WHEN e.role = 'clean_test' THEN 'clean' ELSE e.poison_name END AS dataset,
           e.role AS role, CASE WHEN e.role = 'clean_test' THEN NULL ELSE e.poison_name END AS poison,
           e.accuracy AS accuracy, e.flagged AS flagged, e.image_count AS image_count
    FROM evaluations e
    JOIN models m ON m.id = e.model_id
"""


def _checks(networks: tuple[str, ...], repaired: tuple[str, ...], kinds: tuple[str, ...]) -> None:
    """Replace the CHECKs that list networks and artifact kinds (named as 0004 names them)."""

    def one_of(column: str, values: tuple[str, ...]) -> str:
        return f"{column} IN ({', '.join(repr(value) for value in values)})"

    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("DROP VIEW IF EXISTS evaluation_results")
    with op.batch_alter_table("evaluations", recreate="auto") as batch:
        batch.drop_constraint("ck_evaluations_network", type_="check")
        batch.drop_constraint("ck_evaluations_flagged", type_="check")
        batch.create_check_constraint("ck_evaluations_network", one_of("network", networks))
        batch.create_check_constraint("ck_evaluations_flagged", f"{one_of('network', repaired)} OR flagged IS NULL")
    with op.batch_alter_table("artifacts", recreate="auto") as batch:
        batch.drop_constraint("ck_artifacts_kind", type_="check")
        batch.create_check_constraint("ck_artifacts_kind", one_of("kind", kinds))
    if sqlite:
        op.execute(f"CREATE VIEW evaluation_results AS {EVALUATION_RESULTS.strip()}")


def _grant() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for role, privileges in ((READER, "SELECT"), (APP, "SELECT, INSERT, UPDATE, DELETE")):
        if bind.scalar(sa.text("SELECT count(*) FROM pg_roles WHERE rolname = :name"), {"name": role}):
            op.execute(f"GRANT {privileges} ON {', '.join(TABLES)} TO {role}")
    if bind.scalar(sa.text("SELECT count(*) FROM pg_roles WHERE rolname = :name"), {"name": READER}):
        op.execute(f"GRANT SELECT ON fine_tune_results TO {READER}")


def upgrade() -> None:
    op.create_table(
        "fine_tunes",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.String(), nullable=False),
        sa.Column("kept_epoch", sa.Integer(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("split_sha256", sa.String(), nullable=True),
        sa.Column("train_count", sa.Integer(), nullable=True),
        sa.Column("holdout_count", sa.Integer(), nullable=True),
        sa.CheckConstraint("(kept_epoch IS NULL) = (split_sha256 IS NULL)", name="ck_fine_tunes_kept"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_fine_tunes_model_id_models", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "threshold", name="pk_fine_tunes"),
    )
    op.create_table(
        "fine_tune_epochs",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.String(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Double(), nullable=False),
        sa.Column("holdout_accuracy", sa.Double(), nullable=False),
        sa.Column("holdout_correct", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id", "threshold"], ["fine_tunes.model_id", "fine_tunes.threshold"],
            name="fk_fine_tune_epochs_model_id_threshold_fine_tunes", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", "threshold", "epoch", name="pk_fine_tune_epochs"),
    )
    op.create_table(
        "fine_tune_asr",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.String(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("poison_name", sa.String(), nullable=False),
        sa.Column("asr", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id", "threshold", "epoch"],
            ["fine_tune_epochs.model_id", "fine_tune_epochs.threshold", "fine_tune_epochs.epoch"],
            name="fk_fine_tune_asr_model_id_threshold_epoch_fine_tune_epochs", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", "threshold", "epoch", "poison_name", name="pk_fine_tune_asr"),
    )
    _checks(("B", "B_prime", "G", "B_fine", "G_fine"), ("G", "G_fine"), ("B_prime", "G", "B_fine", "G_fine"))
    op.execute(f"CREATE VIEW fine_tune_results AS {VIEW.strip()}")
    _grant()


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS fine_tune_results")
    op.execute("DELETE FROM evaluations WHERE network IN ('B_fine', 'G_fine')")
    op.execute("DELETE FROM artifacts WHERE kind IN ('B_fine', 'G_fine')")
    _checks(("B", "B_prime", "G"), ("G",), ("B_prime", "G"))
    for table in reversed(TABLES):
        op.drop_table(table)
