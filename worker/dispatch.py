"""Sending tasks: to Celery through the broker, or to an in-process queue on the embedded default.

Both send the same task names with the same id-only arguments; only the transport differs.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

TASK_NAMES = {
    "rank": "badnet_prune.rank",
    "prune_range": "badnet_prune.prune_range",
    "threshold": "badnet_prune.threshold",
    "finish": "badnet_prune.finish",
}


class Dispatcher(Protocol):
    def send(self, kind: str, **arguments: Any) -> str | None: ...


class CeleryDispatcher:
    def __init__(self, app: Any) -> None:
        self._app = app

    def send(self, kind: str, **arguments: Any) -> str | None:
        return self._app.send_task(TASK_NAMES[kind], kwargs=arguments).id


class LocalQueue:
    """A FIFO of (task name, arguments) drained by orchestrator.local_run in this process."""

    def __init__(self) -> None:
        self.pending: deque[tuple[str, dict[str, Any]]] = deque()

    def send(self, kind: str, **arguments: Any) -> str | None:
        self.pending.append((TASK_NAMES[kind], arguments))
        return None
