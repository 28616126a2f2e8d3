"""Zoo builds on the workers: planning a zoo's rows, claiming them for sending, and taking back abandoned ones.

A build runs under the lease discipline of a task (db.tasks: take_lease, renew_lease and end_task with
table=ZooBuild), so that a redelivered message never builds beside a running build. Planning the same
zoo again finds its rows by folder: a build done with the same cache entry, or running under a live
lease, is left alone; any other is planned afresh (a failed build is tried again, new settings replace
old ones). Functions take the caller's Session and neither open nor commit one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from badnet_prune.db.models import ZooBuild, utcnow
from badnet_prune.db.tasks import lease_is_live
from badnet_prune.db.upsert import upsert_statement


@dataclass(frozen=True)
class PlannedBuild:
    """One model of a zoo to build: its folder (absolute, its identity), zoo folder, name, recipe and cache."""

    folder: str
    zoo: str
    name: str
    attack: str
    seed: int
    settings: dict[str, Any] = field(hash=False)
    cache_key: str
    cache_dir: str


def plan_builds(session: Session, planned: Sequence[PlannedBuild], present: Collection[str]) -> list[int]:
    """The rows of the planned builds, in order; their ids. present: the folders that already hold the model
    of their planned cache entry (a done row whose folder lost its files is built again)."""
    if not planned:
        return []
    recipe = [{"folder": p.folder, "zoo": p.zoo, "name": p.name, "attack": p.attack, "seed": p.seed,
               "settings": p.settings, "cache_key": p.cache_key, "cache_dir": p.cache_dir} for p in planned]
    session.execute(upsert_statement(session, ZooBuild, key=["folder"], update=[]),
                    [{**row, "created_at": utcnow(), "state": "pending", "attempts": 0} for row in recipe])
    rows = {row.folder: row for row in session.scalars(
        select(ZooBuild).where(ZooBuild.folder.in_([p.folder for p in planned]))
        .execution_options(populate_existing=True))}
    for wanted in recipe:
        row = rows[wanted["folder"]]
        kept = (row.state == "done" and row.cache_key == wanted["cache_key"] and row.folder in present)
        if kept or lease_is_live(row) or (row.state in ("pending", "queued") and _same_recipe(row, wanted)):
            continue
        not_live = or_(ZooBuild.state != "running", ZooBuild.lease_expires_at.is_(None),
                       ZooBuild.lease_expires_at <= utcnow())  # another client may have sent it since the read
        session.execute(update(ZooBuild).where(ZooBuild.id == row.id, not_live).values(
            **wanted, state="pending", error=None, record=None, message_id=None, enqueued_at=None,
            lease_token=None, lease_expires_at=None))
    return [rows[p.folder].id for p in planned]


def _same_recipe(row: ZooBuild, wanted: dict[str, Any]) -> bool:
    return all(getattr(row, column) == value for column, value in wanted.items())


def zoo_builds(session: Session, build_ids: Sequence[int]) -> list[ZooBuild]:
    """The rows, in the order given."""
    rows = {row.id: row for row in session.scalars(
        select(ZooBuild).where(ZooBuild.id.in_(build_ids)).execution_options(populate_existing=True))}
    return [rows[build_id] for build_id in build_ids]


def get_build(session: Session, build_id: int) -> ZooBuild | None:
    return session.get(ZooBuild, build_id, populate_existing=True)


def claim_builds(session: Session, build_ids: Sequence[int]) -> list[int]:
    """Move those of the builds that are pending to 'queued' in one UPDATE; the ids this caller claimed."""
    if not build_ids:
        return []
    statement = (update(ZooBuild).where(ZooBuild.id.in_(build_ids), ZooBuild.state == "pending")
                 .values(state="queued", enqueued_at=utcnow()).returning(ZooBuild.id))
    return sorted(session.scalars(statement, execution_options={"synchronize_session": False}))


def record_build_messages(session: Session, sent: Sequence[tuple[int, str]]) -> None:
    """The broker's ids of the messages just sent, (build id, message id)."""
    if sent:
        session.execute(update(ZooBuild), [{"id": build_id, "message_id": message_id} for build_id, message_id in sent])


def release_abandoned(session: Session, build_ids: Sequence[int], held: Collection[str] | None,
                      unsent_after: timedelta) -> list[int]:
    """Make claimable again the builds nothing will run: running under an expired lease (the worker died), or
    queued longer ago than unsent_after whose message the broker no longer holds (held: the ids it holds; None
    when it could not be asked, and then only expired leases count). The ids released. The broker's ids are
    compared here, not in SQL: a shared queue may hold more of them than a statement binds."""
    now = utcnow()
    expired = and_(ZooBuild.state == "running", ZooBuild.lease_expires_at.is_not(None),
                   ZooBuild.lease_expires_at <= now)
    waiting = and_(ZooBuild.state.in_(("queued", "retrying")), ZooBuild.enqueued_at < now - unsent_after)
    candidates = session.execute(select(ZooBuild.id, ZooBuild.state, ZooBuild.message_id)
                                 .where(ZooBuild.id.in_(build_ids), or_(expired, waiting))).all()
    chosen = [build_id for build_id, state, message_id in candidates
              if state == "running" or (held is not None and (message_id is None or message_id not in held))]
    if not chosen:
        return []
    statement = (update(ZooBuild).where(ZooBuild.id.in_(chosen), or_(expired, waiting))
                 .values(state="pending", lease_token=None, lease_expires_at=None).returning(ZooBuild.id))
    return sorted(session.scalars(statement, execution_options={"synchronize_session": False}))


def fail_unstarted(session: Session, build_ids: Sequence[int], reason: str) -> None:
    """End, as failed with `reason`, those of the builds that no worker has started (pending or queued)."""
    if build_ids:
        session.execute(update(ZooBuild).where(ZooBuild.id.in_(build_ids), ZooBuild.attempts == 0,
                                               ZooBuild.state.in_(("pending", "queued")))
                        .values(state="failed", error=reason, finished_at=utcnow()))
