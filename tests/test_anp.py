"""ANP's numerics on tiny models built here: two iterations against a hand computation with its own
GradientTapes, the masks' and perturbations' bounds, determinism, the pruning orders and the pruned model.

tests/jax/test_anp_on_jax.py checks the JAX backend's path against a TensorFlow process on the same model.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from badnet_prune.numerics.activations import cut_activations, live_channels
from badnet_prune.numerics.anp import (
    AnpSettings,
    count_prunings,
    global_order,
    iteration_draws,
    optimise_masks,
    pruned_by_count,
    pruned_by_threshold,
    pruning_order,
)
from badnet_prune.numerics.channel_curve import evaluate_prunings
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.inference import compiled_forward
from badnet_prune.numerics.labelers import CutLabeler
from badnet_prune.numerics.network_split import split_network
from badnet_prune.numerics.pruned_model import build_pruned_layers_model
from badnet_prune.numerics.pruning import LabeledSet, prune_range
from badnet_prune.numerics.tf_setup import keras, tf

SHAPE = (7, 6, 2)
CLASSES = 4


def tiny_model(seed: int = 0) -> keras.Model:
    """input -> conv_a (3 3x3, relu, fixed) -> conv_b (5 2x2, relu, ANP's layer) -> pool -> flatten -> softmax;
    weights drawn by numpy, so every backend builds the same model."""
    inputs = keras.Input(SHAPE, name="input")
    x = keras.layers.Conv2D(3, 3, activation="relu", name="conv_a")(inputs)
    x = keras.layers.Conv2D(5, 2, activation="relu", name="conv_b")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="out")(keras.layers.Flatten(name="flat")(x))
    model = keras.Model(inputs, outputs, name="tiny")
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, 0.5, w.shape).astype(np.float32) + (0.1 if w.ndim == 1 else 0.0)
                       for w in model.get_weights()])
    return model


def tiny_data(count: int = 24, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, (count, *SHAPE)).astype(np.float32), rng.integers(0, CLASSES, count)


def hand_iterations(model: keras.Model, images, labels, settings: AnpSettings) -> np.ndarray:
    """ANP on conv_b written out: the draws as iteration_draws documents them, then per iteration one
    signed-gradient step on (delta, xi), one SGD-with-momentum step on the mask, clipped to [0, 1]."""
    kernel_a, bias_a = (tf.constant(w) for w in model.get_layer("conv_a").get_weights())
    kernel_b, bias_b = (tf.constant(w) for w in model.get_layer("conv_b").get_weights())
    dense, dense_bias = (tf.constant(w) for w in model.get_layer("out").get_weights())
    x_all = tf.constant(images)

    def loss(rows, weight_scale, bias_scale):
        x = tf.gather(x_all, rows)
        a = tf.nn.relu(tf.nn.conv2d(x, kernel_a, 1, "VALID") + bias_a)
        b = tf.nn.relu(tf.nn.conv2d(a, kernel_b * weight_scale, 1, "VALID") + bias_b * bias_scale)
        pooled = tf.nn.max_pool2d(b, 2, 2, "VALID")
        logits = tf.reshape(pooled, (len(rows), -1)) @ dense + dense_bias
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.gather(labels, rows), logits))

    rng = np.random.default_rng(settings.seed)
    mask, velocity, eps = tf.ones(5), tf.zeros(5), settings.epsilon
    for _ in range(settings.iterations):
        rows = rng.integers(0, len(labels), settings.batch_size)
        delta = tf.constant(rng.uniform(-eps, eps, 5).astype(np.float32))
        xi = tf.constant(rng.uniform(-eps, eps, 5).astype(np.float32))
        with tf.GradientTape() as tape:
            tape.watch([delta, xi])
            adversarial = loss(rows, mask + delta, 1.0 + xi)
        g_delta, g_xi = tape.gradient(adversarial, [delta, xi])
        delta = tf.clip_by_value(delta + eps * tf.sign(g_delta), -eps, eps)
        xi = tf.clip_by_value(xi + eps * tf.sign(g_xi), -eps, eps)
        with tf.GradientTape() as tape:
            tape.watch(mask)
            total = (settings.alpha * loss(rows, mask, tf.ones(5))
                     + (1 - settings.alpha) * loss(rows, mask + delta, 1.0 + xi))
        velocity = 0.9 * velocity - settings.mask_learning_rate * tape.gradient(total, mask)
        mask = tf.clip_by_value(mask + velocity, 0.0, 1.0)
    return mask.numpy()


SETTINGS = AnpSettings(layers=("conv_b",), iterations=3, batch_size=8, mask_learning_rate=0.5, seed=7)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(), *tiny_data()


@pytest.fixture(scope="module")
def result(tiny):
    return optimise_masks(*tiny, SETTINGS)


def test_three_iterations_equal_the_hand_computation(tiny, result):
    expected = hand_iterations(*tiny, SETTINGS)
    assert (expected < 1).any() and (expected > 0).any(), "the hand case must move masks off the bounds"
    np.testing.assert_allclose(result.masks["conv_b"], expected, rtol=1e-5, atol=1e-6)
    assert result.losses.shape == (3,) and np.isfinite(result.losses).all()


def test_draws_come_in_the_documented_order():
    rng, again = np.random.default_rng(3), np.random.default_rng(3)
    rows, delta, xi = iteration_draws(rng, 10, [2, 3], SETTINGS)
    assert np.array_equal(rows, again.integers(0, 10, SETTINGS.batch_size))
    for expected in (*delta, *xi):
        np.testing.assert_array_equal(expected, again.uniform(-0.4, 0.4, len(expected)).astype(np.float32))


def test_masks_stay_in_0_1_and_perturbations_within_epsilon(tiny):
    settings = SETTINGS.model_copy(update={"mask_learning_rate": 8.0, "iterations": 6, "epsilon": 0.3})
    found = optimise_masks(*tiny, settings)
    mask = found.masks["conv_b"]
    assert mask.dtype == np.float32 and mask.shape == (5,)
    assert ((mask >= 0) & (mask <= 1)).all() and ((mask == 0) | (mask == 1)).any(), mask
    delta, xi = found.perturbations["conv_b"]
    assert (np.abs(delta) <= np.float32(0.3)).all() and (np.abs(xi) <= np.float32(0.3)).all()
    assert np.isclose(np.abs(delta), 0.3).any(), "a signed step from inside the box reaches its edge"


def test_one_seed_gives_the_same_masks_twice_and_b_is_untouched(tiny, result):
    model = tiny[0]
    before = [w.copy() for w in model.get_weights()]
    again = optimise_masks(*tiny, SETTINGS)
    other = optimise_masks(*tiny, SETTINGS.model_copy(update={"seed": 8}))
    np.testing.assert_array_equal(again.masks["conv_b"], result.masks["conv_b"])
    np.testing.assert_array_equal(again.losses, result.losses)
    assert not np.array_equal(other.masks["conv_b"], result.masks["conv_b"])
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert split_network(model, "conv_b", "pool").cut_layer == "pool", "B's graph gained nodes"


def test_several_layers_get_masks_each_in_0_1(tiny):
    found = optimise_masks(*tiny, SETTINGS.model_copy(update={"layers": ("conv_a", "conv_b")}))
    assert {name: mask.shape for name, mask in found.masks.items()} == {"conv_a": (3,), "conv_b": (5,)}
    assert all(((m >= 0) & (m <= 1)).all() for m in found.masks.values())
    assert (found.masks["conv_a"] < 1).any()


def test_orders_and_pruning_by_threshold_and_by_count():
    masks = {"a": np.array([0.5, 0.1, 0.2, 0.1]), "b": np.array([0.0, 0.9])}
    assert pruning_order(masks["a"]).tolist() == [1, 3, 2, 0]
    assert global_order(masks) == [("b", 0), ("a", 1), ("a", 3), ("a", 2), ("a", 0), ("b", 1)]
    assert pruned_by_threshold(masks, 0.2) == {"a": (1, 2, 3), "b": (0,)}
    assert pruned_by_threshold(masks, 0.0) == {"a": (), "b": (0,)}
    assert pruned_by_count(masks, 3) == {"a": (1, 3), "b": (0,)}
    assert pruned_by_count(masks, 0) == {"a": (), "b": ()}
    assert count_prunings(masks, [0, 6])["6"] == {"a": (0, 1, 2, 3), "b": (0, 1)}
    with pytest.raises(ValueError, match="cannot prune 7 of 6"):
        pruned_by_count(masks, 7)


def test_the_pruned_model_has_exactly_zero_channels_and_the_rest_of_b(tiny, result):
    model = tiny[0]
    pruned = pruned_by_count(result.masks, 2)
    built = build_pruned_layers_model(model, pruned)
    kernel, bias = built.get_layer("conv_b").get_weights()
    original, original_bias = model.get_layer("conv_b").get_weights()
    channels = list(pruned["conv_b"])
    kept = [c for c in range(5) if c not in channels]
    assert len(channels) == 2 and not kernel[..., channels].any() and not bias[channels].any()
    np.testing.assert_array_equal(kernel[..., kept], original[..., kept])
    np.testing.assert_array_equal(bias[kept], original_bias[kept])
    assert {type(layer).__module__.split(".")[0] for layer in built.layers} == {"keras"}


def test_the_order_feeds_the_exact_sparse_sweep_and_matches_the_whole_model_curve(tiny, result):
    model, images, labels = tiny
    poisoned = (images[::2], np.zeros(len(images[::2]), dtype=np.int64))
    order = pruning_order(result.masks["conv_b"])
    split = split_network(model, "conv_b", "pool")
    cuts = {name: cut_activations(compiled_forward(split.head), [x], 1.0)
            for name, x in (("clean", images), ("bd", poisoned[0]))}
    sets = {name: LabeledSet(name, y, live_channels(cuts[name], split.pruned_values))
            for name, y in (("clean", labels), ("bd", poisoned[1]))}
    steps = prune_range(CutLabeler(split, cuts), sets["clean"], {"bd": sets["bd"]}, order, 0, 6)
    curve = evaluate_prunings(model, count_prunings(result.masks, range(6)), (images, labels), {"bd": poisoned})
    assert [s.clean_correct for s in steps] == [curve[str(k)].clean_correct for k in range(6)]
    assert [s.hits["bd"] for s in steps] == [curve[str(k)].hits["bd"] for k in range(6)]
    assert [s.channel for s in steps[1:]] == order.tolist()


def test_bad_layers_and_settings_are_refused_with_one_line(tiny):
    with pytest.raises(BadInputError, match=r"anp\.layers: layer 'pool' is a MaxPooling2D, not a Conv2D"):
        optimise_masks(*tiny, SETTINGS.model_copy(update={"layers": ("pool",)}))
    with pytest.raises(BadInputError, match="the model has no layer 'conv_9'"):
        optimise_masks(*tiny, SETTINGS.model_copy(update={"layers": ("conv_9",)}))
    assert AnpSettings.model_validate({"layers": ["conv_2", "conv_3"]}).layers == ("conv_2", "conv_3")
    for bad in ({"epsilon": 0.0}, {"alpha": 1.5}, {"iterations": "10"}, {"layers": []}, {"layers": ["a", "a"]},
                {"mask_threshold": -0.1}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            AnpSettings.model_validate(bad)
