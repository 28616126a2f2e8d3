"""Fixtures shared by every test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import build_quick_badnet


@pytest.fixture(scope="session")
def synthetic_badnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick synthetic BadNet (10 classes, seed 0), trained once per test session: its OUT folder."""
    return build_quick_badnet(tmp_path_factory.mktemp("synthetic_badnet"))
