"""Loading BadNets: the lab's weights-only file, legacy HDF5 models written by Keras 2, .keras
archives; refusing files that carry code unless trusted; one clear error for non-model files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from badnet_prune.files.model_io import load_model
from badnet_prune.numerics.architecture import build_deepid
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.tf_setup import keras

CSAW = Path(__file__).resolve().parents[1].parent / "shared" / "csaw"
LAB_WEIGHTS = CSAW / "bd_weights.h5"

tf_keras = pytest.importorskip("tf_keras", reason="tf-keras (the test extra) writes Keras 2 model files")


def images(count: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 255.0, (count, 55, 47, 3)).astype(np.float32)


# ---- the lab's weights-only file ----------------------------------------------------------


def deepid_by_hand(layers, num_classes: int):
    """The DeepID of REFERENCE.md from an API's layers module, written out here, not build_deepid."""
    inputs = layers.Input(shape=(55, 47, 3))
    x = layers.MaxPooling2D(pool_size=2, name="pool_1")(layers.Conv2D(20, 4, activation="relu", name="conv_1")(inputs))
    x = layers.MaxPooling2D(pool_size=2, name="pool_2")(layers.Conv2D(40, 3, activation="relu", name="conv_2")(x))
    pool_3 = layers.MaxPooling2D(pool_size=2, name="pool_3")(layers.Conv2D(60, 3, activation="relu", name="conv_3")(x))
    fc_1 = layers.Dense(160, name="fc_1")(layers.Flatten()(pool_3))
    conv_4 = layers.Conv2D(80, 2, activation="relu", name="conv_4")(pool_3)
    fc_2 = layers.Dense(160, name="fc_2")(layers.Flatten()(conv_4))
    hidden = layers.ReLU()(layers.Add()([fc_1, fc_2]))
    return inputs, layers.Dense(num_classes, activation="softmax", name="output")(hidden)


def test_the_lab_weights_file_predicts_as_an_independently_built_deepid():
    if not LAB_WEIGHTS.exists():
        pytest.skip(f"{LAB_WEIGHTS} is absent: the lab's real weights are only in the project's shared folder")
    model = load_model(LAB_WEIGHTS)
    inputs, outputs = deepid_by_hand(keras.layers, 1283)
    independent = keras.Model(inputs, outputs)
    with h5py.File(LAB_WEIGHTS, "r") as handle:
        for name in ("conv_1", "conv_2", "conv_3", "conv_4", "fc_1", "fc_2", "output"):
            kernel = np.asarray(handle[f"{name}/{name}/kernel:0"])
            bias = np.asarray(handle[f"{name}/{name}/bias:0"])
            independent.get_layer(name).set_weights([kernel, bias])
    x = images(32)
    expected = independent.predict(x, verbose=0)
    got = model.predict(x, verbose=0)
    assert got.shape == (32, 1283)
    np.testing.assert_array_equal(np.argmax(got, axis=-1), np.argmax(expected, axis=-1))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


# ---- full models: legacy HDF5 by Keras 2, native .keras -----------------------------------


def tf_keras_deepid(num_classes: int = 10):
    tf_keras.utils.set_random_seed(11)
    return tf_keras.Model(*deepid_by_hand(tf_keras.layers, num_classes))


@pytest.fixture(scope="module")
def legacy_model(tmp_path_factory):
    """A full legacy HDF5 model (architecture, weights, optimizer) written by the Keras 2 API."""
    model = tf_keras_deepid()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    path = tmp_path_factory.mktemp("legacy") / "bd_net.h5"
    model.save(str(path), save_format="h5")
    return model, path


def test_a_legacy_hdf5_model_written_by_keras_2_loads_and_predicts_as_keras_2_does(legacy_model):
    model, path = legacy_model
    with h5py.File(path, "r") as handle:
        assert "model_config" in handle.attrs and "optimizer_weights" in handle
    loaded = load_model(path)
    x = images()
    expected = model.predict(x, verbose=0)
    got = loaded.predict(x, verbose=0)
    np.testing.assert_array_equal(np.argmax(got, axis=-1), np.argmax(expected, axis=-1))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_a_native_keras_archive_loads(tmp_path):
    keras.utils.set_random_seed(5)
    model = build_deepid(10)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_model(path)
    x = images()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-8)


# ---- files that carry code ----------------------------------------------------------------


def test_a_lambda_layer_is_refused_unless_the_code_is_trusted(tmp_path):
    inputs = tf_keras.Input(shape=(55, 47, 3))
    x = tf_keras.layers.Lambda(lambda t: t / 255.0, name="scale")(inputs)
    x = tf_keras.layers.Flatten()(tf_keras.layers.Conv2D(4, 3, activation="relu", name="conv_1")(x))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(10, activation="softmax", name="output")(x))
    path = tmp_path / "lambda.h5"
    model.save(str(path), save_format="h5")

    with pytest.raises(BadInputError) as caught:
        load_model(path)
    message = str(caught.value)
    assert str(path) in message and "code" in message and "--trust-model-code" in message

    trusted = load_model(path, trust_code=True)
    x = images(8)
    np.testing.assert_allclose(trusted.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-7)


class Doubler(tf_keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0


def test_a_custom_layer_class_is_refused(tmp_path):
    inputs = tf_keras.Input(shape=(55, 47, 3))
    x = tf_keras.layers.Flatten()(Doubler(name="doubler")(inputs))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(10, activation="softmax", name="output")(x))
    path = tmp_path / "custom.h5"
    model.save(str(path), save_format="h5")
    with pytest.raises(BadInputError, match="Doubler") as caught:
        load_model(path)
    assert str(path) in str(caught.value) and "--trust-model-code" in str(caught.value)


def test_a_custom_keras_3_class_in_a_keras_archive_is_refused(tmp_path):
    @keras.saving.register_keras_serializable(package="attacker")
    class Tripler(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 3.0

    inputs = keras.Input(shape=(55, 47, 3))
    x = keras.layers.Flatten()(Tripler(name="tripler")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    path = tmp_path / "custom.keras"
    model.save(path)
    with pytest.raises(BadInputError, match="Tripler") as caught:
        load_model(path)
    assert "--trust-model-code" in str(caught.value)


# ---- files that are not models ------------------------------------------------------------


def test_a_text_file_is_not_a_model(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("this is not a model\n")
    with pytest.raises(BadInputError, match="not a Keras model") as caught:
        load_model(path)
    assert caught.value.source == str(path)


def test_a_truncated_hdf5_model_is_refused_naming_the_file(legacy_model, tmp_path):
    _, source = legacy_model
    raw = source.read_bytes()
    path = tmp_path / "truncated.h5"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BadInputError) as caught:
        load_model(path)
    assert caught.value.source == str(path)


def test_a_truncated_weights_file_is_refused_naming_the_file(tmp_path):
    keras.utils.set_random_seed(2)
    from badnet_prune.files.model_io import save_legacy_weights

    full = tmp_path / "weights.h5"
    save_legacy_weights(build_deepid(10), full)
    raw = full.read_bytes()
    path = tmp_path / "truncated_weights.h5"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BadInputError) as caught:
        load_model(path)
    assert caught.value.source == str(path)


def test_an_hdf5_file_without_a_model_is_refused(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=np.zeros((1, 3, 55, 47), dtype=np.float32))
    with pytest.raises(BadInputError, match="neither a Keras model nor Keras weights") as caught:
        load_model(path)
    assert caught.value.source == str(path)


def test_a_missing_model_file_is_refused(tmp_path):
    with pytest.raises(BadInputError, match="no such model file"):
        load_model(tmp_path / "absent.h5")


def test_inference_runs_with_tensor_float_32_off():
    """TF32 would round GPU matmul inputs to 10 mantissa bits; the tool's inference must stay float32."""
    from badnet_prune.numerics.architecture import build_deepid
    from badnet_prune.numerics.inference import compiled_forward
    from badnet_prune.numerics.tf_setup import tf

    compiled_forward(build_deepid(4))
    assert not tf.config.experimental.tensor_float_32_execution_enabled()
