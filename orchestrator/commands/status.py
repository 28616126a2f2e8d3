"""`badnet-prune status SWEEP`: where each model of a sweep stands, read from the database."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from badnet_prune.orchestrator.options import DbOption, StatusBrokerOption, SweepArgument, load_settings


def status(
    sweep_id: SweepArgument,
    db: DbOption = None,
    broker: StatusBrokerOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per model: status, each stage's tasks done of planned with its progress in its own unit (steps,
    epochs ...), and the reason of a failure; under the table, each model's input scale (the line of the
    rank stage that chose or checked it).

    With a broker, also how many queued or running tasks no queue holds any more (lost with a broker
    that kept nothing): `badnet-prune sweep resume ID` sends them again.

    Example: badnet-prune status 1 --json
    """
    from badnet_prune.db.inputs import input_scale_notes
    from badnet_prune.db.repository import sweep_progress
    from badnet_prune.db.session import prepare_database, session_scope
    from badnet_prune.db.tasks import abandoned_tasks
    from badnet_prune.db.verdict_rules import sweep_verdicts
    from badnet_prune.orchestrator.submit import check_broker, lost_task_count
    from badnet_prune.pipeline.contract import load_stage_modules, stages

    settings = load_settings(db=db, broker=broker)
    check_broker(settings, then="; status asks it only to count lost tasks: without --broker and "
                 "BADNET_PRUNE_BROKER it reads the database alone")
    load_stage_modules(settings.stage_modules)
    engine = prepare_database(settings.db_url, create=False)
    with session_scope(engine) as session:
        try:
            progress = sweep_progress(session, sweep_id)
        except LookupError:
            from badnet_prune.numerics.errors import BadInputError

            raise BadInputError(f"sweep {sweep_id}", "no such sweep in this database") from None
        notes = input_scale_notes(session, sweep_id)
        abandoned = abandoned_tasks(session, sweep_id)
        verdicts = sweep_verdicts(session, sweep_id)
    lost = lost_task_count(settings, engine, sweep_id)
    if as_json:
        print(json.dumps({**asdict(progress), "lost_tasks": lost, "input_scale_notes": notes,
                          "abandoned_tasks": [asdict(task) for task in abandoned],
                          "verdicts": [asdict(verdict) for verdict in verdicts]}, indent=2, default=str))
        return
    declared = stages()
    table = Table(title=f"sweep {progress.sweep_id}: {progress.status}")
    judged: dict[str, list[str]] = {}
    for verdict in verdicts:
        judged.setdefault(verdict.model, []).append(f"{verdict.verdict} ({verdict.probability:.2f}, {verdict.rule})")
    columns = ("model", "status", "tasks done", "error") + (("verdict",) if judged else ())
    for column in columns:
        table.add_column(column, overflow="fold")
    for model in progress.models:
        per_stage = ", ".join(
            stage_progress(stage.name, counts, model.units.get(stage.name), stage.progress.unit)
            for stage in declared if (counts := model.stages.get(stage.name))
        )
        cells = [model.name, model.status, per_stage, model.error or ""]
        table.add_row(*cells, *(["; ".join(judged.get(model.name, []))] if judged else []))
    Console().print(table)
    for name, note in notes.items():  # whole lines under the table: a column would fold them into a few words a row
        Console().print(f"{name}: {note}", soft_wrap=True, markup=False,
                        style="yellow" if note.startswith("warning:") else None)
    for task in abandoned:
        Console(stderr=True).print(
            f"task {task.task_id} ({task.stage}) ran on {task.worker or 'a worker'}, silent since "
            f"{task.lease_expired_at:%Y-%m-%d %H:%M:%S} UTC (its lease expired: the worker is gone): "
            f"`badnet-prune sweep resume {sweep_id}` sends it again", soft_wrap=True, markup=False)
    lost_elsewhere = (lost or 0) - len(abandoned)
    if lost_elsewhere > 0:
        Console(stderr=True).print(f"{lost_elsewhere} task(s) are queued but no queue holds them (lost with the "
                                   f"broker?): run `badnet-prune sweep resume {sweep_id}`", soft_wrap=True)


def stage_progress(name: str, counts: dict[str, int], units: tuple[int, int] | None, unit: str) -> str:
    """'prune_range 7/7 (61/61 steps)': a stage's tasks done of planned, and its units where it counts more."""
    text = f"{name} {counts.get('done', 0)}/{sum(counts.values())}"
    if units is not None and unit != "tasks":
        text += f" ({units[0]}/{units[1]} {unit})"
    return text
