"""Data files through the real command line: every bad input ends in one line naming the file and
the problem (no traceback, non-zero exit), and `evaluate` agrees with a plain argmax comparison."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from badnet_prune.files.data import read_ahead, write_data_file
from badnet_prune.files.model_io import save_legacy_weights
from badnet_prune.numerics.architecture import build_deepid
from badnet_prune.numerics.tf_setup import keras
from tests.helpers import run_console_script

NUM_CLASSES = 10


def write_raw(path: Path, **datasets: np.ndarray) -> Path:
    """An HDF5 file holding exactly the given datasets, as-is (channels first for `data`)."""
    with h5py.File(path, "w") as handle:
        for name, values in datasets.items():
            handle.create_dataset(name, data=values)
    return path


def good_pixels(count: int = 4) -> np.ndarray:
    return np.random.default_rng(count).uniform(0, 255, (count, 3, 55, 47)).astype(np.float32)


def labels(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def make_bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Each case: (the file, a phrase the error must contain)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "text.h5"
    text.write_text("data,label\n1,2\n")
    whole = write_raw(folder / "whole.h5", data=good_pixels(200), label=np.zeros(200))
    truncated = folder / "truncated.h5"
    raw = whole.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    nan_pixels, inf_pixels = good_pixels(), good_pixels()
    nan_pixels[2, 1, 10, 10] = np.nan
    inf_pixels[1, 0, 0, 0] = np.inf
    source = write_raw(folder / "source.h5", data=good_pixels(), label=labels(0, 1, 2, 3))
    return {
        **make_hostile_files(folder, source),
        "missing file": (folder / "absent.h5", "no such file"),
        "not hdf5": (text, "not an HDF5 file"),
        "truncated": (truncated, "truncated"),
        "no data": (write_raw(folder / "no_data.h5", label=labels(0, 1)), "no `data` dataset"),
        "no label": (write_raw(folder / "no_label.h5", data=good_pixels()), "no `label` dataset"),
        "rank 3": (write_raw(folder / "rank3.h5", data=good_pixels()[:, 0], label=labels(0, 1, 2, 3)), "rank 3"),
        "image shape": (
            write_raw(folder / "shape.h5", data=np.zeros((4, 3, 32, 32), np.float32), label=labels(0, 1, 2, 3)),
            "the model expects channels first (n, 3, 55, 47) or channels last (n, 55, 47, 3)",
        ),
        "length mismatch": (
            write_raw(folder / "mismatch.h5", data=good_pixels(), label=labels(0, 1, 2)),
            "holds 4 images but `label` holds 3 labels",
        ),
        "non-integer label": (
            write_raw(folder / "fraction.h5", data=good_pixels(), label=labels(0, 1, 2.5, 3)),
            "label 2 is 2.5, not an integer",
        ),
        "negative label": (
            write_raw(folder / "negative.h5", data=good_pixels(), label=labels(0, -1, 2, 3)),
            "label 1 is negative",
        ),
        "label outside the classes": (
            write_raw(folder / "outside.h5", data=good_pixels(), label=labels(0, 1, 2, NUM_CLASSES)),
            f"outside the model's {NUM_CLASSES} classes",
        ),
        "nan pixels": (write_raw(folder / "nan.h5", data=nan_pixels, label=labels(0, 1, 2, 3)), "image 2 has NaN"),
        "infinite pixels": (write_raw(folder / "inf.h5", data=inf_pixels, label=labels(0, 1, 2, 3)), "image 1 has NaN"),
        "empty": (
            write_raw(folder / "empty.h5", data=np.zeros((0, 3, 55, 47), np.float32), label=np.zeros(0)),
            "empty",
        ),
        **make_bad_true_labels(folder),
    }


def make_bad_true_labels(folder: Path) -> dict[str, tuple[Path, str]]:
    """Poisoned files whose optional `true_label` (labels before poisoning) is wrong: checked as `label` is."""
    def poisoned(name: str, true_label: np.ndarray) -> Path:
        return write_raw(folder / f"{name}.h5", data=good_pixels(), label=labels(0, 0, 0, 0), true_label=true_label)

    soft = folder / "true_label_soft.h5"
    with h5py.File(soft, "w") as handle:
        handle.create_dataset("data", data=good_pixels())
        handle.create_dataset("label", data=labels(0, 0, 0, 0))
        handle.create_dataset("elsewhere", data=labels(1, 2, 3, 4))
        handle["true_label"] = h5py.SoftLink("/elsewhere")
    return {
        "true_label shape": (poisoned("true_shape", np.ones((4, 2))), "`true_label` has shape (4, 2), expected (n,)"),
        "true_label count": (poisoned("true_count", labels(1, 2, 3)),
                             "holds 4 images but `true_label` holds 3 labels"),
        "true_label text": (poisoned("true_text", np.array([b"1", b"2", b"3", b"4"])), "`true_label` holds |S1"),
        "true_label non-integer": (poisoned("true_fraction", labels(1, 2.5, 3, 4)), "true_label 1 is 2.5, not an"),
        "true_label negative": (poisoned("true_negative", np.array([1, 2, -3, 4])), "true_label 2 is negative (-3)"),
        "true_label outside the classes": (poisoned("true_outside", np.array([1, 2, 3, NUM_CLASSES])),
                                           f"true_label 3 is {NUM_CLASSES}, outside the model's"),
        "true_label soft link": (soft, "`true_label` is a soft link to /elsewhere"),
    }


def make_hostile_files(folder: Path, source: Path) -> dict[str, tuple[Path, str]]:
    """Files an attacker would hand over: data stored elsewhere, or declarations meant to exhaust memory."""
    cases: dict[str, tuple[Path, str]] = {}

    def case(name: str, problem: str) -> h5py.File:
        path = folder / f"{name.replace(' ', '_')}.h5"
        cases[name] = (path, problem)
        return h5py.File(path, "w")

    with case("external link", f"`data` is an external link to {source}") as handle:
        handle["data"] = h5py.ExternalLink(str(source), "/data")
        handle.create_dataset("label", data=labels(0, 1, 2, 3))
    with case("external label link", "`label` is an external link") as handle:
        handle.create_dataset("data", data=good_pixels())
        handle["label"] = h5py.ExternalLink(str(source), "/label")
    with case("soft link", "`data` is a soft link to /elsewhere") as handle:
        handle.create_dataset("elsewhere", data=good_pixels())
        handle["data"] = h5py.SoftLink("/elsewhere")
        handle.create_dataset("label", data=labels(0, 1, 2, 3))
    for missing in (False, True):
        name = "virtual dataset, source missing" if missing else "virtual dataset"
        origin = folder / "gone.h5" if missing else source
        with case(name, "`data` is a virtual dataset mapped from") as handle:
            layout = h5py.VirtualLayout(shape=(4, 3, 55, 47), dtype="f4")
            layout[:] = h5py.VirtualSource(str(origin), "data", shape=(4, 3, 55, 47))
            handle.create_virtual_dataset("data", layout, fillvalue=0)
            handle.create_dataset("label", data=labels(0, 1, 2, 3))
    raw = folder / "pixels.bin"
    raw.write_bytes(good_pixels().tobytes())
    with case("external raw storage", f"`data` keeps its values in external files ({raw})") as handle:
        handle.create_dataset("data", shape=(4, 3, 55, 47), dtype="f4", external=[(str(raw), 0, raw.stat().st_size)])
        handle.create_dataset("label", data=labels(0, 1, 2, 3))
    with case("2**42 labels declared", f"holds 4 images but `label` holds {2**42} labels") as handle:
        handle.create_dataset("data", data=good_pixels())
        handle.create_dataset("label", shape=(2**42,), dtype="f8", chunks=(1 << 16,))
    with case("2**42 images declared", f"`data` declares {2**42} images") as handle:
        handle.create_dataset("data", shape=(2**42, 3, 55, 47), dtype="f4", chunks=(1, 3, 55, 47))
        handle.create_dataset("label", shape=(2**42,), dtype="f8", chunks=(1 << 16,))
    with case("huge images declared", "declares images of 3x1048576x1048576") as handle:
        handle.create_dataset("data", shape=(4, 3, 2**20, 2**20), dtype="f4", chunks=(1, 1, 64, 64))
        handle.create_dataset("label", data=labels(0, 1, 2, 3))
    with case("label 1e20", "label 2 is 1e+20, out") as handle:  # outside the model's classes, or of any range
        handle.create_dataset("data", data=good_pixels())
        handle.create_dataset("label", data=labels(0, 1, 1e20, 3))
    with case("label 2**63 as uint64", f"label 1 is {2**63 + 5}, out") as handle:
        handle.create_dataset("data", data=good_pixels())
        handle.create_dataset("label", data=np.array([0, 2**63 + 5, 1, 2], dtype=np.uint64))
    with case("text labels", "`label` holds") as handle:
        handle.create_dataset("data", data=good_pixels())
        handle.create_dataset("label", data=np.array([b"0", b"1", b"2", b"3"]))
    return cases


HOSTILE_CASES = [
    "external link", "external label link", "soft link", "virtual dataset", "virtual dataset, source missing",
    "external raw storage", "2**42 labels declared", "2**42 images declared", "huge images declared", "label 1e20",
    "label 2**63 as uint64", "text labels",
]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    keras.utils.set_random_seed(21)
    model = build_deepid(NUM_CLASSES)
    path = tmp_path_factory.mktemp("model") / "bd_weights.h5"
    save_legacy_weights(model, path)
    return model, path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad"))


BAD_CASES = [
    *HOSTILE_CASES,
    "missing file", "not hdf5", "truncated", "no data", "no label", "rank 3", "image shape", "length mismatch",
    "non-integer label", "negative label", "label outside the classes", "nan pixels", "infinite pixels", "empty",
    "true_label shape", "true_label count", "true_label text", "true_label non-integer", "true_label negative",
    "true_label outside the classes", "true_label soft link",
]
# Each process pays TensorFlow's start-up (seconds on 2 cores): these run as separate processes of the
# console script, every case also through the same CLI entry point in this process.
IN_OWN_PROCESS = ["missing file", "truncated", "label outside the classes", "nan pixels"]


def assert_one_line_error(code: int, stdout: str, stderr: str, path: Path, problem: str) -> None:
    assert code != 0
    assert "Traceback" not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert str(path) in lines[0], lines[0]
    assert problem in lines[0], lines[0]


def run_main(monkeypatch, capfd, *args: str) -> tuple[int, str, str]:
    """The CLI's main as the console script calls it, in this process; (exit code, stdout, stderr)."""
    from badnet_prune.orchestrator.cli import main

    monkeypatch.setattr(sys, "argv", ["badnet-prune", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capfd.readouterr()
    code = exited.value.code
    return (0 if code is None else code if isinstance(code, int) else 1), out, err


@pytest.mark.parametrize("case", BAD_CASES)
def test_a_bad_data_file_ends_in_one_line_naming_the_file_and_the_problem(model_file, bad_files, case, monkeypatch,
                                                                          capfd):
    path, problem = bad_files[case]
    code, out, err = run_main(monkeypatch, capfd, "evaluate", "--model", str(model_file[1]), "--data", str(path))
    assert_one_line_error(code, out, err, path, problem)


def test_bad_data_files_through_the_console_script(model_file, bad_files):
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {
            case: pool.submit(
                run_console_script, "evaluate", "--model", str(model_file[1]), "--data", str(bad_files[case][0])
            )
            for case in IN_OWN_PROCESS
        }
    for case, run in runs.items():
        done = run.result()
        assert_one_line_error(done.returncode, done.stdout, done.stderr, *bad_files[case])


def test_every_bad_file_made_is_a_case(tmp_path):
    assert sorted(make_bad_files(tmp_path)) == sorted(BAD_CASES)


# ---- evaluate agrees with plain Keras ----------------------------------------------------


@pytest.fixture(scope="module")
def good_files(model_file, tmp_path_factory):
    """Two files whose labels match the model's own argmax on some images only."""
    model, _ = model_file
    folder = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(5)
    files = []
    for index, count in enumerate((150, 77)):
        smooth = rng.uniform(0, 255, (count, 1, 1, 3)) + rng.normal(0, 30, (count, 55, 47, 3))
        images = np.clip(smooth, 0, 255).astype(np.float32)
        predicted = np.argmax(model.predict(images, verbose=0), axis=-1)
        truth = np.where(rng.random(count) < 0.6, predicted, rng.integers(0, NUM_CLASSES, count))
        path = folder / f"set_{index}.h5"
        write_data_file(path, images, truth)
        files.append((path, images, truth))
    return files


def plain_accuracy(model: keras.Model, images: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(images, verbose=0), axis=-1) == truth) * 100.0)


@pytest.mark.parametrize("scale, own_process", [(1.0, True), (255.0, False)])
def test_evaluate_accuracy_equals_a_plain_argmax_comparison(model_file, good_files, scale, own_process, monkeypatch,
                                                            capfd):
    model, model_path = model_file
    data_args = [arg for path, _, _ in good_files for arg in ("--data", str(path))]
    args = ("evaluate", "--model", str(model_path), *data_args, "--input-scale", f"{scale:g}", "--json")
    if own_process:
        done = run_console_script(*args)
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        code, out, err = run_main(monkeypatch, capfd, *args)
    assert code == 0, err
    report = json.loads(out)
    assert report["input_scale"] == scale
    assert [row["file"] for row in report["results"]] == [str(path) for path, _, _ in good_files]
    for row, (_, images, truth) in zip(report["results"], good_files, strict=True):
        assert row["images"] == len(truth)
        expected = plain_accuracy(model, images / np.float32(scale), truth)
        assert row["accuracy"] == expected
        assert 0.0 < expected < 100.0


def test_background_hashes_equal_hashlib_and_leave_out_unreadable_files(tmp_path):
    import hashlib

    from badnet_prune.files.hashing import BackgroundHashes, sha256_file

    payloads = {tmp_path / f"file{i}.bin": bytes(range(256)) * (1000 * (i + 1)) for i in range(3)}
    for path, payload in payloads.items():
        path.write_bytes(payload)
    missing = tmp_path / "missing.h5"
    hashes = BackgroundHashes([*payloads, missing, next(iter(payloads))]).result()
    assert set(hashes) == {str(path) for path in payloads}
    for path, payload in payloads.items():
        assert hashes[str(path)] == hashlib.sha256(payload).hexdigest() == sha256_file(path)


@pytest.mark.parametrize("case", ["truncated", "no label", "length mismatch"])
def test_a_malformed_data_file_is_reported_before_the_model_is_loaded(bad_files, case, tmp_path, monkeypatch, capfd):
    """The model here is not even a model: the data file's own problem must come first, without TensorFlow."""
    not_a_model = tmp_path / "model.h5"
    not_a_model.write_bytes(b"not an HDF5 model")
    path, problem = bad_files[case]
    code, out, err = run_main(monkeypatch, capfd, "evaluate", "--model", str(not_a_model), "--data", str(path))
    assert_one_line_error(code, out, err, path, problem)


def test_read_ahead_keeps_order_raises_where_the_reader_failed_and_stops_early():
    import threading

    produced = []

    def reader(fail_at: int | None = None):
        for index in range(6):
            if index == fail_at:
                raise ValueError(f"item {index} is bad")
            produced.append((index, threading.current_thread().name))
            yield index

    assert list(read_ahead(reader())) == list(range(6))
    assert all(thread != threading.current_thread().name for _, thread in produced), "read on this thread"

    seen = []
    with pytest.raises(ValueError, match="item 3 is bad"):
        for item in read_ahead(reader(fail_at=3)):
            seen.append(item)
    assert seen == [0, 1, 2]

    produced.clear()
    ahead = read_ahead(reader())
    assert next(ahead) == 0
    ahead.close()  # returns once the one batch being read ahead is done, without reading the rest
    assert [index for index, _ in produced] == [0, 1]


def test_a_hostile_file_is_refused_before_any_value_is_read_without_a_model(tmp_path):
    """No model given (sweep planning counts images this way): the same refusals, and 1e20 is out of range."""
    from badnet_prune.files.data import open_data_file
    from badnet_prune.numerics.errors import BadInputError

    source = write_raw(tmp_path / "source.h5", data=good_pixels(), label=labels(0, 1, 2, 3))
    cases = make_hostile_files(tmp_path, source)
    for case, (path, problem) in cases.items():
        with pytest.raises(BadInputError) as raised:
            open_data_file(path)
        assert raised.value.source == str(path) and problem in raised.value.problem, (case, raised.value.problem)


def test_a_refused_data_file_never_reaches_the_activation_cache(model_file, tmp_path):
    """The worker opens (and so checks) a data file before it looks up or writes cached activations."""
    from badnet_prune.files.hashing import sha256_file
    from badnet_prune.numerics.errors import BadInputError
    from badnet_prune.pipeline.runtime import ModelKey
    from badnet_prune.worker.loaded import WorkerMemory

    _, path = model_file
    cache = tmp_path / "cache"
    memory = WorkerMemory(cache)
    loaded = memory.model(ModelKey(str(path), "a" * 64, 1.0, "conv_3", "pool_3", False))
    source = write_raw(tmp_path / "source.h5", data=good_pixels(), label=labels(0, 1, 2, 3))
    (tmp_path / "hostile").mkdir()
    for hostile, _ in make_hostile_files(tmp_path / "hostile", source).values():
        with pytest.raises(BadInputError):  # its own hash: refused for what it holds, not for a changed hash
            memory.data(loaded, str(hostile), sha256_file(hostile))
    assert [entry for entry in cache.rglob("*") if entry.is_file()] == []
    memory.data(loaded, str(source), sha256_file(source))  # the control: a file that holds its own data is cached
    assert [entry for entry in cache.rglob("*") if entry.is_file()] != []


def test_a_file_changed_since_it_was_registered_is_refused(tmp_path):
    """The hash a worker keys results and cached activations by must be the hash of the bytes it reads."""
    from badnet_prune.files.data import open_data_file
    from badnet_prune.files.hashing import sha256_file
    from badnet_prune.numerics.errors import BadInputError

    path = write_raw(tmp_path / "valid.h5", data=good_pixels(), label=labels(0, 1, 2, 3))
    registered = sha256_file(path)
    assert open_data_file(path, expected_sha256=registered).count == 4
    write_raw(path, data=good_pixels(), label=labels(3, 2, 1, 0))
    with pytest.raises(BadInputError, match="changed since it was registered") as raised:
        open_data_file(path, expected_sha256=registered)
    assert raised.value.source == str(path)


def test_true_labels_are_read_where_a_file_has_them(tmp_path):
    """A poisoned file's labels before poisoning (`true_label`) are read as int64; a file without them has None."""
    from badnet_prune.files.data import open_data_file

    images = good_pixels().transpose(0, 2, 3, 1)
    write_data_file(tmp_path / "bd.h5", images, np.zeros(4), true_labels=np.array([3, 1, 4, 1]))
    write_data_file(tmp_path / "cl.h5", images, np.array([3, 1, 4, 1]))
    poisoned, clean = open_data_file(tmp_path / "bd.h5", num_classes=NUM_CLASSES), open_data_file(tmp_path / "cl.h5")
    assert poisoned.true_labels.dtype == np.int64 and poisoned.true_labels.tolist() == [3, 1, 4, 1]
    assert poisoned.labels.tolist() == [0, 0, 0, 0] and clean.true_labels is None
