"""Fine-pruning's second half: fine-tune the pruned network B'_t on clean data, pruned filters held at zero.

Pure numerics: arrays and a model in, a new model and per-epoch records out (no Celery, SQL or
files). Only the defender's data is used: the clean validation images, split by the seed into a
training part and a hold-out part. The epoch kept is the one with the best hold-out clean
accuracy (ties: the earliest; epoch 0 is B'_t itself), so no choice ever sees poisoned or test
data; the ASR on each poisoned validation set is measured per epoch for the record only.

The pruned filters are held at exactly zero by the training loop itself (their gradients are
multiplied by a 0/1 mask and the variables re-zeroed after every update), not by a constraint,
layer or callback class: B'' holds built-in Keras layers only, so plain Keras loads it in safe mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from badnet_prune.inference import accuracy_percent, compiled_forward, forward_labels, scale_images
from badnet_prune.pruned_model import build_pruned_model
from badnet_prune.tf_setup import configure_tensorflow, keras, tf


class FineTuneSettings(BaseModel):
    """How B'_t is fine-tuned; the defaults were chosen by measurement (bench/RESULTS.md, "Fine-pruning").

    Strict and frozen, so a sweep file's [fine_tune] table or the CLI's options validate once here:
    unknown keys, strings for numbers and out-of-range values are refused, naming the field.

    optimizer: "adam" (Keras defaults besides the rate) or "sgd" (momentum 0.9).
    learning_rate: 3e-3 with adam. On the pruning-aware synthetic BadNet, 1e-3 leaves 30-60% ASR
        (the network relearns the clean task a few steps from B'_t, backdoor included); 3e-3 first
        knocks hold-out accuracy down, then relearns it without the backdoor in most seeds. SGD at
        1e-3 diverges on raw 0..255 pixels, and at 3e-4 leaves 70-99% ASR.
    epochs: 10 after epoch 0; the hold-out accuracy chooses among all of them (epoch 0 included).
    batch_size: 64, the batch size the synthetic BadNets are trained with.
    seed: fixes the split, the batch order and the initial state of anything random in training.
    holdout_fraction: the share of the clean validation images held out to choose the epoch.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: Annotated[float, Field(gt=0.0, lt=1.0)] = 3e-3
    epochs: Annotated[int, Field(ge=1, le=1000)] = 10
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 64
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    holdout_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2


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
    """One epoch; accuracies in percent. Epoch 0 is B'_t before any update (its loss on the training part)."""

    epoch: int
    train_loss: float
    holdout_accuracy: float
    holdout_correct: int
    asr: dict[str, float] = field(default_factory=dict)


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
) -> FineTuneResult:
    """Fine-tune B with `pruned_channels` of prune_layer pruned (B'_t) on part of the clean images.

    clean_images: the clean validation images (n, h, w, c), raw pixels as stored; input_scale is
    the model's convention (1 or 255). poisoned_sets: name -> (images, target labels), measured
    per epoch, never used to choose. B is not modified.
    """
    settings = settings or FineTuneSettings()
    configure_tensorflow()
    if tf is None:
        raise RuntimeError("fine-tuning needs Keras's TensorFlow backend")
    clean_labels = np.asarray(clean_labels, dtype=np.int64)
    if len(clean_images) != len(clean_labels):
        raise ValueError(f"{len(clean_images)} clean images but {len(clean_labels)} labels")
    for name, (x, y) in poisoned_sets.items():
        if len(x) != len(y):
            raise ValueError(f"poisoned set {name!r}: {len(x)} images but {len(y)} labels")
    _check_channels(model, prune_layer, pruned_channels)
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()

    tuned = build_pruned_model(model, prune_layer, pruned_channels, name=f"{model.name}_fine_pruned")
    split = split_clean(len(clean_labels), settings.holdout_fraction, settings.seed)
    images = scale_images(np.asarray(clean_images, dtype=np.float32), input_scale)
    train_x, train_y = images[split.train_indices], clean_labels[split.train_indices]
    holdout_x, holdout_y = images[split.holdout_indices], clean_labels[split.holdout_indices]
    poisoned = {name: (scale_images(np.asarray(x, dtype=np.float32), input_scale), np.asarray(y, dtype=np.int64))
                for name, (x, y) in poisoned_sets.items()}

    forward = compiled_forward(tuned)
    train_step, batch_loss = _steps(tuned, prune_masks(tuned, prune_layer, pruned_channels), settings)

    def record(epoch: int, loss: float) -> EpochRecord:
        predicted = forward_labels(forward, holdout_x)
        correct = int(np.count_nonzero(predicted == holdout_y))
        asr = {name: accuracy_percent(forward_labels(forward, x), y) for name, (x, y) in poisoned.items()}
        return EpochRecord(epoch, loss, 100.0 * correct / len(holdout_y), correct, asr)

    batch = settings.batch_size
    untuned_loss = sum(float(batch_loss(train_x[s : s + batch], train_y[s : s + batch])) * len(train_y[s : s + batch])
                       for s in range(0, len(train_y), batch)) / len(train_y)
    records = [record(0, untuned_loss)]
    best_correct, best_weights = records[0].holdout_correct, tuned.get_weights()
    rng = np.random.default_rng(settings.seed)
    for epoch in range(1, settings.epochs + 1):
        order = rng.permutation(len(train_y))
        losses = [train_step(train_x[rows], train_y[rows]) for rows in
                  (order[s : s + batch] for s in range(0, len(order), batch))]
        sizes = np.diff(np.append(np.arange(0, len(order), batch), len(order)))
        loss = float(np.dot([float(value) for value in losses], sizes) / len(order))
        records.append(record(epoch, loss))
        if records[-1].holdout_correct > best_correct:
            best_correct, best_weights = records[-1].holdout_correct, tuned.get_weights()
    kept = next(r.epoch for r in records if r.holdout_correct == best_correct)
    tuned.set_weights(best_weights)
    return FineTuneResult(tuned, records, kept, split, settings)


def _check_channels(model: keras.Model, prune_layer: str, pruned_channels: Sequence[int]) -> None:
    filters = model.get_layer(prune_layer).get_weights()[0].shape[-1]
    channels = [int(c) for c in pruned_channels]
    if len(set(channels)) != len(channels) or any(not 0 <= c < filters for c in channels):
        raise ValueError(f"pruned channels of {prune_layer!r} must be distinct, in 0..{filters - 1}: {channels}")


def _steps(model: keras.Model, masks: list[np.ndarray | None], settings: FineTuneSettings):
    """The compiled training step (masked update, pruned filters re-zeroed) and a loss-only step."""
    if settings.optimizer == "adam":
        optimizer = keras.optimizers.Adam(settings.learning_rate)
    else:
        optimizer = keras.optimizers.SGD(settings.learning_rate, momentum=0.9)
    variables = list(model.trainable_variables)
    held = [(variable, tf.constant(mask)) for variable, mask in zip(variables, masks, strict=True)
            if mask is not None]
    mask_of = {id(variable): mask for variable, mask in held}
    spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32), tf.TensorSpec((None,), tf.int64))

    def mean_loss(x, y, training: bool):
        probabilities = model(x, training=training)
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probabilities))

    @tf.function(input_signature=spec)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = mean_loss(x, y, True)
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(
            [(g * mask_of[id(v)] if id(v) in mask_of else g, v) for g, v in zip(gradients, variables, strict=True)]
        )
        for variable, mask in held:  # an optimizer with weight decay would move them: keep them exactly zero
            variable.assign(variable * mask)
        return loss

    @tf.function(input_signature=spec)
    def batch_loss(x, y):
        return mean_loss(x, y, False)

    return train_step, batch_loss
