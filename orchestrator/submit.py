"""Submitting, resuming and watching a sweep: the orchestrator plans and sends; it never computes.

Tasks reach workers through a dispatcher (worker.dispatch): Celery when a broker is set, else
the in-process runner of the embedded default, which runs them here through the same code a
worker runs. What to send first, what resume sends again and what progress counts all come
from the stage declarations (pipeline.contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine

from badnet_prune.db.models import Task, utcnow
from badnet_prune.db.repository import get_sweep, list_models, set_model_status
from badnet_prune.db.session import display_url, prepare_database, session_scope
from badnet_prune.db.tasks import claim_tasks, lease_is_live, reset_to_pending, stage_task_ids, sweep_tasks
from badnet_prune.files.hashing import BackgroundHashes
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.orchestrator.planning import register_sweep, sweep_files
from badnet_prune.orchestrator.sweep_file import SweepSpec
from badnet_prune.orchestrator.watch import run_here, watch_sweep
from badnet_prune.pipeline.contract import Scope, Stage, get_stage, load_stage_modules, ready, roots, stages
from badnet_prune.settings import Settings
from badnet_prune.worker.dispatch import (
    Dispatcher,
    broker_problem,
    import_task_code,
    make_dispatcher,
    send_recorded,
)


def submit_sweep(
    settings: Settings, spec: SweepSpec, *, wait: bool, console: Console, extra_config: dict | None = None
) -> int:
    """Register the sweep, send the first stage's tasks, and run (embedded default) or optionally watch it."""
    load_stage_modules(settings.stage_modules)
    files = sweep_files(spec)
    console.print(f"loading: hashing and checking {len(set(files))} input file(s) of {len(spec.models)} model(s)",
                  soft_wrap=True)
    hashing = BackgroundHashes(files)
    engine = prepare_database(settings.db_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
    dispatcher = _dispatcher(settings, engine)
    if not settings.broker_url:
        import_task_code()  # TensorFlow's import (seconds) overlaps the hashing of the input files
    hashes = hashing.result()
    with session_scope(engine) as session:
        planned = register_sweep(session, spec, settings.artifact_dir, extra_config, hashes)
    where = f"{display_url(settings.db_url)}; model files under {settings.artifact_dir.resolve()}"
    console.print(f"sweep {planned.sweep_id} registered: {len(spec.models)} model(s) in {where}", soft_wrap=True)
    for note in planned.notes:
        console.print(note, soft_wrap=True, markup=False)
    if not (dispatcher.runs_here or wait):  # else the watcher says each failed model, once
        for name, reason in planned.failed.items():
            console.print(f"[red]model {escape(name)} failed:[/red] {escape(reason)}", soft_wrap=True)
    first = roots() if planned.model_ids else stages(Scope.SWEEP)  # no model planned: the sweep's own (finish)
    with session_scope(engine) as session:
        to_send = [(get_stage(name), task_id) for name, task_id in
                   stage_task_ids(session, planned.sweep_id, [stage.name for stage in first])]
    _send(engine, dispatcher, to_send)
    _run_or_watch(settings, engine, dispatcher, planned.sweep_id, wait=wait, console=console)
    return planned.sweep_id


# How long a command waits for its broker before it says, in one line, that it does not answer.
COMMAND_BROKER_WAIT_S = 3.0


def check_broker(settings: Settings, wait_s: float = COMMAND_BROKER_WAIT_S, then: str = "") -> None:
    """BadInputError in one line when the settings name a broker that does not answer within wait_s seconds."""
    if settings.broker_url and (problem := broker_problem(settings.broker_url, wait_s)) is not None:
        raise BadInputError("BADNET_PRUNE_BROKER", f"the broker at {display_url(settings.broker_url)} does not "
                            f"answer within {wait_s:g} s ({problem}){then}")


def _dispatcher(settings: Settings, engine: Engine) -> Dispatcher:
    """The dispatcher, with the broker checked before anything is registered (one line if it does not answer)."""
    check_broker(settings, then="; nothing was registered or sent")
    dispatcher = make_dispatcher(settings, engine)
    if settings.broker_url and dispatcher.held_message_ids() is None:
        reason = dispatcher.last_error or "no answer"
        raise BadInputError("BADNET_PRUNE_BROKER", f"the broker at {display_url(settings.broker_url)} does not "
                            f"answer ({reason}); nothing was registered")
    return dispatcher


def _send(engine: Engine, dispatcher: Dispatcher, tasks: list[tuple[Stage, int]]) -> None:
    """Claim the tasks (pending -> queued) in one statement and send those this caller claimed; their
    message ids are recorded in one more (worker.dispatch.send_recorded)."""
    stage_of = {task_id: stage for stage, task_id in tasks}
    with session_scope(engine) as session:
        claimed = claim_tasks(session, list(stage_of))
    send_recorded(engine, dispatcher, [(stage_of[task_id], task_id) for task_id in claimed])


def _run_or_watch(settings: Settings, engine: Engine, dispatcher: Dispatcher, sweep_id: int, *, wait: bool,
                  console: Console) -> None:
    """The embedded default runs the sweep here (showing it); with a broker, show it only when asked to wait."""
    if dispatcher.runs_here:
        run_here(engine, sweep_id, console, dispatcher=dispatcher)
    elif wait:
        watch_sweep(engine, sweep_id, console, dispatcher=dispatcher,
                    on_stall=lambda: send_lost(settings, engine, dispatcher, sweep_id),
                    stall_after_s=settings.in_flight_grace_s)


def send_lost(settings: Settings, engine: Engine, dispatcher: Dispatcher, sweep_id: int) -> int:
    """When a followed sweep stalls: send again its tasks that nothing holds (what `sweep resume` sends)."""
    plan = plan_resume(engine, dispatcher, sweep_id, in_flight_grace(settings))
    _send(engine, dispatcher, plan.to_send)
    return len(plan.to_send)


def in_flight_grace(settings: Settings) -> timedelta:
    """How long a queued task may still be on its way to the broker: younger, it is never called lost."""
    return timedelta(seconds=settings.in_flight_grace_s)


@dataclass(frozen=True)
class ResumePlan:
    """What a resume sends, and the open tasks it leaves alone because something still holds them."""

    to_send: list[tuple[Stage, int]]
    held: int
    lost: list[int]
    models_closed: list[int]


def plan_resume(engine: Engine, dispatcher: Dispatcher, sweep_id: int, grace: timedelta) -> ResumePlan:
    """Every task that is not done (or whose results are missing), whose predecessors are done, and
    that nothing holds: neither a message the broker still has (or may still be receiving: grace)
    nor a live lease."""
    held_ids = dispatcher.held_message_ids()
    grace = timedelta(0) if dispatcher.runs_here else grace
    now = utcnow()
    to_send: list[tuple[Stage, int]] = []
    held = 0
    lost: list[int] = []
    closed: list[int] = []
    with session_scope(engine) as session:
        config = dict(get_sweep(session, sweep_id).config)
        tasks = sweep_tasks(session, sweep_id)
        by_model: dict[int | None, dict[str, list[Task]]] = {}
        for task in tasks:
            by_model.setdefault(task.model_id, {}).setdefault(task.stage, []).append(task)
        models = list_models(session, sweep_id)
        for model in models:
            if model.status == "failed":
                continue
            planned = by_model.get(model.id, {})
            done = {name: all(_done(session, get_stage(name), t, config) for t in group)
                    for name, group in planned.items()}
            not_done = {name for name, all_done in done.items() if not all_done}
            for stage in stages(Scope.MODEL):
                if not ready(stage, not_done):
                    continue
                for task in planned.get(stage.name, []):
                    if _done(session, stage, task, config):
                        continue
                    if _held(task, held_ids, now, grace):
                        held += 1
                        continue
                    if task.state in ("queued", "running"):
                        lost.append(task.id)
                    to_send.append((stage, task.id))
            if planned and all(done.values()) and model.status != "done":
                set_model_status(session, model.id, "done")
                model.status = "done"
                closed.append(model.id)
        if all(model.status in ("done", "failed") for model in models) and not to_send:
            for task in (task for group in by_model.get(None, {}).values() for task in group):
                if task.state != "done":
                    to_send.append((get_stage(task.stage), task.id))
        reset_to_pending(session, [task_id for _, task_id in to_send])
    return ResumePlan(to_send, held, lost, closed)


def _done(session, stage: Stage, task: Task, config: dict) -> bool:
    if task.state != "done":
        return False
    if stage.stored is None:
        return True
    return stage.stored(session, stage.job(task.id, task.sweep_id, task.model_id, task.arguments, config))


def _held(task: Task, held_ids: set[str] | None, now, grace: timedelta) -> bool:
    """Whether something will still run this open task: a live lease, or (queued) a message the broker
    still holds or may still be receiving. A running task whose lease expired is held by nothing."""
    if lease_is_live(task, now):
        return True
    if task.state == "running":
        # its lease ran out: the worker that held it is gone (or cut off), and the message it took comes
        # back only at the broker's visibility timeout; a copy sent now runs under a lease of its own
        return False
    if task.state not in ("queued", "retrying"):
        return False
    if held_ids is None:
        return True  # the broker cannot be asked: never send a second copy on a guess
    if task.message_id is not None and task.message_id in held_ids:
        return True
    return task.state == "queued" and task.enqueued_at is not None and now - task.enqueued_at < grace


def resume_sweep(settings: Settings, sweep_id: int, *, wait: bool, console: Console) -> int:
    """Send again what is missing and free to run; returns how many tasks were sent."""
    load_stage_modules(settings.stage_modules)
    engine = prepare_database(settings.db_url, create=False, pool_size=settings.db_pool_size,
                              max_overflow=settings.db_max_overflow)
    dispatcher = _dispatcher(settings, engine)
    try:
        plan = plan_resume(engine, dispatcher, sweep_id, in_flight_grace(settings))
    except LookupError:
        raise BadInputError(f"sweep {sweep_id}", f"no such sweep in {display_url(settings.db_url)}") from None
    held = f", {plan.held} still queued or running" if plan.held else ""
    lost = f" ({len(plan.lost)} were queued or running but nothing held them)" if plan.lost else ""
    console.print(f"sweep {sweep_id}: sending {len(plan.to_send)} task(s) again{lost}{held}", soft_wrap=True)
    if not settings.broker_url:
        import_task_code()
    _send(engine, dispatcher, plan.to_send)
    _run_or_watch(settings, engine, dispatcher, sweep_id, wait=wait, console=console)
    return len(plan.to_send)


def lost_task_count(settings: Settings, engine: Engine, sweep_id: int) -> int | None:
    """How many queued or running tasks nothing holds (lost with a broker that kept nothing); None if unknown."""
    if not settings.broker_url:
        return None
    dispatcher = make_dispatcher(settings, engine)
    held_ids = dispatcher.held_message_ids()
    if held_ids is None:
        return None
    now = utcnow()
    with session_scope(engine) as session:
        tasks = sweep_tasks(session, sweep_id)
    open_states = ("queued", "running", "retrying")
    grace = in_flight_grace(settings)
    return sum(1 for task in tasks if task.state in open_states and not _held(task, held_ids, now, grace))
