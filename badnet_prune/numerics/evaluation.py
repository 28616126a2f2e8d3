"""Evaluating B, every B'_t and every G_t on test data, from labels alone.

B's labels are the unpruned step, B'_t's the selected step; G_t's follow from both. So the
early layers run once per test file, however many thresholds there are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from badnet_prune.numerics.repair import repaired_labels


@dataclass(frozen=True, order=True)
class EvaluationSet:
    """A test set by its role: the clean test set, or one poisoned test set by its poison's name.

    Clean and poisoned sets never share a namespace: a poison cannot be mistaken for the clean set.
    """

    role: str  # "clean_test" or "poisoned_test"
    poison_name: str = ""

    @property
    def is_clean(self) -> bool:
        return self.role == "clean_test"


CLEAN_TEST = EvaluationSet("clean_test")


def poisoned_test(name: str) -> EvaluationSet:
    return EvaluationSet("poisoned_test", name)


@dataclass(frozen=True)
class NetworkEvaluation:
    """One network on one test set: accuracy (ASR on a poisoned set) and share flagged as N, in percent."""

    network: str  # "B", "B_prime" or "G"
    threshold: str  # the threshold's exact key; '' for B
    test_set: EvaluationSet
    accuracy: float
    flagged: float | None
    image_count: int


def evaluate_networks(
    labels_b: Mapping[EvaluationSet, np.ndarray],
    labels_b_prime: Mapping[str, Mapping[EvaluationSet, np.ndarray]],
    truth: Mapping[EvaluationSet, np.ndarray],
    num_classes: int,
) -> list[NetworkEvaluation]:
    """Rows for B, and B'_t and G_t per threshold key, on every test set in `truth`."""
    rows = [_row("B", "", name, labels_b[name], truth[name], None) for name in truth]
    for threshold, per_set in labels_b_prime.items():
        for name in truth:
            rows.append(_row("B_prime", threshold, name, per_set[name], truth[name], None))
            labels_g = repaired_labels(labels_b[name], per_set[name], num_classes)
            rows.append(_row("G", threshold, name, labels_g, truth[name], num_classes))
    return rows


def _row(network: str, threshold: str, test_set: EvaluationSet, labels: np.ndarray, truth: np.ndarray,
         flag: int | None) -> NetworkEvaluation:
    count = len(truth)
    flagged = None if flag is None else 100.0 * np.count_nonzero(labels == flag) / count
    return NetworkEvaluation(
        network=network,
        threshold=threshold,
        test_set=test_set,
        accuracy=100.0 * np.count_nonzero(labels == truth) / count,
        flagged=flagged,
        image_count=count,
    )
