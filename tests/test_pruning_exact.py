"""The fast sweep is exact: cached cut activations + tail give the labels of the whole pruned model.

The reference is the notebook's way (zero conv_3's filters in a model copy, run everything), as
WholeModelLabeler does it; both run in this process, so no image may differ at any step.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pytest

from badnet_prune.files.data import open_data_file
from badnet_prune.files.model_io import load_model
from badnet_prune.numerics.activations import channel_means, cut_activations, live_channels, rank_activation_batches
from badnet_prune.numerics.architecture import build_deepid
from badnet_prune.numerics.dense_engine import DenseLabeler, step_masks
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.inference import compiled_forward, predict_labels
from badnet_prune.numerics.labelers import CutLabeler, WholeModelLabeler
from badnet_prune.numerics.network_split import split_network
from badnet_prune.numerics.pruned_model import build_pruned_model
from badnet_prune.numerics.pruning import LabeledSet, prune_range, prune_range_dense, pruned_labels
from badnet_prune.numerics.ranking import rank_channels
from badnet_prune.numerics.tf_setup import keras

CLEAN, POISONED = "", "bd_valid"


@dataclass(frozen=True)
class Sweep:
    order: np.ndarray
    clean: LabeledSet
    poisoned: dict[str, LabeledSet]
    everything_live: tuple[LabeledSet, dict[str, LabeledSet]]
    cut_labeler: CutLabeler
    whole_labeler: WholeModelLabeler

    @property
    def steps(self) -> int:
        return len(self.order) + 1


@pytest.fixture(scope="module")
def sweep(synthetic_badnet) -> Sweep:
    model = load_model(synthetic_badnet / "models" / "bd_net.h5")
    images, labels = {}, {}
    for key, name in ((CLEAN, "cl/valid.h5"), (POISONED, "bd/bd_valid.h5")):
        data_file = open_data_file(synthetic_badnet / "data" / name, (55, 47, 3), 10)
        images[key], labels[key] = data_file.read_all(), data_file.labels
    split = split_network(model)
    assert split.is_split and split.cut_layer == "pool_3"
    head = compiled_forward(split.head)
    cuts = {key: cut_activations(head, [batch], 1.0) for key, batch in images.items()}
    order = rank_channels(channel_means(rank_activation_batches(cuts[CLEAN])))
    sets = {key: LabeledSet(key, labels[key], live_channels(cuts[key], split.pruned_values)) for key in cuts}
    all_live = {key: LabeledSet(key, s.labels, np.ones_like(s.live)) for key, s in sets.items()}
    return Sweep(
        order=order,
        clean=sets[CLEAN],
        poisoned={POISONED: sets[POISONED]},
        everything_live=(all_live[CLEAN], {POISONED: all_live[POISONED]}),
        cut_labeler=CutLabeler(split, cuts),
        whole_labeler=WholeModelLabeler(model, "conv_3", images, 1.0),
    )


def incremental_labels(sweep: Sweep, key: str, data: LabeledSet) -> np.ndarray:
    """(C + 1, n) labels per step as prune_range derives them: re-label only the live rows."""
    current = sweep.cut_labeler(key, [], None).copy()
    per_step = [current.copy()]
    for step in range(1, sweep.steps):
        rows = np.flatnonzero(data.live[:, sweep.order[step - 1]])
        if rows.size:
            current[rows] = sweep.cut_labeler(key, list(sweep.order[:step]), rows)
        per_step.append(current.copy())
    return np.stack(per_step)


@pytest.fixture(scope="module")
def reference(sweep) -> dict[str, np.ndarray]:
    """Per set, (C + 1, n) labels per step from the whole model with the filters zeroed."""
    return {
        key: np.stack([sweep.whole_labeler(key, list(sweep.order[:step]), None) for step in range(sweep.steps)])
        for key in (CLEAN, POISONED)
    }


@pytest.fixture(scope="module")
def reference_rows(sweep, reference):
    """prune_range over the whole model, re-running every image at every step (served from `reference`)."""

    def whole_model(key, pruned, rows):
        labels = reference[key][len(pruned)]
        assert list(pruned) == list(sweep.order[: len(pruned)])
        return labels if rows is None else labels[rows]

    clean, poisoned = sweep.everything_live
    return prune_range(whole_model, clean, poisoned, sweep.order, 0, sweep.steps)


def test_the_sweep_is_not_trivial(sweep, reference_rows):
    accuracies = [row.clean_correct for row in reference_rows]
    assert len(reference_rows) == 61 and accuracies[-1] != accuracies[0], "pruning never changed a label"
    assert len({row.hits[POISONED] for row in reference_rows}) > 1, "pruning never changed the ASR"
    assert sweep.clean.live.any()


@pytest.mark.parametrize("key", [CLEAN, POISONED])
def test_labels_of_every_image_at_every_step_equal_the_whole_pruned_model(sweep, reference, key):
    data = sweep.clean if key == CLEAN else sweep.poisoned[key]
    reference = reference[key]
    incremental = incremental_labels(sweep, key, data)
    full_cut = np.stack([sweep.cut_labeler(key, list(sweep.order[:step]), None) for step in range(sweep.steps)])
    for step in range(sweep.steps):
        differ = np.flatnonzero(incremental[step] != reference[step])
        assert differ.size == 0, f"step {step}: images {differ[:10].tolist()} differ from the whole model"
        assert np.array_equal(full_cut[step], reference[step]), f"step {step}: tail on the full cut differs"
    # the helper is prune_range's own bookkeeping: its counts are prune_range's rows
    rows = prune_range(sweep.cut_labeler, sweep.clean, sweep.poisoned, sweep.order, 0, sweep.steps)
    correct = [(incremental[step] == data.labels).sum() for step in range(sweep.steps)]
    counts = [row.clean_correct if key == CLEAN else row.hits[key] for row in rows]
    assert counts == correct


def test_prune_range_rows_equal_the_reference_rows(sweep, reference_rows):
    rows = prune_range(sweep.cut_labeler, sweep.clean, sweep.poisoned, sweep.order, 0, sweep.steps)
    assert [r.clean_correct for r in rows] == [r.clean_correct for r in reference_rows]
    assert [r.hits for r in rows] == [r.hits for r in reference_rows]
    assert rows == reference_rows
    assert [r.step for r in rows] == list(range(61))
    assert rows[0].channel is None and [r.channel for r in rows[1:]] == sweep.order.tolist()


def split_points(steps: int) -> list[list[int]]:
    return [
        list(range(steps + 1)),  # every range of size 1
        [0, 1, 2, 9, 30, 31, 45, steps - 1, steps],  # uneven, size-1 ranges at both ends
        [0, 17, 40, steps],
        [0, steps - 1, steps],
    ]


@pytest.mark.parametrize("case", range(4))
def test_any_split_into_ranges_gives_the_rows_of_one_run(sweep, reference_rows, case):
    bounds = split_points(sweep.steps)[case]
    rows = []
    for start, stop in pairwise(bounds):
        rows += prune_range(sweep.cut_labeler, sweep.clean, sweep.poisoned, sweep.order, start, stop)
    assert rows == reference_rows


def test_the_labelers_kept_masked_cut_answers_requests_in_any_order(sweep, reference):
    """Extending, repeating, shortening and unrelated requests all give the reference labels."""
    order = sweep.order.tolist()
    rows = np.arange(0, len(reference[CLEAN][0]), 3)
    requests = [45, 46, 46, 50, 20, 21, 60, 0, 59, 1, 33]
    for step in requests:
        labels = sweep.cut_labeler(CLEAN, order[:step], rows)
        assert np.array_equal(labels, reference[CLEAN][step][rows]), f"after {step} channels"
        assert np.array_equal(sweep.cut_labeler(POISONED, order[:step], None), reference[POISONED][step])
    reordered = order[:10][::-1] + order[10:30]
    assert np.array_equal(sweep.cut_labeler(CLEAN, reordered, None), reference[CLEAN][30])


@pytest.mark.parametrize("step", [0, 31, 40, 48, 60])
def test_pruned_labels_rerun_only_live_images_and_equal_the_whole_pruned_model(sweep, reference, step):
    """B'_t's labels on a data set, as the threshold task gets them, at a few selected steps."""
    asked = []

    def counting_labeler(key, pruned, rows):
        asked.append(len(reference[key][0]) if rows is None else len(rows))
        return sweep.cut_labeler(key, pruned, rows)

    for key, data in ((CLEAN, sweep.clean), (POISONED, sweep.poisoned[POISONED])):
        asked.clear()
        pruned = sweep.order[:step].tolist()
        labels = pruned_labels(counting_labeler, data, pruned, reference[key][0])
        assert np.array_equal(labels, reference[key][step]), f"{key or 'clean'} at step {step}"
        live = int(data.live[:, pruned].any(axis=1).sum())
        assert sum(asked) == live, f"{sum(asked)} images ran the tail, {live} have a live pruned channel"


@pytest.mark.parametrize("start, stop", [(-1, 3), (3, 3), (5, 2), (0, 62)])
def test_ranges_outside_the_sweep_are_rejected(sweep, start, stop):
    with pytest.raises(ValueError):
        prune_range(sweep.cut_labeler, sweep.clean, sweep.poisoned, sweep.order, start, stop)


# ---- graphs with no clean split, and bad layer choices ---------------------------------------


def deepid_with_bypass(num_classes: int = 10) -> keras.Model:
    """DeepID whose pool_2 also feeds, around conv_3, the sum after pool_3."""
    inputs = keras.Input(shape=(55, 47, 3), name="input")
    x = keras.layers.Conv2D(20, (4, 4), activation="relu", name="conv_1")(inputs)
    x = keras.layers.MaxPooling2D((2, 2), name="pool_1")(x)
    x = keras.layers.Conv2D(40, (3, 3), activation="relu", name="conv_2")(x)
    pool_2 = keras.layers.MaxPooling2D((2, 2), name="pool_2")(x)
    x = keras.layers.Conv2D(60, (3, 3), activation="relu", name="conv_3")(pool_2)
    pool_3 = keras.layers.MaxPooling2D((2, 2), name="pool_3")(x)
    bypass = keras.layers.Conv2D(60, (3, 3), name="bypass_conv")(pool_2)
    bypass = keras.layers.MaxPooling2D((2, 2), name="bypass_pool")(bypass)
    merged = keras.layers.Add(name="add_bypass")([pool_3, bypass])
    x = keras.layers.Dense(32, activation="relu", name="fc_1")(keras.layers.Flatten(name="flatten")(merged))
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs)


def test_a_bypass_around_the_prune_layer_means_no_split_and_the_whole_model_labeler_is_right():
    keras.utils.set_random_seed(3)
    model = deepid_with_bypass()
    split = split_network(model)
    assert split.tail is None and not split.is_split
    with pytest.raises(ValueError):
        CutLabeler(split, {})
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (64, 55, 47, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    order = rng.permutation(60)
    every = np.ones((64, 60), dtype=bool)
    labeler = WholeModelLabeler(model, "conv_3", {CLEAN: images}, 1.0)
    rows = prune_range(labeler, LabeledSet(CLEAN, labels, every), {}, order, 0, 61)
    checked = [0, 1, 2, 13, 30, 47, 59, 60]
    for step in checked:
        pruned = build_pruned_model(model, "conv_3", order[:step])
        expected = predict_labels(compiled_forward(pruned), [images])
        assert rows[step].clean_correct == int((expected == labels).sum()), f"step {step}"
        assert np.array_equal(labeler(CLEAN, list(order[:step]), None), expected), f"step {step}"
    changed = {tuple(labeler(CLEAN, list(order[:step]), None)) for step in checked}
    assert len(changed) > 1, "pruning never changed a label: the check proves nothing"


def test_a_prune_layer_that_is_not_a_conv2d_is_refused():
    model = build_deepid(10)
    with pytest.raises(BadInputError, match="not a Conv2D") as caught:
        split_network(model, prune_layer="pool_3")
    assert caught.value.source == "--prune-layer"
    assert "--prune-layer" in str(caught.value)


def test_an_unknown_prune_layer_is_refused():
    model = build_deepid(10)
    with pytest.raises(BadInputError, match="no layer 'conv_9'") as caught:
        split_network(model, prune_layer="conv_9")
    assert caught.value.source == "--prune-layer"


def test_an_unknown_rank_layer_is_refused():
    with pytest.raises(BadInputError, match="no layer 'pool_9'") as caught:
        split_network(build_deepid(10), rank_layer="pool_9")
    assert caught.value.source == "--rank-layer"



# ---- the dense engine: every image at every step on the device, forced here on the CPU ---------


@pytest.fixture(scope="module")
def dense(sweep, synthetic_badnet) -> DenseLabeler:
    """The dense engine over the sweep's cut activations, with blocks small enough that each set
    spans several image blocks (a partial one last) and the sweep several step blocks."""
    split = split_network(load_model(synthetic_badnet / "models" / "bd_net.h5"))
    return DenseLabeler(split, sweep.cut_labeler._activations, rows_per_call=7 * 128, image_block=128)


def test_the_dense_blocks_cover_partial_blocks(dense, reference):
    count = len(reference[CLEAN][0])
    assert dense.step_block == 7 and 61 % dense.step_block and count > dense.image_block and count % 128


@pytest.mark.parametrize("key", [CLEAN, POISONED])
def test_dense_labels_of_every_image_at_every_step_equal_the_whole_pruned_model(sweep, reference, dense, key):
    labels = dense.step_labels(key, sweep.order, 0, sweep.steps)
    assert labels.shape == reference[key].shape
    for step in range(sweep.steps):
        differ = np.flatnonzero(labels[step] != reference[key][step])
        assert differ.size == 0, f"step {step}: images {differ[:10].tolist()} differ from the whole model"


@pytest.mark.parametrize("case", range(4))
def test_dense_rows_of_any_split_into_ranges_equal_the_reference_rows(sweep, reference_rows, dense, case):
    rows = []
    for start, stop in pairwise(split_points(sweep.steps)[case]):
        rows += prune_range_dense(dense.step_labels, sweep.clean, sweep.poisoned, sweep.order, start, stop)
    assert rows == reference_rows


@pytest.mark.parametrize("step", [0, 1, 31, 60])
def test_dense_labels_at_one_step_equal_the_whole_pruned_model(sweep, reference, dense, step):
    pruned = sweep.order[:step].tolist()
    for key in (CLEAN, POISONED):
        assert np.array_equal(dense(key, pruned, None), reference[key][step]), f"{key or 'clean'} at {step}"
    rows = np.arange(0, len(reference[CLEAN][0]), 5)
    assert np.array_equal(dense(CLEAN, pruned, rows), reference[CLEAN][step][rows])
    assert np.array_equal(pruned_labels(dense, sweep.clean, pruned, reference[CLEAN][0]), reference[CLEAN][step])


def test_step_masks_mark_the_first_k_channels_of_the_order():
    order = [4, 0, 3, 1, 2]
    masks = step_masks(order, 0, 6, 5)
    assert masks.shape == (6, 5)
    for step in range(6):
        assert sorted(np.flatnonzero(masks[step]).tolist()) == sorted(order[:step])
    assert np.array_equal(step_masks(order, 2, 4, 5), masks[2:4])


def test_the_dense_engine_refuses_a_network_with_no_split():
    split = split_network(deepid_with_bypass())
    with pytest.raises(ValueError, match="no split"):
        DenseLabeler(split, {})


@pytest.mark.parametrize("order", [[0, 1, 1], [0, 1, -1], [0, 1, 3]])
def test_an_order_that_is_not_a_permutation_is_refused_by_both_engines(sweep, order):
    with pytest.raises(ValueError, match="not a permutation"):
        prune_range(sweep.cut_labeler, sweep.clean, sweep.poisoned, order, 0, 2)
    with pytest.raises(ValueError, match="not a permutation"):
        prune_range_dense(lambda *_: None, sweep.clean, sweep.poisoned, order, 0, 2)
