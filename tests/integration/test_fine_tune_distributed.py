"""Fine-pruning on real Redis, PostgreSQL and `badnet-prune worker` processes: a worker killed mid fine-tune.

The whole worker (main process and pool) is SIGKILLed while it fine-tunes; Redis hands the task to
the other worker after the visibility timeout, that worker takes the lease (the dead holder's process
is gone) and finishes it, and every fine-tune row, evaluation and file exists exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import model_entry, write_sweep_toml
from tests.integration.conftest import VISIBILITY_TIMEOUT_S, Cluster, psql_rows
from tests.test_fine_tuning import cached_pruning_aware_badnet

pytestmark = pytest.mark.integration

EPOCHS = 6  # long enough (several seconds on two cores) to be caught running, short enough for CI


def wait_running_fine_tune(cluster: Cluster, timeout: float = 240) -> tuple[int, str]:
    """(task id, worker) of a fine_tune task that has been running for at least a second."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = psql_rows(cluster.database_url, "SELECT id, worker FROM tasks WHERE stage = 'fine_tune' AND "
                         "state = 'running' AND started_at < now() - interval '1 second' ORDER BY id LIMIT 1")
        if rows:
            return rows[0]
        time.sleep(0.05)
    raise AssertionError("no fine_tune task was seen running")


def test_worker_killed_during_a_fine_tune_task(cluster: Cluster, tmp_path: Path) -> None:
    sweep_file = write_sweep_toml(tmp_path / "fine.toml", [model_entry("pa", cached_pruning_aware_badnet())],
                                  range_size=61, thresholds=(0.02,))
    with open(sweep_file, "a", encoding="utf-8") as handle:
        handle.write(f"\n[fine_tune]\nepochs = {EPOCHS}\n")
    cluster.start_workers(2)
    sweep_id = cluster.submit(sweep_file)
    task_id, node = wait_running_fine_tune(cluster)
    worker = next(w for w in cluster.workers if w.name == node)
    worker.kill_all()
    killed_at = time.monotonic()
    deadline = killed_at + 240
    while psql_rows(cluster.database_url, "SELECT state, attempts FROM tasks WHERE id = %s", task_id)[0] == \
            ("running", 1):
        assert time.monotonic() < deadline, "the dead worker's fine-tune task was not redelivered within 4 minutes"
        time.sleep(0.5)
    redelivered = time.monotonic() - killed_at
    assert redelivered < VISIBILITY_TIMEOUT_S + 30, f"redelivered {redelivered:.0f}s after the kill"
    state = cluster.wait_done(sweep_id, timeout=240 - redelivered)
    print(f"worker {node} killed during fine-tune task {task_id}: redelivered after {redelivered:.1f}s, "
          f"sweep done {time.monotonic() - killed_at:.1f}s after the kill")
    assert state["status"] == "done" and state["models"][0]["status"] == "done", state
    survivor = next(w for w in cluster.workers if w is not worker)
    (row,) = psql_rows(cluster.database_url, "SELECT state, attempts, worker FROM tasks WHERE id = %s", task_id)
    assert row == ("done", 2, survivor.name)

    def count(sql: str) -> int:
        return psql_rows(cluster.database_url, sql)[0][0]

    assert count("SELECT count(*) FROM fine_tunes") == 1
    assert count("SELECT count(*) FROM fine_tunes WHERE kept_epoch IS NOT NULL") == 1
    assert count("SELECT count(*) FROM fine_tune_epochs") == EPOCHS + 1
    assert count("SELECT count(*) FROM fine_tune_asr") == EPOCHS + 1
    assert count("SELECT count(*) FROM evaluations WHERE network IN ('B_fine', 'G_fine')") == 4
    assert count("SELECT count(*) FROM artifacts WHERE kind IN ('B_fine', 'G_fine')") == 2
    assert count("SELECT count(*) FROM fine_tune_results") == 2 * (EPOCHS + 1)
    assert count("SELECT count(*) FROM fine_tune_results WHERE kept") == 2
    paths = [path for (path,) in psql_rows(cluster.database_url,
                                           "SELECT path FROM artifacts WHERE kind IN ('B_fine', 'G_fine')")]
    assert all(Path(path).is_file() for path in paths)
    folder = Path(paths[0]).parent
    assert sorted(p.name for p in folder.glob("*_fine_*")) == [
        "B_fine_0.02.json", "B_fine_0.02.keras", "G_fine_0.02.json", "G_fine_0.02.keras"]
    assert not list(folder.glob(".*tmp*")), "the killed worker's temporary files were left behind"
