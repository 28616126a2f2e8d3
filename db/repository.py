"""Sweeps, models, their data files and tasks: what the orchestrator registers and workers track.

Every function takes the caller's Session first and neither commits nor opens one (see
db.session.session_scope). Writes keyed by a natural key are upserts (db.upsert), so a
redelivered Celery task rewrites its rows. Readers re-read from the database
(populate_existing), never trusting objects an earlier write in the same session loaded.
Per-step and per-threshold results are in db.results.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import case, delete, func, select, tuple_, update
from sqlalchemy.orm import Session

from badnet_prune.db.models import (
    MODEL_STATUSES,
    POLICIES,
    SWEEP_STATUSES,
    Base,
    DataFile,
    Model,
    ModelData,
    Sweep,
    Task,
    utcnow,
)
from badnet_prune.db.upsert import upsert_statement

MODEL_FIELDS = frozenset({"acc0", "channel_count"})

RowT = TypeVar("RowT", bound=Base)


@dataclass(frozen=True)
class Truth:
    """A model's ground truth as the sweep file's [model.truth] gives it (stored as models.truth_*)."""

    backdoored: bool
    attack: str | None = None
    targets: tuple[int, ...] | Mapping[str, int] = ()

    def columns(self) -> dict[str, Any]:
        targets = dict(self.targets) if isinstance(self.targets, Mapping) else list(self.targets)
        return {"truth_backdoored": self.backdoored, "truth_attack": self.attack, "truth_targets": targets}


NO_TRUTH = {"truth_backdoored": None, "truth_attack": None, "truth_targets": None}


@dataclass(frozen=True)
class ModelProgress:
    """Where one model of a sweep stands: its tasks by state, per stage, and per stage its progress units done
    of planned (steps, epochs ...: each stage declares its unit, pipeline.contract.Progress)."""

    model_id: int
    name: str
    status: str
    error: str | None
    tasks: dict[str, int] = field(default_factory=dict)  # state -> count
    stages: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> state -> count
    units: dict[str, tuple[int, int]] = field(default_factory=dict)  # stage -> (units done, units planned)


@dataclass(frozen=True)
class SweepProgress:
    sweep_id: int
    status: str
    models: list[ModelProgress]
    sweep_tasks: dict[str, int]  # state -> count of the sweep's own tasks ('finish')


def check_choice(value: str, allowed: Sequence[str], what: str) -> str:
    """Refuse a word the schema's CHECK constraint would refuse, with a readable message."""
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def create_sweep(
    session: Session,
    *,
    name: str,
    config: Mapping[str, Any],
    thresholds: Iterable[str],
    policy: str,
    prune_layer: str,
    rank_layer: str,
    range_size: int,
    artifact_dir: str | Path,
) -> int:
    """Register a new sweep (status 'pending'); each call makes a new one."""
    sweep = Sweep(
        name=name,
        config=dict(config),
        thresholds=[str(threshold) for threshold in thresholds],
        policy=check_choice(policy, POLICIES, "policy"),
        prune_layer=prune_layer,
        rank_layer=rank_layer,
        range_size=range_size,
        artifact_dir=str(artifact_dir),
    )
    session.add(sweep)
    session.flush()
    return sweep.id


def set_sweep_status(session: Session, sweep_id: int, status: str) -> None:
    """'done' and 'failed' stamp finished_at; 'done' stands even when some models failed."""
    check_choice(status, SWEEP_STATUSES, "sweep status")
    finished_at = utcnow() if status in ("done", "failed") else None
    _update_one(session, Sweep, sweep_id, status=status, finished_at=finished_at)


def finish_sweep(session: Session, sweep_id: int) -> str:
    """Close a sweep whose models have all ended: 'failed' if every model failed, else 'done'."""
    statuses = [model.status for model in list_models(session, sweep_id)]
    status = "failed" if statuses and all(s == "failed" for s in statuses) else "done"
    set_sweep_status(session, sweep_id, status)
    return status


def upsert_data_file(session: Session, path: str | Path, sha256: str, image_count: int) -> int:
    """The id of the data file with this absolute path and contents, recording it if new."""
    statement = upsert_statement(session, DataFile, key=["path", "sha256"], update=["image_count"])
    row = {"path": str(Path(path).expanduser().absolute()), "sha256": sha256, "image_count": image_count}
    return session.execute(statement.values(row).returning(DataFile.id)).scalar_one()


def add_model(
    session: Session,
    sweep_id: int,
    *,
    name: str,
    path: str | Path,
    sha256: str,
    input_scale: float,
    data: Iterable[tuple[str, str, int]],
    truth: Truth | None = None,
) -> int:
    """Register (or re-register) a model of a sweep with its data: (role, poison_name, data_file_id),
    and its ground truth where known.

    Roles are clean_valid/clean_test (poison_name '') and poisoned_valid/poisoned_test (one
    per poison name). Re-registering keeps the model's id and status and replaces its data and truth.
    """
    truth_columns = NO_TRUTH if truth is None else truth.columns()
    statement = upsert_statement(session, Model, key=["sweep_id", "name"],
                                 update=["path", "sha256", "input_scale", *truth_columns])
    row = {"sweep_id": sweep_id, "name": name, "path": str(path), "sha256": sha256, "input_scale": input_scale,
           **truth_columns}
    model_id: int = session.execute(statement.values(row).returning(Model.id)).scalar_one()
    rows = [
        {"model_id": model_id, "role": role, "poison_name": poison, "data_file_id": file_id}
        for role, poison, file_id in data
    ]
    if rows:
        data_statement = upsert_statement(
            session, ModelData, key=["model_id", "role", "poison_name"], update=["data_file_id"]
        )
        session.execute(data_statement, rows)
    kept = [(row["role"], row["poison_name"]) for row in rows]
    session.execute(
        delete(ModelData).where(
            ModelData.model_id == model_id, tuple_(ModelData.role, ModelData.poison_name).not_in(kept)
        )
    )
    return model_id


def set_model_status(session: Session, model_id: int, status: str, error: str | None = None, **fields: Any) -> None:
    """Set a model's status and error (None clears it); fields: acc0, channel_count."""
    check_choice(status, MODEL_STATUSES, "model status")
    _check_fields(fields, MODEL_FIELDS, "set_model_status")
    _update_one(session, Model, model_id, status=status, error=error, **fields)


def get_sweep(session: Session, sweep_id: int) -> Sweep:
    return _get(session, Sweep, sweep_id)


def get_model(session: Session, model_id: int) -> Model:
    return _get(session, Model, model_id)


def list_models(session: Session, sweep_id: int) -> list[Model]:
    """The sweep's models in the order they were added."""
    query = select(Model).where(Model.sweep_id == sweep_id).order_by(Model.id)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def model_data_paths(session: Session, model_id: int) -> dict[str, dict[str, str]]:
    """{role: {poison_name: path}}; clean roles have the single poison name ''."""
    query = (
        select(ModelData.role, ModelData.poison_name, DataFile.path)
        .join(DataFile, DataFile.id == ModelData.data_file_id)
        .where(ModelData.model_id == model_id)
        .order_by(ModelData.role, ModelData.poison_name)
    )
    paths: dict[str, dict[str, str]] = {}
    for role, poison_name, path in session.execute(query):
        paths.setdefault(role, {})[poison_name] = path
    return paths


def sweep_progress(session: Session, sweep_id: int) -> SweepProgress:
    """Per model: status, error, tasks by state and by stage, and each stage's progress units done of planned."""
    sweep = get_sweep(session, sweep_id)
    models = list_models(session, sweep_id)
    tasks: dict[int | None, dict[str, int]] = {}
    per_stage: dict[int | None, dict[str, dict[str, int]]] = {}
    task_counts = select(Task.model_id, Task.stage, Task.state, func.count()).where(Task.sweep_id == sweep_id)
    for model_id, stage, state, count in session.execute(task_counts.group_by(Task.model_id, Task.stage, Task.state)):
        by_state = tasks.setdefault(model_id, {})
        by_state[state] = by_state.get(state, 0) + count
        per_stage.setdefault(model_id, {}).setdefault(stage, {})[state] = count
    units: dict[int | None, dict[str, tuple[int, int]]] = {}
    unit_sums = select(Task.model_id, Task.stage, _units_done(), func.sum(Task.progress_total)).where(
        Task.sweep_id == sweep_id).group_by(Task.model_id, Task.stage)
    for model_id, stage, done, total in session.execute(unit_sums):
        units.setdefault(model_id, {})[stage] = (int(done or 0), int(total or 0))
    return SweepProgress(
        sweep_id=sweep.id,
        status=sweep.status,
        models=[
            ModelProgress(
                model_id=model.id,
                name=model.name,
                status=model.status,
                error=model.error,
                tasks=tasks.get(model.id, {}),
                stages=per_stage.get(model.id, {}),
                units=units.get(model.id, {}),
            )
            for model in models
        ],
        sweep_tasks=tasks.get(None, {}),
    )


def _units_done() -> Any:
    """A task's units done: all of them once done, else what its running job last reported."""
    return func.sum(case((Task.state == "done", Task.progress_total), else_=func.coalesce(Task.progress_done, 0)))


@dataclass(frozen=True)
class SweepOverview:
    """A sweep at a glance, from one grouped query: per model its status, error and task states."""

    sweep_id: int
    status: str
    models: list[tuple[int, str, str, str | None, dict[str, int]]]  # id, name, status, error, state -> count
    sweep_tasks: dict[str, int]
    stages: dict[str, dict[str, int]]  # stage -> state -> count, over the whole sweep
    units: dict[str, tuple[int, int]] = field(default_factory=dict)  # stage -> (units done, units planned)
    running_share: float = 0.0  # the running tasks' progress, in tasks (their units done / planned, summed)


def sweep_overview(session: Session, sweep_id: int) -> SweepOverview:
    """What a watcher redraws every half second; cheap at thousands of models (grouped queries)."""
    sweep = get_sweep(session, sweep_id)
    query = (
        select(Model.id, Model.name, Model.status, Model.error, Task.state, func.count(Task.id))
        .select_from(Model)
        .outerjoin(Task, Task.model_id == Model.id)
        .where(Model.sweep_id == sweep_id)
        .group_by(Model.id, Model.name, Model.status, Model.error, Task.state)
        .order_by(Model.id)
    )
    models: dict[int, tuple[int, str, str, str | None, dict[str, int]]] = {}
    for model_id, name, status, error, state, count in session.execute(query):
        counts = models.setdefault(model_id, (model_id, name, status, error, {}))[4]
        if state is not None:
            counts[state] = count
    own = select(Task.state, func.count()).where(Task.sweep_id == sweep_id, Task.model_id.is_(None))
    sweep_tasks = {state: count for state, count in session.execute(own.group_by(Task.state))}
    stages: dict[str, dict[str, int]] = {}
    by_stage = select(Task.stage, Task.state, func.count()).where(Task.sweep_id == sweep_id)
    for stage, state, count in session.execute(by_stage.group_by(Task.stage, Task.state)):
        stages.setdefault(stage, {})[state] = count
    unit_sums = select(Task.stage, _units_done(), func.sum(Task.progress_total)).where(Task.sweep_id == sweep_id)
    units = {stage: (int(done or 0), int(total or 0)) for stage, done, total in
             session.execute(unit_sums.group_by(Task.stage))}
    share = select(func.sum(func.coalesce(Task.progress_done, 0) * 1.0 / Task.progress_total)).where(
        Task.sweep_id == sweep_id, Task.state == "running", Task.progress_total > 0)
    running_share = float(session.scalar(share) or 0.0)
    return SweepOverview(sweep.id, sweep.status, list(models.values()), sweep_tasks, stages, units, running_share)


def _get(session: Session, model: type[RowT], row_id: int) -> RowT:
    row = session.get(model, row_id, populate_existing=True)
    if row is None:
        raise LookupError(f"no {model.__tablename__} row with id {row_id}")
    return row


def _update_one(session: Session, model: type[Base], row_id: int, **values: Any) -> None:
    result = session.execute(update(model).where(model.id == row_id).values(**values))  # type: ignore[attr-defined]
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LookupError(f"no {model.__tablename__} row with id {row_id}")


def _check_fields(fields: Mapping[str, Any], allowed: frozenset[str], function: str) -> None:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise TypeError(f"{function}() got unexpected fields {unknown}; allowed: {sorted(allowed)}")
