"""Everything a report shows, read from the database in one session into plain objects.

The report never sees the run that produced a sweep: it reads what the workers stored, through
the same readers as `steps` and `defend` (orchestrator.exports), so a report of a sweep that
finished a week ago, on another machine, is the same report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from badnet_prune.db.model_results import ModelResults, read_model_results
from badnet_prune.db.outcomes import (
    DefenseOutcome,
    DetectorScore,
    read_defense_outcomes,
    read_detector_scores,
    stage_seconds,
)
from badnet_prune.db.repository import get_sweep, list_models, model_data_paths
from badnet_prune.db.results import StoredStep, read_steps
from badnet_prune.numerics.thresholds import Threshold, parse_threshold
from badnet_prune.orchestrator.exports import lab_table, step_rows
from badnet_prune.orchestrator.verdicts import CLEAN_BOUND


@dataclass(frozen=True)
class ModelReport:
    """One model of the sweep: its typed results (db.model_results) and its data files."""

    results: ModelResults
    data_paths: dict[str, dict[str, str]]

    id = property(lambda self: self.results.model_id)
    name = property(lambda self: self.results.name)
    status = property(lambda self: self.results.status)
    error = property(lambda self: self.results.error)
    path = property(lambda self: self.results.path)
    sha256 = property(lambda self: self.results.sha256)
    input_scale = property(lambda self: self.results.input_scale)
    acc0 = property(lambda self: self.results.acc0)
    steps = property(lambda self: self.results.steps)
    evaluations = property(lambda self: self.results.evaluations)
    poisons = property(lambda self: self.results.poisons)
    complete = property(lambda self: self.results.complete)

    def lab_table(self) -> tuple[list[str], list[list[str]]]:
        return lab_table(self.results)

    def g_paths(self) -> dict[Threshold, str]:
        """G's file per reached threshold, from the artifacts table."""
        return self.results.g_paths()


@dataclass(frozen=True)
class SweepReport:
    """The sweep's settings and its models in the order they were added."""

    id: int
    name: str
    status: str
    thresholds: list[Threshold]
    policy: str
    prune_layer: str
    rank_layer: str
    trust_model_code: bool
    asr_bound: float
    models: list[ModelReport]
    outcomes: list[DefenseOutcome]  # the view defense_outcomes: what the leaderboard aggregates
    seconds: dict[tuple[int, str], float]  # (model id, stage) -> seconds its tasks took
    clean_bound: float
    step_columns: list[str]  # orchestrator.exports.step_rows: the `steps` command's CSV
    step_rows: list[dict[str, Any]]
    detector_scores: list[DetectorScore] = field(default_factory=list)  # detectors' scores with the models' truth

    @property
    def complete_models(self) -> list[ModelReport]:
        return [model for model in self.models if model.complete]

    @property
    def failed_models(self) -> list[ModelReport]:
        return [model for model in self.models if model.status == "failed"]

    @property
    def unfinished_models(self) -> list[ModelReport]:
        return [model for model in self.models if model.status not in ("done", "failed")]

    @property
    def poisons(self) -> list[str]:
        return sorted({name for model in self.models for name in model.poisons})


def read_report(session: Session, sweep_id: int, asr_bound: float, clean_bound: float = CLEAN_BOUND) -> SweepReport:
    """Read a sweep for its report; LookupError when there is no such sweep."""
    sweep = get_sweep(session, sweep_id)
    steps = read_steps(session, sweep_id)
    by_model: dict[str, list[StoredStep]] = {}
    for step in steps:
        by_model.setdefault(step.model, []).append(step)
    models = [
        ModelReport(
            results=read_model_results(session, model.id, by_model.get(model.name, [])),
            data_paths=model_data_paths(session, model.id),
        )
        for model in list_models(session, sweep_id)
    ]
    step_columns, step_table = step_rows(session, sweep_id)
    return SweepReport(
        id=sweep.id,
        name=sweep.name,
        status=sweep.status,
        thresholds=sorted(parse_threshold(key) for key in sweep.thresholds),
        policy=sweep.policy,
        prune_layer=sweep.prune_layer,
        rank_layer=sweep.rank_layer,
        trust_model_code=bool(sweep.config.get("trust_model_code", False)),
        asr_bound=asr_bound,
        models=models,
        outcomes=read_defense_outcomes(session, sweep_id),
        seconds=stage_seconds(session, sweep_id),
        clean_bound=clean_bound,
        step_columns=step_columns,
        step_rows=step_table,
        detector_scores=read_detector_scores(session, sweep_id),
    )
