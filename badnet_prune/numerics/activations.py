"""Activations computed once per data set: the cut of a split network, and what they tell.

The cut activations are all that pruning steps need, so they are the unit of caching: a
worker computes them once per (model, data file) and every channel range reuses them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from badnet_prune.numerics.inference import INFERENCE_BATCH, scale_images


def cut_activations(head_forward, batches: Iterable[np.ndarray], input_scale: float) -> np.ndarray:
    """Run the head over every image batch once; returns (n, h, w, C) float32."""
    parts = []
    for batch in batches:
        for start in range(0, len(batch), INFERENCE_BATCH):
            parts.append(np.asarray(head_forward(scale_images(batch[start : start + INFERENCE_BATCH], input_scale))))
    return np.concatenate(parts)


def live_channels(activations: np.ndarray, pruned_values: np.ndarray) -> np.ndarray:
    """(n, C) bool: whether image i's channel c differs anywhere from its pruned value.

    Pruning a channel that is already at its pruned value for an image leaves that image's
    input to the tail bit-identical, so its prediction cannot change.
    """
    flat = activations.reshape(activations.shape[0], -1, activations.shape[-1])
    return (flat != pruned_values).any(axis=1)


def channel_means(rank_batches: Iterable[np.ndarray]) -> np.ndarray:
    """Mean of each channel over all images and positions, accumulated in float64."""
    total = None
    count = 0
    for batch in rank_batches:
        sums = batch.reshape(-1, batch.shape[-1]).astype(np.float64).sum(axis=0)
        total = sums if total is None else total + sums
        count += int(np.prod(batch.shape[:-1]))
    if total is None or count == 0:
        raise ValueError("no activations to rank")
    return total / count


def rank_activation_batches(cut: np.ndarray, rank_forward=None) -> Iterable[np.ndarray]:
    """The rank layer's output in batches: the cut activations themselves when the rank layer is the
    cut (pool_3 in DeepID), else rank_forward (the layers from the cut to the rank layer) over them."""
    if rank_forward is None:
        yield cut
        return
    for start in range(0, len(cut), INFERENCE_BATCH):
        yield np.asarray(rank_forward(cut[start : start + INFERENCE_BATCH]))
