"""The schema: one mapped class per table, the same on SQLite and PostgreSQL.

Results are keyed by what they describe (model, step, poison name...), so a redelivered
Celery task finds its own rows again and rewrites them (see db.upsert). Rows below a sweep
or model go with it (ON DELETE CASCADE in the database, so no ORM relationship is needed).
The hand-written migration in db/migrations/versions must match this module; a test compares.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    MetaData,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SWEEP_STATUSES = ("pending", "running", "done", "failed")  # 'done' even when some models failed
MODEL_STATUSES = ("pending", "running", "done", "failed")
POLICIES = ("first", "within", "notebook")
CLEAN_ROLES = ("clean_valid", "clean_test")
POISONED_ROLES = ("poisoned_valid", "poisoned_test")
TEST_ROLES = ("clean_test", "poisoned_test")
TASK_STATES = ("pending", "queued", "running", "done", "failed", "retrying")
# Networks and artifact kinds are named by the stage that makes them (pipeline.contract.Network): the schema
# bounds their shape, the stage registry says which names exist.
NAME_LENGTH = 40

# Deterministic constraint names, so that migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def one_of(column: str, values: tuple[str, ...]) -> str:
    """SQL text of a CHECK that a column holds one of a few words."""
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC, timezone-aware in Python on both backends.

    PostgreSQL keeps the zone (timestamptz); SQLite has none, so UTC is stored naive and
    the zone is put back on reading.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads this class attribute)
        datetime: UtcDateTime,
        dict[str, Any]: JSON,
        list[float]: JSON,
        list[str]: JSON,
    }


def _model_fk() -> ForeignKey:
    return ForeignKey("models.id", ondelete="CASCADE")


class Sweep(Base):
    """One run of the defense over a set of models, as registered by the orchestrator."""

    __tablename__ = "sweeps"
    __table_args__ = (
        CheckConstraint(one_of("policy", POLICIES), name="policy"),
        CheckConstraint(one_of("status", SWEEP_STATUSES), name="status"),
        CheckConstraint("range_size > 0", name="range_size"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    config: Mapped[dict[str, Any]]  # the sweep definition as given, to replay it
    thresholds: Mapped[list[str]]  # exact keys (badnet_prune.numerics.thresholds), ascending
    policy: Mapped[str]
    prune_layer: Mapped[str]
    rank_layer: Mapped[str]
    range_size: Mapped[int]
    artifact_dir: Mapped[str]
    status: Mapped[str] = mapped_column(default="pending")
    finished_at: Mapped[datetime | None]


class DataFile(Base):
    """An HDF5 data file as seen once: the same path with new contents is a new row."""

    __tablename__ = "data_files"
    __table_args__ = (UniqueConstraint("path", "sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str]  # absolute
    sha256: Mapped[str]
    image_count: Mapped[int]


class Model(Base):
    """A BadNet under test within a sweep, with its state and clean validation accuracy."""

    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("sweep_id", "name"),
        CheckConstraint(one_of("status", MODEL_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    name: Mapped[str]
    path: Mapped[str]
    sha256: Mapped[str]
    # what every task feeds the model: 1 (raw pixels) or 255 (pixels / 255); 0 (auto) until the rank stage chose it
    input_scale: Mapped[float]
    input_scale_auto: Mapped[bool] = mapped_column(default=False, server_default=false())  # the rank stage chose it
    input_scale_note: Mapped[str | None] = mapped_column(Text)  # the rank stage's one line on the scale
    status: Mapped[str] = mapped_column(default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    acc0: Mapped[float | None]  # clean validation accuracy before pruning, percent
    channel_count: Mapped[int | None]  # channels of the pruned layer: steps run 0..channel_count
    # ground truth from the sweep file's [model.truth], where given (all NULL where not)
    truth_backdoored: Mapped[bool | None]
    truth_attack: Mapped[str | None]  # an identifier: clean, patch, ... (NULL where the table names none)
    truth_targets: Mapped[list[int] | dict[str, int] | None] = mapped_column(JSON)  # a list, or poison name -> target


class ModelData(Base):
    """Which data file plays which role for a model; poisoned roles are per poison name."""

    __tablename__ = "model_data"
    __table_args__ = (
        UniqueConstraint("model_id", "role", "poison_name"),
        CheckConstraint(
            f"({one_of('role', CLEAN_ROLES)} AND poison_name = '')"
            f" OR ({one_of('role', POISONED_ROLES)} AND poison_name <> '')",
            name="role",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(_model_fk())
    role: Mapped[str]
    poison_name: Mapped[str] = mapped_column(default="")
    data_file_id: Mapped[int] = mapped_column(ForeignKey("data_files.id"), index=True)


class LeasedWork:
    """The life of work a worker runs under a lease (db.tasks: take_lease, renew_lease, end_task): a stage's
    task, and a zoo model's build. One set of columns, so that one set of functions moves both."""

    state: Mapped[str] = mapped_column(default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None]
    message_id: Mapped[str | None]  # the broker's id of the last message sent for it
    lease_token: Mapped[str | None]
    lease_expires_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    seconds: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)


class Task(LeasedWork, Base):
    """One planned unit of work of a stage (pipeline.contract) and its life.

    `stage` names a declared stage; `key` is the exact identity of the task within its model
    ('0-10' for steps [0, 10), a threshold's key), `arguments` the stage's typed arguments as
    JSON: the worker reads them here, never from the message. A running task holds a lease
    (token and expiry, renewed while it runs), so that a redelivered copy never runs beside it.
    Sweep-scope tasks have no model. NULLs are distinct in unique constraints, so uniqueness is
    two partial unique indexes (one per scope), which both backends support and can name as
    the conflict target of an upsert.
    """

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(one_of("state", TASK_STATES), name="state"),
        Index(
            "uq_tasks_model_task",
            "sweep_id",
            "model_id",
            "stage",
            "key",
            unique=True,
            sqlite_where=text("model_id IS NOT NULL"),
            postgresql_where=text("model_id IS NOT NULL"),
        ),
        Index(
            "uq_tasks_sweep_task",
            "sweep_id",
            "stage",
            "key",
            unique=True,
            sqlite_where=text("model_id IS NULL"),
            postgresql_where=text("model_id IS NULL"),
        ),
        Index(None, "sweep_id", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    model_id: Mapped[int | None] = mapped_column(_model_fk(), index=True)
    stage: Mapped[str]
    key: Mapped[str] = mapped_column(default="")
    arguments: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # how far the running task is, in its stage's progress unit (epochs, labels ...), as its job last said
    progress_done: Mapped[int | None]
    progress_total: Mapped[int | None]


class Ranking(Base):
    """A channel's place in the pruning order (position 0 is pruned first)."""

    __tablename__ = "rankings"

    model_id: Mapped[int] = mapped_column(_model_fk(), primary_key=True)
    channel: Mapped[int] = mapped_column(primary_key=True)
    position: Mapped[int]
    mean_activation: Mapped[float]


class Step(Base):
    """The pruned model after `step` channels: clean validation accuracy (step 0 = unpruned)."""

    __tablename__ = "steps"
    __table_args__ = (
        CheckConstraint("(step = 0 AND channel IS NULL) OR (step > 0 AND channel IS NOT NULL)", name="channel"),
    )

    model_id: Mapped[int] = mapped_column(_model_fk(), primary_key=True)
    step: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[int | None]  # the channel pruned last
    fraction_pruned: Mapped[float]
    clean_accuracy: Mapped[float]  # percent
    clean_correct: Mapped[int]


class StepAsr(Base):
    """Attack success rate of one poison at one step; goes with its step."""

    __tablename__ = "step_asr"
    __table_args__ = (ForeignKeyConstraint(["model_id", "step"], ["steps.model_id", "steps.step"], ondelete="CASCADE"),)

    model_id: Mapped[int] = mapped_column(primary_key=True)
    step: Mapped[int] = mapped_column(primary_key=True)
    poison_name: Mapped[str] = mapped_column(primary_key=True)
    asr: Mapped[float]  # percent
    hits: Mapped[int]


class Selection(Base):
    """The step chosen for a threshold under the sweep's policy (None: never reached)."""

    __tablename__ = "selections"

    model_id: Mapped[int] = mapped_column(_model_fk(), primary_key=True)
    threshold: Mapped[str] = mapped_column(primary_key=True)  # exact key
    step: Mapped[int | None]
    clean_valid_accuracy: Mapped[float | None]


class Evaluation(Base):
    """A network on a test file: accuracy against the file's labels (clean accuracy or ASR).

    The test file is named by its role and, for a poisoned one, its poison name: clean and
    poisoned sets never share a namespace. B has no setting (''); every other network is named by
    the stage that made it and keyed by that stage's setting (a threshold's exact key for B'_t and
    G_t). robust_accuracy: on a poisoned file that carries each image's true label, the share of
    its images (those whose true label is not the target) classified as their true label.
    """

    __tablename__ = "evaluations"
    __table_args__ = (
        CheckConstraint(f"length(network) BETWEEN 1 AND {NAME_LENGTH}", name="network"),
        CheckConstraint("(network = 'B') = (threshold = '')", name="b_threshold"),
        CheckConstraint(
            "(role = 'clean_test' AND poison_name = '') OR (role = 'poisoned_test' AND poison_name <> '')",
            name="role",
        ),
    )

    model_id: Mapped[int] = mapped_column(_model_fk(), primary_key=True)
    network: Mapped[str] = mapped_column(primary_key=True)
    threshold: Mapped[str] = mapped_column(primary_key=True)  # the setting's exact key; '' for B
    role: Mapped[str] = mapped_column(primary_key=True)  # clean_test or poisoned_test
    poison_name: Mapped[str] = mapped_column(primary_key=True)  # '' for the clean test set
    accuracy: Mapped[float]  # percent
    flagged: Mapped[float | None]  # percent classified as N (repaired networks only)
    image_count: Mapped[int]
    robust_accuracy: Mapped[float | None]  # percent; poisoned files with true labels only


class Artifact(Base):
    """A file a stage wrote for one of its settings (B'_t, G_t, B''_t ...), with where it came from."""

    __tablename__ = "artifacts"
    __table_args__ = (CheckConstraint(f"length(kind) BETWEEN 1 AND {NAME_LENGTH}", name="kind"),)

    model_id: Mapped[int] = mapped_column(_model_fk(), primary_key=True)
    threshold: Mapped[str] = mapped_column(primary_key=True)  # the setting's exact key
    kind: Mapped[str] = mapped_column(primary_key=True)
    path: Mapped[str]
    sha256: Mapped[str]
    provenance: Mapped[dict[str, Any]]


class StageOutcome(Base):
    """What a stage's task concluded for one model and key, as a JSON document its stage declares the type of.

    The results storage of most stages: a defense's choices (the epoch kept, the u chosen), a
    detector's evidence, and for a detector its score in [0, 1]. Written in the transaction that
    writes the task's evaluations and artifacts, so one row means the task's results are stored.
    """

    __tablename__ = "stage_outcomes"
    __table_args__ = (
        CheckConstraint("score IS NULL OR (score >= 0 AND score <= 1)", name="score"),
        Index(None, "stage", "key"),
    )

    model_id: Mapped[int] = mapped_column(_model_fk(), primary_key=True)
    stage: Mapped[str] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(primary_key=True)  # the task's key: a setting, a class range ...
    score: Mapped[float | None]  # a detector's probability that the model is backdoored
    document: Mapped[dict[str, Any]]


class CurvePoint(Base):
    """One point of a curve a stage measured on clean validation data (an epoch, a pruning count, a u).

    clean_accuracy is the clean validation (or hold-out) accuracy at the point; values holds the
    point's other figures (a training loss ...) by name.
    """

    __tablename__ = "curve_points"

    model_id: Mapped[int] = mapped_column(_model_fk(), primary_key=True)
    stage: Mapped[str] = mapped_column(primary_key=True)
    curve: Mapped[str] = mapped_column(primary_key=True)  # which of the stage's curves (a threshold's key ...)
    point: Mapped[int] = mapped_column(primary_key=True)  # position along the curve, from 0
    x: Mapped[float]
    clean_accuracy: Mapped[float | None]  # percent
    clean_correct: Mapped[int | None]
    values: Mapped[dict[str, Any]]


class CurveAsr(Base):
    """The ASR of one poisoned validation set at one point of a curve: measured, never used to choose."""

    __tablename__ = "curve_asr"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model_id", "stage", "curve", "point"],
            ["curve_points.model_id", "curve_points.stage", "curve_points.curve", "curve_points.point"],
            ondelete="CASCADE",
        ),
    )

    model_id: Mapped[int] = mapped_column(primary_key=True)
    stage: Mapped[str] = mapped_column(primary_key=True)
    curve: Mapped[str] = mapped_column(primary_key=True)
    point: Mapped[int] = mapped_column(primary_key=True)
    poison_name: Mapped[str] = mapped_column(primary_key=True)
    asr: Mapped[float]  # percent
    hits: Mapped[int | None]


class VerdictRuleRow(Base):
    """A combined-verdict rule (numerics.verdict_rule), fitted on one sweep's models with ground truth and named,
    so that other sweeps judge their models by it. Not tied to that sweep by a foreign key: the rule outlives
    it. The fitted models' file hashes let a sweep refuse to judge a model the rule was fitted on."""

    __tablename__ = "verdict_rules"

    name: Mapped[str] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rule: Mapped[dict[str, Any]]  # detectors, weights, bias, means, scales
    fitted_sweep_id: Mapped[int]
    fitted_models: Mapped[list[str]]  # sha256 of each model file it was fitted on
    backdoored_models: Mapped[int]
    clean_models: Mapped[int]


class ZooBuild(LeasedWork, Base):
    """One model of a zoo built on the workers (`badnet-prune zoo` with a broker): what to build, and the life
    of its build under the same lease discipline as a task (db.tasks), so that a redelivered message never
    builds beside a running build and a dead worker's build is taken over.

    `folder` (absolute) is the model's folder in its zoo and its identity: planning the same zoo again finds
    its rows. `record` is the built model's zoo.json (synth.zoo.ZooModel), read back by the client.
    """

    __tablename__ = "zoo_builds"
    __table_args__ = (CheckConstraint(one_of("state", TASK_STATES), name="state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    folder: Mapped[str] = mapped_column(unique=True)
    zoo: Mapped[str]  # the zoo's folder (absolute): which zoo a build is of, for SQL readers
    name: Mapped[str]
    attack: Mapped[str]
    seed: Mapped[int]
    settings: Mapped[dict[str, Any]]  # synth.zoo.ZooSettings as JSON
    cache_key: Mapped[str]
    cache_dir: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    record: Mapped[dict[str, Any] | None] = mapped_column(JSON)
