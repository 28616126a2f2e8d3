"""rank: order the prune layer's channels by mean activation on clean validation data; measure acc0."""

from __future__ import annotations

from typing import TYPE_CHECKING

from badnet_prune.pipeline.contract import PlanContext, Stage, StageArguments, TaskContext, register

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.worker.runtime import Runtime


class RankArguments(StageArguments):
    """Ranking has no arguments: the model's files and layers are in its rows."""


def plan(context: PlanContext) -> list[RankArguments]:
    return [RankArguments()]


def run(runtime: Runtime, task: TaskContext, arguments: RankArguments) -> None:
    from badnet_prune.worker.jobs import rank_model

    assert task.model_id is not None
    rank_model(runtime, task.model_id)


def stored(session: Session, task: TaskContext, arguments: RankArguments) -> bool:
    from badnet_prune.db.results import ranking_stored

    assert task.model_id is not None
    return ranking_stored(session, task.model_id)


RANK = register(Stage(
    name="rank",
    description="input scale, head activations and the ranking on clean validation data",
    arguments=RankArguments,
    plan=plan,
    run=run,
    stored=stored,
))
