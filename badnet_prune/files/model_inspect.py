"""Reading and checking a model file's structure without TensorFlow: what the orchestrator plans with,
and what model_io checks before Keras sees the file.

The orchestrator never builds models (nor touches TensorFlow, which would make forking workers
unsafe); it only needs the number of filters of the prune layer to plan channel ranges. Both it and
the loader read a file through `read_model_config`, which refuses, in one line naming the file:
a file that is both a zip archive and an HDF5 file (each loader would read a different model), a
.keras archive with members outside it (`../`, absolute paths, links) or too large, an HDF5 file whose
values live elsewhere (external links, soft links, virtual datasets, external storage) or whose
datasets declare more values than any BadNet holds, and a `model_config` that is not a JSON object.
"""

from __future__ import annotations

import json
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import h5py

from badnet_prune.numerics.errors import BadInputError

ModelKind = Literal["keras", "hdf5"]
KERAS_SUFFIXES = (".keras",)
HDF5_SUFFIXES = (".h5", ".hdf5")
# Bounds far above DeepID (about 0.5 M weights) and far below what would exhaust a machine's memory.
MAX_DATASET_VALUES = 1 << 27
MAX_TOTAL_VALUES = 1 << 28
MAX_HDF5_OBJECTS = 100_000
MAX_CONFIG_BYTES = 16 << 20
MAX_ARCHIVE_BYTES = 4 << 30
ARCHIVE_MEMBERS = ("config.json", "metadata.json", "model.weights.h5", "model.weights.npz")
ARCHIVE_FOLDERS = ("assets/",)
WEIGHT_KINDS = "fiub"


def model_file_kind(path: Path) -> ModelKind:
    """Whether `path` is a .keras archive or an HDF5 file; a file that is both, or neither, is refused."""
    if not path.exists():
        raise BadInputError(path, "no such model file")
    if path.is_dir():
        raise BadInputError(path, "is a directory, not a model file")
    try:
        is_zip, is_hdf5 = zipfile.is_zipfile(path), h5py.is_hdf5(path)
    except OSError as error:
        raise BadInputError(path, f"unreadable model file ({_first_line(error)})") from error
    if is_zip and is_hdf5:
        raise BadInputError(path, "is both a zip archive and an HDF5 file; refused: the two loaders would read "
                                  "different models from it")
    if is_zip:
        return "keras"
    if is_hdf5:
        return "hdf5"
    raise BadInputError(path, "not a Keras model: expected an HDF5 (.h5) file or a .keras archive")


def read_model_config(path: Path, kind: ModelKind) -> dict[str, Any] | None:
    """The architecture a model file declares (None for a weights-only HDF5 file), its storage checked."""
    if kind == "keras":
        return _keras_archive_config(path)
    try:
        with h5py.File(path, "r") as handle:
            check_hdf5_values(path, handle)
            raw = handle.attrs.get("model_config")
            if raw is None:
                if "layer_names" not in handle.attrs and "model_weights" not in handle:
                    raise BadInputError(path, "HDF5 file holds neither a Keras model nor Keras weights")
                return None
    except BadInputError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise BadInputError(path, f"unreadable or truncated HDF5 file ({_first_line(error)})") from error
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadInputError(path, f"`model_config` is not UTF-8 text ({_first_line(error)})") from error
    if not isinstance(raw, str):
        raise BadInputError(path, f"`model_config` is a {type(raw).__name__}, not JSON text")
    return _json_object(path, "`model_config`", raw)


def _json_object(path: Path, what: str, text: str | bytes) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise BadInputError(path, f"{what} is not JSON ({_first_line(error)})") from error
    if not isinstance(config, dict):
        raise BadInputError(path, f"{what} is a JSON {type(config).__name__}, not an object describing a model")
    return config


def _keras_archive_config(path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            _check_archive_members(path, members)
            names = {member.filename: member for member in members}
            if "config.json" not in names:
                raise BadInputError(path, "not a valid .keras archive (it holds no config.json)")
            if names["config.json"].file_size > MAX_CONFIG_BYTES:
                raise BadInputError(path, f"config.json declares {names['config.json'].file_size} bytes, more "
                                          f"than the {MAX_CONFIG_BYTES} a model's architecture needs")
            config = _json_object(path, "config.json", archive.read("config.json"))
            if "model.weights.h5" in names:
                with archive.open("model.weights.h5") as weights, h5py.File(weights, "r") as handle:
                    check_hdf5_values(path, handle, "model.weights.h5")
            return config
    except BadInputError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, RuntimeError, EOFError) as error:
        raise BadInputError(path, f"not a valid .keras archive ({_first_line(error)})") from error


def _check_archive_members(path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Only Keras's own members, each a plain file under the archive's root, in a bounded total size."""
    total = 0
    for member in members:
        name = member.filename
        parts = PurePosixPath(name).parts
        if name.startswith("/") or "\\" in name or ".." in parts or (parts and ":" in parts[0]):
            raise BadInputError(path, f"archive member {name!r} points outside the archive; refused")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise BadInputError(path, f"archive member {name!r} is a symbolic link; refused")
        if name not in ARCHIVE_MEMBERS and not name.startswith(ARCHIVE_FOLDERS):
            raise BadInputError(path, f"archive member {name!r} is not part of a Keras model archive; refused")
        total += member.file_size
    if total > MAX_ARCHIVE_BYTES:
        raise BadInputError(path, f"the archive declares {total} bytes once extracted, more than the "
                                  f"{MAX_ARCHIVE_BYTES} a BadNet needs")


def check_hdf5_values(path: Path, handle: h5py.Group, inner: str = "") -> None:
    """Every dataset of the file is stored in it, holds numbers, and declares a bounded number of values.

    Checked on the declarations only: nothing is read, so a kernel declared as (160, 2**42) is refused
    without being allocated. `inner` names the archive member the file is, for messages.
    """
    where = f"{inner}: " if inner else ""
    total = 0
    for count, (name, item) in enumerate(_hdf5_items(path, handle, where)):
        if count > MAX_HDF5_OBJECTS:
            raise BadInputError(path, f"{where}holds more than {MAX_HDF5_OBJECTS} HDF5 objects; refused")
        if not isinstance(item, h5py.Dataset):
            continue
        if item.is_virtual or item.external:
            raise BadInputError(path, f"{where}`{name}` keeps its values in other files; refused: a model "
                                      "file must hold its own weights")
        if item.dtype.kind not in WEIGHT_KINDS:
            raise BadInputError(path, f"{where}`{name}` holds {item.dtype} values, not numbers")
        values = int(item.size or 0)
        if values > MAX_DATASET_VALUES:
            raise BadInputError(path, f"{where}`{name}` declares shape {tuple(item.shape)} ({values} values), more "
                                      f"than the {MAX_DATASET_VALUES} any weight of a BadNet holds; refused")
        total += values
        if total > MAX_TOTAL_VALUES:
            raise BadInputError(path, f"{where}declares more than {MAX_TOTAL_VALUES} weight values in all; refused")


def _hdf5_items(path: Path, group: h5py.Group, where: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, object) of everything under `group`, refusing external and soft links on the way."""
    for name in group:
        full = f"{prefix}/{name}"
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise BadInputError(path, f"{where}`{full}` is an external link to {link.filename}; refused: a model "
                                      "file must hold its own weights")
        if isinstance(link, h5py.SoftLink):
            raise BadInputError(path, f"{where}`{full}` is a soft link to {link.path}; refused")
        item = group[name]
        yield full, item
        if isinstance(item, h5py.Group):
            yield from _hdf5_items(path, item, where, full)


def prune_layer_filters(path: str | Path, prune_layer: str) -> int:
    """Number of filters of `prune_layer` in a .keras, full HDF5 or weights-only HDF5 file."""
    path = Path(path)
    config = read_model_config(path, model_file_kind(path))
    if config is not None:
        return _filters_from_config(path, config, prune_layer)
    try:
        with h5py.File(path, "r") as handle:
            group = handle.get("model_weights", handle)
            if not isinstance(group, h5py.Group) or not isinstance(group.get(prune_layer), h5py.Group):
                raise BadInputError(path, f"the model has no layer {prune_layer!r}")
            names = weight_names(path, group[prune_layer], prune_layer)
            if not names:
                raise BadInputError(path, f"layer {prune_layer!r} holds no weights, so it is not a Conv2D")
            kernel = group[prune_layer].get(names[0])
            if not isinstance(kernel, h5py.Dataset):
                raise BadInputError(path, f"layer {prune_layer!r} names the weight {names[0]!r}, which it lacks")
            if kernel.ndim != 4:
                raise BadInputError(path, f"layer {prune_layer!r} has a rank-{kernel.ndim} kernel, not a Conv2D")
            return int(kernel.shape[-1])
    except BadInputError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise BadInputError(path, f"unreadable model file ({_first_line(error)})") from error


def output_classes(path: str | Path) -> int | None:
    """The model's output classes as its file declares them (the last Dense layer's units in a config, else the
    length of the last weighted layer's bias in a weights-only file); None where the file does not say plainly.
    Planning reads it for stages that plan per label; the model's own checks come when it is loaded."""
    path = Path(path)
    try:
        config = read_model_config(path, model_file_kind(path))
        if config is not None:
            dense = [layer for layer in _layers(config) if layer.get("class_name") == "Dense"]
            units = dense[-1].get("config", {}).get("units") if dense else None
            return units if isinstance(units, int) and not isinstance(units, bool) and units > 0 else None
        with h5py.File(path, "r") as handle:
            group = handle.get("model_weights", handle)
            names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in group.attrs.get("layer_names", [])]
            for name in reversed(names):
                weights = weight_names(path, group[name], name) if isinstance(group.get(name), h5py.Group) else []
                if weights:
                    bias = group[name].get(weights[-1])
                    return int(bias.shape[0]) if isinstance(bias, h5py.Dataset) and bias.ndim == 1 else None
    except (BadInputError, OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError):
        return None
    return None


def weight_names(path: Path, layer_group: h5py.Group, layer_name: str) -> list[str]:
    """The `weight_names` attribute of a Keras 2 layer group, as text."""
    raw = layer_group.attrs.get("weight_names", [])
    try:
        return [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in raw]
    except (TypeError, UnicodeDecodeError) as error:
        problem = f"layer {layer_name!r} has malformed `weight_names` ({_first_line(error)})"
        raise BadInputError(path, problem) from error


def _filters_from_config(path: Path, config: dict[str, Any], prune_layer: str) -> int:
    for layer in _layers(config):
        inner = layer.get("config")
        if (isinstance(inner, dict) and inner.get("name") == prune_layer) or layer.get("name") == prune_layer:
            if layer.get("class_name") != "Conv2D":
                raise BadInputError(
                    "--prune-layer", f"layer {prune_layer!r} is a {layer.get('class_name')}, not a Conv2D"
                )
            filters = inner.get("filters") if isinstance(inner, dict) else None
            if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
                raise BadInputError(path, f"layer {prune_layer!r} declares {filters!r} filters, not a positive count")
            return filters
    raise BadInputError(path, f"the model has no layer {prune_layer!r}")


def _layers(config: Any) -> Iterator[dict[str, Any]]:
    if isinstance(config, dict):
        inner = config.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
            for layer in inner["layers"]:
                if isinstance(layer, dict):
                    yield layer
                    yield from _layers(layer)
        elif "class_name" in config and isinstance(inner, dict):
            yield from _layers(inner)


def _first_line(error: BaseException) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0]
