"""Task rows through their life on both backends: planned once, claimed once, leased by one holder."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import Task, utcnow
from db.tasks import (
    claim_for_sending,
    end_task,
    fail_open_tasks,
    get_task,
    lease_is_live,
    renew_lease,
    reset_to_pending,
    stage_tasks,
    take_lease,
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
    assert claim_for_sending(session, task_id)
    assert not claim_for_sending(session, task_id), "a second sender must not send it again"
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
    assert task.seconds is not None and task.finished_at >= task.started_at
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
    claim_for_sending(session, queued)
    reset_to_pending(session, [running, queued])
    assert (get_task(session, running).state, get_task(session, queued).state) == ("running", "pending")


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
