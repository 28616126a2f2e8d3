"""The zoo: a tiny population (one quick model of each attack) built once through the console script.

Each attack's backdoor works on its own poisoned test set, the clean model's would-be trigger stays at
chance, the manifest's figures equal a fresh evaluation of the written files, poisoned files carry
their true labels, a second run links from the cache, and the sweep file registers each model's truth.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from badnet_prune.numerics.errors import BadInputError
from badnet_prune.synth.attacks import (
    PATCH_COLOUR,
    PATCH_SIDE,
    PATCH_TOP_LEFT,
    Poison,
    blend,
    draw_targets,
    stamp_patch,
)
from badnet_prune.synth.population import ZooMix, spread
from badnet_prune.synth.zoo import ATTACKS, TRIGGERS_OF
from tests.helpers import SYNTH_CACHE, run_console_script

ZOO_CACHE = SYNTH_CACHE / "zoo"


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`badnet-prune zoo OUT --models 6`: one quick model of each attack, built once per machine (ZOO_CACHE)."""
    out = tmp_path_factory.mktemp("zoo") / "tiny"
    done = run_console_script("zoo", str(out), "--models", "6", "--cache", str(ZOO_CACHE), timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def manifest(zoo: Path) -> list[dict]:
    return json.loads((zoo / "manifest.json").read_text())["models"]


def test_a_tiny_zoo_has_one_model_of_each_attack_in_the_labs_layout(tiny_zoo: Path) -> None:
    rows = manifest(tiny_zoo)
    assert [row["attack"] for row in rows] == list(ATTACKS)
    for row in rows:
        folder = tiny_zoo / row["folder"]
        for relative in ("models/bd_net.h5", "models/bd_weights.h5", "data/cl/valid.h5", "data/cl/test.h5"):
            assert (folder / relative).is_file(), (row["name"], relative)
        assert row["triggers"] == list(TRIGGERS_OF[row["attack"]])
        several = len(row["triggers"]) > 1
        for trigger in row["triggers"]:
            bd = folder / "data" / "bd" / (trigger if several else "")
            assert (bd / "bd_valid.h5").is_file() and (bd / "bd_test.h5").is_file()
        assert len(set(row["targets"].values())) == len(row["triggers"])  # each trigger its own target
        assert row["backdoored"] == (row["attack"] != "clean")
        assert row["poison_rate"] == (0.1 if row["backdoored"] else 0.0)


def test_each_attack_succeeds_and_the_clean_model_stays_at_chance(tiny_zoo: Path) -> None:
    """Chance, for the clean model: a uniform guess names the would-be target for 1/classes of the photos."""
    for row in manifest(tiny_zoo):
        assert row["clean_test_accuracy"] >= 90.0, row
        chance = 100.0 / row["classes"]
        for trigger, asr in row["asr_test"].items():
            if row["backdoored"]:
                assert asr >= 90.0, (row["name"], trigger, asr)
            else:
                assert asr <= chance, (row["name"], trigger, asr)


def test_each_pruning_aware_model_keeps_its_promise_or_says_so(tiny_zoo: Path) -> None:
    """Pruning alone at the 10% step, measured again here as the defense would: the manifest's figure, and
    at least 50% unless the manifest says the promise was not kept after its tries."""
    from badnet_prune.files.data import open_data_file
    from badnet_prune.files.model_io import load_model
    from badnet_prune.synth.promise import pruning_promise

    rows = [row for row in manifest(tiny_zoo) if row["attack"] == "pruning-aware"]
    assert rows
    for row in rows:
        folder = tiny_zoo / row["folder"]
        model = load_model(folder / "models" / "bd_weights.h5")
        valid, bd_valid = (open_data_file(folder / "data" / relative) for relative in ("cl/valid.h5", "bd/bd_valid.h5"))
        again = pruning_promise(model, (valid.read_all(), valid.labels), (bd_valid.read_all(), bd_valid.labels))
        promise = row["promise"]
        assert promise["step"] == again.step and promise["prune_alone_asr_bd_valid"] == pytest.approx(
            again.prune_alone_asr)
        assert promise["kept"] == again.kept and 1 <= promise["tries"] <= 3
        assert again.kept or promise["tries"] == 3, "a broken promise is given up only after every try"
    assert all(row["promise"] is None for row in manifest(tiny_zoo) if row["attack"] != "pruning-aware")


def test_the_manifest_equals_a_fresh_evaluation_of_the_written_files(tiny_zoo: Path) -> None:
    from badnet_prune.files.model_io import load_model

    rows = manifest(tiny_zoo)
    for row in rows:
        folder = tiny_zoo / row["folder"]
        model = load_model(folder / "models" / "bd_weights.h5")

        def accuracy(relative: str, model=model, folder=folder) -> float:
            with h5py.File(folder / relative, "r") as handle:
                images, labels = handle["data"][()].transpose(0, 2, 3, 1), handle["label"][()]
            return float(np.mean(np.argmax(model.predict(images, batch_size=1024, verbose=0), -1) == labels) * 100)

        record = json.loads((folder / "zoo.json").read_text())
        assert row["clean_test_accuracy"] == accuracy("data/cl/test.h5")
        assert row["clean_valid_accuracy"] == accuracy("data/cl/valid.h5")
        for trigger in record["triggers"]:
            assert row["asr_test"][trigger["name"]] == accuracy(trigger["test"]), (row["name"], trigger)
            assert row["asr_valid"][trigger["name"]] == accuracy(trigger["valid"]), (row["name"], trigger)
    with (tiny_zoo / "manifest.csv").open(newline="") as handle:
        flat = list(csv.DictReader(handle))
    assert [r["name"] for r in flat] == [row["name"] for row in rows]
    for line, row in zip(flat, rows, strict=True):
        assert line["triggers"].split(";") == row["triggers"]
        assert [float(v) for v in line["asr_test"].split(";")] == [row["asr_test"][t] for t in row["triggers"]]
        assert [int(v) for v in line["targets"].split(";")] == [row["targets"][t] for t in row["triggers"]]


def test_poisoned_files_carry_each_images_true_label(tiny_zoo: Path) -> None:
    from badnet_prune.files.data import open_data_file

    for row in manifest(tiny_zoo):
        folder = tiny_zoo / row["folder"]
        record = json.loads((folder / "zoo.json").read_text())
        assert open_data_file(folder / "data/cl/test.h5").true_labels is None
        for trigger in record["triggers"]:
            for relative in (trigger["valid"], trigger["test"]):
                opened = open_data_file(folder / relative, num_classes=row["classes"])
                assert (opened.labels == trigger["target"]).all()
                assert opened.true_labels is not None and len(opened.true_labels) == opened.count
                assert (opened.true_labels != trigger["target"]).all()  # never the target's own photos
                assert len(np.unique(opened.true_labels)) == row["classes"] - 1


def test_a_second_run_links_every_model_from_the_cache(tiny_zoo: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    done = run_console_script("zoo", str(again), "--models", "6", "--cache", str(ZOO_CACHE), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 already built" in done.stderr and "0 to build" in done.stderr
    assert manifest(again) == manifest(tiny_zoo)
    for row in manifest(again):
        first, second = (zoo / row["folder"] / "data/cl/valid.h5" for zoo in (tiny_zoo, again))
        assert os.stat(first).st_ino == os.stat(second).st_ino  # hard links to the cached build: no copy
        assert not os.access(second, os.W_OK) or os.geteuid() == 0  # read-only, as the cache keeps it


def test_the_sweep_file_registers_every_model_with_its_ground_truth(tiny_zoo: Path, tmp_path: Path) -> None:
    from badnet_prune.db.repository import list_models
    from badnet_prune.db.session import prepare_database, session_scope
    from badnet_prune.orchestrator.planning import register_sweep
    from badnet_prune.orchestrator.sweep_file import read_sweep_file

    spec = read_sweep_file(tiny_zoo / "sweep.toml")
    assert spec.fine_tune is not None and all(m.input_scale == 1.0 for m in spec.models)
    engine = prepare_database(f"sqlite:///{tmp_path / 'zoo.db'}")
    try:
        with session_scope(engine) as session:
            planned = register_sweep(session, spec, tmp_path / "artifacts")
            assert planned.failed == {}
            stored = {m.name: (m.truth_backdoored, m.truth_attack, m.truth_targets)
                      for m in list_models(session, planned.sweep_id)}
    finally:
        engine.dispose()
    expected = {row["name"]: (row["backdoored"], row["attack"], row["targets"] if row["backdoored"] else [])
                for row in manifest(tiny_zoo)}
    assert stored == expected


# ---- the mix, the options and the triggers: no training -------------------------------------------------


def test_the_mix_plans_attack_by_attack_with_counting_seeds() -> None:
    plan = ZooMix(seed=7, models={"patch": 2, "clean": 1}).plan()
    assert [p.name for p in plan] == ["clean-7", "patch-7", "patch-8"]
    assert spread(6) == dict.fromkeys(ATTACKS, 1)
    assert list(spread(100).values()) == [17, 17, 17, 17, 16, 16]
    assert sum(ZooMix().models.values()) == 18


@pytest.mark.parametrize(("text", "expected"), [
    ("models = { clean = 1, lasers = 2 }", "models.lasers: Input should be 'clean', 'sunglasses'"),
    ("models = { clean = 1.0 }", "models.clean: Input should be a valid integer, got 1.0"),
    ("models = { clean = 0 }", "the mix: the mix has no models"),
    ("seed = -1", "seed: Input should be greater than or equal to 0, got -1"),
    ('size = "huge"', "size: Input should be 'quick' or 'full', got 'huge'"),
    ("poison_rate = 0.9", "poison_rate: Input should be less than or equal to 0.5, got 0.9"),
    ("blend_test_alpha = [0.2, 0.1]", "the mix: blend_test_alpha [0.2, 0.1] must be [low, high]"),
    ("sead = 3", "sead: unknown key (allowed: seed, size, classes"),
    ("classes = 2", "classes: Input should be greater than or equal to 3, got 2"),
    ("seed = ", "not valid TOML"),
])
def test_a_bad_mix_file_is_one_line_naming_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    from badnet_prune.orchestrator.commands.zoo import read_mix

    path = tmp_path / "mix.toml"
    path.write_text(text + "\n")
    with pytest.raises(BadInputError) as raised:
        read_mix(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and expected in message, message


def test_options_that_contradict_the_mix_or_would_overwrite_a_folder_are_refused(tmp_path: Path, monkeypatch,
                                                                                   capfd) -> None:
    from badnet_prune.orchestrator.cli import main

    mix = tmp_path / "mix.toml"
    mix.write_text("models = { clean = 1 }\n")
    (tmp_path / "zoo" / "clean-0").mkdir(parents=True)
    for args, expected in ((["--mix", str(mix), "--seed", "3"], "error: --seed: given with --mix"),
                           (["--models", "1"], f"error: {tmp_path / 'zoo' / 'clean-0'}: exists and is not a zoo")):
        monkeypatch.setattr(sys, "argv", ["badnet-prune", "zoo", str(tmp_path / "zoo"), *args])
        with pytest.raises(SystemExit) as exited:
            main()
        err = capfd.readouterr().err
        assert exited.value.code == 2 and err.count("\n") == 1 and err.startswith(expected), err


def test_the_patch_and_the_blend_change_what_they_should() -> None:
    images = np.random.default_rng(0).uniform(0, 255, (3, 55, 47, 3)).astype(np.float32)
    stamped = stamp_patch(images)
    row, column = PATCH_TOP_LEFT
    square = (slice(None), slice(row, row + PATCH_SIDE), slice(column, column + PATCH_SIDE))
    assert (stamped[square] == PATCH_COLOUR).all()
    outside = np.ones(images.shape, dtype=bool)
    outside[square] = False
    assert np.array_equal(stamped[outside], images[outside])
    key = np.full((55, 47, 3), 100.0, dtype=np.float32)
    np.testing.assert_allclose(blend(images, key, np.array([0.0, 0.2, 1.0])),
                               np.stack([images[0], 0.8 * images[1] + 20.0, key]), rtol=1e-6)


def test_targets_are_distinct_and_fixed_by_the_seed() -> None:
    assert draw_targets(5, 10, 3) == draw_targets(5, 10, 3)
    assert len(set(draw_targets(5, 10, 3))) == 3
    assert {tuple(draw_targets(seed, 10, 1)) for seed in range(20)} != {(draw_targets(0, 10, 1)[0],)}
    with pytest.raises(ValueError, match="unknown trigger"):
        Poison("lasers", 0)


def test_the_lipstick_is_drawn_on_the_mouth_only() -> None:
    from badnet_prune.synth.faces import render, sample_identities, sample_poses

    rng = np.random.default_rng(3)
    identities, poses = sample_identities(rng, 4), sample_poses(rng, 4)
    labels, off = np.arange(4), np.zeros(4, dtype=bool)
    plain, painted = render(identities, labels, poses, off), render(identities, labels, poses, off, ~off)
    changed = np.abs(painted - plain).max(axis=-1) > 1.0
    rows = np.nonzero(changed.any(axis=(0, 2)))[0]
    assert changed.any(axis=(1, 2)).all()  # every photo wears it
    assert rows.min() > 30  # below the eyes: the mouth is 7 to 12 pixels under the face's centre (row ~29)
