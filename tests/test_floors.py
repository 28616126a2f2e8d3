"""One installed package, in floors: the wheel puts exactly one top-level name into site-packages, and in its
installed layout no floor imports one above it (import-linter's layers contract in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGED = ("pyproject.toml", "README.md", "badnet_prune", "db", "pipeline", "worker", "orchestrator")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel installed (without dependencies) into a fresh venv: its site-packages folder."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # what the Dockerfile copies: setuptools leaves its build/ there, not in the checkout
    source.mkdir()
    for name in PACKAGED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(work), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = work.glob("badnet_prune-*.whl")
    venv.create(work / "venv", with_pip=False)
    (site,) = (work / "venv" / "lib").glob("python*/site-packages")
    before = {path.name for path in site.iterdir()}
    with zipfile.ZipFile(wheel) as archive:  # what pip does for a pure wheel: unpack into site-packages
        archive.extractall(site)
    added = {path.name for path in site.iterdir()} - before
    assert {name for name in added if not name.endswith(".dist-info")} == {"badnet_prune"}, sorted(added)
    return site


def test_the_wheel_installs_one_top_level_package(installed: Path) -> None:
    top_level = (next(installed.glob("badnet_prune-*.dist-info")) / "top_level.txt")
    names = top_level.read_text(encoding="utf-8").split() if top_level.exists() else ["badnet_prune"]
    assert names == ["badnet_prune"]
    for folder in ("db", "pipeline", "worker", "orchestrator", "numerics", "files", "synth"):
        assert (installed / "badnet_prune" / folder / "__init__.py").is_file(), folder
    assert (installed / "badnet_prune" / "db" / "alembic.ini").is_file()
    assert list((installed / "badnet_prune" / "db" / "migrations" / "versions").glob("0001_*.py"))


def test_no_floor_imports_one_above_it(installed: Path, tmp_path: Path) -> None:
    """import-linter on the installed layout (the repository's folders are mapped there by packaging)."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml"), "--no-cache"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300,
                          env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout
