"""Everything a report shows, read from the database in one session into plain objects.

The report never sees the run that produced a sweep: it reads what the workers stored, through
the same readers as `steps` and `defend` (orchestrator.exports), so a report of a sweep that
finished a week ago, on another machine, is the same report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from db.models import Evaluation
from db.repository import get_sweep, list_models, model_data_paths
from db.results import StoredStep, read_evaluations, read_steps
from orchestrator.exports import lab_table, model_summary, step_rows


@dataclass(frozen=True)
class ModelReport:
    """One model of the sweep: its row, model_summary's dict, its steps and data files."""

    id: int
    name: str
    status: str
    error: str | None
    path: str
    sha256: str
    input_scale: float
    acc0: float | None
    summary: dict[str, Any]
    steps: list[StoredStep]
    evaluations: list[Evaluation]
    data_paths: dict[str, dict[str, str]]

    @property
    def poisons(self) -> list[str]:
        """Poison names measured during pruning or on test data, sorted."""
        names = {name for step in self.steps for name in step.asr}
        names |= {key[4:] for key in self.summary["B"] if key.startswith("asr_")}
        return sorted(names)

    @property
    def complete(self) -> bool:
        """Done and with B evaluated: the model has curves and tables to show."""
        return self.status == "done" and bool(self.summary["B"])

    def lab_table(self) -> tuple[list[str], list[list[str]]]:
        return lab_table(self.summary)

    def g_paths(self) -> dict[float, str]:
        """G's file per reached threshold, from the artifacts table."""
        paths = {}
        for key, entry in self.summary["thresholds"].items():
            if "G" in entry["files"]:
                paths[float(key)] = entry["files"]["G"]
        return paths


@dataclass(frozen=True)
class SweepReport:
    """The sweep's settings and its models in the order they were added."""

    id: int
    name: str
    status: str
    thresholds: list[float]
    policy: str
    prune_layer: str
    rank_layer: str
    trust_model_code: bool
    asr_bound: float
    models: list[ModelReport]
    step_columns: list[str]  # orchestrator.exports.step_rows: the `steps` command's CSV
    step_rows: list[dict[str, Any]]

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


def read_report(session: Session, sweep_id: int, asr_bound: float) -> SweepReport:
    """Read a sweep for its report; LookupError when there is no such sweep."""
    sweep = get_sweep(session, sweep_id)
    steps = read_steps(session, sweep_id)
    models = [
        ModelReport(
            id=model.id,
            name=model.name,
            status=model.status,
            error=model.error,
            path=model.path,
            sha256=model.sha256,
            input_scale=model.input_scale,
            acc0=model.acc0,
            summary=model_summary(session, sweep_id, model.id),
            steps=[step for step in steps if step.model == model.name],
            evaluations=read_evaluations(session, model.id),
            data_paths=model_data_paths(session, model.id),
        )
        for model in list_models(session, sweep_id)
    ]
    step_columns, step_table = step_rows(session, sweep_id)
    return SweepReport(
        id=sweep.id,
        name=sweep.name,
        status=sweep.status,
        thresholds=[float(t) for t in sweep.thresholds],
        policy=sweep.policy,
        prune_layer=sweep.prune_layer,
        rank_layer=sweep.rank_layer,
        trust_model_code=bool(sweep.config.get("trust_model_code", False)),
        asr_bound=asr_bound,
        models=models,
        step_columns=step_columns,
        step_rows=step_table,
    )
