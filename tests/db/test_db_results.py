"""Per-model results on both backends: a second write of a key rewrites its row, and reads shape."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from badnet_prune.db.models import (
    Artifact,
    Base,
    DataFile,
    Evaluation,
    Model,
    ModelData,
    Ranking,
    Selection,
    Step,
    StepAsr,
    Sweep,
    Task,
)
from badnet_prune.db.repository import add_model
from badnet_prune.db.results import (
    StepRow,
    StoredStep,
    read_artifacts,
    read_evaluations,
    read_ranking,
    read_selections,
    read_steps,
    save_artifact,
    save_evaluation,
    save_ranking,
    save_selection,
    save_steps,
    steps_stored,
)
from tests.db.conftest import planned_task


def count(session: Session, model: type[Base]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_a_ranking_is_rewritten(session: Session, model_id: int) -> None:
    save_ranking(session, model_id, [(0, 1, 0.5), (1, 0, 0.0), (2, 2, 1.5)])
    save_ranking(session, model_id, [(0, 0, 0.25), (1, 1, 0.75), (2, 2, 1.5)])
    session.commit()
    assert count(session, Ranking) == 3
    assert read_ranking(session, model_id) == [(0, 0, 0.25), (1, 1, 0.75), (2, 2, 1.5)]


def test_steps_are_rewritten_with_their_asr(session: Session, model_id: int) -> None:
    save_steps(
        session,
        model_id,
        [
            StepRow(0, None, 0.0, 98.0, 980, {"sunglasses": (100.0, 1000)}),
            StepRow(1, 7, 1 / 60, 97.0, 970, {"sunglasses": (99.0, 990)}),
        ],
    )
    # A redelivered range task writes step 1 again, with other numbers.
    save_steps(session, model_id, [StepRow(1, 7, 1 / 60, 96.5, 965, {"sunglasses": (80.0, 800)})])
    session.commit()
    assert count(session, Step) == 2
    assert count(session, StepAsr) == 2
    assert steps_stored(session, model_id, 0, 2) and not steps_stored(session, model_id, 0, 3)
    step = read_steps(session, get_sweep_id(session, model_id))[1]
    assert (step.clean_accuracy, step.clean_correct, step.asr, step.hits) == (
        96.5,
        965,
        {"sunglasses": 80.0},
        {"sunglasses": 800},
    )


def test_read_steps_gives_every_model_in_order_with_asr_per_poison(
    session: Session, sweep_id: int, model_id: int
) -> None:
    other = add_model(session, sweep_id, name="other", path="/m/o.h5", sha256="o", input_scale=1 / 255, data=[])
    asr = {"sunglasses": (100.0, 10), "lipstick": (50.0, 5)}
    save_steps(session, other, [StepRow(1, 3, 0.5, 90.0, 9, asr), StepRow(0, None, 0.0, 95.0, 10, asr)])
    save_steps(session, model_id, [StepRow(0, None, 0.0, 98.0, 98, {})])
    session.commit()
    steps = read_steps(session, sweep_id)
    assert [(step.model, step.step) for step in steps] == [("bd_net", 0), ("other", 0), ("other", 1)]
    assert steps[2] == StoredStep(
        model="other",
        step=1,
        channel=3,
        fraction_pruned=0.5,
        clean_accuracy=90.0,
        clean_correct=9,
        asr={"lipstick": 50.0, "sunglasses": 100.0},
        hits={"lipstick": 5, "sunglasses": 10},
    )
    assert steps[0].channel is None and steps[0].asr == {} and steps[0].hits == {}
    assert [step.step for step in read_steps(session, sweep_id, model_name="other")] == [0, 1]
    assert read_steps(session, sweep_id, model_name="missing") == []
    assert read_steps(session, sweep_id + 1000) == []


def test_selections_evaluations_and_artifacts_are_rewritten(session: Session, model_id: int) -> None:
    for step, accuracy in ((45, 96.6), (47, 96.4)):
        save_selection(session, model_id, "0.02", step, accuracy)
    save_selection(session, model_id, "0.1", None, None)
    for accuracy, flagged in ((94.0, 1.0), (94.9, 0.16)):
        save_evaluation(
            session,
            model_id,
            network="G",
            threshold="0.02",
            role="clean_test",
            poison_name="",
            accuracy=accuracy,
            image_count=12830,
            flagged=flagged,
        )
    save_evaluation(
        session, model_id, network="B", threshold="", role="poisoned_test", poison_name="sunglasses", accuracy=100.0,
        image_count=12830,
    )
    for sha in ("1" * 64, "2" * 64):
        save_artifact(
            session,
            model_id,
            threshold="0.02",
            kind="G",
            path="/a/G_0.02.h5",
            sha256=sha,
            provenance={"step": 45, "sha": sha},
        )
    session.commit()
    assert count(session, Selection) == 2
    assert [(s.threshold, s.step, s.clean_valid_accuracy) for s in read_selections(session, model_id)] == [
        ("0.02", 47, 96.4),
        ("0.1", None, None),
    ]
    assert count(session, Evaluation) == 2
    rows = [(e.network, e.role, e.poison_name, e.accuracy, e.flagged) for e in read_evaluations(session, model_id)]
    assert rows == [("B", "poisoned_test", "sunglasses", 100.0, None), ("G", "clean_test", "", 94.9, 0.16)]
    [artifact] = read_artifacts(session, model_id)
    assert (artifact.sha256, artifact.provenance) == ("2" * 64, {"step": 45, "sha": "2" * 64})


def test_evaluation_rules_hold(session: Session, model_id: int) -> None:
    with pytest.raises(ValueError, match="network"):  # names are identifiers; which exist, the stages say
        save_evaluation(session, model_id, network="C D", threshold="", role="clean_test", poison_name="",
                        accuracy=1.0, image_count=1)
    with pytest.raises(ValueError, match="test role"):
        save_evaluation(session, model_id, network="B", threshold="", role="clean", poison_name="", accuracy=1.0,
                        image_count=1)
    with pytest.raises(ValueError, match="artifact kind"):
        save_artifact(session, model_id, threshold="0.02", kind="../B", path="p", sha256="s", provenance={})
    # B has no threshold, B' and G have one; a poisoned set has a name and the clean one none (which networks
    # flag is the stages' rule: tests/stages/test_stage_contract.py)
    cases = (("B", "0.02", "clean_test", "", None), ("B_prime", "", "clean_test", "", None),
             ("G", "0.02", "poisoned_test", "", 1.0),
             ("G", "0.02", "clean_test", "clean", 1.0))
    for network, threshold, role, poison, flagged in cases:
        with pytest.raises(IntegrityError):
            save_evaluation(
                session,
                model_id,
                network=network,
                threshold=threshold,
                role=role,
                poison_name=poison,
                accuracy=1.0,
                image_count=1,
                flagged=flagged,
            )
        session.rollback()


def test_deleting_a_sweep_deletes_everything_below_it(session: Session, sweep_id: int, model_id: int) -> None:
    save_ranking(session, model_id, [(0, 0, 0.0)])
    save_steps(session, model_id, [StepRow(0, None, 0.0, 98.0, 98, {"sunglasses": (100.0, 10)})])
    save_selection(session, model_id, "0.02", 0, 98.0)
    save_evaluation(session, model_id, network="B", threshold="", role="clean_test", poison_name="", accuracy=98.0,
                    image_count=9)
    save_artifact(session, model_id, threshold="0.02", kind="B_prime", path="p", sha256="s", provenance={})
    planned_task(session, sweep_id, model_id, "rank", "", {})
    planned_task(session, sweep_id, None, "finish", "", {})
    session.commit()
    below = (Model, ModelData, Task, Ranking, Step, StepAsr, Selection, Evaluation, Artifact)
    assert all(count(session, table) > 0 for table in below)

    assert session.execute(delete(Sweep).where(Sweep.id == sweep_id)).rowcount == 1
    session.commit()
    assert {table.__tablename__: count(session, table) for table in (Sweep, *below)} == dict.fromkeys(
        [table.__tablename__ for table in (Sweep, *below)], 0
    )
    assert count(session, DataFile) == 2  # data files are shared between sweeps: kept
    assert session.execute(delete(Sweep).where(Sweep.id == sweep_id)).rowcount == 0


def test_deleting_a_step_deletes_its_asr(session: Session, model_id: int) -> None:
    save_steps(session, model_id, [StepRow(0, None, 0.0, 98.0, 98, {"sunglasses": (100.0, 10)})])
    session.commit()
    session.delete(session.get(Step, (model_id, 0)))
    session.commit()
    assert count(session, StepAsr) == 0


def get_sweep_id(session: Session, model_id: int) -> int:
    return session.get_one(Model, model_id).sweep_id
