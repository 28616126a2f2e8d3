"""pruning_curve: a detector from the pruning sweep's own stored steps, with no poisoned data.

Fine-Pruning's observation: a BadNet keeps its backdoor in channels that clean images leave dormant, so the
channels the ranking prunes first (least active on clean validation images) cost a backdoored model little
clean accuracy for longer. From the clean validation accuracy at each step (the ASR columns are never read):
- acc0, the unpruned accuracy;
- steps_until_drop: the first step whose accuracy is more than drop_points below acc0 (None: never);
- flat_fraction: the fraction of channels pruned before that step, (steps_until_drop - 1) / channels;
- retained: the accuracy kept (accuracy / acc0) at 10%, 25%, 50% and 75% of the channels pruned;
- dormant_fraction: the share of channels whose mean clean activation (the ranking's) is at most 1% of the
  largest.
The score is flat_fraction (in [0, 1]): a fixed map, not fitted on any zoo; the features are stored as its
evidence so that a rule fitted elsewhere can use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from badnet_prune.db.results import outcome_stored, save_outcome
from badnet_prune.db.session import session_scope
from badnet_prune.pipeline.contract import Job, PlanContext, Stage, StageArguments, StageSettings, register
from badnet_prune.pipeline.presentation import Presentation
from badnet_prune.pipeline.stages.prune_range import PRUNE_RANGE

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.db.model_results import ModelResults
    from badnet_prune.pipeline.runtime import Runtime

NAME = "pruning_curve"
KEY = "features"
FRACTIONS = (0.1, 0.25, 0.5, 0.75)
DORMANT = 0.01  # a channel whose mean activation is at most this share of the largest is dormant


class PruningCurveSettings(StageSettings):
    """drop_points: how far (percentage points) below acc0 the clean validation accuracy must fall to count as the
    first drop."""

    drop_points: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0


class PruningCurveArguments(StageArguments):
    def key(self) -> str:
        return KEY


class PruningCurveOutcome(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    acc0: float
    channels: int
    steps_until_drop: int | None
    flat_fraction: float
    retained: dict[str, float | None]  # fraction pruned -> accuracy kept (accuracy / acc0)
    dormant_fraction: float | None
    drop_points: float


def curve_features(accuracies: list[float], mean_activations: list[float], drop_points: float) -> PruningCurveOutcome:
    """The features of one model's curve: accuracies[k] is the clean validation accuracy (percent) with the first k
    channels of the ranking pruned (k = 0 .. channels); mean_activations the ranking's, any order."""
    if len(accuracies) < 2:
        raise ValueError("a pruning curve needs the unpruned step and at least one pruned step")
    channels = len(accuracies) - 1
    acc0 = float(accuracies[0])
    drop = next((step for step, accuracy in enumerate(accuracies) if accuracy < acc0 - drop_points), None)
    flat = 1.0 if drop is None else (drop - 1) / channels
    retained = {f"{fraction:g}": (None if acc0 <= 0 else float(accuracies[round(fraction * channels)]) / acc0)
                for fraction in FRACTIONS}
    largest = max(mean_activations, default=0.0)
    dormant = (None if largest <= 0 else sum(value <= DORMANT * largest for value in mean_activations)
               / len(mean_activations))
    return PruningCurveOutcome(acc0=acc0, channels=channels, steps_until_drop=drop, flat_fraction=flat,
                               retained=retained, dormant_fraction=dormant, drop_points=drop_points)


def plan(context: PlanContext[PruningCurveSettings]) -> list[PruningCurveArguments]:
    return [PruningCurveArguments()]


def run(runtime: Runtime, job: Job[PruningCurveArguments, PruningCurveSettings]) -> None:
    from badnet_prune.db.model_results import read_model_results

    assert job.model_id is not None and job.settings is not None
    with session_scope(runtime.engine) as session:
        results = read_model_results(session, job.model_id)
    steps = sorted(results.steps, key=lambda step: step.step)
    if [step.step for step in steps] != list(range(len(steps))):
        raise RuntimeError(f"model {results.name}: its stored steps are not 0..{len(steps) - 1}")
    outcome = curve_features([step.clean_accuracy for step in steps],
                             [entry.mean_activation for entry in results.ranking], job.settings.drop_points)
    with session_scope(runtime.engine) as session:
        save_outcome(session, job.model_id, NAME, KEY, outcome.model_dump(mode="json"), score=outcome.flat_fraction)


def stored(session: Session, job: Job[PruningCurveArguments, PruningCurveSettings]) -> bool:
    assert job.model_id is not None
    return outcome_stored(session, job.model_id, NAME, KEY)


def summary(results: ModelResults) -> dict[str, Any]:
    found = results.outcomes.get(NAME, {}).get(KEY)
    return {} if found is None else {NAME: {"score": found.score, **found.document}}


def notes(results: ModelResults) -> list[str]:
    found = results.outcomes.get(NAME, {}).get(KEY)
    if found is None:
        return []
    outcome = PruningCurveOutcome.model_validate(found.document)
    until = ("never dropped" if outcome.steps_until_drop is None
             else f"first dropped more than {outcome.drop_points:g} points at step {outcome.steps_until_drop}")
    return [f"Pruning-curve detector: clean validation accuracy {until}; score (the fraction pruned before that) "
            f"{found.score:.3f}"]


PRUNING_CURVE = register(Stage(
    name=NAME,
    description="detector: how long clean accuracy survives pruning the dormant channels (the sweep's own steps)",
    arguments=PruningCurveArguments,
    plan=plan,
    run=run,
    after=(PRUNE_RANGE.name,),
    settings=PruningCurveSettings,
    stored=stored,
    outcome=PruningCurveOutcome,
    presentation=Presentation(summary=summary, notes=notes),
))
