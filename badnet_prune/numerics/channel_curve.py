"""Clean accuracy and ASR of B with sets of channels pruned across several Conv2D layers.

The exact sparse engine (pruning.prune_range) serves one prune layer; a defense that prunes in several
(CLP in every convolution, ANP on the layers its settings name) is measured here instead, by the whole
model: one copy of B whose pruned filters are zeroed per point and one compiled forward pass over every
set in batches (the configured inference path). Points that prune the same channels are evaluated once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from badnet_prune.numerics.inference import compiled_forward, forward_labels, scale_images
from badnet_prune.numerics.pruned_model import build_pruned_layers_model, zeroed_filters
from badnet_prune.numerics.tf_setup import keras

# layer name -> pruned channels of that Conv2D
Pruning = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class CurvePoint:
    """B with `pruned` channels zeroed, on the clean set and each poisoned set; accuracies in percent."""

    key: str
    pruned: dict[str, tuple[int, ...]]
    clean_correct: int
    clean_accuracy: float
    asr: dict[str, float] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    @property
    def pruned_count(self) -> int:
        return sum(len(channels) for channels in self.pruned.values())


def canonical(pruning: Pruning) -> dict[str, tuple[int, ...]]:
    """The pruning with each layer's channels sorted and distinct, layers without any dropped."""
    return {name: tuple(sorted({int(c) for c in channels})) for name, channels in pruning.items() if len(channels)}


def evaluate_prunings(
    model: keras.Model,
    prunings: Mapping[str, Pruning],
    clean: tuple[np.ndarray, np.ndarray],
    poisoned: Mapping[str, tuple[np.ndarray, np.ndarray]],
    input_scale: float = 1.0,
) -> dict[str, CurvePoint]:
    """One CurvePoint per key of `prunings`; images are raw pixels as stored, labels are the truth (the
    target label on a poisoned set). B is not modified."""
    if "" in poisoned:
        raise ValueError("a poisoned set needs a name")
    wanted = {key: canonical(pruning) for key, pruning in prunings.items()}
    layers = sorted({name for pruning in wanted.values() for name in pruning})
    for name in layers:
        filters = int(model.get_layer(name).get_weights()[0].shape[-1])
        bad = [c for pruning in wanted.values() for c in pruning.get(name, ()) if not 0 <= c < filters]
        if bad:
            raise ValueError(f"layer {name!r} has channels 0..{filters - 1}; asked to prune {sorted(set(bad))}")
    original = {name: [np.asarray(w) for w in model.get_layer(name).get_weights()] for name in layers}
    copy = build_pruned_layers_model(model, {}, name="curve")
    forward = compiled_forward(copy)
    sets = {"": clean, **poisoned}
    images = {name: scale_images(np.asarray(x, dtype=np.float32), input_scale) for name, (x, _) in sets.items()}
    truth = {name: np.asarray(y, dtype=np.int64) for name, (_, y) in sets.items()}

    measured: dict[tuple, tuple[int, dict[str, int]]] = {}
    points = {}
    for key, pruning in wanted.items():
        identity = tuple(sorted(pruning.items()))
        if identity not in measured:
            for name in layers:
                copy.get_layer(name).set_weights(zeroed_filters(original[name], pruning.get(name, ())))
            correct = {name: int(np.count_nonzero(forward_labels(forward, images[name]) == truth[name]))
                       for name in sets}
            measured[identity] = (correct.pop(""), correct)
        clean_correct, hits = measured[identity]
        points[key] = CurvePoint(
            key=key, pruned=pruning, clean_correct=clean_correct,
            clean_accuracy=_percent(clean_correct, len(truth[""])),
            asr={name: _percent(hits[name], len(truth[name])) for name in poisoned}, hits=dict(hits),
        )
    return points


def _percent(count: int, total: int) -> float:
    return 100.0 * count / total if total else float("nan")
