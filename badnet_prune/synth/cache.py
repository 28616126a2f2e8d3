"""Building synthetic models once per machine: a folder per recipe, built privately and renamed into place.

The recipe's name carries code_key(), a digest of the code that makes a synthetic model, so a build made by
older code is never mistaken for a current one. Concurrent builders (test sessions, pytest-xdist's
processes, zoo runs) never see half a build: the first takes a lock file, builds in its own temporary
folder and renames it into place; the others wait for it and use its build. A builder that was killed
leaves its temporary folder behind; the next builder of the recipe removes it under the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# What a synthetic model is made by, beside this package: the project modules it imports.
_RECIPE_MODULES = ("files/data.py", "files/model_io.py", "numerics/architecture.py", "numerics/errors.py",
                   "numerics/tf_setup.py")


def code_key() -> str:
    """A digest of this package's source, the project modules it imports (_RECIPE_MODULES) and the Keras and
    TensorFlow versions: a cached build is rebuilt when the recipe changes."""
    from importlib.metadata import version

    package = Path(__file__).parents[1]
    digest = hashlib.sha256(f"keras {version('keras')} tensorflow {version('tensorflow')}".encode())
    sources = [*Path(__file__).parent.glob("*.py"), *(package / name for name in _RECIPE_MODULES)]
    for source in sorted(sources):
        digest.update(source.relative_to(package).as_posix().encode())
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
    with open(final.parent / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another builder of this recipe: wait for its build
        if (final / marker).is_file():
            return final
        for stale in final.parent.glob(f"{final.name}.*"):  # a killed builder's folder: none builds it now
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=final.parent))
        try:
            build(building)
            building.chmod(0o755)  # mkdtemp's folder is private (0700): readable by workers of other users
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
