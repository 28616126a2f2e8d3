"""A task's life around its work: mark it running, run it, record the outcome, send what follows.

Dependencies are enforced by who sends what: the orchestrator sends each model's rank task;
a finished rank sends the model's ranges; the last finished range sends its thresholds; the
last finished threshold completes the model, and the last model sends the sweep's finish.
"Last" is decided by claiming the successor's row (pending -> queued), so exactly one sends it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.exc import OperationalError

from badnet_prune.errors import BadInputError
from db.claims import claim_task, fail_open_tasks, model_tasks, sweep_finish_task
from db.errors import DatabaseUnavailable
from db.repository import list_models, mark_task, set_model_status, set_sweep_status
from db.session import session_scope
from worker.dispatch import Dispatcher
from worker.runtime import Runtime

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (DatabaseUnavailable, OperationalError, ConnectionError)
TERMINAL_MODEL_STATES = ("done", "failed")


def run_task(runtime: Runtime, task_id: int, work: Callable[[], None]) -> None:
    """Run one task's work with its bookkeeping; transient errors propagate so Celery retries."""
    with session_scope(runtime.engine) as session:
        task = mark_task(session, task_id, "running", worker=runtime.hostname)
        kind, model_id, sweep_id = task.kind, task.model_id, task.sweep_id
    try:
        work()
    except TRANSIENT_ERRORS:
        _mark_quietly(runtime, task_id, "retrying", "database or broker unavailable; retrying")
        raise
    except Exception as error:  # a model's bad input, or a failure of its own: the others go on
        reason = str(error) if isinstance(error, BadInputError) else f"{type(error).__name__}: {error}"
        reason = reason.strip().splitlines()[0] if reason.strip() else type(error).__name__
        with session_scope(runtime.engine) as session:
            mark_task(session, task_id, "failed", error=reason)
            if model_id is not None:
                set_model_status(session, model_id, "failed", error=reason)
                fail_open_tasks(session, model_id, f"not run: model failed ({reason})")
        if model_id is not None:
            send_finish_if_all_models_ended(runtime, sweep_id)
        return
    with session_scope(runtime.engine) as session:
        mark_task(session, task_id, "done")
    send_successors(runtime, kind, sweep_id, model_id)


def _mark_quietly(runtime: Runtime, task_id: int, state: str, error: str) -> None:
    try:
        with session_scope(runtime.engine) as session:
            mark_task(session, task_id, state, error=error)
    except TRANSIENT_ERRORS:
        pass  # the database itself is what failed; the retry will record the outcome


def send_successors(runtime: Runtime, kind: str, sweep_id: int, model_id: int | None) -> None:
    if kind == "rank":
        _send_claimed(runtime, model_id, "prune_range")
    elif kind == "prune_range":
        if _all_done(runtime, model_id, "prune_range"):
            _send_claimed(runtime, model_id, "threshold")
    elif kind == "threshold" and _all_done(runtime, model_id, "threshold"):
        with session_scope(runtime.engine) as session:
            set_model_status(session, model_id, "done")
        send_finish_if_all_models_ended(runtime, sweep_id)


def _all_done(runtime: Runtime, model_id: int | None, kind: str) -> bool:
    with session_scope(runtime.engine) as session:
        return all(task.state == "done" for task in model_tasks(session, model_id, kind))


def _send_claimed(runtime: Runtime, model_id: int | None, kind: str) -> None:
    with session_scope(runtime.engine) as session:
        tasks = [(task.id, task.key) for task in model_tasks(session, model_id, kind) if claim_task(session, task.id)]
    for task_id, key in tasks:
        send_task(runtime.dispatcher, kind, task_id, model_id, key)


def send_task(
    dispatcher: Dispatcher, kind: str, task_id: int, model_id: int | None, key: str, sweep_id: int = 0
) -> None:
    """Send one planned task with id-only arguments derived from its row."""
    if kind == "rank":
        dispatcher.send(kind, task_id=task_id, model_id=model_id)
    elif kind == "prune_range":
        start, stop = (int(part) for part in key.split("-"))
        dispatcher.send(kind, task_id=task_id, model_id=model_id, start=start, stop=stop)
    elif kind == "threshold":
        dispatcher.send(kind, task_id=task_id, model_id=model_id, threshold=float(key))
    else:
        dispatcher.send(kind, task_id=task_id, sweep_id=sweep_id)


def send_finish_if_all_models_ended(runtime: Runtime, sweep_id: int) -> None:
    with session_scope(runtime.engine) as session:
        if not all(model.status in TERMINAL_MODEL_STATES for model in list_models(session, sweep_id)):
            return
        finish = sweep_finish_task(session, sweep_id)
        claimed = finish is not None and claim_task(session, finish.id)
        finish_id = finish.id if finish is not None else None
    if claimed:
        send_task(runtime.dispatcher, "finish", finish_id, None, "", sweep_id=sweep_id)


def finish_sweep(runtime: Runtime, sweep_id: int) -> None:
    with session_scope(runtime.engine) as session:
        set_sweep_status(session, sweep_id, "done")

