"""Loading and saving BadNets: full Keras models (legacy HDF5 or .keras) and weights-only HDF5.

Safe by default: a model file that carries code (Lambda layers, custom classes) is refused
unless the user trusts it, because loading it would run that code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from badnet_prune.files.model_inspect import (
    HDF5_SUFFIXES,
    KERAS_SUFFIXES,
    model_file_kind,
    read_model_config,
    weight_names,
)
from badnet_prune.numerics.architecture import build_deepid
from badnet_prune.numerics.errors import BadInputError, first_line
from badnet_prune.numerics.tf_setup import keras

TRUST_HINT = "pass --trust-model-code only if you trust whoever made this file"
CODE_CLASSES = {"Lambda", "TFOpLambda", "SlicingOpLambda", "TFSMLayer", "__lambda__"}
# Modules a serialized Keras object may name: Keras's own layers and their parts, nothing that loads,
# saves, configures or runs things (keras.models.load_model, keras.config.enable_unsafe_deserialization,
# keras.utils, keras.ops ... are the gadgets of CVE-2025-1550, CVE-2025-8747 and CVE-2025-9906).
ALLOWED_MODULES = ("keras.layers", "keras.initializers", "keras.regularizers", "keras.constraints",
                   "keras.activations", "keras.dtype_policies", "keras.src.models.functional",
                   "keras.src.models.sequential")
# Keras's tensor operations, which a functional graph built with keras.ops serializes as layers.
OPS_MODULES = ("keras.src.ops.",)
# Words that, anywhere in a config, mean it tries to switch Keras's safe mode off while it is read.
UNSAFE_WORDS = ("safe_mode", "unsafe_deserialization")
# Layer sizes a config may declare before Keras builds (and allocates) the layer from it.
SIZE_KEYS = frozenset({"units", "filters", "kernel_size", "pool_size", "strides", "dilation_rate", "batch_shape",
                       "batch_input_shape", "input_shape", "shape", "input_dim", "output_dim", "target_shape",
                       "size", "depth_multiplier"})
MAX_LAYER_SIZE = 1 << 16
MAX_CLASSES = 1 << 16


def load_model(path: str | Path, *, trust_code: bool = False) -> keras.Model:
    """Load a BadNet from a full model file or a weights-only HDF5 file (DeepID layer names).

    Every structural check (model_inspect.read_model_config) and the refusal of code come before
    Keras reads the file, so they do not depend on Keras's own safe mode, which has had bypasses.
    """
    path = Path(path)
    config = check_model_file(path, trust_code=trust_code)
    if config is None:
        return load_weights_only(path)
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not trust_code)
    except Exception as error:
        raise BadInputError(path, f"cannot load the model: {first_line(error)}") from error
    if not isinstance(model, keras.Model):
        raise BadInputError(path, "does not hold a Keras functional model")
    return model


def check_model_file(path: Path, *, trust_code: bool = False) -> dict[str, Any] | None:
    """Everything load_model checks before Keras reads the file, reading nothing but its structure: what a
    sweep's inputs are refused for before anything is registered. The config, or None for weights only."""
    kind = model_file_kind(path)
    config = read_model_config(path, kind)
    if config is None:
        return None
    suffixes = KERAS_SUFFIXES if kind == "keras" else HDF5_SUFFIXES
    if path.suffix.lower() not in suffixes:
        # Keras picks its loader by the file name: make it the one whose file was checked here.
        raise BadInputError(path, f"is a {'.keras archive' if kind == 'keras' else 'HDF5 model'} named "
                                  f"{path.suffix or 'without a suffix'}; name it {' or '.join(suffixes)}")
    if not trust_code:
        refuse_code(path, config)
    _check_sizes(path, config)
    return config


def _objects(config: Any) -> Iterator[dict[str, Any]]:
    """Every serialized object (a dict with a class_name) in a config, depth first."""
    if isinstance(config, dict):
        if isinstance(config.get("class_name"), str):
            yield config
        for value in config.values():
            yield from _objects(value)
    elif isinstance(config, list):
        for item in config:
            yield from _objects(item)


def _strings(config: Any) -> Iterator[str]:
    """Every key and string value of a config."""
    if isinstance(config, dict):
        for key, value in config.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(config, list):
        for item in config:
            yield from _strings(item)
    elif isinstance(config, str):
        yield config


def refuse_code(path: Path, config: dict[str, Any]) -> None:
    """Refuse a config that names anything but Keras's own layers and their parts: loading it could run code."""
    for word in _strings(config):
        if any(unsafe in word.lower() for unsafe in UNSAFE_WORDS):
            raise BadInputError(path, f"its config mentions {word[:60]!r}, an attempt to turn Keras's safe mode "
                                      f"off while loading; refused: {TRUST_HINT}")
    for item in _objects(config):
        class_name, module = item["class_name"], str(item.get("module") or "")
        registered = item.get("registered_name")
        if class_name in CODE_CLASSES:
            raise BadInputError(
                path, f"carries code (a {class_name} layer) that loading would execute; refused: {TRUST_HINT}"
            )
        if class_name == "function":
            _refuse_function(path, item, module)
            continue
        if module.startswith(OPS_MODULES):
            _refuse_unknown_operation(path, module, class_name)
            continue
        if module and not (module == "keras" or module.startswith(ALLOWED_MODULES)):
            raise BadInputError(path, f"names {module}.{class_name}, which is not one of Keras's layers or their "
                                      f"parts; refused: {TRUST_HINT}")
        if (registered not in (None, class_name)) or not _is_builtin_keras_class(class_name):
            raise BadInputError(
                path, f"uses the custom class {class_name!r}, whose code is not part of Keras; refused: {TRUST_HINT}"
            )


def _refuse_unknown_operation(path: Path, module: str, class_name: str) -> None:
    """keras.ops operations in a functional graph (Argmax, Equal, Cast ... as in the repaired net G) are
    tensor arithmetic, not code: allowed when the class is one of that Keras module's Operation classes.
    Only modules Keras itself has imported are looked at, so a config cannot make anything import."""
    found = getattr(sys.modules.get(module), class_name, None)
    if not (isinstance(found, type) and issubclass(found, keras.Operation)):
        raise BadInputError(path, f"names {module}.{class_name}, which is not one of Keras's operations; "
                                  f"refused: {TRUST_HINT}")


def _refuse_function(path: Path, item: dict[str, Any], module: str) -> None:
    """A serialized function is allowed only if it is one of Keras's activations, by name."""
    name = item.get("config")
    if module in ("keras.activations", "keras.src.activations.activations") and isinstance(name, str) \
            and not name.startswith("_") and callable(getattr(keras.activations, name, None)):
        return
    raise BadInputError(path, f"names the function {module or '?'}.{name}, which loading would call; "
                              f"refused: {TRUST_HINT}")


KERAS_MODULES = (
    keras.layers, keras.initializers, keras.regularizers, keras.constraints, keras.activations,
    keras.losses, keras.optimizers, keras.metrics, keras.dtype_policies,
)
# Keras-internal markers of serialized tensors and arrays: data, not code.
CONTAINER_CLASSES = {
    "Functional", "Sequential", "Model", "InputLayer", "DTypePolicy", "__tensor__", "__numpy__", "__keras_tensor__",
    "__bytes__", "__typespec__", "__ellipsis__", "__slice__",
}


def _is_builtin_keras_class(class_name: str) -> bool:
    if class_name in CONTAINER_CLASSES:
        return True
    if class_name.startswith("_") or class_name in CODE_CLASSES:
        return False
    return any(isinstance(getattr(module, class_name, None), type) for module in KERAS_MODULES)


def _check_sizes(path: Path, config: dict[str, Any]) -> None:
    """Refuse layer sizes that would make Keras allocate more than any BadNet before a weight is read."""

    def sizes(value: Any) -> Iterator[Any]:
        if isinstance(value, list):
            for item in value:
                yield from sizes(item)
        elif value is not None:
            yield value

    for item in _objects(config):
        parts = (item, item.get("config"), item.get("build_config"))
        for layer in (part for part in parts if isinstance(part, dict)):
            for key in SIZE_KEYS & set(layer):
                for size in sizes(layer[key]):
                    if isinstance(size, bool) or not isinstance(size, int) or not -1 <= size <= MAX_LAYER_SIZE:
                        raise BadInputError(path, f"layer {_name(item)!r} declares {key} = {layer[key]!r}; expected "
                                                  f"sizes from 0 to {MAX_LAYER_SIZE} (or -1: inferred)")


def _name(item: dict[str, Any]) -> str:
    inner = item.get("config")
    return str(inner.get("name") if isinstance(inner, dict) and "name" in inner else item.get("class_name"))


def load_weights_only(path: Path) -> keras.Model:
    """Build DeepID and fill it from a Keras 2 weights file, layer by layer, by name.

    Each weight's declared shape is compared with the architecture's before it is read, so a
    kernel declared as (160, 2**42) is refused without being allocated.
    """
    try:
        with h5py.File(path, "r") as handle:
            group = handle.get("model_weights", handle)
            if not isinstance(group, h5py.Group):
                raise BadInputError(path, "`model_weights` is not a group of layers")
            output_kernel = _layer_datasets(path, group, "output")[0]
            shape = tuple(output_kernel.shape)
            if len(shape) != 2 or shape[0] != 160 or not 1 <= shape[1] <= MAX_CLASSES:
                raise BadInputError(path, f"layer 'output' has a kernel of shape {shape}, the DeepID architecture "
                                          f"needs (160, classes) with 1 to {MAX_CLASSES} classes")
            model = build_deepid(num_classes=int(shape[1]))
            for layer in model.layers:
                if not layer.weights:
                    continue
                datasets = _layer_datasets(path, group, layer.name)
                expected = [tuple(w.shape) for w in layer.weights]
                declared = [tuple(d.shape) for d in datasets]
                if declared != expected:
                    raise BadInputError(
                        path, f"layer {layer.name!r} has weights of shapes {declared}, "
                        f"the DeepID architecture needs {expected}"
                    )
                layer.set_weights([np.asarray(d) for d in datasets])
    except BadInputError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise BadInputError(path, f"unreadable weights file ({first_line(error)})") from error
    return model


def _layer_datasets(path: Path, group: h5py.Group, layer_name: str) -> list[h5py.Dataset]:
    """The weight datasets of one layer, in Keras's order, unread."""
    layer_group = group.get(layer_name)
    if not isinstance(layer_group, h5py.Group):
        raise BadInputError(path, f"weights file has no layer {layer_name!r} (DeepID layer names expected)")
    names = weight_names(path, layer_group, layer_name)
    if not names:
        raise BadInputError(path, f"layer {layer_name!r} in the weights file holds no weights")
    datasets = []
    for name in names:
        dataset = layer_group.get(name)
        if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind != "f":
            raise BadInputError(path, f"layer {layer_name!r} names the weight {name!r}, which is not a dataset "
                                      "of floats")
        datasets.append(dataset)
    return datasets


def save_legacy_weights(model: keras.Model, path: str | Path) -> None:
    """Write weights in the Keras 2 weights-only HDF5 layout of the lab's bd_weights.h5."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.attrs["backend"] = "tensorflow"
        handle.attrs["keras_version"] = keras.__version__
        handle.attrs["layer_names"] = np.array([layer.name.encode() for layer in model.layers])
        for layer in model.layers:
            group = handle.create_group(layer.name)
            names = [f"{layer.name}/{_short_weight_name(w)}:0" for w in layer.weights]
            group.attrs["weight_names"] = np.array([n.encode() for n in names]) if names else np.array([])
            for name, weight in zip(names, layer.weights, strict=True):
                group.create_dataset(name, data=np.asarray(weight.numpy()))


def _short_weight_name(weight: Any) -> str:
    return str(weight.path).split("/")[-1]


def num_classes(model: keras.Model) -> int:
    return int(model.output_shape[-1])


def image_shape(model: keras.Model) -> tuple[int, int, int]:
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or any(s is None for s in shape[1:]):
        raise ValueError(f"model input {shape} is not one (height, width, channels) image")
    return (int(shape[1]), int(shape[2]), int(shape[3]))
