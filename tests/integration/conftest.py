"""Real services for the distributed tests: Redis, PostgreSQL and real `badnet-prune worker` processes.

Each test gets its own Redis database number (flushed before and after) and its own PostgreSQL
database (created, then dropped); the project's migrations run on first use. A service that cannot
be reached skips the tests locally and fails them under CI=true, where CI must provide it.
Worker processes run in their own session, so that a test can kill a whole worker (main process
and pool) with killpg, and teardown always kills what is left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.helpers import CLAIMS

REPO = Path(__file__).resolve().parents[2]
CLI = [str(Path(sys.executable).with_name("badnet-prune"))]
REDIS = ("127.0.0.1", 6379)
POSTGRES = ("127.0.0.1", 5432)
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_DBS = (12, 13, 14, 15, *range(1, 11))  # 11 is tests/deploy's; one is claimed per test process
VISIBILITY_TIMEOUT_S = 20  # a dead worker's task comes back after this long (kill tests)
WORKER_READY_S = 60


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs real Redis, PostgreSQL and worker processes")


def skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: CI must provide it)")
    pytest.skip(reason)


def reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=2):
            return True
    except OSError:
        return False


def redis_cli(*args: str, db: int | None = None) -> str:
    command = ["redis-cli", "-h", REDIS[0], "-p", str(REDIS[1])]
    if db is not None:
        command += ["-n", str(db)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.fixture
def broker_url(redis_db: int) -> Iterator[str]:
    db = redis_db
    redis_cli("flushdb", db=db)
    yield f"redis://{REDIS[0]}:{REDIS[1]}/{db}"
    redis_cli("flushdb", db=db)


def redis_databases_in_use() -> set[int]:
    """Database numbers some client of the Redis server is connected to (a test run's workers, or the orphans
    of a run that was killed before its teardown)."""
    return {int(field[3:]) for line in redis_cli("client", "list").splitlines() for field in line.split()
            if field.startswith("db=")}


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database number no other test process on this machine uses while this one runs.

    Workers consume every message of their broker's database: two test runs sharing one would run
    each other's task ids against their own PostgreSQL databases. A lock file per number decides among
    test processes (pytest-xdist's included); a number with clients connected is passed over.
    """
    if not reachable(REDIS):
        skip_or_fail(f"Redis is not reachable at {REDIS[0]}:{REDIS[1]}")
    CLAIMS.mkdir(mode=0o1777, exist_ok=True)
    for db in REDIS_DBS:
        handle = open(CLAIMS / f"redis-{db}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        if db in redis_databases_in_use():
            handle.close()
            continue
        try:
            yield db
        finally:
            handle.close()
        return
    skip_or_fail(f"every Redis database of {REDIS_DBS} is taken by another test run on this machine")


@pytest.fixture
def database_url() -> Iterator[str]:
    if not reachable(POSTGRES):
        skip_or_fail(f"PostgreSQL is not reachable at {POSTGRES[0]}:{POSTGRES[1]}")
    import psycopg

    name = f"bnp_it_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        skip_or_fail(f"PostgreSQL at {POSTGRES[0]}:{POSTGRES[1]} refused to create a database: {error}")
    yield f"postgresql+psycopg://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{name}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log: Path

    def pool_children(self) -> list[int]:
        """Pids of the worker's pool processes (children of its main process)."""
        found = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def kill_all(self) -> None:
        """SIGKILL the main process and its pool at once, as when the machine dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@dataclass
class Cluster:
    """Settings shared by the CLI and the workers of one test, and the workers it started."""

    broker_url: str
    database_url: str
    folder: Path
    workers: list[Worker] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # set before start_workers and submit

    @property
    def env(self) -> dict[str, str]:
        return os.environ | {
            "BADNET_PRUNE_BROKER": self.broker_url,
            "BADNET_PRUNE_DB": self.database_url,
            "BADNET_PRUNE_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
            "BADNET_PRUNE_CACHE": str(self.folder / "cache"),
            "BADNET_PRUNE_ARTIFACTS": str(self.folder / "artifacts"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **self.extra_env,
        }

    def start_workers(self, count: int) -> list[Worker]:
        started = []
        for _ in range(count):
            name = f"w{len(self.workers) + 1}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
            log = self.folder / f"{name.split('@')[0]}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [*CLI, "worker", "--concurrency", "1", "--hostname", name],
                    env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.folder,
                )
            worker = Worker(name, process, log)
            self.workers.append(worker)
            started.append(worker)
        for worker in started:
            self.wait_ready(worker)
        return started

    def wait_ready(self, worker: Worker) -> None:
        deadline = time.monotonic() + WORKER_READY_S
        while b" ready." not in worker.log.read_bytes():
            if worker.process.poll() is not None:
                raise AssertionError(f"worker {worker.name} exited:\n{worker.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {worker.name} not ready in {WORKER_READY_S}s")
            time.sleep(0.2)

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.kill_all()

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
        """Run `badnet-prune ARGS` (cli_process); its stdout, or an assertion error with its output."""
        return self.cli_process(*args, env=env, timeout=timeout).stdout

    def cli_process(self, *args: str, env: dict[str, str] | None = None,
                    timeout: float = 300) -> subprocess.CompletedProcess:
        """Run `badnet-prune ARGS` as the console script runs it, in this process (run_cli), which must succeed;
        its stdout and stderr. The workers are processes of their own (start_workers)."""
        from tests.helpers import run_cli

        done = run_cli(*args, env=env or self.env, cwd=self.folder, timeout=timeout)
        assert done.returncode == 0, f"badnet-prune {' '.join(args)} -> {done.returncode}\n{done.stderr[-3000:]}"
        return done

    def cli_json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self.cli(*args, **kwargs))

    def submit(self, sweep_file: Path, *, wait: bool = False, timeout: float = 300) -> int:
        out = self.cli("sweep", str(sweep_file), *(["--wait"] if wait else []), timeout=timeout)
        return int(out.split()[0])

    def status(self, sweep_id: int) -> dict:
        return self.cli_json("status", str(sweep_id), "--json")

    def steps(self, sweep_id: int) -> list[dict]:
        return self.cli_json("steps", str(sweep_id), "--format", "json")

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Rows of a query straight through psycopg (the CLI's start-up is seconds; polls need less)."""
        import psycopg
        from psycopg.rows import dict_row

        url = self.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as connection:
            return list(connection.execute(sql).fetchall())

    def ended(self, sweep_id: int) -> bool:
        """Whether the sweep and all its models have ended (done or failed)."""
        (sweep,) = self.query(f"SELECT status FROM sweeps WHERE id = {int(sweep_id)}")
        models = self.query(f"SELECT status FROM models WHERE sweep_id = {int(sweep_id)}")
        return sweep["status"] in ("done", "failed") and all(m["status"] in ("done", "failed") for m in models)

    def wait_done(self, sweep_id: int, timeout: float) -> dict:
        """Poll the sweep's status until it and all its models have ended; the last status."""
        deadline = time.monotonic() + timeout
        while True:
            if self.ended(sweep_id):
                return self.status(sweep_id)
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.name}\n{w.log.read_text()[-2000:]}" for w in self.workers)
                raise AssertionError(f"sweep {sweep_id} not done in {timeout}s: {self.status(sweep_id)}\n{logs}")
            time.sleep(0.5)


@pytest.fixture
def cluster(broker_url: str, database_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Settings for a fresh broker database and PostgreSQL database; start workers with start_workers(n)."""
    folder = tmp_path / "cluster"
    folder.mkdir()
    running = Cluster(broker_url, database_url, folder)
    try:
        yield running
    finally:
        running.stop_all()


def psql_rows(database_url: str, sql: str, *params: Any) -> list[tuple]:
    """Rows of one query straight through psycopg: fast enough to poll a task's state every 50 ms."""
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())


def wait_running(cluster: Cluster, stage: str, after_s: float, timeout: float = 240) -> tuple[int, str]:
    """(task id, worker) of a `stage` task that has been running for at least `after_s` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = psql_rows(cluster.database_url, "SELECT id, worker FROM tasks WHERE stage = %s AND state = 'running' "
                         "AND started_at < now() - make_interval(secs => %s) ORDER BY id LIMIT 1", stage, after_s)
        if rows:
            return rows[0]
        time.sleep(0.05)
    raise AssertionError(f"no {stage} task was seen running for {after_s} s")


@pytest.fixture(scope="session")
def slow_badnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random DeepID with 2,000 validation images per set: a 61-step prune range lasts a few seconds."""
    from tests.helpers import random_badnet

    return random_badnet(tmp_path_factory.mktemp("slow-badnet"), seed=7, valid=2000, test=200)
