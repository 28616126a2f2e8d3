"""threshold: select B'_t for one threshold, write B'_t and G_t, and evaluate B, B'_t and G_t on test data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import field_validator

from badnet_prune.numerics.thresholds import Threshold, parse_threshold
from badnet_prune.pipeline.contract import PlanContext, Stage, StageArguments, TaskContext, register
from badnet_prune.pipeline.stages.prune_range import PRUNE_RANGE

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.worker.runtime import Runtime


class ThresholdArguments(StageArguments):
    """One threshold, by its exact key ('0.02', '0.0333333333')."""

    threshold: str

    @field_validator("threshold")
    @classmethod
    def _exact_key(cls, value: str) -> str:
        if parse_threshold(value).key != value:
            raise ValueError(f"{value!r} is not a threshold key")
        return value

    @property
    def parsed(self) -> Threshold:
        return Threshold(self.threshold)

    def key(self) -> str:
        return self.threshold


def plan(context: PlanContext) -> list[ThresholdArguments]:
    return [ThresholdArguments(threshold=threshold.key) for threshold in context.thresholds]


def run(runtime: Runtime, task: TaskContext, arguments: ThresholdArguments) -> None:
    from badnet_prune.worker.jobs import evaluate_threshold

    assert task.model_id is not None
    evaluate_threshold(runtime, task.model_id, arguments.parsed)


def stored(session: Session, task: TaskContext, arguments: ThresholdArguments) -> bool:
    from badnet_prune.db.results import selection_stored

    assert task.model_id is not None
    return selection_stored(session, task.model_id, arguments.threshold)


THRESHOLD = register(Stage(
    name="threshold",
    description="select B', write B' and G, evaluate on test data",
    arguments=ThresholdArguments,
    plan=plan,
    run=run,
    after=(PRUNE_RANGE.name,),
    stored=stored,
))
