"""Choosing B'_t: the pruning step for each relative accuracy-drop threshold t.

A step qualifies for t when acc0 - acc >= t * acc0. Policy `first` (the lab's rule) takes the first
qualifying step: t is where pruning stops, so its B'_t may have lost far more than t when one step
costs a lot. Policy `within` reads t as a budget: B'_t is the last step before the first one whose
drop exceeds t, the most pruning that stays within it (step 0 at least, never None). Policy
`notebook` reproduces the lab notebook's loop, which overwrote its file for a threshold at every
step whose drop lay between that threshold and the next one, and stopped at the first step that
crossed the largest: so B'_t is the last such step before that stop.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

POLICIES = ("first", "within", "notebook")
# What each policy means, in the words the table, summary.json and the report name it by.
RULES = {
    "first": "the first step whose drop reaches t",
    "within": "the most pruning whose drop stays within t",
    "notebook": "the lab notebook's overwrite loop",
}


def validate_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return policy


def validate_thresholds(thresholds: Sequence[float]) -> list[float]:
    values = [float(t) for t in thresholds]
    if not values:
        raise ValueError("at least one threshold is needed")
    for value in values:
        if not 0.0 < value < 1.0:
            raise ValueError(f"threshold {value:g} is outside (0, 1): thresholds are relative accuracy drops")
    if len(set(values)) != len(values):
        raise ValueError("thresholds repeat")
    return sorted(values)


def qualifies(acc0: float, accuracy: np.ndarray, threshold: float) -> np.ndarray:
    return (acc0 - np.asarray(accuracy, dtype=np.float64)) >= threshold * acc0


def select_steps(
    acc0: float, accuracies: Sequence[float], thresholds: Sequence[float], policy: str = "first"
) -> dict[float, int | None]:
    """Map each threshold to the selected step (index into accuracies), or None if never reached.

    accuracies[k] is the clean validation accuracy with k channels pruned (accuracies[0] is B's).
    """
    validate_policy(policy)
    ordered = validate_thresholds(thresholds)
    accuracy = np.asarray(accuracies, dtype=np.float64)
    first = {t: _first(qualifies(acc0, accuracy, t)) for t in ordered}
    if policy == "first":
        return first
    if policy == "within":
        exceeds = {t: _first((acc0 - accuracy) > t * acc0) for t in ordered}
        return {t: len(accuracy) - 1 if exceeds[t] is None else exceeds[t] - 1 for t in ordered}
    largest = ordered[-1]
    stop = first[largest]
    end = len(accuracy) if stop is None else stop
    drop = (acc0 - accuracy[:end]) / acc0 if acc0 else np.zeros(end)
    selected: dict[float, int | None] = {largest: stop}
    for lower, upper in itertools.pairwise(ordered):
        in_band = np.flatnonzero((drop >= lower) & (drop < upper))
        selected[lower] = int(in_band[-1]) if in_band.size else None
    return {t: selected[t] for t in ordered}


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def relative_drop_percent(acc0: float, accuracy: float) -> float:
    """A step's clean accuracy drop as thresholds count it: relative to acc0, in percent (t = 0.02 is 2%)."""
    return 100.0 * (acc0 - accuracy) / acc0 if acc0 else 0.0
