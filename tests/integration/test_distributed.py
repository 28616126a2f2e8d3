"""Sweeps on real Redis, PostgreSQL and `badnet-prune worker` processes, with the faults a cluster meets.

Every test here checks the rows the sweep leaves: one per (model, step), each model's steps 0..C,
and where the inputs are identical, identical values.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import cached_quick_badnet, model_entry, services_alone, synthetic_sweep, write_sweep_toml
from tests.integration.conftest import (
    CLI,
    REDIS,
    VISIBILITY_TIMEOUT_S,
    Cluster,
    psql_rows,
    reachable,
    redis_cli,
    skip_or_fail,
    wait_running,
)

pytestmark = pytest.mark.integration

DUPLICATES = "SELECT model_id, step, count(*) AS n FROM steps GROUP BY model_id, step HAVING count(*) > 1"
REDIS_SERVER = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
                "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"]


def by_model(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["model"], []).append(row)
    return grouped


def assert_complete(cluster: Cluster, sweep_id: int, names: set[str]) -> dict[str, list[dict]]:
    """The sweep is done, the named models done with steps 0..C exactly once each; their steps by model."""
    state = cluster.status(sweep_id)
    assert state["status"] == "done", state
    models = {model["name"]: model for model in state["models"]}
    for name in names:
        assert models[name]["status"] == "done", models[name]
        assert models[name]["units"]["prune_range"] == [61, 61], models[name]
    assert cluster.query(DUPLICATES) == []
    steps = by_model(cluster.steps(sweep_id))
    for name in names:
        assert [row["step"] for row in steps[name]] == list(range(61)), name
    return steps


def slow_sweep(folder: Path, root: Path, models: int, range_size: int) -> Path:
    """`models` copies of one slow BadNet under different names: their rows must come out identical."""
    return write_sweep_toml(folder / "slow.toml", [model_entry(f"s{i}", root) for i in range(models)],
                            range_size=range_size)


def assert_identical_models(steps: dict[str, list[dict]]) -> None:
    values = [[{k: v for k, v in row.items() if k != "model"} for row in rows] for rows in steps.values()]
    assert all(rows == values[0] for rows in values), "identical inputs gave different rows"


def test_three_badnets_on_two_workers_match_embedded(cluster: Cluster, tmp_path: Path):
    sweep_file = synthetic_sweep(tmp_path / "sweep", models=3)
    cluster.start_workers(2)
    started = time.monotonic()
    sweep_id = cluster.submit(sweep_file, wait=True)
    print(f"3 BadNets on 2 workers: {time.monotonic() - started:.1f}s")
    steps = assert_complete(cluster, sweep_id, {"m0", "m1", "m2"})
    workers = {row["worker"] for row in cluster.query(f"SELECT DISTINCT worker FROM tasks WHERE sweep_id = {sweep_id}")}
    assert workers == {worker.name for worker in cluster.workers}, "both workers should have taken tasks"

    embedded = {key: value for key, value in cluster.env.items() if key != "BADNET_PRUNE_BROKER"}
    embedded["BADNET_PRUNE_DB"] = f"sqlite:///{tmp_path / 'embedded.db'}"
    embedded["BADNET_PRUNE_ARTIFACTS"] = str(tmp_path / "embedded-artifacts")
    local_id = cluster.cli("sweep", str(sweep_file), env=embedded).split()[0]
    local = cluster.cli_json("steps", local_id, "--format", "json", env=embedded)
    assert by_model(local) == steps, "distributed rows differ from the embedded default's"


def test_corrupt_data_fails_its_model_only(cluster: Cluster, tmp_path: Path):
    good = [cached_quick_badnet(seed) for seed in (0, 1)]
    bad_at_plan = shutil.copytree(good[0], tmp_path / "bad_at_plan")
    bad_at_run = shutil.copytree(good[1], tmp_path / "bad_at_run")
    plan_file = bad_at_plan / "data" / "cl" / "valid.h5"
    run_file = bad_at_run / "data" / "cl" / "valid.h5"
    os.truncate(plan_file, plan_file.stat().st_size // 2)
    entries = [model_entry("m0", good[0]), model_entry("m1", good[1]),
               model_entry("bad_at_plan", bad_at_plan), model_entry("bad_at_run", bad_at_run)]
    sweep_id = cluster.submit(write_sweep_toml(tmp_path / "sweep.toml", entries))
    os.truncate(run_file, run_file.stat().st_size // 2)  # registered whole, broken before a worker reads it
    cluster.start_workers(2)
    state = cluster.wait_done(sweep_id, timeout=180)
    models = {model["name"]: model for model in state["models"]}
    for name, path in (("bad_at_plan", plan_file), ("bad_at_run", run_file)):
        assert models[name]["status"] == "failed", models[name]
        assert str(path) in models[name]["error"], models[name]
        assert set(models[name]["tasks"]) <= {"failed"}, f"{name} left tasks open: {models[name]['tasks']}"
    print({name: models[name]["error"] for name in ("bad_at_plan", "bad_at_run")})
    assert_complete(cluster, sweep_id, {"m0", "m1"})


def task_row(cluster: Cluster, task_id: int) -> tuple[str, int, str]:
    return psql_rows(cluster.database_url, "SELECT state, attempts, worker FROM tasks WHERE id = %s", task_id)[0]


def test_pool_child_killed_mid_task(cluster: Cluster, slow_badnet: Path, tmp_path: Path):
    cluster.start_workers(2)
    sweep_id = cluster.submit(slow_sweep(tmp_path, slow_badnet, models=3, range_size=61))
    task_id, node = wait_running(cluster, "prune_range", after_s=0.5)
    worker = next(w for w in cluster.workers if w.name == node)
    (child,) = worker.pool_children()
    os.kill(child, signal.SIGKILL)
    killed_at = time.monotonic()
    cluster.wait_done(sweep_id, timeout=180)
    print(f"pool child {child} of {node} killed during task {task_id}; sweep done "
          f"{time.monotonic() - killed_at:.1f}s later")
    state, attempts, _ = task_row(cluster, task_id)
    assert (state, attempts >= 2) == ("done", True), "the killed task should have run again"
    assert worker.process.poll() is None, "the worker's main process should survive its child"
    assert "Timed out waiting for UP message" not in worker.log.read_text(), "its new pool child never came up"
    assert time.monotonic() - killed_at < 60, "a lost pool child should cost seconds, not a visibility timeout"
    assert_identical_models(assert_complete(cluster, sweep_id, {"s0", "s1", "s2"}))


def kill_a_worker_mid_prune_range(cluster: Cluster, slow_badnet: Path, tmp_path: Path):
    """Two workers on a 3-model sweep; the one running a prune_range task is killed whole (SIGKILL to its
    main process and pool): the sweep, the task, that worker and when."""
    cluster.start_workers(2)
    sweep_id = cluster.submit(slow_sweep(tmp_path, slow_badnet, models=3, range_size=61))
    task_id, node = wait_running(cluster, "prune_range", after_s=0.5)
    worker = next(w for w in cluster.workers if w.name == node)
    worker.kill_all()
    return sweep_id, task_id, worker, time.monotonic()


def test_whole_worker_killed_mid_task(cluster: Cluster, slow_badnet: Path, tmp_path: Path):
    sweep_id, task_id, worker, killed_at = kill_a_worker_mid_prune_range(cluster, slow_badnet, tmp_path)
    node = worker.name
    deadline = killed_at + 240
    while task_row(cluster, task_id)[:2] == ("running", 1):
        assert time.monotonic() < deadline, "the dead worker's task was not redelivered within 4 minutes"
        time.sleep(0.5)
    redelivered = time.monotonic() - killed_at
    assert redelivered < VISIBILITY_TIMEOUT_S + 30, f"redelivered {redelivered:.0f}s after the kill"
    cluster.wait_done(sweep_id, timeout=240 - redelivered)
    print(f"worker {node} killed during task {task_id}: redelivered after {redelivered:.1f}s "
          f"(visibility timeout {cluster.env['BADNET_PRUNE_VISIBILITY_TIMEOUT']}s), "
          f"sweep done {time.monotonic() - killed_at:.1f}s after the kill")
    state, attempts, finished_by = task_row(cluster, task_id)
    survivor = next(w for w in cluster.workers if w is not worker)
    assert (state, attempts, finished_by) == ("done", 2, survivor.name)
    assert_identical_models(assert_complete(cluster, sweep_id, {"s0", "s1", "s2"}))


def test_a_dead_workers_task_is_sent_again_at_its_leases_end_not_the_visibility_timeout(
        cluster: Cluster, slow_badnet: Path, tmp_path: Path):
    """The broker's visibility timeout at its default (300 s): the killed worker's message would come back only
    then. Its lease (15 s) ends first; `status` names the task and its gone worker, `sweep resume` sends it
    again, and the sweep ends within the task's time plus 60 s, every result stored once."""
    from badnet_prune.settings import Settings

    default = Settings.model_fields["visibility_timeout_s"].default
    cluster.extra_env = {"BADNET_PRUNE_VISIBILITY_TIMEOUT": str(default)}
    sweep_id, task_id, worker, killed_at = kill_a_worker_mid_prune_range(cluster, slow_badnet, tmp_path)
    node = worker.name
    while not cluster.status(sweep_id)["abandoned_tasks"]:
        assert time.monotonic() < killed_at + 60, "the dead worker's lease did not expire within 60 s"
        time.sleep(1)
    (abandoned,) = cluster.status(sweep_id)["abandoned_tasks"]
    assert (abandoned["task_id"], abandoned["worker"]) == (task_id, node)
    shown = cluster.cli_process("status", str(sweep_id)).stderr
    assert f"task {task_id} (prune_range) ran on {node}" in shown and "sweep resume" in shown, shown
    resumed = cluster.cli_process("sweep", "resume", str(sweep_id)).stderr
    assert "sending 1 task(s) again" in resumed, resumed
    cluster.wait_done(sweep_id, timeout=60 + 120)
    finished = time.monotonic() - killed_at
    print(f"worker {node} killed during task {task_id}; sweep done {finished:.1f}s after the kill "
          f"(visibility timeout {default}s)")
    assert finished < default, "the task waited for the visibility timeout"
    state, attempts, _ = task_row(cluster, task_id)
    assert (state, attempts) == ("done", 2)
    assert_identical_models(assert_complete(cluster, sweep_id, {"s0", "s1", "s2"}))
    assert cluster.query(DUPLICATES) == []


def restart_redis() -> None:
    """Stop Redis without saving (its queues are lost) and start it again, always."""
    try:
        redis_cli("shutdown", "nosave")
        deadline = time.monotonic() + 30
        while reachable(REDIS) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
    finally:
        subprocess.run(REDIS_SERVER, check=True, timeout=30)
        deadline = time.monotonic() + 30
        while redis_cli("ping") != "PONG":
            assert time.monotonic() < deadline, "Redis did not come back"
            time.sleep(0.1)


def ended_or_stalled(cluster: Cluster, sweep_id: int, quiet_s: float, timeout: float) -> bool:
    """True once the sweep and its models have ended; False once none of its tasks runs and none has started or
    finished for quiet_s seconds (what they wait for was lost), or at the timeout."""
    deadline = time.monotonic() + timeout
    seen, since = None, time.monotonic()
    while time.monotonic() < deadline:
        if cluster.ended(sweep_id):
            return True
        (progress,) = cluster.query(
            "SELECT count(*) FILTER (WHERE t.state = 'running') AS running, max(t.started_at) AS started, "
            "max(t.finished_at) AS finished FROM tasks t JOIN models m ON m.id = t.model_id "
            f"WHERE m.sweep_id = {int(sweep_id)}")
        if progress != seen:
            seen, since = progress, time.monotonic()
        elif not progress["running"] and time.monotonic() - since > quiet_s:
            return False
        time.sleep(0.5)
    return False


@pytest.mark.restarts_services
def test_redis_restarted_during_sweep(cluster: Cluster, slow_badnet: Path, tmp_path: Path, record_property):
    if shutil.which("redis-server") is None or not Path("/var/lib/redis").is_dir():
        skip_or_fail("restarting Redis needs redis-server and /var/lib/redis on this machine")
    cluster.start_workers(2)
    with services_alone():
        sweep_id = cluster.submit(slow_sweep(tmp_path, slow_badnet, models=3, range_size=20))
        wait_running(cluster, "prune_range", after_s=0.5)
        restart_redis()
    if ended_or_stalled(cluster, sweep_id, quiet_s=10, timeout=60):
        outcome = "workers reconnected and finished the sweep"
    else:
        cluster.cli("sweep", "resume", str(sweep_id), "--wait", timeout=240)
        outcome = "the sweep stalled (queued messages were lost with Redis); `sweep resume --wait` finished it"
    print(outcome)
    record_property("redis_restart", outcome)
    assert all(worker.process.poll() is None for worker in cluster.workers), "a worker died with Redis"
    assert_identical_models(assert_complete(cluster, sweep_id, {"s0", "s1", "s2"}))


def test_two_sweeps_at_once_keep_their_rows(cluster: Cluster, tmp_path: Path):
    files = [synthetic_sweep(tmp_path / side, models=2) for side in ("a", "b")]
    cluster.start_workers(2)
    submits = [subprocess.Popen([*CLI, "sweep", str(f)], env=cluster.env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True) for f in files]
    ids = [int(process.communicate(timeout=120)[0].split()[0]) for process in submits]
    assert ids[0] != ids[1]
    for sweep_id in ids:
        cluster.wait_done(sweep_id, timeout=180)
    first, second = (assert_complete(cluster, sweep_id, {"m0", "m1"}) for sweep_id in ids)
    assert first == second, "identical inputs gave different rows in the two sweeps"
    for sweep_id in ids:
        owners = cluster.query(
            "SELECT m.sweep_id, count(*) AS n FROM steps s JOIN models m ON m.id = s.model_id "
            f"WHERE m.sweep_id = {sweep_id} GROUP BY m.sweep_id")
        assert owners == [{"sweep_id": sweep_id, "n": 122}]
        paths = cluster.query(f"SELECT a.path FROM artifacts a JOIN models m ON m.id = a.model_id "
                              f"WHERE m.sweep_id = {int(sweep_id)}")
        assert paths and all(f"sweep-{sweep_id}" in row["path"] for row in paths)

