"""fine_tune: fine-pruning at one threshold: fine-tune B'_t on clean data into B''_t, write B'' and G'', evaluate.

Planned only for a sweep whose config holds a [fine_tune] table (the sweep file's, or defend's
--fine-tune options); one task per threshold, once the threshold stage (every threshold of the
model) is done, so the selection it fine-tunes is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from badnet_prune.numerics.fine_tune_settings import FineTuneSettings
from badnet_prune.pipeline.contract import PlanContext, Stage, TaskContext, register
from badnet_prune.pipeline.stages.threshold import THRESHOLD, ThresholdArguments

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.worker.runtime import Runtime

CONFIG_KEY = "fine_tune"


class FineTuneArguments(ThresholdArguments):
    """The threshold whose B'_t is fine-tuned, by its exact key."""


def sweep_settings(config: Mapping[str, Any]) -> FineTuneSettings | None:
    """The sweep's fine-tuning settings (its config's [fine_tune] table), None when it does not fine-tune."""
    table = config.get(CONFIG_KEY)
    return None if table is None else FineTuneSettings.model_validate(table)


def plan(context: PlanContext) -> list[FineTuneArguments]:
    if sweep_settings(context.config) is None:
        return []
    return [FineTuneArguments(threshold=threshold.key) for threshold in context.thresholds]


def run(runtime: Runtime, task: TaskContext, arguments: FineTuneArguments) -> None:
    from badnet_prune.worker.fine_tune_job import fine_tune_threshold

    assert task.model_id is not None
    fine_tune_threshold(runtime, task.model_id, arguments.parsed)


def stored(session: Session, task: TaskContext, arguments: FineTuneArguments) -> bool:
    from badnet_prune.db.results import fine_tune_stored

    assert task.model_id is not None
    return fine_tune_stored(session, task.model_id, arguments.threshold)


FINE_TUNE = register(Stage(
    name="fine_tune",
    description="fine-tune B' on clean data, write B'' and G'', evaluate on test data",
    arguments=FineTuneArguments,
    plan=plan,
    run=run,
    after=(THRESHOLD.name,),
    stored=stored,
))
