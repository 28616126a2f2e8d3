"""The stage contract: a stage declared here runs through planning, the in-process runner and resume
with no edit elsewhere; thresholds are exact keys end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

from badnet_prune.db.models import Artifact, Model, Selection, Task
from badnet_prune.db.session import make_engine, session_scope
from badnet_prune.numerics.thresholds import parse_thresholds
from tests.helpers import cached_quick_badnet, model_entry, run_cli, write_sweep_toml

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "tests.stages.extra_stage"


def env_for(folder: Path, *, plugin: bool) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BADNET_PRUNE_")}
    env |= {"BADNET_PRUNE_DB": f"sqlite:///{folder / 'db.sqlite'}", "BADNET_PRUNE_ARTIFACTS": str(folder / "artifacts"),
            "BADNET_PRUNE_CACHE": str(folder / "cache"), "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if plugin:
        env["BADNET_PRUNE_STAGE_MODULES"] = PLUGIN
    return env


def first_step(acc0: float, accuracies: list[float], threshold: float) -> int | None:
    return next((k for k, acc in enumerate(accuracies) if acc0 - acc >= threshold * acc0), None)


REGISTRY_CHECKS = """
import pytest
from badnet_prune.pipeline.contract import PlanContext, Stage, StageArguments, SweepPlan, register, stages

def stage(name, after=()):
    return Stage(name=name, description="", arguments=StageArguments, plan=lambda _: [StageArguments()],
                 run=lambda *_: None, after=after)

builtin = [s.name for s in stages()]
assert builtin[:3] == ["rank", "prune_range", "threshold"] and builtin[-1] == "finish"
with pytest.raises(ValueError, match="not declared before it"):
    register(stage("later", after=("nothing",)))
with pytest.raises(ValueError, match="declared twice"):
    register(stage("rank"))
with pytest.raises(ValueError, match="lower-case identifier"):
    register(stage("Bad-Name"))
register(stage("extra_one", after=("rank",)))
assert [s.name for s in stages()] == [*builtin[:-1], "extra_one", "finish"]
with pytest.raises(ValueError, match="planned two tasks with one key"):
    Stage(name="dup", description="", arguments=StageArguments, plan=lambda _: [StageArguments()] * 2,
          run=lambda *_: None).planned(PlanContext(None, SweepPlan((), "first", 1, "conv_3", "pool_3")))
print("ok")
"""


def test_the_registry_refuses_what_would_break_the_graph() -> None:
    """In a process of its own, so that the stages it declares stay out of every other test's registry."""
    done = subprocess.run([sys.executable, "-c", REGISTRY_CHECKS], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_stage_declared_in_the_tests_runs_in_process_and_resumes(tmp_path: Path) -> None:
    sweep_file = write_sweep_toml(tmp_path / "sweep.toml", [model_entry("m0", cached_quick_badnet(0))],
                                  range_size=20)
    env = env_for(tmp_path, plugin=True)
    done = run_cli("sweep", str(sweep_file), env=env)
    assert done.returncode == 0, done.stderr
    sweep_id = done.stdout.split()[0]
    log = tmp_path / "artifacts" / "audit.log"
    engine = make_engine(env["BADNET_PRUNE_DB"])
    with session_scope(engine) as session:
        selected = {s.threshold: s.step for s in session.scalars(select(Selection))}
        audit = session.scalars(select(Task).where(Task.stage == "audit")).all()
        assert session.scalar(select(Model.status)) == "done"
    assert sorted(t.key for t in audit) == ["0.02", "0.04", "0.1"] and {t.state for t in audit} == {"done"}
    lines = sorted(log.read_text().split("\n")[:-1])
    assert lines == sorted(f"1 {key} {step}" for key, step in selected.items()), "each audit task ran once"

    status = json.loads(run_cli("status", sweep_id, "--json", env=env).stdout)
    assert status["models"][0]["stages"]["audit"] == {"done": 3}

    # lose the audit results: resume sends exactly those three tasks, once
    log.unlink()
    with session_scope(engine) as session:
        session.execute(update(Task).where(Task.stage == "audit").values(state="queued"))
        session.execute(update(Model).values(status="running"))
    resumed = run_cli("sweep", "resume", sweep_id, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "sending 3 task(s) again" in resumed.stderr
    assert sorted(log.read_text().split("\n")[:-1]) == lines
    again = run_cli("sweep", "resume", sweep_id, env=env)
    assert "sending 0 task(s) again" in again.stderr, "resuming a finished sweep costs nothing"
    assert sorted(log.read_text().split("\n")[:-1]) == lines
    engine.dispose()


def test_without_the_setting_the_stage_is_unknown_and_plans_nothing(tmp_path: Path) -> None:
    sweep_file = write_sweep_toml(tmp_path / "sweep.toml", [model_entry("m0", cached_quick_badnet(0))],
                                  range_size=61)
    env = env_for(tmp_path, plugin=False)
    assert run_cli("sweep", str(sweep_file), env=env).returncode == 0
    engine = make_engine(env["BADNET_PRUNE_DB"])
    with session_scope(engine) as session:
        assert {t.stage for t in session.scalars(select(Task))} == {"rank", "prune_range", "threshold", "finish"}
    engine.dispose()


def test_thresholds_are_exact_keys_from_a_sweep_file(tmp_path: Path) -> None:
    thresholds = (1 / 30, 0.02000001, 0.02000002, 0.1 + 0.2)
    sweep_file = write_sweep_toml(tmp_path / "sweep.toml", [model_entry("m0", cached_quick_badnet(0))],
                                  range_size=61, thresholds=thresholds)
    env = env_for(tmp_path, plugin=False)
    done = run_cli("sweep", str(sweep_file), env=env)
    assert done.returncode == 0, done.stderr
    keys = {"0.03333333333333333", "0.02000001", "0.02000002", "0.30000000000000004"}
    steps = json.loads(run_cli("steps", done.stdout.split()[0], "--format", "json", env=env).stdout)
    accuracies = [row["clean_accuracy"] for row in steps]
    engine = make_engine(env["BADNET_PRUNE_DB"])
    with session_scope(engine) as session:
        selected = {s.threshold: s.step for s in session.scalars(select(Selection))}
        acc0 = session.scalar(select(Model.acc0))
        files = {(a.threshold, Path(a.path).name) for a in session.scalars(select(Artifact))}
    engine.dispose()
    assert set(selected) == keys, "thresholds that differ past the sixth digit stay apart"
    for key, step in selected.items():
        assert step == first_step(acc0, accuracies, float(key)), key
    reached = {key for key, step in selected.items() if step is not None}
    assert files == {(key, f"{kind}_{key}.keras") for key in reached for kind in ("B_prime", "G")}


def test_thresholds_are_exact_keys_from_the_command_line(tmp_path: Path) -> None:
    root = cached_quick_badnet(0)
    out = tmp_path / "out"
    done = run_cli(
        "defend", "--model", str(root / "models" / "bd_weights.h5"), "--clean-valid", str(root / "data/cl/valid.h5"),
        "--clean-test", str(root / "data/cl/test.h5"), "--out", str(out),
        "--poisoned", f"sunglasses={root / 'data/bd/bd_valid.h5'},{root / 'data/bd/bd_test.h5'}",
        "--thresholds", "0.0333333333,2%,0.07", "--json",
        env={key: value for key, value in env_for(tmp_path, plugin=False).items() if key != "BADNET_PRUNE_DB"},
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(done.stdout) == summary, "--json prints summary.json"
    assert list(summary["thresholds"]) == ["0.02", "0.0333333333", "0.07"]
    assert [t.key for t in parse_thresholds(["2%", "0.0333333333", "0.07"])] == list(summary["thresholds"])
    assert (out / "badnet-prune.db").is_file(), "defend keeps its database with its results"


@pytest.mark.parametrize(("option", "value", "phrase"), [
    ("--thresholds", "0.02,2%", "thresholds repeat: 0.02"),
    ("--thresholds", "0.1,0.1000000000000000000001", "differ only past a float64's precision"),
    ("--thresholds", "abc", "is not a number"),
    ("--poisoned", "clean=a.h5,b.h5", "reserved for a data-set role"),
    ("--poisoned", "../x=a.h5,b.h5", "is not a name"),
])
def test_keys_and_names_that_cannot_be_told_apart_are_refused_in_one_line(tmp_path: Path, option: str, value: str,
                                                                          phrase: str) -> None:
    root = cached_quick_badnet(0)
    args = ["defend", "--model", str(root / "models" / "bd_weights.h5"), "--clean-valid",
            str(root / "data/cl/valid.h5"), "--clean-test", str(root / "data/cl/test.h5"), "--out", str(tmp_path / "o"),
            option, value]
    done = run_cli(*args, env=env_for(tmp_path, plugin=False))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {option}: ") and phrase in line, line
    assert not (tmp_path / "o").exists() and not (tmp_path / "db.sqlite").exists()
