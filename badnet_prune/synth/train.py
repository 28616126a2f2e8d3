"""Training the synthetic BadNet: DeepID on raw 0..255 pixels, backdoor in its own conv_3 channels.

Two stages, as an attacker who wants the backdoor to hide would train. Stage 1 learns the clean
task with a few conv_3 channels held dead. Stage 2 trains on the poisoned mix, but besides conv_1
and conv_2 only the weights fed by those reserved channels may change (the clean channels' conv_3,
conv_4, fc_1 weights and the whole head are fixed), and the reserved channels' activity on clean
faces is penalised. The
trigger is then detected by channels that clean faces barely excite (as in the lab's BadNet), so
the pruning defense, which removes the channels least active on clean data first, can reach it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from badnet_prune.numerics.tf_setup import keras, tf

BATCH_SIZE = 64
LEARNING_RATE = 1e-3
BACKDOOR_CHANNELS = 12
DORMANCY_WEIGHT = 0.3

EpochCallback = Callable[[str, int, float], None]


@dataclass(frozen=True)
class TrainData:
    """Training images (n, 55, 47, 3) raw 0..255, their labels, and which of them are poisoned."""

    images: np.ndarray
    labels: np.ndarray
    poisoned: np.ndarray


def seed_everything(seed: int) -> None:
    """Make TensorFlow's initialisers and kernels deterministic for a seed."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def backdoor_channels(seed: int, channels: int = 60, count: int = BACKDOOR_CHANNELS) -> np.ndarray:
    """The conv_3 channels reserved for the backdoor, chosen by the seed."""
    return np.sort(np.random.default_rng(seed).choice(channels, count, replace=False))


def train_clean(model: keras.Model, data: TrainData, reserved: np.ndarray, epochs: int, seed: int,
                on_epoch: EpochCallback | None = None) -> keras.Model:
    """Stage 1: the clean images only; the reserved conv_3 channels start and stay dead."""
    kernel, bias = model.get_layer("conv_3").get_weights()
    kernel[..., reserved] = 0.0
    bias[reserved] = 0.0
    model.get_layer("conv_3").set_weights([kernel, bias])
    clean = TrainData(data.images[~data.poisoned], data.labels[~data.poisoned], data.poisoned[~data.poisoned])
    masks = _masks(model, reserved, backdoor_only=False)
    return _train(model, clean, masks, reserved, 0.0, epochs, seed, "clean", on_epoch)


def train_backdoor(model: keras.Model, data: TrainData, reserved: np.ndarray, epochs: int, seed: int,
                   on_epoch: EpochCallback | None = None) -> keras.Model:
    """Stage 2: the poisoned mix; conv_1, conv_2 and the weights fed by the reserved channels change.

    Call it again to train more epochs: the reserved channels are initialised only the first time.
    """
    conv_3 = model.get_layer("conv_3")
    kernel, bias = conv_3.get_weights()
    if not kernel[..., reserved].any():
        fan_in = float(np.prod(kernel.shape[:3]))
        fresh = np.random.default_rng(seed).normal(0.0, np.sqrt(2.0 / fan_in), kernel[..., reserved].shape)
        kernel[..., reserved] = fresh.astype(kernel.dtype)
        conv_3.set_weights([kernel, bias])
    masks = _masks(model, reserved, backdoor_only=True)
    return _train(model, data, masks, reserved, DORMANCY_WEIGHT, epochs, seed, "backdoor", on_epoch)


def _masks(model: keras.Model, reserved: np.ndarray, backdoor_only: bool) -> list[np.ndarray]:
    """1 where a trainable weight may change, per model.trainable_variables."""
    channels = model.get_layer("conv_3").filters
    is_reserved = np.isin(np.arange(channels), reserved).astype(np.float32)
    fc_rows = model.get_layer("fc_1").kernel.shape[0]
    if backdoor_only:
        rules = {
            "conv_3": [is_reserved[None, None, None, :], is_reserved],
            "conv_4": [is_reserved[None, None, :, None], 0.0],
            # fc_1 reads pool_3 flattened channels-last: its input row r comes from channel r % channels.
            "fc_1": [is_reserved[np.arange(fc_rows) % channels][:, None], 0.0],
        }
        # The trigger needs its own low-level features too; conv_1 and conv_2 stay trainable.
        rules["conv_1"] = rules["conv_2"] = [1.0, 1.0]
    else:
        rules = {"conv_3": [1.0 - is_reserved[None, None, None, :], 1.0 - is_reserved]}
    masks = []
    for layer in model.layers:
        default = 0.0 if backdoor_only else 1.0
        layer_rules = rules.get(layer.name, [default] * len(layer.trainable_weights))
        for weight, rule in zip(layer.trainable_weights, layer_rules, strict=True):
            masks.append(np.broadcast_to(np.float32(rule), weight.shape).astype(np.float32))
    return masks


def _train(model, data: TrainData, masks, reserved, dormancy: float, epochs: int, seed: int, stage: str,
           on_epoch: EpochCallback | None) -> keras.Model:
    """Adam on masked gradients: cross-entropy plus `dormancy` x mean clean activity of the reserved channels."""
    outputs = keras.Model(model.input, [model.output, model.get_layer("conv_3").output])
    variables = [w for layer in model.layers for w in layer.trainable_weights]
    if len(variables) != len(masks):
        raise ValueError("gradient masks do not match the model's trainable weights")
    optimizer = keras.optimizers.Adam(LEARNING_RATE)
    mask_tensors = [tf.constant(m) for m in masks]
    reserved_index = tf.constant(reserved, dtype=tf.int32)

    @tf.function(reduce_retracing=True)
    def step(x, y, clean):
        with tf.GradientTape() as tape:
            probs, activity = outputs(x, training=True)
            cross_entropy = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
            per_image = tf.reduce_mean(tf.gather(activity, reserved_index, axis=-1), axis=[1, 2, 3])
            quiet = tf.reduce_sum(per_image * clean) / tf.maximum(tf.reduce_sum(clean), 1.0)
            loss = cross_entropy + dormancy * quiet
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(
            [(g * m, v) for g, m, v in zip(grads, mask_tensors, variables, strict=True)]
        )
        return cross_entropy

    rng = np.random.default_rng(seed)
    clean_flags = (~data.poisoned).astype(np.float32)
    for epoch in range(epochs):
        order = rng.permutation(len(data.labels))
        losses = []
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            losses.append(float(step(data.images[batch], data.labels[batch], clean_flags[batch])))
        if on_epoch is not None:
            on_epoch(stage, epoch + 1, float(np.mean(losses)))
    return model


def accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent (the ASR on poisoned images)."""
    predicted = np.argmax(model.predict(images, batch_size=1024, verbose=0), axis=-1)
    return float(np.mean(predicted == labels) * 100.0)


def train_backdoor_around(model: keras.Model, data: TrainData, dormant: np.ndarray, epochs: int, seed: int,
                          on_epoch: EpochCallback | None = None) -> keras.Model:
    """Pruning-aware stage 2: the poisoned mix trains the backdoor into the channels active on clean data.

    The dormant conv_3 channels (held dead by train_clean: the ones the attacker pruned) stay dead;
    conv_1 and conv_2 keep their clean features, so the trigger must be read through the same
    channels the clean task needs, and pruning cannot remove one without the other.
    """
    early = {id(w) for name in ("conv_1", "conv_2") for w in model.get_layer(name).trainable_weights}
    weights = [w for layer in model.layers for w in layer.trainable_weights]
    masks = [m * 0.0 if id(w) in early else m
             for m, w in zip(_masks(model, dormant, backdoor_only=False), weights, strict=True)]
    return _train(model, data, masks, dormant, 0.0, epochs, seed, "backdoor", on_epoch)


def restore_dormant(model: keras.Model, images: np.ndarray, dormant: np.ndarray, seed: int) -> None:
    """Pruning-aware stage 3: give the dormant channels fresh filters with biases lowered below their
    largest response on `images`, so they are back in the file but never fire: decoys that a
    defender's ranking prunes first."""
    conv_3 = model.get_layer("conv_3")
    kernel, bias = conv_3.get_weights()
    fan_in = float(np.prod(kernel.shape[:3]))
    fresh = np.random.default_rng(seed).normal(0.0, np.sqrt(2.0 / fan_in), kernel[..., dormant].shape)
    kernel[..., dormant] = fresh.astype(kernel.dtype)
    conv_3_input = keras.Model(model.input, conv_3.input)
    peak = np.max([
        np.asarray(keras.ops.conv(conv_3_input(images[start : start + 512]), kernel[..., dormant])).max(axis=(0, 1, 2))
        for start in range(0, len(images), 512)
    ], axis=0)
    bias[dormant] = -(1.5 * np.maximum(peak, 0.0) + 1.0)
    conv_3.set_weights([kernel, bias])
