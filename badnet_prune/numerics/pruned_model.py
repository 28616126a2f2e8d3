"""B'_t as a Keras model: a copy of B with the pruned filters of the prune layer zeroed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from badnet_prune.numerics.tf_setup import keras


def zeroed_filters(weights: Sequence[np.ndarray], channels: Sequence[int]) -> list[np.ndarray]:
    """Conv2D weights with kernel[..., c] and bias[c] set to zero for every pruned channel c."""
    pruned = [np.array(w, copy=True) for w in weights]
    index = np.asarray(list(channels), dtype=np.int64)
    pruned[0][..., index] = 0.0
    if len(pruned) > 1:
        pruned[1][index] = 0.0
    return pruned


def build_pruned_model(model: keras.Model, prune_layer: str, channels: Sequence[int], name: str = "B_prime"):
    """A new model with B's architecture and weights, the given filters of prune_layer zeroed."""
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    layer = pruned.get_layer(prune_layer)
    layer.set_weights(zeroed_filters(model.get_layer(prune_layer).get_weights(), channels))
    pruned.name = name
    return pruned
