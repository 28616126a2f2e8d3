"""B' and G files: a full disk is one line naming the file and leaves no part of the task's files;
temporary files of a killed process are removed when a worker next writes there."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from badnet_prune.files.artifact_files import remove_stale_temporaries
from tests.helpers import cached_quick_badnet, run_cli


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2.5 MB tmpfs: room for one B' file of the quick BadNet (1.6 MB), not for its G (3.3 MB)."""
    folder = tmp_path / "out"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a small disk for this test needs mount (root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_output_disk_is_one_line_naming_the_file_and_leaves_nothing(small_disk: Path, tmp_path: Path) -> None:
    root = cached_quick_badnet(0)
    env = {key: value for key, value in os.environ.items() if not key.startswith("BADNET_PRUNE_")}
    env["BADNET_PRUNE_CACHE"] = str(tmp_path / "cache")
    done = run_cli(
        "defend", "--model", str(root / "models" / "bd_weights.h5"), "--clean-valid", str(root / "data/cl/valid.h5"),
        "--clean-test", str(root / "data/cl/test.h5"), "--out", str(small_disk), "--db", str(tmp_path / "db.sqlite"),
        "--poisoned", f"sunglasses={root / 'data/bd/bd_valid.h5'},{root / 'data/bd/bd_test.h5'}", env=env,
    )
    assert done.returncode == 2, done.stderr
    reasons = [line for line in done.stderr.splitlines() if "No space left on device" in line]
    assert len(reasons) == 1, done.stderr
    assert reasons[0].startswith("model bd_weights failed: ") and str(small_disk / "models") in reasons[0], reasons[0]
    assert done.stderr.splitlines()[-1].startswith("error: the defense failed, for the reason above; "), done.stderr
    left = sorted(path.name for path in (small_disk / "models").iterdir())
    assert left == [], f"the failed threshold task left {left}"


def test_temporaries_of_a_killed_process_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, host = int(gone.stdout), socket.gethostname()
    dead = tmp_path / f".B_prime_0.02@{host}@{dead_pid}.tmp.keras"
    dead_json = tmp_path / f".G_0.1.json@{host}@{dead_pid}.tmp"
    alive = tmp_path / f".G_0.02@{host}@{os.getpid()}.tmp.keras"  # a process writing right now
    elsewhere = tmp_path / f".G_0.04@another-host@{dead_pid}.tmp.keras"  # another machine's: not ours to judge
    finished = tmp_path / "B_prime_0.02.keras"
    for path in (dead, dead_json, alive, elsewhere, finished):
        path.write_bytes(b"x")
    nested = tmp_path / "sweep-1" / "m0"
    nested.mkdir(parents=True)
    deep = nested / dead.name
    deep.write_bytes(b"x")
    remove_stale_temporaries(tmp_path)
    kept = (alive, elsewhere, finished, nested.parent)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
    assert deep.exists(), "only the folder itself unless recursive"
    remove_stale_temporaries(tmp_path, recursive=True)  # what a worker does when it starts
    assert not deep.exists()
