"""The commands the containers run, run here: migrate, a worker and an orchestrator sweep.

Each command is read from the resolved compose config (service `command:`, and `entrypoint:` or the
image's ENTRYPOINT), with the local `badnet-prune` in place of the entrypoint (gpu-slot, the worker's
GPU wrapper, is tested in test_gpu_slot.py) and the container environment pointed at the local
Redis and PostgreSQL, on a small synthetic sweep in a database of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

REDIS = ("127.0.0.1", 6379)
POSTGRES = ("127.0.0.1", 5432)
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Its own Redis database, so queues of other tests cannot hand this worker their tasks.
BROKER_URL = "redis://127.0.0.1:6379/11"
BADNET_PRUNE = Path(sys.executable).with_name("badnet-prune")


def reachable(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True


SERVICES_UP = reachable(REDIS) and reachable(POSTGRES)


@pytest.fixture
def database(unavailable):
    """A fresh PostgreSQL database on the local server, dropped afterwards; yields its URL."""
    if not SERVICES_UP:
        unavailable("Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 are needed")
    import psycopg

    name = f"badnet_deploy_{uuid.uuid4().hex[:12]}"
    admin = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def local_command(service: dict, image_entrypoint: list[str], *arguments: str) -> list[str]:
    """The service's command line with this checkout's badnet-prune as its entrypoint."""
    entrypoint = service.get("entrypoint") or image_entrypoint
    assert entrypoint[-1] == "badnet-prune", f"{entrypoint} does not run badnet-prune"
    assert BADNET_PRUNE.exists(), f"{BADNET_PRUNE} is missing: pip install -e . in this environment"
    return [str(BADNET_PRUNE), *(arguments or map(str, service.get("command") or []))]


def local_environment(service: dict, database: str, tmp_path: Path) -> dict[str, str]:
    """The container's badnet-prune settings, those that name a place pointed at its local counterpart."""
    container = {key: str(value) for key, value in service["environment"].items() if key.startswith("BADNET_PRUNE_")}
    local = {
        "BADNET_PRUNE_DB": database,
        "BADNET_PRUNE_BROKER": BROKER_URL,
        "BADNET_PRUNE_ARTIFACTS": str(tmp_path / "artifacts"),
        "BADNET_PRUNE_CACHE": str(tmp_path / "cache"),
    }
    assert local.keys() <= container.keys(), "the container lacks a setting this test points elsewhere"
    return os.environ | container | local


@pytest.mark.skipif(
    not SERVICES_UP and os.environ.get("CI") != "true",
    reason="Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 are needed",
)
def test_container_commands(compose_config, image_entrypoint, database, tmp_path):
    from tests.helpers import synthetic_sweep

    services = compose_config["services"]
    sweep_file = synthetic_sweep(tmp_path / "sweep")

    migrate = services["migrate"]
    subprocess.run(
        local_command(migrate, image_entrypoint),
        env=local_environment(migrate, database, tmp_path),
        check=True,
        timeout=300,
    )

    worker_service = services["worker"]
    worker = subprocess.Popen(
        local_command(worker_service, image_entrypoint), env=local_environment(worker_service, database, tmp_path)
    )
    try:
        # The orchestrator has no command of its own: it runs what docs/deployment.md gives it.
        orchestrator = services["orchestrator"]
        subprocess.run(
            local_command(orchestrator, image_entrypoint, "sweep", str(sweep_file), "--wait"),
            env=local_environment(orchestrator, database, tmp_path),
            check=True,
            timeout=600,
        )
        assert worker.poll() is None, "the worker died during the sweep"
    finally:
        worker.send_signal(signal.SIGTERM)  # what `docker compose stop` sends: Celery's warm shutdown
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
