"""The help of every command, as the console script prints it (in this process: run_cli): an example each, the
choices of --format and --policy, flags without a value type, no Python types (`<list[Path]>`, `<bool>`), -h
and --version; and usage errors (a wrong choice, an unknown option or command) in one line like every other
error."""

from __future__ import annotations

import os
import re
from importlib.metadata import version

import pytest

from badnet_prune.orchestrator.cli import COMMANDS
from tests.helpers import run_cli, run_console_script

WIDE = {**os.environ, "COLUMNS": "250"}  # no wrapping, so that a type name is never split across lines
PYTHON_TYPES = ("list[", "Path]", "<bool>", "<str>", "<int>", "<float>", "<path>", "Optional", "NoneType")


def help_of(*command: str, flag: str = "--help") -> str:
    result = run_cli(*command, flag, env=WIDE, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize("command", [(), *((name,) for name in COMMANDS)], ids=lambda c: " ".join(c) or "app")
def test_every_help_has_an_example_and_no_python_types(command):
    text = help_of(*command)
    assert re.search(r"^\s*Examples?: badnet-prune", text, re.MULTILINE), text
    for python_type in PYTHON_TYPES:
        assert python_type not in text, f"{python_type!r} in `badnet-prune {' '.join(command)} --help`:\n{text}"
    # a flag is plain: its row names no kind of value after it
    for flag in ("--help", "--json", "--trust-model-code", "--quick", "--wait", "--clear", "--csv", "--version"):
        for line in text.splitlines():
            if re.search(rf"{flag}\b(?!-)", line) and line.lstrip("│ *").startswith(flag):
                # (a short form or the flag's other half, --quick/--full, may follow it)
                assert re.match(rf"[│ *]*{flag}\s+(-h\s+|--[a-z-]+\s+)?[A-Z(]", line), \
                    f"{flag} shows a value type: {line!r}"


def test_h_is_help():
    assert help_of("steps", flag="-h") == help_of("steps")
    assert help_of(flag="-h") == help_of()


def test_choices_are_listed():
    assert "csv|json" in help_of("steps")
    assert "first|within|notebook" in help_of("defend")
    assert "adam|sgd" in help_of("defend")
    assert "default|pruning-aware" in help_of("synth")
    assert "DEBUG|INFO|WARNING|ERROR|CRITICAL" in help_of("worker")


def test_each_commands_help_says_what_its_options_do_there():
    """defend's database goes with its results; status and worker never run tasks in their process; sweep
    describes its file and names the page that shows one."""
    assert "else OUT/badnet-prune.db" in help_of("defend")
    for command in ("status", "worker"):
        text = help_of(command)
        assert "--broker" in text and "in this process" not in text, text
    assert "in this process" in help_of("sweep")
    sweep = " ".join(help_of("sweep").split())
    assert "[[model]] table per model" in sweep and "docs/sweeps.md" in sweep, sweep


def test_version_is_the_installed_packages():
    """Through the installed console script: its entry point and the package's metadata."""
    result = run_console_script("--version", env=WIDE, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"badnet-prune {version('badnet-prune')}\n"


@pytest.mark.parametrize(
    "arguments, phrase",
    [
        (("steps", "1", "--format", "xml"), "'--format'"),
        (("steps", "1", "--no-such-option"), "--no-such-option"),
        (("nosuch",), "nosuch"),
        (("status",), "SWEEP"),
        (("evaluate", "--model", "m.h5", "--data", "d.h5", "--input-scale", "10"), "'--input-scale'"),
        (("synth", "out", "--attack", "patch"), "'--attack'"),
        (("worker", "--loglevel", "LOUD"), "'--loglevel'"),
    ],
)
def test_usage_errors_are_one_line(arguments, phrase, tmp_path):
    result = run_cli(*arguments, env={**WIDE, "BADNET_PRUNE_DB": str(tmp_path / "none.db")}, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: badnet-prune") and phrase in lines[0], result.stderr
    assert "-h` lists the options" in lines[0] and "Value error" not in lines[0]
    assert not (tmp_path / "none.db").exists()
