"""Results storage shared by every stage: outcomes, curves and any stage's networks; task progress.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

A new defense or detector stores its results here instead of in tables of its own
(pipeline.contract: a stage is one module):

- stage_outcomes: per model, stage and task key, a JSON document whose type the stage declares (the
  epoch fine-tuning kept, the u CLP chose, a detector's evidence), and a detector's score in [0, 1].
- curve_points and curve_asr: the curves a stage measures on clean validation data (fine-tuning's
  epochs, a pruning count, CLP's u), each point's clean accuracy, other figures by name, and the ASR
  of each poisoned validation set (measured, never used to choose).
- evaluations.network and artifacts.kind name whatever network a stage declares (their CHECKs bound
  the length; the stage registry says which names exist); evaluations.robust_accuracy holds the share
  of a poisoned file's images classified as their true label, where the file carries true labels.
- tasks.progress_done and progress_total: how far a running task is, in its stage's unit.

Fine-pruning's rows move from fine_tunes, fine_tune_epochs and fine_tune_asr (0005) into the shared
tables and those tables go: its outcome document keeps every column, each epoch is a point of the
curve named by its threshold's key (x = the epoch, clean accuracy = the hold-out accuracy). The view
fine_tune_results gives way to curve_results (every stage's curves); stage_outcome_results shows the
outcomes. SQL is spelled out here, never imported, so this migration never changes afterwards.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

READER = "badnet_reader"
APP = "badnet_app"
TABLES = ("stage_outcomes", "curve_points", "curve_asr")
THRESHOLD_NUMBER = "CASE WHEN {column} = '' THEN 0 ELSE CAST({column} AS DOUBLE PRECISION) END"

EVALUATION_RESULTS = f"""
    SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, e.network AS network,
           {THRESHOLD_NUMBER.format(column="e.threshold")} AS threshold, e.threshold AS threshold_key,
           CASE WHEN e.role = 'clean_test' THEN 'clean' ELSE e.poison_name END AS dataset,
           e.role AS role, CASE WHEN e.role = 'clean_test' THEN NULL ELSE e.poison_name END AS poison,
           e.accuracy AS accuracy, e.flagged AS flagged, e.image_count AS image_count,
           e.robust_accuracy AS robust_accuracy
    FROM evaluations e
    JOIN models m ON m.id = e.model_id
"""
OLD_EVALUATION_RESULTS = f"""
    SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, e.network AS network,
           {THRESHOLD_NUMBER.format(column="e.threshold")} AS threshold, e.threshold AS threshold_key,
           CASE WHEN e.role = 'clean_test' THEN 'clean' ELSE e.poison_name END AS dataset,
           e.role AS role, CASE WHEN e.role = 'clean_test' THEN NULL ELSE e.poison_name END AS poison,
           e.accuracy AS accuracy, e.flagged AS flagged, e.image_count AS image_count
    FROM evaluations e
    JOIN models m ON m.id = e.model_id
"""
NEW_VIEWS = {
    "curve_results": """
        SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, p.stage AS stage, p.curve AS curve,
               p.point AS point, p.x AS x, 'clean' AS dataset, NULL AS poison, p.clean_accuracy AS value
        FROM curve_points p
        JOIN models m ON m.id = p.model_id
        UNION ALL
        SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, p.stage AS stage, p.curve AS curve,
               p.point AS point, p.x AS x, a.poison_name AS dataset, a.poison_name AS poison, a.asr AS value
        FROM curve_asr a
        JOIN curve_points p ON p.model_id = a.model_id AND p.stage = a.stage AND p.curve = a.curve
             AND p.point = a.point
        JOIN models m ON m.id = a.model_id
    """,
    "stage_outcome_results": """
        SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model, o.stage AS stage, o.key AS key,
               o.score AS score, o.document AS document
        FROM stage_outcomes o
        JOIN models m ON m.id = o.model_id
    """,
}
FINE_TUNE_RESULTS = """
    SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model,
           CAST(e.threshold AS DOUBLE PRECISION) AS threshold, e.threshold AS threshold_key,
           e.epoch AS epoch, 'holdout' AS dataset, 'clean_holdout' AS role, NULL AS poison,
           e.holdout_accuracy AS value, e.epoch = f.kept_epoch AS kept, e.train_loss AS train_loss
    FROM fine_tune_epochs e
    JOIN fine_tunes f ON f.model_id = e.model_id AND f.threshold = e.threshold
    JOIN models m ON m.id = e.model_id
    UNION ALL
    SELECT m.sweep_id AS sweep_id, m.id AS model_id, m.name AS model,
           CAST(a.threshold AS DOUBLE PRECISION) AS threshold, a.threshold AS threshold_key,
           a.epoch AS epoch, a.poison_name AS dataset, 'poisoned_valid' AS role, a.poison_name AS poison,
           a.asr AS value, a.epoch = f.kept_epoch AS kept, e.train_loss AS train_loss
    FROM fine_tune_asr a
    JOIN fine_tune_epochs e ON e.model_id = a.model_id AND e.threshold = a.threshold AND e.epoch = a.epoch
    JOIN fine_tunes f ON f.model_id = a.model_id AND f.threshold = a.threshold
    JOIN models m ON m.id = a.model_id
"""
OLD_NETWORKS = ("B", "B_prime", "G", "B_fine", "G_fine")
OLD_REPAIRED = ("G", "G_fine")
OLD_KINDS = ("B_prime", "G", "B_fine", "G_fine")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def _role_exists(name: str) -> bool:
    return bool(op.get_bind().scalar(sa.text("SELECT count(*) FROM pg_roles WHERE rolname = :name"), {"name": name}))


def _grant() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for role, privileges in ((READER, "SELECT"), (APP, "SELECT, INSERT, UPDATE, DELETE")):
        if _role_exists(role):
            op.execute(f"GRANT {privileges} ON {', '.join(TABLES)} TO {role}")
    if _role_exists(READER):
        op.execute(f"GRANT SELECT ON {', '.join(NEW_VIEWS)}, evaluation_results TO {READER}")


def _create_tables() -> None:
    op.create_table(
        "stage_outcomes",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.CheckConstraint("score IS NULL OR (score >= 0 AND score <= 1)", name="ck_stage_outcomes_score"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_stage_outcomes_model_id_models",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "stage", "key", name="pk_stage_outcomes"),
    )
    op.create_index("ix_stage_outcomes_stage_key", "stage_outcomes", ["stage", "key"])
    op.create_table(
        "curve_points",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("curve", sa.String(), nullable=False),
        sa.Column("point", sa.Integer(), nullable=False),
        sa.Column("x", sa.Double(), nullable=False),
        sa.Column("clean_accuracy", sa.Double(), nullable=True),
        sa.Column("clean_correct", sa.Integer(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_curve_points_model_id_models",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "stage", "curve", "point", name="pk_curve_points"),
    )
    op.create_table(
        "curve_asr",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("curve", sa.String(), nullable=False),
        sa.Column("point", sa.Integer(), nullable=False),
        sa.Column("poison_name", sa.String(), nullable=False),
        sa.Column("asr", sa.Double(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id", "stage", "curve", "point"],
            ["curve_points.model_id", "curve_points.stage", "curve_points.curve", "curve_points.point"],
            name="fk_curve_asr_model_id_stage_curve_point_curve_points", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", "stage", "curve", "point", "poison_name", name="pk_curve_asr"),
    )


def _move_fine_tune_rows() -> None:
    """Fine-pruning's rows into the shared tables (JSON built in Python: the two backends spell it apart)."""
    bind = op.get_bind()
    outcomes = bind.execute(sa.text(
        "SELECT model_id, threshold, kept_epoch, settings, seed, split_sha256, train_count, holdout_count "
        "FROM fine_tunes")).all()
    outcome_table = sa.table("stage_outcomes", sa.column("model_id"), sa.column("stage"), sa.column("key"),
                             sa.column("score"), sa.column("document", sa.JSON()))
    rows = [{"model_id": r.model_id, "stage": "fine_tune", "key": r.threshold, "score": None,
             "document": {"kept_epoch": r.kept_epoch, "settings": _json_value(r.settings), "seed": r.seed,
                          "split_sha256": r.split_sha256, "train_count": r.train_count,
                          "holdout_count": r.holdout_count}} for r in outcomes]
    if rows:
        op.bulk_insert(outcome_table, rows)
    epochs = bind.execute(sa.text(
        "SELECT model_id, threshold, epoch, train_loss, holdout_accuracy, holdout_correct FROM fine_tune_epochs"
    )).all()
    point_table = sa.table("curve_points", sa.column("model_id"), sa.column("stage"), sa.column("curve"),
                           sa.column("point"), sa.column("x"), sa.column("clean_accuracy"),
                           sa.column("clean_correct"), sa.column("values", sa.JSON()))
    rows = [{"model_id": r.model_id, "stage": "fine_tune", "curve": r.threshold, "point": r.epoch,
             "x": float(r.epoch), "clean_accuracy": r.holdout_accuracy, "clean_correct": r.holdout_correct,
             "values": {"train_loss": r.train_loss}} for r in epochs]
    if rows:
        op.bulk_insert(point_table, rows)
    op.execute("INSERT INTO curve_asr (model_id, stage, curve, point, poison_name, asr, hits) "
               "SELECT model_id, 'fine_tune', threshold, epoch, poison_name, asr, NULL FROM fine_tune_asr")


def _json_value(value: object) -> object:
    import json

    return json.loads(value) if isinstance(value, str) else value


def _rebuild_checks(*, network: str, flagged: str | None, kind: str, robust: bool) -> None:
    """Replace the CHECKs on networks and artifact kinds; SQLite rebuilds the tables, so the view that
    reads evaluations is dropped around it."""
    op.execute("DROP VIEW IF EXISTS evaluation_results")
    with op.batch_alter_table("evaluations", recreate="auto") as batch:
        batch.drop_constraint("ck_evaluations_network", type_="check")
        if flagged is None:
            batch.drop_constraint("ck_evaluations_flagged", type_="check")
        else:
            batch.create_check_constraint("ck_evaluations_flagged", flagged)
        batch.create_check_constraint("ck_evaluations_network", network)
        if robust:
            batch.add_column(sa.Column("robust_accuracy", sa.Double(), nullable=True))
        else:
            batch.drop_column("robust_accuracy")
    with op.batch_alter_table("artifacts", recreate="auto") as batch:
        batch.drop_constraint("ck_artifacts_kind", type_="check")
        batch.create_check_constraint("ck_artifacts_kind", kind)


def upgrade() -> None:
    _create_tables()
    _move_fine_tune_rows()
    op.execute("DROP VIEW IF EXISTS fine_tune_results")
    for table in ("fine_tune_asr", "fine_tune_epochs", "fine_tunes"):
        op.drop_table(table)
    _rebuild_checks(network="length(network) BETWEEN 1 AND 40", flagged=None,
                    kind="length(kind) BETWEEN 1 AND 40", robust=True)
    op.execute(f"CREATE VIEW evaluation_results AS {EVALUATION_RESULTS.strip()}")
    op.add_column("tasks", sa.Column("progress_done", sa.Integer(), nullable=True))
    op.add_column("tasks", sa.Column("progress_total", sa.Integer(), nullable=True))
    for name, select in NEW_VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {select.strip()}")
    _grant()


def downgrade() -> None:
    """Back to 0006: fine-pruning's rows return to their own tables; other stages' results are dropped."""
    for name in NEW_VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_column("tasks", "progress_total")
    op.drop_column("tasks", "progress_done")
    op.execute(f"DELETE FROM evaluations WHERE NOT ({_one_of('network', OLD_NETWORKS)})")
    op.execute(f"DELETE FROM artifacts WHERE NOT ({_one_of('kind', OLD_KINDS)})")
    _rebuild_checks(network=_one_of("network", OLD_NETWORKS),
                    flagged=f"{_one_of('network', OLD_REPAIRED)} OR flagged IS NULL",
                    kind=_one_of("kind", OLD_KINDS), robust=False)
    op.execute(f"CREATE VIEW evaluation_results AS {OLD_EVALUATION_RESULTS.strip()}")
    _restore_fine_tune_tables()
    op.execute(f"CREATE VIEW fine_tune_results AS {FINE_TUNE_RESULTS.strip()}")
    op.drop_table("curve_asr")
    op.drop_table("curve_points")
    op.drop_index("ix_stage_outcomes_stage_key", table_name="stage_outcomes")
    op.drop_table("stage_outcomes")


def _restore_fine_tune_tables() -> None:
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
    bind = op.get_bind()
    outcomes = bind.execute(sa.text(
        "SELECT model_id, key, document FROM stage_outcomes WHERE stage = 'fine_tune'")).all()
    table = sa.table("fine_tunes", sa.column("model_id"), sa.column("threshold"), sa.column("kept_epoch"),
                     sa.column("settings", sa.JSON()), sa.column("seed"), sa.column("split_sha256"),
                     sa.column("train_count"), sa.column("holdout_count"))
    rows = []
    for model_id, key, document in outcomes:
        doc = _json_value(document)
        rows.append({"model_id": model_id, "threshold": key, "kept_epoch": doc.get("kept_epoch"),
                     "settings": doc.get("settings", {}), "seed": doc.get("seed", 0),
                     "split_sha256": doc.get("split_sha256"), "train_count": doc.get("train_count"),
                     "holdout_count": doc.get("holdout_count")})
    if rows:
        op.bulk_insert(table, rows)
    points = bind.execute(sa.text(
        "SELECT model_id, curve, point, clean_accuracy, clean_correct, \"values\" FROM curve_points "
        "WHERE stage = 'fine_tune'")).all()
    table = sa.table("fine_tune_epochs", sa.column("model_id"), sa.column("threshold"), sa.column("epoch"),
                     sa.column("train_loss"), sa.column("holdout_accuracy"), sa.column("holdout_correct"))
    rows = [{"model_id": model_id, "threshold": curve, "epoch": point,
             "train_loss": _json_value(values).get("train_loss", 0.0), "holdout_accuracy": accuracy or 0.0,
             "holdout_correct": correct or 0} for model_id, curve, point, accuracy, correct, values in points]
    if rows:
        op.bulk_insert(table, rows)
    op.execute("INSERT INTO fine_tune_asr (model_id, threshold, epoch, poison_name, asr) "
               "SELECT model_id, curve, point, poison_name, asr FROM curve_asr WHERE stage = 'fine_tune'")
