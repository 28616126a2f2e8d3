"""One model of the zoo: a pure function of (attack, seed, settings, out folder), and cached.

Attacks (ATTACKS):
- clean: no backdoor. Its poisoned files carry the sunglasses and a would-be target, so that a
  defense's effect on them, and the model's "ASR" there (its chance level), can be measured.
- sunglasses: today's `synth` BadNet (the backdoor in its own conv_3 channels; build.train_badnet).
- pruning-aware: Fine-Pruning's attack (build.train_badnet with attack "pruning-aware").
- patch, blended: plain data poisoning (the attacker only adds poisoned photos to the training set).
- multi-trigger: sunglasses, lipstick and a patch, each with its own target, by plain data poisoning,
  like the 2020 competition's multi_trigger_multi_target model.
Targets are drawn from the seed (attacks.draw_targets). Models of one seed share their identities
and clean photos, whatever their attack: a population compares attacks on the same faces.

Layout under a model's folder (the lab's, as `synth` writes it): data/cl/valid.h5, data/cl/test.h5,
models/bd_net.h5, models/bd_weights.h5; the poisoned pair data/bd/bd_valid.h5 and bd_test.h5 for one
trigger, data/bd/<trigger>/bd_valid.h5 and bd_test.h5 for each of several; and zoo.json, the
model's record (ZooModel), written last. Poisoned files carry `true_label`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from badnet_prune.files.data import write_data_file
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.synth.attacks import Poison, PoisonedSet, blend_key, draw_targets, poisoned_set
from badnet_prune.synth.cache import cached_build, code_key
from badnet_prune.synth.dataset import DEFAULT_CLASSES, PRUNING_AWARE_VALID_PER_CLASS, QUICK_CLASSES, sizes_for
from badnet_prune.synth.faces import render, sample_identities, sample_poses

Attack = Literal["clean", "sunglasses", "pruning-aware", "patch", "blended", "multi-trigger"]
ATTACKS: tuple[Attack, ...] = ("clean", "sunglasses", "pruning-aware", "patch", "blended", "multi-trigger")
TRIGGERS_OF: dict[Attack, tuple[str, ...]] = {
    "clean": ("sunglasses",),  # would-be: measured, never trained
    "sunglasses": ("sunglasses",),
    "pruning-aware": ("sunglasses",),
    "patch": ("patch",),
    "blended": ("blended",),
    "multi-trigger": ("sunglasses", "lipstick", "patch"),
}
REQUIRED_PERCENT = 95.0  # clean valid accuracy, and each trigger's ASR on its poisoned valid file, as `synth`
PLAIN_EPOCHS = 8
EXTRA_EPOCHS = 8
RECORD_FILE = "zoo.json"
MODEL_FILE = "models/bd_net.h5"  # as build.MODEL_FILE, WEIGHTS_FILE and DATA_FILES (not imported: they load Keras)
WEIGHTS_FILE = "models/bd_weights.h5"
CLEAN_VALID = "data/cl/valid.h5"
CLEAN_TEST = "data/cl/test.h5"

Progress = Callable[[str], None]
Classes = Annotated[int, Field(ge=3, le=1283)]  # three distinct targets for the multi-trigger model
PoisonRate = Annotated[float, Field(gt=0.0, le=0.5)]
Alpha = Annotated[float, Field(gt=0.0, lt=1.0)]


class ZooSettings(BaseModel):
    """What every model of a zoo shares; with (attack, seed) it fixes a model (and its cache entry).

    classes: identities; quick: the test-sized data set (sizes_for); poison_rate: poisoned photos
    added to the training set per trigger, as a share of the clean training photos; blend_alpha:
    the blended attack's weight in training; blend_test_alpha: the range its valid and test photos'
    weights are drawn from, one per photo (Chen et al.: 0.2 in training, 0.1-0.2 at test). Its default
    is the training weight: trained at 0.2, a model's ASR falls steeply at lower weights
    (bench/RESULTS.md, "The zoo", measures it), below the 90% a zoo's test of the attack needs.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    classes: Classes = QUICK_CLASSES
    quick: bool = True
    poison_rate: PoisonRate = 0.1
    blend_alpha: Alpha = 0.2
    blend_test_alpha: tuple[Alpha, Alpha] = (0.2, 0.2)

    @model_validator(mode="after")
    def _ordered_range(self) -> ZooSettings:
        check_alpha_range(self.blend_test_alpha)
        return self

    def key(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def check_alpha_range(pair: tuple[float, float]) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"blend_test_alpha {list(pair)} must be [low, high] with low <= high")


def default_settings(quick: bool = True, classes: int | None = None) -> ZooSettings:
    return ZooSettings(quick=quick, classes=classes or (QUICK_CLASSES if quick else DEFAULT_CLASSES))


class TriggerRecord(BaseModel):
    """One poisoned pair of a model: its trigger (the pair's name), target, files and B's ASR on them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    target: int
    valid: str  # relative to the model's folder
    test: str
    asr_valid: float  # percent of the file's images classified as the target
    asr_test: float


class ZooModel(BaseModel):
    """A model's record (its zoo.json): what it is, where its files are and what B measures on them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    attack: Attack
    backdoored: bool
    seed: int
    settings: ZooSettings
    key: str  # the cache entry's name: attack, seed, settings and synth code
    model: str
    weights: str
    clean_valid: str
    clean_test: str
    triggers: tuple[TriggerRecord, ...]
    clean_valid_accuracy: float
    clean_test_accuracy: float
    epochs: dict[str, int]
    build_seconds: float  # training and writing, measured when it was built (a cached copy keeps it)
    promise: dict[str, Any] | None = None  # pruning-aware: pruning alone's ASR at 10% and the tries it took


class SynthesisError(RuntimeError):
    """A model missed the required clean accuracy or ASR within its epochs (another seed usually works)."""


def model_name(attack: Attack, seed: int) -> str:
    return f"{attack}-{seed}"


def cache_key(attack: Attack, seed: int, settings: ZooSettings) -> str:
    """The cache entry of (attack, seed, settings) under the current synth code."""
    return f"zoo-{attack}-seed{seed}-{settings.key()}-{code_key()}"


def model_poisons(attack: Attack, seed: int, settings: ZooSettings) -> list[Poison]:
    """The model's triggers with their targets (drawn from the seed) and, for test photos, blend weights."""
    triggers = TRIGGERS_OF[attack]
    targets = draw_targets(seed, settings.classes, len(triggers))
    return [Poison(trigger, target, settings.blend_test_alpha)
            for trigger, target in zip(triggers, targets, strict=True)]


@dataclass(frozen=True)
class ZooData:
    """A model's photos: clean splits (images, labels), and per poison its train/valid/test sets."""

    train: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    poisons: list[Poison]
    train_poisoned: list[PoisonedSet]  # empty for a clean model
    poisoned_valid: list[PoisonedSet]
    poisoned_test: list[PoisonedSet]


def draw_data(attack: Attack, seed: int, settings: ZooSettings) -> ZooData:
    """Every photo of the model, from its seed: clean splits first, so that one seed's attacks share them."""
    sizes = sizes_for(settings.classes, settings.quick)
    # Every zoo model gets the larger clean validation file that fine-pruning needs (dataset.sizes_for).
    sizes = replace(sizes, valid_per_class=max(sizes.valid_per_class, PRUNING_AWARE_VALID_PER_CLASS))
    rng = np.random.default_rng(seed)
    identities = sample_identities(rng, settings.classes)

    def clean(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(settings.classes), per_class)
        images = render(identities, labels, sample_poses(rng, len(labels)), np.zeros(len(labels), dtype=bool))
        return images, labels

    train, valid, test = (clean(count) for count in (sizes.train_per_class, sizes.valid_per_class,
                                                      sizes.test_per_class))
    poisons = model_poisons(attack, seed, settings)
    key = blend_key(seed)
    training = [replace(poison, alpha=(settings.blend_alpha, settings.blend_alpha)) for poison in poisons]
    poisoned_train = round(settings.poison_rate * len(train[1]))
    return ZooData(
        train=train, valid=valid, test=test, poisons=poisons,
        train_poisoned=[] if attack == "clean" else [poisoned_set(rng, identities, p, poisoned_train, key)
                                                     for p in training],
        poisoned_valid=[poisoned_set(rng, identities, p, sizes.poisoned_valid, key) for p in poisons],
        poisoned_test=[poisoned_set(rng, identities, p, sizes.poisoned_test, key) for p in poisons],
    )


def build_model(attack: Attack, seed: int, settings: ZooSettings, out: str | Path,
                progress: Progress | None = None) -> ZooModel:
    """Draw, train, write and measure one model under out; its record, also written as out/zoo.json.

    Raises SynthesisError where the model misses REQUIRED_PERCENT within its epochs.
    """
    from badnet_prune.synth.build import write_model_files

    say = progress or (lambda _text: None)
    started = time.perf_counter()
    out = Path(out)
    say("drawing the photos")
    data = draw_data(attack, seed, settings)
    model, epochs, promise = _train(attack, data, seed, settings, say)
    say("writing and measuring the files")
    write_data_file(out / CLEAN_VALID, *data.valid)
    write_data_file(out / CLEAN_TEST, *data.test)
    several = len(data.poisons) > 1
    pairs = {}  # trigger -> (valid, test) paths relative to out
    for poison, valid, test in zip(data.poisons, data.poisoned_valid, data.poisoned_test, strict=True):
        folder = f"data/bd/{poison.trigger}" if several else "data/bd"
        pairs[poison.trigger] = (f"{folder}/bd_valid.h5", f"{folder}/bd_test.h5")
        for path, written in zip(pairs[poison.trigger], (valid, test), strict=True):
            write_data_file(out / path, written.images, written.labels, written.true_labels)
    write_model_files(out, model)
    files = [CLEAN_VALID, CLEAN_TEST, *(path for pair in pairs.values() for path in pair)]
    measured = dict(zip(files, measure_files(out / WEIGHTS_FILE, [out / path for path in files]), strict=True))
    record = ZooModel(
        name=model_name(attack, seed), attack=attack, backdoored=attack != "clean", seed=seed, settings=settings,
        key=cache_key(attack, seed, settings), model=MODEL_FILE, weights=WEIGHTS_FILE,
        clean_valid=CLEAN_VALID, clean_test=CLEAN_TEST,
        triggers=tuple(TriggerRecord(name=p.trigger, target=p.target, valid=pairs[p.trigger][0],
                                     test=pairs[p.trigger][1], asr_valid=measured[pairs[p.trigger][0]],
                                     asr_test=measured[pairs[p.trigger][1]]) for p in data.poisons),
        clean_valid_accuracy=measured[CLEAN_VALID], clean_test_accuracy=measured[CLEAN_TEST], epochs=epochs,
        build_seconds=round(time.perf_counter() - started, 1), promise=promise,
    )
    (out / RECORD_FILE).write_text(record.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return record


def measure_files(weights: Path, data_files: list[Path]) -> list[float]:
    """B's accuracy in percent on each file, against the file's labels (the ASR on a poisoned file),
    read back from disk through the one inference path, as a defense will read them."""
    from badnet_prune.files.data import open_data_file
    from badnet_prune.files.model_io import load_model, num_classes
    from badnet_prune.numerics.inference import accuracy_percent, compiled_forward, predict_labels

    network = load_model(weights)
    forward = compiled_forward(network)
    results = []
    for path in data_files:
        opened = open_data_file(path, num_classes=num_classes(network))
        results.append(accuracy_percent(predict_labels(forward, opened.batches(), 1.0), opened.labels))
    return results


def _train(attack: Attack, data: ZooData, seed: int, settings: ZooSettings, say: Progress):
    """The trained DeepID, its epochs per stage, and for the pruning-aware attack its promise's record
    (build.keep_the_promise: trained again from another initial state while pruning alone removes it)."""
    from badnet_prune.synth import build
    from badnet_prune.synth.train import seed_everything

    def train_once(attempt_seed: int):
        seed_everything(attempt_seed)
        return _train_once(attack, data, attempt_seed, settings, say)

    if attack != "pruning-aware":
        return (*train_once(seed), None)
    return build.keep_the_promise(train_once, data.valid, (data.poisoned_valid[0].images,
                                                           data.poisoned_valid[0].labels), seed, say)


def _train_once(attack: Attack, data: ZooData, seed: int, settings: ZooSettings, say: Progress):
    from badnet_prune.numerics.architecture import build_deepid
    from badnet_prune.synth import build
    from badnet_prune.synth.train import TrainData

    model = build_deepid(num_classes=settings.classes)
    poisoned_images = [s.images for s in data.train_poisoned]
    poisoned_labels = [s.labels for s in data.train_poisoned]
    images = np.concatenate([data.train[0], *poisoned_images])
    labels = np.concatenate([data.train[1], *poisoned_labels])
    checks = [(s.images, s.labels) for s in data.poisoned_valid] if attack != "clean" else []
    if attack in ("sunglasses", "pruning-aware"):
        flags = np.arange(len(labels)) >= len(data.train[1])
        try:
            return build.train_badnet(model, TrainData(images, labels, flags), data.valid, checks[0], seed, say,
                                      attack="default" if attack == "sunglasses" else "pruning-aware")
        except build.SynthesisError as error:
            raise SynthesisError(f"{model_name(attack, seed)}: {error}") from error
    return _train_poisoned(model, images, labels, data.valid, checks, seed, attack, say)


def _train_poisoned(model, images: np.ndarray, labels: np.ndarray, valid: tuple[np.ndarray, np.ndarray],
                    checks: list[tuple[np.ndarray, np.ndarray]], seed: int, attack: Attack, say: Progress):
    """Plain training on the (poisoned) training set until clean valid accuracy and every trigger's
    valid ASR reach REQUIRED_PERCENT, at most EXTRA_EPOCHS past PLAIN_EPOCHS."""
    from badnet_prune.numerics.tf_setup import keras
    from badnet_prune.synth.train import BATCH_SIZE, LEARNING_RATE, accuracy

    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy")
    done = 0

    def on_epoch_end(epoch: int, logs: dict) -> None:
        say(f"training, epoch {done + epoch + 1}: loss {logs['loss']:.4f}")

    report = keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)
    planned = PLAIN_EPOCHS
    while True:
        model.fit(images, labels, batch_size=BATCH_SIZE, epochs=planned - done, shuffle=True, verbose=0,
                  callbacks=[report])
        done = planned
        acc = accuracy(model, *valid)
        asrs = [accuracy(model, *check) for check in checks]
        say(f"clean valid accuracy {acc:.2f}%" + "".join(f", ASR {asr:.2f}%" for asr in asrs))
        if acc >= REQUIRED_PERCENT and all(asr >= REQUIRED_PERCENT for asr in asrs):
            return model, {"train": done}
        if done == PLAIN_EPOCHS + EXTRA_EPOCHS:
            raise SynthesisError(
                f"{model_name(attack, seed)}: after {done} epochs the model reaches {acc:.2f}% clean valid accuracy"
                + "".join(f", {asr:.2f}% ASR" for asr in asrs) + f"; each must be at least {REQUIRED_PERCENT:g}% "
                "(try another seed)")
        planned = done + 1


def cached_model(attack: Attack, seed: int, settings: ZooSettings, cache: Path, out: Path,
                 progress: Progress | None = None) -> tuple[ZooModel, bool]:
    """The model in folder out, built under cache (once per (attack, seed, settings, synth code)) and
    linked there; whether it was already built. The cached files are read-only (cache.cached_build).
    An out folder that holds something other than a zoo model is refused, never replaced."""
    if out.exists() and not (out / RECORD_FILE).is_file():
        raise BadInputError(out, "exists and is not a zoo model: refused, so that nothing else is overwritten")
    key = cache_key(attack, seed, settings)
    entry = Path(cache) / key
    was_cached = (entry / RECORD_FILE).is_file()
    cached_build(entry, lambda folder: build_model(attack, seed, settings, folder, progress), RECORD_FILE,
                 read_only=True)
    record = read_record(entry)
    if not (read_record(out).key == key if (out / RECORD_FILE).is_file() else False):
        _publish(entry, out)
    return record, was_cached


def read_record(folder: Path) -> ZooModel:
    return ZooModel.model_validate_json((Path(folder) / RECORD_FILE).read_text(encoding="utf-8"))


def _publish(entry: Path, out: Path) -> None:
    """out becomes a copy of entry, made of hard links where the file system allows (no second copy of the data)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(entry, staging, copy_function=_link_or_copy)
    if out.exists():
        shutil.rmtree(out)
    os.rename(staging, out)


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, destination)
