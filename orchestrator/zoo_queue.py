"""`badnet-prune zoo` with a broker: one Celery task per model, built by the workers, followed here.

The zoo's rows are planned in the database (db.zoo_builds), the pending ones claimed and sent, and this
process waits on the rows: a line per model as it ends, and on a terminal a bar with the time left.
Builds whose worker died (an expired lease) or whose message the broker lost are sent again, so a zoo
finishes while any worker lives. The workers write into the zoo's folder and the cache named here, so
both must be on storage they see at the same paths; a model a worker built that is not found here is
a failure that says so. Interrupted, the builds go on; the same command again collects them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine

from badnet_prune.db.models import ZooBuild, utcnow
from badnet_prune.db.session import display_url, prepare_database, session_scope
from badnet_prune.db.zoo_builds import (
    PlannedBuild,
    claim_builds,
    plan_builds,
    record_build_messages,
    release_abandoned,
    zoo_builds,
)
from badnet_prune.orchestrator.submit import check_broker
from badnet_prune.settings import Settings
from badnet_prune.synth.population import PlannedModel
from badnet_prune.synth.zoo import RECORD_FILE, ZooModel, ZooSettings, cache_key, read_record
from badnet_prune.worker.celery_app import make_celery
from badnet_prune.worker.zoo_build import ZOO_TASK

POLL_S = 1.0  # how often the rows are read while waiting
ENDED = ("done", "failed")


def build_on_workers(settings: Settings, plan: list[PlannedModel], zoo_settings: ZooSettings, cache_dir: Path,
                     out: Path, console: Console) -> tuple[list[ZooModel], dict[str, str]]:
    """Every planned model built by the workers (or found built); the records, and the failures by name."""
    check_broker(settings, then="; nothing was sent")
    engine = prepare_database(settings.db_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
    app = make_celery(settings)
    zoo, cache = out.resolve(), cache_dir.resolve()
    planned = [PlannedBuild(folder=str(zoo / p.name), zoo=str(zoo), name=p.name, attack=p.attack, seed=p.seed,
                            settings=zoo_settings.model_dump(mode="json"),
                            cache_key=cache_key(p.attack, p.seed, zoo_settings), cache_dir=str(cache)) for p in plan]
    present = [p.folder for p in planned if _holds(Path(p.folder), p.cache_key)]
    with session_scope(engine) as session:
        build_ids = plan_builds(session, planned, present)
    sent = _send(engine, app, build_ids)
    console.print(f"zoo: {len(plan)} models, {len(plan) - sent} already built or building, {sent} sent to the "
                  f"workers through {display_url(settings.broker_url or '')}; waiting for them", soft_wrap=True,
                  markup=False)
    if not app.control.ping(timeout=1.0):
        console.print("zoo: no worker answers yet: start one with `badnet-prune worker` (the builds wait in the "
                      "queue)", soft_wrap=True, markup=False)
    try:
        rows = _wait(engine, app, build_ids, console, timedelta(seconds=settings.in_flight_grace_s))
    except KeyboardInterrupt:
        console.print("zoo: interrupted; the builds go on on the workers: run the same command again to collect "
                      "them (it sends nothing that is built or building)", soft_wrap=True, markup=False)
        raise
    return _collect(rows)


def _holds(folder: Path, key: str) -> bool:
    try:
        return read_record(folder).key == key
    except (OSError, ValueError):
        return False


def _send(engine: Engine, app, build_ids: list[int]) -> int:
    """Claim the pending builds and send one message each (the build id only); how many were sent."""
    with session_scope(engine) as session:
        claimed = claim_builds(session, build_ids)
    sent: list[tuple[int, str]] = []
    try:
        for build_id in claimed:
            sent.append((build_id, app.send_task(ZOO_TASK, kwargs={"build_id": build_id}).id))
    finally:
        with session_scope(engine) as session:
            record_build_messages(session, sent)
    return len(claimed)


def _wait(engine: Engine, app, build_ids: list[int], console: Console, grace: timedelta) -> list[ZooBuild]:
    """Follow the builds until each has ended; builds nothing will run are sent again. The last rows."""
    view = _WaitView(console, len(build_ids))
    said: set[int] = set()
    with view:
        while True:
            with session_scope(engine) as session:
                rows = zoo_builds(session, build_ids)
            left = view.update(rows)
            for row in rows:
                if row.state in ENDED and row.id not in said:
                    said.add(row.id)
                    view.say(_ended_line(row) + (f"; {left}" if left else ""))
            if len(said) == len(rows):
                return rows
            _send_abandoned(engine, app, build_ids, rows, grace)
            time.sleep(POLL_S)


def _send_abandoned(engine: Engine, app, build_ids: list[int], rows: list[ZooBuild], grace: timedelta) -> None:
    now = utcnow()
    if not any((row.state == "running" and row.lease_expires_at is not None and row.lease_expires_at <= now)
               or (row.state in ("queued", "retrying") and row.enqueued_at is not None
                   and row.enqueued_at < now - grace) for row in rows):
        return
    held = _held_message_ids(app)
    with session_scope(engine) as session:
        released = release_abandoned(session, build_ids, held, grace)
    if released:
        _send(engine, app, released)


def _held_message_ids(app) -> set[str] | None:
    from badnet_prune.worker.dispatch import CeleryDispatcher

    return CeleryDispatcher(app).held_message_ids()


def _ended_line(row: ZooBuild) -> str:
    took = f" ({row.seconds:.0f} s on {row.worker})" if row.seconds is not None else ""
    if row.state == "failed":
        return f"{row.name} failed: {row.error}{took}"
    try:
        record = ZooModel.model_validate_json(json.dumps(row.record))
    except ValueError:  # no record (never for a done build), or one this version cannot read
        return f"{row.name} done{took}"
    asr = ", ".join(f"ASR {t.name} {t.asr_test:.2f}%" for t in record.triggers)
    return f"{row.name}: clean {record.clean_test_accuracy:.2f}%, {asr}{took}"


def _collect(rows: list[ZooBuild]) -> tuple[list[ZooModel], dict[str, str]]:
    """The built models' records as found in the zoo's folder, in plan order, and the failures."""
    built: list[ZooModel] = []
    failed: dict[str, str] = {}
    for row in rows:
        if row.state != "done":
            failed[row.name] = row.error or row.state
        elif not (Path(row.folder) / RECORD_FILE).is_file():
            failed[row.name] = (f"built by {row.worker}, but {Path(row.folder) / RECORD_FILE} is not here: the "
                                "workers must see the zoo's folder and the cache at the same paths as this machine")
        else:
            built.append(read_record(Path(row.folder)))
    return built, failed


@dataclass
class _Pace:
    """The time left, measured: the mean build time of the builds ended in this zoo (per attack where known)
    times the builds not started, plus what the running ones still need, shared by the builds running at once."""

    seconds: dict[str, list[float]]

    def left(self, rows: list[ZooBuild]) -> str:
        every = [s for times in self.seconds.values() for s in times]
        if not every:
            return "time left: known after the first build"
        mean = sum(every) / len(every)
        per_attack = {attack: sum(times) / len(times) for attack, times in self.seconds.items()}
        now = utcnow()
        running = [row for row in rows if row.state == "running"]
        waiting = sum(per_attack.get(row.attack, mean) for row in rows if row.state not in (*ENDED, "running"))
        current = sum(max(0.0, per_attack.get(row.attack, mean) - (now - row.started_at).total_seconds())
                      for row in running if row.started_at is not None)
        return f"about {_duration((waiting + current) / max(1, len(running)))} left at {max(1, len(running))} at once"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


class _WaitView:
    """On a terminal a live bar (models ended of all, running, time left); a line per model as it ends."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.pace = _Pace({})
        self.progress = Progress(TextColumn("zoo"), BarColumn(), MofNCompleteColumn(), TextColumn("models"),
                                 TimeElapsedColumn(), TextColumn("{task.description}"), console=console,
                                 disable=not console.is_terminal)
        self.bar = self.progress.add_task("", total=total)

    def __enter__(self) -> _WaitView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def say(self, line: str) -> None:
        self.console.print(line, soft_wrap=True, markup=False)

    def update(self, rows: list[ZooBuild]) -> str:
        """Show the rows' progress; the time left ('' once all have ended)."""
        self.pace.seconds = {}
        for row in rows:
            if row.state == "done" and row.seconds is not None:
                self.pace.seconds.setdefault(row.attack, []).append(row.seconds)
        ended = sum(row.state in ENDED for row in rows)
        running = sum(row.state == "running" for row in rows)
        left = self.pace.left(rows) if ended < len(rows) else ""
        self.progress.update(self.bar, completed=ended, description=escape(f"{running} building; {left}"))
        return left
