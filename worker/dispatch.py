"""Dispatchers: how a claimed task reaches a worker. The orchestrator talks to workers only through these.

CeleryDispatcher sends a message (the stage's task name and the task id, nothing else) to the
broker; workers elsewhere run it. LocalDispatcher is the embedded default's runner: the same
messages go to an in-process queue, drained here by the same code a worker runs. Both can say
which messages they still hold, so that `status` and `sweep resume` can tell a queued task
from a lost one.
"""

from __future__ import annotations

import json
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from badnet_prune.numerics.errors import first_line

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy import Engine

    from badnet_prune.pipeline.contract import Stage
    from badnet_prune.settings import Settings



def _broker_errors() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    return (OperationalError, RedisError, OSError)


# What a broker that stops answering raises to a sender or a ping (kombu's wrapper, Redis's own, sockets').
BROKER_ERRORS = _broker_errors()


class Dispatcher(Protocol):
    runs_here: bool  # True: what is sent runs in this process (run() does it), so nothing is ever in flight
    last_error: str | None  # why held_message_ids() could not ask the transport, the last time it could not

    def send(self, stage: Stage, task_id: int) -> str | None:
        """Send one claimed task; the message id, where the transport has one."""
        ...

    def held_message_ids(self) -> set[str] | None:
        """Ids of the messages the transport still holds (waiting or delivered, not acknowledged); None if unknown."""
        ...

    def run(self) -> None:
        """Run what was sent, where that happens in this process (the embedded default); else return at once."""
        ...

    def workers_alive(self) -> bool | None:
        """Whether any worker consumes what is sent (None: cannot tell)."""
        ...


class CeleryDispatcher:
    """Messages through the Celery broker: the task id as the only argument."""

    runs_here = False

    def __init__(self, app: Any) -> None:
        self._app = app
        self.last_error: str | None = None  # why the broker could not be asked, the last time

    def send(self, stage: Stage, task_id: int) -> str | None:
        return self._app.send_task(stage.celery_name, kwargs={"task_id": task_id}).id

    def send_named(self, name: str, **ids: int) -> str:
        """Send a task that is not a stage's (a zoo build) by its Celery name, with its row id; the message id."""
        return self._app.send_task(name, kwargs=ids).id

    def held_message_ids(self) -> set[str] | None:
        """On Redis: the queue's waiting messages and the ones delivered but not yet acknowledged."""
        from badnet_prune.worker.celery_app import QUEUE

        try:
            with self._app.connection_for_read() as connection:
                channel = connection.default_channel
                client = getattr(channel, "client", None)
                if client is None:
                    return None
                raw = [*client.lrange(QUEUE, 0, -1), *client.hvals(channel.unacked_key)]
        except Exception as error:  # a broker that cannot be asked: say unknown, never guess "lost"
            self.last_error = first_line(error)
            return None
        ids = set()
        for payload in raw:
            try:
                message = json.loads(payload)
                if isinstance(message, list):  # unacked entries are [message, exchange, routing key]
                    message = message[0]
                ids.add(message["headers"]["id"])
            except (ValueError, KeyError, TypeError, IndexError):
                continue
        return ids

    def run(self) -> None:
        return None

    def workers_alive(self) -> bool | None:
        try:
            return bool(self._app.control.ping(timeout=1.0))
        except Exception:  # the broker itself is unreachable: that is what `status` reports
            return None


class LocalDispatcher:
    """The embedded default: a FIFO of (stage, task id) run in this process; released successors join its end."""

    runs_here = True
    last_error = None

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self.pending: deque[tuple[str, int]] = deque()

    def send(self, stage: Stage, task_id: int) -> str | None:
        self.pending.append((stage.name, task_id))
        return None

    def held_message_ids(self) -> set[str] | None:
        return set()  # nothing outlives this process: a queued task no process runs is lost

    def workers_alive(self) -> bool | None:
        return True  # this process is the worker

    def run(self) -> None:
        from badnet_prune.worker.flow import run_planned_task
        from badnet_prune.worker.runtime import install_runtime

        runtime = install_runtime(self._settings, self, engine=self._engine)
        while self.pending:
            stage_name, task_id = self.pending.popleft()
            run_planned_task(runtime, task_id, stage_name)


def send_recorded(engine: Engine, dispatcher: Dispatcher, tasks: Sequence[tuple[Stage, int]]) -> None:
    """Send tasks already claimed (queued), then record their messages' ids in one transaction, also those
    sent before a send failed (a task without its id may be sent again, which is harmless)."""
    from badnet_prune.db.session import session_scope
    from badnet_prune.db.tasks import record_messages

    sent: list[tuple[int, str]] = []
    try:
        for stage, task_id in tasks:
            message_id = dispatcher.send(stage, task_id)
            if message_id is not None:
                sent.append((task_id, message_id))
    finally:
        if sent:
            with session_scope(engine) as session:
                record_messages(session, sent)


def broker_problem(broker_url: str, wait_s: float) -> str | None:
    """Why the broker does not answer within wait_s seconds (connection retried once a second), or None.

    Celery and kombu retry a dead broker for a long time (a worker for ever, a client for seconds per
    call), saying nothing; this is asked first, so that a command can say so in one line and stop.
    """
    from kombu import Connection

    connection = Connection(broker_url, connect_timeout=min(wait_s, 5.0))
    try:
        connection.ensure_connection(max_retries=None, interval_start=0, interval_step=1, interval_max=1,
                                     timeout=wait_s)
    except Exception as error:  # kombu's OperationalError, or the transport's own: all mean "no answer"
        return first_line(error)
    finally:
        connection.release()
    return None


def make_dispatcher(settings: Settings, engine: Engine) -> Dispatcher:
    """Celery when a broker is set, else the in-process runner."""
    if settings.broker_url:
        from badnet_prune.worker.celery_app import make_celery

        return CeleryDispatcher(make_celery(settings))
    return LocalDispatcher(settings, engine)


def import_task_code() -> None:
    """Import what the jobs compute with (TensorFlow) now, so that a caller can overlap that with other waiting."""
    import badnet_prune.pipeline.outputs  # noqa: F401
