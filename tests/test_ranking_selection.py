"""Ranking channels and selecting B'_t: pure numerics on hand-made arrays and curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from badnet_prune.numerics.activations import channel_means
from badnet_prune.numerics.ranking import rank_channels
from badnet_prune.numerics.selection import select_steps

LAB_THRESHOLDS = (0.02, 0.04, 0.10)
LAB_ACC0 = 98.649


# ---- ranking -------------------------------------------------------------------------------


def test_rank_is_ascending_and_stable_for_ties():
    means = np.array([0.5, 0.0, 0.0, 0.2, -0.0, 0.2, 0.0, 1e-9])
    # dead channels (0.0, including -0.0) keep index order; so do the two 0.2 channels
    assert rank_channels(means).tolist() == [1, 2, 4, 6, 7, 3, 5, 0]


def test_rank_of_all_dead_channels_is_index_order():
    assert rank_channels(np.zeros(60, dtype=np.float32)).tolist() == list(range(60))


def test_rank_stability_holds_for_large_arrays():
    # numpy's default quicksort is not stable beyond small sizes; the ranking must be.
    rng = np.random.default_rng(0)
    means = rng.choice([0.0, 0.25, 0.5], size=5000)
    order = rank_channels(means)
    assert np.all(np.diff(means[order]) >= 0)
    for value in (0.0, 0.25, 0.5):
        picked = order[means[order] == value]
        assert np.all(np.diff(picked) > 0), f"channels with mean {value} are not in index order"


def test_channel_means_equal_a_float64_numpy_reference():
    rng = np.random.default_rng(1)
    acts = rng.gamma(0.5, 3.0, size=(37, 4, 3, 6)).astype(np.float32)
    acts[..., 2] = 0.0  # a dead channel
    batches = [acts[:5], acts[5:6], acts[6:30], acts[30:]]  # uneven batches
    means = channel_means(batches)
    assert means.dtype == np.float64
    reference = acts.astype(np.float64).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(means, reference, rtol=1e-13, atol=0)
    assert means[2] == 0.0


def test_channel_means_accumulate_in_float64():
    # 2**24 + 1 is not a float32: a float32 accumulator would lose the small values entirely.
    values = np.full((4096, 1, 1, 1), 1.0, dtype=np.float32)
    values[0] = 2.0**24
    exact = math.fsum(values.ravel().astype(np.float64)) / values.size
    assert channel_means([values[:1000], values[1000:]])[0] == pytest.approx(exact, rel=1e-15)


def test_channel_means_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no activations"):
        channel_means([])


# ---- selection -----------------------------------------------------------------------------


def lab_like_curve() -> list[float]:
    """61 steps shaped like the lab's: first crossings of 2%, 4%, 10% at 45, 48 and 52."""
    acc0 = LAB_ACC0
    curve = [acc0] * 34 + list(np.linspace(acc0 - 0.01, 97.2, 11))  # steps 0..44: under 2% (floor 96.676)
    curve += [96.5, 96.0, 95.2]  # 45, 46, 47: in the 2% band (4% floor 94.703)
    curve += [94.6, 93.0, 91.5, 89.0]  # 48..51: in the 4% band (10% floor 88.784)
    curve += [84.5, 80.0, 70.0, 50.0, 30.0, 20.0, 10.0, 5.0, 3.0]  # 52..60
    assert len(curve) == 61
    return curve


def test_first_policy_on_a_lab_like_curve():
    steps = select_steps(LAB_ACC0, lab_like_curve(), LAB_THRESHOLDS, "first")
    assert steps == {0.02: 45, 0.04: 48, 0.10: 52}


def test_notebook_policy_on_a_lab_like_curve():
    steps = select_steps(LAB_ACC0, lab_like_curve(), LAB_THRESHOLDS, "notebook")
    assert steps == {0.02: 47, 0.04: 51, 0.10: 52}


def test_default_policy_is_first_and_threshold_order_does_not_matter():
    curve = lab_like_curve()
    assert select_steps(LAB_ACC0, curve, [0.10, 0.02, 0.04]) == {0.02: 45, 0.04: 48, 0.10: 52}
    assert select_steps(LAB_ACC0, curve, [0.10, 0.02, 0.04], "notebook") == {0.02: 47, 0.04: 51, 0.10: 52}


def test_a_drop_exactly_at_the_threshold_qualifies():
    steps = select_steps(100.0, [100.0, 99.0, 98.0, 97.0], [0.02], "first")
    assert steps == {0.02: 2}


@pytest.mark.parametrize("policy", ["first", "notebook"])
def test_a_threshold_never_reached_is_none(policy):
    curve = [98.0, 97.9, 97.0, 95.0, 94.0]  # largest drop: 4.08%
    steps = select_steps(98.0, curve, [0.02, 0.04, 0.10], policy)
    # the notebook's loop never stopped: each file holds the last step of its band, here the same steps
    assert steps == {0.02: 3, 0.04: 4, 0.10: None}


@pytest.mark.parametrize("policy", ["first", "notebook"])
def test_no_threshold_reached(policy):
    assert select_steps(90.0, [90.0, 89.9, 90.1], [0.05, 0.5], policy) == {0.05: None, 0.5: None}


def test_non_monotonic_curve_first_policy_takes_the_first_crossing():
    # 2% crossed at 2, recovered at 3, 4% crossed at 4, back in the 2% band at 5, 10% at 7
    curve = [100.0, 99.0, 97.5, 99.5, 95.5, 97.0, 93.0, 89.0, 50.0]
    assert select_steps(100.0, curve, LAB_THRESHOLDS, "first") == {0.02: 2, 0.04: 4, 0.10: 7}


def test_non_monotonic_curve_notebook_policy_takes_the_last_step_of_each_band_before_the_stop():
    curve = [100.0, 99.0, 97.5, 99.5, 95.5, 97.0, 93.0, 89.0, 50.0]
    # bands before the stop at 7: 2% band (drop in [2%, 4%)) at steps 2 and 5; 4% band at 4 and 6
    assert select_steps(100.0, curve, LAB_THRESHOLDS, "notebook") == {0.02: 5, 0.04: 6, 0.10: 7}


def test_notebook_policy_when_a_band_is_jumped_over():
    # the drop goes from 3% straight to 11%: the notebook's loop never saved a 4% file
    curve = [100.0, 99.0, 97.0, 89.0, 80.0]
    assert select_steps(100.0, curve, LAB_THRESHOLDS, "first") == {0.02: 2, 0.04: 3, 0.10: 3}
    assert select_steps(100.0, curve, LAB_THRESHOLDS, "notebook") == {0.02: 2, 0.04: None, 0.10: 3}


def test_steps_after_the_largest_threshold_do_not_count_for_the_notebook_policy():
    # after the stop at step 3 the curve re-enters the 2% band: the notebook never saw it
    curve = [100.0, 97.5, 89.0, 85.0, 97.0, 97.0]
    assert select_steps(100.0, curve, LAB_THRESHOLDS, "notebook") == {0.02: 1, 0.04: None, 0.10: 2}


def test_any_threshold_list_works():
    curve = [80.0 - step for step in range(41)]  # drop of step/80 at step k
    steps = select_steps(80.0, curve, [0.25, 0.125, 0.5], "first")
    assert steps == {0.125: 10, 0.25: 20, 0.5: 40}


@pytest.mark.parametrize("bad", [[0.0], [1.0], [-0.02], [1.5], [0.02, 0.02], []])
@pytest.mark.parametrize("policy", ["first", "notebook"])
def test_thresholds_outside_the_open_unit_interval_are_rejected(bad, policy):
    with pytest.raises(ValueError):
        select_steps(LAB_ACC0, lab_like_curve(), bad, policy)


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="unknown policy 'last'"):
        select_steps(LAB_ACC0, lab_like_curve(), LAB_THRESHOLDS, "last")


def test_within_policy_takes_the_most_pruning_whose_drop_stays_within_the_budget():
    curve = [100.0, 99.5, 99.0, 97.0, 96.0, 99.9]  # the 2% budget is first exceeded at step 3 (a 3-point drop)
    assert select_steps(100.0, curve, [0.02], "within") == {0.02: 2}
    assert select_steps(100.0, curve, [0.02], "first") == {0.02: 3}, "the lab's rule stays what it was"
    # a drop exactly at t stays within it; a budget never exceeded allows every step (step 0 at the least)
    assert select_steps(100.0, curve, [0.01, 0.1], "within") == {0.01: 2, 0.1: 5}
    assert select_steps(100.0, [100.0, 50.0], [0.02], "within") == {0.02: 0}


def test_within_sees_a_step_that_loses_ten_points_at_once():
    """The demo's case: the first step past 2% costs 10 points; within stops before it."""
    curve = [100.0, 99.6, 99.2, 98.75, 89.5]
    assert select_steps(100.0, curve, [0.02], "first") == {0.02: 4}
    assert select_steps(100.0, curve, [0.02], "within") == {0.02: 3}
