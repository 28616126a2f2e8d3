"""Task rows through their life: planned, claimed for sending, leased while running, ended.

Every change of state is one conditional UPDATE, so that of two processes racing for the same
transition exactly one wins: claiming a pending task for sending (so one sender sends each
successor), taking a task's lease (so a redelivered copy never runs beside the task), and
ending it (only the lease holder records the outcome). Claims and message ids are written for
many tasks in one statement each, not a round trip per task: a worker's coordination is a few
statements in two transactions per task (bench/coordination.py). Functions take the caller's
Session and neither open nor commit one (db.session.session_scope).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, or_, select, text, update
from sqlalchemy.orm import Session

from badnet_prune.db.models import Model, Task, ZooBuild, utcnow
from badnet_prune.db.upsert import upsert_statement

OPEN_STATES = ("pending", "queued", "running", "retrying")
STARTABLE_STATES = ("pending", "queued", "retrying")
TERMINAL_MODEL_STATES = ("done", "failed")
# The rows that run under a lease: a stage's task, and a zoo model's build (db.zoo_builds).
Leased = type[Task] | type[ZooBuild]


def plan_tasks(
    session: Session, sweep_id: int, model_id: int | None, stage: str, tasks: Sequence[tuple[str, Mapping[str, Any]]]
) -> None:
    """Plan the tasks (key, arguments) of one stage for a model (None: the sweep's own), one progress unit each;
    see plan_all."""
    plan_all(session, sweep_id, [(model_id, stage, key, arguments, 1) for key, arguments in tasks])


def plan_all(session: Session, sweep_id: int,
             tasks: Sequence[tuple[int | None, str, str, Mapping[str, Any], int]]) -> None:
    """Plan tasks (model id or None for the sweep's own, stage, key, arguments, progress units), created
    'pending' where new; an existing task is left as it is. One statement for each scope's tasks, however
    many models: planning 1,000 models is a few round trips, not one per model and stage. Ids follow the
    order given. progress_total holds the task's units (steps, epochs ...) from the start, so that progress
    is a sum over rows."""
    for sweep_scope in (False, True):
        rows = [{"sweep_id": sweep_id, "model_id": model_id, "stage": stage, "key": key, "arguments": dict(arguments),
                 "progress_total": units}
                for model_id, stage, key, arguments, units in tasks if (model_id is None) is sweep_scope]
        if not rows:
            continue
        if sweep_scope:
            index, where = ["sweep_id", "stage", "key"], Task.model_id.is_(None)
        else:
            index, where = ["sweep_id", "model_id", "stage", "key"], Task.model_id.is_not(None)
        session.execute(upsert_statement(session, Task, key=index, update=[], index_where=where), rows)


def get_task(session: Session, task_id: int) -> Task | None:
    return session.get(Task, task_id, populate_existing=True)


def stage_tasks(session: Session, sweep_id: int, model_id: int | None, stage: str) -> list[Task]:
    """The tasks of one stage for a model (model_id None: the sweep's own), in planning order."""
    query = select(Task).where(Task.sweep_id == sweep_id, _scope(model_id), Task.stage == stage).order_by(Task.id)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def stage_task_ids(session: Session, sweep_id: int, names: Sequence[str]) -> list[tuple[str, int]]:
    """(stage, id) of every task of the named stages in the sweep (all models, or the sweep's own), in order."""
    query = select(Task.stage, Task.id).where(Task.sweep_id == sweep_id, Task.stage.in_(names)).order_by(Task.id)
    return [(stage, task_id) for stage, task_id in session.execute(query)]


def sweep_tasks(session: Session, sweep_id: int) -> list[Task]:
    """Every task of a sweep, in planning order."""
    query = select(Task).where(Task.sweep_id == sweep_id).order_by(Task.id)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def unfinished_stages(session: Session, sweep_id: int, model_id: int | None, names: Sequence[str]) -> set[str]:
    """Which of the named stages of a model (None: the sweep's own) have a task that is not done; one query."""
    if not names:
        return set()
    query = select(Task.stage).where(Task.sweep_id == sweep_id, _scope(model_id), Task.stage.in_(names),
                                     Task.state != "done")
    return set(session.scalars(query.distinct()))


def models_ended(session: Session, sweep_id: int) -> bool:
    """Whether every model of the sweep has ended (done or failed): one query, whatever the sweep's size."""
    open_model = select(Model.id).where(Model.sweep_id == sweep_id, Model.status.not_in(TERMINAL_MODEL_STATES))
    return not session.scalar(select(open_model.exists()))


# SQLite binds at most 32,766 parameters a statement: a sweep of more root tasks is claimed in parts.
IDS_PER_STATEMENT = 10_000


def lock_model(session: Session, model_id: int) -> None:
    """Hold the model's row until the transaction ends: the ends of one model's tasks then take turns, so
    that of two last tasks ending at once the second sees the first done and releases what follows."""
    session.execute(select(Model.id).where(Model.id == model_id).with_for_update())


def claim_tasks(session: Session, task_ids: Sequence[int]) -> list[int]:
    """Move those of the tasks that are pending to 'queued' in one UPDATE; the ids this caller claimed, in order."""
    claimed: list[int] = []
    ids = list(task_ids)
    for first in range(0, len(ids), IDS_PER_STATEMENT):
        statement = (update(Task).where(Task.id.in_(ids[first : first + IDS_PER_STATEMENT]), Task.state == "pending")
                     .values(state="queued", enqueued_at=utcnow()).returning(Task.id))
        claimed += session.scalars(statement, execution_options={"synchronize_session": False})
    return sorted(claimed)


def claim_stages(
    session: Session, sweep_id: int, model_id: int | None, names: Sequence[str], unsent_after: timedelta
) -> list[tuple[str, int]]:
    """Claim for sending, in one UPDATE, the named stages' tasks of a model (None: the sweep's own) that are
    pending, or were claimed (queued) longer ago than `unsent_after` and never sent (no message id: their
    sender died between the claim and the send). (stage, task id) of those this caller claimed, in order."""
    if not names:
        return []
    now = utcnow()
    unsent = and_(Task.state == "queued", Task.message_id.is_(None), Task.enqueued_at < now - unsent_after)
    statement = (
        update(Task)
        .where(Task.sweep_id == sweep_id, _scope(model_id), Task.stage.in_(names), or_(Task.state == "pending", unsent))
        .values(state="queued", enqueued_at=now)
        .returning(Task.id, Task.stage)
    )
    rows = session.execute(statement, execution_options={"synchronize_session": False})
    return [(stage, task_id) for task_id, stage in sorted(rows)]


def record_messages(session: Session, sent: Sequence[tuple[int, str]]) -> None:
    """The broker's ids of the messages just sent, (task id, message id), in one batched statement.

    On PostgreSQL this transaction does not wait for its commit to reach the disk
    (synchronous_commit off, for this transaction only): a crash of the server can lose only the
    last fraction of a second of these ids, and a task without one is at worst sent again, which
    its lease and idempotent results make harmless. That spares a disk flush per sending worker.
    """
    if not sent:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    session.execute(update(Task), [{"id": task_id, "message_id": message_id} for task_id, message_id in sent])


def reset_to_pending(session: Session, task_ids: Sequence[int]) -> None:
    """Make tasks that will be sent again claimable (resume: also a 'done' one whose results are missing);
    a running task with a live lease is not touched."""
    if task_ids:
        now = utcnow()
        live = and_(Task.state == "running", Task.lease_expires_at.is_not(None), Task.lease_expires_at > now)
        session.execute(update(Task).where(Task.id.in_(task_ids), ~live).values(state="pending"))


def take_lease(
    session: Session, task_id: int, token: str, worker: str, lease_s: float, *, dead_token: str | None = None,
    table: Leased = Task,
) -> bool:
    """Start a task (or another leased row: table) under a lease: from a startable state, or from 'running' whose
    lease expired (or whose holder is known dead: dead_token). True if this caller now holds it; attempts + 1."""
    now = utcnow()
    takeover = and_(table.state == "running", or_(table.lease_expires_at.is_(None), table.lease_expires_at <= now))
    if dead_token is not None:
        takeover = or_(takeover, and_(table.state == "running", table.lease_token == dead_token))
    result = session.execute(
        update(table)
        .where(table.id == task_id, or_(table.state.in_(STARTABLE_STATES), takeover))
        .values(
            state="running", lease_token=token, lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=table.attempts + 1, worker=worker, started_at=now, finished_at=None, seconds=None,
            **({"progress_done": 0} if table is Task else {}),
        )
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def renew_lease(session: Session, task_id: int, token: str, lease_s: float, progress: int | None = None,
                table: Leased = Task) -> bool:
    """Push the lease's expiry on while the task runs, with how many of its progress units are done where its
    job said; False if another holder took it over."""
    values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=lease_s)}
    if progress is not None:
        values["progress_done"] = progress
    result = session.execute(
        update(table).where(table.id == task_id, table.lease_token == token, table.state == "running").values(values)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def end_task(session: Session, task_id: int, token: str, state: str, error: str | None = None, *,
             table: Leased = Task, values: dict[str, Any] | None = None) -> bool:
    """Record a leased task's outcome (done, failed, retrying), with any further values of its row, and release
    the lease, in one UPDATE; False if the caller is not the holder."""
    now = utcnow()
    progress = {"progress_done": table.progress_total if state == "done" else table.progress_done} \
        if table is Task else {}
    statement = (
        update(table)
        .where(table.id == task_id, table.lease_token == token, table.state == "running")
        .values(state=state, error=error, finished_at=now, seconds=_seconds_since(session, table, now),
                lease_token=None, lease_expires_at=None, **progress, **(values or {}))
        .returning(table.id)
    )
    return session.execute(statement, execution_options={"synchronize_session": False}).first() is not None


def fail_open_tasks(session: Session, model_id: int, error: str) -> None:
    """Once a model has failed, its tasks that have not finished will never run: say so."""
    session.execute(
        update(Task)
        .where(Task.model_id == model_id, Task.state.in_(OPEN_STATES))
        .values(state="failed", error=error, finished_at=utcnow(), lease_token=None, lease_expires_at=None)
    )


@dataclass(frozen=True)
class AbandonedTask:
    """A task left 'running' by a worker that stopped renewing its lease (killed, or its machine gone)."""

    task_id: int
    stage: str
    model_id: int | None
    worker: str | None
    lease_expired_at: datetime


def abandoned_tasks(session: Session, sweep_id: int) -> list[AbandonedTask]:
    """The sweep's running tasks whose lease has expired, oldest first: nothing runs them until they are sent
    again (`sweep resume`, or a waiting client when the sweep stalls) or the broker's visibility timeout."""
    rows = session.scalars(
        select(Task).where(Task.sweep_id == sweep_id, Task.state == "running", Task.lease_expires_at.is_not(None),
                           Task.lease_expires_at <= utcnow()).order_by(Task.lease_expires_at, Task.id))
    return [AbandonedTask(task.id, task.stage, task.model_id, task.worker, task.lease_expires_at) for task in rows]


def lease_is_live(task: Task | ZooBuild, now: datetime | None = None) -> bool:
    return task.state == "running" and task.lease_expires_at is not None and task.lease_expires_at > (now or utcnow())


def _scope(model_id: int | None) -> ColumnElement[bool]:
    return Task.model_id.is_(None) if model_id is None else Task.model_id == model_id


def _seconds_since(session: Session, table: Leased, now: datetime) -> ColumnElement[float]:
    """now - the row's started_at in seconds, computed by the database in the UPDATE that ends a task."""
    moment = literal(now, table.__table__.c.started_at.type)
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", moment - table.started_at)
    return (func.julianday(moment) - func.julianday(table.started_at)) * 86400.0
