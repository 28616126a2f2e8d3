"""The zoo's wait on its workers' builds: the time left is measured from the builds that ended, never assumed."""

from __future__ import annotations

from datetime import timedelta

from badnet_prune.db.models import ZooBuild, utcnow
from badnet_prune.orchestrator.zoo_queue import _Pace


def build(attack: str, state: str, seconds: float | None = None, started_s_ago: float | None = None) -> ZooBuild:
    started = utcnow() - timedelta(seconds=started_s_ago) if started_s_ago is not None else None
    return ZooBuild(attack=attack, state=state, seconds=seconds, started_at=started)


def test_the_time_left_is_each_attacks_measured_pace_shared_by_the_builds_running_at_once() -> None:
    ended = [build("patch", "done", 10.0), build("clean", "done", 20.0)]
    assert _Pace({}).left(ended) == "time left: known after the first build"
    pace = _Pace({"patch": [10.0], "clean": [20.0]})
    one_running = [*ended, build("patch", "running", started_s_ago=4.0), build("patch", "queued"),
                   build("blended", "pending")]
    # waiting: patch 10 s + blended at the mean of all, 15 s; running: 10 - 4 = 6 s more; one at once
    assert pace.left(one_running) == "about 31 s left at 1 at once"
    two_running = [*one_running[:-1], build("blended", "running", started_s_ago=30.0)]
    # waiting: patch 10 s; running: 6 s and max(0, 15 - 30) = 0 s; two at once
    assert pace.left(two_running) == "about 8 s left at 2 at once"
