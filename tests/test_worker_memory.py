"""What a worker keeps between tasks: a model without a split is said once, not per task."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.test_pruning_exact import deepid_with_bypass
from worker.loaded import ModelKey, WorkerMemory


def test_a_model_without_a_split_is_reported_once_per_process(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "bypass.keras"
    deepid_with_bypass().save(path)
    key = ModelKey(str(path), "sha", 1.0, "conv_3", "pool_3", trust_code=False)
    memory = WorkerMemory(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="worker.loaded"):
        first = memory.model(key)
        second = memory.model(key)
    assert first is second
    assert not first.split.is_split
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0] and "whole model" in warnings[0]
