"""ANP and CLP on real Redis, PostgreSQL and `badnet-prune worker` processes, a worker SIGKILLed mid-task.

The whole worker (main process and pool) is killed while it runs the defense's task; the other worker
takes the task over once Redis redelivers it (the dead holder's lease is gone) and finishes it, and every
outcome, curve point, evaluation and file of the defense exists exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import cached_quick_badnet, model_entry, write_sweep_toml
from tests.integration.conftest import VISIBILITY_TIMEOUT_S, Cluster, psql_rows, wait_running

pytestmark = pytest.mark.integration

# Long enough to be caught running on two cores, short enough for CI.
TABLES = {"anp": "[anp]\niterations = 400\n", "clp": "[clp]\n"}
NETWORKS = {"anp": ("B_anp", "G_anp"), "clp": ("B_clp", "G_clp")}
SETTINGS = {"anp": 2, "clp": 1}  # setting keys with files: the threshold's and "mask"; "rule"


@pytest.mark.parametrize("defense", ["anp", "clp"])
def test_worker_killed_during_a_defense_task(cluster: Cluster, tmp_path: Path, defense: str) -> None:
    sweep_file = write_sweep_toml(tmp_path / "sweep.toml", [model_entry("m0", cached_quick_badnet(0))],
                                  range_size=61, thresholds=(0.04,))
    with open(sweep_file, "a", encoding="utf-8") as handle:
        handle.write("\n" + TABLES[defense])
    cluster.start_workers(2)
    sweep_id = cluster.submit(sweep_file)
    task_id, node = wait_running(cluster, defense, after_s=0.5)
    worker = next(w for w in cluster.workers if w.name == node)
    worker.kill_all()
    killed_at = time.monotonic()
    state = cluster.wait_done(sweep_id, timeout=VISIBILITY_TIMEOUT_S + 240)
    assert state["status"] == "done" and state["models"][0]["status"] == "done", state
    (row,) = psql_rows(cluster.database_url, "SELECT state, attempts FROM tasks WHERE id = %s", task_id)
    assert row[0] == "done" and row[1] >= 2, row
    print(f"worker {node} killed during {defense} task {task_id}: sweep done {time.monotonic() - killed_at:.1f}s "
          f"after the kill")

    def count(sql: str) -> int:
        return psql_rows(cluster.database_url, sql)[0][0]

    assert count(f"SELECT count(*) FROM stage_outcomes WHERE stage = '{defense}'") == 1
    points = count(f"SELECT count(*) FROM curve_points WHERE stage = '{defense}'")
    assert points == count(f"SELECT count(DISTINCT point) FROM curve_points WHERE stage = '{defense}'") > 0
    networks = ", ".join(f"'{name}'" for name in NETWORKS[defense])
    assert count(f"SELECT count(*) FROM evaluations WHERE network IN ({networks})") == SETTINGS[defense] * 2 * 2
    paths = [p for (p,) in psql_rows(cluster.database_url, f"SELECT path FROM artifacts WHERE kind IN ({networks})")]
    assert len(paths) == SETTINGS[defense] * 2 and all(Path(path).is_file() for path in paths)
    folder = Path(paths[0]).parent
    assert not list(folder.glob(".*tmp*")), "temporary files were left behind"
