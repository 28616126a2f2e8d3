"""Evaluating B, every B'_t and every G_t on test data, from labels alone.

B's labels are the unpruned step, B'_t's the selected step; G_t's follow from both. So the
early layers run once per test file, however many thresholds there are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from badnet_prune.repair import repaired_labels

CLEAN = "clean"


@dataclass(frozen=True)
class NetworkEvaluation:
    """One network on one test set: accuracy (ASR on a poisoned set) and share flagged as N, in percent."""

    network: str  # "B", "B_prime" or "G"
    threshold: float  # 0.0 for B
    dataset: str  # "clean" or the poisoned set's name
    accuracy: float
    flagged: float | None
    image_count: int


def evaluate_networks(
    labels_b: Mapping[str, np.ndarray],
    labels_b_prime: Mapping[float, Mapping[str, np.ndarray]],
    truth: Mapping[str, np.ndarray],
    num_classes: int,
) -> list[NetworkEvaluation]:
    """Rows for B, and B'_t and G_t per threshold, on every test set named in `truth`."""
    rows = [_row("B", 0.0, name, labels_b[name], truth[name], None) for name in truth]
    for threshold, per_set in labels_b_prime.items():
        for name in truth:
            rows.append(_row("B_prime", threshold, name, per_set[name], truth[name], None))
            labels_g = repaired_labels(labels_b[name], per_set[name], num_classes)
            rows.append(_row("G", threshold, name, labels_g, truth[name], num_classes))
    return rows


def _row(network: str, threshold: float, name: str, labels: np.ndarray, truth: np.ndarray, flag: int | None):
    count = len(truth)
    flagged = None if flag is None else 100.0 * np.count_nonzero(labels == flag) / count
    return NetworkEvaluation(
        network=network,
        threshold=threshold,
        dataset=name,
        accuracy=100.0 * np.count_nonzero(labels == truth) / count,
        flagged=flagged,
        image_count=count,
    )
