"""Bench: fine-pruning recipes on the models of a built zoo, judged as issue 27 judges the recommended repair.

For each model of the chosen attacks in ZOO (`badnet-prune zoo ZOO ...`): the pruning defense on the clean
validation file (rank conv_3 by mean pool_3 activation, prune cumulatively, the first step whose clean
validation accuracy drops by at least 10%, the repair's threshold), then fine-tuning of that B' with each
recipe (bench/fine_tune_seeds.py's RECIPES), every recipe on the same B'. A model is repaired when B'' has an
ASR of at most 5% on every trigger's poisoned test file and a clean test accuracy at most 2 points under B's
(issue 27); on clean models only the clean drop counts. Everything a recipe decides is decided on clean
validation data, as the repair stage decides it.

    .venv/bin/python bench/repair_zoo.py ZOO [--attack multi-trigger --attack patch]
        [--recipe after --recipe lr2e-3 (the default, the repair's own)] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from fine_tune_seeds import RECIPES, defense_steps, percent

from badnet_prune.files.data import open_data_file
from badnet_prune.files.model_io import load_model
from badnet_prune.numerics.fine_tuning import fine_tune
from badnet_prune.numerics.pruned_model import build_pruned_model
from badnet_prune.synth.zoo import ATTACKS, RECORD_FILE, ZooModel, read_record

ASR_BOUND, DROP_BOUND, THRESHOLD = 5.0, 2.0, 0.10


def read_zoo_model(folder: Path) -> tuple[ZooModel, object, dict]:
    record = read_record(folder)
    model = load_model(folder / record.weights)
    classes = int(model.output_shape[-1])
    files = {"valid": record.clean_valid, "test": record.clean_test}
    for trigger in record.triggers:
        files[f"bd_valid:{trigger.name}"], files[f"bd_test:{trigger.name}"] = trigger.valid, trigger.test
    data = {}
    for key, relative in files.items():
        data_file = open_data_file(folder / relative, (55, 47, 3), classes)
        data[key] = (data_file.read_all(), data_file.labels)
    return record, model, data


def run_model(folder: Path, recipes: list[str]) -> dict:
    record, model, data = read_zoo_model(folder)
    triggers = [trigger.name for trigger in record.triggers]
    order, selected = defense_steps(model, data, 1.0)
    step = selected[THRESHOLD]
    b_clean = percent(model, data, "test", 1.0)
    pruned = [int(channel) for channel in order[:step]]
    alone = build_pruned_model(model, "conv_3", pruned)
    row = {"model": record.name, "attack": record.attack, "backdoored": record.backdoored, "step": step,
           "b_clean": b_clean, "prune_alone": {name: percent(alone, data, f"bd_test:{name}", 1.0) for name in triggers},
           "recipes": {}}
    poisoned_valid = {name: data[f"bd_valid:{name}"] for name in triggers}
    for name in recipes:
        start = time.perf_counter()
        result = fine_tune(model, "conv_3", pruned, *data["valid"], poisoned_valid, RECIPES[name], input_scale=1.0)
        clean = percent(result.model, data, "test", 1.0)
        asr = {trigger: percent(result.model, data, f"bd_test:{trigger}", 1.0) for trigger in triggers}
        within = b_clean - clean <= DROP_BOUND
        row["recipes"][name] = {"clean": clean, "asr": asr, "kept_epoch": result.kept_epoch,
                                "repaired": within and (not record.backdoored or max(asr.values()) <= ASR_BOUND),
                                "seconds": time.perf_counter() - start}
        print(f"{record.name} step {step} | {name}: epoch {result.kept_epoch} clean {clean:.2f}% (B {b_clean:.2f}%) "
              + " ".join(f"{trigger} {value:.2f}%" for trigger, value in asr.items()), flush=True)
    return row


def summarise(rows: list[dict], recipes: list[str]) -> None:
    print("\n| attack | models | " + " | ".join(recipes) + " |\n| --- | ---: |" + " ---: |" * len(recipes))
    for attack in sorted({row["attack"] for row in rows}):
        mine = [row for row in rows if row["attack"] == attack]
        cells = []
        for name in recipes:
            good = sum(row["recipes"][name]["repaired"] for row in mine)
            worst = max(max(row["recipes"][name]["asr"].values()) for row in mine)
            drop = max(row["b_clean"] - row["recipes"][name]["clean"] for row in mine)
            cells.append(f"{good}/{len(mine)} (ASR worst {worst:.2f}, drop worst {drop:.2f})")
        print(f"| {attack} | {len(mine)} | " + " | ".join(cells) + " |")
    seconds = {name: float(np.median([row["recipes"][name]["seconds"] for row in rows])) for name in recipes}
    print("median seconds a model: " + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo", type=Path, help="a zoo folder written by `badnet-prune zoo`")
    parser.add_argument("--attack", action="append", choices=ATTACKS, help="only these attacks (default: every model)")
    parser.add_argument("--recipe", action="append", choices=sorted(RECIPES))
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    recipes = args.recipe or ["lr2e-3"]  # the recommended repair's recipe as it ships (FineTuneSettings())
    folders = sorted(path.parent for path in args.zoo.glob(f"*/{RECORD_FILE}"))
    rows = [run_model(folder, recipes) for folder in folders
            if args.attack is None or read_record(folder).attack in args.attack]
    if not rows:
        parser.error(f"{args.zoo}: no zoo model of those attacks (a folder holding */{RECORD_FILE})")
    summarise(rows, recipes)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
