"""B'_t as a Keras model: a copy of B with the pruned filters zeroed, in one Conv2D or in several."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    return build_pruned_layers_model(model, {prune_layer: channels}, name=name)


def build_pruned_layers_model(model: keras.Model, pruned: Mapping[str, Sequence[int]], name: str = "B_prime"):
    """A new model with B's architecture and weights, per named Conv2D the given filters zeroed.

    Built-in layers only (a clone of B), so plain Keras loads it in safe mode; B is not modified.
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer_name, channels in pruned.items():
        copy.get_layer(layer_name).set_weights(zeroed_filters(model.get_layer(layer_name).get_weights(), channels))
    copy.name = name
    return copy
