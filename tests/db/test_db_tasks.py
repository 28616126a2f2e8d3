"""Task rows through their life on both backends: planned once, claimed once, leased by one holder."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from badnet_prune.db import tasks as db_tasks
from badnet_prune.db.models import Task, utcnow
from badnet_prune.db.repository import set_model_status
from badnet_prune.db.tasks import (
    claim_stages,
    claim_tasks,
    end_task,
    fail_open_tasks,
    get_task,
    lease_is_live,
    lock_model,
    models_ended,
    record_messages,
    renew_lease,
    reset_to_pending,
    stage_task_ids,
    stage_tasks,
    take_lease,
    unfinished_stages,
)
from tests.db.conftest import planned_task


def test_planning_again_finds_the_same_rows_and_leaves_their_state(session: Session, sweep_id: int,
                                                                   model_id: int) -> None:
    rank = planned_task(session, sweep_id, model_id, "rank", "", {})
    prune = planned_task(session, sweep_id, model_id, "prune_range", "0-10", {"start": 0, "stop": 10})
    finish = planned_task(session, sweep_id, None, "finish", "", {})
    session.execute(update(Task).where(Task.id == prune).values(state="done"))
    session.commit()
    assert planned_task(session, sweep_id, model_id, "rank", "", {}) == rank
    assert planned_task(session, sweep_id, model_id, "prune_range", "0-10", {"start": 0, "stop": 10}) == prune
    assert planned_task(session, sweep_id, None, "finish", "", {}) == finish  # NULL model_id: still one row
    session.commit()
    assert session.scalar(select(func.count()).select_from(Task)) == 3
    assert get_task(session, prune).state == "done"
    assert get_task(session, prune).arguments == {"start": 0, "stop": 10}
    assert [t.id for t in stage_tasks(session, sweep_id, model_id, "prune_range")] == [prune]
    assert [t.id for t in stage_tasks(session, sweep_id, None, "finish")] == [finish]


def test_only_one_claim_and_one_lease_win(session: Session, sweep_id: int, model_id: int) -> None:
    task_id = planned_task(session, sweep_id, model_id, "threshold", "0.02", {"threshold": "0.02"})
    assert claim_tasks(session, [task_id]) == [task_id]
    assert claim_tasks(session, [task_id]) == [], "a second sender must not send it again"
    assert take_lease(session, task_id, "a", "w1", 30)
    assert not take_lease(session, task_id, "b", "w2", 30), "a live lease keeps a second copy out"
    task = get_task(session, task_id)
    assert (task.state, task.attempts, task.worker, task.lease_token) == ("running", 1, "w1", "a")
    assert lease_is_live(task)
    assert renew_lease(session, task_id, "a", 30) and not renew_lease(session, task_id, "b", 30)
    assert not end_task(session, task_id, "b", "done"), "only the holder records the outcome"
    assert end_task(session, task_id, "a", "done")
    session.commit()
    task = get_task(session, task_id)
    assert (task.state, task.lease_token, task.lease_expires_at, task.error) == ("done", None, None, None)
    assert task.finished_at >= task.started_at
    assert task.seconds == pytest.approx((task.finished_at - task.started_at).total_seconds(), abs=1e-3)
    assert not take_lease(session, task_id, "c", "w3", 30), "a done task never runs again"


def test_an_expired_or_dead_holders_lease_is_taken_over(session: Session, sweep_id: int, model_id: int) -> None:
    task_id = planned_task(session, sweep_id, model_id, "rank", "", {})
    assert take_lease(session, task_id, "host:1:x", "w1", 30)
    assert take_lease(session, task_id, "host:2:y", "w2", 30, dead_token="host:1:x"), "its holder is dead"
    session.execute(update(Task).where(Task.id == task_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert not lease_is_live(get_task(session, task_id))
    assert take_lease(session, task_id, "host:3:z", "w3", 30)
    assert not renew_lease(session, task_id, "host:2:y", 30), "the old holder learns it lost the lease"
    assert get_task(session, task_id).attempts == 3


def test_resume_resets_only_what_no_live_lease_holds(session: Session, sweep_id: int, model_id: int) -> None:
    running = planned_task(session, sweep_id, model_id, "rank", "", {})
    queued = planned_task(session, sweep_id, model_id, "prune_range", "0-10", {"start": 0, "stop": 10})
    take_lease(session, running, "t", "w1", 30)
    claim_tasks(session, [queued])
    reset_to_pending(session, [running, queued])
    assert (get_task(session, running).state, get_task(session, queued).state) == ("running", "pending")


def test_stages_are_claimed_once_and_again_only_if_never_sent(session: Session, sweep_id: int, model_id: int) -> None:
    ranges = [planned_task(session, sweep_id, model_id, "prune_range", f"{start}-{start + 10}",
                           {"start": start, "stop": start + 10}) for start in (0, 10, 20)]
    threshold = planned_task(session, sweep_id, model_id, "threshold", "0.02", {"threshold": "0.02"})
    assert stage_task_ids(session, sweep_id, ["prune_range"]) == [("prune_range", task_id) for task_id in ranges]
    claimed = claim_stages(session, sweep_id, model_id, ["prune_range"], timedelta(seconds=5))
    assert claimed == [("prune_range", task_id) for task_id in ranges]
    assert get_task(session, threshold).state == "pending", "only the named stages are claimed"
    assert claim_stages(session, sweep_id, model_id, ["prune_range"], timedelta(seconds=5)) == []
    record_messages(session, [(ranges[0], "m0"), (ranges[1], "m1")])
    assert [get_task(session, task_id).message_id for task_id in ranges] == ["m0", "m1", None]
    session.execute(update(Task).where(Task.id.in_(ranges)).values(enqueued_at=utcnow() - timedelta(seconds=6)))
    again = claim_stages(session, sweep_id, model_id, ["prune_range"], timedelta(seconds=5))
    assert again == [("prune_range", ranges[2])], "claimed long ago and never sent: its sender died"


def test_unfinished_stages_and_ended_models(session: Session, sweep_id: int, model_id: int) -> None:
    rank = planned_task(session, sweep_id, model_id, "rank", "", {})
    planned_task(session, sweep_id, model_id, "prune_range", "0-10", {"start": 0, "stop": 10})
    stages = ["rank", "prune_range", "threshold"]
    assert unfinished_stages(session, sweep_id, model_id, stages) == {"rank", "prune_range"}
    session.execute(update(Task).where(Task.id == rank).values(state="done"))
    assert unfinished_stages(session, sweep_id, model_id, stages) == {"prune_range"}
    assert unfinished_stages(session, sweep_id, model_id, []) == set()
    assert not models_ended(session, sweep_id)
    set_model_status(session, model_id, "failed", error="bad file")
    assert models_ended(session, sweep_id)


def test_of_two_last_tasks_ending_at_once_the_later_sees_both_done(engine: Engine, session: Session, sweep_id: int,
                                                                     model_id: int) -> None:
    """Under READ COMMITTED neither end would see the other's uncommitted one: the model's lock makes them
    take turns, so the second to end finds the stage done and releases what follows."""
    first, second = (planned_task(session, sweep_id, model_id, "prune_range", f"{start}-{start + 10}",
                                  {"start": start, "stop": start + 10}) for start in (0, 10))
    assert take_lease(session, first, "a", "w1", 30) and take_lease(session, second, "b", "w2", 30)
    session.commit()
    seen: list[set[str]] = []
    ended, locked = threading.Event(), threading.Event()

    def end_second() -> None:
        with Session(engine) as other, other.begin():
            assert end_task(other, second, "b", "done")
            ended.set()
            lock_model(other, model_id)
            locked.set()
            seen.append(unfinished_stages(other, sweep_id, model_id, ["prune_range"]))

    with Session(engine) as one:
        one.begin()
        assert end_task(one, first, "a", "done")
        lock_model(one, model_id)
        assert unfinished_stages(one, sweep_id, model_id, ["prune_range"]) == {"prune_range"}
        thread = threading.Thread(target=end_second)
        thread.start()
        if engine.dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE already waits for the first end
            assert ended.wait(30)
        assert not locked.wait(1.0), "the second end must wait for the model's lock"
        one.commit()
    thread.join(30)
    assert seen == [set()], "the second end must see the first one done"


def test_a_failed_model_closes_its_open_tasks(session: Session, sweep_id: int, model_id: int) -> None:
    done = planned_task(session, sweep_id, model_id, "rank", "", {})
    open_task = planned_task(session, sweep_id, model_id, "prune_range", "0-10", {"start": 0, "stop": 10})
    session.execute(update(Task).where(Task.id == done).values(state="done"))
    fail_open_tasks(session, model_id, "not run: model failed")
    assert get_task(session, done).state == "done"
    assert (get_task(session, open_task).state, get_task(session, open_task).error) == (
        "failed", "not run: model failed")


@pytest.mark.parametrize("state", ["lost", ""])
def test_an_unknown_state_is_refused_by_the_schema(session: Session, sweep_id: int, model_id: int,
                                                    state: str) -> None:
    from sqlalchemy.exc import IntegrityError

    session.add(Task(sweep_id=sweep_id, model_id=model_id, stage="rank", key="", arguments={}, state=state))
    with pytest.raises(IntegrityError):
        session.flush()


def test_more_tasks_than_one_statement_binds_are_claimed_in_parts(session: Session, sweep_id: int, model_id: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite binds at most 32,766 parameters a statement; a sweep with more root tasks still claims them all."""
    monkeypatch.setattr(db_tasks, "IDS_PER_STATEMENT", 2)
    ids = [planned_task(session, sweep_id, model_id, "prune_range", f"{start}-{start + 1}",
                        {"start": start, "stop": start + 1}) for start in range(5)]
    assert claim_tasks(session, ids[::-1]) == sorted(ids)
    assert claim_tasks(session, ids) == []
