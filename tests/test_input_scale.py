"""Input scale auto (issue 17): the scale at which B is accurate is chosen and said in one line, a given scale
that looks wrong is warned of naming the better one, and data of another class count is warned of.

The numerics on tiny NumPy forwards; the commands as the console script runs them (run_cli), on the quick
synthetic BadNet (trained on raw pixels) and the same network with the scale folded into conv_1 (so it expects
pixels / 255, and computes what the raw one computes on raw pixels); the lab's and the competition's real
weights where ../shared/csaw has them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from badnet_prune.db.models import Model, Step
from badnet_prune.db.session import make_engine, session_scope
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.input_scale import AUTO_INPUT_SCALE, choose_input_scale
from badnet_prune.orchestrator.sweep_file import parse_sweep
from tests.helpers import cached_quick_badnet, model_entry, run_cli, write_sweep_toml

CLASSES = 10
CSAW = Path(__file__).resolve().parents[2] / "shared" / "csaw"


# --- the numerics -------------------------------------------------------------------------------------------

def raw_forward(x: np.ndarray) -> np.ndarray:
    """A 'model' on raw pixels: the class is the grey level's band of 25 (0..24 -> 0, 25..49 -> 1, ...)."""
    level = np.clip((np.asarray(x)[:, 0, 0, 0] // 25).astype(int), 0, CLASSES - 1)
    return np.eye(CLASSES, dtype=np.float32)[level]


def divided_forward(x: np.ndarray) -> np.ndarray:
    """The same model trained on pixels / 255."""
    return raw_forward(np.asarray(x) * 255)


def grey_images(labels: np.ndarray) -> np.ndarray:
    return np.broadcast_to((labels * 25 + 12).astype(np.float32)[:, None, None, None], (len(labels), 4, 4, 3)).copy()


LABELS = np.arange(200) % CLASSES
IMAGES = grey_images(LABELS)


def test_auto_chooses_the_scale_at_which_the_model_is_accurate() -> None:
    raw = choose_input_scale(raw_forward, IMAGES, LABELS, CLASSES)
    divided = choose_input_scale(divided_forward, IMAGES, LABELS, CLASSES)
    assert (raw.scale, raw.given, raw.warning, raw.accuracy) == (1.0, None, False, {1.0: 100.0, 255.0: 10.0})
    assert raw.note == "input scale 1 (accuracy 100.0% on the first 200 images of the clean validation file; " \
                       "10.0% at scale 255)"
    assert (divided.scale, divided.warning, divided.accuracy[255.0]) == (255.0, False, 100.0)
    assert divided.note.startswith("input scale 255 (accuracy 100.0% on") and divided.note.endswith("at scale 1)")


def test_a_given_scale_far_below_the_other_is_kept_with_a_warning_naming_the_other() -> None:
    wrong = choose_input_scale(raw_forward, IMAGES, LABELS, CLASSES, given=255.0)
    assert (wrong.scale, wrong.given, wrong.warning) == (255.0, 255.0, True)
    assert wrong.note.startswith("warning: input scale 255 as given (accuracy 10.0% on the first 200 images")
    assert wrong.note.endswith("implausibly low next to scale 1: the model likely expects input scale 1")
    right = choose_input_scale(raw_forward, IMAGES, LABELS, CLASSES, given=1.0)
    assert (right.scale, right.warning) == (1.0, False) and right.note.startswith("input scale 1 as given (")


def test_labels_outside_the_models_classes_warn() -> None:
    labels = LABELS + 5  # a data set of 15 classes for a 10-class model
    choice = choose_input_scale(raw_forward, IMAGES, labels, CLASSES)
    assert choice.warning and choice.outside == 100
    assert "100 of 200 labels of the clean validation file lie outside the model's 10 classes (0..9; the largest " \
           "is 14): the data seem to be of another class count than the model" in choice.note


def test_a_model_accurate_at_neither_scale_warns() -> None:
    """Lab weights on a data set of other classes: labels within range, accuracy near 0 at both scales."""
    other = (LABELS + 1) % CLASSES
    choice = choose_input_scale(raw_forward, IMAGES, other, CLASSES)
    assert choice.warning and choice.scale == 1.0
    assert "the model is accurate at neither scale (chance is 10.0%): do the model and the data have the same " \
           "classes?" in choice.note


def test_an_empty_sample_or_a_scale_other_than_1_or_255_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        choose_input_scale(raw_forward, IMAGES[:0], LABELS[:0], CLASSES)
    with pytest.raises(ValueError, match="1 or 255"):
        choose_input_scale(raw_forward, IMAGES, LABELS, CLASSES, given=2.0)


# --- the sweep file -----------------------------------------------------------------------------------------

def spec_scale(**change: object) -> float:
    model = {"name": "m0", "path": "/m/bd.h5", "clean_valid": "/v.h5", "clean_test": "/t.h5", **change}
    return parse_sweep({"name": "s", "model": [model]}, base=Path("/"), source="test.toml",
                       default_name="s").models[0].input_scale


def test_sweep_files_take_auto_and_default_to_it() -> None:
    assert spec_scale() == spec_scale(input_scale="auto") == AUTO_INPUT_SCALE
    assert spec_scale(input_scale=255) == 255.0


@pytest.mark.parametrize("value", [0, 0.0, "Auto", True, 2])
def test_a_sweep_file_scale_of_zero_is_never_read_as_auto(value: object) -> None:
    with pytest.raises(BadInputError, match=r"model #1\.input_scale: expected"):
        spec_scale(input_scale=value)


# --- the commands -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw_root() -> Path:
    return cached_quick_badnet(0)


@pytest.fixture(scope="module")
def divided_root(raw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick BadNet behind x * 255 clipped at 255: on pixels / 255 it computes what the raw one computes on raw
    pixels, on raw pixels it sees white images. (A ReLU network with small biases labels x and x / 255 alike, so
    folding 255 into conv_1 alone would be accurate at both scales.) A full model file with the DeepID layer names."""
    from badnet_prune.files.model_io import load_model
    from badnet_prune.numerics.architecture import IMAGE_SHAPE
    from badnet_prune.numerics.tf_setup import keras

    root = tmp_path_factory.mktemp("divided")
    raw = load_model(weights(raw_root))
    layer = raw.get_layer
    inputs = keras.Input(shape=IMAGE_SHAPE, name="input")
    x = keras.layers.ReLU(max_value=255.0, name="saturate")(keras.layers.Rescaling(255.0, name="times_255")(inputs))
    for name in ("conv_1", "pool_1", "conv_2", "pool_2", "conv_3"):
        x = layer(name)(x)
    pool_3 = layer("pool_3")(x)
    fc_1 = layer("fc_1")(layer("flatten_1")(pool_3))
    fc_2 = layer("fc_2")(layer("flatten_2")(layer("conv_4")(pool_3)))
    outputs = layer("output")(layer("activation_1")(layer("add_1")([fc_1, fc_2])))
    (root / "models").mkdir()
    keras.Model(inputs, outputs).save(root / "models" / "divided.keras")
    (root / "data").symlink_to(raw_root / "data")
    return root


def env_for(folder: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BADNET_PRUNE_")}
    return env | {"BADNET_PRUNE_DB": f"sqlite:///{folder / 'db.sqlite'}", "BADNET_PRUNE_CACHE": str(folder / "cache"),
                  "BADNET_PRUNE_ARTIFACTS": str(folder / "artifacts"), "COLUMNS": "400"}


def evaluate(model: Path, *data: Path, options: tuple[str, ...] = ()):
    files = [item for path in data for item in ("--data", str(path))]
    done = run_cli("evaluate", "--model", str(model), *files, *options, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), done.stderr


def weights(root: Path) -> Path:
    return next((root / "models").glob("*.keras"), root / "models" / "bd_weights.h5")


def valid(root: Path) -> Path:
    return root / "data" / "cl" / "valid.h5"


def test_evaluate_chooses_scale_1_for_a_raw_pixel_model_and_255_for_one_on_divided_pixels(
    raw_root: Path, divided_root: Path
) -> None:
    raw, raw_said = evaluate(weights(raw_root), valid(raw_root))
    divided, divided_said = evaluate(weights(divided_root), valid(divided_root))
    assert raw["input_scale"] == 1 and divided["input_scale"] == 255
    assert raw["input_scale_warning"] is divided["input_scale_warning"] is False
    assert raw_said.count("input scale") == 1
    assert f": input scale 1 (accuracy 100.0% on the first 300 images of {valid(raw_root)}; " in raw_said
    assert ": input scale 255 (accuracy" in divided_said
    images = raw["results"][0]["images"]
    assert abs(raw["results"][0]["accuracy"] - divided["results"][0]["accuracy"]) <= 100 / images + 1e-9


def test_evaluate_at_255_on_a_raw_pixel_model_warns_naming_scale_1_and_goes_on(raw_root: Path) -> None:
    report, said = evaluate(weights(raw_root), valid(raw_root), options=("--input-scale", "255"))
    auto, _ = evaluate(weights(raw_root), valid(raw_root))
    assert report["input_scale"] == 255 and report["results"][0]["accuracy"] < auto["results"][0]["accuracy"]
    assert report["input_scale_warning"] is True and report["input_scale_note"] in said
    assert "warning: input scale 255 as given" in said
    assert "implausibly low next to scale 1: the model likely expects input scale 1" in said


def relabelled(raw_root: Path, folder: Path) -> Path:
    """The quick BadNet's clean validation images labelled as classes 1000.. of another data set."""
    from badnet_prune.files.data import open_data_file, write_data_file

    clean = open_data_file(valid(raw_root))
    other = folder / "relabelled.h5"
    write_data_file(other, clean.read_all(), clean.labels + 1000)
    return other


def test_evaluate_refuses_labels_outside_the_models_classes_in_one_line(raw_root: Path, tmp_path: Path) -> None:
    """Such labels can never be predicted: evaluate refuses the file (as before), the rank stage warns (below)."""
    other = relabelled(raw_root, tmp_path)
    done = run_cli("evaluate", "--model", str(weights(raw_root)), "--data", str(other))
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and str(other) in lines[0], done.stderr
    assert "outside the model's 10 classes" in lines[0]


def scale_rows(db_url: str) -> dict[str, Model]:
    engine = make_engine(db_url)
    try:
        with session_scope(engine) as session:
            rows = {model.name: model for model in session.scalars(select(Model))}
            session.expunge_all()
            return rows
    finally:
        engine.dispose()


def step_zero(db_url: str) -> dict[str, float]:
    engine = make_engine(db_url)
    try:
        with session_scope(engine) as session:
            query = select(Model.name, Step.clean_accuracy).join(Step, Step.model_id == Model.id).where(Step.step == 0)
            return {name: accuracy for name, accuracy in session.execute(query)}
    finally:
        engine.dispose()


def test_a_sweep_chooses_each_models_scale_in_the_rank_stage_and_every_later_stage_uses_it(
    raw_root: Path, divided_root: Path, tmp_path: Path
) -> None:
    raw = model_entry("raw", raw_root)
    divided = model_entry("divided", divided_root) | {"path": str(weights(divided_root))}
    wrong = model_entry("wrong", raw_root, input_scale=255)
    other = model_entry("other", raw_root) | {"clean_valid": str(relabelled(raw_root, tmp_path))}
    del raw["input_scale"]  # absent: auto
    divided["input_scale"] = "auto"
    other["input_scale"] = "auto"
    sweep_file = write_sweep_toml(tmp_path / "sweep.toml", [raw, divided, wrong, other], range_size=100)
    env = env_for(tmp_path)
    done = run_cli("sweep", str(sweep_file), env=env)
    assert done.returncode == 1, done.stderr[-3000:]  # the model on data of other classes failed
    sweep_id = done.stdout.split()[0]
    # piped, the watcher says each model's line once; the model on data of other classes failed at registration,
    # said once, before any of its tasks ran
    for name in ("raw", "divided", "wrong"):
        assert done.stderr.count(f"\n{name}: ") + done.stderr.startswith(f"{name}: ") == 1, done.stderr
    assert done.stderr.count("\nmodel other failed: ") == 1 and "\nother: " not in done.stderr, done.stderr
    assert "relabelled.h5: label 0 is 1000, outside the model's 10 classes (0..9)" in done.stderr
    assert "\nwrong: warning: input scale 255 as given" in done.stderr

    rows = scale_rows(env["BADNET_PRUNE_DB"])
    assert {name: (row.input_scale, row.input_scale_auto, row.status) for name, row in rows.items()
            if name != "other"} == {
        "raw": (1.0, True, "done"), "divided": (255.0, True, "done"), "wrong": (255.0, False, "done"),
    }
    # labels outside the model's classes: refused when the sweep is registered, so no stage of it ran
    assert rows["other"].status == "failed" and rows["other"].input_scale_note is None
    assert rows["other"].error.endswith("relabelled.h5: label 0 is 1000, outside the model's 10 classes (0..9)")
    assert rows["divided"].input_scale_note.startswith("input scale 255 (accuracy ")
    assert rows["wrong"].input_scale_note.endswith("the model likely expects input scale 1")
    # the ranking's acc0 and the pruning stage's step 0 ran at the chosen scale: the folded network computes
    # what the raw one does (an image of float rounding allowed); the wrong scale's numbers are the wrong ones
    steps = step_zero(env["BADNET_PRUNE_DB"])
    one_image = 100 / 300 + 1e-9
    assert abs(rows["divided"].acc0 - rows["raw"].acc0) <= one_image
    assert abs(steps["divided"] - steps["raw"]) <= one_image and steps["divided"] == rows["divided"].acc0
    assert rows["wrong"].acc0 < rows["raw"].acc0 - 10
    provenance = [json.loads(path.read_text()) for path in (tmp_path / "artifacts").rglob("divided/*.json")]
    assert provenance and {entry["input_scale"] for entry in provenance} == {255.0}

    status = run_cli("status", sweep_id, env=env)
    assert status.returncode == 0 and "input scale 255 (accuracy" in status.stdout, status.stdout
    notes = json.loads(run_cli("status", sweep_id, "--json", env=env).stdout)["input_scale_notes"]
    assert notes == {name: row.input_scale_note for name, row in rows.items() if row.input_scale_note is not None}
    assert set(notes) == {"raw", "divided", "wrong"}


def test_defend_says_the_chosen_scale_before_the_table(divided_root: Path, tmp_path: Path) -> None:
    data = divided_root / "data"
    env = env_for(tmp_path)
    done = run_cli(
        "defend", "--model", str(weights(divided_root)), "--clean-valid", str(data / "cl/valid.h5"),
        "--clean-test", str(data / "cl/test.h5"), "--thresholds", "0.1", "--out", str(tmp_path / "out"), env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith("divided: input scale 255 (accuracy ") and "clean validation accuracy" in done.stdout


# --- the real weights ---------------------------------------------------------------------------------------

real = pytest.mark.skipif(not (CSAW / "bd_weights.h5").is_file(), reason=f"no real weights in {CSAW}")


@real
@pytest.mark.parametrize(("name", "expected"), [("bd_weights.h5", 1.0), ("sunglasses_bd_weights.h5", 255.0)])
def test_real_weights_get_the_scale_their_authors_evaluate_them_at(name: str, expected: float) -> None:
    """On synthetic faces labelled by the model itself at its authors' scale (the lab's raw pixels, the
    competition's pixels / 255): auto chooses that scale, and the other given is warned of."""
    from badnet_prune.files.model_io import load_model, num_classes
    from badnet_prune.numerics.inference import compiled_forward, forward_labels, scale_images
    from badnet_prune.synth.faces import render, sample_identities, sample_poses

    rng = np.random.default_rng(0)
    count = 512
    faces = render(sample_identities(rng, 64), np.arange(count) % 64, sample_poses(rng, count),
                   np.zeros(count, dtype=bool))
    network = load_model(CSAW / name)
    forward = compiled_forward(network)
    own = forward_labels(forward, scale_images(faces, expected))
    chosen = choose_input_scale(forward, faces, own, num_classes(network))
    other = 256.0 - expected
    warned = choose_input_scale(forward, faces, own, num_classes(network), given=other)
    assert (chosen.scale, chosen.warning, chosen.accuracy[expected]) == (expected, False, 100.0)
    assert warned.warning and warned.note.endswith(f"the model likely expects input scale {expected:g}")


@real
def test_lab_weights_on_a_data_set_of_other_classes_warn(raw_root: Path) -> None:
    """The lab's 1283-class BadNet on the quick BadNet's 10-class faces: 0% at both scales, one warning."""
    report, said = evaluate(CSAW / "bd_weights.h5", valid(raw_root))
    assert report["results"][0]["accuracy"] < 5
    assert "the model is accurate at neither scale" in said and report["input_scale_warning"] is True
