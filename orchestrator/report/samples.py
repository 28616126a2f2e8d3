"""A handful of test images labelled by B and by each stored G: what the defense does, visibly.

Unlike the rest of the report this needs files, not rows: B's file and the data files the
model_data table names, and the G files the artifacts table names. Files move and disks get
cleaned, so a missing or unreadable file becomes a sentence in the report, not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from badnet_prune.numerics.thresholds import Threshold
from badnet_prune.orchestrator.report.data import ModelReport

CLEAN = "clean"
POOL = 240  # images labelled per test file, from which the shown ones are picked
ATTACK, FLAGGED = "attack", "flagged"  # what the page colours: the attacker's label, and N


@dataclass(frozen=True)
class Sample:
    dataset: str  # 'clean' or the poison name
    index: int  # in the test file
    label: int  # the file's label (the attacker's target on a poisoned file)
    b: int
    g: dict[Threshold, int]  # G's label per threshold (num_classes = N, "backdoor detected")


@dataclass(frozen=True)
class Samples:
    """Labelled samples with their images, or why there are none (`missing`)."""

    samples: list[Sample] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    thresholds: list[Threshold] = field(default_factory=list)
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
        lines += [(f"G {t.percent}: {self.name(sample.g[t])}", self.mark(sample, sample.g[t]))
                  for t in self.thresholds if t in sample.g]
        return lines


def label_samples(model: ModelReport, per_set: int, trust_code: bool) -> Samples:
    """Label `per_set` images of the clean test file and of each poisoned test file, G's misses among them."""
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
    g_forwards, missing = {}, []
    for threshold, path in sorted(model.g_paths().items()):
        if Path(path).is_file():
            g_forwards[threshold] = compiled_forward(load_model(path, trust_code=False))
        else:
            missing.append(f"{path} (G for {threshold.percent}) is missing")
    samples, images = [], []
    for dataset, path in sets.items():
        assert path is not None
        pool, labels = _read(Path(path), POOL)
        scaled = scale_images(pool, model.input_scale)
        labels_b = forward_labels(forward_b, scaled)
        labels_g = {t: np.asarray(forward_labels(forward, scaled)) for t, forward in g_forwards.items()}
        flagged = [values == classes for values in labels_g.values()]
        misses = np.zeros(len(labels), dtype=bool)
        for said_n in flagged:  # poisoned: some G did not flag it; clean: some G flagged it
            misses |= said_n if dataset == CLEAN else ~said_n
        for position in pick_samples(misses, per_set):
            index, label = labels[position]
            g_labels = {t: int(values[position]) for t, values in labels_g.items()}
            samples.append(Sample(dataset, index, label, int(labels_b[position]), g_labels))
            images.append(pool[position])
    return Samples(samples, images, sorted(g_forwards), classes, missing)


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
    with h5py.File(path, "r") as handle:
        total = int(handle["label"].shape[0])
        indexes = sorted({int(i) for i in np.linspace(0, total - 1, min(count, total))})
        data = np.asarray(handle["data"][indexes], dtype=np.float32).transpose(0, 2, 3, 1)
        labels = [int(label) for label in np.asarray(handle["label"][indexes])]
    return np.ascontiguousarray(data), list(zip(indexes, labels, strict=True))
