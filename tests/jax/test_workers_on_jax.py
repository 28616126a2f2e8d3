"""Celery workers on Keras's JAX backend, through Redis and PostgreSQL: what a GPU machine with JAX
and no TensorFlow runs. Their pool processes never load TensorFlow, and the dense engine (the GPU
default) stores every step and every test figure the sparse engine does.

Run by make test's JAX pass (KERAS_BACKEND=jax).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from badnet_prune.numerics.tf_setup import keras
from tests.helpers import model_entry, write_sweep_toml
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="checks Keras's JAX backend: "
                                "make test runs it with KERAS_BACKEND=jax")


def mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def sweep_on(cluster: Cluster, sweep_file: Path, engine: str) -> tuple[list[dict], list[dict], str]:
    """Steps and test figures of the sweep on one fresh JAX worker with `engine`, and its pool's mappings."""
    cluster.stop_all()
    cluster.extra_env.update({"KERAS_BACKEND": "jax", "BADNET_PRUNE_ENGINE": engine})
    (worker,) = cluster.start_workers(1)
    sweep_id = cluster.submit(sweep_file, wait=True, timeout=600)
    assert cluster.status(sweep_id)["models"][0]["status"] == "done"
    steps = cluster.query(f"SELECT model, step, channel, clean_accuracy, asr FROM step_results "
                          f"WHERE sweep_id = {sweep_id} ORDER BY model, step")
    tests = cluster.query(f"SELECT model, network, threshold_key, role, poison, accuracy, flagged "
                          f"FROM evaluation_results WHERE sweep_id = {sweep_id} "
                          f"ORDER BY model, network, threshold_key, role, poison")
    (pool,) = worker.pool_children()
    maps = mapped_libraries(pool)
    assert f"pruning engine: {engine}" in worker.log.read_text()
    return steps, tests, maps


def test_jax_workers_run_a_sweep_without_tensorflow_and_both_engines_store_the_same_results(
        cluster, synthetic_badnet, tmp_path):
    sweep_file = write_sweep_toml(tmp_path / "sweep.toml", [model_entry("m0", synthetic_badnet)])
    sparse_steps, sparse_tests, sparse_maps = sweep_on(cluster, sweep_file, "sparse")
    dense_steps, dense_tests, dense_maps = sweep_on(cluster, sweep_file, "dense")
    for maps in (sparse_maps, dense_maps):
        assert "jaxlib" in maps and "tensorflow" not in maps, "a JAX worker's pool process loaded TensorFlow"
    assert len(sparse_steps) == 61 and len({row["clean_accuracy"] for row in sparse_steps}) > 1
    assert dense_steps == sparse_steps
    assert sparse_tests and dense_tests == sparse_tests
