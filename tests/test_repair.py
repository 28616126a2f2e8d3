"""G and B' as files: saved as .keras, loaded by plain Keras in safe mode in a process of its own.

The loading process never imports badnet_prune, as a user's own code would not: what it gets
must be built-in Keras only, and G's labels must be those repaired_labels derives from B and B'.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from badnet_prune.numerics.architecture import build_deepid
from badnet_prune.numerics.inference import compiled_forward, predict_labels
from badnet_prune.numerics.pruned_model import build_pruned_model
from badnet_prune.numerics.repair import build_repaired_net, repaired_labels
from badnet_prune.numerics.tf_setup import keras
from tests.helpers import PLAIN_KERAS

NUM_CLASSES = 10
PRUNED = 40



@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """B (random DeepID), B' (PRUNED conv_3 filters zeroed), G; images; outputs from a plain-Keras process."""
    keras.utils.set_random_seed(7)
    model_b = build_deepid(NUM_CLASSES)
    rng = np.random.default_rng(7)
    images = rng.uniform(0.0, 1.0, (96, 55, 47, 3)).astype(np.float32)
    order = rng.permutation(60)[:PRUNED]
    model_b_prime = build_pruned_model(model_b, "conv_3", order)
    model_g = build_repaired_net(model_b, model_b_prime)

    folder = tmp_path_factory.mktemp("repair")
    np.save(folder / "images.npy", images)
    model_g.save(folder / "g.keras")
    model_b_prime.save(folder / "b_prime.keras")
    args = [folder / "images.npy", folder / "g.keras", folder / "g.npy", folder / "b_prime.keras", folder / "bp.npy"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_KERAS, *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded 2" in done.stdout
    return {
        "B": model_b,
        "B_prime": model_b_prime,
        "G": model_g,
        "order": order,
        "images": images,
        "g_outputs": np.load(folder / "g.npy"),
        "b_prime_outputs": np.load(folder / "bp.npy"),
    }


def test_g_has_n_plus_one_outputs(networks):
    assert networks["G"].output_shape == (None, NUM_CLASSES + 1)
    assert networks["g_outputs"].shape == (len(networks["images"]), NUM_CLASSES + 1)


def test_g_loaded_by_plain_keras_labels_as_repaired_labels(networks):
    images = networks["images"]
    labels_b = predict_labels(compiled_forward(networks["B"]), [images])
    labels_b_prime = predict_labels(compiled_forward(networks["B_prime"]), [images])
    agree = labels_b == labels_b_prime
    assert agree.any() and not agree.all(), "B and B' must agree on some images and not on others"
    expected = repaired_labels(labels_b, labels_b_prime, NUM_CLASSES)
    assert set(np.unique(expected)) >= {NUM_CLASSES}
    np.testing.assert_array_equal(np.argmax(networks["g_outputs"], axis=-1), expected)
    # the same G in this process, too
    np.testing.assert_array_equal(predict_labels(compiled_forward(networks["G"]), [images]), expected)


def test_repaired_labels_by_hand():
    labels_b = np.array([3, 1, 4, 1, 5])
    labels_b_prime = np.array([3, 2, 4, 0, 5])
    np.testing.assert_array_equal(repaired_labels(labels_b, labels_b_prime, 1283), [3, 1283, 4, 1283, 5])


def test_b_prime_loaded_by_plain_keras_predicts_as_the_pruned_model_in_memory(networks):
    in_memory = networks["B_prime"].predict(networks["images"], batch_size=64, verbose=0)
    loaded = networks["b_prime_outputs"]
    np.testing.assert_array_equal(np.argmax(loaded, axis=-1), np.argmax(in_memory, axis=-1))
    np.testing.assert_allclose(loaded, in_memory, rtol=1e-5, atol=1e-7)


def test_b_prime_has_the_pruned_filters_zeroed_and_b_is_untouched(networks):
    kernel, bias = networks["B_prime"].get_layer("conv_3").get_weights()
    original_kernel, original_bias = networks["B"].get_layer("conv_3").get_weights()
    pruned = networks["order"]
    kept = np.setdiff1d(np.arange(60), pruned)
    assert not kernel[..., pruned].any() and not bias[pruned].any()
    np.testing.assert_array_equal(kernel[..., kept], original_kernel[..., kept])
    np.testing.assert_array_equal(bias[kept], original_bias[kept])
    assert original_kernel[..., pruned].any(), "building B' changed B"


def test_g_saved_as_keras_loads_through_the_projects_own_loader_without_trusting_code(networks, tmp_path):
    # G holds only built-in Keras layers and keras.ops operations (Argmax, Equal, Cast, ...): no user code,
    # so `badnet-prune evaluate --model G.keras` must accept it as plain Keras does in safe mode.
    from badnet_prune.files.model_io import load_model

    path = tmp_path / "g.keras"
    networks["G"].save(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(
        np.argmax(loaded.predict(networks["images"], verbose=0), axis=-1), np.argmax(networks["g_outputs"], axis=-1)
    )


def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_building_g_leaves_b_graph_alone_and_memory_flat_over_many_builds():
    # A worker keeps B for its life and builds a G per threshold task: if G called B itself, every
    # build would add a node to B's graph holding that G and its B' (about 2 MB each) for good.
    keras.utils.set_random_seed(3)
    model_b = build_deepid(NUM_CLASSES)
    nodes = len(model_b._inbound_nodes), [len(layer._inbound_nodes) for layer in model_b.layers]

    def build(count: int) -> None:
        for i in range(count):
            build_repaired_net(model_b, build_pruned_model(model_b, "conv_3", list(range(i % 50))))
        gc.collect()

    build(10)  # TensorFlow's and Keras's one-time allocations
    before = _rss_mib()
    build(40)
    grown = _rss_mib() - before
    assert (len(model_b._inbound_nodes), [len(layer._inbound_nodes) for layer in model_b.layers]) == nodes
    assert grown < 25, f"RSS grew {grown:.0f} MiB over 40 builds of G"
