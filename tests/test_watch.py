"""The watcher of `sweep --wait` polls less often when a redraw is costly (a large sweep's queries), and a long
stage (fine-tuning's epochs) says its time left from its own measured pace."""

from __future__ import annotations

from badnet_prune.db.repository import SweepOverview
from badnet_prune.orchestrator.watch import (
    MAX_POLL_SECONDS,
    POLL_SECONDS,
    POLL_SHARE,
    StageClock,
    poll_interval,
    stages_at_work,
)


def test_a_cheap_redraw_polls_every_half_second_and_a_costly_one_keeps_to_its_share() -> None:
    assert poll_interval(0.001) == POLL_SECONDS
    assert poll_interval(0.1) == 0.1 / POLL_SHARE
    assert POLL_SECONDS < poll_interval(0.1) < MAX_POLL_SECONDS
    assert poll_interval(10.0) == MAX_POLL_SECONDS, "a slow database still sees a redraw every few seconds"


def test_a_stage_says_its_time_left_only_once_its_own_pace_is_measured() -> None:
    clock = StageClock()
    assert clock.seconds_left("fine_tune", 1, 60, now=100.0) is None, "first sight: no pace yet"
    assert clock.seconds_left("fine_tune", 1, 60, now=130.0) is None, "no unit counted since"
    assert clock.seconds_left("fine_tune", 4, 60, now=130.0) == 56 * 30.0 / 3
    assert clock.seconds_left("fine_tune", 4, 60, now=150.0) == 56 * 30.0 / 3, "holds still between units"
    assert clock.seconds_left("fine_tune", 5, 60, now=170.0) == 55 * 70.0 / 4
    assert clock.seconds_left("anp", 0, 10, now=130.0) is None, "each stage its own pace"


def test_fine_tuning_at_work_shows_its_epochs_and_then_its_time_left() -> None:
    overview = SweepOverview(sweep_id=1, status="running", models=[(1, "bd_net", "running", None, {"running": 1})],
                             sweep_tasks={}, stages={"fine_tune": {"running": 1, "queued": 2}},
                             units={"fine_tune": (0, 60)})
    clock = StageClock()
    text, busy = stages_at_work(overview, clock, now=10.0)
    assert busy == ("fine_tune",)
    assert "(0/3, 0/60 epochs)" in text and "left" not in text, text
    overview.units["fine_tune"] = (5, 60)
    text, _ = stages_at_work(overview, clock, now=20.0)
    assert text.endswith("(0/3, 5/60 epochs, about 110 s left at its pace)"), text
