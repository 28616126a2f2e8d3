"""`badnet-prune demo`: the first thing a new user runs; no server, no download.

Synthesizes a BadNet (or reuses one made earlier in the same folder), runs the defense on the
embedded default, and writes a report of that sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the synthetic BadNet, the database, the "
                                      "defense's files and the report.")] = Path("demo"),
    classes: Annotated[int, typer.Option("--classes", help="Identities of the synthetic BadNet.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic data and training.")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="The small set the tests use (trains in under a "
                                        "minute).")] = False,
) -> None:
    """Train a synthetic BadNet, defend it with pruning, and report: the whole tool in one command.

    Example: badnet-prune demo --out demo --quick
    """
    from badnet_prune.orchestrator.commands.defend import defend
    from badnet_prune.orchestrator.commands.report import report
    from badnet_prune.orchestrator.commands.synth import synth
    from badnet_prune.orchestrator.options import InputScaleChoice

    console = Console(stderr=True)
    console.print("the demo's BadNet carries the lab's sunglasses backdoor (`badnet-prune synth --attack "
                  "pruning-aware` makes one that pruning alone leaves in place; `defend --fine-tune` removes it)",
                  soft_wrap=True)
    badnet = out / "badnet"
    if (badnet / "synth.json").exists() and (badnet / "models" / "bd_net.h5").exists():
        console.print(f"reusing the synthetic BadNet in {badnet} (delete it to train a new one)")
    else:
        synth(out=badnet, classes=classes, seed=seed, quick=quick)
    data = badnet / "data"
    db_url = f"sqlite:///{(out / 'badnet-prune.db').resolve()}"
    sweep_id = defend(
        model=badnet / "models" / "bd_net.h5",
        clean_valid=data / "cl" / "valid.h5",
        clean_test=data / "cl" / "test.h5",
        out=out / "defense",
        poisoned=[f"sunglasses={data / 'bd' / 'bd_valid.h5'},{data / 'bd' / 'bd_test.h5'}"],
        thresholds="0.02,0.04,0.1",
        policy="first",
        prune_layer="conv_3",
        rank_layer="pool_3",
        input_scale=InputScaleChoice.raw,  # the synthetic BadNet takes raw 0..255 pixels, as the lab's
        trust_model_code=False,
        db=db_url,
    )
    report(sweep_id=sweep_id, out=out / "report", db=db_url)
    database = (out / "badnet-prune.db").resolve()
    console.print(f"the demo's results are sweep {sweep_id} in {database}; to see them again:", soft_wrap=True)
    for command in (f"status {sweep_id}", f"steps {sweep_id}", f"report {sweep_id} --out {out / 'report'}",
                    f"sql \"SELECT model, network, threshold, dataset, accuracy FROM evaluation_results "
                    f"WHERE sweep_id = {sweep_id}\""):
        console.print(f"  .venv/bin/badnet-prune {command} --db {database}", soft_wrap=True, markup=False)
