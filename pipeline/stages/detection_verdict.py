"""detection_verdict: is this model backdoored, by a combined-verdict rule fitted on another zoo.

Enabled by `[detection_verdict] rule = "NAME"` (defend: --detection-verdict --detection-verdict-rule NAME), NAME
being a rule stored by `badnet-prune fit-verdict NAME --sweep ID` from a sweep of models with ground truth.
Once a model's detectors are done (the CLP statistic, the pruning curve, Neural Cleanse's verdict), the rule's
probability is stored as this stage's score, so the leaderboard scores it like any detector, and the view
model_verdicts lists it. The sweep is refused when it is registered, before any work, if the rule does not
exist, needs a detector the sweep does not run or runs with other settings than the sweep it was fitted on
(Neural Cleanse's steps, the pruning curve's drop_points: its scores would mean something else), or was
fitted on one of the sweep's models (the same file, by sha256): that model's verdict would measure the fit,
not the rule. The job checks the fitted models again, since a rule's row is read when the task runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

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
    from badnet_prune.db.verdict_rules import StoredRule
    from badnet_prune.pipeline.runtime import Runtime

NAME = "detection_verdict"
# the table that enables each detector a rule may use (Neural Cleanse's verdict comes with its ranges)
ENABLED_BY = {CLP_STATISTIC.name: CLP_STATISTIC.name, PRUNING_CURVE.name: PRUNING_CURVE.name,
              NEURAL_CLEANSE_VERDICT.name: NEURAL_CLEANSE.name}


class DetectionVerdictSettings(StageSettings):
    """Which stored rule judges the sweep's models."""

    rule: Annotated[Name, Field(description="the name of a rule stored by `badnet-prune fit-verdict`, e.g. "
                                "zoo-seed0")]


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


def _rule(session: Session, name: str) -> StoredRule:
    from badnet_prune.db.verdict_rules import read_rule

    stored_rule = read_rule(session, name)
    if stored_rule is None:
        raise BadInputError("[detection_verdict] rule", f"no verdict rule named {name!r} in this database; "
                            f"fit one with `badnet-prune fit-verdict {name} --sweep ID`")
    return stored_rule


def detector_settings(detectors: Sequence[str], config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings each detector's table has in a sweep (its stored config), by table: what a rule fitted on the
    sweep's scores records, so that a sweep running them otherwise is refused. A table the config lacks (scores
    stored by other means) records nothing."""
    tables = {ENABLED_BY[detector] for detector in detectors}
    return {table: _table_settings(table, config) for table in sorted(tables) if table in config}


def _table_settings(table: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The table's settings that decide what its scores are: those marked as only splitting the work (Neural
    Cleanse's label_range) are left out."""
    from badnet_prune.pipeline.contract import get_stage

    settings = get_stage(table).sweep_settings(config)
    if settings is None:
        return {}
    split = {name for name, field in type(settings).model_fields.items()
             if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("splits_work")}
    return settings.model_dump(mode="json", exclude=split)


def check(session: Session, settings: DetectionVerdictSettings, config: Mapping[str, Any],
          model_hashes: Sequence[str]) -> None:
    """The rule exists, the sweep runs its detectors with the settings the rule was fitted on, and it was fitted on
    none of the sweep's models."""
    from badnet_prune.pipeline.contract import get_stage

    stored_rule = _rule(session, settings.rule)
    for detector in stored_rule.rule.detectors:
        if detector not in ENABLED_BY or not get_stage(detector).enabled(config):
            table = ENABLED_BY.get(detector, detector)
            raise BadInputError("[detection_verdict] rule", f"rule {settings.rule!r} needs the {detector} detector's "
                                f"score, which this sweep does not compute: add a [{table}] table")
    for table, fitted_with in stored_rule.detector_settings.items():
        if table not in ENABLED_BY.values():
            raise BadInputError(f"verdict rule {settings.rule!r}", f"its stored row is malformed: it records "
                                f"settings of {table!r}, which is not a detector's table")
        here = _table_settings(table, config)
        differ = sorted(key for key in fitted_with if fitted_with[key] != here.get(key))
        if differ:
            raise BadInputError("[detection_verdict] rule", f"rule {settings.rule!r} was fitted on scores from "
                                f"[{table}] " + ", ".join(f"{key} = {fitted_with.get(key)!r}" for key in differ)
                                + "; this sweep sets " + ", ".join(f"{key} = {here.get(key)!r}" for key in differ)
                                + ": its scores would not mean what the rule learned (use those settings, or fit a "
                                "rule on a zoo run with these)")
    seen = sum(found in stored_rule.fitted_models for found in model_hashes)
    if seen:
        raise BadInputError("[detection_verdict] rule", f"rule {settings.rule!r} was fitted on {seen} of this "
                            f"sweep's model files (sweep {stored_rule.fitted_sweep_id}): judge them by a rule fitted "
                            "on other models")


def run(runtime: Runtime, job: Job[DetectionVerdictArguments, DetectionVerdictSettings]) -> None:
    from badnet_prune.db.repository import get_model
    from badnet_prune.db.results import read_outcomes

    assert job.model_id is not None
    name = job.arguments.rule
    with session_scope(runtime.engine) as session:
        stored_rule = _rule(session, name)
        sha256 = get_model(session, job.model_id).sha256
        found = {(row.stage, row.key): row.score for row in read_outcomes(session, job.model_id)}
    if sha256 in stored_rule.fitted_models:
        raise BadInputError("[detection_verdict] rule", f"rule {name!r} was fitted on this model's file (sweep "
                            f"{stored_rule.fitted_sweep_id}): judge it by a rule fitted on other models")
    scores: dict[str, float] = {}
    for detector in stored_rule.rule.detectors:
        values = [score for (stage, _), score in found.items() if stage == detector and score is not None]
        if len(values) != 1:
            raise BadInputError("[detection_verdict] rule", f"rule {name!r} needs one {detector} score for this "
                                f"model, and the sweep stored {len(values)}: add a "
                                f"[{ENABLED_BY.get(detector, detector)}] table")
        scores[detector] = values[0]
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
    check=check,
))
