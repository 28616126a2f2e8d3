"""Content hashes: models, data files and cached activations are identified by sha256."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class BackgroundHashes:
    """sha256 of many files, computed on one thread per core while the caller goes on.

    hashlib releases the GIL while it hashes, so a caller can import TensorFlow meanwhile.
    """

    def __init__(self, paths: Iterable[str | Path]) -> None:
        unique = list(dict.fromkeys(str(path) for path in paths))
        pool = ThreadPoolExecutor(max_workers=max(1, min(len(unique), os.cpu_count() or 1)))
        self._futures = {path: pool.submit(sha256_file, path) for path in unique}
        pool.shutdown(wait=False)

    def result(self) -> dict[str, str]:
        """Wait for every file; files that could not be read are left out (hash them again to report why)."""
        return {path: future.result() for path, future in self._futures.items() if future.exception() is None}


def sha256_files(paths: Iterable[str | Path]) -> dict[str, str]:
    """sha256 of many files at once; unreadable files are left out."""
    return BackgroundHashes(paths).result()
