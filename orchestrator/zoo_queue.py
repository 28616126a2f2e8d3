"""`badnet-prune zoo` with a broker: one Celery task per model, built by the workers, followed here.

The zoo's rows are planned in the database (db.zoo_builds), the pending ones claimed and sent, and this
process waits on the rows: a line per model as it ends, and on a terminal a bar with the time left.
Builds whose worker died (an expired lease) or whose message the broker lost are sent again, so a zoo
finishes while any worker lives; a database that stops answering is waited for. The workers write into
the zoo's folder and the cache named here, so both must be on storage they see at the same paths; a
model a worker built that is not found here is a failure that says so. Interrupted, the builds go on;
the same command again collects them.
"""

from __future__ import annotations

import json
import time
from collections import Counter
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
    fail_unstarted,
    plan_builds,
    record_build_messages,
    release_abandoned,
    zoo_builds,
)
from badnet_prune.numerics.errors import BadInputError, first_line
from badnet_prune.orchestrator.submit import check_broker
from badnet_prune.settings import Settings
from badnet_prune.synth.population import PlannedModel
from badnet_prune.synth.zoo import RECORD_FILE, ZooModel, ZooSettings, cache_key, read_record
from badnet_prune.worker.celery_app import make_celery
from badnet_prune.worker.dispatch import BROKER_ERRORS, CeleryDispatcher
from badnet_prune.worker.flow import TRANSIENT_ERRORS
from badnet_prune.worker.zoo_build import ZOO_TASK

POLL_S = 1.0  # how often the rows are read while waiting
ENDED = ("done", "failed")


def build_on_workers(settings: Settings, plan: list[PlannedModel], zoo_settings: ZooSettings, cache_dir: Path,
                     out: Path, console: Console) -> tuple[list[ZooModel], dict[str, str]]:
    """Every planned model built by the workers (or found built); the records, and the failures by name."""
    check_broker(settings, then="; nothing was sent")
    broker = CeleryDispatcher(make_celery(settings))
    if not _can_list_messages(broker):
        reason = (f"does not answer ({broker.last_error})" if broker.last_error else "cannot list the messages it "
                  "holds (a Redis broker can), so a lost build could not be told from a queued one")
        raise BadInputError("BADNET_PRUNE_BROKER", f"the broker at {display_url(settings.broker_url or '')} {reason}; "
                            "nothing was sent")
    engine = prepare_database(settings.db_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
    zoo, cache = out.resolve(), cache_dir.resolve()
    planned = [PlannedBuild(folder=str(zoo / p.name), zoo=str(zoo), name=p.name, attack=p.attack, seed=p.seed,
                            settings=zoo_settings.model_dump(mode="json"),
                            cache_key=cache_key(p.attack, p.seed, zoo_settings), cache_dir=str(cache)) for p in plan]
    present = [p.folder for p in planned if _holds(Path(p.folder), p.cache_key)]
    with session_scope(engine) as session:
        build_ids = plan_builds(session, planned, present)
    try:
        sent = _send(engine, broker, build_ids)
    except BROKER_ERRORS as error:  # what was claimed and not sent is sent again once the wait sees it lost
        console.print(f"zoo: the broker stopped answering while sending ({first_line(error)}); what it did not "
                      "take is sent again when it answers", soft_wrap=True, markup=False)
        sent = 0
    console.print(f"zoo: {len(plan)} models, {len(plan) - sent} already built or building, {sent} sent to the "
                  f"workers through {display_url(settings.broker_url or '')}; waiting for them", soft_wrap=True,
                  markup=False)
    if broker.workers_alive() is False:
        console.print("zoo: no worker answers yet: start one with `badnet-prune worker` (the builds wait in the "
                      "queue)", soft_wrap=True, markup=False)
    try:
        rows = _wait(engine, broker, build_ids, console, timedelta(seconds=settings.in_flight_grace_s))
    except KeyboardInterrupt:
        console.print("zoo: interrupted; the builds go on on the workers: run the same command again to collect "
                      "them (it sends nothing that is built or building)", soft_wrap=True, markup=False)
        raise
    return _collect(rows)


def _can_list_messages(broker: CeleryDispatcher, tries: int = 5) -> bool:
    """Whether the broker lists the messages it holds; a connection that fails is tried again a few times
    (a pooled connection can be stale after the broker restarted), a transport that cannot list at once."""
    for attempt in range(tries):
        if broker.held_message_ids() is not None:
            return True
        if broker.last_error is None or attempt == tries - 1:
            return False
        time.sleep(POLL_S / 2)
    return False


def _holds(folder: Path, key: str) -> bool:
    try:
        return read_record(folder).key == key
    except (OSError, ValueError):
        return False


def _send(engine: Engine, broker: CeleryDispatcher, build_ids: list[int]) -> int:
    """Claim the pending builds and send one message each (the build id only); how many were claimed."""
    with session_scope(engine) as session:
        claimed = claim_builds(session, build_ids)
    sent: list[tuple[int, str]] = []
    try:
        for build_id in claimed:
            sent.append((build_id, broker.send_named(ZOO_TASK, build_id=build_id)))
    finally:
        with session_scope(engine) as session:
            record_build_messages(session, sent)
    return len(claimed)


def _wait(engine: Engine, broker: CeleryDispatcher, build_ids: list[int], console: Console,
          grace: timedelta) -> list[ZooBuild]:
    """Follow the builds until each has ended; builds nothing will run are sent again. The last rows.

    A dead worker's build (its lease expired) is sent again at once; a build waiting in the queue is looked
    for in the broker only once nothing has moved for `grace` (a backlog is not a loss). A build sent
    MAX_RESENDS times that no worker ever started fails, saying why that usually happens."""
    view = _WaitView(console, len(build_ids))
    said: set[int] = set()
    resent: Counter[int] = Counter()
    seen: list[tuple[int, str]] = []
    moved = time.monotonic()
    with view:
        while True:
            try:
                with session_scope(engine) as session:
                    rows = zoo_builds(session, build_ids)
            except TRANSIENT_ERRORS as error:
                view.unavailable(error)
                time.sleep(POLL_S)
                continue
            left = view.update(rows)
            for row in rows:
                if row.state in ENDED and row.id not in said:
                    said.add(row.id)
                    view.say(_ended_line(row) + (f"; {left}" if left else ""))
            if len(said) == len(rows):
                return rows
            states = [(row.id, row.state) for row in rows]
            if states != seen:
                seen, moved = states, time.monotonic()
            stalled = time.monotonic() - moved >= grace.total_seconds()
            try:
                _send_abandoned(engine, broker, build_ids, rows, grace, stalled, resent)
            except (*TRANSIENT_ERRORS, *BROKER_ERRORS) as error:
                view.unavailable(error)
            time.sleep(POLL_S)


MAX_RESENDS = 3


def _send_abandoned(engine: Engine, broker: CeleryDispatcher, build_ids: list[int], rows: list[ZooBuild],
                    grace: timedelta, stalled: bool, resent: Counter[int]) -> None:
    """Send again what nothing will run: builds whose lease expired, and once stalled, lost messages."""
    now = utcnow()
    expired = any(row.state == "running" and row.lease_expires_at is not None and row.lease_expires_at <= now
                  for row in rows)
    if not (expired or stalled):
        return
    held = broker.held_message_ids() if stalled else None
    never_started = {row.id for row in rows if row.attempts == 0}
    with session_scope(engine) as session:
        released = release_abandoned(session, build_ids, held, grace)
        resent.update(build_id for build_id in released if build_id in never_started)
        hopeless = [build_id for build_id, count in resent.items() if count > MAX_RESENDS]
        fail_unstarted(session, hopeless, f"sent {MAX_RESENDS + 1} times and never started: do the workers use "
                       "this command's database (BADNET_PRUNE_DB) and broker?")
    _send(engine, broker, [build_id for build_id in released if build_id not in hopeless])


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
    """The built models' records as found in the zoo's folder, in plan order, and the failures: a folder that
    holds another build than the one planned (other settings, or a worker running other generator code) is
    one, so that the manifest never labels a model with settings it was not built with."""
    built: list[ZooModel] = []
    failed: dict[str, str] = {}
    for row in rows:
        record_file = Path(row.folder) / RECORD_FILE
        if row.state != "done":
            failed[row.name] = row.error or row.state
        elif not record_file.is_file():
            failed[row.name] = (f"built by {row.worker}, but {record_file} is not here: the workers must see the "
                                "zoo's folder and the cache at the same paths as this machine")
        elif (found := read_record(Path(row.folder))).key != row.cache_key:
            failed[row.name] = (f"{record_file} holds build {found.key}, not the planned {row.cache_key}: run the "
                                "command again (a build of other settings finished meanwhile, or the workers run "
                                "other generator code than this machine)")
        else:
            built.append(found)
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
        self.outage = False

    def __enter__(self) -> _WaitView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def say(self, line: str) -> None:
        self.console.print(line, soft_wrap=True, markup=False)

    def unavailable(self, error: BaseException) -> None:
        """Say once per outage that the database does not answer; the wait goes on."""
        if not self.outage:
            self.say(f"zoo: the database or the broker does not answer ({first_line(error)}); still waiting")
        self.outage = True

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
        self.outage = False
        return left
