"""The Celery application, made from settings by a function (never at import time).

JSON only, late acknowledgement with reject-on-worker-lost, one message prefetched at a time,
and a Redis visibility timeout short enough that a dead worker's task is redelivered in minutes.

The project's Settings are not part of the Celery configuration: `celery inspect conf` and
Flower show that configuration to anyone who can reach the broker, and the settings hold the
database password. The worker command hands them to serve() instead, which keeps them in this
module for the pool children (forked from it) to read.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import celeryd_init, worker_process_init

from badnet_prune.settings import Settings

QUEUE = "badnet-prune"
WORKER_PROC_ALIVE_TIMEOUT_S = 120
UNACKED_RESTORE_INTERVAL_S = 5


def make_celery(settings: Settings) -> Celery:
    if not settings.broker_url:
        raise ValueError("no broker URL: set BADNET_PRUNE_BROKER or pass --broker")
    app = Celery("badnet_prune", broker=settings.broker_url, include=["badnet_prune.worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        # kombu scans for unacknowledged messages past their visibility timeout only every
        # interval x throttle seconds (10 x 10 by default): a dead worker's task would wait up to
        # 100 s beyond the timeout. Scan every few seconds instead (one small Redis query each).
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": UNACKED_RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # A pool child imports TensorFlow in worker_process_init (4-10 s on 2 cores): with billiard's
        # default of 4 s every replacement child (after one was killed) is itself killed before it is up.
        worker_proc_alive_timeout=WORKER_PROC_ALIVE_TIMEOUT_S,
    )
    return app


_worker_settings: Settings | None = None  # set by serve() in the worker's main process, inherited by the pool
_node_name: str | None = None  # the worker's node name (--hostname), set in the parent, inherited by the pool


def serve(settings: Settings, argv: list[str]) -> None:
    """Run a Celery worker (argv as for `celery worker`) whose pool children use these settings."""
    global _worker_settings
    _worker_settings = settings
    make_celery(settings).worker_main(argv)


@celeryd_init.connect
def _remember_node_name(sender: str | None = None, **_: object) -> None:
    global _node_name
    _node_name = sender


@worker_process_init.connect
def _install_runtime_in_child(**_: object) -> None:
    """Each pool child makes its own engine and caches after the fork; TensorFlow loads lazily there.

    Tasks record the worker's node name (w1@host), not the machine's, so two workers on one
    machine can be told apart in the tasks table.
    """
    from celery import current_app

    from badnet_prune.worker.dispatch import CeleryDispatcher
    from badnet_prune.worker.runtime import install_runtime

    if _worker_settings is None:
        raise RuntimeError("no settings for this worker: start it with `badnet-prune worker`")
    runtime = install_runtime(_worker_settings, CeleryDispatcher(current_app))
    if _node_name:
        runtime.hostname = _node_name
