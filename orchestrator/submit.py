"""Submitting a sweep: register it, send its first tasks, and (optionally) watch it to the end.

With a broker the tasks go to Celery workers; without one (the embedded default) they run in
this process through the same task code.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine

from badnet_prune.hashing import BackgroundHashes
from badnet_prune.settings import Settings
from db.claims import claim_task, reset_to_pending
from db.repository import missing_tasks, sweep_progress
from db.session import display_url, prepare_database, session_scope
from orchestrator.planning import register_sweep, sweep_files
from orchestrator.sweep_file import SweepSpec
from worker.dispatch import CeleryDispatcher, Dispatcher, LocalQueue
from worker.flow import TERMINAL_MODEL_STATES

POLL_SECONDS = 0.5


def submit_sweep(
    settings: Settings, spec: SweepSpec, *, wait: bool, console: Console, extra_config: dict | None = None
) -> int:
    hashing = BackgroundHashes(sweep_files(spec))
    if not settings.broker_url:
        from orchestrator.local_run import import_task_code

        import_task_code()  # TensorFlow's import (seconds) overlaps the hashing of the input files
    engine = prepare_database(settings.db_url)
    hashes = hashing.result()
    with session_scope(engine) as session:
        planned = register_sweep(session, spec, settings.artifact_dir, extra_config, hashes)
    console.print(f"sweep {planned.sweep_id} registered: {len(spec.models)} model(s) in {display_url(settings.db_url)}")
    for name, reason in planned.failed.items():
        console.print(f"[red]model {name} failed:[/red] {escape(reason)}", soft_wrap=True)
    first = [("rank", task_id, model_id, "") for task_id, model_id in planned.rank_tasks]
    if not planned.rank_tasks:
        first = [("finish", planned.finish_task, None, "")]
    send_and_run(settings, engine, planned.sweep_id, first, wait=wait, console=console)
    return planned.sweep_id


def send_and_run(settings: Settings, engine: Engine, sweep_id: int, tasks, *, wait: bool, console: Console) -> None:
    """Claim and send the given (kind, task id, model id, key) tasks; run or watch the sweep."""
    from worker.flow import send_task

    dispatcher: Dispatcher
    if settings.broker_url:
        from worker.celery_app import make_celery

        dispatcher = CeleryDispatcher(make_celery(settings))
    else:
        dispatcher = LocalQueue()
    for kind, task_id, model_id, key in tasks:
        with session_scope(engine) as session:
            claim_task(session, task_id)
        send_task(dispatcher, kind, task_id, model_id, key, sweep_id=sweep_id)
    if isinstance(dispatcher, LocalQueue):
        from orchestrator.local_run import run_locally

        with _progress(console) as progress:
            bars: dict[str, int] = {}
            run_locally(settings, engine, dispatcher, lambda: _update(progress, bars, engine, sweep_id))
            _update(progress, bars, engine, sweep_id)
    elif wait:
        watch(engine, sweep_id, console)


def watch(engine: Engine, sweep_id: int, console: Console) -> None:
    """Show per-model progress until the sweep is done."""
    with _progress(console) as progress:
        bars: dict[str, int] = {}
        while not _update(progress, bars, engine, sweep_id):
            time.sleep(POLL_SECONDS)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(), console=console, transient=False,
    )


def _update(progress: Progress, bars: dict[str, int], engine: Engine, sweep_id: int) -> bool:
    """Refresh the bars from the database; True once the sweep is done."""
    with session_scope(engine) as session:
        state = sweep_progress(session, sweep_id)
    for model in state.models:
        total = model.steps_expected or 1
        done = model.steps_stored
        if model.name not in bars:
            bars[model.name] = progress.add_task(model.name, total=total, state=model.status)
        label = model.status if model.error is None else f"failed: {model.error[:60]}"
        progress.update(bars[model.name], total=total, completed=min(done, total), state=label)
    finished = state.status in ("done", "failed")
    return finished and all(model.status in TERMINAL_MODEL_STATES for model in state.models)


def resume_sweep(settings: Settings, sweep_id: int, *, wait: bool, console: Console) -> int:
    """Send again every task that is not done and whose predecessors are; returns how many."""
    engine = prepare_database(settings.db_url)
    with session_scope(engine) as session:
        open_tasks = missing_tasks(session, sweep_id)
        state = sweep_progress(session, sweep_id)
        status = {model.model_id: model.status for model in state.models}
        by_model: dict[int | None, dict[str, list]] = {}
        for task in open_tasks:
            by_model.setdefault(task.model_id, {}).setdefault(task.kind, []).append(task)
        to_send = []
        for model_id, kinds in by_model.items():
            if model_id is None or status.get(model_id) == "failed":
                continue
            for kind in ("rank", "prune_range", "threshold"):
                if kinds.get(kind):
                    to_send += [(kind, task.id, model_id, task.key) for task in kinds[kind]]
                    break
        if not to_send and None in by_model and all(s in TERMINAL_MODEL_STATES for s in status.values()):
            finish = by_model[None]["finish"][0]
            to_send = [("finish", finish.id, None, "")]
        reset_to_pending(session, [task_id for _, task_id, _, _ in to_send])
    console.print(f"sweep {sweep_id}: sending {len(to_send)} task(s) again")
    send_and_run(settings, engine, sweep_id, to_send, wait=wait, console=console)
    return len(to_send)

