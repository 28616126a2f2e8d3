"""The zoo's sweep file: every model with its data, poisoned sets named by trigger, and its [model.truth].

Paths are relative to the file, so the zoo's folder can be moved or mounted elsewhere as a whole. The
file is read back through sweep_file.read_sweep_file before it is kept, so what `zoo` writes is
exactly what `sweep` accepts.
"""

from __future__ import annotations

import json
from pathlib import Path

from badnet_prune.orchestrator.sweep_file import MAX_TEXT, read_sweep_file
from badnet_prune.synth.zoo import ZooModel

SWEEP_FILE = "sweep.toml"


def write_zoo_sweep(out: Path, models: list[tuple[str, ZooModel]], fine_tune: bool) -> Path:
    """OUT/sweep.toml over (folder relative to OUT, record) pairs; fine_tune adds a [fine_tune] table of defaults."""
    name = (out.resolve().name or "zoo")[:MAX_TEXT]
    lines = [
        "# Written by `badnet-prune zoo`: the zoo's models with their ground truth ([model.truth]).",
        f"# Run it with: badnet-prune sweep {out / SWEEP_FILE} --wait",
        f"name = {_value(name)}",
        "thresholds = [0.02, 0.04, 0.1]",
        'policy = "first"',
    ]
    if fine_tune:
        lines += ["", "[fine_tune]  # fine-prune every threshold, with the defaults"]
    for folder, record in models:
        lines += ["", *_model_table(folder, record)]
    path = out / SWEEP_FILE
    staging = path.with_name(f".{SWEEP_FILE}.tmp")
    staging.write_text("\n".join(lines) + "\n", encoding="utf-8")
    read_sweep_file(staging)  # a file `sweep` would refuse is never left behind
    staging.replace(path)
    return path


def _model_table(folder: str, record: ZooModel) -> list[str]:
    poisoned = {t.name: {"valid": f"{folder}/{t.valid}", "test": f"{folder}/{t.test}"} for t in record.triggers}
    lines = [
        "[[model]]",
        f"name = {_value(record.name)}",
        f"path = {_value(f'{folder}/{record.weights}')}",
        "input_scale = 1  # raw 0..255 pixels, as the zoo's models are trained",
        f"clean_valid = {_value(f'{folder}/{record.clean_valid}')}",
        f"clean_test = {_value(f'{folder}/{record.clean_test}')}",
        f"poisoned = {_value(poisoned)}",
        "[model.truth]",
        f"backdoored = {_value(record.backdoored)}",
        f"attack = {_value(record.attack)}",
    ]
    if record.backdoored:
        lines.append(f"targets = {_value({t.name: t.target for t in record.triggers})}")
    else:
        lines[-3:-3] = [f"# clean: its poisoned set carries a trigger it never learned, with the would-be target "
                        f"{', '.join(str(t.target) for t in record.triggers)}"]
    return lines


def _value(item: object) -> str:
    """A TOML value: JSON's strings, numbers, booleans and arrays read the same in TOML; tables inline."""
    if isinstance(item, dict):
        return "{ " + ", ".join(f"{key} = {_value(inner)}" for key, inner in item.items()) + " }"
    return json.dumps(item)
