"""The two ways to label images with channels pruned, behind one `labels_at` signature.

CutLabeler runs only the tail on cached cut activations; WholeModelLabeler zeroes the
filters and runs the whole model (the reference, and the fallback for graphs with no split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from badnet_prune.numerics.activations import live_channels
from badnet_prune.numerics.inference import INFERENCE_BATCH, compiled_forward, forward_labels, scale_images
from badnet_prune.numerics.network_split import SplitNetwork
from badnet_prune.numerics.pruned_model import build_pruned_model, zeroed_filters
from badnet_prune.numerics.tf_setup import keras

TAIL_BATCH = 4096
DENSE_SHARE = 0.9


class CutLabeler:
    """labels_at over cached cut activations: pruned channels take their pruned value.

    It keeps, per data set, the cut with the channels of its last request pruned, so a request
    that prunes one channel more (as prune_range's steps do) writes that channel alone instead
    of copying the cut and writing every pruned channel again; and only on the images where the
    channel is live, since elsewhere it already holds its pruned value.
    """

    def __init__(
        self,
        split: SplitNetwork,
        activations: Mapping[str, np.ndarray],
        forward=None,
        live: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """`live`, per set, is live_channels of its activations where the caller has it already."""
        if split.tail is None:
            raise ValueError("the network has no split; use WholeModelLabeler")
        self._forward = forward if forward is not None else compiled_forward(split.tail)
        self._pruned_values = split.pruned_values
        self._activations = activations
        self._masked: dict[str, tuple[tuple[int, ...], np.ndarray]] = {}
        self._live = dict(live or {})
        self._live_rows: dict[str, list[np.ndarray]] = {}

    def __call__(self, key: str, pruned: Sequence[int], rows: np.ndarray | None = None) -> np.ndarray:
        cut = self.masked_cut(key, pruned)
        if rows is None:
            return forward_labels(self._forward, cut, TAIL_BATCH)
        if len(rows) < DENSE_SHARE * len(cut):
            return forward_labels(self._forward, cut[rows], TAIL_BATCH)
        # nearly every row: running the few others costs less than gathering these
        return forward_labels(self._forward, cut, TAIL_BATCH)[rows]

    def masked_cut(self, key: str, pruned: Sequence[int]) -> np.ndarray:
        """The cut of data set `key` with `pruned` at their pruned value (do not modify it)."""
        wanted = tuple(int(c) for c in pruned)
        if not wanted:
            return self._activations[key]
        known = self._masked.get(key)
        if known is not None and wanted[: len(known[0])] == known[0]:
            cut = known[1]
            live_rows = self._live_rows_of(key)
            for channel in wanted[len(known[0]) :]:
                if live_rows[channel].size:
                    cut[live_rows[channel], ..., channel] = self._pruned_values[channel]
        else:
            pruned_channels = np.zeros(len(self._pruned_values), dtype=bool)
            pruned_channels[list(wanted)] = True
            # one pass over the cut; writing many channels through fancy indexing is several times slower
            cut = np.where(pruned_channels, self._pruned_values, self._activations[key])
        self._masked[key] = (wanted, cut)
        return cut

    def _live_rows_of(self, key: str) -> list[np.ndarray]:
        """Per channel, the images on which it differs from its pruned value (computed once per set)."""
        if key not in self._live_rows:
            live = self._live.get(key)
            if live is None:
                live = live_channels(self._activations[key], self._pruned_values)
            self._live_rows[key] = [np.flatnonzero(column) for column in live.T]
        return self._live_rows[key]


class WholeModelLabeler:
    """labels_at the reference way: zero the filters in a copy of the model, run all of it."""

    def __init__(self, model: keras.Model, prune_layer: str, images: Mapping[str, np.ndarray], input_scale: float):
        self._copy = build_pruned_model(model, prune_layer, [], name="reference")
        self._layer = self._copy.get_layer(prune_layer)
        self._original = [np.asarray(w) for w in model.get_layer(prune_layer).get_weights()]
        self._forward = compiled_forward(self._copy)
        self._images = images
        self._input_scale = input_scale

    def __call__(self, key: str, pruned: Sequence[int], rows: np.ndarray | None = None) -> np.ndarray:
        self._layer.set_weights(zeroed_filters(self._original, pruned))
        images = self._images[key] if rows is None else self._images[key][rows]
        return forward_labels(self._forward, scale_images(images, self._input_scale), INFERENCE_BATCH)

