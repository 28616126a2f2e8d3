"""`badnet-prune worker`: a real Celery worker with the project's settings."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from badnet_prune.numerics.errors import BadInputError
from badnet_prune.orchestrator.options import DbOption, WorkerBrokerOption, load_settings


class LogLevel(StrEnum):
    """Celery's log levels, as choices."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


def worker(
    broker: WorkerBrokerOption = None,
    db: DbOption = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Pool processes. On a GPU machine run one "
                           "worker per GPU (CUDA_VISIBLE_DEVICES) with concurrency 1.")] = 1,
    queues: Annotated[str, typer.Option("--queues", help="Comma-separated queues to consume.")] = "badnet-prune",
    loglevel: Annotated[LogLevel, typer.Option("--loglevel", help="Celery's log level. Example: --loglevel "
                                               "WARNING")] = LogLevel.INFO,
    hostname: Annotated[str | None, typer.Option("--hostname", help="Worker node name (default: Celery's).")] = None,
) -> None:
    """Consume tasks from the broker and write results to the database.

    The database schema is upgraded first; TensorFlow loads only in the pool's child processes. A broker that
    does not answer within BADNET_PRUNE_BROKER_WAIT seconds (default 60) ends the worker with one line.

    Example: badnet-prune worker --broker redis://127.0.0.1:6379/0 --db postgresql://postgres@127.0.0.1/badnet
    """
    settings = load_settings(db=db, broker=broker)
    if not settings.broker_url:
        raise BadInputError("--broker", "a worker needs a broker: pass --broker or set BADNET_PRUNE_BROKER")

    from badnet_prune.db.session import prepare_database
    from badnet_prune.files.artifact_files import remove_stale_temporaries
    from badnet_prune.orchestrator.submit import check_broker
    from badnet_prune.worker.celery_app import serve

    check_broker(settings, settings.broker_wait_s, then="; BADNET_PRUNE_BROKER_WAIT sets how long a worker waits")
    prepare_database(settings.db_url).dispose()
    if settings.artifact_dir.is_dir():  # what killed workers of this machine left half-written
        remove_stale_temporaries(settings.artifact_dir, recursive=True)
    argv = ["worker", f"--concurrency={concurrency}", f"--queues={queues}", f"--loglevel={loglevel.value}",
            "--pool=prefork", "--without-gossip", "--without-mingle"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    serve(settings, argv)
