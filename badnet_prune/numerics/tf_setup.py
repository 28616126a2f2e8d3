"""TensorFlow start-up in one place: quiet logs and GPU memory growth.

Every module imports `tf` and `keras` from here, so these settings apply before TensorFlow
initialises (they cannot be changed afterwards). TensorFlow is the tool's default backend; the
worker path also runs on Keras's JAX backend (KERAS_BACKEND=jax), where `tf` is None and TensorFlow
is never imported, so that a GPU machine with JAX but no TensorFlow can run workers.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """TensorFlow's C++ start-up banner goes to fd 2 before any log setting applies; hide only that."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf: Any = None
with _stderr_silenced():
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
    elif "tensorflow" not in sys.modules:
        # Keras imports TensorFlow lazily wherever it is installed (its serialisation looks for
        # tf.TensorShape in every layer config), and TensorFlow would take a GPU's memory and seconds
        # of start-up: on another backend it is not importable in this process.
        sys.modules["tensorflow"] = None

__all__ = ["accelerator_present", "configure_tensorflow", "keras", "tf"]


class _ExpectedRetracing(logging.Filter):
    """compiled_forward traces one tf.function per model by design (a worker or a report holds many
    models), which TensorFlow reports as excessive retracing of the same lambda: drop only that hint."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_ExpectedRetracing())

_configured = False


def configure_tensorflow() -> None:
    """Let every GPU grow its memory instead of taking all of it, so processes can share a card,
    and keep float32 exact on GPUs: TensorFloat-32 (on by default on Ampere and later) rounds
    matmul and convolution inputs to 10 mantissa bits, enough to flip near-tie labels against
    the float32 figures a CPU gives."""
    global _configured
    if _configured:
        return
    if tf is None:
        _configure_jax()
        _configured = True
        return
    with _stderr_silenced():
        gpus = tf.config.list_physical_devices("GPU")
    tf.config.experimental.enable_tensor_float_32_execution(False)
    for gpu in gpus:
        # RuntimeError: TensorFlow was initialised already and memory growth can no longer change.
        with suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    _configured = True


def accelerator_present() -> bool:
    """Whether the backend computes on a GPU (or another accelerator) rather than the CPU."""
    configure_tensorflow()
    if tf is not None:
        with _stderr_silenced():
            return bool(tf.config.list_physical_devices("GPU"))
    import jax

    return jax.default_backend() != "cpu"


def _configure_jax() -> None:
    """JAX's default float32 matmul and convolution precision on GPUs is TensorFloat-32 as well."""
    if keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
