"""`report --out` that cannot be the report's folder ends in one line, before the database is read and
without writing anything (an empty value, an unset shell variable, is not the working directory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import run_cli


@pytest.mark.parametrize(
    "out, phrase",
    [
        ("a-file", "a-file is a file, not a folder"),
        ("a-file/report", "a-file is a file, so"),
        ("", "is empty"),
    ],
)
def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path: Path, monkeypatch, out: str, phrase: str):
    monkeypatch.chdir(tmp_path)  # where an empty --out would write
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    before = sorted(tmp_path.iterdir())
    result = run_cli("report", "1", "--out", out, "--db", str(tmp_path / "none.db"),
                                env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--out" in lines[0] and phrase in lines[0], lines
    assert sorted(tmp_path.iterdir()) == before, "nothing is written, not even into the working directory"

