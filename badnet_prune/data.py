"""Reading the lab's HDF5 data files: `data` (n, 3, H, W) channels first, `label` (n,).

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

from badnet_prune.errors import BadInputError

DEFAULT_BATCH_SIZE = 1024


@dataclass(frozen=True)
class DataFile:
    """An opened, structurally valid data file; pixels are checked as batches are read."""

    path: Path
    labels: np.ndarray
    image_shape: tuple[int, int, int]

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
                data = handle["data"]
                for start in range(0, self.count, batch_size):
                    chunk = np.asarray(data[start : start + batch_size], dtype=np.float32)
                    if not np.isfinite(chunk).all():
                        bad = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
                        raise BadInputError(self.path, f"image {bad} has NaN or infinite pixel values")
                    yield np.ascontiguousarray(chunk.transpose(0, 2, 3, 1))
        except BadInputError:
            raise
        except (OSError, KeyError, ValueError) as error:
            raise BadInputError(self.path, f"cannot read `data`: {_first_line(error)}") from error

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


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def open_data_file(
    path: str | Path,
    image_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> DataFile:
    """Open and validate a data file; image_shape (H, W, C) and num_classes come from the model."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(path, "no such file")
    if path.is_dir():
        raise BadInputError(path, "is a directory, not an HDF5 data file")
    if not h5py.is_hdf5(path):
        raise BadInputError(path, "not an HDF5 file")
    try:
        with h5py.File(path, "r") as handle:
            for name in ("data", "label"):
                if name not in handle or not isinstance(handle[name], h5py.Dataset):
                    raise BadInputError(path, f"has no `{name}` dataset (expected `data` and `label`)")
            data_shape = tuple(handle["data"].shape)
            data_kind = handle["data"].dtype.kind
            raw_labels = handle["label"][()]
    except BadInputError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        raise BadInputError(path, f"unreadable or truncated HDF5 file ({_first_line(error)})") from error

    if len(data_shape) != 4:
        raise BadInputError(path, f"`data` has rank {len(data_shape)}, expected 4: (n, 3, height, width)")
    if data_kind not in "fiu":
        raise BadInputError(path, f"`data` holds {data_kind!r} values, expected numbers")
    count, channels, height, width = data_shape
    found_shape = (height, width, channels)
    if count == 0:
        raise BadInputError(path, "is empty: `data` holds no images")
    if image_shape is not None and found_shape != tuple(image_shape):
        want_h, want_w, want_c = image_shape
        raise BadInputError(
            path,
            f"images are {channels}x{height}x{width} (channels x height x width), "
            f"the model expects {want_c}x{want_h}x{want_w}",
        )
    labels = _validate_labels(path, np.asarray(raw_labels), count, num_classes)
    return DataFile(path=path, labels=labels, image_shape=found_shape)


def _validate_labels(path: Path, raw: np.ndarray, count: int, num_classes: int | None) -> np.ndarray:
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise BadInputError(path, f"`label` has shape {raw.shape}, expected (n,)")
    if raw.shape[0] != count:
        raise BadInputError(path, f"`data` holds {count} images but `label` holds {raw.shape[0]} labels")
    if raw.dtype.kind not in "fiu":
        raise BadInputError(path, f"`label` holds {raw.dtype} values, expected integers")
    if raw.dtype.kind == "f" and (not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw))):
        bad = int(np.argwhere(~np.isfinite(raw) | (raw != np.round(raw)))[0][0])
        raise BadInputError(path, f"label {bad} is {float(raw[bad]):g}, not an integer class id")
    labels = raw.astype(np.int64)
    if (labels < 0).any():
        bad = int(np.argwhere(labels < 0)[0][0])
        raise BadInputError(path, f"label {bad} is negative ({labels[bad]})")
    if num_classes is not None and (labels >= num_classes).any():
        bad = int(np.argwhere(labels >= num_classes)[0][0])
        raise BadInputError(
            path, f"label {bad} is {labels[bad]}, outside the model's {num_classes} classes (0..{num_classes - 1})"
        )
    return labels


def write_data_file(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write channels-last images in the lab's format: `data` (n, 3, H, W) float32, `label` (n,)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2))
        handle.create_dataset("label", data=np.asarray(labels, dtype=np.float64))
