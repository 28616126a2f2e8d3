"""`badnet-prune defend` end to end, through the console script once (the other runs in this process), checked
against numbers computed here the reference way (whole models with filters zeroed, plain Keras loading the
saved files).

One defend run on the quick synthetic BadNet; every file it writes and the table it prints are
compared with an independent computation. Bad inputs end in one line naming the option or file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from badnet_prune.files.data import open_data_file
from badnet_prune.files.model_io import load_model
from badnet_prune.numerics.inference import compiled_forward, predict_labels
from badnet_prune.numerics.pruned_model import build_pruned_model
from badnet_prune.numerics.tf_setup import keras
from tests.helpers import run_cli, run_console_script

THRESHOLDS = (0.02, 0.04, 0.1)
POISON = "sunglasses"


def defend_env(cache: Path, **settings: str) -> dict[str, str]:
    """The environment of a defend run; `settings` are extra BADNET_PRUNE_* variables (engine="dense")."""
    env = {**os.environ, "BADNET_PRUNE_CACHE": str(cache), "COLUMNS": "100",
           **{f"BADNET_PRUNE_{name.upper()}": value for name, value in settings.items()}}
    env.pop("BADNET_PRUNE_BROKER", None)
    return env


def run_defend(*args: str, cache: Path, **settings: str) -> subprocess.CompletedProcess:
    """defend as the console script runs it, in this process (run_cli)."""
    return run_cli("defend", *args, env=defend_env(cache, **settings))


def read_steps_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    return list(reader.fieldnames or []), rows


def defend_arguments(root: Path, out: Path, db: Path, **overrides: str) -> list[str]:
    data = root / "data"
    options = {
        "--model": str(root / "models" / "bd_net.h5"),
        "--clean-valid": str(data / "cl" / "valid.h5"),
        "--clean-test": str(data / "cl" / "test.h5"),
        "--poisoned": f"{POISON}={data / 'bd' / 'bd_valid.h5'},{data / 'bd' / 'bd_test.h5'}",
        "--thresholds": ",".join(f"{t:g}" for t in THRESHOLDS),
        "--out": str(out),
        "--db": f"sqlite:///{db}",
        **overrides,
    }
    return [item for pair in options.items() for item in pair]


@dataclass(frozen=True)
class Defended:
    root: Path
    out: Path
    stdout: str
    steps: list[dict[str, str]]
    header: list[str]
    summary: dict


@pytest.fixture(scope="module")
def defended(synthetic_badnet, tmp_path_factory) -> Defended:
    work = tmp_path_factory.mktemp("defend")
    arguments = defend_arguments(synthetic_badnet, work / "out", work / "defend.db")
    result = run_console_script("defend", *arguments, env=defend_env(work / "cache"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # the console script skips the interpreter's teardown, but not closing the database:
    # SQLite's write-ahead log is folded back, so the file alone holds the results
    assert not (work / "defend.db-wal").exists()
    header, steps = read_steps_csv(work / "out" / "steps.csv")
    summary = json.loads((work / "out" / "summary.json").read_text(encoding="utf-8"))
    return Defended(synthetic_badnet, work / "out", result.stdout, steps, header, summary)


@dataclass(frozen=True)
class Reference:
    """Everything recomputed here without the engine: the model, data, ranking and accuracies."""

    model: keras.Model
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    order: list[int]
    acc0: float

    def accuracy_after(self, pruned: list[int], key: str) -> float:
        network = build_pruned_model(self.model, "conv_3", pruned, name="reference")
        predicted = predict_labels(compiled_forward(network), [self.images[key]])
        return 100.0 * float(np.count_nonzero(predicted == self.labels[key])) / len(predicted)


@pytest.fixture(scope="module")
def reference(synthetic_badnet) -> Reference:
    model = load_model(synthetic_badnet / "models" / "bd_net.h5")
    images, labels = {}, {}
    for key, name in (("valid", "cl/valid.h5"), ("bd_valid", "bd/bd_valid.h5"), ("test", "cl/test.h5"),
                      ("bd_test", "bd/bd_test.h5")):
        data_file = open_data_file(synthetic_badnet / "data" / name)
        images[key], labels[key] = data_file.read_all(), data_file.labels
    pool_3 = keras.Model(model.input, model.get_layer("pool_3").output)
    activations = pool_3.predict(images["valid"], batch_size=256, verbose=0)
    means = np.asarray(activations, dtype=np.float64).mean(axis=(0, 1, 2))
    order = [int(c) for c in np.argsort(means, kind="stable")]
    predicted = predict_labels(compiled_forward(model), [images["valid"]])
    acc0 = 100.0 * float(np.count_nonzero(predicted == labels["valid"])) / len(predicted)
    return Reference(model, images, labels, order, acc0)


def first_qualifying_step(acc0: float, accuracies: list[float], threshold: float) -> int | None:
    return next((k for k, acc in enumerate(accuracies) if acc0 - acc >= threshold * acc0), None)


def test_steps_csv_has_exactly_the_issues_columns_and_one_row_per_step(defended, reference):
    assert defended.header == ["step", "channel", "fraction_pruned", "clean_accuracy", f"asr_{POISON}"]
    channels = len(reference.order)
    assert [int(row["step"]) for row in defended.steps] == list(range(channels + 1))
    assert defended.steps[0]["channel"] == ""
    assert [int(row["channel"]) for row in defended.steps[1:]] == reference.order
    assert [float(row["fraction_pruned"]) for row in defended.steps] == [k / channels for k in range(channels + 1)]


def test_ranking_and_acc0_equal_a_plain_recomputation(defended, reference):
    assert defended.summary["pruning_order"] == reference.order
    assert [entry["channel"] for entry in defended.summary["ranking"]] == reference.order
    assert defended.summary["acc0"] == pytest.approx(reference.acc0, abs=1e-9)


def test_steps_equal_the_whole_pruned_model_at_the_selected_and_sampled_steps(defended, reference):
    selected = {entry["step"] for entry in defended.summary["thresholds"].values() if entry["step"] is not None}
    checked = sorted({0, 1, len(reference.order) // 2, len(reference.order)} | selected)
    for step in checked:
        row = defended.steps[step]
        pruned = reference.order[:step]
        assert float(row["clean_accuracy"]) == pytest.approx(reference.accuracy_after(pruned, "valid"), abs=1e-9)
        assert float(row[f"asr_{POISON}"]) == pytest.approx(reference.accuracy_after(pruned, "bd_valid"), abs=1e-9)
    assert len({row["clean_accuracy"] for row in defended.steps}) > 1, "pruning never changed the accuracy"


def test_each_threshold_selects_the_first_qualifying_step(defended, reference):
    accuracies = [float(row["clean_accuracy"]) for row in defended.steps]
    assert set(defended.summary["thresholds"]) == {f"{t:g}" for t in THRESHOLDS}
    for t in THRESHOLDS:
        entry = defended.summary["thresholds"][f"{t:g}"]
        assert entry["step"] == first_qualifying_step(reference.acc0, accuracies, t)
    assert any(entry["step"] is not None for entry in defended.summary["thresholds"].values())


def test_saved_b_prime_and_g_load_in_plain_keras_and_give_the_summarys_test_metrics(defended, reference):
    classes = int(reference.model.output_shape[-1])
    forward = compiled_forward(reference.model)
    b_labels = {key: predict_labels(forward, [reference.images[key]]) for key in ("test", "bd_test")}

    def percent(mask: np.ndarray) -> float:
        return 100.0 * float(np.count_nonzero(mask)) / len(mask)

    assert defended.summary["B"]["clean_accuracy"] == pytest.approx(
        percent(b_labels["test"] == reference.labels["test"]))
    assert defended.summary["B"][f"asr_{POISON}"] == pytest.approx(
        percent(b_labels["bd_test"] == reference.labels["bd_test"]))
    model_sha256 = hashlib.sha256((defended.root / "models" / "bd_net.h5").read_bytes()).hexdigest()
    for t in THRESHOLDS:
        entry = defended.summary["thresholds"][f"{t:g}"]
        if entry["step"] is None:
            continue
        b_prime = keras.models.load_model(defended.out / "models" / f"B_prime_{t:g}.keras", safe_mode=True)
        g = keras.models.load_model(defended.out / "models" / f"G_{t:g}.keras", safe_mode=True)
        assert g.output_shape[-1] == classes + 1
        for key, name in (("test", "clean_accuracy"), ("bd_test", f"asr_{POISON}")):
            prime = predict_labels(compiled_forward(b_prime), [reference.images[key]])
            repaired = predict_labels(compiled_forward(g), [reference.images[key]])
            assert np.array_equal(repaired, np.where(b_labels[key] == prime, b_labels[key], classes))
            truth = reference.labels[key]
            assert entry["B_prime"][name] == pytest.approx(percent(prime == truth))
            assert entry["G"][name] == pytest.approx(percent(repaired == truth))
            flagged = "false_alarms" if key == "test" else f"detection_{POISON}"
            assert entry["G"][flagged] == pytest.approx(percent(repaired == classes))
        provenance = json.loads((defended.out / "models" / f"B_prime_{t:g}.json").read_text(encoding="utf-8"))
        assert provenance["source_sha256"] == model_sha256
        assert provenance["pruned_channels"] == reference.order[: entry["step"]]
        assert provenance["step"] == entry["step"] and provenance["threshold"] == t


def test_the_printed_table_shows_the_summarys_numbers_one_row_per_network(defended):
    lines = defended.stdout.splitlines()

    def row(label: str) -> str:
        found = [line for line in lines if line.lstrip("│| ").startswith(label)]
        assert len(found) == 1, f"no single table row for {label!r} in:\n{defended.stdout}"
        return found[0]

    assert f"{defended.summary['B']['clean_accuracy']:.2f}" in row("B ")
    for t in THRESHOLDS:
        entry = defended.summary["thresholds"][f"{t:g}"]
        if entry["step"] is None:
            continue
        label = f"{t * 100:g}%"
        line = row(f"B' {label}, {entry['step']} pruned")
        assert f"{entry['B_prime']['clean_accuracy']:.2f}" in line
        assert f"{entry['B_prime'][f'asr_{POISON}']:.2f}" in line
        line = row(f"G {label}")
        assert f"{entry['G'][f'detection_{POISON}']:.2f}" in line and f"{entry['G']['false_alarms']:.2f}" in line


@pytest.mark.parametrize(
    "override, phrase",
    [
        ({"--thresholds": "0.02,1.5"}, "--thresholds"),
        ({"--thresholds": "0"}, "--thresholds"),
        ({"--thresholds": "0.02,two"}, "--thresholds"),
        ({"--policy": "last"}, "--policy"),
        ({"--prune-layer": "pool_3"}, "not a Conv2D"),
    ],
)
def test_bad_options_end_in_one_line_naming_the_option(synthetic_badnet, tmp_path, override, phrase):
    result = run_defend(*defend_arguments(synthetic_badnet, tmp_path / "out", tmp_path / "d.db", **override),
                        cache=tmp_path / "cache")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and phrase in last and next(iter(override)) in last, result.stderr
    assert not (tmp_path / "out" / "steps.csv").exists()


def test_a_prune_layer_the_model_lacks_ends_in_one_line_naming_the_model_file(synthetic_badnet, tmp_path):
    arguments = defend_arguments(synthetic_badnet, tmp_path / "out", tmp_path / "d.db", **{"--prune-layer": "conv_9"})
    result = run_defend(*arguments, cache=tmp_path / "cache")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    model = str(synthetic_badnet / "models" / "bd_net.h5")
    assert last.startswith("error: ") and model in last and "no layer 'conv_9'" in last, result.stderr
    assert not (tmp_path / "out" / "steps.csv").exists()


def test_poisoned_images_that_do_not_match_the_model_end_in_one_line_naming_the_file(synthetic_badnet, tmp_path):
    from badnet_prune.files.data import write_data_file

    wrong = tmp_path / "small_faces.h5"
    write_data_file(wrong, np.zeros((4, 32, 32, 3), dtype=np.float32), np.zeros(4, dtype=np.int64))
    test_file = synthetic_badnet / "data" / "bd" / "bd_test.h5"
    arguments = defend_arguments(synthetic_badnet, tmp_path / "out", tmp_path / "d.db",
                                 **{"--poisoned": f"x={wrong},{test_file}"})
    result = run_defend(*arguments, cache=tmp_path / "cache")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(wrong) in last, result.stderr
    assert not (tmp_path / "out" / "steps.csv").exists()


def test_several_poisoned_sets_get_one_asr_column_each(synthetic_badnet, tmp_path, defended):
    """The 2020 multi-trigger BadNets come with several poisoned sets: each gets its own ASR column."""
    data = synthetic_badnet / "data"
    pair = f"{data / 'bd' / 'bd_valid.h5'},{data / 'bd' / 'bd_test.h5'}"
    arguments = defend_arguments(synthetic_badnet, tmp_path / "out", tmp_path / "d.db",
                                 **{"--poisoned": f"glasses={pair}", "--thresholds": "0.1"})
    result = run_defend(*arguments, "--poisoned", f"again={pair}", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    header, rows = read_steps_csv(tmp_path / "out" / "steps.csv")
    assert header == ["step", "channel", "fraction_pruned", "clean_accuracy", "asr_again", "asr_glasses"]
    assert [row["asr_again"] for row in rows] == [row["asr_glasses"] for row in rows]
    assert [row["asr_glasses"] for row in rows] == [row[f"asr_{POISON}"] for row in defended.steps]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    g = summary["thresholds"]["0.1"]["G"]
    assert g["detection_again"] == g["detection_glasses"]


def without_files(summary: dict) -> dict:
    """summary.json with the paths of the written files left out (they name each run's own folder)."""
    thresholds = {key: {name: value for name, value in entry.items() if name != "files"}
                  for key, entry in summary["thresholds"].items()}
    return {**summary, "thresholds": thresholds}


def test_the_dense_engine_gives_every_step_and_test_figure_of_the_sparse_one(synthetic_badnet, tmp_path, defended):
    """BADNET_PRUNE_ENGINE=dense forces the device engine, here on the CPU, where auto picks sparse."""
    arguments = defend_arguments(synthetic_badnet, tmp_path / "out", tmp_path / "d.db")
    result = run_defend(*arguments, cache=tmp_path / "cache", engine="dense")
    assert result.returncode == 0, result.stderr[-3000:]
    header, rows = read_steps_csv(tmp_path / "out" / "steps.csv")
    assert (header, rows) == (defended.header, defended.steps)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert without_files(summary) == without_files(defended.summary)
    assert len({row["clean_accuracy"] for row in rows}) > 1, "pruning never changed the accuracy"


def test_an_unknown_engine_is_one_line_naming_the_setting(synthetic_badnet, tmp_path):
    arguments = defend_arguments(synthetic_badnet, tmp_path / "out", tmp_path / "d.db")
    result = run_defend(*arguments, cache=tmp_path / "cache", engine="gpu")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "BADNET_PRUNE_ENGINE" in lines[0] and "auto, dense, sparse" in lines[0], lines
    assert not (tmp_path / "d.db").exists()


def test_the_verdict_says_per_poison_which_network_removed_it_and_at_what_cost(defended):
    verdict = defended.summary["verdict"]
    assert (verdict["asr_bound"], verdict["clean_bound"]) == (5.0, 2.0)
    entry = verdict["poisons"][POISON]
    b_clean = defended.summary["B"]["clean_accuracy"]
    measured = [(key, e["G"]) for key, e in defended.summary["thresholds"].items() if e["step"] is not None]
    removed = [(key, g) for key, g in measured if g[f"asr_{POISON}"] <= 5.0]
    key, g = (min(removed, key=lambda pair: b_clean - pair[1]["clean_accuracy"]) if removed
              else min(measured, key=lambda pair: pair[1][f"asr_{POISON}"]))
    assert (entry["removed"], entry["network"], entry["setting"]) == (bool(removed), "G", key)
    assert entry["asr"] == g[f"asr_{POISON}"] and entry["clean_drop"] == pytest.approx(b_clean - g["clean_accuracy"])
    assert entry["false_alarms_above_bound"] == (g["false_alarms"] > 2.0)
    [line] = [line for line in defended.stdout.splitlines() if line.startswith(f"{POISON}: ")]
    assert line.startswith(f"{POISON}: removed by G at" if removed else f"{POISON}: kept"), line
    assert f"clean drop {b_clean - g['clean_accuracy']:.2f} points" in line


def test_the_within_policy_keeps_each_b_prime_inside_its_budget_and_says_so(synthetic_badnet, tmp_path, defended):
    out = tmp_path / "out"
    result = run_defend(*defend_arguments(synthetic_badnet, out, tmp_path / "d.db", **{"--policy": "within"}),
                        cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    accuracies = [float(row["clean_accuracy"]) for row in defended.steps]
    acc0 = defended.summary["acc0"]
    for t in THRESHOLDS:
        entry = summary["thresholds"][f"{t:g}"]
        exceeding = next((k for k, acc in enumerate(accuracies) if acc0 - acc > t * acc0), None)
        assert entry["step"] == (len(accuracies) - 1 if exceeding is None else exceeding - 1)
        assert entry["policy"] == "within" and entry["rule"] == "the most pruning whose drop stays within t"
        assert entry["clean_valid_drop_percent"] <= 100 * t + 1e-9
        drop = entry["clean_valid_drop_percent"]
        assert f"B' {t * 100:g}%, {entry['step']} pruned, drop {drop:.2f}%" in result.stdout
    first = defended.summary["thresholds"]
    assert all(first[key]["rule"] == "the first step whose drop reaches t" for key in first)
