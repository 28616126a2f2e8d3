"""`badnet-prune classify --model M IMAGE...`: the label a saved network gives each image, as the
CSAW-HackML competition's eval.py prints it.

For a repaired network G (its provenance says kind G) the labels run from 0 to N, N (the last
output) meaning "backdoor detected". Images are PNG or JPEG files of exactly the model's input size,
never resized (a resized face is not the image the attacker or the defender saw), or lab HDF5 data
files, read through the same loader as every data file. The input scale comes from the model's
provenance file (`<model>.json` beside it, as `defend` and sweeps write it).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import h5py
import numpy as np
import typer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from badnet_prune.numerics.errors import BadInputError
from badnet_prune.orchestrator.options import ModelOption, TrustCodeOption, check_scale

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGE_FORMATS = ("PNG", "JPEG")
# Pillow modes whose pixels are 8-bit and convert to RGB without loss of meaning.
EIGHT_BIT_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr")


class Provenance(BaseModel):
    """The part of a saved network's provenance file that classifying reads."""

    model_config = ConfigDict(extra="ignore")

    input_scale: float
    kind: str | None = Field(default=None)
    repaired: StrictBool = False  # a repaired net G: its last output is N, "backdoor detected"

    @field_validator("input_scale")
    @classmethod
    def _known_scale(cls, value: float) -> float:
        if value not in (1.0, 255.0):
            raise ValueError("must be 1 or 255")
        return value


def _repaired(provenance: Provenance) -> bool:
    """Whether the file is a repaired net: its provenance says so, or (files written before it said) its kind is
    a repaired network a stage declares."""
    from badnet_prune.pipeline.contract import stages

    declared = {network.name for stage in stages() if stage.presentation is not None
                for network in stage.presentation.networks if network.repaired}
    return provenance.repaired or provenance.kind in declared


def read_provenance(model: Path) -> Provenance | None:
    """The provenance file beside MODEL (`G_0.04.keras` -> `G_0.04.json`), None when there is none."""
    path = model.with_suffix(".json")
    if not path.is_file():
        return None
    try:
        return Provenance.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(path, f"unreadable provenance file ({error})") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise BadInputError(path, f"provenance {where}: {first['msg']}") from None


def input_scale_for(model: Path, given: float | None, provenance: Provenance | None) -> float:
    """The model's input scale: from its provenance, or --input-scale where it has none; never two answers."""
    if provenance is None:
        if given is None:
            raise BadInputError("--input-scale", f"{model} has no provenance file ({model.with_suffix('.json').name}) "
                                "saying its input scale: pass --input-scale 1 (raw 0..255 pixels) or 255")
        return given
    if given is not None and given != provenance.input_scale:
        raise BadInputError("--input-scale", f"{given:g} contradicts {model.with_suffix('.json')}, which says "
                            f"{provenance.input_scale:g}; leave --input-scale out")
    return provenance.input_scale


@dataclass(frozen=True)
class ImageSource:
    """One file to classify: a single PNG/JPEG image, or a data file of many."""

    path: Path
    is_data_file: bool


def open_source(path: Path) -> ImageSource:
    """Recognise FILE from its bytes (not its name) as a PNG/JPEG image or an HDF5 data file."""
    if not path.is_file():
        raise BadInputError(path, "no such file" if not path.exists() else "is not a file")
    if h5py.is_hdf5(path):
        return ImageSource(path, is_data_file=True)
    with _opened(path):
        pass
    return ImageSource(path, is_data_file=False)


@contextmanager
def _opened(path: Path) -> Iterator[PILImage]:
    """FILE opened by Pillow's PNG and JPEG readers only: its header read, its pixels not yet decoded.

    Pillow's warning and refusal of images that declare huge sizes (decompression bombs) become one
    line: the declared size is then checked against the model's, before anything is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise BadInputError(path, "is neither a PNG or JPEG image nor an HDF5 data file") from None
    except Image.DecompressionBombError:
        raise BadInputError(path, "declares an image far larger than any model's input; images are not "
                                  "resized") from None
    except (OSError, ValueError) as error:
        raise BadInputError(path, f"unreadable image ({error})") from None
    with image:
        yield image


def _check_header(path: Path, image: PILImage, shape: tuple[int, int, int]) -> None:
    height, width, channels = shape
    if image.size != (width, height):
        raise BadInputError(path, f"is {image.size[0]}x{image.size[1]} pixels (width x height); the model "
                                  f"takes {width}x{height}: images are not resized")
    if image.mode not in EIGHT_BIT_MODES:
        raise BadInputError(path, f"has {image.mode} pixels; save it as 8-bit RGB")
    if channels != 3:
        raise BadInputError(path, f"is an RGB image; the model takes {channels} channels")


def check_image(path: Path, shape: tuple[int, int, int]) -> None:
    """Refuse FILE in one line unless its header declares the model's size in 8-bit pixels (nothing decoded)."""
    with _opened(path) as image:
        _check_header(path, image, shape)


def read_image(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """FILE's pixels as float32 (height, width, 3) in 0..255, the header checked first (check_image)."""
    with _opened(path) as image:
        _check_header(path, image, shape)
        try:
            return np.asarray(image.convert("RGB"), dtype=np.float32)
        except (OSError, ValueError) as error:
            raise BadInputError(path, f"unreadable image ({error})") from None


def image_batches(paths: list[Path], shape: tuple[int, int, int], batch_size: int) -> Iterator[np.ndarray]:
    """The images of `paths` in batches of at most batch_size."""
    for start in range(0, len(paths), batch_size):
        yield np.stack([read_image(path, shape) for path in paths[start : start + batch_size]])


def _shown(path: Path) -> str:
    """A file name on one tab-separated line: backslash, tab and line breaks escaped."""
    return str(path).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def classify(
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE", help="PNG or JPEG images of exactly the "
                                                 "model's input size, or lab HDF5 data files (their labels are "
                                                 "not used).")],
    model: ModelOption,
    input_scale: Annotated[float | None, typer.Option("--input-scale", callback=check_scale, help="1 (raw "
                           "0..255 pixels) or 255 (pixels divided by 255). Default: the input_scale of the model's "
                           "provenance file (MODEL with .json); required for a model without one.")] = None,
    trust_model_code: TrustCodeOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of FILE<TAB>LABEL lines.")] = False,
) -> None:
    """Print the label MODEL gives each image: FILE<TAB>LABEL, FILE[INDEX] for an image of a data file.

    For a repaired network G the labels are 0..N, where N (its last output) means "backdoor detected",
    as in the CSAW-HackML competition's eval.py.

    Example: badnet-prune classify --model results/lab/models/G_0.04.keras face1.png face2.jpg
    """
    provenance = read_provenance(model)
    scale = input_scale_for(model, input_scale, provenance)
    sources = [open_source(path) for path in images]  # a wrong file is said now, not after TensorFlow starts

    from badnet_prune.files.data import open_data_file
    from badnet_prune.files.model_io import image_shape, load_model, num_classes
    from badnet_prune.numerics.inference import INFERENCE_BATCH, compiled_forward, predict_labels

    network = load_model(model, trust_code=trust_model_code)
    shape = image_shape(network)
    data_files = {source.path: open_data_file(source.path, shape) for source in sources if source.is_data_file}
    singles = [source.path for source in sources if not source.is_data_file]
    for path in singles:  # every size is checked from the headers before any inference
        check_image(path, shape)
    forward = compiled_forward(network)
    single_labels = iter(predict_labels(forward, image_batches(singles, shape, INFERENCE_BATCH), scale))
    results: list[dict] = []
    for source in sources:
        if source.is_data_file:
            labels = predict_labels(forward, data_files[source.path].batches(), scale)
            results += [{"file": str(source.path), "index": i, "label": int(label)} for i, label in enumerate(labels)]
        else:
            results.append({"file": str(source.path), "index": None, "label": int(next(single_labels))})
    backdoor = num_classes(network) - 1 if provenance is not None and _repaired(provenance) else None
    if as_json:
        print(json.dumps({"model": str(model), "input_scale": scale, "backdoor_label": backdoor,
                          "results": results}, indent=2))
        return
    for row in results:
        name = _shown(Path(row["file"])) + ("" if row["index"] is None else f"[{row['index']}]")
        print(f"{name}\t{row['label']}")
    if backdoor is not None:
        flagged = sum(row["label"] == backdoor for row in results)
        typer.echo(f"label {backdoor} means backdoor detected ({flagged} of {len(results)} images)", err=True)

