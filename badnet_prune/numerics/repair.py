"""The repaired net G_t: B's label where B and B'_t agree, class N ("backdoor detected") otherwise.

G is built from built-in layers and keras.ops only, so plain Keras loads it in safe mode in a
process that never imported this project. Its labels are also computed directly from B's and
B'_t's labels (repaired_labels), which is how the defense evaluates it without running B twice.
"""

from __future__ import annotations

import numpy as np

from badnet_prune.numerics.tf_setup import keras


def repaired_labels(labels_b: np.ndarray, labels_b_prime: np.ndarray, num_classes: int) -> np.ndarray:
    """G's labels: B's where B and B' agree, num_classes (= N) where they disagree."""
    return np.where(labels_b == labels_b_prime, labels_b, num_classes)


def build_repaired_net(model_b: keras.Model, model_b_prime: keras.Model, name: str = "G") -> keras.Model:
    """A model with N + 1 outputs: B's probabilities and 0 where B and B' agree, one-hot N otherwise.

    G holds a copy of B (same architecture and weights), not B itself: calling B on G's input would
    add a node to B's graph that keeps G and B' alive for as long as B lives, which in a worker is
    the life of its cached model (about 2 MB per threshold task at DeepID's size).
    """
    inputs = keras.Input(shape=model_b.input_shape[1:], name="image")
    copy_b = keras.models.clone_model(model_b)
    copy_b.set_weights(model_b.get_weights())
    probabilities_b = copy_b(inputs)
    probabilities_b_prime = model_b_prime(inputs)
    agree = keras.ops.cast(
        keras.ops.equal(keras.ops.argmax(probabilities_b, axis=-1), keras.ops.argmax(probabilities_b_prime, axis=-1)),
        probabilities_b.dtype,
    )
    agree = keras.ops.expand_dims(agree, axis=-1)
    outputs = keras.ops.concatenate([probabilities_b * agree, 1.0 - agree], axis=-1)
    return keras.Model(inputs, outputs, name=name)
