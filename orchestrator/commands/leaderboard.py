"""`badnet-prune leaderboard SWEEP`: how each defense and setting did across a sweep's models with ground truth."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from badnet_prune.orchestrator.options import (
    AsrBoundOption,
    CleanBoundOption,
    DbOption,
    SweepArgument,
    existing_sweep,
    load_settings,
)
from badnet_prune.orchestrator.verdicts import ASR_BOUND, CLEAN_BOUND


def leaderboard(
    sweep_id: SweepArgument,
    db: DbOption = None,
    asr_bound: AsrBoundOption = ASR_BOUND,
    clean_bound: CleanBoundOption = CLEAN_BOUND,
    by_attack: Annotated[bool, typer.Option("--by-attack", help="One block per attack kind "
                         "(the attack of each model's truth table).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON, with the clean models' "
                       "costs, instead of the table.")] = False,
) -> None:
    """The leaderboard of a sweep whose models carry ground truth (a model.truth table in the sweep file, as `zoo`
    writes it): per defense and setting, the share of backdoored models repaired, the ASR and clean drop
    it left, robust accuracy, fidelity, false alarms and compute; what each defense costs the clean models; and
    each detector's ROC-AUC, cross-entropy with its 95% interval and accuracy at cut-off 0.5.

    Example: badnet-prune leaderboard 1 --by-attack --asr-bound 5 --clean-bound 2
    """
    settings = load_settings(db=db)

    from badnet_prune.db.outcomes import read_defense_outcomes, read_detector_scores, stage_seconds
    from badnet_prune.db.session import prepare_database, session_scope
    from badnet_prune.numerics.errors import BadInputError
    from badnet_prune.orchestrator.leaderboard import clean_models, detectors, has_truth
    from badnet_prune.orchestrator.leaderboard import leaderboard as board
    from badnet_prune.orchestrator.report.tables import (
        CLEAN_MODEL_COLUMNS,
        DETECTOR_COLUMNS,
        LEADERBOARD_COLUMNS,
        display,
        label,
    )
    from badnet_prune.pipeline.contract import load_stage_modules

    load_stage_modules(settings.stage_modules)
    engine = prepare_database(settings.db_url, create=False)
    with session_scope(engine) as session:
        existing_sweep(session, sweep_id)
        outcomes, seconds = read_defense_outcomes(session, sweep_id), stage_seconds(session, sweep_id)
        scores = read_detector_scores(session, sweep_id)
    if not has_truth(outcomes):
        raise BadInputError(f"sweep {sweep_id}", "no model carries ground truth: give each a [model.truth] table "
                            "in the sweep file (`badnet-prune zoo` writes them)")
    rows = board(outcomes, seconds, asr_bound=asr_bound, clean_bound=clean_bound, by_attack=by_attack)
    clean = clean_models(outcomes, clean_bound=clean_bound)
    scored = detectors(scores)
    if as_json:
        print(json.dumps({"asr_bound": asr_bound, "clean_bound": clean_bound, "defenses": [asdict(r) for r in rows],
                          "clean_models": [asdict(r) for r in clean], "detectors": [asdict(r) for r in scored]},
                         indent=2))
        return
    console = Console()
    shown = [c for c in LEADERBOARD_COLUMNS if c not in ("network", "setting")]
    for attack in dict.fromkeys(row.attack for row in rows):
        table = Table(title=f"sweep {sweep_id}: {attack or 'every attack'} (repaired: ASR <= {asr_bound:g}%, "
                      f"clean drop <= {clean_bound:g} points)")
        for column in shown:
            table.add_column(label(column), justify="left" if column == "defense" else "right")
        for row in (r for r in rows if r.attack == attack):
            values = asdict(row)
            table.add_row(*(display(column, values[column]) for column in shown))
        console.print(table)
    if clean:
        table = Table(title=f"sweep {sweep_id}: clean models (what each defense costs a model without a backdoor)")
        shown_clean = [c for c in CLEAN_MODEL_COLUMNS if c not in ("network", "setting")]
        for column in shown_clean:
            table.add_column(label(column), justify="left" if column == "defense" else "right")
        for row in clean:
            values = asdict(row)
            table.add_row(*(display(column, values[column]) for column in shown_clean))
        console.print(table)
    if scored:
        table = Table(title=f"sweep {sweep_id}: detectors (each model's score against its truth; cut-off 0.5)")
        for column in DETECTOR_COLUMNS:
            table.add_column(label(column), justify="left" if column == "detector" else "right")
        for row in scored:
            values = asdict(row)
            table.add_row(*(display(column, values[column]) for column in DETECTOR_COLUMNS))
        console.print(table)
