"""`badnet-prune defend`: the whole defense on one model, as a one-model sweep on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.names import check_name
from badnet_prune.orchestrator.options import (
    AsrBoundOption,
    CleanBoundOption,
    DefendDbOption,
    InputScaleChoice,
    InputScaleOption,
    ModelOption,
    Policy,
    PolicyOption,
    TrustCodeOption,
)
from badnet_prune.orchestrator.stage_options import stage_tables
from badnet_prune.orchestrator.verdicts import ASR_BOUND, CLEAN_BOUND

if TYPE_CHECKING:
    from badnet_prune.orchestrator.defend_run import Defended


def _poisoned(values: list[str]) -> dict[str, dict[str, str]]:
    sets: dict[str, dict[str, str]] = {}
    for value in values:
        name, _, files = value.partition("=")
        valid, _, test = files.partition(",")
        if not name or not valid or not test:
            raise BadInputError("--poisoned", f"{value!r} is not NAME=VALID,TEST")
        if name in sets:
            raise BadInputError("--poisoned", f"the poisoned set {name!r} is given twice")
        sets[check_name(name, "--poisoned")] = {"valid": valid, "test": test}
    return sets


def defend(
    model: ModelOption,
    clean_valid: Annotated[Path, typer.Option("--clean-valid", help="Clean validation data: the only data "
                                              "the defense is designed on (ranking, thresholds).")],
    clean_test: Annotated[Path, typer.Option("--clean-test", help="Clean test data, for evaluation only.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for steps.csv, summary.json and models/.")],
    poisoned: Annotated[list[str] | None, typer.Option("--poisoned", help="A poisoned set as NAME=VALID,TEST "
                        "(its labels are the attacker's targets); repeat for several triggers.")] = None,
    thresholds: Annotated[str, typer.Option("--thresholds", help="Relative clean-accuracy drops that select "
                          "B', comma-separated, each in (0, 1) or a percent: 0.02,0.04,0.1 or 2%,4%,10%. "
                          "Kept exactly as written (0.0333333333 stays that).")] = "0.02,0.04,0.1",
    policy: PolicyOption = Policy.first,
    prune_layer: Annotated[str, typer.Option("--prune-layer", help="The Conv2D whose channels are pruned.")] = "conv_3",
    rank_layer: Annotated[str, typer.Option("--rank-layer", help="The layer whose mean activation per channel on "
                          "clean validation data ranks the channels.")] = "pool_3",
    input_scale: InputScaleOption = InputScaleChoice.auto,
    trust_model_code: TrustCodeOption = False,
    db: DefendDbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json on stdout instead of the table.")] = False,
    asr_bound: AsrBoundOption = ASR_BOUND,
    clean_bound: CleanBoundOption = CLEAN_BOUND,
    **stage_values: Any,
) -> int:
    """Rank, prune, select B' per threshold, build G, evaluate on test data, and write the results; with a
    defense's flag (--fine-tune ...), run that defense too.

    Example: badnet-prune defend --model bd_net.h5 --clean-valid cl/valid.h5 --clean-test cl/test.h5
    --poisoned sunglasses=bd/bd_valid.h5,bd/bd_test.h5 --out results --fine-tune
    """
    from badnet_prune.orchestrator.defend_run import DefenseFailed, defend_model, defense_spec

    tables = stage_tables(stage_values)
    spec = defense_spec(
        model, clean_valid, clean_test, poisoned=_poisoned(poisoned or []),
        thresholds=[t for t in thresholds.split(",") if t.strip()], policy=policy, prune_layer=prune_layer,
        rank_layer=rank_layer, input_scale=input_scale.setting, trust_model_code=trust_model_code, stages=tables,
    )
    console = Console(stderr=True)
    try:
        defended = defend_model(spec, out, db=db, console=console, asr_bound=asr_bound, clean_bound=clean_bound)
    except DefenseFailed:  # its reason is the line the progress printed ("model NAME failed: ..."): not again
        console.print(f"error: the defense failed, for the reason above; {out} holds no steps.csv or summary.json",
                      soft_wrap=True, markup=False)
        raise typer.Exit(2) from None
    if as_json:
        print((out / "summary.json").read_text(encoding="utf-8"), end="")
    else:
        _print_results(defended, out, console, asr_bound, clean_bound)
    return defended.sweep_id


def _print_results(defended: Defended, out: Path, console: Console, asr_bound: float, clean_bound: float) -> None:
    from badnet_prune.db.session import display_url
    from badnet_prune.orchestrator.exports import lab_table, model_notes
    from badnet_prune.orchestrator.verdicts import model_verdicts

    results = defended.results
    header, table_rows = lab_table(results)  # every stage's networks: B'_t and G_t, and each later defense's
    table = Table(title=f"{results.name}: clean validation accuracy of B {results.acc0:.2f}%")
    for column in header:
        # row names ("B' 2%, 45 pruned") stay on one line; the numeric headers wrap instead
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
    for row in table_rows:
        table.add_row(*row)
    if defended.input_scale_note is not None:
        Console().print(f"{results.name}: {defended.input_scale_note}", soft_wrap=True, markup=False,
                        style="yellow" if defended.input_scale_note.startswith("warning:") else None)
    Console().print(table)
    for verdict in model_verdicts(results, asr_bound, clean_bound):
        warned = verdict.false_alarms_above_bound or verdict.within_clean_bound is False
        Console().print(verdict.sentence(asr_bound, clean_bound), soft_wrap=True, markup=False,
                        style="red" if warned or not verdict.removed else "green")
    for note in model_notes(results):
        Console().print(note, soft_wrap=True, markup=False, style="yellow")
    console.print(f"wrote {out / 'steps.csv'}, {out / 'summary.json'} and {out / 'models'}/ "
                  f"(sweep {defended.sweep_id} in {display_url(defended.db_url)})", soft_wrap=True)
