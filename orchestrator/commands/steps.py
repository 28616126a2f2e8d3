"""`badnet-prune steps SWEEP`: the per-step table of a sweep as CSV or JSON."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from badnet_prune.orchestrator.options import DbOption, OutputFormat, SweepArgument, existing_sweep, load_settings


def steps(
    sweep_id: SweepArgument,
    model: Annotated[str | None, typer.Option("--model", help="Only this model (its name in the sweep).")] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="CSV, or JSON: a list of one object "
                             "per step.")] = OutputFormat.csv,
    db: DbOption = None,
) -> None:
    """Print the steps: model, step, channel, fraction_pruned, clean_accuracy, asr_<poison>...

    Example: badnet-prune steps 1 --model m0 --format json
    """
    settings = load_settings(db=db)

    from badnet_prune.db.repository import list_models
    from badnet_prune.db.session import prepare_database, session_scope
    from badnet_prune.numerics.errors import BadInputError
    from badnet_prune.orchestrator.exports import step_rows, to_csv

    engine = prepare_database(settings.db_url, create=False)  # reading: a mistyped file is an error, not a new db
    with session_scope(engine) as session:
        existing_sweep(session, sweep_id)
        names = [m.name for m in list_models(session, sweep_id)]
        if model is not None and model not in names:
            raise BadInputError("--model", f"sweep {sweep_id} has no model {model!r} (its models: {', '.join(names)})")
        columns, rows = step_rows(session, sweep_id, model)
    if output_format is OutputFormat.json:
        print(json.dumps(rows, indent=2))
    else:
        print(to_csv(columns, rows), end="")
