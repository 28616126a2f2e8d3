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


def sha256_files(paths: Iterable[str | Path]) -> dict[str, str]:
    """sha256 of many files at once, one thread per core (hashlib releases the GIL on large reads).

    Files that cannot be read are left out; the caller hashes those again and reports the error.
    """
    unique = list(dict.fromkeys(str(path) for path in paths))
    with ThreadPoolExecutor(max_workers=max(1, min(len(unique), os.cpu_count() or 1))) as pool:
        futures = {path: pool.submit(sha256_file, path) for path in unique}
    return {path: future.result() for path, future in futures.items() if future.exception() is None}
