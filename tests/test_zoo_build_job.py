"""A zoo model's build as a worker runs it (worker.zoo_build), in-process on SQLite: hostile messages and rows
are refused or fail in one line, touching nothing; a build is done once and its record is the model's."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from badnet_prune.db.models import ZooBuild, utcnow
from badnet_prune.db.session import prepare_database, session_scope
from badnet_prune.db.zoo_builds import PlannedBuild, get_build, plan_builds
from badnet_prune.settings import Settings
from badnet_prune.synth.zoo import ZooSettings, cache_key
from badnet_prune.worker.dispatch import LocalDispatcher
from badnet_prune.worker.runtime import Runtime, install_runtime
from badnet_prune.worker.zoo_build import run_zoo_build
from tests.helpers import SYNTH_CACHE

SETTINGS = ZooSettings(classes=3)


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = prepare_database(url)
    settings = Settings.from_env().with_overrides(db_url=url, broker_url=None, cache_dir=tmp_path / "cache")
    return install_runtime(settings, LocalDispatcher(settings, engine), engine=engine)


def plan(runtime: Runtime, folder: Path, attack: str = "clean", settings: object = None) -> int:
    build = PlannedBuild(folder=str(folder), zoo=str(folder.parent), name=folder.name, attack=attack, seed=7,
                         settings=settings if settings is not None else SETTINGS.model_dump(mode="json"),
                         cache_key=cache_key("clean", 7, SETTINGS), cache_dir=str(SYNTH_CACHE / "zoo"))
    with session_scope(runtime.engine) as session:
        (build_id,) = plan_builds(session, [build], present=[])
    return build_id


def row(runtime: Runtime, build_id: int) -> ZooBuild:
    with session_scope(runtime.engine) as session:
        return get_build(session, build_id)


@pytest.mark.parametrize("message", ["1", True, None, 1.0, [1]])
def test_a_message_that_is_not_a_build_id_is_refused(runtime: Runtime, tmp_path: Path, message: object) -> None:
    build_id = plan(runtime, tmp_path / "zoo" / "clean-7")
    outcome = run_zoo_build(runtime, message)
    assert (outcome.ran, outcome.detail) == (False, f"zoo build id {message!r} is not an integer")
    assert row(runtime, build_id).state == "pending"
    assert run_zoo_build(runtime, 999).detail == "no zoo build 999"


@pytest.mark.parametrize(("attack", "settings", "reason"), [
    ("../../etc", None, "unknown attack '../../etc'"),
    ("clean", {"classes": 3, "shell": "rm -rf /"}, "its stored settings are refused: shell: Extra inputs are not "
                                                   "permitted"),
    ("clean", {"classes": 10**6}, "its stored settings are refused: classes: Input should be less than or equal "
                                  "to 1283"),
    ("clean", [3, "quick"], "its stored settings are not a table: list"),
])
def test_a_row_naming_no_known_recipe_fails_in_one_line_and_writes_nothing(
        runtime: Runtime, tmp_path: Path, attack: str, settings: object, reason: str) -> None:
    folder = tmp_path / "zoo" / "m"
    build_id = plan(runtime, folder, attack=attack, settings=settings)
    outcome = run_zoo_build(runtime, build_id)
    stored = row(runtime, build_id)
    assert outcome.ran and stored.state == "failed" and "\n" not in stored.error
    assert stored.error.startswith(f"zoo build of {folder}: ") and reason in stored.error, stored.error
    assert not folder.exists()


def test_a_folder_that_is_not_a_zoo_model_is_refused_and_kept(runtime: Runtime, tmp_path: Path) -> None:
    folder = tmp_path / "zoo" / "clean-7"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    build_id = plan(runtime, folder)
    run_zoo_build(runtime, build_id)
    stored = row(runtime, build_id)
    assert stored.state == "failed" and "is not a zoo model" in stored.error
    assert [path.name for path in folder.iterdir()] == ["notes.txt"]


def test_a_build_is_done_once_and_its_record_is_the_models(runtime: Runtime, tmp_path: Path) -> None:
    folder = tmp_path / "zoo" / "clean-7"
    build_id = plan(runtime, folder)
    assert run_zoo_build(runtime, build_id).detail == "done"
    stored = row(runtime, build_id)
    assert (stored.state, stored.attempts, stored.error) == ("done", 1, None)
    assert stored.record == json.loads((folder / "zoo.json").read_text())
    assert stored.record["key"] == cache_key("clean", 7, SETTINGS)
    assert run_zoo_build(runtime, build_id).detail == f"zoo build {build_id}: already done"
    assert row(runtime, build_id).attempts == 1


def test_a_copy_of_a_build_another_worker_holds_waits_and_builds_nothing(runtime: Runtime, tmp_path: Path) -> None:
    folder = tmp_path / "zoo" / "clean-7"
    build_id = plan(runtime, folder)
    with session_scope(runtime.engine) as session:
        session.execute(update(ZooBuild).where(ZooBuild.id == build_id).values(
            state="running", lease_token="another-host:1:x", worker="w2",
            lease_expires_at=utcnow() + timedelta(seconds=30)))
    outcome = run_zoo_build(runtime, build_id)
    assert not outcome.ran and outcome.retry_in_s is not None and outcome.retry_in_s > 1
    assert "runs elsewhere (w2)" in outcome.detail
    assert (row(runtime, build_id).attempts, folder.exists()) == (0, False)
