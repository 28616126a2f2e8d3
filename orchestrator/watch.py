"""Watching a sweep: one bar for the whole sweep with the time left, the stage at work, a line per
model state, and the models running or failed.

Redrawn from grouped queries (db.repository.sweep_overview), so the first frame of a 1,000-model
sweep costs what a 1-model one does. Each stage is shown by its declared description (ranking,
the pruning sweep, each threshold's evaluation and model files...). On a terminal it is a live
display; piped, it prints a line when a stage starts or ends, when a model fails, and each model's
input-scale line (the rank stage's choice or check) once. A database
that is away for a few seconds (a PostgreSQL restart) is waited for; a broker that no worker
consumes from is said once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from badnet_prune.db.errors import DatabaseUnavailable
from badnet_prune.db.inputs import input_scale_notes
from badnet_prune.db.repository import SweepOverview, sweep_overview
from badnet_prune.db.session import session_scope
from badnet_prune.worker.dispatch import Dispatcher

POLL_SECONDS = 0.5
# A redraw's queries cost the database a share of a core that grows with the sweep (about 0.1 s at
# 10,000 tasks on a loaded 2-core machine, bench/coordination.py), taken from the workers beside it:
# the poll waits long enough that redrawing keeps to this share of the time, and at most MAX_POLL_SECONDS.
POLL_SHARE = 0.05
MAX_POLL_SECONDS = 5.0
NO_WORKER_AFTER_S = 10.0
SHOWN_MODELS = 8
# Piped, a line is printed when the stages at work change, and otherwise at most this often while their
# counted units (epochs, steps) move: a long fine-tuning says each epoch without flooding a log.
PIPED_LINE_SECONDS = 5.0
MODEL_STATES = ("pending", "running", "done", "failed")


def watch_sweep(engine: Engine, sweep_id: int, console: Console, *, dispatcher: Dispatcher,
                on_stall: Callable[[], int] | None = None, stall_after_s: float = 30.0) -> str:
    """Follow a sweep that workers run until it ends; its final status.

    on_stall: called when nothing has changed for stall_after_s (beyond the grace in which a queued message
    may still be on its way to the broker, Settings.in_flight_grace_s); sends again what the broker lost
    and returns how many (a worker killed while it took a message from Redis can lose that message).
    """
    view = _View(console, sweep_id)
    with view:
        view.refresh(engine, force=True)
        _follow(engine, dispatcher, view, on_stall, stall_after_s)
        view.refresh(engine, force=True)
    return view.status


def run_here(engine: Engine, sweep_id: int, console: Console, *, dispatcher: Dispatcher) -> str:
    """The embedded default: the runner runs the sweep's tasks in this thread while the watcher shows them
    from another, reading the database as it would for workers elsewhere; the sweep's final status."""
    view = _View(console, sweep_id)
    stop = threading.Event()

    def show() -> None:
        while not stop.wait(POLL_SECONDS):
            view.refresh(engine)

    watcher = threading.Thread(target=show, name=f"watch-sweep-{sweep_id}", daemon=True)
    with view:
        view.refresh(engine, force=True)
        watcher.start()
        try:
            dispatcher.run()
        finally:
            stop.set()
            watcher.join()
        view.refresh(engine, force=True)
    return view.status


def _follow(engine: Engine, dispatcher: Dispatcher, view: _View, on_stall: Callable[[], int] | None,
            stall_after_s: float) -> None:
    last_change = time.monotonic()
    warned = False
    interval = POLL_SECONDS
    while not view.ended:
        time.sleep(interval)
        quiet = time.monotonic() - last_change
        started = time.monotonic()
        changed = view.refresh(engine)
        interval = poll_interval(time.monotonic() - started)
        if changed:
            last_change = time.monotonic()
        elif not warned and quiet > NO_WORKER_AFTER_S and dispatcher.workers_alive() is False:
            view.say("[yellow]no worker is consuming the queue: start one with `badnet-prune worker`[/yellow]")
            warned = True
        elif on_stall is not None and quiet > stall_after_s:
            try:
                sent = on_stall()
            except (DatabaseUnavailable, OperationalError):
                sent = 0
            if sent:
                view.say(f"{sent} task(s) that no queue held any more were sent again")
            last_change = time.monotonic()


def poll_interval(refresh_s: float) -> float:
    """How long to wait before the next redraw, after one that took refresh_s (see POLL_SHARE)."""
    return min(MAX_POLL_SECONDS, max(POLL_SECONDS, refresh_s / POLL_SHARE))


class _View:
    def __init__(self, console: Console, sweep_id: int) -> None:
        self.console = console
        self.sweep_id = sweep_id
        self.status = "pending"
        self.ended = False
        self._last: tuple | None = None
        self._said_failed: set[int] = set()
        self._said_scale: set[str] = set()
        self._phase: tuple[str, ...] = ()
        self._moved: tuple = ()
        self._clock = StageClock()
        self._started = time.monotonic()
        self._last_line = self._started
        self._last_draw = 0.0
        self._progress = Progress(
            TextColumn(f"sweep {sweep_id}"), BarColumn(), MofNCompleteColumn(), TextColumn("tasks"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        )
        self._bar = self._progress.add_task("tasks", total=None)
        self._details = Table.grid()
        self._live = Live(Group(self._progress, self._details), console=console, auto_refresh=False,
                          transient=False) if console.is_terminal else None

    def __enter__(self) -> _View:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def say(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)

    def refresh(self, engine: Engine, force: bool = False) -> bool:
        """Redraw if the counts changed (at most every 0.2 s unless forced); True if they did."""
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return False
        try:
            with session_scope(engine) as session:
                overview = sweep_overview(session, self.sweep_id)
                notes = input_scale_notes(session, self.sweep_id)
        except (DatabaseUnavailable, OperationalError):
            self.say("database unavailable; waiting for it")
            return False
        self._last_draw = now
        done, total, by_status = _counts(overview)
        shown = min(total, done + overview.running_share)
        self.status = overview.status
        self.ended = overview.status in ("done", "failed")
        phase, busy = stages_at_work(overview, self._clock, now)
        moved = (done, tuple(overview.units.get(name) for name in busy))  # tasks ended, units counted
        snapshot = (done, total, tuple(sorted(by_status.items())), overview.status)
        changed = snapshot != self._last
        self._last = snapshot
        self._progress.update(self._bar, completed=shown, total=total)
        summary = ", ".join(f"{by_status.get(state, 0)} {state}" for state in MODEL_STATES)
        if self._live is not None:
            self._details = _details(overview, f"{phase}; models: {summary}", notes)
            self._live.update(Group(self._progress, self._details), refresh=True)
        elif (busy != self._phase or (self.ended and changed)
              or (moved != self._moved and now - self._last_line >= PIPED_LINE_SECONDS)):
            elapsed = now - self._started
            # by tasks, where no stage's own pace is known yet: tasks of unequal length make it a rough guide
            left = (f", about {elapsed / shown * (total - shown):.0f} s left by tasks"
                    if 0 < shown < total and " s left" not in phase else "")
            self.console.print(f"sweep {self.sweep_id}: {phase}; {done}/{total} tasks; models: {summary}; "
                               f"{overview.status} ({elapsed:.0f} s{left})", soft_wrap=True, markup=False)
            self._last_line = now
            self._moved = moved  # what the last line said: a move since is said at the next chance
        self._phase = busy
        if self._live is None:
            for name, note in notes.items():
                if name not in self._said_scale:  # once per model: the rank stage writes it once
                    self._said_scale.add(name)
                    self.console.print(f"{name}: {note}", soft_wrap=True, markup=False)
            for model_id, name, _, error, _ in _failed(overview.models):
                if model_id not in self._said_failed:
                    self._said_failed.add(model_id)
                    self.console.print(f"model {name} failed: {error}", soft_wrap=True, markup=False)
        return changed


class StageClock:
    """Each stage's time left from its own pace: the units (epochs, steps) it counted since this watcher first
    saw it at work, over the seconds until the latest of them was counted. None until a unit has been counted
    while watched, so the first figure is measured, never assumed; between two units the figure holds still
    rather than drift with the wait."""

    def __init__(self) -> None:
        self._first: dict[str, tuple[float, int]] = {}
        self._latest: dict[str, tuple[float, int]] = {}

    def seconds_left(self, stage: str, done: int, planned: int, now: float) -> float | None:
        first_seen, first_done = self._first.setdefault(stage, (now, done))
        if done != self._latest.get(stage, (first_seen, first_done))[1]:
            self._latest[stage] = (now, done)
        counted_at, counted = self._latest.get(stage, (first_seen, first_done))
        if counted <= first_done or counted_at <= first_seen:
            return None
        return (planned - counted) * (counted_at - first_seen) / (counted - first_done)


def stages_at_work(overview: SweepOverview, clock: StageClock, now: float) -> tuple[str, tuple[str, ...]]:
    """The stages at work now, by their declared descriptions with their tasks done of planned, their counted
    units and, once measured, the time the stage has left at its pace; and their names."""
    from badnet_prune.pipeline.contract import stages

    busy, names = [], []
    for stage in stages():
        counts = overview.stages.get(stage.name, {})
        total = sum(counts.values())
        ended = counts.get("done", 0) + counts.get("failed", 0)
        if total and ended < total and (counts.get("running") or counts.get("queued")):
            units = overview.units.get(stage.name)
            counted = ""
            if units and stage.progress.unit != "tasks":
                counted = f", {units[0]}/{units[1]} {stage.progress.unit}"
                left = clock.seconds_left(stage.name, units[0], units[1], now)
                if left is not None:
                    counted += f", about {left:.0f} s left at its pace"
            busy.append(f"{stage.name}: {stage.description} ({ended}/{total}{counted})")
            names.append(stage.name)
    text = "; ".join(busy) or ("finished" if overview.status in ("done", "failed") else "waiting for a worker")
    return text, tuple(names)


def _counts(overview: SweepOverview) -> tuple[int, int, dict[str, int]]:
    done = total = 0
    by_status: dict[str, int] = {}
    for _, _, status, _, tasks in overview.models:
        by_status[status] = by_status.get(status, 0) + 1
        total += sum(tasks.values())
        done += tasks.get("done", 0) + tasks.get("failed", 0)
    total += sum(overview.sweep_tasks.values())
    done += overview.sweep_tasks.get("done", 0) + overview.sweep_tasks.get("failed", 0)
    return done, total, by_status


def _failed(models: Iterable[tuple]) -> list[tuple]:
    return [model for model in models if model[2] == "failed"]


def _details(overview: SweepOverview, summary: str, notes: dict[str, str]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_row(summary)
    # the input-scale lines, warnings first: a wrong scale is what a user must see before the numbers
    ordered = sorted(notes.items(), key=lambda item: not item[1].startswith("warning:"))
    for name, note in ordered[:SHOWN_MODELS]:
        colour = "yellow" if note.startswith("warning:") else "dim"
        table.add_row(f"  [{colour}]{escape(name)}: {escape(note)}[/{colour}]")
    if len(notes) > SHOWN_MODELS:
        table.add_row(f"  ... and {len(notes) - SHOWN_MODELS} more input-scale lines (`badnet-prune status` has them)")
    running = [model for model in overview.models if model[2] == "running"]
    failed = _failed(overview.models)
    for _, name, _, _, tasks in running[:SHOWN_MODELS]:
        table.add_row(f"  running {escape(name)}: {tasks.get('done', 0)}/{sum(tasks.values())} tasks")
    if len(running) > SHOWN_MODELS:
        table.add_row(f"  ... and {len(running) - SHOWN_MODELS} more running")
    for _, name, _, error, _ in failed[:SHOWN_MODELS]:
        table.add_row(f"  [red]failed[/red] {escape(name)}: {escape(error or '')}")
    if len(failed) > SHOWN_MODELS:
        table.add_row(f"  ... and {len(failed) - SHOWN_MODELS} more failed (`badnet-prune status` lists them)")
    return table
