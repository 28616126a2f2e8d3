"""`badnet-prune defend`: the whole defense on one model, as a one-model sweep on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.fine_tune_settings import FineTuneSettings
from badnet_prune.numerics.names import check_name
from badnet_prune.orchestrator.options import (
    DbOption,
    InputScaleChoice,
    InputScaleOption,
    ModelOption,
    Policy,
    PolicyOption,
    TrustCodeOption,
)

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


_TUNED = FineTuneSettings()


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
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json on stdout instead of the table.")] = False,
    fine_tune: Annotated[bool, typer.Option("--fine-tune", help="Fine-pruning: fine-tune each B'_t on part of "
                         "the clean validation data (epoch chosen on the rest) into B''_t, and write B_fine_<t> "
                         "and G_fine_<t>.keras.")] = False,
    epochs: Annotated[int | None, typer.Option("--epochs", help=f"Fine-tuning epochs (default {_TUNED.epochs})."
                      )] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", help="Fine-tuning learning rate "
                             f"(default {_TUNED.learning_rate:g}).")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="Fine-tuning optimizer: adam or sgd "
                         f"(default {_TUNED.optimizer}).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Fine-tuning batch size "
                          f"(default {_TUNED.batch_size}).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the split, the batch order and training "
                    f"(default {_TUNED.seed}).")] = None,
    holdout_fraction: Annotated[float | None, typer.Option("--holdout-fraction", help="Share of the clean "
                                "validation images held out to choose the epoch "
                                f"(default {_TUNED.holdout_fraction:g}).")] = None,
) -> int:
    """Rank, prune, select B' per threshold, build G, evaluate on test data, and write the results.

    Example: badnet-prune defend --model bd_net.h5 --clean-valid cl/valid.h5 --clean-test cl/test.h5
    --poisoned sunglasses=bd/bd_valid.h5,bd/bd_test.h5 --out results
    """
    from badnet_prune.orchestrator.defend_run import DefenseFailed, defend_model, defense_spec, fine_tune_table

    tuning = fine_tune_table(fine_tune, {"epochs": epochs, "learning_rate": learning_rate, "optimizer": optimizer,
                                    "batch_size": batch_size, "seed": seed, "holdout_fraction": holdout_fraction})
    spec = defense_spec(
        model, clean_valid, clean_test, poisoned=_poisoned(poisoned or []),
        thresholds=[t for t in thresholds.split(",") if t.strip()], policy=policy, prune_layer=prune_layer,
        rank_layer=rank_layer, input_scale=input_scale.setting, trust_model_code=trust_model_code, fine_tune=tuning,
    )
    console = Console(stderr=True)
    try:
        defended = defend_model(spec, out, db=db, console=console)
    except DefenseFailed as failed:
        console.print(f"error: {failed}", soft_wrap=True, markup=False)
        raise typer.Exit(2) from None
    if as_json:
        print((out / "summary.json").read_text(encoding="utf-8"), end="")
    else:
        _print_results(defended, out, console)
    return defended.sweep_id


def _print_results(defended: Defended, out: Path, console: Console) -> None:
    from badnet_prune.db.session import display_url
    from badnet_prune.orchestrator.exports import lab_table

    results = defended.results
    header, table_rows = lab_table(results)  # B'' and G'' rows too where the sweep fine-tuned
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
    console.print(f"wrote {out / 'steps.csv'}, {out / 'summary.json'} and {out / 'models'}/ "
                  f"(sweep {defended.sweep_id} in {display_url(defended.db_url)})", soft_wrap=True)
