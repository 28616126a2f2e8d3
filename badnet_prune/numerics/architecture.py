"""The DeepID architecture of the lab's BadNets, with the layer names of its weight files.

Weights-only files (like the lab's bd_weights.h5) carry no architecture, so the tool builds
this one and fills it by layer name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from badnet_prune.numerics.tf_setup import keras

IMAGE_SHAPE = (55, 47, 3)
# The layers build_deepid makes that a weights-only file's prune and rank layers may name, with their
# classes: what a file's inputs are checked against before TensorFlow loads (files.model_inspect).
CONV_LAYERS = ("conv_1", "conv_2", "conv_3", "conv_4")
POOL_LAYERS = ("pool_1", "pool_2", "pool_3")


def build_deepid(num_classes: int = 1283, image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> keras.Model:
    """DeepID as in REFERENCE.md: three conv/pool stages, two 160-unit branches added, softmax."""
    from badnet_prune.numerics.tf_setup import keras

    inputs = keras.Input(shape=image_shape, name="input")
    x = keras.layers.Conv2D(20, (4, 4), activation="relu", name="conv_1")(inputs)
    x = keras.layers.MaxPooling2D((2, 2), name="pool_1")(x)
    x = keras.layers.Conv2D(40, (3, 3), activation="relu", name="conv_2")(x)
    x = keras.layers.MaxPooling2D((2, 2), name="pool_2")(x)
    x = keras.layers.Conv2D(60, (3, 3), activation="relu", name="conv_3")(x)
    pool_3 = keras.layers.MaxPooling2D((2, 2), name="pool_3")(x)
    fc_1 = keras.layers.Dense(160, name="fc_1")(keras.layers.Flatten(name="flatten_1")(pool_3))
    conv_4 = keras.layers.Conv2D(80, (2, 2), activation="relu", name="conv_4")(pool_3)
    fc_2 = keras.layers.Dense(160, name="fc_2")(keras.layers.Flatten(name="flatten_2")(conv_4))
    merged = keras.layers.Activation("relu", name="activation_1")(keras.layers.Add(name="add_1")([fc_1, fc_2]))
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="output")(merged)
    return keras.Model(inputs, outputs, name="deepid")
