"""A task's life around its job, for every stage alike: lease it, run it, record it, release what follows.

A message carries only a task id. Everything else is the task row's: its stage, its arguments
and whether it may run at all, so a forged or replayed message can at most redo the planned
work of an existing task whose predecessors are done. A task that is done, failed, not yet
released or running under another live lease is left alone. What follows a finished task is
read from the stage contract: every stage waiting for it whose predecessors are now all done is
claimed (pending -> queued, so exactly one finisher sends it) and sent.

Per task the coordination is two transactions: one reads the row, checks its predecessors and
takes the lease; the other ends the task, claims what it releases and closes the model (the
model's row locked, so that of two last tasks ending at once one releases what follows). The
messages those claims send are recorded in one more, only where something was sent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from badnet_prune.db.errors import DatabaseUnavailable
from badnet_prune.db.models import Sweep, Task, ZooBuild, utcnow
from badnet_prune.db.repository import set_model_status
from badnet_prune.db.session import session_scope
from badnet_prune.db.tasks import (
    Leased,
    claim_stages,
    end_task,
    fail_open_tasks,
    get_task,
    lease_is_live,
    lock_model,
    models_ended,
    renew_lease,
    take_lease,
    unfinished_stages,
)
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.pipeline.contract import Scope, Stage, get_stage, ready, stages, waiting_on
from badnet_prune.worker.dispatch import send_recorded
from badnet_prune.worker.runtime import Runtime

LOG = logging.getLogger(__name__)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (DatabaseUnavailable, OperationalError, ConnectionError)
# A running task's lease lasts this long and is renewed every third of it: a worker that died
# mid-task (machine gone) releases its tasks this long after its last renewal; a killed pool
# child on the same machine is recognised at once (its process id no longer exists).
LEASE_S = 15.0
# A task claimed for sending this long ago and still without a message id was never sent.
UNSENT_AFTER = timedelta(seconds=5)


@dataclass(frozen=True)
class TaskIds:
    """Which task a delivery is for: ids only, everything else is read from the database."""

    task_id: int
    sweep_id: int
    model_id: int | None


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery of a task: ran (and how it ended), or why it did not run."""

    ran: bool
    detail: str
    retry_in_s: float | None = None  # another holder's live lease: look again after this long


def run_planned_task(runtime: Runtime, task_id: object, stage_name: str | None = None) -> Outcome:
    """Run task `task_id` if its row says it may run; stage_name is what the message claimed to be."""
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        return refused(f"task id {task_id!r} is not an integer")
    with session_scope(runtime.engine) as session:
        task = get_task(session, task_id)
        if task is None:
            return refused(f"no task {task_id}")
        try:
            stage = get_stage(task.stage)
        except LookupError as error:
            return refused(f"task {task_id}: {error}")
        if stage_name is not None and stage_name != stage.name:
            return refused(f"task {task_id} is a {stage.name} task, not {stage_name}")
        context = TaskIds(task_id=task.id, sweep_id=task.sweep_id, model_id=task.model_id)
        reason = _why_not_startable(session, task, stage)
        done, failed = task.state == "done", task.state == "failed"
        if reason is None:
            token = take_row_lease(session, runtime, task, f"task {task_id}")
            if isinstance(token, Outcome):
                return token
            raw_arguments = dict(task.arguments)
            sweep = session.get(Sweep, task.sweep_id)
            config = dict(sweep.config) if sweep is not None else {}
    if reason is not None:
        if done and not runtime.dispatcher.runs_here:
            # A copy of a done task: its first run may have died after claiming what follows and before
            # sending it. Send what it claimed and nobody sent (usually nothing: then nothing changes).
            release_successors(runtime, stage, context)
        if failed and runtime.dispatcher.runs_here:
            # The in-process runner's own message for a task its model's failure closed: expected, and the
            # model's failure is said once by the watcher, so this is not said again.
            LOG.debug("message not run: task %s: %s", task_id, reason)
            return Outcome(False, f"task {task_id}: {reason}")
        return refused(f"task {task_id}: {reason}")
    try:
        job = stage.job(task_id, context.sweep_id, context.model_id, raw_arguments, config)
        with LeaseHeartbeat(runtime, task_id, token):
            stage.run(runtime, job)
    except TRANSIENT_ERRORS:
        end_quietly(runtime, task_id, token, "retrying", "database or broker unavailable; retrying")
        raise
    except Exception as error:  # a model's bad input, or a failure of its own: the other models go on
        reason = str(error) if isinstance(error, BadInputError) else f"{type(error).__name__}: {error}"
        reason = reason.strip().splitlines()[0] if reason.strip() else type(error).__name__
        _fail(runtime, context, token, reason)
        return Outcome(True, f"failed: {reason}")
    with session_scope(runtime.engine) as session:
        if stage.scope is Scope.MODEL and context.model_id is not None:
            lock_model(session, context.model_id)  # model before task, as _fail takes them: no deadlock
        released = _released(session, stage, context) if end_task(session, task_id, token, "done") else None
    if released is not None:
        _send_released(runtime, context, *released)
    return Outcome(True, "done")


def take_row_lease(session: Session, runtime: Runtime, row: Task | ZooBuild, label: str) -> str | Outcome:
    """Take a startable row's lease for this process: its token; or, where another live holder runs it or
    another copy took it first, the Outcome that says so and when to look again."""
    if lease_is_live(row) and not _holder_is_dead(row.lease_token):
        remaining = (row.lease_expires_at - utcnow()).total_seconds() if row.lease_expires_at else 0.0
        LOG.warning("%s runs elsewhere (%s): this copy looks again later", label, row.worker)
        return Outcome(False, f"{label} runs elsewhere ({row.worker})", max(1.0, remaining))
    dead = row.lease_token if row.state == "running" and _holder_is_dead(row.lease_token) else None
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    if not take_lease(session, row.id, token, runtime.hostname, LEASE_S, dead_token=dead, table=type(row)):
        return Outcome(False, f"{label} was started by another worker", LEASE_S)
    return token


def _why_not_startable(session: Session, task: Task, stage: Stage) -> str | None:
    if task.state == "done":
        return "already done"
    if task.state == "failed":
        return f"failed ({task.error})"
    unfinished = unfinished_stages(session, task.sweep_id, task.model_id, stage.after)
    if not ready(stage, unfinished):
        waited = next(name for name in stage.after if name in unfinished)
        return f"waits for {waited}, which is not done"
    if stage.scope is Scope.SWEEP and not models_ended(session, task.sweep_id):
        return "waits for every model of the sweep to end"
    return None


def refused(message: str) -> Outcome:
    LOG.warning("message not run: %s", message)
    return Outcome(False, message)


def _holder_is_dead(token: str | None) -> bool:
    """A lease taken on this machine by a process that no longer exists (a killed pool child)."""
    if not token:
        return False
    host, _, rest = token.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeaseHeartbeat:
    """Renews a leased row's lease every third of its length while the job runs (on a daemon thread). For a
    task it writes the progress its job last reported along with it: progress costs no transaction of its own."""

    def __init__(self, runtime: Runtime, task_id: int, token: str, table: Leased = Task) -> None:
        self._runtime, self._task_id, self._token, self._table = runtime, task_id, token, table
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{table.__tablename__}-{task_id}", daemon=True)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._table is Task:
            self._runtime.progress.pop(self._task_id, None)

    def _beat(self) -> None:
        while not self._stop.wait(LEASE_S / 3):
            try:
                progress = self._runtime.progress.get(self._task_id) if self._table is Task else None
                with session_scope(self._runtime.engine) as session:
                    if not renew_lease(session, self._task_id, self._token, LEASE_S, progress, table=self._table):
                        LOG.warning("%s %s: lease taken over by another worker", self._table.__tablename__,
                                    self._task_id)
                        return
            except TRANSIENT_ERRORS:
                LOG.warning("%s %s: could not renew its lease (database unavailable)", self._table.__tablename__,
                            self._task_id)


def end_quietly(runtime: Runtime, task_id: int, token: str, state: str, error: str, table: Leased = Task) -> None:
    try:
        with session_scope(runtime.engine) as session:
            end_task(session, task_id, token, state, error, table=table)
    except TRANSIENT_ERRORS:
        pass  # the database itself is what failed; the retry will record the outcome


def _fail(runtime: Runtime, context: TaskIds, token: str, reason: str) -> None:
    with session_scope(runtime.engine) as session:
        if context.model_id is not None:
            # the model's row first, then its tasks' (fail_open_tasks): the order a task's end takes them
            lock_model(session, context.model_id)
        end_task(session, context.task_id, token, "failed", reason)
        if context.model_id is not None:
            set_model_status(session, context.model_id, "failed", error=reason)
            fail_open_tasks(session, context.model_id, f"not run: model failed ({reason})")
    if context.model_id is not None:
        release_sweep_stages(runtime, context.sweep_id)


def release_successors(runtime: Runtime, stage: Stage, context: TaskIds) -> None:
    """Send every stage that waits for `stage` and is now free to run; close the model when all is done."""
    with session_scope(runtime.engine) as session:
        released = _released(session, stage, context)
    _send_released(runtime, context, *released)


def _released(session: Session, stage: Stage, context: TaskIds) -> tuple[list[tuple[Stage, int]], bool]:
    """In the caller's transaction, once `stage`'s task is done: claim the tasks of every stage waiting for it
    whose predecessors are all done, and close the model if all its tasks are; (claimed, model done).

    The model's row is locked first: the ends of two of its tasks take turns here, so the later one sees
    the earlier done (under READ COMMITTED neither would see the other's uncommitted end)."""
    if stage.scope is Scope.SWEEP or context.model_id is None:
        return [], False
    lock_model(session, context.model_id)
    unfinished = unfinished_stages(session, context.sweep_id, context.model_id,
                                   [model_stage.name for model_stage in stages(Scope.MODEL)])
    released = [successor.name for successor in waiting_on(stage.name) if ready(successor, unfinished)]
    claimed = claim_stages(session, context.sweep_id, context.model_id, released, UNSENT_AFTER)
    if not unfinished:
        set_model_status(session, context.model_id, "done")
    return [(get_stage(name), task_id) for name, task_id in claimed], not unfinished


def _send_released(runtime: Runtime, context: TaskIds, to_send: list[tuple[Stage, int]], model_done: bool) -> None:
    send_recorded(runtime.engine, runtime.dispatcher, to_send)
    if model_done:
        release_sweep_stages(runtime, context.sweep_id)


def release_sweep_stages(runtime: Runtime, sweep_id: int) -> None:
    """Once every model has ended, claim and send the sweep's own stages (finish)."""
    with session_scope(runtime.engine) as session:
        if not models_ended(session, sweep_id):
            return
        claimed = claim_stages(session, sweep_id, None, [stage.name for stage in stages(Scope.SWEEP)], UNSENT_AFTER)
    send_recorded(runtime.engine, runtime.dispatcher, [(get_stage(name), task_id) for name, task_id in claimed])

