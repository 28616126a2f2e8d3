"""`badnet-prune zoo` with a broker: one task per model on real `badnet-prune worker` processes, Redis and PostgreSQL.

The models are three-class quick ones (seconds each), in a fresh cache per test, so that the workers
really train them. Checked: each model built once, in the lab's layout, the manifest equal to the
workers' records, a second run sending nothing, and a worker killed mid-build costing a rebuild by
another worker, never a lost or doubled model.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import CLI, Cluster

pytestmark = pytest.mark.integration

MIX = 'seed = 7\nclasses = 3\nmodels = { clean = 1, patch = 1, blended = 1 }\n'


def write_mix(cluster: Cluster) -> Path:
    path = cluster.folder / "mix.toml"
    path.write_text(MIX)
    return path


def builds(cluster: Cluster) -> list[dict]:
    return cluster.query("SELECT name, state, attempts, worker, error, record FROM zoo_builds ORDER BY id")


def test_workers_build_a_zoo_once_and_a_second_run_sends_nothing(cluster: Cluster) -> None:
    cluster.start_workers(2)
    mix = write_mix(cluster)
    out = cluster.folder / "zoo"
    done = cluster.cli_process("zoo", str(out), "--mix", str(mix), "--no-fine-tune", timeout=600)
    assert "3 sent to the workers" in done.stderr, done.stderr
    rows = builds(cluster)
    assert [(row["name"], row["state"], row["attempts"]) for row in rows] == [
        ("clean-7", "done", 1), ("patch-7", "done", 1), ("blended-7", "done", 1)]
    assert {row["worker"] for row in rows} <= {worker.name for worker in cluster.workers}
    manifest = {row["name"]: row for row in json.loads((out / "manifest.json").read_text())["models"]}
    for row in rows:
        record = row["record"]
        assert json.loads((out / row["name"] / "zoo.json").read_text()) == record
        assert (out / row["name"] / "models" / "bd_net.h5").is_file()
        assert manifest[row["name"]]["clean_test_accuracy"] == record["clean_test_accuracy"]
        assert list(manifest[row["name"]]["asr_test"].values()) == [t["asr_test"] for t in record["triggers"]]
    assert "[[model]]" in (out / "sweep.toml").read_text()

    again = cluster.cli_process("zoo", str(out), "--mix", str(mix), "--no-fine-tune", timeout=300)
    assert "0 sent to the workers" in again.stderr, again.stderr
    assert [(row["state"], row["attempts"]) for row in builds(cluster)] == [("done", 1)] * 3
    assert json.loads((out / "manifest.json").read_text())["models"] == list(manifest.values())


def test_a_worker_killed_mid_build_is_replaced_and_nothing_is_built_twice(cluster: Cluster) -> None:
    (first,) = cluster.start_workers(1)
    mix = write_mix(cluster)
    out = cluster.folder / "zoo"
    client = subprocess.Popen([*CLI, "zoo", str(out), "--mix", str(mix), "--no-fine-tune"], env=cluster.env,
                              cwd=cluster.folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not cluster.query("SELECT id FROM zoo_builds WHERE state = 'running'"):
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "no build started within 240 s"
            time.sleep(0.2)
        first.kill_all()
        cluster.start_workers(1)
        _, stderr = client.communicate(timeout=300)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, stderr[-3000:]
    rows = builds(cluster)
    assert [row["state"] for row in rows] == ["done"] * 3, rows
    assert max(row["attempts"] for row in rows) == 2, "the killed build should have run again, once"
    manifest = json.loads((out / "manifest.json").read_text())["models"]
    assert [row["name"] for row in manifest] == ["clean-7", "patch-7", "blended-7"]
    leftovers = [path.name for path in (cluster.folder / "cache" / "zoo").iterdir() if path.is_dir()]
    assert len(leftovers) == 3, f"one cache entry per model, no half-built folder: {leftovers}"


def test_builds_that_no_worker_of_this_database_starts_are_sent_again_then_fail_saying_why(
        cluster: Cluster, tmp_path: Path) -> None:
    """A worker on another database takes each message and finds no such build: the client sends each build again
    once nothing has moved for the in-flight grace, and after four sends fails it in one line, exit status 1."""
    from badnet_prune.db.session import prepare_database
    from tests.helpers import run_cli

    other = f"sqlite:///{tmp_path / 'other.sqlite'}"
    prepare_database(other).dispose()
    elsewhere = {**cluster.env, "BADNET_PRUNE_DB": other}
    with open(cluster.folder / "stray.log", "wb") as log:
        stray = subprocess.Popen([*CLI, "worker", "--concurrency", "1", "--hostname", "stray@localhost"], env=elsewhere,
                                 cwd=cluster.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while b" ready." not in (cluster.folder / "stray.log").read_bytes():
            assert stray.poll() is None and time.monotonic() < deadline, (cluster.folder / "stray.log").read_text()
            time.sleep(0.2)
        (cluster.folder / "mix.toml").write_text("seed = 7\nclasses = 3\nmodels = { clean = 1 }\n")
        done = run_cli("zoo", str(cluster.folder / "zoo"), "--mix", str(cluster.folder / "mix.toml"),
                       env={**cluster.env, "BADNET_PRUNE_IN_FLIGHT_GRACE": "2"}, cwd=cluster.folder)
    finally:
        stray.kill()
        stray.wait(timeout=30)
    assert done.returncode == 1, done.stderr[-3000:]
    assert ("clean-7 failed: sent 4 times and never started: do the workers use this command's database "
            "(BADNET_PRUNE_DB) and broker?") in done.stderr, done.stderr
    [row] = builds(cluster)
    assert (row["state"], row["attempts"]) == ("failed", 0)
    assert (cluster.folder / "stray.log").read_text().count("message not run: no zoo build") == 4
