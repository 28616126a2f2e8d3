"""Choosing the pruning engine: BADNET_PRUNE_ENGINE forces dense or sparse; auto picks by device.

The dense engine's labels at every step are checked against the whole pruned model in
tests/test_pruning_exact.py, and a whole defend run on it in tests/test_defend.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from badnet_prune.files.hashing import sha256_file
from badnet_prune.numerics import inference
from badnet_prune.numerics.architecture import build_deepid
from badnet_prune.numerics.dense_engine import DenseLabeler, chosen_engine
from badnet_prune.numerics.inference import compiled_forward
from badnet_prune.numerics.labelers import CutLabeler
from badnet_prune.numerics.tf_setup import accelerator_present, keras
from badnet_prune.pipeline.runtime import ModelKey
from badnet_prune.settings import Settings
from badnet_prune.worker.loaded import WorkerMemory


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


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="programs are shared across models on the JAX backend")
def test_models_of_one_architecture_share_a_program_and_each_keeps_its_own_weights():
    """XLA compiles once per architecture; a shared program must still compute with the caller's weights."""
    models = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        models.append(build_deepid(10))
    images = np.random.default_rng(0).uniform(0, 255, (40, 55, 47, 3)).astype(np.float32)
    before = len(inference._jax_programs)
    outputs = [np.asarray(compiled_forward(model)(images)) for model in models]
    assert len(inference._jax_programs) == before + 1, "the second model compiled a program of its own"
    import jax

    padded = np.concatenate([images, np.zeros((inference.jax_rows() - len(images), 55, 47, 3), np.float32)])
    for model, output in zip(models, outputs, strict=True):
        own = jax.jit(lambda trainable, fixed, x, model=model: model.stateless_call(trainable, fixed, x)[0])
        np.testing.assert_array_equal(output, np.asarray(own(*inference.jax_weights(model), padded))[: len(images)])
    assert not np.array_equal(outputs[0], outputs[1])
    other = build_deepid(7)
    compiled_forward(other)(images[:2])
    assert len(inference._jax_programs) == before + 2, "another architecture must not reuse the program"


def test_a_dense_worker_keeps_the_device_copy_for_the_models_next_tasks(synthetic_badnet, tmp_path):
    """Each prune range and threshold task asks again; the data sets are copied to the device once."""
    memory = WorkerMemory(tmp_path / "cache", engine="dense")
    model_path = synthetic_badnet / "models" / "bd_net.h5"
    loaded = memory.model(ModelKey(str(model_path), sha256_file(model_path), 1.0, "conv_3", "pool_3", False))
    data_path = synthetic_badnet / "data" / "cl" / "valid.h5"
    data = memory.data(loaded, str(data_path), sha256_file(data_path))
    held = memory.bytes_held
    first = memory.step_labels(loaded, {"": data})
    assert memory.step_labels(loaded, {"": data}).__self__ is first.__self__
    assert memory.bytes_held == held + first.__self__.device_bytes > held
    order = list(range(loaded.split.channel_count))
    three = first("", order, 0, 3)
    assert three.shape == (3, len(data.labels))
    assert set(loaded.split.programs) == {("dense", first.__self__.image_block, steps) for steps in (1, 2)}, \
        "3 steps run as blocks of 2 and 1"
    np.testing.assert_array_equal(three, first("", order, 0, 16)[:3])
    assert ("dense", first.__self__.image_block, 16) in loaded.split.programs
