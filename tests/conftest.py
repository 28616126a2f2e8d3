"""Fixtures shared by every test module, the JAX pass's selection, and what lets test processes run at once.

The suite runs on Keras's TensorFlow backend. `make test` runs a second pass with KERAS_BACKEND=jax
over JAX_PASS only (`pytest -m jax_pass`): there every other test is skipped, saying so, because it
trains with TensorFlow, writes Keras 2 files with tf-keras or has not been checked on JAX.

Both passes run in several processes (pytest-xdist, `-n`, a test file to a process). Each process claims its
own Redis database and PostgreSQL databases (tests/integration/conftest.py); a test that restarts the
machine's Redis or PostgreSQL (marker restarts_services) restarts it while no other test on the machine runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from badnet_prune.numerics.tf_setup import keras
from tests.helpers import restarts_turn, services_turn

ON_JAX = keras.backend.backend() == "jax"
TESTS = Path(__file__).parent
# The tests that also run on Keras's JAX backend: the worker path's numerics and a whole defend run.
JAX_PASS = (
    TESTS / "jax",
    TESTS / "test_pruning_exact.py",
    TESTS / "test_dense_engine.py",
)


# Tests of JAX_PASS that hold only on TensorFlow, by name, and why.
TENSORFLOW_ONLY = {
    "test_a_bypass_around_the_prune_layer_means_no_split_and_the_whole_model_labeler_is_right":
        "its untrained model is the backend's seed-3 draw: JAX's labels every image alike, so the check proves nothing",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "restarts_services: restarts the machine's Redis or PostgreSQL, one such test "
                            "at a time, and only while no other test runs (services_alone)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark JAX_PASS's tests jax_pass; on JAX, skip the others with the reason. The files of integration
    tests go first: they last longest and mostly wait, so under pytest-xdist the other processes fill that time."""
    items.sort(key=lambda item: item.get_closest_marker("integration") is None)  # stable: file order kept
    skip = pytest.mark.skip(reason="TensorFlow backend only: not in the JAX pass (tests/conftest.py JAX_PASS)")
    for item in items:
        path = Path(item.path)
        if any(path == entry or entry in path.parents for entry in JAX_PASS):
            item.add_marker(pytest.mark.jax_pass)
            reason = TENSORFLOW_ONLY.get(getattr(item, "originalname", item.name))
            if ON_JAX and reason:
                item.add_marker(pytest.mark.skip(reason=f"TensorFlow backend only: {reason}"))
        elif ON_JAX:
            item.add_marker(skip)


def tensorflow_built_badnet(seed: int = 0) -> Path:
    """cached_quick_badnet(seed), trained in a TensorFlow process when this one runs on JAX: the
    synthetic BadNet's training is TensorFlow code, and both passes then defend the same files."""
    if not ON_JAX:
        from tests.helpers import cached_quick_badnet

        return cached_quick_badnet(seed)
    code = f"from tests.helpers import cached_quick_badnet; print(cached_quick_badnet({seed}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=TESTS.parent, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def synthetic_badnet() -> Path:
    """A quick synthetic BadNet (10 classes, seed 0): its OUT folder, the machine's cached one (built once per
    machine and code version, by TensorFlow on either backend: tensorflow_built_badnet). Read it, never write
    into it: copy what a test changes."""
    return tensorflow_built_badnet(0)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    """Every test, its fixtures' set-up and teardown included, holds the services shared. One marked
    restarts_services holds the restarts' turn instead, so that no other restart happens while it runs, and
    holds the services alone only around its restart (tests.helpers.services_alone): the machine's other
    tests go on while it starts its workers and while its sweep recovers."""
    turn = restarts_turn() if item.get_closest_marker("restarts_services") else services_turn(exclusive=False)
    with turn:
        return (yield)
