"""Detector scoring against hand-computed cases: ROC-AUC by the Mann-Whitney rank formula (ties half),
TrojAI's clipped cross-entropy and its intervals, accuracy at the 0.5 cut-off."""

from __future__ import annotations

import math

import numpy as np
import pytest

from badnet_prune.numerics.detection_metrics import (
    average_ranks,
    bootstrap_interval,
    cross_entropies,
    roc_auc,
    score_detector,
)


def test_average_ranks_share_ties():
    np.testing.assert_array_equal(average_ranks(np.array([0.3, 0.1, 0.3, 0.9])), [2.5, 1.0, 2.5, 4.0])


def test_roc_auc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3 of 4
    assert roc_auc([0.9, 0.4, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts half: pairs (0.5=0.5 -> .5, 0.5>0.2 -> 1) -> 1.5 / 2
    assert roc_auc([0.5, 0.5, 0.2], [True, False, False]) == pytest.approx(0.75)
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert roc_auc([0.3, 0.7], [True, True]) is None


def test_cross_entropy_is_clipped_and_by_hand():
    losses = cross_entropies([0.8, 0.25, 1.0, 0.0], [True, False, False, False])
    np.testing.assert_allclose(losses[:2], [-math.log(0.8), -math.log(0.75)])
    assert losses[2] == pytest.approx(-math.log(1e-12), rel=1e-6)  # a sure wrong answer costs 27.6, not infinity
    assert losses[3] == pytest.approx(-math.log1p(-1e-12))
    coin = score_detector([0.5] * 4, [True, False, True, False])
    assert coin.cross_entropy == pytest.approx(math.log(2)) and coin.auc == 0.5


def test_score_detector_by_hand():
    scored = score_detector([0.9, 0.6, 0.4, 0.2, 0.7], [True, True, True, False, False])
    # cut-off 0.5: right on 0.9, 0.6 (backdoored), 0.2 (clean); wrong on 0.4 and 0.7 -> 3 / 5
    assert scored.accuracy == pytest.approx(0.6)
    # pairs: 0.9 beats both, 0.6 beats 0.2 only, 0.4 beats 0.2 only -> 4 of 6
    assert scored.auc == pytest.approx(4 / 6)
    expected = [-math.log(0.9), -math.log(0.6), -math.log(0.4), -math.log(0.8), -math.log(0.3)]
    assert scored.cross_entropy == pytest.approx(np.mean(expected))
    assert scored.ce_half_width == pytest.approx(1.96 * np.std(expected) / math.sqrt(5))
    assert scored.ce_low <= scored.cross_entropy <= scored.ce_high
    assert scored.models == 5 and scored.backdoored == 3
    assert score_detector([0.5], [True]).accuracy == 1.0  # at the cut-off: backdoored


def test_bootstrap_interval_of_equal_values_is_a_point_and_is_seeded():
    assert bootstrap_interval(np.full(7, 0.3)) == pytest.approx((0.3, 0.3))
    values = np.random.default_rng(1).uniform(size=30)
    assert bootstrap_interval(values) == bootstrap_interval(values)
    low, high = bootstrap_interval(values)
    assert low < values.mean() < high


def test_scores_must_be_probabilities():
    with pytest.raises(ValueError):
        score_detector([1.2], [True])
    with pytest.raises(ValueError):
        score_detector([0.2, 0.3], [True])


def test_the_leaderboards_detector_rows_from_scores_made_by_hand():
    from badnet_prune.db.outcomes import DetectorScore
    from badnet_prune.orchestrator.leaderboard import detectors

    def scored(model: int, detector: str, score: float, backdoored: bool | None, targets: list[int],
               flagged: list[int] | None = None) -> DetectorScore:
        document = {} if flagged is None else {"flagged": flagged}
        return DetectorScore(model, f"m{model}", backdoored, "patch" if backdoored else "clean", targets, detector,
                             "k", score, document)

    rows = detectors([
        scored(0, "nc", 0.9, True, [3], [3]), scored(1, "nc", 0.6, True, [5], [2]), scored(2, "nc", 0.2, False, [], []),
        scored(3, "nc", 0.7, False, [], [1]), scored(4, "nc", 0.1, None, [], []),  # no truth: left out
        scored(0, "coin", 0.5, True, [3]), scored(2, "coin", 0.5, False, []),
    ])
    assert [row.detector for row in rows] == ["nc", "coin"]  # lowest cross-entropy first
    nc, coin = rows
    assert nc.models == 4 and nc.backdoored_models == 2
    assert nc.auc == pytest.approx(0.75)  # 0.9 beats 0.2 and 0.7; 0.6 beats 0.2 only
    assert nc.cutoff_accuracy == pytest.approx(75.0)  # 0.9, 0.6 and 0.2 right; 0.7 wrong
    assert nc.cross_entropy == pytest.approx(np.mean([-math.log(0.9), -math.log(0.6), -math.log(0.8),
                                                      -math.log(0.3)]))
    assert nc.target_named == pytest.approx(50.0) and nc.target_models == 2  # m0 names its target, m1 does not
    assert coin.cross_entropy == pytest.approx(math.log(2)) and coin.target_named is None
