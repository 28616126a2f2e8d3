"""Loading and saving BadNets: full Keras models (legacy HDF5 or .keras) and weights-only HDF5.

Safe by default: a model file that carries code (Lambda layers, custom classes) is refused
unless the user trusts it, because loading it would run that code.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from badnet_prune.architecture import build_deepid
from badnet_prune.errors import BadInputError
from badnet_prune.tf_setup import keras

TRUST_HINT = "pass --trust-model-code only if you trust whoever made this file"
CODE_CLASSES = {"Lambda", "TFOpLambda", "SlicingOpLambda"}


def load_model(path: str | Path, *, trust_code: bool = False) -> keras.Model:
    """Load a BadNet from a full model file or a weights-only HDF5 file (DeepID layer names)."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(path, "no such model file")
    if zipfile.is_zipfile(path):
        config = _keras_archive_config(path)
    elif h5py.is_hdf5(path):
        config = _hdf5_model_config(path)
        if config is None:
            return load_weights_only(path)
    else:
        raise BadInputError(path, "not a Keras model: expected an HDF5 (.h5) file or a .keras archive")
    if not trust_code:
        _refuse_code(path, config)
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not trust_code)
    except Exception as error:
        raise BadInputError(path, f"cannot load the model: {_first_line(error)}") from error
    if not isinstance(model, keras.Model):
        raise BadInputError(path, "does not hold a Keras functional model")
    return model


def _first_line(error: BaseException) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def _keras_archive_config(path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise BadInputError(path, f"not a valid .keras archive ({_first_line(error)})") from error


def _hdf5_model_config(path: Path) -> dict[str, Any] | None:
    """The architecture stored in a full legacy HDF5 model, or None for a weights-only file."""
    try:
        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
            if raw is None:
                if "layer_names" not in handle.attrs and "model_weights" not in handle:
                    raise BadInputError(path, "HDF5 file holds neither a Keras model nor Keras weights")
                return None
    except BadInputError:
        raise
    except (OSError, ValueError) as error:
        raise BadInputError(path, f"unreadable or truncated HDF5 file ({_first_line(error)})") from error
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return json.loads(text)


def _layer_classes(config: Any) -> Iterator[tuple[str, str]]:
    """Every (class_name, module) a serialized config names; module is '' in legacy HDF5 configs."""
    if isinstance(config, dict):
        if "class_name" in config and isinstance(config["class_name"], str):
            yield config["class_name"], str(config.get("module") or "")
        for value in config.values():
            yield from _layer_classes(value)
    elif isinstance(config, list):
        for item in config:
            yield from _layer_classes(item)


def _refuse_code(path: Path, config: dict[str, Any]) -> None:
    for class_name, module in _layer_classes(config):
        if class_name in CODE_CLASSES:
            raise BadInputError(
                path, f"carries code (a {class_name} layer) that loading would execute; refused: {TRUST_HINT}"
            )
        if not (module == "keras" or module.startswith("keras.") or _is_builtin_keras_class(class_name)):
            raise BadInputError(
                path, f"uses the custom class {class_name!r}, whose code is not part of Keras; refused: {TRUST_HINT}"
            )


KERAS_MODULES = (
    keras.layers, keras.initializers, keras.regularizers, keras.constraints, keras.activations,
    keras.losses, keras.optimizers, keras.metrics, keras.dtype_policies,
)
# Keras-internal markers of serialized tensors and arrays: data, not code.
CONTAINER_CLASSES = {
    "Functional", "Sequential", "Model", "InputLayer", "DTypePolicy", "__tensor__", "__numpy__", "__keras_tensor__",
}


def _is_builtin_keras_class(class_name: str) -> bool:
    if class_name in CONTAINER_CLASSES or "." in class_name:
        return True
    return any(hasattr(module, class_name) for module in KERAS_MODULES)


def load_weights_only(path: Path) -> keras.Model:
    """Build DeepID and fill it from a Keras 2 weights file, layer by layer, by name."""
    try:
        with h5py.File(path, "r") as handle:
            group = handle.get("model_weights", handle)
            output_kernel = _layer_weights(path, group, "output")[0]
            model = build_deepid(num_classes=int(output_kernel.shape[-1]))
            for layer in model.layers:
                if not layer.weights:
                    continue
                values = _layer_weights(path, group, layer.name)
                expected = [tuple(w.shape) for w in layer.weights]
                if [v.shape for v in values] != expected:
                    raise BadInputError(
                        path, f"layer {layer.name!r} has weights of shapes {[v.shape for v in values]}, "
                        f"the DeepID architecture needs {expected}"
                    )
                layer.set_weights(values)
    except BadInputError:
        raise
    except (OSError, ValueError) as error:
        raise BadInputError(path, f"unreadable weights file ({_first_line(error)})") from error
    return model


def _layer_weights(path: Path, group: h5py.Group, layer_name: str) -> list[np.ndarray]:
    if layer_name not in group:
        raise BadInputError(path, f"weights file has no layer {layer_name!r} (DeepID layer names expected)")
    layer_group = group[layer_name]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in layer_group.attrs.get("weight_names", [])]
    if not names:
        raise BadInputError(path, f"layer {layer_name!r} in the weights file holds no weights")
    return [np.asarray(layer_group[name]) for name in names]


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
