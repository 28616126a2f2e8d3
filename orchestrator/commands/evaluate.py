"""`badnet-prune evaluate`: a model's accuracy on each data file (the lab's eval.py, batched)."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from badnet_prune.orchestrator.options import InputScaleChoice, InputScaleOption, ModelOption, TrustCodeOption


def evaluate(
    model: ModelOption,
    data: Annotated[
        list[Path],
        typer.Option("--data", help="An HDF5 data file (`data`, `label`); repeat for several. "
                     "On a poisoned file the accuracy is the attack success rate."),
    ],
    input_scale: InputScaleOption = InputScaleChoice.auto,
    trust_model_code: TrustCodeOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Accuracy of MODEL on each data file, in percent of the file's own labels.

    The input scale (auto by default) is chosen, or the given one checked, on the first 512 images of the
    first --data file, and said in one line on stderr (a warning where it looks wrong).

    Example: badnet-prune evaluate --model lab3/models/bd_net.h5 --data lab3/data/cl/test.h5 --json
    """
    from badnet_prune.files.data import open_data_file
    from badnet_prune.files.model_inspect import outline_model

    # A malformed data file, a missing or malformed model file, or data that does not fit the model's input or
    # classes is reported now, not after seconds of TensorFlow start-up; load_model checks the model file again.
    for path in data:
        open_data_file(path)
    outline = outline_model(model)
    for path in data:
        opened = open_data_file(path, outline.image_shape, outline.num_classes)
        if opened.layout_note is not None:
            Console(stderr=True).print(opened.layout_note, soft_wrap=True, markup=False)

    from badnet_prune.files.model_io import image_shape, load_model, num_classes
    from badnet_prune.numerics.inference import accuracy_percent, compiled_forward, predict_labels
    from badnet_prune.numerics.input_scale import SAMPLE_SIZE, choose_input_scale

    network = load_model(model, trust_code=trust_model_code)
    files = [open_data_file(path, image_shape(network), num_classes(network)) for path in data]
    forward = compiled_forward(network)
    with closing(files[0].batches(SAMPLE_SIZE)) as batches:
        sample = next(batches)
    given = None if input_scale is InputScaleChoice.auto else float(input_scale.value)
    choice = choose_input_scale(forward, sample, files[0].labels[: len(sample)], num_classes(network), given=given,
                                data_name=str(files[0].path))
    Console(stderr=True).print(f"{model}: {choice.note}", soft_wrap=True, markup=False,
                               style="yellow" if choice.warning else None)
    results = []
    for data_file in files:
        predicted = predict_labels(forward, data_file.batches(), choice.scale)
        results.append(
            {"file": str(data_file.path), "images": data_file.count,
             "accuracy": accuracy_percent(predicted, data_file.labels)}
        )
    if as_json:
        print(json.dumps({"model": str(model), "input_scale": choice.scale, "input_scale_note": choice.note,
                          "input_scale_warning": choice.warning, "results": results}, indent=2))
        return
    table = Table(title=f"{model} (input scale {choice.scale:g})")
    table.add_column("data file")
    table.add_column("images", justify="right")
    table.add_column("accuracy %", justify="right")
    for row in results:
        table.add_row(row["file"], str(row["images"]), f"{row['accuracy']:.2f}")
    Console().print(table)
