"""prune_range: clean accuracy and every ASR at each pruning step of one contiguous range of steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from badnet_prune.pipeline.contract import PlanContext, Stage, StageArguments, TaskContext, register
from badnet_prune.pipeline.stages.rank import RANK

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.worker.runtime import Runtime


class PruneRangeArguments(StageArguments):
    """Steps [start, stop): step k has the first k channels of the ranking pruned."""

    start: int = Field(ge=0)
    stop: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> PruneRangeArguments:
        if self.stop <= self.start:
            raise ValueError(f"empty range [{self.start}, {self.stop})")
        return self

    def key(self) -> str:
        return f"{self.start}-{self.stop}"


def plan(context: PlanContext) -> list[PruneRangeArguments]:
    """Steps 0..C in contiguous ranges of at most range_size steps."""
    steps = context.channel_count + 1
    return [
        PruneRangeArguments(start=start, stop=min(start + context.range_size, steps))
        for start in range(0, steps, context.range_size)
    ]


def run(runtime: Runtime, task: TaskContext, arguments: PruneRangeArguments) -> None:
    from badnet_prune.worker.jobs import prune_steps

    assert task.model_id is not None
    prune_steps(runtime, task.model_id, arguments.start, arguments.stop)


def stored(session: Session, task: TaskContext, arguments: PruneRangeArguments) -> bool:
    from badnet_prune.db.results import steps_stored

    assert task.model_id is not None
    return steps_stored(session, task.model_id, arguments.start, arguments.stop)


PRUNE_RANGE = register(Stage(
    name="prune_range",
    description="the pruning sweep: clean accuracy and ASR at every step",
    arguments=PruneRangeArguments,
    plan=plan,
    run=run,
    after=(RANK.name,),
    stored=stored,
))
