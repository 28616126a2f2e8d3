"""finish: once every model of a sweep has ended (done or failed), the sweep's status says how it went."""

from __future__ import annotations

from typing import TYPE_CHECKING

from badnet_prune.db.repository import finish_sweep
from badnet_prune.db.session import session_scope
from badnet_prune.pipeline.contract import Job, PlanContext, Scope, Stage, StageArguments, register

if TYPE_CHECKING:
    from badnet_prune.pipeline.runtime import Runtime


class FinishArguments(StageArguments):
    """Finishing has no arguments."""


def plan(context: PlanContext) -> list[FinishArguments]:
    return [FinishArguments()]


def run(runtime: Runtime, job: Job[FinishArguments, None]) -> None:
    with session_scope(runtime.engine) as session:
        finish_sweep(session, job.sweep_id)


FINISH = register(Stage(
    name="finish",
    description="close the sweep",
    arguments=FinishArguments,
    plan=plan,
    run=run,
    scope=Scope.SWEEP,
))
