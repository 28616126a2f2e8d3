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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import h5py

from badnet_prune.numerics.architecture import CONV_LAYERS, IMAGE_SHAPE, POOL_LAYERS
from badnet_prune.numerics.errors import BadInputError, first_line

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
        raise BadInputError(path, f"unreadable model file ({first_line(error)})") from error
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
        raise BadInputError(path, f"unreadable or truncated HDF5 file ({first_line(error)})") from error
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadInputError(path, f"`model_config` is not UTF-8 text ({first_line(error)})") from error
    if not isinstance(raw, str):
        raise BadInputError(path, f"`model_config` is a {type(raw).__name__}, not JSON text")
    return _json_object(path, "`model_config`", raw)


def _json_object(path: Path, what: str, text: str | bytes) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise BadInputError(path, f"{what} is not JSON ({first_line(error)})") from error
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
        raise BadInputError(path, f"not a valid .keras archive ({first_line(error)})") from error


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


@dataclass(frozen=True)
class ModelOutline:
    """What a model file declares, read without TensorFlow: enough to check a sweep's inputs before anything
    is registered (layers named by --prune-layer/--rank-layer, the data's image shape and classes).

    image_shape (height, width, channels) and num_classes are None where the file does not say them plainly
    (an output that is not a Dense layer, an input of unknown size); the worker checks those when it loads.
    """

    conv_filters: dict[str, int | None]  # each Conv2D layer's filters, in the model's order
    pooling: list[str]  # the pooling layers, in order: the usual rank layers
    names: set[str]  # every layer's name
    classes: dict[str, str]  # layer name -> Keras class
    image_shape: tuple[int, int, int] | None
    num_classes: int | None

    def layer_choices(self) -> str:
        """The model's Conv2D and pooling layers and the options that choose them, for an error's one line."""
        conv = ", ".join(self.conv_filters) or "none"
        pooling = ", ".join(self.pooling) or "none"
        return (f"its Conv2D layers: {conv}; its pooling layers: {pooling}; choose them with --prune-layer "
                f"(a Conv2D) and --rank-layer (usually the pooling layer after it), prune_layer and rank_layer "
                f"in a sweep file")

    def prune_filters(self, path: Path, prune_layer: str, rank_layer: str | None = None) -> int:
        """The prune layer's filter count, after checking that both layers exist: BadInputError naming them and
        listing the model's choices otherwise."""
        for option, name in (("--prune-layer", prune_layer), ("--rank-layer", rank_layer)):
            if name is not None and name not in self.names:
                raise BadInputError(path, f"the model has no layer {name!r} ({option}); {self.layer_choices()}")
        if prune_layer not in self.conv_filters:
            raise BadInputError("--prune-layer", f"layer {prune_layer!r} of {path} is a "
                                f"{self.classes.get(prune_layer, 'layer')}, not a Conv2D; {self.layer_choices()}")
        filters = self.conv_filters[prune_layer]
        if filters is None:
            raise BadInputError(path, f"layer {prune_layer!r} declares no positive filter count")
        return filters


def outline_model(path: str | Path) -> ModelOutline:
    """The layers, input shape and classes a .keras, full HDF5 or weights-only HDF5 file declares."""
    path = Path(path)
    config = read_model_config(path, model_file_kind(path))
    if config is not None:
        return _outline_from_config(config)
    try:
        with h5py.File(path, "r") as handle:
            return _outline_weights_only(path, handle.get("model_weights", handle))
    except BadInputError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise BadInputError(path, f"unreadable model file ({first_line(error)})") from error


def _outline_weights_only(path: Path, group: Any) -> ModelOutline:
    """A weights-only file is loaded into DeepID (numerics.architecture): its layers, filled from the file's."""
    if not isinstance(group, h5py.Group):
        raise BadInputError(path, "`model_weights` is not a group of layers")
    conv: dict[str, int | None] = {}
    num_classes = None
    for name in group:
        layer = group.get(name)
        if not isinstance(layer, h5py.Group):
            continue
        names = weight_names(path, layer, name)
        kernel = layer.get(names[0]) if names else None
        if isinstance(kernel, h5py.Dataset) and kernel.ndim == 4:
            conv[name] = int(kernel.shape[-1])
        elif name == "output" and isinstance(kernel, h5py.Dataset) and kernel.ndim == 2:
            num_classes = int(kernel.shape[1])
    conv = {name: conv[name] for name in (*CONV_LAYERS, *sorted(set(conv) - set(CONV_LAYERS))) if name in conv}
    classes = {**dict.fromkeys(conv, "Conv2D"), **dict.fromkeys(POOL_LAYERS, "MaxPooling2D")}
    return ModelOutline(conv, list(POOL_LAYERS), set(group) | set(POOL_LAYERS), classes, IMAGE_SHAPE, num_classes)


def _outline_from_config(config: dict[str, Any]) -> ModelOutline:
    layers = list(_layers(config))
    conv: dict[str, int | None] = {}
    pooling: list[str] = []
    classes: dict[str, str] = {}
    image_shape = None
    for layer in layers:
        inner = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        name = str(inner.get("name", layer.get("name")))
        class_name = str(layer.get("class_name"))
        classes[name] = class_name
        if class_name == "Conv2D":
            filters = inner.get("filters")
            conv[name] = filters if isinstance(filters, int) and not isinstance(filters, bool) and filters > 0 else None
        elif class_name.endswith("Pooling2D"):
            pooling.append(name)
        shape = inner.get("batch_shape", inner.get("batch_input_shape"))
        if image_shape is None and isinstance(shape, list) and len(shape) == 4 \
                and all(isinstance(size, int) and size > 0 for size in shape[1:]):
            image_shape = (shape[1], shape[2], shape[3])
    return ModelOutline(conv, pooling, set(classes), classes, image_shape, _declared_classes(config, layers))


def _declared_classes(config: dict[str, Any], layers: list[dict[str, Any]]) -> int | None:
    """The classes of a model whose one output is a Dense layer (its units); None where it is anything else."""
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    outputs = inner.get("output_layers")
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], list):
        outputs = outputs[0] if len(outputs) == 1 else None
    name = outputs[0] if isinstance(outputs, list) and outputs else None
    if name is None and config.get("class_name") == "Sequential" and layers:
        name = (layers[-1].get("config") or {}).get("name")
    for layer in layers:
        inner_layer = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        if inner_layer.get("name") == name and layer.get("class_name") == "Dense":
            units = inner_layer.get("units")
            return units if isinstance(units, int) and not isinstance(units, bool) and units > 0 else None
    return None


def weight_names(path: Path, layer_group: h5py.Group, layer_name: str) -> list[str]:
    """The `weight_names` attribute of a Keras 2 layer group, as text."""
    raw = layer_group.attrs.get("weight_names", [])
    try:
        return [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in raw]
    except (TypeError, UnicodeDecodeError) as error:
        problem = f"layer {layer_name!r} has malformed `weight_names` ({first_line(error)})"
        raise BadInputError(path, problem) from error


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
