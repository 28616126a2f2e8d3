"""Fine-pruning's second half: fine-tune the pruned network B'_t on clean data, pruned filters held at zero.

Pure numerics: arrays and a model in, a new model and per-epoch records out (no Celery, SQL or
files). Only the defender's data is used: the clean validation images, split by the seed into a
training part and a hold-out part. The epoch kept is the one with the best hold-out clean
accuracy (ties: the earliest; epoch 0 is B'_t itself), so no choice ever sees poisoned or test
data; the ASR on each poisoned validation set is measured per epoch for the record only.

The pruned filters are held at exactly zero by the training loop itself (their gradients are
multiplied by a 0/1 mask and the variables re-zeroed after every update), not by a constraint,
layer or callback class: B'' holds built-in Keras layers only, so plain Keras loads it in safe mode.

It runs on Keras's TensorFlow backend (a tf.function over a GradientTape) and on its JAX backend
(model.stateless_call under jax.value_and_grad and optimizer.stateless_apply, one jax.jit), with the
same masks, batches, order and epoch choice; each is seeded and deterministic on a CPU.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from badnet_prune.numerics.fine_tune_settings import FineTuneSettings
from badnet_prune.numerics.inference import accuracy_percent, compiled_forward, forward_labels, scale_images
from badnet_prune.numerics.pruned_model import build_pruned_model
from badnet_prune.numerics.tf_setup import configure_tensorflow, keras, tf


@dataclass(frozen=True)
class CleanSplit:
    """Which clean validation images trained and which chose the epoch (indices into the file, sorted)."""

    train_indices: np.ndarray
    holdout_indices: np.ndarray

    @property
    def sha256(self) -> str:
        """A digest of the split, for provenance: the same seed and image count give the same digest."""
        digest = hashlib.sha256()
        for part in (self.train_indices, self.holdout_indices):
            digest.update(np.asarray(part, dtype="<i8").tobytes())
            digest.update(b"|")
        return digest.hexdigest()


@dataclass(frozen=True)
class EpochRecord:
    """One epoch; accuracies in percent. Epoch 0 is B'_t before any update (its loss on the training part).

    train_seconds: wall time of the epoch's updates alone (0 for epoch 0), without the measurements.
    """

    epoch: int
    train_loss: float
    holdout_accuracy: float
    holdout_correct: int
    asr: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0


@dataclass(frozen=True)
class FineTuneResult:
    """B'' (the weights of the kept epoch), every epoch's record, the epoch kept and the split."""

    model: keras.Model
    epochs: list[EpochRecord]
    kept_epoch: int
    split: CleanSplit
    settings: FineTuneSettings


def split_clean(count: int, holdout_fraction: float, seed: int) -> CleanSplit:
    """A seeded split of `count` images: round(fraction x count) held out (at least 1), the rest train."""
    if count < 2:
        raise ValueError(f"fine-tuning needs at least 2 clean images to split, got {count}")
    holdout = min(max(1, round(holdout_fraction * count)), count - 1)
    order = np.random.default_rng(seed).permutation(count)
    return CleanSplit(np.sort(order[holdout:]), np.sort(order[:holdout]))


def prune_masks(model: keras.Model, prune_layer: str, pruned_channels: Sequence[int]) -> list[np.ndarray | None]:
    """Per trainable variable, a 0/1 mask (0 on the pruned filters) or None where every entry trains."""
    layer = model.get_layer(prune_layer)
    channels = np.asarray(list(pruned_channels), dtype=np.int64)
    held = {id(variable) for variable in layer.trainable_weights}
    masks: list[np.ndarray | None] = []
    for variable in model.trainable_variables:
        if id(variable) not in held or channels.size == 0:
            masks.append(None)
            continue
        mask = np.ones(variable.shape, dtype=np.float32)
        mask[..., channels] = 0.0  # kernel (..., out) and bias (out,): the output channel is the last axis
        masks.append(mask)
    return masks


def fine_tune(
    model: keras.Model,
    prune_layer: str,
    pruned_channels: Sequence[int],
    clean_images: np.ndarray,
    clean_labels: np.ndarray,
    poisoned_sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
    settings: FineTuneSettings | None = None,
    input_scale: float = 1.0,
    on_epoch: Callable[[int], None] | None = None,
) -> FineTuneResult:
    """Fine-tune B with `pruned_channels` of prune_layer pruned (B'_t) on part of the clean images.

    clean_images: the clean validation images (n, h, w, c), raw pixels as stored; input_scale is
    the model's convention (1 or 255). poisoned_sets: name -> (images, target labels), measured
    per epoch, never used to choose. B is not modified. on_epoch(epoch) is called after each epoch's
    measurements (progress).
    """
    settings = settings or FineTuneSettings()
    configure_tensorflow()
    clean_labels = np.asarray(clean_labels, dtype=np.int64)
    if len(clean_images) != len(clean_labels):
        raise ValueError(f"{len(clean_images)} clean images but {len(clean_labels)} labels")
    classes = int(model.output_shape[-1])
    if len(clean_labels) and not (clean_labels.min() >= 0 and clean_labels.max() < classes):
        raise ValueError(f"clean labels must be classes 0..{classes - 1} of the model, got {clean_labels.min()}.."
                         f"{clean_labels.max()}")
    if not np.isfinite(clean_images).all():
        raise ValueError("clean images hold NaN or infinite pixel values")
    for name, (x, y) in poisoned_sets.items():
        if len(x) != len(y):
            raise ValueError(f"poisoned set {name!r}: {len(x)} images but {len(y)} labels")
    _check_channels(model, prune_layer, pruned_channels)
    keras.utils.set_random_seed(settings.seed)
    if tf is not None:
        tf.config.experimental.enable_op_determinism()

    tuned = build_pruned_model(model, prune_layer, pruned_channels, name=f"{model.name}_fine_pruned")
    split = split_clean(len(clean_labels), settings.holdout_fraction, settings.seed)
    images = scale_images(np.asarray(clean_images, dtype=np.float32), input_scale)
    train_x, train_y = images[split.train_indices], clean_labels[split.train_indices]
    train_count = len(split.train_indices)
    holdout_x, holdout_y = images[split.holdout_indices], clean_labels[split.holdout_indices]
    poisoned = {name: (scale_images(np.asarray(x, dtype=np.float32), input_scale), np.asarray(y, dtype=np.int64))
                for name, (x, y) in poisoned_sets.items()}

    forward = compiled_forward(tuned)
    make_steps = _tf_steps if tf is not None else _jax_steps
    train_step, batch_loss = make_steps(tuned, prune_masks(tuned, prune_layer, pruned_channels), settings,
                                        train_x, train_y)

    def record(epoch: int, loss: float, seconds: float = 0.0) -> EpochRecord:
        predicted = forward_labels(forward, holdout_x)
        correct = int(np.count_nonzero(predicted == holdout_y))
        asr = {name: accuracy_percent(forward_labels(forward, x), y) for name, (x, y) in poisoned.items()}
        return EpochRecord(epoch, loss, 100.0 * correct / len(holdout_y), correct, asr, seconds)

    def mean_over_batches(step, order: np.ndarray) -> float:
        """Run `step` on every batch of `order`; the batch losses' mean weighted by batch size."""
        batches = [order[s : s + settings.batch_size] for s in range(0, train_count, settings.batch_size)]
        losses = [step(rows) for rows in batches]
        return float(np.dot([float(value) for value in losses], [len(rows) for rows in batches]) / train_count)

    records = [record(0, mean_over_batches(batch_loss, np.arange(train_count)))]
    best_correct, best_weights = records[0].holdout_correct, tuned.get_weights()
    rng = np.random.default_rng(settings.seed)
    low, high = (float(train_x.min()), float(train_x.max())) if train_count else (0.0, 1.0)
    for epoch in range(1, settings.epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(train_count)
        erasing = erase_boxes(rng, train_count, train_x.shape[1:3], settings.erase)

        def step(rows: np.ndarray, erasing: np.ndarray = erasing) -> Any:
            boxes = erasing[rows]
            noise = rng.uniform(low, high, (len(rows), *train_x.shape[1:])).astype(np.float32)
            return train_step(rows, boxes, noise)

        loss = mean_over_batches(step, order)
        records.append(record(epoch, loss, time.perf_counter() - start))
        if records[-1].holdout_correct >= best_correct:
            best_correct, best_weights = records[-1].holdout_correct, tuned.get_weights()
        if on_epoch is not None:
            on_epoch(epoch)
    kept = max(r.epoch for r in records if r.holdout_correct == best_correct)
    tuned.set_weights(best_weights)
    return FineTuneResult(tuned, records, kept, split, settings)


ERASE_AREA = (0.02, 0.4)  # the share of the image a rectangle covers (Zhong et al., Random Erasing)
ERASE_ASPECT = (0.3, 1 / 0.3)


def erase_boxes(rng: np.random.Generator, count: int, size: tuple[int, int], share: float) -> np.ndarray:
    """Per training image, the rectangle random erasing fills with noise this epoch: int32 rows (top, bottom,
    left, right), empty (all 0) for the images left whole. A drawn rectangle that does not fit is drawn again,
    up to ten times, as in Zhong et al.; after that the image stays whole."""
    height, width = size
    boxes = np.zeros((count, 4), dtype=np.int32)
    chosen = rng.random(count) < share
    for index in np.flatnonzero(chosen):
        for _ in range(10):
            area = rng.uniform(*ERASE_AREA) * height * width
            aspect = np.exp(rng.uniform(np.log(ERASE_ASPECT[0]), np.log(ERASE_ASPECT[1])))
            tall, wide = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
            if 0 < tall < height and 0 < wide < width:
                top, left = int(rng.integers(0, height - tall + 1)), int(rng.integers(0, width - wide + 1))
                boxes[index] = (top, top + tall, left, left + wide)
                break
    return boxes


def apply_erasing(images, boxes, noise):
    """images (n, h, w, c) with each row's rectangle of `boxes` replaced by `noise`, in Keras ops (either backend)."""
    ops = keras.ops
    rows = ops.reshape(ops.arange(ops.shape(images)[1], dtype="int32"), (1, -1, 1, 1))
    cols = ops.reshape(ops.arange(ops.shape(images)[2], dtype="int32"), (1, 1, -1, 1))

    def edge(column: int):
        return ops.reshape(boxes[:, column], (-1, 1, 1, 1))

    inside = ops.logical_and(ops.logical_and(rows >= edge(0), rows < edge(1)),
                             ops.logical_and(cols >= edge(2), cols < edge(3)))
    return ops.where(inside, noise, images)


def _check_channels(model: keras.Model, prune_layer: str, pruned_channels: Sequence[int]) -> None:
    filters = model.get_layer(prune_layer).get_weights()[0].shape[-1]
    channels = [int(c) for c in pruned_channels]
    if len(set(channels)) != len(channels) or any(not 0 <= c < filters for c in channels):
        raise ValueError(f"pruned channels of {prune_layer!r} must be distinct, in 0..{filters - 1}: {channels}")


def learning_rate_schedule(settings: FineTuneSettings, steps_per_epoch: int):
    """The rate per update: a linear warm-up from zero over warmup_epochs, then constant or a cosine to zero at
    the last update (CosineDecay's alpha 1 keeps the peak)."""
    total = max(1, settings.epochs * steps_per_epoch)
    warmup = min(settings.warmup_epochs * steps_per_epoch, total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else settings.learning_rate, decay_steps=total - warmup,
        alpha=0.0 if settings.schedule == "cosine" else 1.0,
        warmup_target=settings.learning_rate if warmup else None, warmup_steps=warmup)


def _optimizer(settings: FineTuneSettings, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = learning_rate_schedule(settings, steps_per_epoch)
    if settings.optimizer == "adam":
        return keras.optimizers.Adam(rate, global_clipnorm=settings.clip_norm)
    return keras.optimizers.SGD(rate, momentum=0.9, global_clipnorm=settings.clip_norm)


def _tf_steps(model: keras.Model, masks: list[np.ndarray | None], settings: FineTuneSettings,
              images: np.ndarray, labels: np.ndarray):
    """The compiled training step (masked update, pruned filters re-zeroed) and a loss-only step,
    both on the rows of the training part they are given (int64 indices)."""
    optimizer = _optimizer(settings, -(-len(labels) // settings.batch_size))
    # the training part lives in TensorFlow once; each step gathers its batch inside the compiled graph
    train_x, train_y = tf.convert_to_tensor(images), tf.convert_to_tensor(labels)
    variables = list(model.trainable_variables)
    held = [(variable, tf.constant(mask)) for variable, mask in zip(variables, masks, strict=True)
            if mask is not None]
    mask_of = {id(variable): mask for variable, mask in held}
    spec = [tf.TensorSpec((None,), tf.int64)]
    erasing = [tf.TensorSpec((None, 4), tf.int32), tf.TensorSpec((None, *images.shape[1:]), tf.float32)]

    def mean_loss(batch, rows, training: bool):
        probabilities = model(batch, training=training)
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(tf.gather(train_y, rows), probabilities))

    @tf.function(input_signature=spec + erasing, autograph=False)
    def train_step(rows, boxes, noise):
        with tf.GradientTape() as tape:
            loss = mean_loss(apply_erasing(tf.gather(train_x, rows), boxes, noise), rows, True)
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(
            [(g * mask_of[id(v)] if id(v) in mask_of else g, v) for g, v in zip(gradients, variables, strict=True)]
        )
        for variable, mask in held:  # an optimizer with weight decay would move them: keep them exactly zero
            variable.assign(variable * mask)
        return loss

    @tf.function(input_signature=spec, autograph=False)
    def batch_loss(rows):
        return mean_loss(tf.gather(train_x, rows), rows, False)

    return train_step, batch_loss


def _jax_steps(model: keras.Model, masks: list[np.ndarray | None], settings: FineTuneSettings,
               images: np.ndarray, labels: np.ndarray):
    """_tf_steps on Keras's JAX backend: the same two steps on the same rows, pure functions of the
    variables' values under one jax.jit each; the training step writes the new values back into the
    model's variables, so that the measurements and get_weights between steps see them.

    The masks and the training part are arguments, not constants of the program, so that every
    threshold and model of one architecture traces to the same program; each call still traces and
    compiles it anew (JAX_COMPILATION_CACHE_DIR lets XLA reuse the compiled code of programs that took
    it longer than its minimum, 1 s by default), once per batch length, two per epoch at most.
    """
    import jax
    import jax.numpy as jnp

    optimizer = _optimizer(settings, -(-len(labels) // settings.batch_size))
    trainable, fixed = list(model.trainable_variables), list(model.non_trainable_variables)
    optimizer.build(trainable)
    data = ([None if mask is None else jnp.asarray(mask) for mask in masks], jnp.asarray(images),
            jnp.asarray(labels, dtype=jnp.int32))
    call = _logits_call(model)

    def mean_loss(trainable_values, fixed_values, data, rows, training: bool, erasing=None):
        _, train_x, train_y = data
        batch = train_x[rows] if erasing is None else apply_erasing(train_x[rows], *erasing)
        outputs, from_logits, fixed_values = call(trainable_values, fixed_values, batch, training)
        loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(train_y[rows], outputs,
                                                                           from_logits=from_logits))
        return loss, fixed_values

    @jax.jit
    def update(trainable_values, fixed_values, optimizer_values, data, rows, erasing):
        held = data[0]
        (loss, fixed_values), gradients = jax.value_and_grad(mean_loss, has_aux=True)(
            trainable_values, fixed_values, data, rows, True, erasing)
        gradients = [g if mask is None else g * mask for g, mask in zip(gradients, held, strict=True)]
        trainable_values, optimizer_values = optimizer.stateless_apply(optimizer_values, gradients,
                                                                       trainable_values)
        # an optimizer with weight decay would move them: keep them exactly zero
        trainable_values = [v if mask is None else v * mask for v, mask in zip(trainable_values, held, strict=True)]
        return loss, trainable_values, fixed_values, optimizer_values

    @jax.jit
    def loss_only(trainable_values, fixed_values, data, rows):
        return mean_loss(trainable_values, fixed_values, data, rows, False)[0]

    def values(variables) -> list:
        return [variable.value for variable in variables]

    def train_step(rows: np.ndarray, boxes: np.ndarray, noise: np.ndarray):
        loss, new_trainable, new_fixed, new_optimizer = update(
            values(trainable), values(fixed), values(optimizer.variables), data, np.asarray(rows, dtype=np.int32),
            (boxes, noise))
        for variables, new in ((trainable, new_trainable), (fixed, new_fixed), (optimizer.variables, new_optimizer)):
            for variable, value in zip(variables, new, strict=True):
                variable.assign(value)
        return loss

    def batch_loss(rows: np.ndarray):
        return loss_only(values(trainable), values(fixed), data, np.asarray(rows, dtype=np.int32))

    return train_step, batch_loss


def _logits_call(model: keras.Model):
    """model.stateless_call for the loss, giving the softmax's logits where the output layer is a Dense
    with a softmax activation (DeepID's): Keras's TensorFlow backend computes the cross-entropy from those
    logits (it finds them on the softmax's output), its JAX backend from probabilities clipped at 1e-7,
    whose gradient is zero on a confidently wrong image. Returns (outputs, from_logits, non-trainable values).
    """
    last = model.layers[-1]
    if not (isinstance(last, keras.layers.Dense) and last.trainable and last.activation is keras.activations.softmax
            and len(model.outputs) == 1 and model.outputs[0] is last.output):
        def probabilities(trainable_values, fixed_values, x, training: bool):
            outputs, fixed_values = model.stateless_call(trainable_values, fixed_values, x, training=training)
            return outputs, False, fixed_values
        return probabilities

    features = keras.Model(model.inputs, last.input)
    trainable_at = {id(v): i for i, v in enumerate(model.trainable_variables)}
    fixed_at = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    feature_trainable = [trainable_at[id(v)] for v in features.trainable_variables]
    feature_fixed = [fixed_at[id(v)] for v in features.non_trainable_variables]
    kernel, bias = trainable_at[id(last.kernel)], trainable_at[id(last.bias)] if last.use_bias else None

    def logits(trainable_values, fixed_values, x, training: bool):
        hidden, new_fixed = features.stateless_call([trainable_values[i] for i in feature_trainable],
                                                    [fixed_values[i] for i in feature_fixed], x, training=training)
        fixed_values = list(fixed_values)
        for i, value in zip(feature_fixed, new_fixed, strict=True):
            fixed_values[i] = value
        out = keras.ops.matmul(hidden, trainable_values[kernel])
        return (out if bias is None else out + trainable_values[bias]), True, fixed_values
    return logits
