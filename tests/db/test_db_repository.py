"""Sweeps, models, data files and tasks on both backends: upserts rewrite, constraints hold."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from badnet_prune.db.models import Base, DataFile, Model, ModelData, Sweep, Task
from badnet_prune.db.repository import (
    Truth,
    add_model,
    create_sweep,
    finish_sweep,
    get_model,
    get_sweep,
    list_models,
    model_data_paths,
    set_model_status,
    set_sweep_status,
    sweep_overview,
    sweep_progress,
    upsert_data_file,
)
from badnet_prune.db.results import StepRow, save_steps
from tests.db.conftest import planned_task


def count(session: Session, model: type[Base]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_a_sweep_reads_back_as_registered(session: Session, sweep_id: int) -> None:
    sweep = get_sweep(session, sweep_id)
    assert sweep.name == "lab"
    assert sweep.config == {"models": ["bd_net.h5"], "thresholds": [0.02, 0.04]}
    assert sweep.thresholds == ["0.02", "0.04"]
    assert (sweep.policy, sweep.prune_layer, sweep.rank_layer, sweep.range_size) == ("first", "conv_3", "pool_3", 10)
    assert sweep.status == "pending" and sweep.finished_at is None
    assert sweep.created_at.tzinfo is not None

    set_sweep_status(session, sweep_id, "done")
    session.commit()
    sweep = get_sweep(session, sweep_id)
    assert sweep.status == "done"
    assert sweep.finished_at is not None and sweep.finished_at >= sweep.created_at


def test_sweep_writes_refuse_unknown_words_and_rows(session: Session, sweep_id: int) -> None:
    with pytest.raises(ValueError, match="policy"):
        create_sweep(
            session,
            name="x",
            config={},
            thresholds=[0.1],
            policy="last",
            prune_layer="conv_3",
            rank_layer="pool_3",
            range_size=5,
            artifact_dir="a",
        )
    with pytest.raises(ValueError, match="sweep status"):
        set_sweep_status(session, sweep_id, "partial")
    with pytest.raises(LookupError):
        set_sweep_status(session, sweep_id + 1000, "done")
    with pytest.raises(LookupError):
        get_sweep(session, sweep_id + 1000)


def test_a_data_file_is_rewritten_not_duplicated(session: Session) -> None:
    first = upsert_data_file(session, "/data/cl/valid.h5", "c" * 64, 100)
    again = upsert_data_file(session, "/data/cl/valid.h5", "c" * 64, 11547)
    session.commit()
    assert again == first
    assert count(session, DataFile) == 1
    assert session.get(DataFile, first, populate_existing=True).image_count == 11547
    changed = upsert_data_file(session, "/data/cl/valid.h5", "d" * 64, 11547)  # new contents: a new row
    assert changed != first


def test_a_relative_data_path_is_stored_absolute(session: Session, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    file_id = upsert_data_file(session, "cl/valid.h5", "c" * 64, 9)
    assert session.get(DataFile, file_id).path == str(tmp_path / "cl" / "valid.h5")


def test_a_model_is_rewritten_with_its_data(session: Session, sweep_id: int, model_id: int) -> None:
    assert model_data_paths(session, model_id) == {
        "clean_valid": {"": "/data/cl/valid.h5"},
        "poisoned_valid": {"sunglasses": "/data/bd/bd_valid.h5"},
    }
    test_file = upsert_data_file(session, "/data/cl/test.h5", "t" * 64, 12830)
    clean = upsert_data_file(session, "/data/cl/valid.h5", "c" * 64, 11547)
    again = add_model(
        session,
        sweep_id,
        name="bd_net",
        path="/models/bd_net_v2.h5",
        sha256="e" * 64,
        input_scale=1 / 255,
        data=[("clean_valid", "", clean), ("clean_test", "", test_file)],
    )
    session.commit()
    assert again == model_id
    assert count(session, Model) == 1
    model = get_model(session, model_id)
    assert (model.path, model.sha256, model.input_scale) == ("/models/bd_net_v2.h5", "e" * 64, 1 / 255)
    assert model.status == "pending"
    assert count(session, ModelData) == 2
    assert model_data_paths(session, model_id) == {
        "clean_test": {"": "/data/cl/test.h5"},
        "clean_valid": {"": "/data/cl/valid.h5"},
    }
    assert [m.name for m in list_models(session, sweep_id)] == ["bd_net"]


@pytest.mark.parametrize(("truth", "stored"), [
    (Truth(True, "multi-trigger", {"sunglasses": 3, "patch": 7}),
     (True, "multi-trigger", {"sunglasses": 3, "patch": 7})),
    (Truth(True, None, (2, 5)), (True, None, [2, 5])),
    (Truth(False, "clean"), (False, "clean", [])),
])
def test_a_models_ground_truth_is_stored_and_rewritten(session: Session, sweep_id: int, truth: Truth, stored) -> None:
    def register(given: Truth | None) -> int:
        return add_model(session, sweep_id, name="m", path="/m.h5", sha256="a" * 64, input_scale=1.0, data=[],
                         truth=given)

    model_id = register(truth)
    session.commit()
    model = get_model(session, model_id)
    assert (model.truth_backdoored, model.truth_attack, model.truth_targets) == stored
    assert register(None) == model_id  # registered again without truth: none is left
    session.commit()
    model = get_model(session, model_id)
    assert (model.truth_backdoored, model.truth_attack, model.truth_targets) == (None, None, None)


def test_model_status_and_measurements(session: Session, model_id: int) -> None:
    set_model_status(session, model_id, "running", acc0=98.649, channel_count=60)
    set_model_status(session, model_id, "failed", error="conv_3 not found")
    session.commit()
    model = get_model(session, model_id)
    assert (model.status, model.error, model.acc0, model.channel_count) == ("failed", "conv_3 not found", 98.649, 60)
    set_model_status(session, model_id, "done")
    assert get_model(session, model_id).error is None
    with pytest.raises(TypeError, match="unexpected fields"):
        set_model_status(session, model_id, "done", accuracy=1.0)
    with pytest.raises(ValueError, match="model status"):
        set_model_status(session, model_id, "finished")


def test_progress_counts_tasks_by_state_and_stage(session: Session, sweep_id: int, model_id: int) -> None:
    set_model_status(session, model_id, "running", channel_count=60)
    rank = planned_task(session, sweep_id, model_id, "rank", "", {})
    first = planned_task(session, sweep_id, model_id, "prune_range", "0-10", {"start": 0, "stop": 10})
    second = planned_task(session, sweep_id, model_id, "prune_range", "10-20", {"start": 10, "stop": 20})
    planned_task(session, sweep_id, None, "finish", "", {})
    session.execute(update(Task).where(Task.id.in_([rank, first])).values(state="done"))
    session.execute(update(Task).where(Task.id == second).values(state="failed", error="OOM"))
    save_steps(session, model_id, [StepRow(step, step or None, step / 60, 98.0, 98, {}) for step in range(10)])
    session.commit()
    progress = sweep_progress(session, sweep_id)
    assert (progress.sweep_id, progress.status, progress.sweep_tasks) == (sweep_id, "pending", {"pending": 1})
    [model] = progress.models
    assert (model.model_id, model.name, model.status, model.error) == (model_id, "bd_net", "running", None)
    assert model.units == {"rank": (1, 1), "prune_range": (1, 2)}  # a unit a task as planned here; done ones count
    assert model.tasks == {"done": 2, "failed": 1}
    assert model.stages == {"rank": {"done": 1}, "prune_range": {"done": 1, "failed": 1}}
    overview = sweep_overview(session, sweep_id)
    assert overview.models == [(model_id, "bd_net", "running", None, {"done": 2, "failed": 1})]
    assert overview.sweep_tasks == {"pending": 1}


def test_a_sweep_whose_every_model_failed_is_failed(session: Session, sweep_id: int, model_id: int) -> None:
    set_model_status(session, model_id, "failed", error="bad file")
    assert finish_sweep(session, sweep_id) == "failed"
    set_model_status(session, model_id, "done")
    assert finish_sweep(session, sweep_id) == "done"


def test_unique_constraints_hold(session: Session, sweep_id: int, model_id: int) -> None:
    clean = session.scalars(select(ModelData.data_file_id).where(ModelData.role == "clean_valid")).one()
    duplicates = [
        Model(sweep_id=sweep_id, name="bd_net", path="p", sha256="s", input_scale=1.0),
        DataFile(path="/data/cl/valid.h5", sha256="c" * 64, image_count=1),
        ModelData(model_id=model_id, role="clean_valid", poison_name="", data_file_id=clean),
    ]
    for duplicate in duplicates:
        session.add(duplicate)
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()
    for task_model in (model_id, None):
        stage = "finish" if task_model is None else "rank"
        session.add(Task(sweep_id=sweep_id, model_id=task_model, stage=stage, key="", arguments={}))
        session.commit()
        session.add(Task(sweep_id=sweep_id, model_id=task_model, stage=stage, key="", arguments={}))
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()


def test_check_constraints_hold(session: Session, sweep_id: int, model_id: int) -> None:
    clean = session.scalars(select(ModelData.data_file_id).where(ModelData.role == "clean_valid")).one()
    bad_rows = [
        Task(sweep_id=sweep_id, model_id=model_id, stage="rank", arguments={}, state="lost"),
        ModelData(model_id=model_id, role="poisoned_test", poison_name="", data_file_id=clean),
        ModelData(model_id=model_id, role="clean_test", poison_name="bd", data_file_id=clean),
        Sweep(
            name="x",
            config={},
            thresholds=[],
            policy="first",
            prune_layer="a",
            rank_layer="b",
            range_size=0,
            artifact_dir="d",
        ),
        Model(sweep_id=sweep_id + 1000, name="orphan", path="p", sha256="s", input_scale=1.0),  # foreign key
    ]
    for row in bad_rows:
        session.add(row)
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()
