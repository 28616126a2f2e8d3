"""prune_range: clean accuracy and every ASR at each pruning step of one contiguous range of steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from badnet_prune.db.results import StepRow, read_ranking, save_steps, steps_stored
from badnet_prune.db.session import session_scope
from badnet_prune.numerics.pruning import prune_range, prune_range_dense
from badnet_prune.pipeline.contract import Job, PlanContext, Progress, Stage, StageArguments, register
from badnet_prune.pipeline.inputs import loaded_model, read_inputs, role_data, set_key
from badnet_prune.pipeline.runtime import labeled_set
from badnet_prune.pipeline.stages.rank import RANK

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.pipeline.runtime import Runtime


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
    assert context.model is not None
    steps = context.model.channel_count + 1
    size = context.sweep.range_size
    return [PruneRangeArguments(start=start, stop=min(start + size, steps)) for start in range(0, steps, size)]


def run(runtime: Runtime, job: Job[PruneRangeArguments, None]) -> None:
    """Steps [start, stop): clean validation accuracy and every poisoned set's ASR."""
    assert job.model_id is not None
    start, stop = job.arguments.start, job.arguments.stop
    inputs = read_inputs(runtime, job.model_id)
    with session_scope(runtime.engine) as session:
        order = [channel for channel, _, _ in read_ranking(session, job.model_id)]
    loaded = loaded_model(runtime, inputs)
    clean = role_data(runtime, loaded, inputs, "clean_valid")[""]
    poisoned = role_data(runtime, loaded, inputs, "poisoned_valid")
    clean_key = set_key("clean_valid")
    poisoned_keys = {name: set_key("poisoned_valid", name) for name in poisoned}
    sets = {clean_key: clean, **{poisoned_keys[name]: data for name, data in poisoned.items()}}
    clean_set = labeled_set(clean_key, clean)
    poisoned_sets = {name: labeled_set(poisoned_keys[name], data) for name, data in poisoned.items()}
    step_labels = runtime.memory.step_labels(loaded, sets)
    if step_labels is not None:
        steps = prune_range_dense(step_labels, clean_set, poisoned_sets, order, start, stop)
    else:
        steps = prune_range(runtime.memory.labels_at(loaded, sets), clean_set, poisoned_sets, order, start, stop)
    rows = [
        StepRow(
            step=s.step, channel=s.channel, fraction_pruned=s.fraction_pruned, clean_accuracy=s.clean_accuracy,
            clean_correct=s.clean_correct, asr={name: (s.asr[name], s.hits[name]) for name in s.asr},
        )
        for s in steps
    ]
    with session_scope(runtime.engine) as session:
        save_steps(session, job.model_id, rows)


def stored(session: Session, job: Job[PruneRangeArguments, None]) -> bool:
    assert job.model_id is not None
    return steps_stored(session, job.model_id, job.arguments.start, job.arguments.stop)


PRUNE_RANGE = register(Stage(
    name="prune_range",
    description="the pruning sweep: clean accuracy and ASR at every step",
    arguments=PruneRangeArguments,
    plan=plan,
    run=run,
    after=(RANK.name,),
    stored=stored,
    progress=Progress("steps", lambda arguments, settings: arguments.stop - arguments.start),
))
