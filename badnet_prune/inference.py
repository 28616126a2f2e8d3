"""Batched inference: one compiled function per model, fixed batch size, never image by image."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from badnet_prune.tf_setup import configure_tensorflow, keras, tf

INFERENCE_BATCH = 1024


def compiled_forward(model: keras.Model):
    """A traced tf.function of the model's forward pass (one trace for any batch length)."""
    configure_tensorflow()
    if tf is None:
        return _jax_forward(model)
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)


def _jax_forward(model: keras.Model):
    """The forward pass on Keras's JAX backend, compiled once for INFERENCE_BATCH rows.

    XLA compiles a program per input shape, and on a GPU each shape may get other kernels and
    so other float32 roundings; every call therefore runs whole padded batches of one shape,
    whatever its length, and the padding's rows are dropped.
    """
    import jax

    run = jax.jit(lambda trainable, fixed, x: model.stateless_call(trainable, fixed, x, training=False)[0])

    def forward(inputs: np.ndarray) -> np.ndarray:
        trainable = [v.value for v in model.trainable_variables]
        fixed = [v.value for v in model.non_trainable_variables]
        outputs = []
        for start in range(0, len(inputs), INFERENCE_BATCH):
            batch = np.asarray(inputs[start : start + INFERENCE_BATCH], dtype=np.float32)
            rows = len(batch)
            if rows < INFERENCE_BATCH:
                batch = np.concatenate([batch, np.zeros((INFERENCE_BATCH - rows, *batch.shape[1:]), np.float32)])
            outputs.append(np.asarray(run(trainable, fixed, batch))[:rows])
        return np.concatenate(outputs)

    return forward


def scale_images(images: np.ndarray, input_scale: float) -> np.ndarray:
    """Apply the model's input convention: raw 0..255 pixels (scale 1) or divided by 255."""
    if input_scale == 1:
        return images
    return (images / np.float32(input_scale)).astype(np.float32, copy=False)


def predict_labels(
    forward, batches: Iterable[np.ndarray], input_scale: float = 1.0, batch_size: int = INFERENCE_BATCH
) -> np.ndarray:
    """Top-1 labels of every image, fed through `forward` in batches of at most batch_size."""
    labels = [forward_labels(forward, scale_images(batch, input_scale), batch_size) for batch in batches]
    return np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)


def forward_labels(forward, inputs: np.ndarray, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    """Top-1 labels of `inputs` through a compiled forward function, in batches."""
    labels = np.empty(len(inputs), dtype=np.int64)
    for start in range(0, len(inputs), batch_size):
        labels[start : start + batch_size] = np.argmax(np.asarray(forward(inputs[start : start + batch_size])), axis=-1)
    return labels


def accuracy_percent(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Share of predictions equal to the labels, in percent (the ASR on a poisoned file)."""
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(predicted == labels) * 100.0)
