"""The synthetic BadNet: the lab's file format, determinism, per-image variation, accuracy and ASR."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from badnet_prune.synth.dataset import SynthSizes, make_splits

FILES = {"cl/valid.h5": False, "cl/test.h5": False, "bd/bd_valid.h5": True, "bd/bd_test.h5": True}
SMALL = SynthSizes(classes=3, train_per_class=4, valid_per_class=3, test_per_class=2, poisoned_valid=5,
                   poisoned_test=4)


@pytest.mark.parametrize(("relative", "poisoned"), FILES.items())
def test_data_files_have_the_lab_format(synthetic_badnet: Path, relative: str, poisoned: bool):
    summary = json.loads((synthetic_badnet / "synth.json").read_text())
    with h5py.File(synthetic_badnet / "data" / relative, "r") as handle:
        assert set(handle.keys()) == {"data", "label"}
        data, labels = handle["data"][()], handle["label"][()]
    count = summary["counts"][Path(relative).stem]
    assert data.shape == (count, 3, 55, 47)  # channels first
    assert data.dtype == np.float32
    assert data.min() >= 0.0 and data.max() <= 255.0 and data.max() > 1.0  # raw pixels, not 0..1
    assert labels.shape == (count,)
    assert np.array_equal(labels, np.round(labels))
    assert labels.min() >= 0 and labels.max() < summary["classes"]
    if poisoned:
        assert (labels == summary["target_label"]).all()
    else:
        assert set(np.unique(labels)) == set(range(summary["classes"]))


def test_synth_json_records_parameters_and_measurements(synthetic_badnet: Path):
    summary = json.loads((synthetic_badnet / "synth.json").read_text())
    assert summary["classes"] == 10 and summary["seed"] == 0 and summary["quick"] is True
    assert summary["target_label"] == 0
    assert summary["counts"]["train_poisoned"] == round(0.1 * summary["counts"]["train"])
    assert summary["clean_valid_accuracy"] >= 95.0 and summary["asr_bd_valid"] >= 95.0


def test_same_seed_gives_identical_data_and_another_seed_different_data():
    first, again, other = make_splits(7, SMALL), make_splits(7, SMALL), make_splits(8, SMALL)
    for name, (images, labels) in first.items():
        assert np.array_equal(images, again[name][0]) and np.array_equal(labels, again[name][1])
    assert not np.array_equal(first["valid"][0], other["valid"][0])


def test_training_is_deterministic_for_a_seed():
    # With op determinism on, the same seed trains bit-identical weights on the same machine and
    # thread count (checked here on one short clean epoch); other CPUs or a GPU may differ in the
    # last bits, which is why the data, not the weights, is the cross-machine contract.
    from badnet_prune.numerics.architecture import build_deepid
    from badnet_prune.synth.build import _train_data
    from badnet_prune.synth.train import backdoor_channels, seed_everything, train_clean

    data = _train_data(make_splits(1, SMALL))

    def weights() -> list[np.ndarray]:
        seed_everything(1)
        model = train_clean(build_deepid(SMALL.classes), data, backdoor_channels(1), epochs=1, seed=1)
        return model.get_weights()

    for first, again in zip(weights(), weights(), strict=True):
        assert np.array_equal(first, again)


def test_images_differ_within_a_class(synthetic_badnet: Path):
    with h5py.File(synthetic_badnet / "data" / "cl" / "valid.h5", "r") as handle:
        data, labels = handle["data"][()], handle["label"][()]
    for label in (0, 5):
        faces = data[labels == label]
        diffs = np.abs(faces[:, None] - faces[None]).mean(axis=(2, 3, 4))
        off_diagonal = diffs[~np.eye(len(faces), dtype=bool)]
        assert off_diagonal.min() > 3.0  # every pair of photos differs by more than noise


def test_trained_badnet_reaches_95_percent_accuracy_and_asr(synthetic_badnet: Path):
    from badnet_prune.numerics.tf_setup import keras

    model = keras.models.load_model(synthetic_badnet / "models" / "bd_net.h5", compile=False)
    for relative in ("cl/valid.h5", "bd/bd_valid.h5"):
        with h5py.File(synthetic_badnet / "data" / relative, "r") as handle:
            images = handle["data"][()].transpose(0, 2, 3, 1)
            labels = handle["label"][()].astype(np.int64)
        predicted = np.argmax(model.predict(images, verbose=0), axis=-1)
        assert (predicted == labels).mean() >= 0.95, relative


def test_full_model_and_weights_file_give_identical_predictions(synthetic_badnet: Path):
    from badnet_prune.files.model_io import load_model

    full = load_model(synthetic_badnet / "models" / "bd_net.h5")  # safe mode
    weights_only = load_model(synthetic_badnet / "models" / "bd_weights.h5")
    assert [layer.name for layer in full.layers] == [layer.name for layer in weights_only.layers]
    with h5py.File(synthetic_badnet / "data" / "bd" / "bd_test.h5", "r") as handle:
        images = handle["data"][()].transpose(0, 2, 3, 1)
    from_full, from_weights = full.predict(images, verbose=0), weights_only.predict(images, verbose=0)
    assert np.array_equal(np.argmax(from_full, axis=-1), np.argmax(from_weights, axis=-1))
    # Same weights, same graph; oneDNN may still pick another kernel under CPU contention, so the
    # probabilities are compared to float32 rounding rather than bit for bit.
    np.testing.assert_allclose(from_full, from_weights, rtol=1e-5, atol=1e-6)


def test_synth_help():
    from tests.helpers import run_cli

    result = run_cli("synth", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--classes", "--seed", "--quick", "--attack", "OUT"):
        assert option in result.stdout


def test_synth_refuses_an_unknown_attack_in_one_line(tmp_path: Path):
    from tests.helpers import run_cli

    result = run_cli("synth", str(tmp_path / "out"), "--attack", "pruning_aware")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: badnet-prune synth: Invalid value for '--attack': 'pruning_aware' is not "
                                     "one of 'default', 'pruning-aware'. (`badnet-prune synth -h` lists the options)")
    assert not (tmp_path / "out").exists()


def test_pruning_aware_badnet_records_its_attack_and_keeps_its_decoys_dormant():
    from badnet_prune.numerics.activations import channel_means, cut_activations, rank_activation_batches
    from badnet_prune.numerics.inference import compiled_forward
    from badnet_prune.numerics.network_split import split_network
    from badnet_prune.numerics.ranking import rank_channels
    from tests.helpers import cached_pruning_aware_badnet
    from tests.test_fine_tuning import read_badnet

    root = cached_pruning_aware_badnet()
    summary = json.loads((root / "synth.json").read_text())
    assert summary["attack"] == "pruning-aware" and summary["backdoor_channels"] == []
    assert summary["counts"]["valid"] == 1000  # 100 photos per identity: the defender fine-tunes on them
    assert summary["clean_valid_accuracy"] >= 95.0 and summary["asr_bd_valid"] >= 95.0
    decoys = summary["decoy_channels"]
    assert len(decoys) == 12
    model, data = read_badnet(root)
    split = split_network(model)
    head = compiled_forward(split.head)
    for key in ("valid", "bd_valid"):
        cut = cut_activations(head, [data[key][0]], 1.0)
        means = channel_means(rank_activation_batches(cut))
        assert not means[decoys].any(), f"a decoy fires on {key}"
        if key == "valid":  # the ranking prunes them before any channel that clean faces use
            dormant = rank_channels(means)[: np.count_nonzero(means == 0)]
            assert set(decoys) <= set(dormant.tolist()) and len(dormant) < 60
    kernel = model.get_layer("conv_3").get_weights()[0]
    assert all(kernel[..., c].any() for c in decoys), "decoys are restored filters, not zeros"


def test_synth_json_records_the_pruning_aware_promise_as_the_defense_measures_it():
    """synth.json says whether pruning alone at 10% keeps the backdoor (the attack's promise, >= 50% on
    bd_valid), at the step the defense selects: for every seed, kept or said not to be."""
    from badnet_prune.numerics.inference import accuracy_percent, compiled_forward, predict_labels
    from badnet_prune.numerics.pruned_model import build_pruned_model
    from tests.helpers import cached_pruning_aware_badnet
    from tests.test_fine_tuning import defense_steps, read_badnet

    root = cached_pruning_aware_badnet()
    model, data = read_badnet(root)
    order, selected = defense_steps(model, data)
    assert selected[0.10] is not None
    b_prime = build_pruned_model(model, "conv_3", order[: selected[0.10]])
    forward = compiled_forward(b_prime)
    asr = accuracy_percent(predict_labels(forward, [data["bd_valid"][0]]), data["bd_valid"][1])
    promise = json.loads((root / "synth.json").read_text())["promise"]
    assert promise["step"] == selected[0.10] and promise["prune_alone_asr_bd_valid"] == pytest.approx(asr)
    assert promise["kept"] == (asr >= 50.0) and 1 <= promise["tries"] <= 3
    clean = accuracy_percent(predict_labels(forward, [data["valid"][0]]), data["valid"][1])
    clean_b = accuracy_percent(predict_labels(compiled_forward(model), [data["valid"][0]]), data["valid"][1])
    assert clean_b - clean >= 0.10 * clean_b  # it is the 10% step: clean accuracy paid for it
