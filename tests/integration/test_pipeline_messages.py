"""The pipeline on real Celery workers: messages carry only task ids, copies never run twice, resume
sends only what nothing holds, and a stage declared in the test suite runs like the built-in ones."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from badnet_prune.settings import Settings
from tests.helpers import cached_quick_badnet, model_entry, services_alone, synthetic_sweep, write_sweep_toml
from tests.integration.conftest import Cluster, redis_cli, wait_running
from tests.integration.test_distributed import DUPLICATES, assert_complete, slow_sweep

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

SNAPSHOT = {
    "tasks": "SELECT id, stage, key, state, attempts, error, finished_at FROM tasks ORDER BY id",
    "models": "SELECT id, status, error, acc0 FROM models ORDER BY id",
    "sweeps": "SELECT id, status, finished_at FROM sweeps ORDER BY id",
    "steps": "SELECT count(*) AS n FROM steps",
    "selections": "SELECT model_id, threshold, step FROM selections ORDER BY 1, 2",
    "evaluations": "SELECT count(*) AS n FROM evaluations",
}


def snapshot(cluster: Cluster) -> dict[str, list[dict]]:
    return {name: cluster.query(sql) for name, sql in SNAPSHOT.items()}


def celery_app(cluster: Cluster):
    from badnet_prune.worker.celery_app import make_celery

    return make_celery(Settings.from_env(cluster.env))


def execute(cluster: Cluster, *statements: str) -> None:
    import psycopg

    with psycopg.connect(cluster.database_url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)


def worker_logs(cluster: Cluster) -> str:
    return "\n".join(worker.log.read_text() for worker in cluster.workers)


def attempts(cluster: Cluster, sweep_id: int) -> list[int]:
    return [row["attempts"] for row in cluster.query(f"SELECT attempts FROM tasks WHERE sweep_id = {sweep_id}")]


def test_forged_and_replayed_messages_change_nothing(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_workers(1)
    sweep_id = cluster.submit(synthetic_sweep(tmp_path, models=1, range_size=61), wait=True)
    assert_complete(cluster, sweep_id, {"m0"})
    before = snapshot(cluster)
    ids = {row["stage"]: row["id"] for row in before["tasks"]}
    app = celery_app(cluster)
    forged = [
        ("badnet_prune.threshold", 987654),  # no such task
        ("badnet_prune.rank", ids["rank"]),  # a done task, replayed
        ("badnet_prune.finish", ids["finish"]),  # the sweep's finish, replayed
        ("badnet_prune.rank", ids["threshold"]),  # a task of another stage under this stage's name
        ("badnet_prune.threshold", "1; DROP TABLE tasks"),  # not an id at all
    ]
    for name, task_id in forged:
        app.send_task(name, kwargs={"task_id": task_id})
    deadline = time.monotonic() + 60
    while worker_logs(cluster).count("message not run") < len(forged) and time.monotonic() < deadline:
        time.sleep(0.5)
    logs = worker_logs(cluster)
    for phrase in ("no task 987654", "already done", "is a threshold task, not rank", "is not an integer"):
        assert phrase in logs, phrase
    assert snapshot(cluster) == before, "a forged or replayed message changed stored rows"


def test_a_stage_declared_in_the_tests_runs_on_celery_workers(cluster: Cluster, tmp_path: Path) -> None:
    cluster.extra_env = {"BADNET_PRUNE_STAGE_MODULES": "tests.stages.extra_stage", "PYTHONPATH": str(REPO)}
    cluster.start_workers(2)
    sweep_id = cluster.submit(synthetic_sweep(tmp_path, models=2), wait=True)
    assert_complete(cluster, sweep_id, {"m0", "m1"})
    rows = cluster.query(f"SELECT model_id, key, state, attempts FROM tasks WHERE sweep_id = {sweep_id} "
                         "AND stage = 'audit' ORDER BY model_id, key")
    assert [(row["key"], row["state"], row["attempts"]) for row in rows] == [
        (key, "done", 1) for _ in range(2) for key in ("0.02", "0.04", "0.1")]
    selected = cluster.query("SELECT model_id, threshold, step FROM selections")
    lines = (cluster.folder / "artifacts" / "audit.log").read_text().split("\n")[:-1]
    assert sorted(lines) == sorted(f"{row['model_id']} {row['threshold']} {row['step']}" for row in selected)


def test_a_defense_declared_in_the_tests_runs_on_celery_workers(cluster: Cluster, tmp_path: Path) -> None:
    """tests/stages/extra_defense.py: its settings table, job, stored results and curve, through real workers."""
    cluster.extra_env = {"BADNET_PRUNE_STAGE_MODULES": "tests.stages.extra_defense", "PYTHONPATH": str(REPO)}
    cluster.start_workers(2)
    sweep_file = synthetic_sweep(tmp_path, models=2)
    with open(sweep_file, "a", encoding="utf-8") as handle:
        handle.write("\n[random_prune]\ncount = 3\n")
    sweep_id = cluster.submit(sweep_file, wait=True)
    assert_complete(cluster, sweep_id, {"m0", "m1"})
    rows = cluster.query(f"SELECT state, attempts FROM tasks WHERE sweep_id = {sweep_id} AND stage = 'random_prune'")
    assert [(row["state"], row["attempts"]) for row in rows] == [("done", 1), ("done", 1)]
    outcomes = cluster.query("SELECT model_id, document FROM stage_outcomes WHERE stage = 'random_prune'")
    assert len(outcomes) == 2
    points = cluster.query("SELECT count(*) AS n FROM curve_points WHERE stage = 'random_prune'")
    assert points[0]["n"] == 2 * 4
    networks = cluster.query("SELECT count(*) AS n FROM evaluations WHERE network IN ('B_random', 'G_random')")
    assert networks[0]["n"] == 2 * 2 * 2  # two models, two networks, the clean and one poisoned test set


def test_resuming_a_running_sweep_sends_nothing(cluster: Cluster, slow_badnet: Path, tmp_path: Path) -> None:
    cluster.start_workers(1)
    sweep_id = cluster.submit(slow_sweep(tmp_path, slow_badnet, models=2, range_size=61))
    wait_running(cluster, "prune_range", after_s=0.5)
    for _ in range(2):
        resumed = cluster.cli_process("sweep", "resume", str(sweep_id))
        assert "sending 0 task(s) again" in resumed.stderr, resumed.stderr
    cluster.wait_done(sweep_id, timeout=240)
    assert_complete(cluster, sweep_id, {"s0", "s1"})
    assert set(attempts(cluster, sweep_id)) == {1}, "resume sent a task that was queued or running"


def wait_past_the_grace(cluster: Cluster, sweep_id: int) -> None:
    """Until every queued task of the sweep was sent longer ago than the grace in which it may still be on
    its way to the broker (BADNET_PRUNE_IN_FLIGHT_GRACE)."""
    grace = int(cluster.env["BADNET_PRUNE_IN_FLIGHT_GRACE"])
    deadline = time.monotonic() + grace + 60
    while cluster.query(f"SELECT id FROM tasks WHERE sweep_id = {sweep_id} AND state = 'queued' "
                        f"AND enqueued_at > now() - make_interval(secs => {grace + 0.5})"):
        assert time.monotonic() < deadline, f"queued tasks of sweep {sweep_id} stayed younger than {grace} s"
        time.sleep(0.2)


def test_tasks_lost_with_the_broker_are_found_and_resumed(cluster: Cluster, tmp_path: Path) -> None:
    cluster.extra_env = {"BADNET_PRUNE_IN_FLIGHT_GRACE": "2"}
    sweep_id = cluster.submit(synthetic_sweep(tmp_path, models=2))  # no worker yet: two rank tasks wait in Redis
    wait_past_the_grace(cluster, sweep_id)
    assert cluster.status(sweep_id)["lost_tasks"] == 0, "queued messages the broker holds are not lost"
    redis_cli("flushdb", db=int(cluster.broker_url.rsplit("/", 1)[1]))  # a restart of a Redis that keeps nothing
    state = cluster.status(sweep_id)
    assert state["lost_tasks"] == 2, state
    assert "no queue holds them" in cluster.cli_process("status", str(sweep_id)).stderr
    resumed = cluster.cli_process("sweep", "resume", str(sweep_id))
    assert "sending 2 task(s) again (2 were queued or running but nothing held them)" in resumed.stderr
    cluster.start_workers(1)
    cluster.wait_done(sweep_id, timeout=180)
    assert_complete(cluster, sweep_id, {"m0", "m1"})
    assert cluster.status(sweep_id)["lost_tasks"] == 0


def test_a_task_longer_than_the_visibility_timeout_never_runs_twice(cluster: Cluster, slow_badnet: Path,
                                                                    tmp_path: Path, record_property) -> None:
    cluster.extra_env = {"BADNET_PRUNE_VISIBILITY_TIMEOUT": "1"}
    cluster.start_workers(2)
    sweep_id = cluster.submit(slow_sweep(tmp_path, slow_badnet, models=2, range_size=61))
    cluster.wait_done(sweep_id, timeout=300)
    assert_complete(cluster, sweep_id, {"s0", "s1"})
    assert cluster.query(DUPLICATES) == []
    longest = cluster.query(f"SELECT max(seconds) AS s FROM tasks WHERE sweep_id = {sweep_id}")[0]["s"]
    copies = worker_logs(cluster).count("runs elsewhere")
    print(f"longest task {longest:.1f}s at a 1 s visibility timeout; {copies} redelivered copies looked again")
    record_property("redelivered_copies", copies)
    assert set(attempts(cluster, sweep_id)) == {1}, "a redelivered copy ran beside (or after) its task"


def test_a_model_that_fails_in_a_worker_is_a_failed_celery_task(cluster: Cluster, tmp_path: Path) -> None:
    root = cached_quick_badnet(0)
    entry = model_entry("m0", root) | {"clean_test": str(tmp_path / "gone.h5")}
    (tmp_path / "gone.h5").write_bytes((root / "data" / "cl" / "test.h5").read_bytes())
    sweep_file = write_sweep_toml(tmp_path / "sweep.toml", [entry], range_size=61)
    sweep_id = cluster.submit(sweep_file)
    (tmp_path / "gone.h5").unlink()  # registered whole, gone before the threshold stage reads it
    cluster.start_workers(1)
    state = cluster.wait_done(sweep_id, timeout=180)
    assert state["status"] == "failed" and state["models"][0]["status"] == "failed", state
    assert "TaskFailed" in worker_logs(cluster), "Celery should record the task as failed"


def test_a_copy_of_a_done_task_sends_what_its_first_run_claimed_and_never_sent(cluster: Cluster,
                                                                               tmp_path: Path) -> None:
    """The first run of a task died between claiming its successors (queued) and sending them: the broker
    hands its message out again, and that copy, finding the task done, sends them."""
    cluster.start_workers(1)
    sweep_id = cluster.submit(synthetic_sweep(tmp_path, models=1, range_size=20), wait=True)
    assert_complete(cluster, sweep_id, {"m0"})
    rank = cluster.query(f"SELECT id FROM tasks WHERE sweep_id = {sweep_id} AND stage = 'rank'")[0]["id"]
    execute(cluster,  # as left by a worker killed right after claiming the ranges
            f"UPDATE tasks SET state = CASE WHEN stage = 'prune_range' THEN 'queued' ELSE 'pending' END, "
            f"message_id = NULL, enqueued_at = now() - interval '1 minute' WHERE sweep_id = {sweep_id} "
            f"AND stage <> 'rank'",
            f"UPDATE models SET status = 'running' WHERE sweep_id = {sweep_id}",
            f"UPDATE sweeps SET status = 'running' WHERE id = {sweep_id}")
    celery_app(cluster).send_task("badnet_prune.rank", kwargs={"task_id": rank})  # the redelivered copy
    state = cluster.wait_done(sweep_id, timeout=180)
    assert state["status"] == "done", state
    assert_complete(cluster, sweep_id, {"m0"})
    ranges = cluster.query(f"SELECT attempts FROM tasks WHERE sweep_id = {sweep_id} AND stage = 'prune_range'")
    assert [row["attempts"] for row in ranges] == [2, 2, 2, 2], "each unsent range ran once more"


def test_waiting_with_no_worker_says_so(cluster: Cluster, tmp_path: Path) -> None:
    import subprocess

    from tests.integration.conftest import CLI

    sweep_file = synthetic_sweep(tmp_path, models=1)
    waiting = subprocess.Popen([*CLI, "sweep", str(sweep_file), "--wait"], env=cluster.env, cwd=cluster.folder,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and waiting.stderr is not None:
            line = waiting.stderr.readline()
            lines.append(line)
            if "no worker is consuming the queue" in line:
                break
        assert any("no worker is consuming the queue" in line for line in lines), lines
    finally:
        waiting.kill()
        waiting.wait(timeout=30)


@pytest.mark.restarts_services
def test_the_watcher_rides_out_a_postgresql_restart(cluster: Cluster, slow_badnet: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess

    from tests.integration.conftest import CLI, POSTGRES, reachable, skip_or_fail

    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []
    if shutil.which("pg_ctlcluster") is None or not versions:
        skip_or_fail("restarting PostgreSQL needs pg_ctlcluster and /etc/postgresql on this machine")
    cluster.start_workers(1)
    sweep_file = slow_sweep(tmp_path, slow_badnet, models=2, range_size=61)
    waiting: subprocess.Popen | None = None
    try:
        with services_alone():
            waiting = subprocess.Popen([*CLI, "sweep", str(sweep_file), "--wait"], env=cluster.env,
                                       cwd=cluster.folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_running(cluster, "prune_range", after_s=0.5)
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "restart"],
                           check=True, timeout=120)
            deadline = time.monotonic() + 60
            while not reachable(POSTGRES):
                assert time.monotonic() < deadline, "PostgreSQL did not come back"
                time.sleep(0.5)
        out, err = waiting.communicate(timeout=300)
    finally:
        if waiting is not None:
            waiting.kill()
    assert waiting.returncode == 0, err[-3000:]
    sweep_id = int(out.split()[0])
    assert_complete(cluster, sweep_id, {"s0", "s1"})


def test_a_waiting_sweep_sends_again_what_the_broker_lost(cluster: Cluster, tmp_path: Path) -> None:
    """A worker SIGKILLed while it takes a message off Redis can lose that message; `sweep --wait` notices the
    stall (nothing holds the queued tasks) and sends them again. The loss is made here by flushing Redis."""
    import subprocess

    from tests.integration.conftest import CLI

    cluster.extra_env = {"BADNET_PRUNE_IN_FLIGHT_GRACE": "3"}  # the stall is noticed after 3 s, not 30
    sweep_file = synthetic_sweep(tmp_path, models=2)
    waiting = subprocess.Popen([*CLI, "sweep", str(sweep_file), "--wait"], env=cluster.env, cwd=cluster.folder,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import psycopg

        def sent() -> bool:
            try:
                return bool(cluster.query("SELECT id FROM tasks WHERE stage = 'rank' AND state = 'queued' "
                                          "AND message_id IS NOT NULL"))
            except psycopg.errors.UndefinedTable:  # the sweep command has not made the schema yet
                return False

        deadline = time.monotonic() + 60
        while not sent():
            assert time.monotonic() < deadline, "the rank tasks were never sent"
            time.sleep(0.5)
        redis_cli("flushdb", db=int(cluster.broker_url.rsplit("/", 1)[1]))  # the messages are gone
        cluster.start_workers(1)
        out, err = waiting.communicate(timeout=240)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err[-3000:]
    assert "task(s) that no queue held any more were sent again" in err, err[-3000:]
    assert_complete(cluster, int(out.split()[0]), {"m0", "m1"})
