"""Model files an attacker would hand over, each refused in one line naming the file, before Keras reads it.

Real files, written here: a .keras archive saved by Keras and then edited as an attacker would (the
shapes of CVE-2025-1550, CVE-2025-8747/9906 and CVE-2026-1462), HDF5 files that declare weights
of absurd shapes (refused without allocating them), malformed configs, and a file that is both a zip
archive and an HDF5 file. Every refusal is the project's own (its message says "refused" and names
--trust-model-code where trusting would change the outcome), in front of Keras's safe mode.
"""

from __future__ import annotations

import copy
import json
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from badnet_prune.files.model_inspect import outline_model
from badnet_prune.files.model_io import load_model, save_legacy_weights
from badnet_prune.numerics.architecture import build_deepid
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.tf_setup import keras

MARKER = Path("/tmp/badnet-prune-hostile-model-ran")


def prune_filters(path: Path) -> int:
    """conv_3's filters as planning reads them: the file's outline, without TensorFlow."""
    return outline_model(path).prune_filters(Path(path), "conv_3")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A genuine .keras archive and a genuine weights-only file of a 10-class DeepID."""
    folder = tmp_path_factory.mktemp("genuine")
    keras.utils.set_random_seed(3)
    model = build_deepid(10)
    model.save(folder / "model.keras")
    save_legacy_weights(model, folder / "weights.h5")
    return {"keras": folder / "model.keras", "weights": folder / "weights.h5"}


def layers_of(config: dict[str, Any]) -> list[dict[str, Any]]:
    return config["config"]["layers"]


def edited_archive(source: Path, target: Path, edit: Callable[[dict[str, Any]], None] | None = None,
                   extra: dict[str, bytes] | None = None, link: str | None = None) -> Path:
    """A copy of a .keras archive with its config.json edited, members added, or a symbolic-link member."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy_:
        for member in original.infolist():
            data = original.read(member.filename)
            if member.filename == "config.json" and edit is not None:
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            copy_.writestr(member.filename, data)
        for name, data in (extra or {}).items():
            copy_.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            copy_.writestr(info, "/etc/passwd")
    return target


def replace_layer(name: str, replacement: Callable[[dict[str, Any]], dict[str, Any]]):
    def edit(config: dict[str, Any]) -> None:
        layers = layers_of(config)
        index = next(i for i, layer in enumerate(layers) if layer["config"]["name"] == name)
        layers[index] = replacement(copy.deepcopy(layers[index]))

    return edit


def as_class(module: str, class_name: str, **config: Any):
    def change(layer: dict[str, Any]) -> dict[str, Any]:
        layer.update(module=module, class_name=class_name, registered_name=None)
        layer["config"].update(config)
        return layer

    return change


def set_activation(value: Any):
    def change(layer: dict[str, Any]) -> dict[str, Any]:
        layer["config"]["activation"] = value
        return layer

    return change


def keras_function(module: str, name: str) -> dict[str, Any]:
    return {"module": module, "class_name": "function", "config": name, "registered_name": "function"}


GADGET_LAMBDA = {  # CVE-2025-9906's first step: a Lambda whose function turns safe mode off
    "function": keras_function("keras.config", "enable_unsafe_deserialization"), "arguments": {},
}
ARCHIVE_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "Lambda layer (CVE-2025-1550)": (
        {"edit": replace_layer("activation_1", as_class("keras.layers", "Lambda", function={
            "class_name": "__lambda__", "config": {"code": "ZGVmIGYoKTogcGFzcw==", "defaults": None,
                                                   "closure": None}}))},
        "carries code (a Lambda layer)",
    ),
    "Lambda calling enable_unsafe_deserialization (CVE-2025-9906)": (
        {"edit": replace_layer("activation_1", as_class("keras.layers", "Lambda", **GADGET_LAMBDA))},
        "unsafe_deserialization",
    ),
    "load_model as an activation (CVE-2025-8747)": (
        {"edit": replace_layer("fc_1", set_activation(keras_function("keras.models", "load_model")))},
        "names the function keras.models.load_model",
    ),
    "a module outside keras": (
        {"edit": replace_layer("activation_1", as_class("os", "system"))},
        "names os.system",
    ),
    "a keras.ops module naming a function": (
        {"edit": replace_layer("activation_1", as_class("keras.src.ops.core", "convert_to_numpy"))},
        "names keras.src.ops.core.convert_to_numpy, which is not one of Keras's operations",
    ),
    "a function outside keras": (
        {"edit": replace_layer("fc_1", set_activation(keras_function("builtins", "exec")))},
        "names the function builtins.exec",
    ),
    "a __lambda__ function config": (
        {"edit": replace_layer("fc_1", set_activation({"class_name": "__lambda__", "config": {"code": "AA=="}}))},
        "carries code (a __lambda__ layer)",
    ),
    "TFSMLayer (CVE-2026-1462)": (
        {"edit": replace_layer("activation_1", as_class("keras.layers", "TFSMLayer", filepath="/tmp/saved_model",
                                                         call_endpoint="serve"))},
        "carries code (a TFSMLayer layer)",
    ),
    "a config that sets safe_mode off": (
        {"edit": replace_layer("activation_1", as_class("keras.layers", "Activation", safe_mode=False))},
        "'safe_mode'",
    ),
    "a registered custom class": (
        {"edit": replace_layer("activation_1", lambda layer: {**layer, "registered_name": "attacker>Evil"})},
        "custom class 'Activation'",
    ),
    "archive member ../ (CVE-2026-1462)": (
        {"extra": {"../../../tmp/badnet-prune-escaped": b"x"}}, "points outside the archive",
    ),
    "archive member under assets/../": ({"extra": {"assets/../../escaped": b"x"}}, "points outside the archive"),
    "absolute archive member": ({"extra": {"/tmp/badnet-prune-escaped": b"x"}}, "points outside the archive"),
    "symbolic link member": ({"link": "assets/passwd"}, "is a symbolic link"),
    "an unexpected member": ({"extra": {"run_me.py": b"import os"}}, "is not part of a Keras model archive"),
    "config.json not JSON": (
        {"edit": None, "extra": {}}, "config.json is not JSON",
    ),
    "a Dense of 2**40 units": (
        {"edit": replace_layer("fc_1", lambda layer: {**layer, "config": {**layer["config"], "units": 2**40}})},
        "declares units = 1099511627776",
    ),
    "filters given as text": (
        {"edit": replace_layer("conv_1", lambda layer: {**layer, "config": {**layer["config"], "filters": "abc"}})},
        "declares filters = 'abc'",
    ),
}
TRUST_CHANGES = {"Lambda layer (CVE-2025-1550)", "Lambda calling enable_unsafe_deserialization (CVE-2025-9906)",
                 "load_model as an activation (CVE-2025-8747)", "a module outside keras", "a function outside keras",
                 "a __lambda__ function config", "TFSMLayer (CVE-2026-1462)", "a config that sets safe_mode off",
                 "a registered custom class", "a keras.ops module naming a function"}


def make_archive(saved: dict[str, Path], folder: Path, case: str) -> Path:
    spec, _ = ARCHIVE_CASES[case]
    target = folder / f"{abs(hash(case))}.keras"
    if case == "config.json not JSON":
        with zipfile.ZipFile(saved["keras"]) as original, zipfile.ZipFile(target, "w") as copy_:
            for member in original.infolist():
                copy_.writestr(member.filename, b"{not json" if member.filename == "config.json"
                               else original.read(member.filename))
        return target
    return edited_archive(saved["keras"], target, spec.get("edit"), spec.get("extra"), spec.get("link"))


def assert_refused(path: Path, problem: str, load: Callable[[], Any]) -> BadInputError:
    with pytest.raises(BadInputError) as raised:
        load()
    error = raised.value
    assert error.source == str(path), str(error)
    assert problem in error.problem, error.problem
    assert "\n" not in str(error)
    return error


@pytest.mark.parametrize("case", sorted(ARCHIVE_CASES))
def test_a_hostile_keras_archive_is_refused_before_keras_reads_it(saved, tmp_path, case):
    path = make_archive(saved, tmp_path, case)
    problem = ARCHIVE_CASES[case][1]
    error = assert_refused(path, problem, lambda: load_model(path))
    assert "refused" in error.problem or "not JSON" in error.problem or "declares" in error.problem
    if case in TRUST_CHANGES:
        assert "--trust-model-code" in error.problem
    assert not MARKER.exists()
    assert not Path("/tmp/badnet-prune-escaped").exists()


@pytest.mark.parametrize("case", sorted(set(ARCHIVE_CASES) - TRUST_CHANGES))
def test_structural_refusals_hold_even_when_the_code_is_trusted(saved, tmp_path, case):
    path = make_archive(saved, tmp_path, case)
    assert_refused(path, ARCHIVE_CASES[case][1], lambda: load_model(path, trust_code=True))


@pytest.mark.parametrize("case", sorted(set(ARCHIVE_CASES) - TRUST_CHANGES - {"a Dense of 2**40 units",
                                                                              "filters given as text"}))
def test_the_planner_refuses_the_same_archives_without_tensorflow(saved, tmp_path, case):
    path = make_archive(saved, tmp_path, case)
    assert_refused(path, ARCHIVE_CASES[case][1], lambda: prune_filters(path))


def test_a_reshape_to_an_inferred_size_is_a_size_not_an_attack(saved, tmp_path):
    inputs = keras.Input(shape=(55, 47, 3))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Reshape((-1,))(inputs))
    path = tmp_path / "reshape.keras"
    keras.Model(inputs, outputs).save(path)
    assert load_model(path).output_shape == (None, 10)


def test_the_genuine_archive_still_loads_and_plans(saved):
    assert prune_filters(saved["keras"]) == 60
    model = load_model(saved["keras"])
    assert model.output_shape == (None, 10)


# ---- HDF5 files: declared shapes, links, malformed configs -----------------------------------------


def weights_with(saved: dict[str, Path], target: Path, change: Callable[[h5py.File], None]) -> Path:
    target.write_bytes(saved["weights"].read_bytes())
    with h5py.File(target, "r+") as handle:
        change(handle)
    return target


def declare(name: str, shape: tuple[int, ...], dtype: str = "f4"):
    def change(handle: h5py.File) -> None:
        del handle[name]
        chunks = tuple(min(size, 64) for size in shape)
        handle.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)

    return change


def drop(name: str):
    def change(handle: h5py.File) -> None:
        del handle[name]

    return change


def set_attr(name: str, value: Any, where: str = "/"):
    def change(handle: h5py.File) -> None:
        handle[where].attrs[name] = value

    return change


def link_out(name: str, target: Path):
    def change(handle: h5py.File) -> None:
        del handle[name]
        handle[name] = h5py.ExternalLink(str(target), "/conv_1/conv_1/kernel:0")

    return change


HDF5_CASES: dict[str, tuple[Callable[[Path], Callable[[h5py.File], None]], str]] = {
    "output kernel (160, 2**42)": (lambda _: declare("output/output/kernel:0", (160, 2**42)),
                                   "declares shape (160, 4398046511104)"),
    "conv kernel (3, 3, 3, 2**40)": (lambda _: declare("conv_2/conv_2/kernel:0", (3, 3, 20, 2**40)),
                                     "declares shape (3, 3, 20, 1099511627776)"),
    "output kernel of a wrong shape": (lambda _: declare("output/output/kernel:0", (161, 10)),
                                       "kernel of shape (161, 10)"),
    "conv kernel of a wrong shape": (lambda _: declare("conv_2/conv_2/kernel:0", (3, 3, 20, 41)),
                                     "layer 'conv_2' has weights of shapes"),
    "a missing layer": (lambda _: drop("conv_2"), "has no layer 'conv_2'"),
    "weights as text": (lambda _: declare("fc_1/fc_1/bias:0", (160,), "S4"), "holds |S4 values, not numbers"),
    "weight_names not text": (lambda _: set_attr("weight_names", np.array([1.5, 2.5]), "conv_1"),
                              "names the weight '1.5'"),
    "an external link": (lambda elsewhere: link_out("conv_1/conv_1/kernel:0", elsewhere), "is an external link"),
    "model_config not JSON": (lambda _: set_attr("model_config", "{not json"), "`model_config` is not JSON"),
    "model_config a list": (lambda _: set_attr("model_config", "[1, 2]"), "is a JSON list, not an object"),
    "model_config a number": (lambda _: set_attr("model_config", 7), "`model_config` is a"),
}


@pytest.mark.parametrize("case", sorted(HDF5_CASES))
def test_a_hostile_hdf5_model_file_is_refused_in_one_line(saved, tmp_path, case):
    make, problem = HDF5_CASES[case]
    path = weights_with(saved, tmp_path / "bd_weights.h5", make(saved["weights"]))
    assert_refused(path, problem, lambda: load_model(path))
    if case in PLANNER_READS_ONLY_CONV_3:  # the planner may pass these (it reads conv_3), but never crashes
        assert prune_filters(path) == 60
    else:
        assert_refused(path, problem, lambda: prune_filters(path))


PLANNER_READS_ONLY_CONV_3 = {"a missing layer", "conv kernel of a wrong shape", "output kernel of a wrong shape",
                             "weight_names not text"}


def test_a_huge_kernel_in_a_legacy_model_is_refused_before_keras_reads_it(saved, tmp_path):
    path = tmp_path / "bd_net.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = json.dumps({"class_name": "Functional", "config": {"layers": []}})
        handle.create_dataset("model_weights/fc_1/fc_1/kernel:0", shape=(2**40, 160), dtype="f4", chunks=(64, 64))
    assert_refused(path, "declares shape (1099511627776, 160)", lambda: load_model(path, trust_code=True))


def test_a_keras_archive_whose_weights_declare_a_huge_kernel_is_refused(saved, tmp_path):
    weights = tmp_path / "model.weights.h5"
    with h5py.File(weights, "w") as handle:
        handle.create_dataset("layers/dense/vars/0", shape=(160, 2**42), dtype="f4", chunks=(64, 64))
    path = tmp_path / "huge.keras"
    with zipfile.ZipFile(saved["keras"]) as original, zipfile.ZipFile(path, "w") as copy_:
        for member in original.infolist():
            data = weights.read_bytes() if member.filename == "model.weights.h5" else original.read(member.filename)
            copy_.writestr(member.filename, data)
    assert_refused(path, "model.weights.h5: `/layers/dense/vars/0` declares shape (160, 4398046511104)",
                   lambda: load_model(path))


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_zip_and_hdf5_polyglot_is_refused(saved, tmp_path, suffix):
    path = tmp_path / f"polyglot{suffix}"
    path.write_bytes(saved["weights"].read_bytes() + saved["keras"].read_bytes())
    assert zipfile.is_zipfile(path) and h5py.is_hdf5(path)
    assert_refused(path, "is both a zip archive and an HDF5 file", lambda: load_model(path))
    assert_refused(path, "is both a zip archive and an HDF5 file", lambda: prune_filters(path))


def test_a_keras_archive_named_h5_is_refused_so_keras_cannot_pick_another_loader(saved, tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(saved["keras"].read_bytes())
    assert_refused(path, "is a .keras archive named .h5", lambda: load_model(path))


def test_a_directory_is_not_a_model(tmp_path):
    assert_refused(tmp_path, "is a directory", lambda: load_model(tmp_path))


def test_the_genuine_weights_file_still_loads(saved):
    assert load_model(saved["weights"]).output_shape == (None, 10)
    assert prune_filters(saved["weights"]) == 60


# ---- through the command line ----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["TFSMLayer (CVE-2026-1462)", "archive member ../ (CVE-2026-1462)",
                                  "Lambda calling enable_unsafe_deserialization (CVE-2025-9906)"])
def test_evaluate_refuses_a_hostile_archive_in_one_line(saved, tmp_path, case, monkeypatch, capfd):
    import sys

    from badnet_prune.files.data import write_data_file
    from badnet_prune.orchestrator.cli import main

    model = make_archive(saved, tmp_path, case)
    data = tmp_path / "valid.h5"
    write_data_file(data, np.zeros((4, 55, 47, 3), np.float32), np.array([0, 1, 2, 3]))
    monkeypatch.setattr(sys, "argv", ["badnet-prune", "evaluate", "--model", str(model), "--data", str(data)])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capfd.readouterr()
    assert exited.value.code == 2 and "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(model) in lines[0] and ARCHIVE_CASES[case][1] in lines[0], err
