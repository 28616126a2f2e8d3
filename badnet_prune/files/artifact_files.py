"""Model files on disk: written whole or not at all, and nothing left behind by a failed or killed writer.

A file is written under a temporary name that carries this host and process id, then renamed, so
a reader never sees half a file; a failed write removes its temporary and names the file it could
not write (a full disk says which). Temporaries whose process no longer exists on this host (a
killed worker) are removed when a worker starts and whenever one writes into their folder again.
No TensorFlow here: the worker command cleans up in its parent process, before the pool forks.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

TEMPORARY_PATTERN = ".*@*@*.tmp*"


def remove_artifacts(paths: list[str]) -> None:
    """Remove model files (and their provenance) of a task that failed before recording them."""
    for path in paths:
        Path(path).unlink(missing_ok=True)
        Path(path).with_suffix(".json").unlink(missing_ok=True)


TEMPORARY_SUFFIX = ".tmp.keras"


def save_atomically(network, path: Path) -> None:
    """Save to a temporary file named after this host and process, then rename; a failed save leaves nothing
    and names the file (a full disk says which file it could not write)."""
    temporary = path.with_name(f".{path.stem}@{socket.gethostname()}@{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        network.save(temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}@{socket.gethostname()}@{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        temporary.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path, *, recursive: bool = False) -> None:
    """Remove temporary files that a killed process of this host left behind (its process id is gone),
    in `folder` (and below it when recursive)."""
    host = socket.gethostname()
    found = folder.rglob(TEMPORARY_PATTERN) if recursive else folder.glob(TEMPORARY_PATTERN)
    for temporary in found:
        _, file_host, rest = temporary.name.rsplit("@", 2)
        pid = rest.partition(".")[0]
        if file_host == host and pid.isdigit() and not _process_exists(int(pid)):
            temporary.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
