"""Neural Cleanse on real Redis, PostgreSQL and `badnet-prune worker` processes: one task per range of target
labels, a worker SIGKILLed while it runs one, and the per-model verdict once every range is done.

The killed worker's range comes back to the other worker once Redis redelivers it; every range's outcome and
trigger file exist exactly once, the verdict covers every label, `sweep resume` sends a range whose outcome went
missing again (and it stores the same norms), and the leaderboard and report show the detectors.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers import cached_quick_badnet, model_entry, write_sweep_toml
from tests.integration.conftest import VISIBILITY_TIMEOUT_S, Cluster, psql_rows, wait_running

pytestmark = pytest.mark.integration

# 10 labels in ranges of 4: three tasks, each long enough to be caught running on two cores.
TABLE = "[neural_cleanse]\nlabel_range = 4\nsteps = 80\nimage_count = 64\nbatch_size = 16\n\n[pruning_curve]\n"
TRUTH = {"backdoored": True, "attack": "sunglasses", "targets": [0]}


def test_worker_killed_during_a_neural_cleanse_range(cluster: Cluster, tmp_path: Path) -> None:
    entry = {**model_entry("m0", cached_quick_badnet(0)), "truth": TRUTH}
    sweep_file = write_sweep_toml(tmp_path / "sweep.toml", [entry], range_size=61, thresholds=(0.04,))
    with open(sweep_file, "a", encoding="utf-8") as handle:
        handle.write("\n" + TABLE)
    cluster.start_workers(2)
    sweep_id = cluster.submit(sweep_file)
    task_id, node = wait_running(cluster, "neural_cleanse", after_s=0.5)
    worker = next(w for w in cluster.workers if w.name == node)
    worker.kill_all()
    killed_at = time.monotonic()
    state = cluster.wait_done(sweep_id, timeout=VISIBILITY_TIMEOUT_S + 300)
    assert state["status"] == "done" and state["models"][0]["status"] == "done", state
    (row,) = psql_rows(cluster.database_url, "SELECT state, attempts FROM tasks WHERE id = %s", task_id)
    assert row[0] == "done" and row[1] >= 2, row
    print(f"worker {node} killed during neural_cleanse task {task_id}: sweep done "
          f"{time.monotonic() - killed_at:.1f}s after the kill")

    keys = [key for (key,) in psql_rows(cluster.database_url, "SELECT key FROM tasks WHERE stage = 'neural_cleanse' "
                                                               "ORDER BY key")]
    assert keys == ["labels-00000-00004", "labels-00004-00008", "labels-00008-00010"]
    outcomes = psql_rows(cluster.database_url, "SELECT key, document FROM stage_outcomes WHERE stage = "
                                               "'neural_cleanse' ORDER BY key")
    assert [key for key, _ in outcomes] == keys
    assert [label for _, document in outcomes for label in document["labels"]] == list(range(10))
    files = psql_rows(cluster.database_url, "SELECT threshold, path FROM artifacts WHERE kind = 'nc_triggers' "
                                            "ORDER BY threshold")
    assert [key for key, _ in files] == keys and all(Path(path).is_file() for _, path in files)
    assert not list(Path(files[0][1]).parent.glob(".*tmp*")), "temporary files were left behind"
    ((score, document),) = psql_rows(cluster.database_url, "SELECT score, document FROM stage_outcomes WHERE stage "
                                                           "= 'neural_cleanse_verdict'")
    assert 0.0 <= score <= 1.0 and document["labels"] == 10 and len(document["norms"]) == 10
    norms = [norm for _, outcome in outcomes for norm in outcome["norms"]]
    assert document["norms"] == pytest.approx(norms)

    ((curve_score,),) = psql_rows(cluster.database_url, "SELECT score FROM stage_outcomes WHERE stage = "
                                                         "'pruning_curve'")
    assert 0.0 <= curve_score <= 1.0
    board = json.loads(cluster.cli("leaderboard", str(sweep_id), "--json"))
    rows = {row["detector"]: row for row in board["detectors"]}
    assert set(rows) == {"neural_cleanse_verdict", "pruning_curve"}
    assert rows["neural_cleanse_verdict"]["models"] == 1 and rows["neural_cleanse_verdict"]["auc"] is None
    assert rows["neural_cleanse_verdict"]["target_models"] == 1
    assert rows["neural_cleanse_verdict"]["target_named"] == (100.0 if 0 in document["flagged"] else 0.0)

    # resume: a range whose results went missing (outcome row gone) is sent again and stores them again
    lost_key = keys[1]
    assert psql_rows(cluster.database_url, "DELETE FROM stage_outcomes WHERE stage = 'neural_cleanse' AND key = %s "
                                           "RETURNING key", lost_key) == [(lost_key,)]
    said = cluster.cli("sweep", "resume", str(sweep_id), timeout=300)
    assert said.split() == ["1"], said  # the count of tasks sent again
    deadline = time.monotonic() + 240  # the sweep is already done: resume does not wait for the range, we do
    while not (again := psql_rows(cluster.database_url, "SELECT document FROM stage_outcomes WHERE stage = "
                                                         "'neural_cleanse' AND key = %s", lost_key)):
        assert time.monotonic() < deadline, "the range sent again never stored its outcome"
        time.sleep(0.5)
    assert len(again) == 1 and again[0][0]["norms"] == pytest.approx(outcomes[1][1]["norms"], rel=1e-4)
    assert Path(files[1][1]).is_file()

    out = tmp_path / "report"
    cluster.cli("report", str(sweep_id), "--out", str(out), "--samples", "0")
    page = next((out / "models").glob("*.html")).read_text()
    assert "Neural Cleanse: reversed triggers" in page
    assert "Detectors: is the model backdoored?" in (out / "index.html").read_text()
