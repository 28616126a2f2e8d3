"""Evaluating B and each defense's networks (a pruned net and its repaired net G) on test data, from labels alone.

B's labels are the unpruned step, B'_t's the selected step; G_t's follow from both. So the
early layers run once per test file, however many thresholds there are. Robust accuracy (the share
of a poisoned file's images classified as their true label, leaving out those whose true label is
the target) is measured where the file carries true labels.
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

    network: str  # "B", or the name a stage gives its network ("B_prime", "G", "B_fine" ...)
    threshold: str  # the setting's exact key (a threshold's); '' for B
    test_set: EvaluationSet
    accuracy: float
    flagged: float | None
    image_count: int
    robust_accuracy: float | None = None


def evaluate_networks(
    labels_b: Mapping[EvaluationSet, np.ndarray],
    labels_pruned: Mapping[str, Mapping[EvaluationSet, np.ndarray]],
    truth: Mapping[EvaluationSet, np.ndarray],
    num_classes: int,
    *,
    names: tuple[str, str] = ("B_prime", "G"),
    with_b: bool = True,
    true_labels: Mapping[EvaluationSet, np.ndarray] | None = None,
) -> list[NetworkEvaluation]:
    """Rows for B (with_b), and per setting key the pruned network and its repaired net (`names`), on every
    test set in `truth`; true_labels: each poisoned set's labels before poisoning, where known."""
    known = true_labels or {}
    rows = [_row("B", "", name, labels_b[name], truth[name], None, known.get(name)) for name in truth] if with_b else []
    pruned_name, repaired_name = names
    for key, per_set in labels_pruned.items():
        for name in truth:
            rows.append(_row(pruned_name, key, name, per_set[name], truth[name], None, known.get(name)))
            labels_g = repaired_labels(labels_b[name], per_set[name], num_classes)
            rows.append(_row(repaired_name, key, name, labels_g, truth[name], num_classes, known.get(name)))
    return rows


def robust_accuracy_percent(labels: np.ndarray, targets: np.ndarray, true_labels: np.ndarray) -> float | None:
    """The share of poisoned images classified as their true label, over those whose true label is not the
    target (BackdoorBench's RA); None when every image's true label is its target."""
    counted = true_labels != targets
    if not counted.any():
        return None
    return 100.0 * np.count_nonzero(labels[counted] == true_labels[counted]) / np.count_nonzero(counted)


def _row(network: str, threshold: str, test_set: EvaluationSet, labels: np.ndarray, truth: np.ndarray,
         flag: int | None, true_labels: np.ndarray | None) -> NetworkEvaluation:
    count = len(truth)
    flagged = None if flag is None else 100.0 * np.count_nonzero(labels == flag) / count
    robust = None
    if true_labels is not None and not test_set.is_clean:
        robust = robust_accuracy_percent(labels, truth, true_labels)
    return NetworkEvaluation(
        network=network,
        threshold=threshold,
        test_set=test_set,
        accuracy=100.0 * np.count_nonzero(labels == truth) / count,
        flagged=flagged,
        image_count=count,
        robust_accuracy=robust,
    )
