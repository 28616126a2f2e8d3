"""Reading a model file's shape facts without TensorFlow: what the orchestrator plans with.

The orchestrator never builds models (nor touches TensorFlow, which would make forking workers
unsafe); it only needs the number of filters of the prune layer to plan channel ranges.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import h5py

from badnet_prune.errors import BadInputError


def prune_layer_filters(path: str | Path, prune_layer: str) -> int:
    """Number of filters of `prune_layer` in a .keras, full HDF5 or weights-only HDF5 file."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(path, "no such model file")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _filters_from_config(path, json.loads(archive.read("config.json")), prune_layer)
        if not h5py.is_hdf5(path):
            raise BadInputError(path, "not a Keras model: expected an HDF5 (.h5) file or a .keras archive")
        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
            if raw is not None:
                text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
                return _filters_from_config(path, json.loads(text), prune_layer)
            group = handle.get("model_weights", handle)
            if prune_layer not in group:
                raise BadInputError(path, f"the model has no layer {prune_layer!r}")
            names = list(group[prune_layer].attrs.get("weight_names", []))
            if not names:
                raise BadInputError(path, f"layer {prune_layer!r} holds no weights, so it is not a Conv2D")
            kernel = group[prune_layer][names[0]]
            if kernel.ndim != 4:
                raise BadInputError(path, f"layer {prune_layer!r} has a rank-{kernel.ndim} kernel, not a Conv2D")
            return int(kernel.shape[-1])
    except BadInputError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        first = (str(error) or type(error).__name__).splitlines()[0]
        raise BadInputError(path, f"unreadable model file ({first})") from error


def _filters_from_config(path: Path, config: dict[str, Any], prune_layer: str) -> int:
    for layer in _layers(config):
        if layer.get("config", {}).get("name") == prune_layer or layer.get("name") == prune_layer:
            if layer.get("class_name") != "Conv2D":
                raise BadInputError(
                    "--prune-layer", f"layer {prune_layer!r} is a {layer.get('class_name')}, not a Conv2D"
                )
            return int(layer["config"]["filters"])
    raise BadInputError(path, f"the model has no layer {prune_layer!r}")


def _layers(config: Any):
    if isinstance(config, dict):
        if isinstance(config.get("config"), dict) and "layers" in config["config"]:
            for layer in config["config"]["layers"]:
                yield layer
                yield from _layers(layer)
        elif "class_name" in config and "config" in config and isinstance(config["config"], dict):
            yield from _layers(config["config"])
