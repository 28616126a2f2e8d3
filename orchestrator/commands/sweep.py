"""`badnet-prune sweep FILE` registers and runs a sweep; `badnet-prune sweep resume SWEEP` finishes one."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from badnet_prune.numerics.errors import BadInputError
from badnet_prune.orchestrator.options import MAX_SWEEP_ID, BrokerOption, DbOption, load_settings


def sweep(
    target: Annotated[str, typer.Argument(metavar="FILE|resume", help="A sweep file (TOML), or the word "
                                       "`resume` followed by a sweep id.")],
    sweep_id: Annotated[int | None, typer.Argument(metavar="SWEEP", min=1, max=MAX_SWEEP_ID,
                                                   help="With `resume`: the sweep to finish.")] = None,
    db: DbOption = None,
    broker: BrokerOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the sweep is done "
                                       "(always so without a broker).")] = False,
) -> None:
    """Register a sweep over one or many models and enqueue its tasks, or resume an unfinished sweep.

    The sweep file (TOML) holds the settings every model shares (thresholds, policy, prune_layer, rank_layer,
    range_size, trust_model_code), a table per defense to run (\\[fine_tune] ...), and one \\[\\[model]] table per
    model: name, path, clean_valid, clean_test, optional input_scale, poisoned = { NAME = { valid = FILE,
    test = FILE } } and \\[model.truth]. Relative paths are relative to the file; a key it does not know is an
    error. docs/sweeps.md ("The sweep file") shows one and describes every key.

    `resume` sends again only what is not done and that nothing holds: no broker message, no live
    worker. Resuming a running sweep sends nothing.

    Exit status once the sweep has run here or been waited for: 0 every model done, 1 some model
    failed (the others' results are stored), 2 bad input.

    Examples: badnet-prune sweep sweep.toml --wait; badnet-prune sweep resume 1 --wait
    """
    from badnet_prune.orchestrator.submit import resume_sweep, submit_sweep
    from badnet_prune.orchestrator.sweep_file import read_sweep_file
    from badnet_prune.pipeline.contract import load_stage_modules

    settings = load_settings(db=db, broker=broker)
    console = Console(stderr=True)
    if target == "resume":
        if sweep_id is None:
            raise BadInputError("sweep resume", "give the id of the sweep to resume")
        resume_sweep(settings, sweep_id, wait=wait, console=console)
        print(sweep_id)
        _exit_for(settings, sweep_id, ran=wait or not settings.broker_url)
        return
    if sweep_id is not None:
        raise BadInputError(target, "a sweep file takes no second argument (did you mean `sweep resume ID`?)")
    load_stage_modules(settings.stage_modules)  # their tables are the sweep file's too
    spec = read_sweep_file(target)
    new_id = submit_sweep(settings, spec, wait=wait, console=console)
    print(new_id)
    _exit_for(settings, new_id, ran=wait or not settings.broker_url)


def _exit_for(settings, sweep_id: int, *, ran: bool) -> None:
    """Exit 1 when the sweep ended with failed models (said once on stderr)."""
    if not ran:
        return
    from badnet_prune.db.repository import list_models
    from badnet_prune.db.session import make_engine, session_scope

    with session_scope(make_engine(settings.db_url, create=False)) as session:
        failed = [model.name for model in list_models(session, sweep_id) if model.status == "failed"]
    if failed:
        Console(stderr=True).print(f"{len(failed)} model(s) failed: {', '.join(failed)} "
                                   f"(`badnet-prune status {sweep_id}` says why)", soft_wrap=True, markup=False)
        raise typer.Exit(1)
