"""Task rows through their life: planned, claimed for sending, leased while running, ended.

Every change of state is one conditional UPDATE, so that of two processes racing for the same
transition exactly one wins: claiming a pending task for sending (so one sender sends each
successor), taking a task's lease (so a redelivered copy never runs beside the task), and
ending it (only the lease holder records the outcome). Functions take the caller's Session and
neither open nor commit one (db.session.session_scope).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from db.models import Task, utcnow
from db.upsert import upsert_statement

OPEN_STATES = ("pending", "queued", "running", "retrying")
STARTABLE_STATES = ("pending", "queued", "retrying")


def plan_tasks(
    session: Session, sweep_id: int, model_id: int | None, stage: str, tasks: Sequence[tuple[str, Mapping[str, Any]]]
) -> None:
    """Plan the tasks (key, arguments) of one stage for a model (None: the sweep's own), created 'pending'
    where new; an existing task is left as it is. One statement for them all, not a round trip each."""
    if not tasks:
        return
    if model_id is None:
        index, where = ["sweep_id", "stage", "key"], Task.model_id.is_(None)
    else:
        index, where = ["sweep_id", "model_id", "stage", "key"], Task.model_id.is_not(None)
    statement = upsert_statement(session, Task, key=index, update=[], index_where=where)
    rows = [{"sweep_id": sweep_id, "model_id": model_id, "stage": stage, "key": key, "arguments": dict(arguments)}
            for key, arguments in tasks]
    session.execute(statement, rows)


def get_task(session: Session, task_id: int) -> Task | None:
    return session.get(Task, task_id, populate_existing=True)


def stage_tasks(session: Session, sweep_id: int, model_id: int | None, stage: str) -> list[Task]:
    """The tasks of one stage for a model (model_id None: the sweep's own), in planning order."""
    scope = Task.model_id.is_(None) if model_id is None else Task.model_id == model_id
    query = select(Task).where(Task.sweep_id == sweep_id, scope, Task.stage == stage).order_by(Task.id)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def sweep_tasks(session: Session, sweep_id: int) -> list[Task]:
    """Every task of a sweep, in planning order."""
    query = select(Task).where(Task.sweep_id == sweep_id).order_by(Task.id)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def claim_for_sending(session: Session, task_id: int) -> bool:
    """Move a pending task to 'queued'; True only for the caller whose update did it."""
    result = session.execute(
        update(Task).where(Task.id == task_id, Task.state == "pending").values(state="queued", enqueued_at=utcnow())
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def claim_unsent(session: Session, task_id: int, older_than: timedelta) -> bool:
    """Claim again a task that was claimed (queued) longer ago than `older_than` and never sent (no message id):
    its sender died between the claim and the send. True only for the caller whose update did it."""
    now = utcnow()
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.state == "queued", Task.message_id.is_(None),
               Task.enqueued_at < now - older_than)
        .values(enqueued_at=now)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def record_message(session: Session, task_id: int, message_id: str | None) -> None:
    """The broker's id of the message just sent for a task (None on the in-process queue)."""
    session.execute(update(Task).where(Task.id == task_id).values(message_id=message_id))


def reset_to_pending(session: Session, task_ids: Sequence[int]) -> None:
    """Make tasks that will be sent again claimable (resume: also a 'done' one whose results are missing);
    a running task with a live lease is not touched."""
    if task_ids:
        now = utcnow()
        live = and_(Task.state == "running", Task.lease_expires_at.is_not(None), Task.lease_expires_at > now)
        session.execute(update(Task).where(Task.id.in_(task_ids), ~live).values(state="pending"))


def take_lease(
    session: Session, task_id: int, token: str, worker: str, lease_s: float, *, dead_token: str | None = None
) -> bool:
    """Start a task under a lease: from a startable state, or from 'running' whose lease expired (or whose
    holder is known dead: dead_token). True if this caller now holds it; attempts + 1."""
    now = utcnow()
    takeover = and_(Task.state == "running", or_(Task.lease_expires_at.is_(None), Task.lease_expires_at <= now))
    if dead_token is not None:
        takeover = or_(takeover, and_(Task.state == "running", Task.lease_token == dead_token))
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, or_(Task.state.in_(STARTABLE_STATES), takeover))
        .values(
            state="running", lease_token=token, lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=Task.attempts + 1, worker=worker, started_at=now, finished_at=None, seconds=None,
        )
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def renew_lease(session: Session, task_id: int, token: str, lease_s: float) -> bool:
    """Push the lease's expiry on while the task runs; False if another holder took it over."""
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.lease_token == token, Task.state == "running")
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def end_task(session: Session, task_id: int, token: str, state: str, error: str | None = None) -> bool:
    """Record a leased task's outcome (done, failed, retrying) and release the lease; False if not the holder."""
    task = session.get(Task, task_id, with_for_update=True, populate_existing=True)
    if task is None or task.lease_token != token or task.state != "running":
        return False
    now = utcnow()
    task.state, task.error, task.finished_at = state, error, now
    task.seconds = (now - task.started_at).total_seconds() if task.started_at else None
    task.lease_token, task.lease_expires_at = None, None
    session.flush()
    return True


def fail_open_tasks(session: Session, model_id: int, error: str) -> None:
    """Once a model has failed, its tasks that have not finished will never run: say so."""
    session.execute(
        update(Task)
        .where(Task.model_id == model_id, Task.state.in_(OPEN_STATES))
        .values(state="failed", error=error, finished_at=utcnow(), lease_token=None, lease_expires_at=None)
    )


def lease_is_live(task: Task, now: datetime | None = None) -> bool:
    return task.state == "running" and task.lease_expires_at is not None and task.lease_expires_at > (now or utcnow())
