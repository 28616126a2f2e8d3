"""The watcher of `sweep --wait` polls less often when a redraw is costly (a large sweep's queries)."""

from __future__ import annotations

from badnet_prune.orchestrator.watch import MAX_POLL_SECONDS, POLL_SECONDS, POLL_SHARE, poll_interval


def test_a_cheap_redraw_polls_every_half_second_and_a_costly_one_keeps_to_its_share() -> None:
    assert poll_interval(0.001) == POLL_SECONDS
    assert poll_interval(0.1) == 0.1 / POLL_SHARE
    assert POLL_SECONDS < poll_interval(0.1) < MAX_POLL_SECONDS
    assert poll_interval(10.0) == MAX_POLL_SECONDS, "a slow database still sees a redraw every few seconds"
