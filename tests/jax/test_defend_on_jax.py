"""`badnet-prune defend --fine-tune` through the console script on Keras's JAX backend: TensorFlow is
never imported, and steps.csv and summary.json equal those of a TensorFlow run on the same files.

Both runs take the same TensorFlow-trained synthetic BadNet. The pruning sweep's labels are exact
on each backend (tests/test_pruning_exact.py), so its rows must agree to the digit; the ranking's
mean activations and fine-tuning's losses are float32 sums in another order, compared to round-off,
and every count, step and epoch kept must be equal.

Run by make test's JAX pass (KERAS_BACKEND=jax).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from badnet_prune.numerics.tf_setup import keras
from tests.helpers import run_console_script
from tests.test_defend import defend_arguments

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="checks Keras's JAX backend: "
                                "make test runs it with KERAS_BACKEND=jax")

# One threshold and two epochs: every stage runs, fine-tuning included, in a CI-sized time. At the default
# rate (3e-3) the first epoch's loss jumps from under 1 to over 20 on this BadNet, and round-off grows
# into different hold-out figures by epoch 2 (seen: 25.0% on JAX, 28.3% on TensorFlow); at 1e-4 it is stable.
OPTIONS = {"--thresholds": "0.1"}
FINE_TUNE = ("--fine-tune", "--epochs", "2", "--learning-rate", "1e-4")


def defend_on(backend: str, root: Path, work: Path) -> tuple[str, dict, str]:
    """steps.csv, summary.json (without its file paths) and stderr of a defend run on `backend`."""
    env = {**os.environ, "KERAS_BACKEND": backend, "BADNET_PRUNE_CACHE": str(work / "cache"), "COLUMNS": "100",
           "PYTHONPROFILEIMPORTTIME": "1"}  # every module the run imports, on stderr
    env.pop("BADNET_PRUNE_BROKER", None)
    arguments = defend_arguments(root, work / "out", work / "defend.db", **OPTIONS)
    result = run_console_script("defend", *arguments, *FINE_TUNE, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((work / "out" / "summary.json").read_text(encoding="utf-8"))
    summary.pop("path")
    for entry in summary["thresholds"].values():
        entry.pop("files")
    for entry in summary["fine_tune"].values():
        entry.pop("files", None)
    return (work / "out" / "steps.csv").read_text(encoding="utf-8"), summary, result.stderr


@pytest.fixture(scope="module")
def runs(synthetic_badnet, tmp_path_factory) -> dict[str, tuple[str, dict, str]]:
    return {backend: defend_on(backend, synthetic_badnet, tmp_path_factory.mktemp(backend))
            for backend in ("jax", "tensorflow")}


def imported(stderr: str) -> set[str]:
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", stderr, flags=re.MULTILINE))


def test_the_jax_run_never_imports_tensorflow(runs):
    # tf_setup hides fd 2 while Keras itself imports (TensorFlow's banner), so the lines show every
    # import after it: those of the worker path, where Keras would load TensorFlow to serialise models
    modules = imported(runs["jax"][2])
    assert {"sqlalchemy", "badnet_prune.numerics.fine_tuning"} <= modules, "the check must see the run's imports"
    assert not {name for name in modules if name.split(".")[0] == "tensorflow"}


def test_the_jax_run_fine_tuned_at_the_threshold(runs):
    _, summary, _ = runs["jax"]
    entry, tuned = summary["thresholds"]["0.1"], summary["fine_tune"]["0.1"]
    assert entry["step"] is not None and tuned["kept_epoch"] is not None
    assert len(tuned["epochs"]) == 3  # epoch 0 (B'_t itself), 1 and 2


def test_steps_csv_equals_the_tensorflow_runs(runs):
    assert runs["jax"][0] == runs["tensorflow"][0]


def flattened(value, where: str = "") -> dict[str, object]:
    """summary.json as {"thresholds/0.1/step": 40, ...}: its leaves by path."""
    if isinstance(value, list):
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        return {where: value}
    return {key: leaf for name, item in value.items() for key, leaf in flattened(item, f"{where}/{name}").items()}


def test_summary_equals_the_tensorflow_runs_up_to_float32_round_off(runs):
    jax_leaves, tensorflow_leaves = flattened(runs["jax"][1]), flattened(runs["tensorflow"][1])
    assert jax_leaves.keys() == tensorflow_leaves.keys()
    for key, value in tensorflow_leaves.items():
        if isinstance(value, float):  # seen: mean activations and training losses differ by under 1e-5
            assert jax_leaves[key] == pytest.approx(value, rel=1e-4, abs=1e-9), key
        else:
            assert jax_leaves[key] == value, key
