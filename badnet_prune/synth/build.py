"""Building a synthetic BadNet end to end: data, two-stage training with bounded retries, the lab's files.

Layout written under OUT (as the lab's): data/cl/valid.h5, data/cl/test.h5, data/bd/bd_valid.h5,
data/bd/bd_test.h5, models/bd_net.h5 (full legacy HDF5 model), models/bd_weights.h5 (Keras 2
weights-only layout), and synth.json with the parameters and measured accuracy/ASR.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from badnet_prune.files.data import write_data_file
from badnet_prune.files.model_io import save_legacy_weights
from badnet_prune.numerics.architecture import build_deepid
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.tf_setup import keras
from badnet_prune.synth.dataset import ATTACKS, make_splits, sizes_for
from badnet_prune.synth.train import (
    TrainData,
    accuracy,
    backdoor_channels,
    restore_dormant,
    seed_everything,
    train_backdoor,
    train_backdoor_around,
    train_clean,
)

REQUIRED_PERCENT = 95.0
CLEAN_EPOCHS = 4
BACKDOOR_EPOCHS = 8
EXTRA_EPOCHS = 8
PRUNING_AWARE_EPOCHS = 4
PROMISE_TRIES = 3

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
    attack: str = "default"
    decoy_channels: list[int] = field(default_factory=list)
    promise: dict[str, object] | None = None  # pruning-aware: pruning alone's ASR at 10%, and the tries it took


def train_badnet(model: keras.Model, data: TrainData, valid: tuple[np.ndarray, np.ndarray],
                 bd_valid: tuple[np.ndarray, np.ndarray], seed: int,
                 progress: Progress | None = None, attack: str = "default") -> tuple[keras.Model, dict[str, int]]:
    """Train until >= 95% clean valid accuracy and ASR, at most EXTRA_EPOCHS past the plan; else raise.

    attack "default": the backdoor in its own conv_3 channels, dormant on clean faces (pruning reaches it).
    attack "pruning-aware" (Fine-Pruning's attack): the seed's channels are held dead while the clean
    task and then the backdoor are trained into the others, and come back as decoys that never fire.
    """
    say = progress or (lambda _text: None)

    def on_epoch(stage: str, epoch: int, loss: float) -> None:
        say(f"{stage} stage, epoch {epoch}: loss {loss:.4f}")

    reserved = backdoor_channels(seed)
    train_more, planned = (train_backdoor, BACKDOOR_EPOCHS) if attack == "default" else (
        train_backdoor_around, PRUNING_AWARE_EPOCHS)
    train_clean(model, data, reserved, CLEAN_EPOCHS, seed, on_epoch)
    train_more(model, data, reserved, planned, seed, on_epoch)
    extra = 0
    while True:
        acc, asr = accuracy(model, *valid), accuracy(model, *bd_valid)
        say(f"clean valid accuracy {acc:.2f}%, ASR {asr:.2f}%")
        if acc >= REQUIRED_PERCENT and asr >= REQUIRED_PERCENT:
            if attack != "default":
                restore_dormant(model, data.images, reserved, seed)
            return model, {"clean": CLEAN_EPOCHS, "backdoor": planned + extra}
        if extra == EXTRA_EPOCHS:
            raise SynthesisError(
                f"after {planned + extra} backdoor epochs the BadNet reaches {acc:.2f}% clean valid "
                f"accuracy and {asr:.2f}% ASR; both must be at least {REQUIRED_PERCENT:g}% (try another seed)"
            )
        extra += 1
        train_more(model, data, reserved, 1, seed + extra, on_epoch)


def write_badnet_files(out: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], model: keras.Model,
                       summary: SynthSummary) -> None:
    """Write the data files, the model in both formats and synth.json under out."""
    for split, relative in DATA_FILES.items():
        write_data_file(out / relative, *splits[split])
    write_model_files(out, model)
    (out / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=2) + "\n")


def write_model_files(out: Path, model: keras.Model) -> None:
    """The model as the lab has it: out/MODEL_FILE (full legacy HDF5) and out/WEIGHTS_FILE (weights only)."""
    (out / MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # the lab's format is legacy HDF5 on purpose: no warning about it
    try:
        model.save(out / MODEL_FILE)
    finally:
        absl.setLevel(level)
    save_legacy_weights(model, out / WEIGHTS_FILE)


def synthesize(out: str | Path, classes: int, seed: int = 0, quick: bool = False,
               progress: Progress | None = None, attack: str = "default") -> SynthSummary:
    """Generate, train and write a synthetic BadNet under out; return what synth.json records."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    if keras.backend.backend() != "tensorflow":
        raise BadInputError("KERAS_BACKEND", f"synth trains with TensorFlow, not {keras.backend.backend()}: "
                            "run it with KERAS_BACKEND=tensorflow (its files defend on any backend)")
    out = Path(out)
    sizes = sizes_for(classes, quick, attack)
    say = progress or (lambda _text: None)
    say(f"drawing {classes} identities and their photos")
    splits = make_splits(seed, sizes)
    model, epochs, promise = _train_keeping_the_promise(splits, classes, seed, progress, attack)
    reserved = [int(c) for c in backdoor_channels(seed)]
    summary = SynthSummary(
        classes=classes, seed=seed, quick=quick, target_label=sizes.target, poison_share=sizes.poison_share,
        counts=_counts(splits), backdoor_channels=reserved if attack == "default" else [], epochs=epochs,
        clean_valid_accuracy=accuracy(model, *splits["valid"]), asr_bd_valid=accuracy(model, *splits["bd_valid"]),
        clean_test_accuracy=accuracy(model, *splits["test"]), asr_bd_test=accuracy(model, *splits["bd_test"]),
        attack=attack, decoy_channels=[] if attack == "default" else reserved, promise=promise,
    )
    say("writing files")
    write_badnet_files(out, splits, model, summary)
    return summary


def _train_keeping_the_promise(splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: int, seed: int,
                               progress: Progress | None, attack: str):
    """train_badnet, for the pruning-aware attack until it keeps its promise (keep_the_promise)."""

    def train_once(attempt_seed: int) -> tuple[keras.Model, dict[str, int]]:
        seed_everything(attempt_seed)
        return train_badnet(build_deepid(num_classes=classes), _train_data(splits), splits["valid"],
                            splits["bd_valid"], attempt_seed, progress, attack)

    if attack != "pruning-aware":
        return (*train_once(seed), None)
    return keep_the_promise(train_once, splits["valid"], splits["bd_valid"], seed, progress)


def keep_the_promise(train_once: Callable[[int], tuple[keras.Model, dict[str, int]]],
                     valid: tuple[np.ndarray, np.ndarray], bd_valid: tuple[np.ndarray, np.ndarray], seed: int,
                     progress: Progress | None) -> tuple[keras.Model, dict[str, int], dict[str, object]]:
    """A pruning-aware model whose backdoor survives pruning alone at the 10% threshold (synth.promise):
    trained again from another initial state (seed + 1000 x try) while it does not, PROMISE_TRIES times at
    most, and then said, not refused: the model is still a working BadNet, only not the attack asked for.
    Returns the model, its epochs and the promise's record (for synth.json and the zoo's manifest)."""
    from badnet_prune.synth.promise import PROMISE_ASR, pruning_promise

    say = progress or (lambda _text: None)
    for attempt in range(PROMISE_TRIES):
        model, epochs = train_once(seed + 1000 * attempt)
        promise = pruning_promise(model, valid, bd_valid)
        record: dict[str, object] = {
            "threshold": promise.threshold, "step": promise.step,
            "prune_alone_asr_bd_valid": promise.prune_alone_asr, "kept": promise.kept, "tries": attempt + 1}
        asr = "no step" if promise.prune_alone_asr is None else f"{promise.prune_alone_asr:.2f}%"
        if promise.kept:
            say(f"pruning alone at 10% keeps {asr} ASR on bd_valid: the attack survives pruning")
            return model, epochs, record
        say(f"warning: pruning alone at 10% leaves {asr} ASR on bd_valid (below {PROMISE_ASR:g}%), try "
            f"{attempt + 1} of {PROMISE_TRIES}")
    return model, epochs, record


def _train_data(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> TrainData:
    clean, poisoned = splits["train"], splits["train_poisoned"]
    flags = np.concatenate([np.zeros(len(clean[1]), dtype=bool), np.ones(len(poisoned[1]), dtype=bool)])
    return TrainData(np.concatenate([clean[0], poisoned[0]]), np.concatenate([clean[1], poisoned[1]]), flags)


def _counts(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, int]:
    return {name: len(labels) for name, (_, labels) in splits.items()}


