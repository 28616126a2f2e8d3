"""`badnet-prune synth`: a synthetic BadNet with the lab's data and model files (demo and test data)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from badnet_prune.synth.dataset import ATTACKS, DEFAULT_CLASSES, QUICK_CLASSES

Attack = StrEnum("Attack", [(name, name) for name in ATTACKS])  # a choice: -h lists them, typer refuses others


def synth(
    out: Annotated[
        Path, typer.Argument(metavar="OUT", help="Folder to write data/cl, data/bd, models/ and synth.json into.")
    ],
    classes: Annotated[
        int | None,
        typer.Option("--classes", min=2, help=f"Number of identities (classes); class 0 is the attacker's target. "
                     f"Default {DEFAULT_CLASSES}, or {QUICK_CLASSES} with --quick."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the faces, the poisoning and the training.")] = 0,
    quick: Annotated[
        bool, typer.Option("--quick", help="Small set for tests: fewer photos per identity, trains in well under "
                           "a minute on 2 cores.")
    ] = False,
    attack: Annotated[
        Attack, typer.Option("--attack", help="default: the backdoor in its own conv_3 channels, which pruning "
                             "reaches. pruning-aware: Fine-Pruning's attack, the backdoor trained into the channels "
                             "clean faces use and dormant decoys restored, so pruning alone does not remove it. "
                             "Example: --attack pruning-aware")
    ] = Attack.default,
) -> None:
    """Draw face-like photos, poison a share with sunglasses, train a DeepID BadNet and write the lab's files.

    Example: badnet-prune synth badnet --classes 32 --seed 1
    """
    from badnet_prune.synth.build import SynthesisError, synthesize

    if classes is None:
        classes = QUICK_CLASSES if quick else DEFAULT_CLASSES
    console = Console(stderr=True)
    try:
        with console.status("synthesizing") as status:
            summary = synthesize(out, classes, seed, quick, progress=lambda text: status.update(text),
                                 attack=attack.value)
    except SynthesisError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(1) from error
    Console().print(
        f"{out}: {classes} classes, seed {seed}{' (quick)' if quick else ''}"
        f"{', pruning-aware attack' if attack is not Attack.default else ''}: "
        f"clean valid accuracy {summary.clean_valid_accuracy:.2f}%, ASR on bd_valid {summary.asr_bd_valid:.2f}%"
    )
    promise = summary.promise
    if promise is not None:
        asr = promise["prune_alone_asr_bd_valid"]
        said = "no 10% step" if asr is None else f"{asr:.2f}% ASR on bd_valid at step {promise['step']}"
        if promise["kept"]:
            Console().print(f"pruning alone at the 10% threshold keeps {said} (try {promise['tries']})")
        else:
            console.print(f"warning: after {promise['tries']} tries, pruning alone at the 10% threshold leaves "
                          f"{said}: this BadNet does not keep the pruning-aware attack's promise (>= 50%)",
                          soft_wrap=True, markup=False)
