"""`badnet-prune status SWEEP`: where each model of a sweep stands, read from the database."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.options import DbOption, load_settings


def status(
    sweep_id: Annotated[int, typer.Argument(help="The sweep's id, as `sweep` printed it.")],
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per model: status, steps stored of steps expected, tasks by state, and the reason of a failure."""
    from db.repository import sweep_progress
    from db.session import prepare_database, session_scope

    engine = prepare_database(load_settings(db=db).db_url)
    with session_scope(engine) as session:
        try:
            progress = sweep_progress(session, sweep_id)
        except LookupError:
            from badnet_prune.errors import BadInputError

            raise BadInputError(f"sweep {sweep_id}", "no such sweep in this database") from None
    if as_json:
        print(json.dumps(asdict(progress), indent=2))
        return
    table = Table(title=f"sweep {progress.sweep_id}: {progress.status}")
    for column in ("model", "status", "steps", "tasks", "error"):
        table.add_column(column)
    for model in progress.models:
        expected = "?" if model.steps_expected is None else str(model.steps_expected)
        tasks = ", ".join(f"{state} {count}" for state, count in sorted(model.tasks.items()))
        table.add_row(model.name, model.status, f"{model.steps_stored}/{expected}", tasks, model.error or "")
    Console().print(table)
