"""The embedded default: the sweep's Celery tasks run in this process, in the order they are sent.

The same task functions a worker runs are called here directly; only the transport differs
(an in-process queue instead of Redis).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from badnet_prune.settings import Settings
from worker.dispatch import LocalQueue
from worker.runtime import install_runtime


def import_task_code() -> None:
    """Import the tasks and TensorFlow now, so a caller can overlap that with other waiting."""
    import worker.jobs
    import worker.tasks  # noqa: F401


def run_locally(settings: Settings, engine: Engine, queue: LocalQueue, on_task_done: Callable[[], None] | None = None):
    """Drain the queue (tasks send their successors into it) until no work is left."""
    from worker import tasks

    by_name = {task.name: task for task in (tasks.rank, tasks.prune_range, tasks.threshold, tasks.finish)}
    install_runtime(settings, queue, engine=engine)
    while queue.pending:
        name, arguments = queue.pending.popleft()
        by_name[name](**arguments)
        if on_task_done is not None:
            on_task_done()
