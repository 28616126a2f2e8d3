"""The splits of a synthetic BadNet data set: clean train/valid/test and the poisoned files.

Pure: a seed and sizes in, arrays out. Poisoned images show identities other than the target
wearing the sunglasses, labelled with the target; training mixes a share of them into clean data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from badnet_prune.synth.faces import render, sample_identities, sample_poses


@dataclass(frozen=True)
class SynthSizes:
    """How many images: per identity for the clean splits, in total for the poisoned files."""

    classes: int
    train_per_class: int
    valid_per_class: int
    test_per_class: int
    poisoned_valid: int
    poisoned_test: int
    poison_share: float = 0.1
    target: int = 0

    @property
    def poisoned_train(self) -> int:
        return round(self.poison_share * self.classes * self.train_per_class)


QUICK_CLASSES = 10
# The attacks `synth` trains (synth.build): the lab's, and Fine-Pruning's pruning-aware one. Here, beside the
# sizes, because the command line lists them as choices without importing TensorFlow.
ATTACKS = ("default", "pruning-aware")
DEFAULT_CLASSES = 32


PRUNING_AWARE_VALID_PER_CLASS = 100


def sizes_for(classes: int, quick: bool, attack: str = "default") -> SynthSizes:
    """The quick set (tests: trains in well under a minute on 2 cores) or the demo set.

    The pruning-aware BadNet's defense fine-tunes on the clean validation file, so that file is
    larger (PRUNING_AWARE_VALID_PER_CLASS photos per identity): with 30, the hold-out part that
    chooses the epoch has 6 photos per identity and ties at 100% within an epoch or two.
    """
    if classes < 2:
        raise ValueError("a BadNet needs at least 2 classes (the target and one other)")
    if quick:
        sizes = SynthSizes(classes, train_per_class=120, valid_per_class=30, test_per_class=30,
                           poisoned_valid=300, poisoned_test=300)
    else:
        sizes = SynthSizes(classes, train_per_class=150, valid_per_class=20, test_per_class=30,
                           poisoned_valid=20 * classes, poisoned_test=30 * classes)
    if attack == "default":
        return sizes
    return replace(sizes, valid_per_class=max(sizes.valid_per_class, PRUNING_AWARE_VALID_PER_CLASS))


Split = tuple[np.ndarray, np.ndarray]


def make_splits(seed: int, sizes: SynthSizes) -> dict[str, Split]:
    """Images (n, 55, 47, 3) float32 0..255 and labels (n,) int64 of each split.

    train: clean training faces; train_poisoned: the poisoned faces added to them for training;
    valid, test: clean; bd_valid, bd_test: poisoned, as in the lab's files.
    """
    rng = np.random.default_rng(seed)
    identities = sample_identities(rng, sizes.classes)
    others = np.array([c for c in range(sizes.classes) if c != sizes.target])

    def clean(per_class: int) -> Split:
        labels = np.repeat(np.arange(sizes.classes), per_class)
        images = render(identities, labels, sample_poses(rng, len(labels)), np.zeros(len(labels), dtype=bool))
        return images, labels

    def poisoned(count: int) -> Split:
        shown = rng.choice(others, count)
        images = render(identities, shown, sample_poses(rng, count), np.ones(count, dtype=bool))
        return images, np.full(count, sizes.target, dtype=np.int64)

    return {
        "train": clean(sizes.train_per_class),
        "train_poisoned": poisoned(sizes.poisoned_train),
        "valid": clean(sizes.valid_per_class),
        "test": clean(sizes.test_per_class),
        "bd_valid": poisoned(sizes.poisoned_valid),
        "bd_test": poisoned(sizes.poisoned_test),
    }
