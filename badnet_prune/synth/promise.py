"""The pruning-aware attack's own promise: its backdoor survives the pruning defense.

Fine-Pruning's attack hides the backdoor in the channels the clean data keeps active, so pruning alone, at
the 10% accuracy-drop threshold, should leave most of it. A trained model that does not (its backdoor was
carried by channels the defense prunes first) would make a fine-pruning benchmark look better than it is,
so the generator measures it on the validation files it writes, exactly as the defense would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from badnet_prune.numerics.activations import channel_means, cut_activations, live_channels, rank_activation_batches
from badnet_prune.numerics.inference import accuracy_percent, compiled_forward, predict_labels
from badnet_prune.numerics.labelers import CutLabeler
from badnet_prune.numerics.network_split import split_network
from badnet_prune.numerics.pruned_model import build_pruned_model
from badnet_prune.numerics.pruning import LabeledSet, prune_range
from badnet_prune.numerics.ranking import rank_channels
from badnet_prune.numerics.selection import select_steps
from badnet_prune.numerics.tf_setup import keras

PROMISE_THRESHOLD = 0.10
PROMISE_ASR = 50.0


@dataclass(frozen=True)
class PruningPromise:
    """At the threshold's step of the pruning defense on clean validation data, pruning alone's ASR on the
    poisoned validation set; kept when it is at least PROMISE_ASR."""

    threshold: float
    step: int | None
    prune_alone_asr: float | None

    @property
    def kept(self) -> bool:
        return self.prune_alone_asr is not None and self.prune_alone_asr >= PROMISE_ASR


def pruning_promise(model: keras.Model, valid: tuple[np.ndarray, np.ndarray],
                    bd_valid: tuple[np.ndarray, np.ndarray], threshold: float = PROMISE_THRESHOLD) -> PruningPromise:
    """Rank conv_3 by mean pool_3 activation on the clean images, prune cumulatively, take the first step whose
    clean accuracy drops by at least `threshold` (as defend's first policy), and measure the ASR there."""
    split = split_network(model)
    cut = cut_activations(compiled_forward(split.head), [valid[0]], 1.0)
    order = rank_channels(channel_means(rank_activation_batches(cut)))
    clean = LabeledSet("", valid[1], live_channels(cut, split.pruned_values))
    rows = prune_range(CutLabeler(split, {"": cut}), clean, {}, order, 0, len(order) + 1)
    accuracies = [row.clean_accuracy for row in rows]
    step = select_steps(accuracies[0], accuracies, (threshold,))[threshold]
    if step is None:
        return PruningPromise(threshold, None, None)
    pruned = build_pruned_model(model, split.prune_layer, [int(c) for c in order[:step]])
    asr = accuracy_percent(predict_labels(compiled_forward(pruned), [bd_valid[0]]), bd_valid[1])
    return PruningPromise(threshold, step, asr)
