"""Models per minute with one worker versus two: the same sweep of quick synthetic BadNets, each
time on a fresh PostgreSQL database and Redis database, with real `badnet-prune worker` processes.

    .venv/bin/python bench/sweeps.py [--models 4] [--redis-db 10]

Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (user postgres). The time counted
runs from submitting the sweep to its end (`sweep --wait`), after the workers reported ready; it
includes each pool child's first TensorFlow import, as a real sweep's does.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import synthetic_sweep  # noqa: E402

CLI = str(Path(sys.executable).with_name("badnet-prune"))
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def run_once(sweep_file: Path, workers: int, redis_db: int, folder: Path) -> float:
    """Seconds for the sweep on `workers` fresh workers, fresh database and flushed broker."""
    import psycopg

    name = f"bnp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], check=True, capture_output=True)
    env = os.environ | {
        "BADNET_PRUNE_BROKER": f"redis://127.0.0.1:6379/{redis_db}",
        "BADNET_PRUNE_DB": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        "BADNET_PRUNE_CACHE": str(folder / f"cache-{workers}"),
        "BADNET_PRUNE_ARTIFACTS": str(folder / f"artifacts-{workers}"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    subprocess.run([CLI, "migrate"], env=env, check=True, capture_output=True)
    processes, logs = [], []
    try:
        for index in range(workers):
            log = folder / f"bench-{workers}-{index}.log"
            logs.append(log)
            with open(log, "wb") as out:
                processes.append(subprocess.Popen(
                    [CLI, "worker", "--concurrency", "1", "--hostname", f"bench{index}@%h"],
                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        while not all(b" ready." in log.read_bytes() for log in logs):
            time.sleep(0.2)
        started = time.perf_counter()
        subprocess.run([CLI, "sweep", str(sweep_file), "--wait"], env=env, check=True, capture_output=True)
        return time.perf_counter() - started
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--redis-db", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweeps-") as tmp:
        folder = Path(tmp)
        sweep_file = synthetic_sweep(folder / "sweep", models=args.models)
        seconds = {workers: run_once(sweep_file, workers, args.redis_db, folder) for workers in (1, 2)}
    rates = {workers: args.models * 60 / s for workers, s in seconds.items()}
    for workers in (1, 2):
        print(f"{workers} worker(s): {args.models} models in {seconds[workers]:.1f} s = "
              f"{rates[workers]:.2f} models/min")
    print(f"two workers / one worker: {rates[2] / rates[1]:.2f}x  (cpus: {os.cpu_count()})")


if __name__ == "__main__":
    main()
