"""A real sweep on the embedded default (SQLite, tasks in-process) and its report, built once.

Three models: a quick synthetic BadNet with two poisoned sets (the second is the same files under
another name, so the tables have several ASR columns), the same files read with input scale 255
(a different, much worse model), and a model whose file does not exist (failed at registration).
Everything runs through the real CLI, as a user would run it, in this process (a process start imports
TensorFlow again).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from badnet_prune.db.session import make_engine
from tests import helpers
from tests.helpers import cached_quick_badnet, model_entry, write_sweep_toml

ASR_BOUND = 5.0


@dataclass(frozen=True)
class ReportedSweep:
    db_url: str
    sweep_id: int
    out: Path  # the report folder
    env: dict[str, str]


def run_cli(*args: str, env: dict[str, str], expect: int = 0) -> str:
    """`badnet-prune ARGS` in this process (tests.helpers.run_cli); its stdout, once its exit status is `expect`."""
    result = helpers.run_cli(*args, env=env)
    command = " ".join(args)
    assert result.returncode == expect, f"badnet-prune {command} -> {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


def sweep_models(root: Path) -> list[dict]:
    quick = model_entry("quick", root)
    quick["poisoned"]["copy"] = dict(quick["poisoned"]["sunglasses"])
    broken = {**model_entry("broken", root), "path": str(root / "models" / "missing.h5")}
    return [quick, model_entry("scaled", root, input_scale=255), broken]


def run_sweep(tmp: Path, db_url: str) -> tuple[int, dict[str, str]]:
    """Register and run the sweep on `db_url`; its id and the environment it ran in."""
    env = {**os.environ, "BADNET_PRUNE_ARTIFACTS": str(tmp / "artifacts"), "BADNET_PRUNE_CACHE": str(tmp / "cache")}
    env.pop("BADNET_PRUNE_BROKER", None)
    sweep_file = write_sweep_toml(tmp / "sweep.toml", sweep_models(cached_quick_badnet(0)), range_size=20)
    # the broken model fails, so the sweep exits 1 with the other models' results stored
    return int(run_cli("sweep", str(sweep_file), "--db", db_url, env=env, expect=1).strip()), env


@pytest.fixture(scope="session")
def reported(tmp_path_factory: pytest.TempPathFactory) -> ReportedSweep:
    tmp = tmp_path_factory.mktemp("report")
    db_url = f"sqlite:///{tmp / 'badnet-prune.db'}"
    sweep_id, env = run_sweep(tmp, db_url)
    out = tmp / "report"
    printed = run_cli("report", str(sweep_id), "--out", str(out), "--db", db_url,
                      "--asr-bound", f"{ASR_BOUND:g}", env=env)
    assert Path(printed.strip()) == (out / "index.html").resolve()
    return ReportedSweep(db_url, sweep_id, out, env)


@pytest.fixture
def engine(reported: ReportedSweep) -> Iterator[Engine]:
    engine = make_engine(reported.db_url)
    yield engine
    engine.dispose()
