"""Building synthetic models once per machine: a folder per recipe, built privately and renamed into place.

The recipe's name carries code_key(), a digest of this package's source, so a build made by older
code is never mistaken for a current one. Concurrent builders (test sessions, zoo runs) never see
half a build: each builds in its own temporary folder, and the first rename wins.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def code_key() -> str:
    """A digest of the synth package's source: a cached build is rebuilt when the recipe changes."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def cached_build(final: Path, build: Callable[[Path], object], marker: str, read_only: bool = False) -> Path:
    """final, built by build(folder) unless final/marker (the build's last file) is there already.

    read_only: make the build's files read-only before it is published, so that folders which link
    to them (the zoo's) cannot change the cached copy by writing through a link.
    """
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=final.parent))
    try:
        build(building)
        building.chmod(0o755)  # mkdtemp's folder is private (0700): readable by workers of other users, as the rest
        if read_only:
            for path in building.rglob("*"):
                if path.is_file():
                    path.chmod(0o444)
        os.rename(building, final)
    except OSError:
        if not (final / marker).is_file():  # not another builder's finished build: a real failure
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final
