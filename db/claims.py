"""Claiming tasks for enqueueing, so that of two workers finishing at once only one sends a successor."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Task, utcnow

CLAIMABLE_STATES = ("pending",)


def claim_task(session: Session, task_id: int) -> bool:
    """Move a pending task to 'queued'; True only for the caller whose update did it."""
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.state.in_(CLAIMABLE_STATES))
        .values(state="queued", enqueued_at=utcnow())
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def model_tasks(session: Session, model_id: int, kind: str) -> list[Task]:
    """The tasks of one kind for a model, in the order they were planned."""
    query = select(Task).where(Task.model_id == model_id, Task.kind == kind).order_by(Task.id)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def sweep_finish_task(session: Session, sweep_id: int) -> Task | None:
    query = select(Task).where(Task.sweep_id == sweep_id, Task.kind == "finish", Task.model_id.is_(None))
    return session.scalars(query.execution_options(populate_existing=True)).first()


def fail_open_tasks(session: Session, model_id: int, error: str) -> None:
    """Once a model has failed, its tasks that have not finished will never run: say so."""
    session.execute(
        update(Task)
        .where(Task.model_id == model_id, Task.state.in_(("pending", "queued", "retrying", "running")))
        .values(state="failed", error=error, finished_at=utcnow())
    )


def reset_to_pending(session: Session, task_ids: list[int]) -> None:
    """Make tasks claimable again, for a resume that sends them anew."""
    if task_ids:
        session.execute(update(Task).where(Task.id.in_(task_ids)).values(state="pending"))
