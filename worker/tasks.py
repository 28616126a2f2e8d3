"""The Celery tasks: one per declared stage (pipeline.contract), each a thin wrapper around worker.flow, and
one that builds a zoo model (worker.zoo_build).

A message carries only the task id; the row says what to do. Transient errors (a database or
broker that is down) are retried, never bad input. A model that failed ends its task in
Celery's FAILURE state too, so Celery's log and Flower say what the database says. A copy of a
task that another worker still runs under a live lease (Redis hands an unacknowledged message
out again after the visibility timeout, even while its task still runs) never runs beside it:
it is looked at again later, and does nothing once the task is done. If the first worker dies,
its lease expires and the next look runs the task.
"""

from __future__ import annotations

from celery import Task, shared_task

from badnet_prune.pipeline.contract import Stage, load_stage_modules, stages
from badnet_prune.settings import Settings
from badnet_prune.worker.flow import TRANSIENT_ERRORS, Outcome, run_planned_task
from badnet_prune.worker.runtime import Runtime, current_runtime
from badnet_prune.worker.zoo_build import ZOO_TASK, run_zoo_build

TASK_OPTIONS = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 20,
}


class TaskFailed(Exception):
    """A task whose model (or zoo build) failed: recorded in the database, reported to Celery as a failure."""


def _finish(task: Task, runtime: Runtime, outcome: Outcome) -> str:
    """What one delivery came to, as Celery should record it."""
    if outcome.retry_in_s is not None:
        # Look again before the broker's visibility timeout would hand this copy out once more.
        countdown = min(outcome.retry_in_s, runtime.settings.visibility_timeout_s / 2)
        raise task.retry(countdown=countdown, max_retries=None)
    if outcome.ran and outcome.detail.startswith("failed"):
        raise TaskFailed(outcome.detail)
    return outcome.detail


def _register(stage: Stage) -> None:
    def run(self: Task, task_id: object) -> str:
        runtime = current_runtime()
        return _finish(self, runtime, run_planned_task(runtime, task_id, stage.name))

    run.__name__ = run.__qualname__ = stage.name
    run.__doc__ = stage.description
    shared_task(name=stage.celery_name, **TASK_OPTIONS)(run)


def register_stage_tasks() -> None:
    """A Celery task for every declared stage (built-in and those of the stage_modules setting)."""
    load_stage_modules(Settings.from_env().stage_modules)
    for stage in stages():
        _register(stage)


@shared_task(name=ZOO_TASK, **TASK_OPTIONS)
def zoo_model(self: Task, build_id: object) -> str:
    """Build one model of a zoo (worker.zoo_build)."""
    runtime = current_runtime()
    return _finish(self, runtime, run_zoo_build(runtime, build_id))


register_stage_tasks()
