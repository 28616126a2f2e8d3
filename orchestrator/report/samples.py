"""A handful of test images labelled by B and by each stored repaired network (G, and G'' where fine-pruning
ran, and any later defense's): what the defense does, visibly.

Unlike the rest of the report this needs files, not rows: B's file and the data files the
model_data table names, and the G files the artifacts table names. Files move and disks get
cleaned, so a missing or unreadable file becomes a sentence in the report, not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from badnet_prune.numerics.thresholds import parse_threshold
from badnet_prune.orchestrator.report.data import ModelReport
from badnet_prune.orchestrator.verdicts import repaired

CLEAN = "clean"
POOL = 240  # images labelled per test file, from which the shown ones are picked
ATTACK, FLAGGED = "attack", "flagged"  # what the page colours: the attacker's label, and N


@dataclass(frozen=True)
class Sample:
    dataset: str  # 'clean' or the poison name
    index: int  # in the test file
    label: int  # the file's label (the attacker's target on a poisoned file)
    b: int
    repaired: dict[str, int]  # each repaired network's label by column ("G 2%", "G'' 2%"; num_classes = N)


@dataclass(frozen=True)
class Samples:
    """Labelled samples with their images, or why there are none (`missing`)."""

    samples: list[Sample] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # the repaired networks labelled, in stage and setting order
    num_classes: int = 0
    missing: list[str] = field(default_factory=list)

    def name(self, label: int) -> str:
        return "N" if label == self.num_classes else str(label)

    def mark(self, sample: Sample, label: int) -> str | None:
        """'flagged' when a network said N, 'attack' when it gave a poisoned image the attacker's target."""
        if label == self.num_classes:
            return FLAGGED
        return ATTACK if sample.dataset != CLEAN and label == sample.label else None

    def caption(self, sample: Sample) -> list[tuple[str, str | None]]:
        """The lines under a sample's image, each with its mark (None: plain)."""
        lines = [(f"{sample.dataset} #{sample.index}", None), (f"label {sample.label}", None),
                 (f"B {self.name(sample.b)}", self.mark(sample, sample.b))]
        lines += [(f"{column}: {self.name(sample.repaired[column])}", self.mark(sample, sample.repaired[column]))
                  for column in self.columns if column in sample.repaired]
        return lines


def label_samples(model: ModelReport, per_set: int, trust_code: bool) -> Samples:
    """Label `per_set` images of the clean test file and of each poisoned test file, the repaired networks'
    misses among them."""
    sets = {CLEAN: model.data_paths.get("clean_test", {}).get("")}
    sets.update(model.data_paths.get("poisoned_test", {}))
    missing = [f"{path} ({name} test data) is missing" for name, path in sets.items() if not path or
               not Path(path).is_file()]
    if not Path(model.path).is_file():
        missing.insert(0, f"{model.path} (the model B) is missing")
    if missing:
        return Samples(missing=missing)
    try:
        return _label(model, sets, per_set, trust_code)
    except Exception as error:  # any unreadable file: Keras and h5py raise many kinds
        return Samples(missing=[f"could not label sample images: {type(error).__name__}: {error}"])


def _label(model: ModelReport, sets: dict[str, str | None], per_set: int, trust_code: bool) -> Samples:
    from badnet_prune.files.model_io import load_model, num_classes
    from badnet_prune.numerics.inference import compiled_forward, forward_labels, scale_images

    network_b = load_model(model.path, trust_code=trust_code)
    classes = num_classes(network_b)
    forward_b = compiled_forward(network_b)
    forwards, missing = {}, []
    for network in repaired(model.results):
        for key in model.results.keys(network.name):
            path = model.results.files.get((network.name, key))
            if path is None:
                continue
            column = f"{network.label} {_setting(key)}"
            if Path(path).is_file():
                forwards[column] = compiled_forward(load_model(path, trust_code=False))
            else:
                missing.append(f"{path} ({column}) is missing")
    samples, images = [], []
    for dataset, path in sets.items():
        assert path is not None
        pool, labels = _read(Path(path), POOL)
        scaled = scale_images(pool, model.input_scale)
        labels_b = forward_labels(forward_b, scaled)
        labels_g = {column: np.asarray(forward_labels(forward, scaled)) for column, forward in forwards.items()}
        flagged = [values == classes for values in labels_g.values()]
        misses = np.zeros(len(labels), dtype=bool)
        for said_n in flagged:  # poisoned: some repaired net did not flag it; clean: some flagged it
            misses |= said_n if dataset == CLEAN else ~said_n
        for position in pick_samples(misses, per_set):
            index, label = labels[position]
            g_labels = {column: int(values[position]) for column, values in labels_g.items()}
            samples.append(Sample(dataset, index, label, int(labels_b[position]), g_labels))
            images.append(pool[position])
    return Samples(samples, images, list(forwards), classes, missing)


def _setting(key: str) -> str:
    """A setting key as people read it: a threshold as its percent ('2%'), any other key as it is."""
    try:
        return parse_threshold(key).percent
    except ValueError:
        return key


def pick_samples(misses: np.ndarray, count: int) -> list[int]:
    """Positions of `count` images of a pool, in order: up to half (at least one) of G's misses, evenly spaced
    among them, and the rest evenly spaced among the others, so that a reader sees where G fails as well as
    what it usually does; more misses where there are too few others."""
    missed = np.flatnonzero(misses)
    others = np.flatnonzero(~misses)
    count = min(count, len(misses))
    wanted = min(len(missed), max(1, count // 2)) if count else 0
    wanted = max(wanted, count - len(others))
    chosen = [*_spread(missed, wanted), *_spread(others, count - wanted)]
    return sorted(int(position) for position in chosen)


def _spread(positions: np.ndarray, count: int) -> np.ndarray:
    if count <= 0:
        return positions[:0]
    return positions[np.round(np.linspace(0, len(positions) - 1, count)).astype(int)]


def _read(path: Path, count: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`count` evenly spaced images (channels last) and their (index, label), read alone."""
    from badnet_prune.files.data import open_data_file

    data_file = open_data_file(path)
    indexes = sorted({int(i) for i in np.linspace(0, data_file.count - 1, min(count, data_file.count))})
    labels = [int(data_file.labels[index]) for index in indexes]
    return data_file.read_images(indexes), list(zip(indexes, labels, strict=True))
