"""The activation cache that workers share: one HDF5 file of cut activations per (model, data file).

Several worker processes (on one host, or on several over shared storage) read and write the folder
at once, so every operation here tolerates the others:
  - a file is written under a temporary name and renamed into place, so a reader never sees half;
  - a file's modification time is its last use: a hit touches it, and eviction removes the least
    recently used files first until the folder fits its cap, taking in its stride files that vanish
    under it (another worker evicted them) and leaving the file it has just written;
  - a write that fails (a full disk, a read-only or unusable folder) is said once in a warning and
    the process goes on computing activations without the cache: the cache never fails a model.
Only files named as this module names them are counted, evicted or cleared, so a cache folder set to a
folder that holds other files (BADNET_PRUNE_CACHE=$HOME) never loses them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LOG = logging.getLogger(__name__)

# <model sha256[:24]>-<cut layer>-<input scale>-<data sha256[:24]>.h5, and its temporaries while written
CACHE_FILE = re.compile(r"^[0-9a-f]{24}-.+-[0-9a-f]{24}\.h5$")
TEMPORARY_FILE = re.compile(r"^\.[0-9a-f]{24}-.+-[0-9a-f]{24}\.h5\..+\.tmp$")
# a temporary this old belongs to a writer that died mid-write: eviction and --clear remove it
STALE_TEMPORARY_S = 3600


def cache_file_name(model_sha256: str, cut_layer: str, input_scale: float, data_sha256: str) -> str:
    return f"{model_sha256[:24]}-{cut_layer}-{input_scale:g}-{data_sha256[:24]}.h5"


@dataclass(frozen=True)
class CacheFile:
    path: Path
    size: int
    last_used: float


@dataclass(frozen=True)
class CacheUsage:
    """What `badnet-prune cache` shows: the folder, its cache files and their total size."""

    folder: Path
    files: int
    total_bytes: int


def cache_files(folder: Path) -> list[CacheFile]:
    """The cache's files, least recently used first; files that vanish while listed are left out."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if not CACHE_FILE.match(entry.name):
            continue
        try:
            status = entry.stat()
        except FileNotFoundError:
            continue
        found.append(CacheFile(Path(entry.path), status.st_size, status.st_mtime))
    return sorted(found, key=lambda item: item.last_used)


def cache_usage(folder: Path) -> CacheUsage:
    files = cache_files(folder)
    return CacheUsage(Path(folder), len(files), sum(item.size for item in files))


def evict(folder: Path, max_bytes: int, keep: Path | None = None) -> int:
    """Remove least recently used files until the cache holds at most max_bytes; returns files removed."""
    files = cache_files(folder)
    total = sum(item.size for item in files)
    removed = 0
    for item in files:
        if total <= max_bytes:
            break
        if keep is not None and item.path == keep:
            continue
        _remove(item.path)
        total -= item.size  # gone either way: removed here, or by another worker a moment ago
        removed += 1
    _remove_stale_temporaries(folder)
    return removed


def clear_cache(folder: Path) -> int:
    """Remove every cache file (and dead writers' temporaries); the folder too if nothing else is in it.

    A temporary younger than STALE_TEMPORARY_S is left: a worker may be writing it now.
    """
    files = cache_files(folder)
    for item in files:
        _remove(item.path)
    _remove_stale_temporaries(folder)
    with contextlib.suppress(OSError):  # not empty (other files, or a worker writing now), or already gone
        os.rmdir(folder)
    return len(files)


class ActivationCache:
    """The cache folder as one worker process uses it, capped at max_bytes (None: no cap, 0: no cache)."""

    def __init__(self, folder: Path, max_bytes: int | None = None) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._writable = max_bytes != 0

    def read(self, name: str, count: int) -> np.ndarray | None:
        """The cached cut for `name` if there is a whole one of `count` images; a hit marks it used."""
        import h5py

        path = self.folder / name
        try:
            with h5py.File(path, "r") as handle:
                cut = np.asarray(handle["cut"])
        except (OSError, KeyError):
            return None
        if cut.shape[0] != count:
            return None
        with contextlib.suppress(OSError):  # evicted by another worker since: the activations are in hand anyway
            os.utime(path)
        return cut

    def write(self, name: str, cut: np.ndarray) -> None:
        """Store `cut` for other workers, then evict down to the cap; a failure only turns writing off."""
        if not self._writable or (self.max_bytes is not None and cut.nbytes > self.max_bytes):
            return
        path = self.folder / name
        try:
            _write_atomically(path, cut)
        except OSError as error:
            self._writable = False
            LOG.warning(
                "%s: cannot write the activation cache (%s); this process computes activations without it from now on",
                self.folder, os.strerror(error.errno) if error.errno else str(error).splitlines()[0],
            )
            return
        if self.max_bytes is not None:
            evict(self.folder, self.max_bytes, keep=path)


def _write_atomically(path: Path, cut: np.ndarray) -> None:
    """Write under a temporary name beside `path`, then rename, so a reader never sees half a file."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        with h5py.File(temporary, "w") as out:
            out.create_dataset("cut", data=cut)
        os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_stale_temporaries(folder: Path, older_than_s: float = STALE_TEMPORARY_S) -> None:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    now = time.time()
    for entry in entries:
        if not TEMPORARY_FILE.match(entry.name):
            continue
        try:
            if now - entry.stat().st_mtime >= older_than_s:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass
