"""The state of a worker process: settings, database engine, dispatcher and in-memory caches.

Made lazily in the process that runs tasks (a Celery pool child, or the CLI on the embedded
default), never in a parent that forks: TensorFlow and database connections do not survive fork.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from badnet_prune.db.session import make_engine
from badnet_prune.settings import Settings
from badnet_prune.worker.dispatch import Dispatcher

if TYPE_CHECKING:
    from badnet_prune.worker.loaded import WorkerMemory


@dataclass
class Runtime:
    """The worker's side of badnet_prune.pipeline.runtime.Runtime, plus how it sends what a task releases."""

    settings: Settings
    engine: Engine
    dispatcher: Dispatcher
    memory: WorkerMemory
    hostname: str = field(default_factory=socket.gethostname)
    progress: dict[int, int] = field(default_factory=dict)  # task id -> units done, as its job last said

    def report_progress(self, task_id: int, done: int) -> None:
        """Kept here; the task's lease heartbeat writes it with its next renewal (worker.flow)."""
        self.progress[task_id] = int(done)


_current: Runtime | None = None


def install_runtime(settings: Settings, dispatcher: Dispatcher, engine: Engine | None = None) -> Runtime:
    from badnet_prune.worker.loaded import WorkerMemory

    global _current
    _current = Runtime(
        settings=settings,
        engine=engine if engine is not None else make_engine(
            settings.db_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow),
        dispatcher=dispatcher,
        memory=WorkerMemory(settings.cache_dir, cache_max_bytes=int(settings.cache_max_bytes), engine=settings.engine),
    )
    return _current


def current_runtime() -> Runtime:
    if _current is None:
        raise RuntimeError("no worker runtime in this process")
    return _current
