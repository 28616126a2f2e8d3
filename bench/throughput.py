"""Bench: real-size models per hour through the real worker path, against the notebook's batched job.

Models: the lab's BadNet (../shared/csaw/bd_weights.h5, 1283 classes, raw 0..255 pixels) and N-1
copies of it whose every weight is multiplied by (1 + eps * N(0, 1)) under the model's own seed:
each a distinct file with a distinct sha256, so that no activation cache entry is shared. Data: files
of the lab's real sizes (bench/processes.py's make_files: 11,547 validation and 12,830 test images,
clean and poisoned, synthetic faces labelled by B). Models and data are written once under --work and
reused, not timed. One run measures, on the same machine:
  in-process  `badnet-prune sweep FILE --wait` on the embedded default (no broker: the tasks run in that
              process through the workers' stage code), fresh SQLite database, activation cache and
              artifacts, timed from the process's start to its exit;
  workers     `badnet-prune worker --concurrency 1` processes (--workers of them) on Redis and
              PostgreSQL (fresh database, flushed private Redis database), started and ready before
              timing, timed from submitting to the end of `sweep --wait`;
  baseline    the notebook's job per model, batched: load B, acc0 and the ranking (pool_3's means) on
              the clean validation set, bench/engine.py's batched_loop over all 61 steps, per threshold
              B' at the first step whose drop reaches it, saved and loaded again, then B, B' and G on
              the clean and poisoned test sets (G runs B and B' again, as the notebook's G class does);
              the data is in memory before the clock starts.
Each prints models, wall time, models per hour and seconds per model; each mode's models per hour is
also given as a multiple of the baseline's. Where the backend sees a GPU, the goal line (at least
1,000 models per hour on one H200) says met or missed from the in-process figure.

    .venv/bin/python bench/throughput.py [--models 3] [--workers 2] [--work /tmp/badnet-prune-bench]
        [--engine auto] [--baseline-models 1] [--modes in-process,workers] [--eps 0.01]

On 2 CPU cores the defaults take about 10 minutes once the data files exist (making them takes a few
minutes more, once). The workers mode needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432
(user postgres). Keras, TensorFlow or JAX load only in child processes, so that on a GPU no process of
the bench holds the device while the timed ones run.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from processes import FILES, THRESHOLDS, WEIGHTS  # noqa: E402  (bench/processes.py, beside this script)

from tests.helpers import write_sweep_toml  # noqa: E402

CONSOLE = Path(sys.executable).with_name("badnet-prune")
CLI = [str(CONSOLE)] if CONSOLE.exists() else [sys.executable, "-c", "from orchestrator.cli import console_main; "
                                                                       "console_main()"]
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# The private Redis databases tests/integration/conftest.py claims by lock file; taken the same way, from the end.
REDIS_DBS = (10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 15, 14, 13, 12)
GOAL_PER_HOUR = 1000
MODES = ("in-process", "workers")


def model_files(work: Path, count: int, eps: float) -> list[Path]:
    """The lab's weights and count-1 perturbed copies (seeds 1..), written once under work/models."""
    import h5py
    import numpy as np

    paths = [WEIGHTS]
    for seed in range(1, count):
        path = work / "models" / f"perturbed-eps{eps:g}-seed{seed}.h5"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            shutil.copyfile(WEIGHTS, partial)
            rng = np.random.default_rng(seed)
            with h5py.File(partial, "r+") as handle:
                names: list[str] = []
                handle.visit(names.append)
                for dataset in (handle[name] for name in names if isinstance(handle[name], h5py.Dataset)):
                    value = dataset[()]
                    dataset[...] = (value * (1 + eps * rng.standard_normal(value.shape))).astype(value.dtype)
            partial.rename(path)
        paths.append(path)
    return paths


def sweep_file(work: Path, folder: Path, models: list[Path]) -> Path:
    """A sweep of every model on the four lab-size files, at the lab's raw-pixel scale."""
    data = {role: str(work / name) for role, name in zip(("valid", "test", "bd_valid", "bd_test"), FILES, strict=True)}
    entries = [{"name": f"m{index}", "path": str(path), "input_scale": 1, "clean_valid": data["valid"],
                "clean_test": data["test"], "poisoned": {"bd": {"valid": data["bd_valid"], "test": data["bd_test"]}}}
               for index, path in enumerate(models)]
    return write_sweep_toml(folder / "sweep.toml", entries, thresholds=THRESHOLDS)


def run_cli(args: list[str], env: dict[str, str], log: Path) -> None:
    """Run the CLI with its output in log; on failure print the log's end and stop the bench."""
    with open(log, "ab") as out:
        code = subprocess.run([*CLI, *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        sys.exit(f"error: `badnet-prune {' '.join(args[:2])}` exited {code}; the end of {log}:\n" + "\n".join(tail))


def query(env: dict[str, str], sql: str, log: Path) -> list[dict]:
    """Rows of one `badnet-prune sql` query on the sweep's database (also written to log)."""
    rows = json.loads(subprocess.run([*CLI, "sql", sql, "--json"], env=env, cwd=REPO, check=True,
                                     capture_output=True, text=True).stdout)
    with open(log, "a") as out:
        out.write(json.dumps(rows) + "\n")
    return rows


def results(env: dict[str, str], log: Path) -> dict[str, list[dict]]:
    """What the sweep stored that the bench prints: selected steps and acc0, and task seconds by stage."""
    return {
        "selections": query(env, "SELECT model, threshold_key, step, acc0 FROM selection_results", log),
        "stages": query(env, "SELECT stage, COUNT(*) AS tasks, SUM(seconds) AS seconds FROM tasks "
                             "GROUP BY stage ORDER BY MIN(id)", log),
    }


def children_cpu() -> float:
    """CPU seconds (user and system, all threads) of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def in_process(sweep: Path, env: dict[str, str], folder: Path) -> tuple[float, dict[str, Any]]:
    """Seconds of one `sweep --wait` process on the embedded default, fresh database and cache, and what
    the sweep stored (results)."""
    env = {key: value for key, value in env.items() if key != "BADNET_PRUNE_BROKER"} | {
        "BADNET_PRUNE_DB": f"sqlite:///{folder}/in-process.db",
        "BADNET_PRUNE_CACHE": str(folder / "cache-in-process"),
        "BADNET_PRUNE_ARTIFACTS": str(folder / "artifacts-in-process"),
    }
    started, cpu = time.perf_counter(), children_cpu()
    run_cli(["sweep", str(sweep), "--wait"], env, folder / "in-process.log")
    seconds, cpu = time.perf_counter() - started, children_cpu() - cpu
    return seconds, results(env, folder / "in-process.log") | {"cpu": cpu}


@contextmanager
def private_redis_db() -> Iterator[int]:
    """A Redis database number no test process or other bench on this machine uses meanwhile (lock file)."""
    for db in REDIS_DBS:
        handle = open(Path(tempfile.gettempdir()) / f"badnet-prune-tests-redis-{db}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield db
        finally:
            handle.close()
        return
    sys.exit(f"error: every Redis database of {REDIS_DBS} is taken by a test run or bench on this machine")


def with_workers(sweep: Path, env: dict[str, str], folder: Path, workers: int) -> tuple[float, dict[str, Any]]:
    """Seconds from submitting to the end of `sweep --wait` on `workers` ready worker processes, and what
    the sweep stored (results)."""
    import psycopg

    name = f"bnp_throughput_{uuid.uuid4().hex[:10]}"
    with private_redis_db() as redis_db, psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], check=True, capture_output=True)
        env = env | {
            "BADNET_PRUNE_BROKER": f"redis://127.0.0.1:6379/{redis_db}",
            "BADNET_PRUNE_DB": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
            "BADNET_PRUNE_CACHE": str(folder / "cache-workers"),
            "BADNET_PRUNE_ARTIFACTS": str(folder / "artifacts-workers"),
        }
        log = folder / "workers.log"
        processes: list[subprocess.Popen] = []
        try:
            run_cli(["migrate"], env, log)
            logs = [folder / f"worker-{index}.log" for index in range(workers)]
            for index, worker_log in enumerate(logs):
                with open(worker_log, "wb") as out:
                    processes.append(subprocess.Popen(
                        [*CLI, "worker", "--concurrency", "1", "--hostname", f"throughput{index}@%h"],
                        env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            while not all(b" ready." in worker_log.read_bytes() for worker_log in logs):
                if any(process.poll() is not None for process in processes):
                    sys.exit(f"error: a worker exited before it was ready; see {folder}/worker-*.log")
                time.sleep(0.2)
            started = time.perf_counter()
            run_cli(["sweep", str(sweep), "--wait"], env, log)
            return time.perf_counter() - started, results(env, log)
        finally:
            for process in processes:
                os.killpg(process.pid, 9)
                process.wait()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], capture_output=True)


def baseline_job(work: Path, models: list[Path], out: Path) -> None:
    """The notebook's batched job per model, each timed alone; prints one JSON line of the results."""
    import numpy as np
    from engine import backend_versions, batched_loop  # bench/engine.py, beside this script

    from badnet_prune.files.data import open_data_file
    from badnet_prune.files.model_io import load_model
    from badnet_prune.numerics.inference import INFERENCE_BATCH, compiled_forward, forward_labels
    from badnet_prune.numerics.pruned_model import build_pruned_model
    from badnet_prune.numerics.tf_setup import keras, tf

    (x_valid, y_valid), (x_test, y_test), _, (x_bd_test, y_bd_test) = (
        (data.read_all(), data.labels) for data in (open_data_file(work / name) for name in FILES))
    results = []
    for path in models:
        started, cpu = time.perf_counter(), time.process_time()
        model = load_model(path)
        pool_3 = compiled_forward(keras.Model(model.input, model.get_layer("pool_3").output))
        sums = sum(np.asarray(pool_3(x_valid[start : start + INFERENCE_BATCH])).sum(axis=(0, 1, 2))
                   for start in range(0, len(x_valid), INFERENCE_BATCH))
        order = np.argsort(sums / len(x_valid), kind="stable")
        loop_started = time.perf_counter()
        accuracy = np.asarray(batched_loop(model, x_valid, y_valid, order)) * 100 / len(y_valid)
        loop_seconds = time.perf_counter() - loop_started
        forward_b = compiled_forward(model)
        classes = int(model.output_shape[-1])
        tests = ((x_test, y_test), (x_bd_test, y_bd_test))
        b = [float(np.mean(forward_labels(forward_b, x) == y) * 100) for x, y in tests]
        steps, g = {}, {}
        for threshold in THRESHOLDS:
            reached = np.flatnonzero(accuracy[0] - accuracy >= threshold * accuracy[0])
            if not len(reached):
                continue
            key, steps[f"{threshold:g}"] = f"{threshold:g}", int(reached[0])
            saved = out / f"B_prime_{key}.keras"
            build_pruned_model(model, "conv_3", order[: reached[0]]).save(saved)
            forward_b_prime = compiled_forward(keras.models.load_model(saved))
            g[key] = []
            for x, y in tests:  # G runs B and B' again, as the notebook's G
                labels_b, labels_b_prime = forward_labels(forward_b, x), forward_labels(forward_b_prime, x)
                g[key].append(float(np.mean(np.where(labels_b == labels_b_prime, labels_b, classes) == y) * 100))
        results.append({"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu,
                        "loop_seconds": loop_seconds, "loop_steps": len(accuracy), "steps": steps, "b": b, "g": g})
    if tf is not None:
        accelerators = [device.name for device in tf.config.list_physical_devices("GPU")]
    else:
        import jax

        accelerators = [str(device) for device in jax.devices() if device.platform != "cpu"]
    print(json.dumps({"models": results, "accelerators": accelerators, "backend": backend_versions()}))


def baseline(work: Path, models: list[Path], env: dict[str, str]) -> dict:
    """Run baseline_job in a child process (so that this one never holds a device) and read its JSON."""
    with tempfile.TemporaryDirectory(dir=work) as out:
        command = [sys.executable, __file__, "baseline", "--work", str(work), "--out", out,
                   *(f"--baseline-of={path}" for path in models)]
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: the baseline job exited {result.returncode}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def line(what: str, models: int, seconds: float, cpu: float | None = None) -> float:
    """Print a mode's figures (with its processes' CPU seconds, where counted); return its models per hour."""
    per_hour = models * 3600 / seconds
    used = "" if cpu is None else f" (CPU {cpu / models:.1f} s/model)"
    print(f"{what}: {models} model{'s' if models != 1 else ''} in {seconds:.1f} s = {per_hour:.1f} models/hour, "
          f"{seconds / models:.1f} s/model{used}")
    return per_hour


def load() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", default="all", choices=("all", "baseline"))
    parser.add_argument("--models", type=int, default=3, help="models in each mode's sweep (the lab's and N-1 others)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes in the workers mode")
    parser.add_argument("--baseline-models", type=int, default=1, help="models the notebook's batched job runs")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--engine", default="auto", choices=("auto", "dense", "sparse"),
                        help="BADNET_PRUNE_ENGINE for the sweeps")
    parser.add_argument("--eps", type=float, default=0.01, help="relative scale of the weights' perturbation")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "badnet-prune-bench")
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)  # the baseline role's scratch folder
    parser.add_argument("--baseline-of", type=Path, action="append", help=argparse.SUPPRESS)  # its models
    args = parser.parse_args()
    if args.role == "baseline":
        baseline_job(args.work, args.baseline_of, args.out)
        return 0
    modes = [mode for mode in args.modes.split(",") if mode]
    if unknown := set(modes) - set(MODES):
        sys.exit(f"error: --modes: unknown {', '.join(sorted(unknown))} (known: {', '.join(MODES)})")
    if not 1 <= args.baseline_models <= args.models or args.workers < 1:
        sys.exit("error: --models, --workers and --baseline-models must be at least 1, --baseline-models <= --models")
    if not WEIGHTS.exists():
        sys.exit(f"error: {WEIGHTS}: no such file (the lab's bd_weights.h5 is needed)")

    from badnet_prune.files.hashing import sha256_file

    env = os.environ | {"BADNET_PRUNE_ENGINE": args.engine, "TF_CPP_MIN_LOG_LEVEL": "2"}
    args.work.mkdir(parents=True, exist_ok=True)
    files = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from processes import "
                            "make_files; make_files(Path(sys.argv[1]))", str(args.work)],
                           env=env | {"PYTHONPATH": os.pathsep.join(filter(None, (str(Path(__file__).parent),
                                                                             env.get("PYTHONPATH"))))}, cwd=REPO)
    if files.returncode != 0:
        sys.exit(f"error: writing the data files under {args.work} failed")
    models = model_files(args.work, args.models, args.eps)
    if len({sha256_file(path) for path in models}) != len(models):
        sys.exit(f"error: two of the model files under {args.work / 'models'} have the same sha256")
    print(f"{len(os.sched_getaffinity(0))} cores, {load()}; {args.models} models (the lab's and "
          f"{args.models - 1} perturbed by eps {args.eps:g}), engine {args.engine}")

    rates: dict[str, float] = {}
    cpus: dict[str, float | None] = {}
    sweep_steps: dict[tuple[str, str], int | None] = {}  # the first mode's selected steps
    marginal = 0.0
    with tempfile.TemporaryDirectory(dir=args.work, prefix="throughput-") as scratch:
        folder = Path(scratch)
        sweep = sweep_file(args.work, folder, models)
        for mode in modes:
            print(f"{mode} ({load()}):")
            seconds, stored = (in_process(sweep, env, folder) if mode == "in-process"
                               else with_workers(sweep, env, folder, args.workers))
            cpus[mode] = stored.get("cpu")
            rates[mode] = line(f"  {mode if mode == 'in-process' else f'{args.workers} workers'}", args.models, seconds,
                               stored.get("cpu"))
            if mode == "in-process":  # its tasks run one after another: their seconds are the per-model cost
                task_seconds = sum(row["seconds"] for row in stored["stages"] if row["stage"] != "finish")
                marginal = 3600 * args.models / task_seconds
                print(f"  without start-up, hashing and planning (the tasks' own seconds): {marginal:.1f} "
                      "models per hour")
            print("  task seconds by stage, per model: " + ", ".join(
                f"{row['stage']} {row['seconds'] / args.models:.1f} ({row['tasks'] // args.models} tasks)"
                for row in stored["stages"] if row["stage"] != "finish"))
            acc0 = [row["acc0"] for row in stored["selections"]]
            print(f"  acc0 of the models (their agreement with the lab's labels): {min(acc0):.2f}-{max(acc0):.2f}%")
            sweep_steps = sweep_steps or {(row["model"], row["threshold_key"]): row["step"]
                                          for row in stored["selections"]}
    print(f"baseline, the notebook's batched job ({load()}):")
    result = baseline(args.work, models[: args.baseline_models], env)
    done = result["models"]
    base = line("  baseline", len(done), sum(model["seconds"] for model in done), sum(model["cpu"] for model in done))
    print(f"  of which the {done[0]['loop_steps']}-step batched loop "
          f"{sum(model['loop_seconds'] for model in done) / len(done):.1f} "
          f"s/model; {result['backend']}")
    print(f"  m0, clean / ASR % on test: B {done[0]['b'][0]:.2f} / {done[0]['b'][1]:.2f}; "
          + ", ".join(f"G_{key} {clean:.2f} / {asr:.2f}" for key, (clean, asr) in done[0]["g"].items()))
    if sweep_steps:
        differ = [f"m{index} {key}: {step} vs {sweep_steps.get((f'm{index}', key))}"
                  for index, model in enumerate(done) for key, step in model["steps"].items()
                  if sweep_steps.get((f"m{index}", key)) != step]
        print("  selected steps: the baseline's equal the sweep's" if not differ
              else f"  selected steps differ (baseline vs sweep): {'; '.join(differ)}")
    base_cpu = sum(model["cpu"] for model in done) / len(done)
    for mode, rate in rates.items():
        by_cpu = "" if cpus[mode] is None else f" ({base_cpu * args.models / cpus[mode]:.1f}x in CPU seconds per model)"
        print(f"{mode} / baseline: {rate / base:.1f}x models per hour" + by_cpu)
    if "in-process" in rates and result["accelerators"]:
        verdict = "met" if rates["in-process"] >= GOAL_PER_HOUR else "missed"
        marginal_verdict = "met" if marginal >= GOAL_PER_HOUR else "missed"
        print(f"goal on one H200 (>= {GOAL_PER_HOUR} models/hour, in-process): {verdict} "
              f"({rates['in-process']:.0f} models/hour on {', '.join(result['accelerators'])}); "
              f"without the run's fixed costs {marginal_verdict} ({marginal:.0f} models/hour)")
    else:
        print(f"goal on one H200 (>= {GOAL_PER_HOUR} models/hour): not measured (no GPU in this run)")
    print(f"end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
