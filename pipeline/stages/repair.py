"""repair: the recommended repair, one recipe for every model: fine-pruning of the largest threshold's B'.

Why this recipe (bench/RESULTS.md, "Fine-pruning across seeds" and "Defenses"): pruning alone at the largest
threshold removes the backdoors that hide in channels dormant on clean data (the default attack), and the
fine-tuning that follows (FineTuneSettings' defaults) both removes those that live in the channels clean data
keeps (Fine-Pruning's pruning-aware attack) and wins back the clean accuracy the pruning cost, so the largest
threshold's extra pruning is paid for. Everything is decided on clean validation data: the step by the sweep's
policy, the epoch by hold-out accuracy. `defend --repair` or an empty [repair] table runs it; it writes
B_repair and G_repair (G's rule against B) and stores its outcome and epochs as fine_tune does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from badnet_prune.db.model_results import Metrics
from badnet_prune.db.results import outcome_stored
from badnet_prune.numerics.fine_tune_settings import FineTuneSettings
from badnet_prune.numerics.thresholds import parse_threshold
from badnet_prune.pipeline.contract import Job, PlanContext, Progress, Stage, register
from badnet_prune.pipeline.presentation import Network, Presentation, metrics_json
from badnet_prune.pipeline.stages.fine_tune import FineTuneArguments, FineTuneOutcome, fine_prune
from badnet_prune.pipeline.stages.threshold import THRESHOLD

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.db.model_results import ModelResults
    from badnet_prune.pipeline.runtime import Runtime

NAME = "repair"
B_REPAIR = Network("B_repair", "B_repair")
G_REPAIR = Network("G_repair", "G_repair", repaired=True, title="recommended repair")


class RepairSettings(BaseModel):
    """The recommended repair has no settings of its own: it is the same recipe for every model (the module's
    docstring says why); fine-pruning's own options tune fine_tune, not this."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


def plan(context: PlanContext[RepairSettings]) -> list[FineTuneArguments]:
    largest = max(context.sweep.thresholds, key=lambda threshold: threshold.value)
    return [FineTuneArguments(threshold=largest.key)]


def run(runtime: Runtime, job: Job[FineTuneArguments, RepairSettings]) -> None:
    assert job.model_id is not None
    fine_prune(runtime, job.task_id, job.model_id, job.arguments.threshold, FineTuneSettings(), NAME,
               (B_REPAIR, G_REPAIR))


def stored(session: Session, job: Job[FineTuneArguments, RepairSettings]) -> bool:
    assert job.model_id is not None
    return outcome_stored(session, job.model_id, NAME, job.arguments.threshold)


def label(results: ModelResults, network: Network, key: str) -> str:
    outcome = results.outcomes.get(NAME, {}).get(key)
    percent = parse_threshold(key).percent
    kept = None if outcome is None else FineTuneOutcome.model_validate(outcome.document).kept_epoch
    return f"{network.label} {percent}" + ("" if kept is None else f", epoch {kept}")


def summary(results: ModelResults) -> dict[str, Any]:
    """summary.json's repair part, by the threshold it repaired at: the outcome (epoch kept, settings, split),
    B_repair and G_repair on test data."""
    return {NAME: {key: {**FineTuneOutcome.model_validate(stored.document).model_dump(),
                         **{network.name: metrics_json(results.networks.get((network.name, key), Metrics()))
                            for network in (B_REPAIR, G_REPAIR)}}
                   for key, stored in results.outcomes[NAME].items()}} if NAME in results.outcomes else {}


REPAIR = register(Stage(
    name=NAME,
    description="the recommended repair: fine-pruning of the largest threshold's B', the same recipe for every model",
    arguments=FineTuneArguments,
    plan=plan,
    run=run,
    after=(THRESHOLD.name,),
    settings=RepairSettings,
    stored=stored,
    outcome=FineTuneOutcome,
    progress=Progress("epochs", lambda arguments, settings: FineTuneSettings().epochs),
    presentation=Presentation(networks=(B_REPAIR, G_REPAIR), label=label, summary=summary),
))
