"""ANP and CLP as stages, through `defend --anp --clp --clp-statistic` on a quick synthetic BadNet: their files
load in plain Keras safe mode in a fresh process, pruned channels are exactly zero there, each G follows its
rule against B and its pruned net, and summary.json, the stored curves and the CLP statistic agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from badnet_prune.files.data import open_data_file
from badnet_prune.files.model_io import load_model
from badnet_prune.numerics.inference import compiled_forward, predict_labels
from badnet_prune.numerics.repair import repaired_labels
from badnet_prune.numerics.tf_setup import keras
from tests.helpers import PLAIN_KERAS, cached_quick_badnet, run_cli

POISON = "sunglasses"


@pytest.fixture(scope="module")
def defended(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = cached_quick_badnet(0)
    out = tmp_path_factory.mktemp("anp-clp") / "out"
    data = root / "data"
    env = {**os.environ, "BADNET_PRUNE_CACHE": str(out.parent / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("BADNET_PRUNE_DB", None)
    env.pop("BADNET_PRUNE_BROKER", None)
    done = run_cli(
        "defend", "--model", str(root / "models" / "bd_net.h5"), "--clean-valid", str(data / "cl" / "valid.h5"),
        "--clean-test", str(data / "cl" / "test.h5"),
        "--poisoned", f"{POISON}={data / 'bd' / 'bd_valid.h5'},{data / 'bd' / 'bd_test.h5'}",
        "--thresholds", "0.04", "--out", str(out), "--anp", "--anp-iterations", "40", "--clp", "--clp-statistic",
        env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, out, json.loads((out / "summary.json").read_text(encoding="utf-8"))


def test_each_defense_s_files_load_in_plain_keras_with_pruned_channels_zero_and_g_following_its_rule(
        defended, tmp_path: Path) -> None:
    root, out, summary = defended
    models = out / "models"
    pairs = [("B_anp_0.04", "G_anp_0.04"), ("B_anp_mask", "G_anp_mask"), ("B_clp_rule", "G_clp_rule")]
    clean = open_data_file(root / "data" / "cl" / "test.h5")
    poisoned = open_data_file(root / "data" / "bd" / "bd_test.h5")
    images = np.concatenate([clean.read_all(), poisoned.read_all()])
    np.save(tmp_path / "images.npy", images)
    args = [str(tmp_path / "images.npy")]
    for pruned, repaired in pairs:
        args += [str(models / f"{pruned}.keras"), str(tmp_path / f"{pruned}.npy"),
                 str(models / f"{repaired}.keras"), str(tmp_path / f"{repaired}.npy")]
    done = subprocess.run([sys.executable, "-c", PLAIN_KERAS, *args], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    b = load_model(root / "models" / "bd_net.h5")
    labels_b = predict_labels(compiled_forward(b), [images])
    classes = int(b.output_shape[-1])
    for pruned, repaired in pairs:
        labels_pruned = np.argmax(np.load(tmp_path / f"{pruned}.npy"), axis=-1)
        labels_g = np.argmax(np.load(tmp_path / f"{repaired}.npy"), axis=-1)
        np.testing.assert_array_equal(labels_g, repaired_labels(labels_b, labels_pruned, classes))
        provenance = json.loads((models / f"{pruned}.json").read_text(encoding="utf-8"))
        network = keras.models.load_model(models / f"{pruned}.keras", safe_mode=True)
        for layer, channels in provenance["pruned_channels"].items():
            kernel, bias = network.get_layer(layer).get_weights()
            assert not kernel[..., channels].any() and not bias[channels].any(), (pruned, layer)
        assert json.loads((models / f"{repaired}.json").read_text(encoding="utf-8"))["repaired"] is True
    assert summary["anp"]["settings_chosen"]["mask"]["G_anp"]["clean_accuracy"] >= 0


def test_summary_curves_and_statistic_agree(defended) -> None:
    _, _, summary = defended
    anp, clp = summary["anp"], summary["clp"]
    masks = anp["masks"]["conv_3"]
    assert len(masks) == 60 and all(0.0 <= m <= 1.0 for m in masks)
    mask_rule = anp["settings_chosen"]["mask"]
    assert mask_rule["pruned"]["conv_3"] == [c for c, m in enumerate(masks) if m <= anp["settings"]["mask_threshold"]]
    assert mask_rule["channels_pruned"] == len(mask_rule["pruned"]["conv_3"])
    order = sorted(range(60), key=lambda c: (masks[c], c))
    count = anp["settings_chosen"]["0.04"]["channels_pruned"]
    if count is not None:
        assert sorted(anp["settings_chosen"]["0.04"]["pruned"]["conv_3"]) == sorted(order[:count])
    assert clp["chosen_u"] is None or clp["chosen_u"] in clp["settings"]["u_grid"]
    assert 0.0 <= summary["clp_statistic"]["score"] <= 1.0 and summary["clp_statistic"]["layer"].startswith("conv_")
    assert {v["network"] for v in summary["verdict"]["poisons"].values()} <= {"G", "G_anp", "G_clp"}
