"""The pruning-curve detector's features on curves made by hand."""

from __future__ import annotations

import pytest

from badnet_prune.pipeline.stages.pruning_curve import curve_features


def test_features_of_a_curve_made_by_hand():
    # 4 channels: steps 0..4; accuracy stays within 1 point of 90 for steps 1 and 2, drops at step 3
    features = curve_features([90.0, 89.5, 89.0, 80.0, 10.0], [0.0, 0.001, 2.0, 5.0], drop_points=1.0)
    assert features.acc0 == 90.0 and features.channels == 4
    assert features.steps_until_drop == 3
    assert features.flat_fraction == pytest.approx(2 / 4)  # two channels pruned before the drop
    # 10% of 4 channels rounds to step 0, 25% to step 1, 50% to step 2, 75% to step 3
    assert features.retained == pytest.approx({"0.1": 1.0, "0.25": 89.5 / 90, "0.5": 89.0 / 90, "0.75": 80.0 / 90})
    assert features.dormant_fraction == pytest.approx(0.5)  # 0 and 0.001 are at most 1% of 5


def test_a_curve_that_never_drops_scores_one_and_an_immediate_drop_zero():
    assert curve_features([50.0, 50.0, 49.5], [1.0, 1.0], drop_points=1.0).flat_fraction == 1.0
    immediate = curve_features([90.0, 70.0, 60.0], [1.0, 2.0], drop_points=1.0)
    assert immediate.steps_until_drop == 1 and immediate.flat_fraction == 0.0
    assert curve_features([90.0, 70.0], [0.0, 0.0], 1.0).dormant_fraction is None
    with pytest.raises(ValueError):
        curve_features([90.0], [], 1.0)
