"""Settings on real services: no password in Celery's configuration, migrate creates a missing database."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import run_cli
from tests.integration.conftest import CLI, POSTGRES, POSTGRES_ADMIN, Cluster, reachable, skip_or_fail

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-db-pw"  # trust auth ignores it; it only has to stay out of everything shown
CELERY = [str(Path(sys.executable).with_name("celery"))]


def test_inspect_conf_and_worker_log_show_no_password(cluster: Cluster) -> None:
    cluster.database_url = cluster.database_url.replace("postgres@", f"postgres:{PASSWORD}@")
    (worker,) = cluster.start_workers(1)
    done = subprocess.run([*CELERY, "-b", cluster.broker_url, "inspect", "conf", "--json", "--timeout", "20",
                           "-d", worker.name], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    conf = json.loads(done.stdout)[worker.name]
    assert conf["task_acks_late"] is True  # the worker's own configuration came back
    assert PASSWORD not in done.stdout and "badnet_settings" not in done.stdout
    log = worker.log.read_text()
    assert PASSWORD not in log and "no settings for this worker" not in log, log[-2000:]


def test_worker_refuses_a_wrong_setting_in_one_line(cluster: Cluster) -> None:
    env = cluster.env | {"BADNET_PRUNE_VISIBILITY_TIMEOUT": "5m"}
    done = subprocess.run([*CLI, "worker"], env=env, capture_output=True, text=True, timeout=120, cwd=cluster.folder)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "BADNET_PRUNE_VISIBILITY_TIMEOUT" in lines[0], done.stderr


@pytest.fixture
def missing_database() -> str:
    if not reachable(POSTGRES):
        skip_or_fail(f"PostgreSQL is not reachable at {POSTGRES[0]}:{POSTGRES[1]}")
    import psycopg

    name = f"bnp_it_missing_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrate_creates_a_missing_postgres_database(missing_database: str, tmp_path: Path) -> None:
    url = f"postgres://postgres:{PASSWORD}@{POSTGRES[0]}:{POSTGRES[1]}/{missing_database}"  # the short spelling
    run = lambda *args: run_cli(*args, "--db", url, cwd=tmp_path)  # noqa: E731
    reading = run("steps", "1")
    assert reading.returncode != 0 and len(reading.stderr.strip().splitlines()) == 1, reading.stderr
    assert missing_database in reading.stderr and PASSWORD not in reading.stderr
    assert "`badnet-prune migrate` creates it" in reading.stderr
    created = run("migrate")
    assert created.returncode == 0, created.stderr
    assert f"created database postgresql+psycopg://postgres:***@{POSTGRES[0]}:{POSTGRES[1]}/{missing_database}" in (
        created.stdout)
    assert PASSWORD not in created.stdout + created.stderr
    again = run("migrate")
    assert again.returncode == 0 and "created" not in again.stdout, again.stderr
    assert run("steps", "1").stderr.strip() != reading.stderr.strip()  # the database exists now
