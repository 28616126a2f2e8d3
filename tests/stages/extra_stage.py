"""A stage declared inside the test suite, to show that a new stage needs no edit anywhere else.

`audit` runs once per threshold after that model's threshold stage, reads the step the
threshold selected, and appends one line to ARTIFACTS/audit.log: so a test can count how often
each task ran. Loaded through the stage_modules setting (BADNET_PRUNE_STAGE_MODULES).
"""

from __future__ import annotations

from pathlib import Path

from badnet_prune.db.results import read_selections
from badnet_prune.db.session import session_scope
from badnet_prune.pipeline.contract import Job, PlanContext, Stage, StageArguments, register
from badnet_prune.pipeline.runtime import Runtime
from badnet_prune.pipeline.stages.threshold import THRESHOLD

LOG_NAME = "audit.log"


class AuditArguments(StageArguments):
    threshold: str

    def key(self) -> str:
        return self.threshold


def plan(context: PlanContext) -> list[AuditArguments]:
    return [AuditArguments(threshold=threshold.key) for threshold in context.sweep.thresholds]


def run(runtime: Runtime, job: Job[AuditArguments, None]) -> None:
    assert job.model_id is not None
    with session_scope(runtime.engine) as session:
        steps = {selection.threshold: selection.step for selection in read_selections(session, job.model_id)}
    log = Path(runtime.settings.artifact_dir) / LOG_NAME
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"{job.model_id} {job.arguments.threshold} {steps[job.arguments.threshold]}\n")


AUDIT = register(Stage(
    name="audit",
    description="note the selected step (a test's stage)",
    arguments=AuditArguments,
    plan=plan,
    run=run,
    after=(THRESHOLD.name,),
))
