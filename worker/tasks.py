"""The Celery tasks: thin wrappers that take ids, run the job through worker.flow, and retry
only what is transient (a database or broker that is down), never bad input.

worker.jobs is imported inside each task: it pulls in TensorFlow, which must load in the pool
child that runs the task, never in the worker's parent process before it forks.
"""

from __future__ import annotations

from celery import shared_task

from worker.flow import TRANSIENT_ERRORS, finish_sweep, run_task
from worker.runtime import current_runtime

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


@shared_task(name="badnet_prune.rank", **TASK_OPTIONS)
def rank(self, task_id: int, model_id: int) -> None:
    from worker import jobs

    runtime = current_runtime()
    run_task(runtime, task_id, lambda: jobs.rank_model(runtime, model_id))


@shared_task(name="badnet_prune.prune_range", **TASK_OPTIONS)
def prune_range(self, task_id: int, model_id: int, start: int, stop: int) -> None:
    from worker import jobs

    runtime = current_runtime()
    run_task(runtime, task_id, lambda: jobs.prune_steps(runtime, model_id, start, stop))


@shared_task(name="badnet_prune.threshold", **TASK_OPTIONS)
def threshold(self, task_id: int, model_id: int, threshold: float) -> None:
    from worker import jobs

    runtime = current_runtime()
    run_task(runtime, task_id, lambda: jobs.evaluate_threshold(runtime, model_id, threshold))


@shared_task(name="badnet_prune.finish", **TASK_OPTIONS)
def finish(self, task_id: int, sweep_id: int) -> None:
    runtime = current_runtime()
    run_task(runtime, task_id, lambda: finish_sweep(runtime, sweep_id))
