"""Bench: a 100-model zoo built and swept through real Celery workers on PostgreSQL, against the embedded default.

In one run, on this machine:
1. baseline: `badnet-prune zoo` in-process (no broker) builds one model of each attack (seeds the large zoo
   does not use), and `badnet-prune sweep --wait` sweeps them in-process, on SQLite;
2. `--workers` (2) `badnet-prune worker` processes on Redis and a fresh PostgreSQL database build the large
   zoo (`zoo --models N`, one task per model, a cold cache) and sweep it (`sweep OUT/sweep.toml --wait`);
3. the leaderboard's query and aggregation (db.outcomes, orchestrator.leaderboard, as `leaderboard` runs them)
   timed on the large sweep, against reading the view defense_outcomes alone.
Both sweeps run pruning's thresholds and the recommended repair (`[repair]`; --no-repair: pruning only).
Prints models per hour for building and sweeping, each as a ratio to the embedded baseline, the wall and
CPU seconds (this process's children: the CPU time is the steadier on a shared machine), the sum of the
workers' task seconds (what one worker would have taken), and the leaderboard of the large sweep.

    nice -n 5 .venv/bin/python bench/zoo.py [--models 100] [--seed 0] [--workers 2] [--classes C] [--no-repair]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "badnet-prune")
sys.path.insert(0, str(REPO))

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "badnet_bench_zoo"
BASELINE_SEED = 1000  # one model of each attack, seeds the large zoo never reaches


def run(args: list[str], env: dict[str, str], cwd: Path, allowed: tuple[int, ...] = (0,)) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, stdout) of one console-script run, which must exit as allowed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([CLI, *args], env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode == 1 and 1 in allowed:
        print(f"badnet-prune {args[0]}: some models failed:\n{done.stderr[-2000:]}")
    elif done.returncode not in allowed:
        sys.exit(f"badnet-prune {' '.join(args)} -> {done.returncode}\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def add_repair(sweep_file: Path) -> None:
    with sweep_file.open("a", encoding="utf-8") as out:
        out.write("\n[repair]  # the recommended repair (bench/zoo.py)\n")


def fresh_postgres() -> str:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DATABASE}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}"


def start_workers(count: int, env: dict[str, str], root: Path) -> list[subprocess.Popen]:
    workers, logs = [], []
    for index in range(1, count + 1):
        log = root / f"worker{index}.log"
        with open(log, "wb") as out:
            workers.append(subprocess.Popen([CLI, "worker", "--concurrency", "1", "--hostname",
                                             f"bench{index}@{socket.gethostname()}"], env=env, cwd=root,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        logs.append(log)
    deadline = time.monotonic() + 120
    while not all(b" ready." in log.read_bytes() for log in logs):
        if time.monotonic() > deadline or any(worker.poll() is not None for worker in workers):
            sys.exit("a worker did not start:\n" + "\n".join(log.read_text()[-2000:] for log in logs))
        time.sleep(0.5)
    return workers


def task_seconds(database_url: str, sweep_id: int) -> float:
    import psycopg

    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as connection:
        return float(connection.execute("SELECT coalesce(sum(seconds), 0) FROM tasks WHERE sweep_id = %s",
                                        (sweep_id,)).fetchone()[0])


def time_leaderboard(database_url: str, sweep_id: int, repeats: int = 5) -> tuple[float, float, int, list]:
    """Median seconds of (reading defense_outcomes alone) and (the leaderboard: outcomes, seconds, aggregation)."""
    from sqlalchemy import text

    from badnet_prune.db.outcomes import read_defense_outcomes, stage_seconds
    from badnet_prune.db.session import make_engine, session_scope
    from badnet_prune.orchestrator.leaderboard import leaderboard

    engine = make_engine(database_url, create=False)
    raw, board, rows = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        with session_scope(engine) as session:
            count = len(session.execute(text("SELECT * FROM defense_outcomes WHERE sweep_id = :id"),
                                        {"id": sweep_id}).all())
        raw.append(time.perf_counter() - started)
        started = time.perf_counter()
        with session_scope(engine) as session:
            outcomes, seconds = read_defense_outcomes(session, sweep_id), stage_seconds(session, sweep_id)
        rows = leaderboard(outcomes, seconds, asr_bound=5.0, clean_bound=2.0, by_attack=True)
        board.append(time.perf_counter() - started)
    engine.dispose()
    return statistics.median(raw), statistics.median(board), count, rows


def per_hour(models: int, seconds: float) -> float:
    return models * 3600.0 / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-repair", action="store_true", help="sweep pruning only")
    parser.add_argument("--classes", type=int, help="identities per model (default: zoo's, 10)")
    parser.add_argument("--redis-db", type=int, default=13, help="the broker's Redis database (flushed)")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    root = (args.keep or Path(tempfile.mkdtemp(prefix="zoo-bench-"))).resolve()
    for folder in ("baseline", "cluster"):
        shutil.rmtree(root / folder, ignore_errors=True)
        (root / folder).mkdir(parents=True)
    base_env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    base_env.pop("BADNET_PRUNE_BROKER", None)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")

    embedded = base_env | {"BADNET_PRUNE_DB": str(root / "baseline" / "db.sqlite"),
                           "BADNET_PRUNE_CACHE": str(root / "baseline" / "cache"),
                           "BADNET_PRUNE_ARTIFACTS": str(root / "baseline" / "artifacts")}
    size = ["--classes", str(args.classes)] if args.classes else []
    base_build, base_build_cpu, _ = run(["zoo", "zoo", "--models", "6", "--seed", str(BASELINE_SEED),
                                         "--no-fine-tune", *size], embedded, root / "baseline", allowed=(0, 1))
    base_models = len(json.loads((root / "baseline" / "zoo" / "manifest.json").read_text())["models"])
    if not args.no_repair:
        add_repair(root / "baseline" / "zoo" / "sweep.toml")
    base_sweep, base_sweep_cpu, _ = run(["sweep", "zoo/sweep.toml", "--wait"], embedded, root / "baseline")
    embedded_build, embedded_sweep = per_hour(6, base_build), per_hour(base_models, base_sweep)
    print(f"embedded default: 6 models built in {base_build:.0f} s wall ({base_build_cpu:.0f} s CPU), "
          f"{embedded_build:.0f} models/hour; the {base_models} built swept in {base_sweep:.0f} s wall "
          f"({base_sweep_cpu:.0f} s CPU), {embedded_sweep:.0f} models/hour")

    subprocess.run(["redis-cli", "-n", str(args.redis_db), "flushdb"], check=True, capture_output=True)
    database_url = fresh_postgres()
    cluster = base_env | {"BADNET_PRUNE_BROKER": f"redis://127.0.0.1:6379/{args.redis_db}",
                          "BADNET_PRUNE_DB": database_url, "BADNET_PRUNE_CACHE": str(root / "cluster" / "cache"),
                          "BADNET_PRUNE_ARTIFACTS": str(root / "cluster" / "artifacts")}
    workers = start_workers(args.workers, cluster, root / "cluster")
    try:
        build, build_cpu, _ = run(["zoo", "zoo", "--models", str(args.models), "--seed", str(args.seed),
                                   "--no-fine-tune", *size], cluster, root / "cluster", allowed=(0, 1))
        manifest = json.loads((root / "cluster" / "zoo" / "manifest.json").read_text())["models"]
        build_sum = sum(row["build_seconds"] for row in manifest)
        if not args.no_repair:
            add_repair(root / "cluster" / "zoo" / "sweep.toml")
        sweep, sweep_cpu, out = run(["sweep", "zoo/sweep.toml", "--wait"], cluster, root / "cluster")
        sweep_id = int(out.split()[0])
        sweep_sum = task_seconds(database_url, sweep_id)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=120)
    built = len(manifest)
    print(f"{args.workers} workers: {args.models} models built in {build:.0f} s wall ({built} succeeded), "
          f"{per_hour(args.models, build):.0f} models/hour (x{per_hour(args.models, build) / embedded_build:.2f} of "
          f"embedded); the builds' own seconds sum to {build_sum:.0f} s (x{build_sum / build:.2f} of the wall "
          f"time); client CPU {build_cpu:.0f} s")
    print(f"{args.workers} workers: {built} models swept in {sweep:.0f} s wall, {per_hour(built, sweep):.0f} "
          f"models/hour (x{per_hour(built, sweep) / embedded_sweep:.2f} of embedded); the tasks' seconds sum to "
          f"{sweep_sum:.0f} s (x{sweep_sum / sweep:.2f} of the wall time); client CPU {sweep_cpu:.0f} s")
    raw, board, count, rows = time_leaderboard(database_url, sweep_id)
    print(f"leaderboard of sweep {sweep_id} ({count} defense_outcomes rows): {board * 1000:.0f} ms "
          f"(x{board / raw:.2f} of reading the view alone, {raw * 1000:.0f} ms); median of 5")
    print("defense      attack          models  repaired %  ASR median/p90/worst %   clean drop median/p90")
    for row in rows:
        if row.setting in ("0.1", "") or row.network.endswith("repair"):
            asr = "/".join("-" if value is None else f"{value:.2f}" for value in
                           (row.asr_median, row.asr_p90, row.asr_worst))
            print(f"{row.defense:12} {row.attack or 'all':15} {row.models:6}  {row.repaired:10.1f}  {asr:22}  "
                  f"{row.drop_median:.2f}/{row.drop_p90:.2f}")
    print(f"work folder: {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
