"""Reading the lab's HDF5 data files: `data` (n, 3, H, W) channels first, `label` (n,), and on
poisoned files optionally `true_label` (n,): each image's label before it was poisoned.

`data` may also be channels last, (n, H, W, 3), as most Keras users hold images: it is read as such
where the layout is unambiguous for the model's input shape (or, without a model, where only one of
the two places holds a channel count), and said in one line (DataFile.layout_note).

Files are validated when opened (structure, labels) and while read (pixels), read in
batches so a file larger than memory can still be evaluated, and every problem becomes a
BadInputError naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np

from badnet_prune.files.hashing import sha256_file
from badnet_prune.numerics.errors import BadInputError, first_line

DEFAULT_BATCH_SIZE = 1024
TRUE_LABEL = "true_label"


@dataclass(frozen=True)
class DataFile:
    """An opened, structurally valid data file; pixels are checked as batches are read."""

    path: Path
    labels: np.ndarray
    image_shape: tuple[int, int, int]
    true_labels: np.ndarray | None = None  # a poisoned file's labels before poisoning, where it has them
    channels_last: bool = False  # `data` is (n, H, W, C), not the lab's (n, C, H, W)

    @property
    def layout_note(self) -> str | None:
        """The one line that says a file is read as channels last; None for the lab's layout."""
        if not self.channels_last:
            return None
        height, width, channels = self.image_shape
        return (f"{self.path}: `data` is channels last (n, {height}, {width}, {channels}), not the lab's channels "
                f"first (n, {channels}, {height}, {width}); read as channels last")

    @property
    def count(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[np.ndarray]:
        """Yield float32 channels-last image batches, each read from disk once, the next one
        read on a thread while the caller works on this one."""
        return read_ahead(self._read_batches(batch_size))

    def _read_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        try:
            with h5py.File(self.path, "r") as handle:
                data = check_stored_here(self.path, handle, "data")  # again: the file may have been replaced
                for start in range(0, self.count, batch_size):
                    chunk = np.asarray(data[start : start + batch_size], dtype=np.float32)
                    if not np.isfinite(chunk).all():
                        bad = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
                        raise BadInputError(self.path, f"image {bad} has NaN or infinite pixel values")
                    yield chunk if self.channels_last else np.ascontiguousarray(chunk.transpose(0, 2, 3, 1))
        except BadInputError:
            raise
        except (OSError, KeyError, ValueError) as error:
            raise BadInputError(self.path, f"cannot read `data`: {first_line(error)}") from error

    def read_images(self, indexes: list[int]) -> np.ndarray:
        """The images at these increasing indexes as one channels-last float32 array (a report's few samples)."""
        try:
            with h5py.File(self.path, "r") as handle:
                chunk = np.asarray(check_stored_here(self.path, handle, "data")[indexes], dtype=np.float32)
        except BadInputError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise BadInputError(self.path, f"cannot read `data`: {first_line(error)}") from error
        return chunk if self.channels_last else np.ascontiguousarray(chunk.transpose(0, 2, 3, 1))

    def read_all(self, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """All images as one channels-last float32 array (for files that fit in memory)."""
        images = np.empty((self.count, *self.image_shape), dtype=np.float32)
        for index, batch in enumerate(self.batches(batch_size)):
            images[index * batch_size : index * batch_size + len(batch)] = batch
        return images


_END = object()
T = TypeVar("T")


def read_ahead(items: Iterable[T]) -> Iterator[T]:
    """Yield `items` in order while the next one is produced on a worker thread.

    Reading, checking and transposing a batch (NumPy and HDF5 copies) then overlaps the model's
    work on the previous batch, which TensorFlow runs outside the GIL. The producer's exceptions
    are raised here, at the item they stopped.
    """
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, iterator, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, iterator, _END)
            yield item


# Bounds on what a file may declare, checked on the declared shapes and types before anything is read:
# far above the lab's files (11547 images of 3x55x47), far below what would exhaust a machine's memory.
MAX_IMAGES = 1 << 26
MAX_IMAGE_SIDE = 1024
MAX_CHANNELS = 4


def check_stored_here(path: Path, handle: h5py.File, name: str) -> h5py.Dataset:
    """The dataset `name`, refused unless its bytes are stored in this very file.

    An external link, a soft link, a virtual dataset or external raw storage makes h5py read other
    files (or, for a virtual dataset whose source is missing, fill values: all-zero images read as
    data), and the sha256 that identifies this file, and keys the activation cache, would not
    cover those bytes. With them refused, the file's own sha256 covers everything that is read.
    """
    link = handle.get(name, getlink=True)
    if link is None:
        raise BadInputError(path, f"has no `{name}` dataset (expected `data` and `label`)")
    if isinstance(link, h5py.ExternalLink):
        raise BadInputError(path, f"`{name}` is an external link to {link.filename}:{link.path}; refused: "
                                  "a data file must hold its own data")
    if isinstance(link, h5py.SoftLink):
        raise BadInputError(path, f"`{name}` is a soft link to {link.path}; refused: a data file must hold "
                                  "`data` and `label` as datasets")
    dataset = handle[name]
    if not isinstance(dataset, h5py.Dataset):
        raise BadInputError(path, f"has no `{name}` dataset (expected `data` and `label`)")
    if dataset.is_virtual:
        sources = sorted({source.file_name for source in dataset.virtual_sources()})
        raise BadInputError(path, f"`{name}` is a virtual dataset mapped from {', '.join(sources)}; refused: "
                                  "a data file must hold its own data")
    if dataset.external:
        files = sorted({str(entry[0]) for entry in dataset.external})
        raise BadInputError(path, f"`{name}` keeps its values in external files ({', '.join(files)}); refused: "
                                  "a data file must hold its own data")
    return dataset


def open_data_file(
    path: str | Path,
    image_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    expected_sha256: str | None = None,
) -> DataFile:
    """Open and validate a data file; image_shape (H, W, C) and num_classes come from the model, which
    also decides whether `data` is channels first or last (module docstring).

    Structure, declared shapes and types are checked before any value is read, so a file that
    declares 2**42 labels is refused instead of allocated; only then are the labels read.
    expected_sha256: the hash the file was registered with (a worker's results and cached activations
    are keyed by it); a file changed since then is refused rather than read under the old key.
    """
    path = Path(path)
    if not path.exists():
        raise BadInputError(path, "no such file")
    if path.is_dir():
        raise BadInputError(path, "is a directory, not an HDF5 data file")
    if not h5py.is_hdf5(path):
        raise BadInputError(path, "not an HDF5 file")
    if expected_sha256 is not None and (found := sha256_file(path)) != expected_sha256:
        raise BadInputError(path, f"changed since it was registered (sha256 {found[:12]}..., registered as "
                                  f"{expected_sha256[:12]}...); refused, so that results and cached activations "
                                  "keyed by the registered hash stay true to it")
    try:
        with h5py.File(path, "r") as handle:
            data, label = (check_stored_here(path, handle, name) for name in ("data", "label"))
            found_shape, channels_last = _check_data_declaration(path, data, image_shape)
            _check_label_declaration(path, label, int(data.shape[0]))
            raw_labels = label[()]
            raw_true = None
            if handle.get(TRUE_LABEL, getlink=True) is not None:  # any link by that name: checked, never skipped
                true_label = check_stored_here(path, handle, TRUE_LABEL)
                _check_label_declaration(path, true_label, int(data.shape[0]), TRUE_LABEL)
                raw_true = true_label[()]
    except BadInputError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as error:
        raise BadInputError(path, f"unreadable or truncated HDF5 file ({first_line(error)})") from error
    labels = _validate_labels(path, np.asarray(raw_labels).reshape(-1), num_classes)
    true_labels = None if raw_true is None else _validate_labels(
        path, np.asarray(raw_true).reshape(-1), num_classes, TRUE_LABEL)
    return DataFile(path=path, labels=labels, image_shape=found_shape, true_labels=true_labels,
                    channels_last=channels_last)


def _check_data_declaration(
    path: Path, data: h5py.Dataset, image_shape: tuple[int, int, int] | None
) -> tuple[tuple[int, int, int], bool]:
    """(H, W, C) of the images `data` declares, and whether it is channels last; checked against sane
    bounds and the model."""
    if len(data.shape) != 4:
        raise BadInputError(path, f"`data` has rank {len(data.shape)}, expected 4: (n, 3, height, width)")
    if data.dtype.kind not in "fiu" or data.dtype.itemsize > 8:
        raise BadInputError(path, f"`data` holds {data.dtype} values, expected numbers (float32 pixels)")
    count, *sides = (int(size) for size in data.shape)
    if count == 0:
        raise BadInputError(path, "is empty: `data` holds no images")
    if count > MAX_IMAGES:
        raise BadInputError(path, f"`data` declares {count} images, more than the {MAX_IMAGES} a data file may hold")
    first = (sides[1], sides[2], sides[0])  # (H, W, C) if `data` is (n, C, H, W)
    last = (sides[0], sides[1], sides[2])  # (H, W, C) if `data` is (n, H, W, C)
    declared = f"`data` declares images of {'x'.join(map(str, sides))}"
    if image_shape is not None:
        want = tuple(image_shape)
        fits = [shape for shape in (first, last) if shape == want]
        if len(fits) == 1:
            return fits[0], fits[0] is last
        height, width, channels = want
        both = (f"channels first (n, {channels}, {height}, {width}) or channels last (n, {height}, {width}, "
                f"{channels})")
        if fits:
            raise BadInputError(path, f"{declared}, which the model's {height}x{width}x{channels} input reads as "
                                      f"both {both}: ambiguous; transpose it to channels first")
        raise BadInputError(path, f"{declared}; the model expects {both}")
    plausible = [shape for shape in (first, last)
                 if shape[2] <= MAX_CHANNELS and max(shape[:2]) <= MAX_IMAGE_SIDE]
    if not plausible:
        raise BadInputError(path, f"{declared}, neither channels first (n, C, H, W) nor channels last (n, H, W, C) "
                                  f"with at most {MAX_CHANNELS} channels and sides up to {MAX_IMAGE_SIDE}")
    # Both plausible (images of at most 4 pixels a side): the lab's layout, until a model says otherwise.
    return plausible[0], plausible[0] is last and len(plausible) == 1


def _check_label_declaration(path: Path, label: h5py.Dataset, count: int, name: str = "label") -> None:
    shape = tuple(int(size) for size in label.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise BadInputError(path, f"`{name}` has shape {shape}, expected (n,)")
    if shape[0] != count:
        raise BadInputError(path, f"`data` holds {count} images but `{name}` holds {shape[0]} labels")
    if label.dtype.kind not in "fiu" or label.dtype.itemsize > 8:
        raise BadInputError(path, f"`{name}` holds {label.dtype} values, expected integers")


def _validate_labels(path: Path, raw: np.ndarray, num_classes: int | None, name: str = "label") -> np.ndarray:
    """The labels as int64 class ids, each checked in its stored type before the cast (which would wrap)."""
    if raw.dtype.kind == "f":
        bad_values = ~np.isfinite(raw) | (raw != np.round(raw))
        if bad_values.any():
            bad = int(np.argmax(bad_values))
            raise BadInputError(path, f"{name} {bad} is {float(raw[bad]):g}, not an integer class id")
    if (raw < 0).any():
        bad = int(np.argmax(raw < 0))
        raise BadInputError(path, f"{name} {bad} is negative ({_shown(raw[bad])})")
    if num_classes is not None and (raw >= num_classes).any():
        bad = int(np.argmax(raw >= num_classes))
        raise BadInputError(path, f"{name} {bad} is {_shown(raw[bad])}, outside the model's {num_classes} classes "
                                  f"(0..{num_classes - 1})")
    if (raw > np.iinfo(np.int32).max).any():
        bad = int(np.argmax(raw > np.iinfo(np.int32).max))
        raise BadInputError(path, f"{name} {bad} is {_shown(raw[bad])}, out of range for a class id")
    return raw.astype(np.int64)


def _shown(value: np.generic) -> str:
    return f"{float(value):g}" if isinstance(value, np.floating) else str(int(value))


def write_data_file(path: str | Path, images: np.ndarray, labels: np.ndarray,
                    true_labels: np.ndarray | None = None) -> None:
    """Write channels-last images in the lab's format: `data` (n, 3, H, W) float32, `label` (n,); and
    `true_label` (n,) where given (a poisoned file's labels before poisoning)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2))
        handle.create_dataset("label", data=np.asarray(labels, dtype=np.float64))
        if true_labels is not None:
            handle.create_dataset(TRUE_LABEL, data=np.asarray(true_labels, dtype=np.int64))
