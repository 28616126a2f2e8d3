"""Inputs refused before anything is made (issue 29, points 4, 5 and 8): a missing or unusable model or data
file, a layer the model lacks, labels beyond the model's classes, and data in another layout than the model's.
The command says each problem once, in one line, and registers nothing; the API raises BadInputError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from badnet_prune.files.data import open_data_file, write_data_file
from badnet_prune.numerics.errors import BadInputError
from tests.helpers import run_cli, run_console_script


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "BADNET_PRUNE_CACHE": str(tmp_path / "cache"), "COLUMNS": "100"}
    env.pop("BADNET_PRUNE_BROKER", None)
    env.pop("BADNET_PRUNE_DB", None)
    return env


def _defend_args(root: Path, out: Path, **overrides: str) -> list[str]:
    data = root / "data"
    options = {"--model": str(root / "models" / "bd_net.h5"), "--clean-valid": str(data / "cl" / "valid.h5"),
               "--clean-test": str(data / "cl" / "test.h5"),
               "--poisoned": f"sunglasses={data / 'bd' / 'bd_valid.h5'},{data / 'bd' / 'bd_test.h5'}",
               "--out": str(out), **overrides}
    return [part for option, value in options.items() for part in (option, value)]


def _nothing_made(tmp_path: Path) -> None:
    """No results folder and no database anywhere under the test's folder (the cwd's default included)."""
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob("*.db")), list(tmp_path.rglob("*.db"))


def test_a_missing_model_through_the_console_script_is_one_line_and_registers_nothing(synthetic_badnet, tmp_path):
    result = run_console_script("defend", *_defend_args(synthetic_badnet, tmp_path / "out",
                                                        **{"--model": "nonexist.h5"}), env=_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'nonexist.h5'}: no such model file"], result.stderr
    _nothing_made(tmp_path)


@pytest.mark.parametrize("which", ["model", "clean_valid", "clean_test"])
def test_the_api_raises_bad_input_error_for_a_missing_file_before_creating_anything(synthetic_badnet, tmp_path,
                                                                                    monkeypatch, which):
    from badnet_prune import defend

    monkeypatch.delenv("BADNET_PRUNE_BROKER", raising=False)
    monkeypatch.delenv("BADNET_PRUNE_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    data = synthetic_badnet / "data"
    files = {"model": synthetic_badnet / "models" / "bd_net.h5", "clean_valid": data / "cl" / "valid.h5",
             "clean_test": data / "cl" / "test.h5"}
    files[which] = tmp_path / "nonexist.h5"
    with pytest.raises(BadInputError, match=r"nonexist\.h5: no such"):
        defend(files["model"], files["clean_valid"], files["clean_test"], tmp_path / "out")
    _nothing_made(tmp_path)


def test_a_model_file_that_carries_code_is_refused_by_the_api_before_anything_is_made(synthetic_badnet, tmp_path,
                                                                                     monkeypatch):
    from badnet_prune import defend

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "lambda.h5"
    with h5py.File(synthetic_badnet / "models" / "bd_net.h5", "r") as source, h5py.File(model, "w") as target:
        for key in source:
            source.copy(key, target)
        config = json.loads(source.attrs["model_config"])
        config["config"]["layers"][-1]["class_name"] = "Lambda"
        target.attrs.update({key: value for key, value in source.attrs.items() if key != "model_config"})
        target.attrs["model_config"] = json.dumps(config)
    data = synthetic_badnet / "data" / "cl"
    with pytest.raises(BadInputError, match="carries code"):
        defend(model, data / "valid.h5", data / "test.h5", tmp_path / "out")
    _nothing_made(tmp_path)


def test_a_missing_layer_is_one_line_listing_the_models_layers_and_the_options(synthetic_badnet, tmp_path):
    result = run_cli("defend", *_defend_args(synthetic_badnet, tmp_path / "out", **{"--rank-layer": "flatten_9"}),
                     env=_env(tmp_path))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "no layer 'flatten_9' (--rank-layer)" in line
    assert "Conv2D layers: conv_1, conv_2, conv_3, conv_4" in line and "pooling layers: pool_1, pool_2, pool_3" in line
    assert "--prune-layer" in line
    assert not (tmp_path / "out").exists()


def test_labels_beyond_the_models_classes_are_found_before_registering(synthetic_badnet, tmp_path):
    images = open_data_file(synthetic_badnet / "data" / "cl" / "valid.h5").read_all()[:8]
    wrong = tmp_path / "twelve_classes.h5"
    write_data_file(wrong, images, np.full(8, 11))
    result = run_cli("defend", *_defend_args(synthetic_badnet, tmp_path / "out", **{"--clean-test": str(wrong)}),
                     env=_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {wrong}: label 0 is 11, outside the model's 10 classes (0..9)"]
    _nothing_made(tmp_path)


def _channels_last_copy(source: Path, target: Path, transpose: tuple[int, ...] = (0, 2, 3, 1)) -> Path:
    with h5py.File(source, "r") as handle, h5py.File(target, "w") as out:
        out.create_dataset("data", data=np.asarray(handle["data"]).transpose(transpose))
        out.create_dataset("label", data=np.asarray(handle["label"]))
    return target


def test_channels_last_data_gives_the_accuracy_of_the_labs_layout_and_says_so_once(synthetic_badnet, tmp_path):
    lab = synthetic_badnet / "data" / "cl" / "valid.h5"
    last = _channels_last_copy(lab, tmp_path / "valid_last.h5")
    result = run_cli("evaluate", "--model", str(synthetic_badnet / "models" / "bd_net.h5"),
                     "--data", str(lab), "--data", str(last), "--input-scale", "1", "--json", env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    accuracies = [row["accuracy"] for row in json.loads(result.stdout)["results"]]
    assert accuracies[0] == accuracies[1]
    said = [line for line in result.stderr.splitlines() if "channels last" in line]
    assert said == [f"{last}: `data` is channels last (n, 55, 47, 3), not the lab's channels first (n, 3, 55, 47); "
                    "read as channels last"]


def test_data_that_fits_neither_layout_names_both(synthetic_badnet, tmp_path):
    wrong = _channels_last_copy(synthetic_badnet / "data" / "cl" / "valid.h5", tmp_path / "wrong.h5", (0, 3, 1, 2))
    result = run_cli("defend", *_defend_args(synthetic_badnet, tmp_path / "out", **{"--clean-valid": str(wrong)}),
                     env=_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {wrong}: `data` declares images of 47x3x55; the model expects channels first (n, 3, 55, 47) "
        "or channels last (n, 55, 47, 3)"]
    _nothing_made(tmp_path)
    # evaluate reads each file's structure before the model's: without a model, both layouts are named too
    result = run_cli("evaluate", "--model", str(synthetic_badnet / "models" / "bd_net.h5"), "--data", str(wrong),
                     env=_env(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {wrong}: `data` declares images of 47x3x55, neither channels first (n, C, H, W) nor channels last "
        "(n, H, W, C) with at most 4 channels and sides up to 1024"]


def test_a_layout_both_readings_fit_is_refused_as_ambiguous(tmp_path):
    path = tmp_path / "cubes.h5"
    write_data_file(path, np.zeros((2, 3, 3, 3), dtype=np.float32), np.zeros(2))
    assert not open_data_file(path).channels_last  # no model: the lab's layout
    with pytest.raises(BadInputError, match="ambiguous"):
        open_data_file(path, (3, 3, 3))


def test_evaluate_refuses_a_missing_model_before_tensorflow_loads(synthetic_badnet, tmp_path):
    code = (
        "import sys\n"
        "from badnet_prune.orchestrator.cli import main\n"
        f"sys.argv = ['badnet-prune', 'evaluate', '--model', 'nonexist.h5', '--data', {str(synthetic_badnet)!r} "
        "+ '/data/cl/valid.h5']\n"
        "try:\n    main()\nexcept SystemExit as exited:\n"
        "    print(exited.code, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=_env(tmp_path), cwd=tmp_path)
    assert result.stdout.split() == ["2", "False", "False"], result.stderr
    assert result.stderr.splitlines() == ["error: nonexist.h5: no such model file"]


def test_a_failure_while_defending_is_said_once(synthetic_badnet, tmp_path):
    """NaN pixels are found only as the images are read, by a task: the progress says the model failed and why,
    and the last line says that nothing was written, without the reason again."""
    nan_file = tmp_path / "nan_test.h5"
    with h5py.File(synthetic_badnet / "data" / "cl" / "test.h5", "r") as source, h5py.File(nan_file, "w") as out:
        data = np.asarray(source["data"])
        data[5, 0, 0, 0] = np.nan
        out.create_dataset("data", data=data)
        out.create_dataset("label", data=np.asarray(source["label"]))
    result = run_cli("defend", *_defend_args(synthetic_badnet, tmp_path / "out", **{"--clean-test": str(nan_file)}),
                     env=_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("image 5 has NaN or infinite pixel values") == 1, result.stderr
    assert f"model bd_net failed: {nan_file}: image 5 has NaN" in result.stderr
    assert result.stderr.splitlines()[-1] == (f"error: the defense failed, for the reason above; {tmp_path / 'out'} "
                                              "holds no steps.csv or summary.json")
    assert not (tmp_path / "out" / "summary.json").exists()
