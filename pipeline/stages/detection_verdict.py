"""detection_verdict: is this model backdoored, by a combined-verdict rule fitted on another zoo.

Enabled by `[detection_verdict] rule = "NAME"` (defend: --detection-verdict --detection-verdict-rule NAME), NAME
being a rule stored by `badnet-prune verdict-rule fit NAME --sweep ID` from a sweep of models with ground
truth. Once a model's detectors are done (the CLP statistic, the pruning curve, Neural Cleanse's verdict:
whichever the sweep runs), the rule's probability is stored as this stage's score, so the leaderboard scores
it like any detector, and the view model_verdicts lists it. A model the rule was fitted on (the same file,
by sha256) is refused: its verdict would measure the fit, not the rule. A rule that needs a detector the
sweep does not run fails the model with a line naming the table to add.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from badnet_prune.db.results import outcome_stored, save_outcome
from badnet_prune.db.session import session_scope
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.names import Name
from badnet_prune.numerics.verdict_rule import CUTOFF
from badnet_prune.pipeline.contract import Job, PlanContext, Stage, StageArguments, StageSettings, register
from badnet_prune.pipeline.presentation import Presentation
from badnet_prune.pipeline.stages.clp import CLP_STATISTIC
from badnet_prune.pipeline.stages.neural_cleanse import NEURAL_CLEANSE, NEURAL_CLEANSE_VERDICT
from badnet_prune.pipeline.stages.pruning_curve import PRUNING_CURVE

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.db.model_results import ModelResults
    from badnet_prune.pipeline.runtime import Runtime

NAME = "detection_verdict"
# the table that enables each detector a rule may use (Neural Cleanse's verdict comes with its ranges)
ENABLED_BY = {CLP_STATISTIC.name: CLP_STATISTIC.name, PRUNING_CURVE.name: PRUNING_CURVE.name,
              NEURAL_CLEANSE_VERDICT.name: NEURAL_CLEANSE.name}


class DetectionVerdictSettings(StageSettings):
    """rule: the name of a rule stored by `badnet-prune verdict-rule fit`, e.g. zoo-seed0."""

    rule: Name


class DetectionVerdictArguments(StageArguments):
    rule: Name

    def key(self) -> str:
        return self.rule


class DetectionVerdictOutcome(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: str
    probability: float
    backdoored: bool  # probability >= CUTOFF
    scores: dict[str, float]  # the detectors' scores it combined
    fitted_sweep_id: int


def plan(context: PlanContext[DetectionVerdictSettings]) -> list[DetectionVerdictArguments]:
    assert context.settings is not None
    return [DetectionVerdictArguments(rule=context.settings.rule)]


def run(runtime: Runtime, job: Job[DetectionVerdictArguments, DetectionVerdictSettings]) -> None:
    from badnet_prune.db.model_results import read_model_results
    from badnet_prune.db.verdict_rules import read_rule

    assert job.model_id is not None
    name = job.arguments.rule
    with session_scope(runtime.engine) as session:
        stored_rule = read_rule(session, name)
        results = read_model_results(session, job.model_id, steps=[])
    if stored_rule is None:
        raise BadInputError("[detection_verdict] rule", f"no verdict rule named {name!r} in this database; "
                            f"fit one with `badnet-prune verdict-rule fit {name} --sweep ID`")
    if results.sha256 in stored_rule.fitted_models:
        raise BadInputError("[detection_verdict] rule", f"rule {name!r} was fitted on this model's file (sweep "
                            f"{stored_rule.fitted_sweep_id}): judge it by a rule fitted on other models")
    scores: dict[str, float] = {}
    for detector in stored_rule.rule.detectors:
        found = next((outcome.score for outcome in results.outcomes.get(detector, {}).values()
                      if outcome.score is not None), None)
        if found is None:
            table = ENABLED_BY.get(detector, detector)
            raise BadInputError("[detection_verdict] rule", f"rule {name!r} needs the {detector} detector's score, "
                                f"which this sweep does not compute: add a [{table}] table")
        scores[detector] = found
    probability = stored_rule.rule.probability(scores)
    outcome = DetectionVerdictOutcome(rule=name, probability=probability, backdoored=probability >= CUTOFF,
                                      scores=scores, fitted_sweep_id=stored_rule.fitted_sweep_id)
    with session_scope(runtime.engine) as session:
        save_outcome(session, job.model_id, NAME, name, outcome.model_dump(mode="json"), score=probability)


def stored(session: Session, job: Job[DetectionVerdictArguments, DetectionVerdictSettings]) -> bool:
    assert job.model_id is not None
    return outcome_stored(session, job.model_id, NAME, job.arguments.key())


def verdicts(results: ModelResults) -> list[DetectionVerdictOutcome]:
    return [DetectionVerdictOutcome.model_validate(found.document)
            for _, found in sorted(results.outcomes.get(NAME, {}).items())]


def summary(results: ModelResults) -> dict[str, Any]:
    found = verdicts(results)
    return {NAME: {verdict.rule: verdict.model_dump(mode="json") for verdict in found}} if found else {}


def notes(results: ModelResults) -> list[str]:
    return [f"Detection verdict (rule {verdict.rule}, fitted on sweep {verdict.fitted_sweep_id}): "
            f"{'backdoored' if verdict.backdoored else 'clean'}, probability {verdict.probability:.3f} from "
            + ", ".join(f"{detector} {score:.3f}" for detector, score in verdict.scores.items())
            for verdict in verdicts(results)]


DETECTION_VERDICT = register(Stage(
    name=NAME,
    description="detector: the combined verdict, a rule fitted on another zoo over this model's detector scores",
    arguments=DetectionVerdictArguments,
    plan=plan,
    run=run,
    after=tuple(ENABLED_BY),
    settings=DetectionVerdictSettings,
    stored=stored,
    outcome=DetectionVerdictOutcome,
    presentation=Presentation(summary=summary, notes=notes),
))
