"""Zoo build rows on both backends: planned once per folder, kept when built, planned afresh otherwise, and
taken back when their worker died or their message was lost."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from badnet_prune.db.models import ZooBuild, utcnow
from badnet_prune.db.tasks import end_task, take_lease
from badnet_prune.db.zoo_builds import (
    PlannedBuild,
    claim_builds,
    fail_unstarted,
    get_build,
    plan_builds,
    record_build_messages,
    release_abandoned,
)


def planned(name: str, key: str = "k1", seed: int = 0) -> PlannedBuild:
    return PlannedBuild(folder=f"/zoo/{name}", zoo="/zoo", name=name, attack="patch", seed=seed,
                        settings={"classes": 3}, cache_key=key, cache_dir="/cache")


def test_planning_a_zoo_again_keeps_what_is_built_and_plans_the_rest_afresh(session: Session) -> None:
    ids = plan_builds(session, [planned("a"), planned("b"), planned("c"), planned("d")], present=[])
    session.commit()
    assert claim_builds(session, ids) == sorted(ids)
    assert claim_builds(session, ids) == [], "a second sender must not send them again"
    a, b, c, d = ids
    for build_id, token in ((a, "ta"), (b, "tb"), (c, "tc"), (d, "td")):
        assert take_lease(session, build_id, token, "w1", 30, table=ZooBuild)
    assert end_task(session, a, "ta", "done", table=ZooBuild, values={"record": {"name": "a"}})
    assert end_task(session, b, "tb", "done", table=ZooBuild, values={"record": {"name": "b"}})
    assert end_task(session, c, "tc", "failed", "missed 95%", table=ZooBuild)
    session.commit()

    again = plan_builds(session, [planned("a"), planned("b"), planned("c"), planned("d"), planned("e")],
                        present=["/zoo/a"])
    session.commit()
    assert again[:4] == ids and session.scalar(select(func.count()).select_from(ZooBuild)) == 5
    states = {get_build(session, i).name: (get_build(session, i).state, get_build(session, i).record) for i in again}
    assert states == {
        "a": ("done", {"name": "a"}),  # built, and its folder holds it
        "b": ("pending", None),  # done, but its files are gone: built again
        "c": ("pending", None),  # failed: tried again
        "d": ("running", None),  # a live lease: left to its worker
        "e": ("pending", None),
    }
    assert get_build(session, ids[2]).error is None

    plan_builds(session, [planned("a", key="k2")], present=["/zoo/a"])
    session.commit()
    assert (get_build(session, a).state, get_build(session, a).cache_key) == ("pending", "k2"), "new settings"


def test_a_build_only_its_holder_ends_and_a_dead_workers_build_is_released(session: Session) -> None:
    (build_id, lost_id) = plan_builds(session, [planned("a"), planned("b")], present=[])
    claim_builds(session, [build_id, lost_id])
    record_build_messages(session, [(build_id, "m1"), (lost_id, "m2")])
    assert take_lease(session, build_id, "t1", "w1", 30, table=ZooBuild)
    assert not take_lease(session, build_id, "t2", "w2", 30, table=ZooBuild), "a live lease keeps a copy out"
    session.commit()
    assert release_abandoned(session, [build_id, lost_id], held={"m2"}, unsent_after=timedelta(0)) == []
    session.execute(update(ZooBuild).where(ZooBuild.id == build_id)
                    .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    session.execute(update(ZooBuild).where(ZooBuild.id == lost_id)
                    .values(enqueued_at=utcnow() - timedelta(seconds=60)))
    session.commit()
    assert release_abandoned(session, [build_id, lost_id], held={"m2"}, unsent_after=timedelta(seconds=30)) == [
        build_id], "the expired lease only: the broker still holds the other's message"
    assert release_abandoned(session, [lost_id], held=None, unsent_after=timedelta(seconds=30)) == [], (
        "a broker that cannot be asked never makes a queued build lost")
    assert release_abandoned(session, [lost_id], held=set(), unsent_after=timedelta(seconds=30)) == [lost_id]
    session.commit()
    assert not end_task(session, build_id, "t1", "done", table=ZooBuild), "the released holder records nothing"
    assert take_lease(session, build_id, "t3", "w2", 30, table=ZooBuild)
    assert end_task(session, build_id, "t3", "done", table=ZooBuild, values={"record": {"name": "a"}})
    session.commit()
    build = get_build(session, build_id)
    assert (build.state, build.attempts, build.worker, build.record) == ("done", 2, "w2", {"name": "a"})
    assert build.seconds is not None and build.seconds >= 0


def test_only_a_build_no_worker_started_is_failed_as_never_started(session: Session) -> None:
    waiting, started = plan_builds(session, [planned("a"), planned("b")], present=[])
    claim_builds(session, [waiting, started])
    assert take_lease(session, started, "t", "w1", 30, table=ZooBuild)
    fail_unstarted(session, [waiting, started], "never started")
    session.commit()
    assert (get_build(session, waiting).state, get_build(session, waiting).error) == ("failed", "never started")
    assert get_build(session, started).state == "running"
