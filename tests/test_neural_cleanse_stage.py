"""Neural Cleanse's stage without workers: its ranges as planned from a model's classes (read from its file), its
verdict step configured by the same table, and both planned only in a sweep that names [neural_cleanse]."""

from __future__ import annotations

from pathlib import Path

import pytest

from badnet_prune.files.model_inspect import outline_model
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.neural_cleanse_settings import NeuralCleanseSettings
from badnet_prune.numerics.thresholds import parse_thresholds
from badnet_prune.pipeline.contract import ModelFacts, PlanContext, SweepPlan, configurable, get_stage
from tests.helpers import cached_quick_badnet

LAB_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "csaw" / "bd_weights.h5"


def _context(classes: int | None, size: int) -> PlanContext:
    sweep = SweepPlan(thresholds=tuple(parse_thresholds([0.1])), policy="first", range_size=10,
                      prune_layer="conv_3", rank_layer="pool_3")
    return PlanContext(ModelFacts("m", 60, classes), sweep, NeuralCleanseSettings(label_range=size))


def test_ranges_cover_every_label_once_and_unknown_classes_plan_one_range():
    stage = get_stage("neural_cleanse")
    keys = [key for key, _ in stage.planned(_context(10, 4))]
    assert keys == ["labels-00000-00004", "labels-00004-00008", "labels-00008-00010"]
    assert [stage.units(arguments, {"neural_cleanse": {"label_range": 4}})
            for _, arguments in stage.planned(_context(10, 4))] == [4, 4, 2]
    assert [key for key, _ in stage.planned(_context(None, 4))] == ["labels-00000-end"]
    assert len(stage.planned(_context(1283, 32))) == 41


def test_the_verdict_runs_exactly_when_neural_cleanse_does_and_has_no_table_of_its_own():
    verdict = get_stage("neural_cleanse_verdict")
    assert verdict.after == ("neural_cleanse",)
    assert not verdict.enabled({}) and verdict.enabled({"neural_cleanse": {}})
    assert verdict.sweep_settings({"neural_cleanse": {"steps": 7}}) == NeuralCleanseSettings(steps=7)
    names = [stage.name for stage in configurable()]
    assert "neural_cleanse" in names and "pruning_curve" in names and "neural_cleanse_verdict" not in names
    assert not get_stage("neural_cleanse").enabled({}) and not get_stage("pruning_curve").enabled({})


def test_planning_reads_the_classes_from_model_files(tmp_path: Path):
    folder = cached_quick_badnet(0)
    assert outline_model(folder / "models" / "bd_weights.h5").num_classes == 10
    assert outline_model(folder / "models" / "bd_net.h5").num_classes == 10
    (tmp_path / "junk.h5").write_bytes(b"not a model")
    with pytest.raises(BadInputError):
        outline_model(tmp_path / "junk.h5")
    if not LAB_WEIGHTS.is_file():
        pytest.skip(f"{LAB_WEIGHTS} is absent")
    assert outline_model(LAB_WEIGHTS).num_classes == 1283
