"""Neural Cleanse (Wang et al., IEEE S&P 2019): a minimal trigger reverse-engineered per target label, on clean
images only, and the anomaly index of the smallest trigger norms.

For a target label t: a mask m in [0, 1]^(h x w) (m = tanh(a) / 2 + 1/2) and a pattern p in [0, 255]^(h x w x c)
(p = 255 (tanh(b) / 2 + 1/2), raw pixels as stored; the model's input_scale is applied after stamping), such
that x' = (1 - m) x + m p is classified as t, minimising cross-entropy to t + lambda_t |m|_1 with Adam.
lambda_t starts at the settings' lambda_l1 and, every adjust_every steps, is multiplied by 1.5 where the label's
attack succeeded on at least target_asr of those steps' images and divided by 1.5 ** 1.5 where it did not: the
paper's factors on a fixed cadence (its patience counters and cost-zero warm-up are left out). The label's
result is the smallest-norm mask of a check at which the attack succeeded on target_asr of the check's images
(the last one where none did), with the attack success of that trigger measured on every image given.

Vectorised: `reverse_engineer(model, images, targets)` optimises len(targets) masks and patterns in one batch:
each step stamps the step's B images with each of the K triggers and runs the K x B images through the model
once. Every label's parameters, Adam moments and lambda are its own (the loss is a sum over labels, so no
gradient crosses labels), its initial values are drawn from (seed, label) and the batches from the seed alone,
so a label's result is the same whichever range it is optimised in: `reverse_engineer_loop` (one label at a
time, the plain per-class loop) gives the same numbers up to float rounding. TensorFlow backend only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from badnet_prune.numerics.neural_cleanse_settings import NeuralCleanseSettings
from badnet_prune.numerics.tf_setup import configure_tensorflow, keras, tf

CONSISTENCY = 1.4826  # MAD to a normal distribution's standard deviation
ANOMALY_CUTOFF = 2.0
UP, DOWN = 1.5, 1.5**1.5  # the paper's lambda factors
ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-7
PROBABILITY_FLOOR = 1e-12


@dataclass(frozen=True)
class ReversedTriggers:
    """Per target label (in `targets` order): the mask's L1 norm, the attack success of its reversed trigger on
    all the given clean images (a fraction), whether it reached target_asr during the optimisation, its final
    lambda, the mask (K, h, w) in [0, 1] and pattern (K, h, w, c) in raw pixels [0, 255]."""

    targets: np.ndarray
    norms: np.ndarray
    attack_success: np.ndarray
    reached: np.ndarray
    lambdas: np.ndarray
    masks: np.ndarray
    patterns: np.ndarray
    seconds: float


@dataclass(frozen=True)
class Anomaly:
    """The anomaly index of every label's norm (|norm - median| / (1.4826 MAD)), the labels flagged (norm below the
    median and index above 2), the largest index among labels below the median, and a score in [0, 1]:
    a / (a + 2) for that index a (0.5 exactly at the paper's cut-off, 0 where no norm lies below the median)."""

    median: float
    mad: float
    index: np.ndarray
    flagged: tuple[int, ...]
    max_index: float
    score: float


def initial_parameters(seed: int, target: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A label's unconstrained mask (h, w) and pattern (h, w, c) parameters, drawn from (seed, label)."""
    rng = np.random.default_rng([seed, target])
    height, width, channels = shape
    mask = rng.uniform(-1.0, 1.0, (height, width)).astype(np.float32)
    pattern = rng.uniform(-1.0, 1.0, (height, width, channels)).astype(np.float32)
    return mask, pattern


def batch_rows(seed: int, image_count: int, steps: int, batch_size: int) -> np.ndarray:
    """(steps, batch) rows of the images each step uses: the same for every label, drawn from the seed alone."""
    rng = np.random.default_rng([seed, 2**31])
    return rng.integers(0, image_count, (steps, min(batch_size, image_count)))


def reverse_engineer(model: keras.Model, images: np.ndarray, targets: Sequence[int],
                     settings: NeuralCleanseSettings | None = None, input_scale: float = 1.0,
                     on_progress: Callable[[int], None] | None = None) -> ReversedTriggers:
    """Reverse-engineer one trigger per label of `targets`, all in one batch (see the module's docstring).

    images: clean images (N, h, w, c), raw pixels 0..255 as stored; input_scale is the model's convention.
    on_progress(steps done) after each check of lambda."""
    settings = settings or NeuralCleanseSettings()
    configure_tensorflow()
    if tf is None:
        raise NotImplementedError("Neural Cleanse runs on Keras's TensorFlow backend only")
    start = time.perf_counter()
    images = np.asarray(images, dtype=np.float32)
    targets = np.asarray(list(targets), dtype=np.int64)
    classes = int(model.output_shape[-1])
    if not len(targets) or targets.min() < 0 or targets.max() >= classes:
        raise ValueError(f"targets must be labels 0..{classes - 1} of the model, got {targets.tolist()}")
    if images.ndim != 4 or not len(images) or not np.isfinite(images).all():
        raise ValueError("Neural Cleanse needs finite clean images (N, h, w, c)")
    shape = tuple(int(size) for size in images.shape[1:])
    count = len(targets)
    starts = [initial_parameters(settings.seed, int(t), shape) for t in targets]
    mask_raw = tf.Variable(np.stack([m for m, _ in starts]))
    pattern_raw = tf.Variable(np.stack([p for _, p in starts]))
    moments = [tf.Variable(tf.zeros_like(v)) for v in (mask_raw, pattern_raw, mask_raw, pattern_raw)]
    lambdas = np.full(count, settings.lambda_l1, dtype=np.float32)
    rows = batch_rows(settings.seed, len(images), settings.steps, settings.batch_size)
    scale = np.float32(input_scale)
    target_tensor = tf.constant(targets, dtype=tf.int32)
    lr = np.float32(settings.learning_rate)

    def triggers():
        mask = tf.tanh(mask_raw) / 2.0 + 0.5
        pattern = 255.0 * (tf.tanh(pattern_raw) / 2.0 + 0.5)
        return mask, pattern

    def stamped_probabilities(batch, mask, pattern):
        m = mask[:, None, :, :, None]  # (K, 1, h, w, 1)
        stamped = (1.0 - m) * batch[None] + m * pattern[:, None]  # (K, B, h, w, c)
        flat = tf.reshape(stamped, (-1, *shape)) / scale
        probabilities = model(flat, training=False)
        return tf.reshape(probabilities, (count, -1, classes))

    @tf.function(reduce_retracing=True)
    def step(batch, lambda_now, t):
        with tf.GradientTape() as tape:
            mask, pattern = triggers()
            probabilities = stamped_probabilities(batch, mask, pattern)
            chosen = tf.gather(probabilities, target_tensor, axis=2, batch_dims=1)  # (K, B)
            cross_entropy = -tf.reduce_mean(tf.math.log(tf.maximum(chosen, PROBABILITY_FLOOR)), axis=1)
            norms = tf.reduce_sum(mask, axis=(1, 2))
            loss = tf.reduce_sum(cross_entropy + lambda_now * norms)
        gradients = tape.gradient(loss, [mask_raw, pattern_raw])
        for variable, gradient, first, second in zip((mask_raw, pattern_raw), gradients, moments[:2], moments[2:],
                                                     strict=True):
            first.assign(ADAM_BETA_1 * first + (1.0 - ADAM_BETA_1) * gradient)
            second.assign(ADAM_BETA_2 * second + (1.0 - ADAM_BETA_2) * tf.square(gradient))
            corrected = lr * tf.sqrt(1.0 - ADAM_BETA_2**t) / (1.0 - ADAM_BETA_1**t)
            variable.assign_sub(corrected * first / (tf.sqrt(second) + ADAM_EPSILON))
        hits = tf.reduce_sum(tf.cast(tf.argmax(probabilities, axis=2, output_type=tf.int32)
                                     == target_tensor[:, None], tf.float32), axis=1)
        return hits, norms

    best_norm = np.full(count, np.inf)
    best_mask = np.zeros((count, *shape[:2]), np.float32)
    best_pattern = np.zeros((count, *shape), np.float32)
    reached = np.zeros(count, dtype=bool)
    hits = np.zeros(count)
    seen = 0
    for index in range(settings.steps):
        batch = tf.constant(images[rows[index]])
        step_hits, _ = step(batch, tf.constant(lambdas), tf.constant(np.float32(index + 1)))
        hits += step_hits.numpy()
        seen += len(rows[index])
        if (index + 1) % settings.adjust_every == 0 or index + 1 == settings.steps:
            success = hits / seen
            mask, pattern = (value.numpy() for value in triggers())
            norms = mask.sum(axis=(1, 2))
            good = success >= settings.target_asr
            better = good & (norms < best_norm)
            best_norm[better], best_mask[better], best_pattern[better] = norms[better], mask[better], pattern[better]
            reached |= good
            lambdas = np.where(good, lambdas * UP, lambdas / DOWN).astype(np.float32)
            hits[:] = 0
            seen = 0
            if on_progress is not None:
                on_progress(index + 1)
    last_mask, last_pattern = (value.numpy() for value in triggers())
    best_mask[~reached], best_pattern[~reached] = last_mask[~reached], last_pattern[~reached]
    success = attack_success(model, images, best_mask, best_pattern, targets, input_scale)
    return ReversedTriggers(targets=targets, norms=best_mask.sum(axis=(1, 2)).astype(np.float64),
                            attack_success=success, reached=reached, lambdas=lambdas.astype(np.float64),
                            masks=best_mask, patterns=best_pattern, seconds=time.perf_counter() - start)


def reverse_engineer_loop(model: keras.Model, images: np.ndarray, targets: Sequence[int],
                          settings: NeuralCleanseSettings | None = None, input_scale: float = 1.0) -> ReversedTriggers:
    """The plain per-class loop: the same optimisation one label at a time (same seed, same batches)."""
    start = time.perf_counter()
    parts = [reverse_engineer(model, images, [int(t)], settings, input_scale) for t in targets]
    return ReversedTriggers(
        targets=np.asarray(list(targets), dtype=np.int64),
        **{name: np.concatenate([getattr(part, name) for part in parts])
           for name in ("norms", "attack_success", "reached", "lambdas", "masks", "patterns")},
        seconds=time.perf_counter() - start)


def attack_success(model: keras.Model, images: np.ndarray, masks: np.ndarray, patterns: np.ndarray,
                   targets: np.ndarray, input_scale: float = 1.0, batch_size: int = 256) -> np.ndarray:
    """Per label, the fraction of the images its trigger (mask, pattern) makes the model classify as the label."""
    success = np.zeros(len(targets))
    for k, target in enumerate(targets):
        m = masks[k][None, :, :, None]
        hits = 0
        for first in range(0, len(images), batch_size):
            stamped = (1.0 - m) * images[first:first + batch_size] + m * patterns[k][None]
            predicted = np.argmax(np.asarray(model(stamped.astype(np.float32) / np.float32(input_scale),
                                                   training=False)), axis=1)
            hits += int((predicted == target).sum())
        success[k] = hits / len(images)
    return success


def anomaly(norms: np.ndarray, cutoff: float = ANOMALY_CUTOFF) -> Anomaly:
    """The paper's outlier test over every label's mask norm (see Anomaly)."""
    norms = np.asarray(norms, dtype=np.float64)
    if norms.ndim != 1 or not len(norms) or not np.isfinite(norms).all():
        raise ValueError("the anomaly index needs one finite norm per label")
    median = float(np.median(norms))
    mad = float(np.median(np.abs(norms - median)))
    deviation = np.abs(norms - median)
    # half the norms or more equal (MAD zero): any other one stands out without bound
    index = deviation / (CONSISTENCY * mad) if mad > 0 else np.where(deviation > 0, np.inf, 0.0)
    below = norms < median
    flagged = tuple(int(label) for label in np.flatnonzero(below & (index > cutoff)))
    max_index = float(index[below].max()) if below.any() else 0.0
    score = 1.0 if np.isinf(max_index) else max_index / (max_index + cutoff)
    return Anomaly(median=median, mad=mad, index=index, flagged=flagged, max_index=max_index, score=score)
