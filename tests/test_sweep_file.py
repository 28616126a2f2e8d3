"""Sweep files as an attacker writes them: every wrong value is one line naming the file and the key."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.names import check_name
from badnet_prune.numerics.thresholds import Threshold
from badnet_prune.orchestrator.sweep_file import parse_sweep, read_sweep_file
from tests.helpers import run_cli


def model(**changes: object) -> dict:
    entry = {"name": "m0", "path": "models/bd.h5", "clean_valid": "cl/valid.h5", "clean_test": "cl/test.h5",
             "poisoned": {"sunglasses": {"valid": "bd/valid.h5", "test": "bd/test.h5"}}}
    return entry | changes


def refused(raw: dict) -> str:
    with pytest.raises(BadInputError) as caught:
        parse_sweep(raw, base=Path("/sweeps"), source="s.toml", default_name="s")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("s.toml: ")
    return message.removeprefix("s.toml: ")


@pytest.mark.parametrize("name", ["../../../../tmp/elsewhere", "", "clean", "CLEAN_test", "a/b", "x" * 65, "-x",
                                  "a b", "a.b", "é", "a\n"])
def test_names_are_identifiers(name: str) -> None:
    with pytest.raises(BadInputError) as caught:
        check_name(name, "--model")
    assert str(caught.value).startswith("--model: ") and "\n" not in str(caught.value)
    assert refused({"model": [model(name=name)]}).startswith("model #1.name: ")
    poisoned = {name: {"valid": "a.h5", "test": "b.h5"}}
    key = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)  # TOML quotes other keys
    assert refused({"model": [model(poisoned=poisoned)]}).startswith(f"model #1.poisoned.{key}.name: ")


@pytest.mark.parametrize("name", ["ok-name_1", "x" * 64, "0", "sunglasses", "Clean2"])
def test_good_names_pass(name: str) -> None:
    assert check_name(name, "--model") == name


def test_a_valid_file_is_read_with_paths_relative_to_it(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text('thresholds = [0.02, "4%", 0.1]\npolicy = "notebook"\nrange_size = 5\ntrust_model_code = false\n'
                    '[[model]]\nname = "m0"\npath = "bd.h5"\ninput_scale = 255\nclean_valid = "v.h5"\n'
                    'clean_test = "/abs/t.h5"\npoisoned = { sun = { valid = "a.h5", test = "b.h5" } }\n')
    spec = read_sweep_file(path)
    assert spec.name == "sweep" and spec.policy == "notebook" and spec.range_size == 5
    assert spec.thresholds == (Threshold("0.02"), Threshold("0.04"), Threshold("0.1"))
    (entry,) = spec.models
    assert (entry.path, entry.clean_test, entry.input_scale) == (tmp_path / "bd.h5", Path("/abs/t.h5"), 255.0)
    assert [(p.name, p.valid) for p in entry.poisoned] == [("sun", tmp_path / "a.h5")]
    assert spec.source["model"][0]["name"] == "m0" and spec.trust_model_code is False
    with pytest.raises(Exception, match="frozen"):
        spec.range_size = 1


def test_defend_shaped_input_is_accepted() -> None:
    raw = {"name": "defend bd.h5", "thresholds": ["0.02", "0.04", "0.1"], "policy": "first", "prune_layer": "conv_3",
           "rank_layer": "pool_3", "range_size": 1000, "trust_model_code": True,
           "model": [model(input_scale=1.0, path="/m/bd.h5", poisoned={})]}
    spec = parse_sweep(raw, base=Path("/cwd"), source="defend", default_name="defend")
    assert spec.trust_model_code is True and spec.models[0].input_scale == 1.0 and spec.models[0].poisoned == ()


@pytest.mark.parametrize(("change", "expected"), [
    ({"trust_model_code": "false"}, "trust_model_code: expected a valid boolean, got 'false'"),
    ({"trust_model_code": 0}, "trust_model_code: expected a valid boolean, got 0"),
    ({"range_size": True}, "range_size: expected a valid integer, got True"),
    ({"range_size": 2**63 - 1}, "range_size: expected less than or equal to 100000, got 9223372036854775807"),
    ({"range_size": 0}, "range_size: expected greater than or equal to 1, got 0"),
    ({"range_size": 2.0}, "range_size: expected a valid integer, got 2.0"),
    ({"policy": "best"}, "policy: unknown policy 'best'; choose one of first, within, notebook"),
    ({"thresholds": [0.02, "2%"]}, "thresholds: thresholds repeat: 0.02"),
    ({"thresholds": [1.5]}, "thresholds: threshold 1.5 is outside (0, 1)"),
    ({"thresholds": [True]}, "thresholds: a threshold must be a number"),
    ({"tresholds": [0.02]}, "tresholds: unknown key (allowed: anp, clp, clp_statistic, detection_verdict, "
                            "fine_tune, model, name, neural_cleanse, policy, prune_layer, pruning_curve, range_size, "
                            "rank_layer, repair, thresholds, trust_model_code)"),
    ({"models": []}, "models: unknown key"),
    ({"prune_layer": 3}, "prune_layer: expected a valid string, got 3"),
    ({"name": ""}, "name: expected at least 1 character"),
])
def test_sweep_keys_are_strict(change: dict, expected: str) -> None:
    assert refused({"model": [model()], **change}).startswith(expected)


@pytest.mark.parametrize(("change", "expected"), [
    ({"input_scale": "abc"}, "model #1.input_scale: expected a valid number, got 'abc'"),
    ({"input_scale": [1]}, "model #1.input_scale: expected a valid number, got [1]"),
    ({"input_scale": True}, "model #1.input_scale: expected a valid number, got True"),
    ({"input_scale": 2}, "model #1.input_scale: expected 1 (raw 0..255 pixels) or 255"),
    ({"pth": "x"},
     "model #1.pth: unknown key (allowed: clean_test, clean_valid, input_scale, name, path, poisoned, truth)"),
    ({"path": 3}, "model #1.path: expected a file path"),
    ({"path": ""}, "model #1.path: expected a file path"),
    ({"poisoned": {"x": {"valid": "a"}}}, "model #1.poisoned.x.test: missing (required)"),
    ({"poisoned": {"x": {"valid": "a", "test": "b", "extra": 1}}}, "model #1.poisoned.x.extra: unknown key"),
    ({"poisoned": {"x": "a"}}, "model #1.poisoned.x: expected a valid dictionary, got 'a'"),
    ({"poisoned": [1]}, "model #1.poisoned: expected a table of NAME"),
    ({"poisoned": {"Sun": {"valid": "a", "test": "b"}, "sun": {"valid": "a", "test": "b"}}},
     "model #1.poisoned: poisoned set names repeat (ignoring case): Sun, sun"),
])
def test_model_keys_are_strict(change: dict, expected: str) -> None:
    assert refused({"model": [model(**change)]}).startswith(expected)


def test_whole_file_problems() -> None:
    assert refused({}) == "lists no models: add at least one [[model]] table"
    assert refused({"model": {"name": "m0"}}) == "lists no models: add at least one [[model]] table"
    assert refused({"model": [model(), model(name="M0")]}) == "the sweep: model names repeat (ignoring case): M0, m0"
    assert refused({"model": [3]}) == "model #1: expected a valid dictionary, got 3"
    missing = refused({"model": [model(), {"name": "m1"}]})
    assert missing == ("model #2.path: missing (required); model #2.clean_valid: missing (required); "
                       "model #2.clean_test: missing (required)")


def test_broken_files(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such sweep file"):
        read_sweep_file(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("range_size = = 3\n")
    with pytest.raises(BadInputError, match="not valid TOML"):
        read_sweep_file(tmp_path / "bad.toml")


@pytest.mark.parametrize(("line", "expected"), [
    ('trust_model_code = "false"', "trust_model_code: expected a valid boolean, got 'false'"),
    ("range_size = 9223372036854775807", "range_size: expected less than or equal to 100000"),
])
def test_console_script_refuses_in_one_line_and_runs_nothing(tmp_path: Path, line: str, expected: str) -> None:
    sweep = tmp_path / "sweep.toml"
    entry = model(name="../../../../tmp/elsewhere" if "trust" not in line else "m0")
    sweep.write_text(f"{line}\n[[model]]\n" + "\n".join(f"{key} = {json.dumps(value)}" for key, value in entry.items()
                                                     if key != "poisoned") + "\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("BADNET_PRUNE_")}
    env |= {"BADNET_PRUNE_DB": str(tmp_path / "db" / "x.db"), "BADNET_PRUNE_CACHE": str(tmp_path / "cache")}
    done = run_cli("sweep", str(sweep), env=env, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and f"{sweep}: " in lines[0] and expected in lines[0], done.stderr
    assert "trust" in line or "model #1.name: '../../../../tmp/elsewhere' is not a name" in lines[0]
    assert not (tmp_path / "db").exists()


# ---- [model.truth]: ground truth, as the zoo writes it and TrojAI-labelled zoos give it ----------------------


@pytest.mark.parametrize(("truth", "expected"), [
    ({"backdoored": True, "attack": "patch", "targets": [3]}, (True, "patch", (3,))),
    ({"backdoored": True, "targets": {"sunglasses": 2}}, (True, None, {"sunglasses": 2})),
    ({"backdoored": False, "attack": "clean"}, (False, "clean", ())),
    ({"backdoored": True}, (True, None, ())),
])
def test_a_truth_table_is_read(truth: dict, expected: tuple) -> None:
    spec = parse_sweep({"model": [model(truth=truth), model(name="m1")]}, base=Path("/s"), source="s.toml",
                       default_name="s")
    first, second = spec.models
    assert (first.truth.backdoored, first.truth.attack, first.truth.targets) == expected
    assert second.truth is None


@pytest.mark.parametrize(("truth", "expected"), [
    ({"backdoored": "yes"}, "model #1.truth.backdoored: expected a valid boolean, got 'yes'"),
    ({"attack": "patch"}, "model #1.truth.backdoored: missing (required)"),
    ({"backdoored": True, "attack": "a b"}, "model #1.truth.attack: 'a b' is not an identifier"),
    ({"backdoored": True, "attack": 3}, "model #1.truth.attack: expected a valid string, got 3"),
    ({"backdoored": True, "targets": [1, -1]}, "model #1.truth.targets: target 2 is -1, expected a class id"),
    ({"backdoored": True, "targets": [True]}, "model #1.truth.targets: target 1 is True, expected a class id"),
    ({"backdoored": True, "targets": [2**31]}, "model #1.truth.targets: target 1 is 2147483648, expected a class id"),
    ({"backdoored": True, "targets": "3"}, "model #1.truth.targets: expected a list of class ids, or a table"),
    ({"backdoored": True, "targets": {"sunglasses": 1.5}},
     "model #1.truth.targets: the target of 'sunglasses' is 1.5, expected a class id"),
    ({"backdoored": True, "targets": {"lipstick": 2}},
     "model #1: truth.targets names 'lipstick', not among the model's poisoned sets (sunglasses)"),
    ({"backdoored": False, "targets": [1]}, "model #1.truth: a model that is not backdoored has no targets"),
    ({"backdoored": True, "target": [1]}, "model #1.truth.target: unknown key (allowed: attack, backdoored, targets)"),
    ("yes", "model #1.truth: expected a valid dictionary, got 'yes'"),
])
def test_a_bad_truth_table_is_one_line_naming_the_key(truth: object, expected: str) -> None:
    assert refused({"model": [model(truth=truth)]}).startswith(expected)


def test_a_truth_table_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "zoo.toml"
    path.write_text('[[model]]\nname = "m0"\npath = "bd.h5"\nclean_valid = "v.h5"\nclean_test = "t.h5"\n'
                    'poisoned = { patch = { valid = "a.h5", test = "b.h5" } }\n'
                    '[model.truth]\nbackdoored = true\nattack = "patch"\ntargets = { patch = 4 }\n')
    truth = read_sweep_file(path).models[0].truth
    assert (truth.backdoored, truth.attack, truth.targets) == (True, "patch", {"patch": 4})
    path.write_text(path.read_text().replace("backdoored = true", 'backdoored = "true"'))
    with pytest.raises(BadInputError, match=r"zoo\.toml: model #1\.truth\.backdoored: expected a valid boolean"):
        read_sweep_file(path)
