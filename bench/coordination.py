"""The coordination layer at scale: registering and draining a sweep of about 10,000 tasks.

    .venv/bin/python bench/coordination.py [--tasks 10000] [--workers 2] [--redis-db 9]

One quick synthetic BadNet's files are registered under many model names (the sweep file allows a
path in several [[model]] tables), so that planning reads real model and data files, and real
`badnet-prune worker` processes drain the sweep with the model stages' jobs replaced by no-ops:
what is measured is everything around a job (messages, leases, ending a task, releasing and
sending what follows, closing models and the sweep), not the numerics (bench/sweeps.py and
bench/engine.py measure those). The sweep's own `finish` job runs for real. Each run uses a fresh
PostgreSQL database and a flushed private Redis database (claimed with the test suite's lock
files, so no test run shares it).

The workers start through this file (`--as-worker`), which installs the no-op jobs and, with
SQLAlchemy's events, counts statements, transactions and connection checkouts (each a pre-ping
round trip) and times each session of worker/flow.py by the function that opened it; `sweep
--wait` starts through it too (`--as-submitter`), which times each redraw of its watcher. Nothing
in the project reads these: they exist only in the bench's processes. Printed: registration
(`sweep --wait` start to its first progress line, after the first tasks were sent), drain (from
there to the sweep's end), tasks per second, the worker side's statements per task, where a
task's time in the pool child goes, and the CPU share of `sweep --wait` while it watches.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLI = str(Path(sys.executable).with_name("badnet-prune"))
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
STATS_ENV = "BENCH_COORDINATION_STATS"  # read only by --as-worker below (a BADNET_PRUNE_ name would be refused)
TASKS_PER_MODEL = 11  # rank, 7 prune ranges of 10 steps over 60 channels, 3 thresholds


def as_worker(argv: list[str]) -> None:
    """Run `badnet-prune ARGV` (a worker) with no-op model jobs, counting its SQL and timing its sessions."""
    import dataclasses
    import threading

    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    import badnet_prune.db.session as db_session
    import badnet_prune.pipeline.contract as contract
    import badnet_prune.worker.flow as flow
    from badnet_prune.worker.dispatch import CeleryDispatcher

    for stage in contract.stages(contract.Scope.MODEL):
        contract._registry[stage.name] = dataclasses.replace(stage, run=lambda runtime, task, arguments: None)

    stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    local = threading.local()
    folder = Path(os.environ[STATS_ENV])

    def label() -> str:
        return getattr(local, "label", "outside a session")

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(*_: object) -> None:
        stats[label()]["statements"] += 1

    @event.listens_for(Engine, "commit")
    def _commit(*_: object) -> None:
        stats[label()]["transactions"] += 1

    @event.listens_for(Pool, "checkout")
    def _checkout(*_: object) -> None:
        stats[label()]["checkouts"] += 1

    real_scope = flow.session_scope

    @contextlib.contextmanager
    def timed_scope(engine):
        caller = sys._getframe(2).f_code  # the flow function whose `with` opened this session
        name = f"session in {caller.co_name}" + (":end" if caller.co_name == "run_planned_task" and
                                                 getattr(local, "ran", False) else "")
        outer, local.label = getattr(local, "label", None), name
        started = time.perf_counter()
        try:
            with real_scope(engine) as session:
                yield session
        finally:
            stats[name]["seconds"] += time.perf_counter() - started
            stats[name]["count"] += 1
            local.label = outer

    real_run, real_send = flow.run_planned_task, CeleryDispatcher.send
    real_heartbeat_enter = flow.LeaseHeartbeat.__enter__

    def timed_run(runtime, task_id, stage_name=None):
        local.ran = False
        started = time.perf_counter()
        outcome = real_run(runtime, task_id, stage_name)
        stats["whole task in the pool child"]["seconds"] += time.perf_counter() - started
        stats["whole task in the pool child"]["count"] += 1
        if not outcome.ran:
            stats["deliveries not run"]["count"] += 1
        temporary = folder / f".{os.getpid()}.json"
        temporary.write_text(json.dumps(stats))
        temporary.replace(folder / f"{os.getpid()}.json")
        return outcome

    def timed_send(self, stage, task_id):
        started = time.perf_counter()
        try:
            return real_send(self, stage, task_id)
        finally:
            stats["send (Redis)"]["seconds"] += time.perf_counter() - started
            stats["send (Redis)"]["count"] += 1

    def heartbeat_enter(self):
        local.ran = True  # the job starts: the next session of run_planned_task ends the task
        return real_heartbeat_enter(self)

    flow.session_scope = db_session.session_scope = timed_scope  # flow's own, and those imported when called
    flow.run_planned_task = timed_run
    flow.LeaseHeartbeat.__enter__ = heartbeat_enter
    CeleryDispatcher.send = timed_send
    sys.argv = [CLI, *argv]
    from badnet_prune.orchestrator.cli import console_main

    console_main()


def as_submitter(argv: list[str]) -> None:
    """Run `badnet-prune ARGV` (sweep --wait) timing each redraw of its watcher: the share of the time its
    queries keep the database busy, beside the process's own CPU."""
    import badnet_prune.orchestrator.watch as watch

    real_refresh = watch._View.refresh
    spent = {"count": 0, "seconds": 0.0}
    out = Path(os.environ[STATS_ENV]) / "watcher.json"

    def timed_refresh(self, engine, force=False):
        started = time.perf_counter()
        try:
            return real_refresh(self, engine, force)
        finally:
            spent["count"] += 1
            spent["seconds"] += time.perf_counter() - started
            out.write_text(json.dumps(spent))

    watch._View.refresh = timed_refresh
    sys.argv = [CLI, *argv]
    from badnet_prune.orchestrator.cli import console_main

    console_main()


def claim_redis_db(first: int) -> tuple[int, object]:
    """A Redis database number no test run uses meanwhile (the test suite's lock files), and its lock."""
    for db in (first, *range(1, 16)):
        handle = open(Path(tempfile.gettempdir()) / f"badnet-prune-tests-redis-{db}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return db, handle
    raise SystemExit("every Redis database is taken by a test run")


def sweep_file(folder: Path, models: int) -> Path:
    from tests.helpers import cached_quick_badnet, model_entry, write_sweep_toml

    root = cached_quick_badnet(0)
    return write_sweep_toml(folder / "sweep.toml", [model_entry(f"m{index}", root) for index in range(models)])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(sweep: Path, models: int, workers: int, redis_db: int, folder: Path) -> dict:
    """One sweep on fresh services: its timings, the watcher's CPU and the workers' merged statistics."""
    import psycopg

    name = f"bnp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], check=True, capture_output=True)
    stats_dir = folder / "stats"
    stats_dir.mkdir()
    env = os.environ | {
        "BADNET_PRUNE_BROKER": f"redis://127.0.0.1:6379/{redis_db}",
        "BADNET_PRUNE_DB": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        "BADNET_PRUNE_CACHE": str(folder / "cache"),
        "BADNET_PRUNE_ARTIFACTS": str(folder / "artifacts"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        STATS_ENV: str(stats_dir),
    }
    subprocess.run([CLI, "migrate"], env=env, check=True, capture_output=True)
    processes, logs = [], []
    try:
        for index in range(workers):
            log = folder / f"worker-{index}.log"
            logs.append(log)
            with open(log, "wb") as out:
                processes.append(subprocess.Popen(
                    [sys.executable, __file__, "--as-worker", "worker", "--concurrency", "1",
                     "--hostname", f"bench{index}@%h"],
                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        while not all(b"ready." in log.read_bytes() for log in logs):
            if any(process.poll() is not None for process in processes):
                raise SystemExit("a worker exited:\n" + "\n".join(log.read_text()[-2000:] for log in logs))
            time.sleep(0.2)
        started = time.perf_counter()
        submit = subprocess.Popen([sys.executable, __file__, "--as-submitter", "sweep", str(sweep), "--wait"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert submit.stdout is not None
        registered_at = watching_at = cpu_at_watch = None
        for line in submit.stdout:
            if registered_at is None and " registered: " in line:
                registered_at = time.perf_counter()
            elif watching_at is None and registered_at is not None and line.startswith("sweep "):
                watching_at, cpu_at_watch = time.perf_counter(), cpu_seconds(submit.pid)
        _, status, usage = os.wait4(submit.pid, 0)
        ended = time.perf_counter()
        if os.waitstatus_to_exitcode(status) != 0 or watching_at is None or registered_at is None:
            raise SystemExit(f"sweep --wait failed (status {status})")
        watch_cpu = usage.ru_utime + usage.ru_stime - (cpu_at_watch or 0.0)
        with psycopg.connect(env["BADNET_PRUNE_DB"].replace("+psycopg", ""), autocommit=True) as connection:
            tasks, done = connection.execute("SELECT count(*), count(*) FILTER (WHERE state = 'done') FROM tasks"
                                             ).fetchone()
            (connections,) = connection.execute("SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = %s",
                                                (name,)).fetchone()
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], capture_output=True)
    merged: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for path in stats_dir.glob("[0-9]*.json"):
        for label, values in json.loads(path.read_text()).items():
            for key, value in values.items():
                merged[label][key] += value
    if tasks != done:
        raise SystemExit(f"{tasks - done} of {tasks} tasks did not end done")
    return {"models": models, "tasks": tasks, "register_s": registered_at - started,
            "submit_s": watching_at - started, "drain_s": ended - watching_at,
            "watch_cpu_share": watch_cpu / (ended - watching_at), "connections": connections, "stats": merged,
            "redraws": json.loads((stats_dir / "watcher.json").read_text())}


def redis_bytes_per_message(redis_db: int, count: int) -> float:
    """Redis's used_memory grown by `count` queued messages of the real shape (the rank stage's, as sent)."""
    import redis

    from badnet_prune.pipeline.contract import get_stage
    from badnet_prune.settings import Settings
    from badnet_prune.worker.celery_app import make_celery
    from badnet_prune.worker.dispatch import CeleryDispatcher

    url = f"redis://127.0.0.1:6379/{redis_db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    dispatcher = CeleryDispatcher(make_celery(Settings.from_env({"BADNET_PRUNE_BROKER": url})))
    stage = get_stage("rank")
    dispatcher.send(stage, 1)  # the queue's key and the connection exist before the count starts
    before = client.info("memory")["used_memory"]
    for task_id in range(2, count + 2):
        dispatcher.send(stage, task_id)
    grown = client.info("memory")["used_memory"] - before
    client.flushdb()
    return grown / count


def report(result: dict, workers: int) -> None:
    tasks, stats = result["tasks"], result["stats"]
    print(f"\n{result['models']} models, {tasks} tasks, {workers} worker(s) of concurrency 1, "
          f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}")
    print(f"  registration (submit, to the first progress line): {result['submit_s']:.1f} s "
          f"(registered after {result['register_s']:.1f} s)")
    print(f"  drain (submit end to sweep end): {result['drain_s']:.1f} s = {tasks / result['drain_s']:.1f} tasks/s")
    redraws = result["redraws"]
    print(f"  sweep --wait while it watched: {100 * result['watch_cpu_share']:.1f}% of one core; "
          f"{redraws['count']} redraws of {1000 * redraws['seconds'] / redraws['count']:.0f} ms "
          f"(queries and drawing), busy {100 * redraws['seconds'] / result['drain_s']:.1f}% of the drain")
    print(f"  PostgreSQL connections the idle workers held at the end: {result['connections']} "
          f"({result['connections'] / workers:.1f} per worker of one pool child)")
    totals = {key: sum(values.get(key, 0.0) for values in stats.values())
              for key in ("statements", "transactions", "checkouts")}
    print("  worker side per task: " + ", ".join(f"{totals[key] / tasks:.2f} {key}" for key in totals)
          + f"; {stats['deliveries not run']['count']:.0f} deliveries not run")
    whole = stats["whole task in the pool child"]
    print(f"  in the pool child: {1000 * whole['seconds'] / tasks:.2f} ms per task of "
          f"{1000 * result['drain_s'] * workers / tasks:.2f} ms worker time per task (the rest: Celery and Redis)")
    for label, values in sorted(stats.items(), key=lambda item: -item[1].get("seconds", 0.0)):
        if label in ("whole task in the pool child", "deliveries not run") or not values.get("count"):
            continue
        counts = ", ".join(f"{values.get(key, 0.0) / tasks:.2f} {key}" for key in totals if values.get(key))
        print(f"    {label}: {1000 * values.get('seconds', 0.0) / tasks:.2f} ms per task "
              f"({values['count'] / tasks:.2f} per task; {counts or 'no SQL'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10000],
                        help="sweep sizes to run (about; whole models of 11 tasks plus the sweep's finish)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis-db", type=int, default=9)
    parser.add_argument("--queued", type=int, default=20000, help="messages queued to measure Redis's memory")
    args = parser.parse_args()
    redis_db, _lock = claim_redis_db(args.redis_db)
    per_message = redis_bytes_per_message(redis_db, args.queued)
    print(f"Redis memory per queued task: {per_message:.0f} bytes ({args.queued} messages queued)")
    for wanted in args.tasks:
        models = max(1, math.ceil((wanted - 1) / TASKS_PER_MODEL))
        with tempfile.TemporaryDirectory(prefix="bench-coordination-") as tmp:
            folder = Path(tmp)
            report(run_once(sweep_file(folder, models), models, args.workers, redis_db, folder), args.workers)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--as-worker"]:
        as_worker(sys.argv[2:])
    elif sys.argv[1:2] == ["--as-submitter"]:
        as_submitter(sys.argv[2:])
    else:
        main()
