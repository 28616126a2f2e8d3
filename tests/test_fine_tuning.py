"""Fine-pruning on the pruning-aware synthetic BadNet: prune at the 10% threshold's step, then fine-tune.

Pruning alone leaves that BadNet's backdoor (test_synth.py checks it); fine-tuning on part of the
clean validation file, with the epoch chosen on the rest, must bring the poisoned test ASR to 10%
or less at a clean test accuracy within 5 points of B's. B'' and G'' (the repaired net of B and
B'') are saved as .keras and loaded by plain Keras in safe mode in a process of its own.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from badnet_prune.files.data import open_data_file
from badnet_prune.files.model_io import load_model
from badnet_prune.numerics.activations import channel_means, cut_activations, live_channels, rank_activation_batches
from badnet_prune.numerics.fine_tuning import (
    FineTuneResult,
    FineTuneSettings,
    apply_erasing,
    erase_boxes,
    fine_tune,
    learning_rate_schedule,
    prune_masks,
    split_clean,
)
from badnet_prune.numerics.inference import accuracy_percent, compiled_forward, predict_labels
from badnet_prune.numerics.labelers import CutLabeler
from badnet_prune.numerics.network_split import split_network
from badnet_prune.numerics.pruned_model import build_pruned_model
from badnet_prune.numerics.pruning import LabeledSet, prune_range
from badnet_prune.numerics.ranking import rank_channels
from badnet_prune.numerics.repair import build_repaired_net, repaired_labels
from badnet_prune.numerics.selection import select_steps
from badnet_prune.numerics.tf_setup import keras
from tests.helpers import PLAIN_KERAS, cached_pruning_aware_badnet

THRESHOLDS = (0.02, 0.04, 0.10)
FILES = {"valid": "cl/valid.h5", "test": "cl/test.h5", "bd_valid": "bd/bd_valid.h5", "bd_test": "bd/bd_test.h5"}


@dataclass(frozen=True)
class Defended:
    """B, its data, the defense's ranking and selected steps, and the fine-pruned result at 10%."""

    model: keras.Model
    data: dict[str, tuple[np.ndarray, np.ndarray]]
    order: np.ndarray
    selected: dict[float, int | None]
    prune_alone_asr: dict[str, float]
    result: FineTuneResult

    @property
    def pruned(self) -> list[int]:
        return [int(c) for c in self.order[: self.selected[0.10]]]


def read_badnet(root: Path) -> tuple[keras.Model, dict[str, tuple[np.ndarray, np.ndarray]]]:
    model = load_model(root / "models" / "bd_weights.h5")
    data = {}
    for key, relative in FILES.items():
        data_file = open_data_file(root / "data" / relative, (55, 47, 3), int(model.output_shape[-1]))
        data[key] = (data_file.read_all(), data_file.labels)
    return model, data


def defense_steps(model: keras.Model, data: dict) -> tuple[np.ndarray, dict[float, int | None]]:
    """The pruning defense on clean validation data: the ranking and the first step crossing each threshold."""
    split = split_network(model)
    head = compiled_forward(split.head)
    cut = cut_activations(head, [data["valid"][0]], 1.0)
    order = rank_channels(channel_means(rank_activation_batches(cut)))
    clean = LabeledSet("", data["valid"][1], live_channels(cut, split.pruned_values))
    rows = prune_range(CutLabeler(split, {"": cut}), clean, {}, order, 0, len(order) + 1)
    accuracies = [row.clean_accuracy for row in rows]
    return order, select_steps(accuracies[0], accuracies, THRESHOLDS)


def labels_of(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return predict_labels(compiled_forward(model), [images])


def percent_right(model: keras.Model, data: dict, key: str) -> float:
    """Clean accuracy on a clean set, ASR on a poisoned one."""
    return accuracy_percent(labels_of(model, data[key][0]), data[key][1])


@pytest.fixture(scope="module")
def defended() -> Defended:
    model, data = read_badnet(cached_pruning_aware_badnet())
    order, selected = defense_steps(model, data)
    assert selected[0.10] is not None
    b_prime = build_pruned_model(model, "conv_3", order[: selected[0.10]])
    prune_alone = {key: percent_right(b_prime, data, key) for key in ("bd_valid", "bd_test")}
    result = fine_tune(model, "conv_3", order[: selected[0.10]], *data["valid"], {"sunglasses": data["bd_valid"]},
                       FineTuneSettings())
    return Defended(model, data, order, selected, prune_alone, result)


def test_b_fine_is_never_worse_than_b_prime_on_the_hold_out_part(defended: Defended):
    """The one promise fine-tuning makes for every seed: the epoch kept is at least as good as B'_t itself on
    the held-out clean images. How often it also removes the backdoor is bench/fine_tune_seeds.py's question."""
    data, result = defended.data, defended.result
    images, labels = data["valid"]
    holdout = result.split.holdout_indices
    b_prime = build_pruned_model(defended.model, "conv_3", defended.pruned)
    before = accuracy_percent(labels_of(b_prime, images[holdout]), labels[holdout])
    after = accuracy_percent(labels_of(result.model, images[holdout]), labels[holdout])
    print(f"10% step {defended.selected[0.10]}: pruning alone ASR {defended.prune_alone_asr['bd_test']:.2f}%; "
          f"B'' (epoch {result.kept_epoch}) ASR {percent_right(result.model, data, 'bd_test'):.2f}%, "
          f"clean {percent_right(result.model, data, 'test'):.2f}%")
    assert after >= before


def test_pruned_filters_stay_exactly_zero_and_b_is_untouched(defended: Defended):
    kernel, bias = defended.result.model.get_layer("conv_3").get_weights()
    assert not kernel[..., defended.pruned].any() and not bias[defended.pruned].any()
    kept = np.setdiff1d(np.arange(60), defended.pruned)
    assert kernel[..., kept].any()
    original = defended.model.get_layer("conv_3").get_weights()[0]
    assert original[..., defended.pruned].any(), "fine-tuning changed B's own filters"
    assert not np.array_equal(original[..., kept], kernel[..., kept]), "the kept filters did not train"


def test_epochs_are_recorded_and_the_kept_one_is_the_last_best_on_hold_out(defended: Defended):
    result, settings = defended.result, defended.result.settings
    assert [record.epoch for record in result.epochs] == list(range(settings.epochs + 1))
    best = max(record.holdout_correct for record in result.epochs)
    assert result.kept_epoch == max(r.epoch for r in result.epochs if r.holdout_correct == best)
    for record in result.epochs:
        assert set(record.asr) == {"sunglasses"} and np.isfinite(record.train_loss)
    # epoch 0 is B'_t itself, measured on the hold-out part of the clean validation file
    images, labels = defended.data["valid"]
    b_prime = build_pruned_model(defended.model, "conv_3", defended.pruned)
    holdout = result.split.holdout_indices
    assert result.epochs[0].holdout_accuracy == accuracy_percent(labels_of(b_prime, images[holdout]), labels[holdout])
    # the kept weights are B'' itself: its hold-out accuracy is the kept epoch's
    kept = result.epochs[result.kept_epoch]
    assert kept.holdout_accuracy == accuracy_percent(labels_of(result.model, images[holdout]), labels[holdout])


def test_the_split_is_seeded_disjoint_and_covers_the_clean_file():
    split = split_clean(1000, 0.2, seed=3)
    assert len(split.holdout_indices) == 200 and len(split.train_indices) == 800
    assert not np.intersect1d(split.train_indices, split.holdout_indices).size
    np.testing.assert_array_equal(np.union1d(split.train_indices, split.holdout_indices), np.arange(1000))
    assert split.sha256 == split_clean(1000, 0.2, seed=3).sha256 != split_clean(1000, 0.2, seed=4).sha256
    tiny = split_clean(2, 0.01, seed=0)
    assert len(tiny.holdout_indices) == 1 and len(tiny.train_indices) == 1


def test_one_seed_trains_identical_weights_twice_and_another_seed_other_weights(defended: Defended):
    images, labels = defended.data["valid"]
    rows = np.arange(0, len(labels), 4)  # a quarter of the file: two short epochs are enough to compare

    def weights(seed: int) -> list[np.ndarray]:
        settings = FineTuneSettings(learning_rate=1e-4, epochs=2, warmup_epochs=0, seed=seed)
        result = fine_tune(defended.model, "conv_3", defended.pruned, images[rows], labels[rows], {}, settings)
        losses = np.array([record.train_loss for record in result.epochs])
        return [*result.model.get_weights(), losses, np.array(result.kept_epoch)]

    first, again, other = weights(5), weights(5), weights(6)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[-2], other[-2]), "another seed, another split and order: other losses"




def test_b_fine_and_g_fine_as_keras_files_load_in_plain_keras_and_follow_their_rules(defended: Defended, tmp_path):
    model_b, b_twice = defended.model, defended.result.model
    g_twice = build_repaired_net(model_b, b_twice, name="G_fine")
    images = np.concatenate([defended.data["test"][0][::3], defended.data["bd_test"][0][::3]])
    np.save(tmp_path / "images.npy", images)
    b_twice.save(tmp_path / "b_fine.keras")
    g_twice.save(tmp_path / "g_fine.keras")
    args = [tmp_path / name for name in ("images.npy", "b_fine.keras", "b.npy", "g_fine.keras", "g.npy")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", PLAIN_KERAS, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded 2" in done.stdout

    labels_b, labels_fine = labels_of(model_b, images), labels_of(b_twice, images)
    np.testing.assert_array_equal(np.argmax(np.load(tmp_path / "b.npy"), axis=-1), labels_fine)
    expected_g = repaired_labels(labels_b, labels_fine, int(model_b.output_shape[-1]))
    np.testing.assert_array_equal(np.argmax(np.load(tmp_path / "g.npy"), axis=-1), expected_g)
    # the file holds B'' with its pruned filters still exactly zero
    reloaded = keras.models.load_model(tmp_path / "b_fine.keras", safe_mode=True)
    kernel, bias = reloaded.get_layer("conv_3").get_weights()
    assert not kernel[..., defended.pruned].any() and not bias[defended.pruned].any()


def test_prune_masks_hold_only_the_pruned_filters(defended: Defended):
    masks = prune_masks(defended.model, "conv_3", [3, 7])
    held = [mask for mask in masks if mask is not None]
    assert len(held) == 2  # conv_3's kernel and bias
    kernel_mask, bias_mask = held
    assert not kernel_mask[..., [3, 7]].any() and kernel_mask[..., 0].all()
    np.testing.assert_array_equal(np.flatnonzero(bias_mask == 0), [3, 7])
    assert all(mask is None for mask in prune_masks(defended.model, "conv_3", []))


@pytest.mark.parametrize("bad", [
    {"optimizer": "rmsprop"}, {"learning_rate": 0}, {"learning_rate": -1e-3}, {"learning_rate": 1.5},
    {"learning_rate": "1e-3"}, {"epochs": 0}, {"epochs": "10"}, {"epochs": True}, {"epochs": 2.5},
    {"batch_size": 0}, {"seed": -1}, {"holdout_fraction": 0.0}, {"holdout_fraction": 1.0},
    {"holdout_fraction": float("nan")}, {"learning_rate": float("inf")}, {"epoch": 3},
    {"schedule": "linear"}, {"warmup_epochs": -1}, {"warmup_epochs": 1.0}, {"clip_norm": 0.0},
    {"clip_norm": float("nan")}, {"erase": 1.5}, {"erase": -0.1}, {"erase": "half"},
])
def test_hostile_settings_are_refused_naming_the_field(bad: dict):
    with pytest.raises(ValidationError) as caught:
        FineTuneSettings(**bad)
    assert next(iter(bad)) in str(caught.value)


def test_random_erasing_fills_one_rectangle_per_chosen_image_with_the_noise():
    rng = np.random.default_rng(0)
    boxes = erase_boxes(rng, 2000, (55, 47), 0.5)
    erased = boxes[:, 1] > boxes[:, 0]
    assert 0.45 < erased.mean() < 0.55
    top, bottom, left, right = boxes[erased].T
    assert (top >= 0).all() and (bottom <= 55).all() and (left >= 0).all() and (right <= 47).all()
    area = (bottom - top) * (right - left) / (55 * 47)
    assert area.min() >= 0.015 and area.max() <= 0.42
    assert not boxes[~erased].any()
    np.testing.assert_array_equal(erase_boxes(np.random.default_rng(0), 2000, (55, 47), 0.5), boxes)
    assert not erase_boxes(rng, 100, (55, 47), 0.0).any()

    images = np.zeros((2, 55, 47, 3), dtype=np.float32)
    noise = np.full_like(images, 7.0)
    two = np.array([[1, 4, 2, 5], [0, 0, 0, 0]], dtype=np.int32)
    out = keras.ops.convert_to_numpy(apply_erasing(images, two, noise))
    assert (out[0, 1:4, 2:5] == 7.0).all() and out[0].sum() == 7.0 * 3 * 3 * 3 and not out[1].any()


@pytest.mark.parametrize(("schedule", "end"), [("cosine", 0.0), ("constant", 1e-3)])
def test_the_rate_warms_up_from_zero_then_decays_or_holds(schedule: str, end: float):
    settings = FineTuneSettings(learning_rate=1e-3, epochs=10, warmup_epochs=2, schedule=schedule)
    rate = learning_rate_schedule(settings, steps_per_epoch=5)
    values = [float(keras.ops.convert_to_numpy(rate(step))) for step in range(51)]
    assert values[0] == 0.0 and values[5] == pytest.approx(5e-4) and values[10] == pytest.approx(1e-3)
    assert values[50] == pytest.approx(end, abs=1e-9)
    if schedule == "cosine":
        assert all(a >= b for a, b in itertools.pairwise(values[10:]))


def test_settings_are_frozen():
    with pytest.raises(ValidationError):
        FineTuneSettings().epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(("channels", "images", "labels", "problem"), [
    ([60], 8, 8, "distinct, in 0..59"),
    ([-1], 8, 8, "distinct, in 0..59"),
    ([3, 3], 8, 8, "distinct, in 0..59"),
    ([3], 8, 7, "8 clean images but 7 labels"),
    ([3], 1, 1, "at least 2 clean images"),
])
def test_hostile_fine_tune_inputs_are_refused(defended: Defended, channels, images, labels, problem):
    clean_images, clean_labels = defended.data["valid"]
    with pytest.raises(ValueError, match=problem):
        fine_tune(defended.model, "conv_3", channels, clean_images[:images], clean_labels[:labels], {},
                  FineTuneSettings(epochs=1))


@pytest.mark.parametrize(("label", "pixel", "problem"), [
    (10, None, "classes 0..9 of the model"),
    (-1, None, "classes 0..9 of the model"),
    (None, float("nan"), "NaN or infinite"),
    (None, float("inf"), "NaN or infinite"),
])
def test_clean_labels_outside_the_model_and_non_finite_pixels_are_refused(defended: Defended, label, pixel, problem):
    images, labels = (part[:8].copy() for part in defended.data["valid"])
    if label is not None:
        labels[3] = label
    if pixel is not None:
        images[5, 0, 0, 0] = pixel
    with pytest.raises(ValueError, match=problem):
        fine_tune(defended.model, "conv_3", [3], images, labels, {}, FineTuneSettings(epochs=1))


def test_a_poisoned_set_whose_labels_do_not_match_its_images_is_refused(defended: Defended):
    images, labels = defended.data["bd_valid"]
    with pytest.raises(ValueError, match="poisoned set 'bad'"):
        fine_tune(defended.model, "conv_3", [3], *defended.data["valid"], {"bad": (images, labels[:-1])},
                  FineTuneSettings(epochs=1))
