"""Building a synthetic BadNet end to end: data, two-stage training with bounded retries, the lab's files.

Layout written under OUT (as the lab's): data/cl/valid.h5, data/cl/test.h5, data/bd/bd_valid.h5,
data/bd/bd_test.h5, models/bd_net.h5 (full legacy HDF5 model), models/bd_weights.h5 (Keras 2
weights-only layout), and synth.json with the parameters and measured accuracy/ASR.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from badnet_prune.architecture import build_deepid
from badnet_prune.data import write_data_file
from badnet_prune.model_io import save_legacy_weights
from badnet_prune.synth.dataset import make_splits, sizes_for
from badnet_prune.synth.train import (
    TrainData,
    accuracy,
    backdoor_channels,
    seed_everything,
    train_backdoor,
    train_clean,
)
from badnet_prune.tf_setup import keras

REQUIRED_PERCENT = 95.0
CLEAN_EPOCHS = 4
BACKDOOR_EPOCHS = 8
EXTRA_EPOCHS = 8

DATA_FILES = {
    "valid": "data/cl/valid.h5",
    "test": "data/cl/test.h5",
    "bd_valid": "data/bd/bd_valid.h5",
    "bd_test": "data/bd/bd_test.h5",
}
MODEL_FILE = "models/bd_net.h5"
WEIGHTS_FILE = "models/bd_weights.h5"
SUMMARY_FILE = "synth.json"

Progress = Callable[[str], None]


class SynthesisError(RuntimeError):
    """The trained BadNet missed the required clean accuracy or attack success rate."""


@dataclass(frozen=True)
class SynthSummary:
    """What synth.json records."""

    classes: int
    seed: int
    quick: bool
    target_label: int
    poison_share: float
    counts: dict[str, int]
    backdoor_channels: list[int]
    epochs: dict[str, int]
    clean_valid_accuracy: float
    asr_bd_valid: float
    clean_test_accuracy: float
    asr_bd_test: float


def train_badnet(model: keras.Model, data: TrainData, valid: tuple[np.ndarray, np.ndarray],
                 bd_valid: tuple[np.ndarray, np.ndarray], seed: int,
                 progress: Progress | None = None) -> tuple[keras.Model, dict[str, int]]:
    """Train until >= 95% clean valid accuracy and ASR, at most EXTRA_EPOCHS past the plan; else raise."""
    say = progress or (lambda _text: None)

    def on_epoch(stage: str, epoch: int, loss: float) -> None:
        say(f"{stage} stage, epoch {epoch}: loss {loss:.4f}")

    reserved = backdoor_channels(seed)
    train_clean(model, data, reserved, CLEAN_EPOCHS, seed, on_epoch)
    train_backdoor(model, data, reserved, BACKDOOR_EPOCHS, seed, on_epoch)
    extra = 0
    while True:
        acc, asr = accuracy(model, *valid), accuracy(model, *bd_valid)
        say(f"clean valid accuracy {acc:.2f}%, ASR {asr:.2f}%")
        if acc >= REQUIRED_PERCENT and asr >= REQUIRED_PERCENT:
            return model, {"clean": CLEAN_EPOCHS, "backdoor": BACKDOOR_EPOCHS + extra}
        if extra == EXTRA_EPOCHS:
            raise SynthesisError(
                f"after {BACKDOOR_EPOCHS + extra} backdoor epochs the BadNet reaches {acc:.2f}% clean valid "
                f"accuracy and {asr:.2f}% ASR; both must be at least {REQUIRED_PERCENT:g}% (try another seed)"
            )
        extra += 1
        train_backdoor(model, data, reserved, 1, seed + extra, on_epoch)


def write_badnet_files(out: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], model: keras.Model,
                       summary: SynthSummary) -> None:
    """Write the data files, the model in both formats and synth.json under out."""
    for split, relative in DATA_FILES.items():
        write_data_file(out / relative, *splits[split])
    (out / MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # the lab's format is legacy HDF5 on purpose: no warning about it
    try:
        model.save(out / MODEL_FILE)
    finally:
        absl.setLevel(level)
    save_legacy_weights(model, out / WEIGHTS_FILE)
    (out / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=2) + "\n")


def synthesize(out: str | Path, classes: int, seed: int = 0, quick: bool = False,
               progress: Progress | None = None) -> SynthSummary:
    """Generate, train and write a synthetic BadNet under out; return what synth.json records."""
    out = Path(out)
    sizes = sizes_for(classes, quick)
    say = progress or (lambda _text: None)
    say(f"drawing {classes} identities and their photos")
    splits = make_splits(seed, sizes)
    seed_everything(seed)
    model = build_deepid(num_classes=classes)
    model, epochs = train_badnet(model, _train_data(splits), splits["valid"], splits["bd_valid"], seed, progress)
    summary = SynthSummary(
        classes=classes, seed=seed, quick=quick, target_label=sizes.target, poison_share=sizes.poison_share,
        counts=_counts(splits), backdoor_channels=[int(c) for c in backdoor_channels(seed)], epochs=epochs,
        clean_valid_accuracy=accuracy(model, *splits["valid"]), asr_bd_valid=accuracy(model, *splits["bd_valid"]),
        clean_test_accuracy=accuracy(model, *splits["test"]), asr_bd_test=accuracy(model, *splits["bd_test"]),
    )
    say("writing files")
    write_badnet_files(out, splits, model, summary)
    return summary


def _train_data(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> TrainData:
    clean, poisoned = splits["train"], splits["train_poisoned"]
    flags = np.concatenate([np.zeros(len(clean[1]), dtype=bool), np.ones(len(poisoned[1]), dtype=bool)])
    return TrainData(np.concatenate([clean[0], poisoned[0]]), np.concatenate([clean[1], poisoned[1]]), flags)


def _counts(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, int]:
    return {name: len(labels) for name, (_, labels) in splits.items()}


