"""Choosing the pruning engine: BADNET_PRUNE_ENGINE forces dense or sparse; auto picks by device.

The dense engine's labels at every step are checked against the whole pruned model in
tests/test_pruning_exact.py, and a whole defend run on it in tests/test_defend.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from badnet_prune.dense_engine import DenseLabeler, chosen_engine
from badnet_prune.hashing import sha256_file
from badnet_prune.labelers import CutLabeler
from badnet_prune.settings import Settings
from badnet_prune.tf_setup import accelerator_present
from worker.loaded import ModelKey, WorkerMemory


def test_a_forced_engine_is_used_whatever_the_device():
    assert chosen_engine("dense") == "dense"
    assert chosen_engine("sparse") == "sparse"


def test_auto_is_dense_only_where_an_accelerator_is_visible():
    assert chosen_engine("auto") == ("dense" if accelerator_present() else "sparse")


def test_auto_is_sparse_on_a_machine_with_no_accelerator():
    if accelerator_present():
        pytest.skip("this machine has an accelerator: auto is dense here")
    assert chosen_engine("auto") == "sparse"


def test_the_setting_is_read_from_the_environment_and_checked():
    assert Settings.from_env({}).engine == "auto"
    assert Settings.from_env({"BADNET_PRUNE_ENGINE": "dense"}).engine == "dense"
    with pytest.raises(Exception, match="BADNET_PRUNE_ENGINE: expected one of auto, dense, sparse, got 'GPU'"):
        Settings.from_env({"BADNET_PRUNE_ENGINE": "GPU"})


@pytest.mark.parametrize("engine", ["dense", "sparse"])
def test_a_worker_labels_with_the_engine_it_was_given(synthetic_badnet, tmp_path, engine):
    memory = WorkerMemory(tmp_path / "cache", engine=engine)
    model_path = synthetic_badnet / "models" / "bd_net.h5"
    loaded = memory.model(ModelKey(str(model_path), sha256_file(model_path), 1.0, "conv_3", "pool_3", False))
    data_path = synthetic_badnet / "data" / "cl" / "valid.h5"
    data = memory.data(loaded, str(data_path), sha256_file(data_path))
    assert memory.engine == engine
    step_labels = memory.step_labels(loaded, {"": data})
    assert (step_labels is None) == (engine == "sparse")
    assert isinstance(getattr(step_labels, "__self__", None), DenseLabeler) == (engine == "dense")
    labels = memory.labels_at(loaded, {"": data})("", [3, 5], None)
    reference = CutLabeler(loaded.split, {"": data.cut})("", [3, 5], None)
    assert np.array_equal(labels, reference)
