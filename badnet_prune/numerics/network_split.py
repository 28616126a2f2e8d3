"""Splitting a model where pruning starts to matter.

Pruning a channel of a Conv2D only changes that channel's output, and the channelwise layers
right after it (pooling, activations) keep it a channel of its own. So everything up to the
last such layer (the cut) is computed once per data set, and every pruning step only runs the
tail, with the pruned channels of the cut set to the value a zeroed filter produces there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.tf_setup import keras

CHANNELWISE_LAYERS = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.Activation,
    keras.layers.ReLU,
)


@dataclass(frozen=True)
class SplitNetwork:
    """A model and the layers of the defense: the pruned Conv2D and where the split falls.

    head: input -> cut; tail: cut -> output (None when the graph has no clean split, so every
    step must run the whole model). pruned_values[c] is the cut's value for a pruned channel c.
    rank_from_cut: cut -> rank layer output, or None when the rank layer is the cut itself.
    rank_from_input: input -> rank layer output, where the rank layer cannot be reached from the
    cut or the network has no split; then rank_from_cut is None.
    programs: compiled functions of this network kept for its life (the dense engine's), so that
    every task on a loaded model reuses them instead of tracing again.
    """

    model: keras.Model
    prune_layer: str
    rank_layer: str
    cut_layer: str
    channel_count: int
    head: keras.Model
    tail: keras.Model | None
    pruned_values: np.ndarray
    rank_from_cut: keras.Model | None
    rank_from_input: keras.Model | None
    programs: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_split(self) -> bool:
        return self.tail is not None


def split_network(model: keras.Model, prune_layer: str = "conv_3", rank_layer: str = "pool_3") -> SplitNetwork:
    """Find the cut after `prune_layer` and build head and tail models sharing the weights."""
    conv = _get_layer(model, prune_layer, "--prune-layer")
    if not isinstance(conv, keras.layers.Conv2D):
        raise BadInputError("--prune-layer", f"layer {prune_layer!r} is a {type(conv).__name__}, not a Conv2D")
    ranked = _get_layer(model, rank_layer, "--rank-layer")
    channel_count = int(conv.filters)
    rank_channels = int(ranked.output.shape[-1])
    if rank_channels != channel_count:
        raise BadInputError(
            "--rank-layer",
            f"layer {rank_layer!r} has {rank_channels} channels, but {prune_layer!r} has {channel_count} filters",
        )
    cut = _channelwise_end(conv)
    head = keras.Model(model.input, cut.output, name="head")
    pruned_values = _pruned_values(conv, cut)
    try:
        tail = keras.Model(cut.output, model.output, name="tail")
    except ValueError:
        tail = None
    rank_from_cut = rank_from_input = None
    if tail is None:  # no cut activations are kept for an unsplit network: rank from the images
        rank_from_input = keras.Model(model.input, ranked.output, name="rank")
    elif ranked is not cut:
        try:
            rank_from_cut = keras.Model(cut.output, ranked.output, name="rank")
        except ValueError:
            rank_from_input = keras.Model(model.input, ranked.output, name="rank")
    return SplitNetwork(
        model=model,
        prune_layer=prune_layer,
        rank_layer=rank_layer,
        cut_layer=cut.name,
        channel_count=channel_count,
        head=head,
        tail=tail,
        pruned_values=pruned_values,
        rank_from_cut=rank_from_cut,
        rank_from_input=rank_from_input,
    )


def _get_layer(model: keras.Model, name: str, option: str) -> keras.layers.Layer:
    try:
        return model.get_layer(name)
    except ValueError:
        names = ", ".join(layer.name for layer in model.layers)
        raise BadInputError(option, f"the model has no layer {name!r} (its layers: {names})") from None


def _channelwise_end(conv: keras.layers.Layer) -> keras.layers.Layer:
    """Follow single consumers that treat each channel on its own; stop before the first that mixes."""
    layer = conv
    while len(layer._outbound_nodes) == 1:
        consumer = layer._outbound_nodes[0].operation
        if not isinstance(consumer, CHANNELWISE_LAYERS):
            break
        layer = consumer
    return layer


def _pruned_values(conv: keras.layers.Conv2D, cut: keras.layers.Layer) -> np.ndarray:
    """What a zeroed filter becomes at the cut: activation(0) passed through the channelwise layers."""
    height, width = (int(d) for d in conv.output.shape[1:3])
    value = keras.ops.convert_to_numpy(conv.activation(keras.ops.zeros((1, height, width, conv.filters))))
    layer = conv
    while layer is not cut:
        layer = layer._outbound_nodes[0].operation
        value = keras.ops.convert_to_numpy(layer(value))
    return value.reshape(-1, conv.filters)[0].astype(np.float32)
