"""The pruning sweep: clean accuracy and ASR after each of k = 0..C channels is pruned.

Two engines give the same rows. The sparse one (prune_range): step k's labels are step k-1's,
except for the images on which the newly pruned channel was live, and only those run through the
tail again, so most of the work is skipped (the fastest on CPUs). The dense one
(prune_range_dense, badnet_prune.numerics.dense_engine): every image at every step, many steps per call on
the device (the fastest on GPUs). Every step is exact either way: the labels the whole pruned
network gives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# labels_at(set name, pruned channels, rows or None for all) -> top-1 labels of those rows
LabelsAt = Callable[[str, Sequence[int], np.ndarray | None], np.ndarray]
# step_labels(set name, order, start, stop) -> (stop - start, n) labels of steps start..stop-1
StepLabels = Callable[[str, Sequence[int], int, int], np.ndarray]


@dataclass(frozen=True)
class LabeledSet:
    """A data set as the sweep sees it: its labels and, per image and channel, liveness.

    `name` is what labels_at knows the set by; it is distinct for every set a labeler holds
    (the clean set's never equals a poisoned set's), whatever the poison names are.
    """

    name: str
    labels: np.ndarray
    live: np.ndarray


@dataclass(frozen=True)
class PruneStep:
    """One row of the sweep: k channels pruned; accuracies are percentages."""

    step: int
    channel: int | None
    fraction_pruned: float
    clean_correct: int
    clean_accuracy: float
    asr: dict[str, float] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)


def prune_range(
    labels_at: LabelsAt,
    clean: LabeledSet,
    poisoned: Mapping[str, LabeledSet],
    order: Sequence[int],
    start: int,
    stop: int,
) -> list[PruneStep]:
    """Steps [start, stop) of the cumulative sweep in `order`; any split into ranges gives the same rows."""
    sets = _checked_sets(clean, poisoned, order, start, stop)
    current = {data.name: labels_at(data.name, list(order[:start]), None).copy() for data in sets}
    steps = [_step_row(start, order, current, clean, poisoned)]
    for step in range(start + 1, stop):
        channel = int(order[step - 1])
        for data in sets:
            rows = np.flatnonzero(data.live[:, channel])
            if rows.size:
                current[data.name][rows] = labels_at(data.name, list(order[:step]), rows)
        steps.append(_step_row(step, order, current, clean, poisoned))
    return steps


def prune_range_dense(
    step_labels: StepLabels,
    clean: LabeledSet,
    poisoned: Mapping[str, LabeledSet],
    order: Sequence[int],
    start: int,
    stop: int,
) -> list[PruneStep]:
    """The rows of prune_range, from every image's labels at every step of the range."""
    sets = _checked_sets(clean, poisoned, order, start, stop)
    labels = {data.name: step_labels(data.name, order, start, stop) for data in sets}
    return [
        _step_row(step, order, {name: per_step[step - start] for name, per_step in labels.items()}, clean, poisoned)
        for step in range(start, stop)
    ]


def _checked_sets(
    clean: LabeledSet, poisoned: Mapping[str, LabeledSet], order: Sequence[int], start: int, stop: int
) -> list[LabeledSet]:
    """The sets of a range, once the range, the order (each channel exactly once) and the names are valid."""
    channel_count = len(order)
    if sorted(int(c) for c in order) != list(range(channel_count)):
        raise ValueError(f"the pruning order is not a permutation of the channels 0..{channel_count - 1}")
    if not 0 <= start < stop <= channel_count + 1:
        raise ValueError(f"step range [{start}, {stop}) is outside 0..{channel_count}")
    sets = [clean, *poisoned.values()]
    if len({data.name for data in sets}) != len(sets):
        raise ValueError(f"data sets share a name: {[data.name for data in sets]}")
    return sets


def pruned_labels(
    labels_at: LabelsAt, data: LabeledSet, pruned: Sequence[int], unpruned: np.ndarray
) -> np.ndarray:
    """Labels with `pruned` channels pruned: B's labels (`unpruned`), except on the images where
    some pruned channel is live, which alone run through the tail again."""
    rows = np.flatnonzero(data.live[:, np.asarray(list(pruned), dtype=np.int64)].any(axis=1))
    if rows.size == len(unpruned):
        return labels_at(data.name, list(pruned), None)
    labels = unpruned.copy()
    if rows.size:
        labels[rows] = labels_at(data.name, list(pruned), rows)
    return labels


def _step_row(
    step: int,
    order: Sequence[int],
    current: Mapping[str, np.ndarray],
    clean: LabeledSet,
    poisoned: Mapping[str, LabeledSet],
) -> PruneStep:
    correct = int(np.count_nonzero(current[clean.name] == clean.labels))
    hits = {name: int(np.count_nonzero(current[data.name] == data.labels)) for name, data in poisoned.items()}
    return PruneStep(
        step=step,
        channel=None if step == 0 else int(order[step - 1]),
        fraction_pruned=step / len(order),
        clean_correct=correct,
        clean_accuracy=100.0 * correct / len(clean.labels),
        asr={name: 100.0 * hits[name] / len(data.labels) for name, data in poisoned.items()},
        hits=hits,
    )
