"""The recommended repair (`defend --repair`): fine-pruning of the largest threshold's B' with the default recipe,
for every model the same; its files load in plain Keras and follow their rules, and it reaches the leaderboard's
inputs (the evaluations of a repaired network) like any defense."""

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
from badnet_prune.numerics.fine_tune_settings import FineTuneSettings
from badnet_prune.numerics.inference import compiled_forward, predict_labels
from badnet_prune.numerics.repair import repaired_labels
from badnet_prune.numerics.tf_setup import keras
from tests.helpers import PLAIN_KERAS, cached_pruning_aware_badnet, run_cli

POISON = "sunglasses"


@pytest.fixture(scope="module")
def repaired(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root, out = cached_pruning_aware_badnet(), tmp_path_factory.mktemp("repair") / "out"
    data = root / "data"
    env = {**os.environ, "BADNET_PRUNE_CACHE": str(out.parent / "cache"), "COLUMNS": "120"}
    env.pop("BADNET_PRUNE_BROKER", None)
    env.pop("BADNET_PRUNE_DB", None)
    done = run_cli("defend", "--model", str(root / "models" / "bd_net.h5"), "--clean-valid", str(data / "cl/valid.h5"),
                   "--clean-test", str(data / "cl/test.h5"),
                   "--poisoned", f"{POISON}={data / 'bd/bd_valid.h5'},{data / 'bd/bd_test.h5'}",
                   "--thresholds", "0.02,0.10", "--repair", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, out, json.loads((out / "summary.json").read_text(encoding="utf-8"))


def test_the_repair_runs_once_at_the_largest_threshold_with_the_default_recipe(repaired) -> None:
    _, out, summary = repaired
    assert set(summary["repair"]) == {"0.1"}
    outcome = summary["repair"]["0.1"]
    assert outcome["settings"] == FineTuneSettings().model_dump(mode="json")
    assert 0 <= outcome["kept_epoch"] <= FineTuneSettings().epochs
    models = out / "models"
    assert (models / "B_repair_0.1.keras").is_file() and (models / "G_repair_0.1.keras").is_file()
    assert not (models / "B_repair_0.02.keras").exists()
    provenance = json.loads((models / "B_repair_0.1.json").read_text(encoding="utf-8"))
    assert provenance["kind"] == "B_repair" and provenance["kept_epoch"] == outcome["kept_epoch"]
    assert provenance["pruned_channels"] == summary["pruning_order"][: summary["thresholds"]["0.1"]["step"]]


def test_the_repaired_files_load_in_plain_keras_and_g_repair_follows_gs_rule(repaired, tmp_path: Path) -> None:
    root, out, summary = repaired
    clean, poisoned = (open_data_file(root / "data" / p) for p in ("cl/test.h5", "bd/bd_test.h5"))
    images = np.concatenate([clean.read_all(), poisoned.read_all()])
    np.save(tmp_path / "images.npy", images)
    b_file, g_file = out / "models" / "B_repair_0.1.keras", out / "models" / "G_repair_0.1.keras"
    args = [tmp_path / "images.npy", b_file, tmp_path / "b.npy", g_file, tmp_path / "g.npy"]
    done = subprocess.run([sys.executable, "-c", PLAIN_KERAS, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    labels_repair = np.argmax(np.load(tmp_path / "b.npy"), axis=-1)
    model_b = load_model(root / "models" / "bd_net.h5")
    classes = int(model_b.output_shape[-1])
    labels_b = predict_labels(compiled_forward(model_b), [images])
    np.testing.assert_array_equal(np.argmax(np.load(tmp_path / "g.npy"), axis=-1),
                                  repaired_labels(labels_b, labels_repair, classes))
    pruned = summary["pruning_order"][: summary["thresholds"]["0.1"]["step"]]
    kernel, bias = keras.models.load_model(b_file, safe_mode=True).get_layer("conv_3").get_weights()
    assert not kernel[..., pruned].any() and not bias[pruned].any()
    asr = 100.0 * np.mean(labels_repair[clean.count:] == poisoned.labels)
    stored = summary["repair"]["0.1"]
    assert stored["B_repair"][f"asr_{POISON}"] == pytest.approx(asr)
    assert stored["B_repair"]["clean_accuracy"] == pytest.approx(100.0 * np.mean(labels_repair[:clean.count] ==
                                                                                 clean.labels))
    print(f"B_repair at 10%: ASR {asr:.2f}%, clean {stored['B_repair']['clean_accuracy']:.2f}% on the test files")
