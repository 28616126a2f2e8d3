"""Reading the view defense_outcomes (migration 0010), the compute each stage took per model and the detectors'
scores with each model's truth: what the leaderboard aggregates, read in three queries whatever the sweep's size."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import column, func, select, table
from sqlalchemy.orm import Session

from badnet_prune.db.models import Model, StageOutcome, Task

FIELDS = ("model_id", "model", "backdoored", "attack", "network", "setting", "poison", "b_clean_accuracy",
          "clean_accuracy", "b_asr", "asr", "robust_accuracy", "detected", "false_alarms", "fidelity")
DEFENSE_OUTCOMES = table("defense_outcomes", column("sweep_id"), *(column(name) for name in FIELDS))


@dataclass(frozen=True)
class DefenseOutcome:
    """One row of defense_outcomes: a model's network at a setting on one poison (None: the model has none)."""

    model_id: int
    model: str
    backdoored: bool | None
    attack: str | None
    network: str
    setting: str
    poison: str | None
    b_clean_accuracy: float
    clean_accuracy: float
    b_asr: float | None
    asr: float | None
    robust_accuracy: float | None
    detected: float | None
    false_alarms: float | None
    fidelity: float | None


def read_defense_outcomes(session: Session, sweep_id: int) -> list[DefenseOutcome]:
    query = (select(*(DEFENSE_OUTCOMES.c[name] for name in FIELDS)).where(DEFENSE_OUTCOMES.c.sweep_id == sweep_id)
             .order_by(DEFENSE_OUTCOMES.c.model_id, DEFENSE_OUTCOMES.c.network, DEFENSE_OUTCOMES.c.setting,
                       DEFENSE_OUTCOMES.c.poison))
    return [DefenseOutcome(**{**row._asdict(), "backdoored": None if row.backdoored is None else bool(row.backdoored)})
            for row in session.execute(query)]


def stage_seconds(session: Session, sweep_id: int) -> dict[tuple[int, str], float]:
    """(model id, stage) -> the seconds its done tasks took, summed (a worker's wall time per task)."""
    query = (select(Task.model_id, Task.stage, func.sum(Task.seconds))
             .where(Task.sweep_id == sweep_id, Task.model_id.is_not(None), Task.state == "done")
             .group_by(Task.model_id, Task.stage))
    return {(model_id, stage): float(seconds or 0.0) for model_id, stage, seconds in session.execute(query)}


@dataclass(frozen=True)
class DetectorScore:
    """A detector's score for one model (a stage outcome with a score), with the model's truth where it has one."""

    model_id: int
    model: str
    backdoored: bool | None
    attack: str | None
    targets: list[int]  # the true targets (the truth's list, or its values by poison); empty where none
    detector: str  # the stage
    key: str
    score: float
    document: dict


def read_detector_scores(session: Session, sweep_id: int) -> list[DetectorScore]:
    query = (select(StageOutcome.model_id, Model.name, Model.truth_backdoored, Model.truth_attack,
                    Model.truth_targets, StageOutcome.stage, StageOutcome.key, StageOutcome.score,
                    StageOutcome.document)
             .join(Model, Model.id == StageOutcome.model_id)
             .where(Model.sweep_id == sweep_id, StageOutcome.score.is_not(None))
             .order_by(StageOutcome.stage, StageOutcome.model_id, StageOutcome.key))
    scores = []
    for model_id, name, backdoored, attack, targets, stage, key, score, document in session.execute(query):
        values = list(targets.values()) if isinstance(targets, dict) else list(targets or [])
        scores.append(DetectorScore(model_id, name, None if backdoored is None else bool(backdoored), attack,
                                    [int(t) for t in values], stage, key, float(score), dict(document or {})))
    return scores


def scores_by_model(scores: Sequence[DetectorScore], detectors: Collection[str]) -> dict[int, dict[str, DetectorScore]]:
    """Per model with ground truth, its score from each of `detectors` that scored it (what a combined verdict
    is fitted and judged on)."""
    table: dict[int, dict[str, DetectorScore]] = {}
    for entry in scores:
        if entry.backdoored is not None and entry.detector in detectors:
            table.setdefault(entry.model_id, {})[entry.detector] = entry
    return table
