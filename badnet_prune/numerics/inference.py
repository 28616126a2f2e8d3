"""Batched inference: one compiled function per model, fixed batch size, never image by image."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import numpy as np

from badnet_prune.numerics.tf_setup import accelerator_present, configure_tensorflow, keras, tf

INFERENCE_BATCH = 1024


def compiled_forward(model: keras.Model):
    """A traced tf.function of the model's forward pass (one trace for any batch length)."""
    configure_tensorflow()
    if tf is None:
        return _jax_forward(model)
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)


def _jax_forward(model: keras.Model):
    """The forward pass on Keras's JAX backend, compiled once for jax_rows() rows.

    XLA compiles a program per input shape, and on a GPU each shape may get other kernels and
    so other float32 roundings; every call therefore runs whole padded batches of one shape,
    whatever its length, and the padding's rows are dropped. The program takes the weights as
    arguments, so every model of one architecture shares it (shared_jax_program).

    The shape is jax_rows(): one per device, smaller on a CPU, where padding costs its full work.
    """
    import jax

    run = shared_jax_program(model, "forward", lambda template: jax.jit(
        lambda trainable, fixed, x: template.stateless_call(trainable, fixed, x, training=False)[0]))
    padded = jax_rows()

    def forward(inputs: np.ndarray) -> np.ndarray:
        trainable, fixed = jax_weights(model)
        outputs = []
        for start in range(0, len(inputs), padded):
            batch = np.asarray(inputs[start : start + padded], dtype=np.float32)
            rows = len(batch)
            if rows < padded:
                batch = np.concatenate([batch, np.zeros((padded - rows, *batch.shape[1:]), np.float32)])
            outputs.append(np.asarray(run(trainable, fixed, batch))[:rows])
        return np.concatenate(outputs)

    return forward


JAX_CPU_ROWS = 64


def jax_rows() -> int:
    """The one batch length of every call of a JAX forward program: INFERENCE_BATCH on an accelerator;
    JAX_CPU_ROWS on a CPU, which does the padding's work in full: 1024 rows for the 60 images of a
    fine-tuning hold-out, or for a step's few live images in the sparse engine, cost 16 times 64's."""
    return INFERENCE_BATCH if accelerator_present() else JAX_CPU_ROWS


def jax_weights(model: keras.Model) -> tuple[list, list]:
    """The model's trainable and other variables' current values, as stateless_call takes them."""
    return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]


_jax_programs: OrderedDict[tuple[str, Hashable], Any] = OrderedDict()
JAX_PROGRAMS_KEPT = 64


def shared_jax_program(model: keras.Model, kind: Hashable, build: Callable[[keras.Model], Any]):
    """build(template), a jitted program of (trainable, fixed, ...), kept per architecture and `kind`.

    XLA compiles a program in about a second, as long as a lab-size model's whole sweep on a GPU:
    compiling per model would cap a GPU worker's throughput. Models with the same architecture (layer
    configuration and variable shapes, as the seeds of one recipe or retrained copies have) give the
    same traced computation once their weights are arguments, so the first model of an architecture
    is the template of a program every later one reuses. Models whose configuration cannot be
    serialised get a program of their own.
    """
    architecture = _architecture(model)
    if architecture is None:
        return build(model)
    key = (architecture, kind)
    program = _jax_programs.get(key)
    if program is None:
        program = _jax_programs[key] = build(model)
        while len(_jax_programs) > JAX_PROGRAMS_KEPT:
            _jax_programs.popitem(last=False)
    _jax_programs.move_to_end(key)
    return program


def _architecture(model: keras.Model) -> str | None:
    """A digest of what fixes the computation given the weights: the configuration and variable shapes."""
    try:
        config = json.dumps(model.get_config(), sort_keys=True, default=repr)
    except (NotImplementedError, TypeError, ValueError):
        return None
    variables = [(v.path, tuple(v.shape), str(v.dtype), bool(v.trainable)) for v in model.variables]
    text = json.dumps([type(model).__name__, model.input_shape, config, variables], default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


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
