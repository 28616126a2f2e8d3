"""`badnet-prune sweep FILE` registers and runs a sweep; `badnet-prune sweep resume SWEEP` finishes one."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from badnet_prune.errors import BadInputError
from orchestrator.options import BrokerOption, DbOption, load_settings


def sweep(
    target: Annotated[str, typer.Argument(help="A sweep file (TOML), or the word `resume` followed by a sweep id.")],
    sweep_id: Annotated[int | None, typer.Argument(help="With `resume`: the sweep to finish.")] = None,
    db: DbOption = None,
    broker: BrokerOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress per model until the sweep is done "
                                       "(always so without a broker).")] = False,
) -> None:
    """Register a sweep over one or many models and enqueue its tasks, or resume an unfinished sweep.

    `resume` sends again only what is missing: tasks that never finished (a lost worker, a restarted broker).
    """
    from orchestrator.submit import resume_sweep, submit_sweep
    from orchestrator.sweep_file import read_sweep_file

    settings = load_settings(db=db, broker=broker)
    console = Console(stderr=True)
    if target == "resume":
        if sweep_id is None:
            raise BadInputError("sweep resume", "give the id of the sweep to resume")
        resume_sweep(settings, sweep_id, wait=wait, console=console)
        print(sweep_id)
        return
    if sweep_id is not None:
        raise BadInputError(target, "a sweep file takes no second argument (did you mean `sweep resume ID`?)")
    spec = read_sweep_file(target)
    new_id = submit_sweep(settings, spec, wait=wait, console=console)
    print(new_id)
