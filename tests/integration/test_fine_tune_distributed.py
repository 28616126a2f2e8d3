"""Fine-pruning on real Redis, PostgreSQL and `badnet-prune worker` processes.

A worker killed mid fine-tune: the whole worker (main process and pool) is SIGKILLed while it
fine-tunes; Redis hands the task to the other worker after the visibility timeout, that worker takes
the lease (the dead holder's process is gone) and finishes it, and every fine-tune row, evaluation and
file exists exactly once. A fine-tune task longer than the visibility timeout: Redis redelivers it
while it runs, and the lease keeps the copy from running beside it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import model_entry, write_sweep_toml
from tests.integration.conftest import VISIBILITY_TIMEOUT_S, Cluster, psql_rows, wait_running
from tests.test_fine_tuning import cached_pruning_aware_badnet

pytestmark = pytest.mark.integration

EPOCHS = 6  # long enough (several seconds on two cores) to be caught running, short enough for CI


def fine_tune_sweep(folder: Path) -> Path:
    """The pruning-aware BadNet at the 2% threshold, fine-tuned for EPOCHS epochs."""
    sweep_file = write_sweep_toml(folder / "fine.toml", [model_entry("pa", cached_pruning_aware_badnet())],
                                  range_size=61, thresholds=(0.02,))
    with open(sweep_file, "a", encoding="utf-8") as handle:
        handle.write(f"\n[fine_tune]\nepochs = {EPOCHS}\n")
    return sweep_file


def assert_stored_once(cluster: Cluster) -> None:
    """One outcome, EPOCHS + 1 epochs with their ASR, B''/G'' evaluations and files, each exactly once."""

    def count(sql: str) -> int:
        return psql_rows(cluster.database_url, sql)[0][0]

    assert count("SELECT count(*) FROM stage_outcomes WHERE stage = 'fine_tune'") == 1
    assert count("SELECT count(*) FROM curve_points WHERE stage = 'fine_tune'") == EPOCHS + 1
    assert count("SELECT count(*) FROM curve_asr WHERE stage = 'fine_tune'") == EPOCHS + 1
    assert count("SELECT count(*) FROM evaluations WHERE network IN ('B_fine', 'G_fine')") == 4
    assert count("SELECT count(*) FROM artifacts WHERE kind IN ('B_fine', 'G_fine')") == 2
    assert count("SELECT count(*) FROM curve_results WHERE stage = 'fine_tune'") == 2 * (EPOCHS + 1)
    paths = [path for (path,) in psql_rows(cluster.database_url,
                                           "SELECT path FROM artifacts WHERE kind IN ('B_fine', 'G_fine')")]
    assert all(Path(path).is_file() for path in paths)
    folder = Path(paths[0]).parent
    assert sorted(p.name for p in folder.glob("*_fine_*")) == [
        "B_fine_0.02.json", "B_fine_0.02.keras", "G_fine_0.02.json", "G_fine_0.02.keras"]
    assert not list(folder.glob(".*tmp*")), "temporary files were left behind"


def test_worker_killed_during_a_fine_tune_task(cluster: Cluster, tmp_path: Path) -> None:
    sweep_file = fine_tune_sweep(tmp_path)
    cluster.start_workers(2)
    sweep_id = cluster.submit(sweep_file)
    task_id, node = wait_running(cluster, "fine_tune", after_s=1.0)
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
    assert_stored_once(cluster)


def test_a_fine_tune_task_longer_than_the_visibility_timeout_never_runs_twice(cluster: Cluster,
                                                                              tmp_path: Path) -> None:
    cluster.extra_env = {"BADNET_PRUNE_VISIBILITY_TIMEOUT": "1"}
    cluster.start_workers(2)
    sweep_id = cluster.submit(fine_tune_sweep(tmp_path))
    state = cluster.wait_done(sweep_id, timeout=300)
    assert state["status"] == "done" and state["models"][0]["status"] == "done", state
    ((attempts, seconds),) = psql_rows(cluster.database_url,
                                       "SELECT attempts, seconds FROM tasks WHERE stage = 'fine_tune'")
    print(f"fine-tune task of {seconds:.1f}s at a 1 s visibility timeout")
    assert seconds > 2, "the task must outlast the visibility timeout for this test to show anything"
    assert attempts == 1, "a redelivered copy ran beside (or after) its fine-tune task"
    assert_stored_once(cluster)
