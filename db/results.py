"""Per-model results: ranking, pruning steps with their ASR, threshold selections, test
evaluations, written artifacts, and what every stage stores in the shared tables (outcomes, curves).

Writers are upserts keyed by what a row describes (see db.upsert), so a redelivered task
rewrites its rows; each takes the caller's Session and leaves committing to it. Readers return
rows in the order a report prints them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from badnet_prune.db.models import (
    NAME_LENGTH,
    TEST_ROLES,
    Artifact,
    CurveAsr,
    CurvePoint,
    Evaluation,
    Model,
    Ranking,
    Selection,
    StageOutcome,
    Step,
    StepAsr,
)
from badnet_prune.db.repository import check_choice
from badnet_prune.db.upsert import upsert_rows


@dataclass(frozen=True)
class StepRow:
    """One pruning step as a worker measured it; asr maps poison name -> (ASR percent, hits)."""

    step: int
    channel: int | None
    fraction_pruned: float
    clean_accuracy: float
    clean_correct: int
    asr: Mapping[str, tuple[float, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredStep:
    """A step as stored, with its model's name; asr and hits are keyed by poison name."""

    model: str
    step: int
    channel: int | None
    fraction_pruned: float
    clean_accuracy: float
    clean_correct: int
    asr: dict[str, float]
    hits: dict[str, int]


def save_ranking(session: Session, model_id: int, rows: Iterable[tuple[int, int, float]]) -> None:
    """Store the pruning order: rows of (channel, position, mean activation), position 0 first."""
    values = [
        {"model_id": model_id, "channel": channel, "position": position, "mean_activation": mean}
        for channel, position, mean in rows
    ]
    upsert_rows(session, Ranking, values, key=["model_id", "channel"])


def ranking_stored(session: Session, model_id: int) -> bool:
    """A ranking is stored whole (one upsert), so one row means all of it."""
    return session.scalar(select(func.count()).where(Ranking.model_id == model_id)) > 0


def read_ranking(session: Session, model_id: int) -> list[tuple[int, int, float]]:
    """(channel, position, mean activation) in pruning order."""
    query = (
        select(Ranking.channel, Ranking.position, Ranking.mean_activation)
        .where(Ranking.model_id == model_id)
        .order_by(Ranking.position)
    )
    return [(channel, position, mean) for channel, position, mean in session.execute(query)]


def save_steps(session: Session, model_id: int, rows: Iterable[StepRow]) -> None:
    """Store pruning steps and the ASR of each poison at them (a range task's whole output)."""
    rows = list(rows)
    steps = [
        {
            "model_id": model_id,
            "step": row.step,
            "channel": row.channel,
            "fraction_pruned": row.fraction_pruned,
            "clean_accuracy": row.clean_accuracy,
            "clean_correct": row.clean_correct,
        }
        for row in rows
    ]
    asr = [
        {"model_id": model_id, "step": row.step, "poison_name": poison, "asr": rate, "hits": hits}
        for row in rows
        for poison, (rate, hits) in row.asr.items()
    ]
    upsert_rows(session, Step, steps, key=["model_id", "step"])
    upsert_rows(session, StepAsr, asr, key=["model_id", "step", "poison_name"])


def steps_stored(session: Session, model_id: int, start: int, stop: int) -> bool:
    """Whether every step in [start, stop) of a model is stored."""
    query = select(func.count()).where(Step.model_id == model_id, Step.step >= start, Step.step < stop)
    return session.scalar(query) == stop - start


def read_steps(session: Session, sweep_id: int, model_name: str | None = None) -> list[StoredStep]:
    """The sweep's steps (or one model's), by model in the order added, then by step."""
    models = select(Model.id).where(Model.sweep_id == sweep_id)
    if model_name is not None:
        models = models.where(Model.name == model_name)
    asr: dict[tuple[int, int], dict[str, tuple[float, int]]] = {}
    asr_query = select(StepAsr.model_id, StepAsr.step, StepAsr.poison_name, StepAsr.asr, StepAsr.hits)
    for model_id, step, poison, rate, hits in session.execute(asr_query.where(StepAsr.model_id.in_(models))):
        asr.setdefault((model_id, step), {})[poison] = (rate, hits)
    query = (
        select(Model.name, Step)
        .join(Model, Model.id == Step.model_id)
        .where(Step.model_id.in_(models))
        .order_by(Model.id, Step.step)
    )
    result = []
    for name, step in session.execute(query.execution_options(populate_existing=True)):
        poisons = asr.get((step.model_id, step.step), {})
        result.append(
            StoredStep(
                model=name,
                step=step.step,
                channel=step.channel,
                fraction_pruned=step.fraction_pruned,
                clean_accuracy=step.clean_accuracy,
                clean_correct=step.clean_correct,
                asr={poison: rate for poison, (rate, _) in sorted(poisons.items())},
                hits={poison: hits for poison, (_, hits) in sorted(poisons.items())},
            )
        )
    return result


def save_selection(
    session: Session, model_id: int, threshold: str, step: int | None, clean_valid_accuracy: float | None
) -> None:
    """The step chosen for a threshold (None with no accuracy when pruning never reached it)."""
    row = {"model_id": model_id, "threshold": threshold, "step": step, "clean_valid_accuracy": clean_valid_accuracy}
    upsert_rows(session, Selection, [row], key=["model_id", "threshold"])


def selection_stored(session: Session, model_id: int, threshold: str) -> bool:
    query = select(func.count()).where(Selection.model_id == model_id, Selection.threshold == threshold)
    return session.scalar(query) == 1


def read_selections(session: Session, model_id: int) -> list[Selection]:
    """By threshold key; callers that order by value sort by badnet_prune.numerics.thresholds.Threshold."""
    return _read(session, select(Selection).where(Selection.model_id == model_id).order_by(Selection.threshold))


def save_evaluation(
    session: Session,
    model_id: int,
    *,
    network: str,
    threshold: str,
    role: str,
    poison_name: str,
    accuracy: float,
    image_count: int,
    flagged: float | None = None,
    robust_accuracy: float | None = None,
) -> None:
    """A network on a test file: accuracy (clean accuracy, or ASR on a poison), flagged % (repaired networks),
    robust accuracy % (poisoned files with true labels).

    threshold is the setting's key ('' for B); role is clean_test (poison_name '') or poisoned_test.
    """
    _check_name(network, "network")
    check_choice(role, TEST_ROLES, "test role")
    row = {
        "model_id": model_id,
        "network": network,
        "threshold": threshold,
        "role": role,
        "poison_name": poison_name,
        "accuracy": accuracy,
        "flagged": flagged,
        "image_count": image_count,
        "robust_accuracy": robust_accuracy,
    }
    upsert_rows(session, Evaluation, [row], key=["model_id", "network", "threshold", "role", "poison_name"])


def read_evaluations(session: Session, model_id: int) -> list[Evaluation]:
    """B first, then B' and G, each by threshold key, the clean test set before the poisoned ones."""
    query = (
        select(Evaluation)
        .where(Evaluation.model_id == model_id)
        .order_by(Evaluation.network, Evaluation.threshold, Evaluation.role, Evaluation.poison_name)
    )
    return _read(session, query)


def save_artifact(
    session: Session,
    model_id: int,
    *,
    threshold: str,
    kind: str,
    path: str | Path,
    sha256: str,
    provenance: Mapping[str, Any],
) -> None:
    """A written file (B'_t, G_t, B''_t ...) for a setting, with what it was made from."""
    _check_name(kind, "artifact kind")
    row = {
        "model_id": model_id,
        "threshold": threshold,
        "kind": kind,
        "path": str(path),
        "sha256": sha256,
        "provenance": dict(provenance),
    }
    upsert_rows(session, Artifact, [row], key=["model_id", "threshold", "kind"])


def read_artifacts(session: Session, model_id: int) -> list[Artifact]:
    query = select(Artifact).where(Artifact.model_id == model_id).order_by(Artifact.threshold, Artifact.kind)
    return _read(session, query)


@dataclass(frozen=True)
class CurvePointRow:
    """One point of a stage's curve: x, clean accuracy there, other figures by name, ASR per poison."""

    point: int
    x: float
    clean_accuracy: float | None
    clean_correct: int | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    asr: Mapping[str, float] = field(default_factory=dict)


def save_outcome(session: Session, model_id: int, stage: str, key: str, document: Mapping[str, Any],
                 score: float | None = None) -> None:
    """A stage task's conclusion for a model (upsert: a redelivered task rewrites its own row)."""
    row = {"model_id": model_id, "stage": stage, "key": key, "score": score, "document": dict(document)}
    upsert_rows(session, StageOutcome, [row], key=["model_id", "stage", "key"])


def outcome_stored(session: Session, model_id: int, stage: str, key: str) -> bool:
    """An outcome is written in the transaction of the task's other results, so its row means all are stored."""
    query = select(func.count()).where(StageOutcome.model_id == model_id, StageOutcome.stage == stage,
                                       StageOutcome.key == key)
    return session.scalar(query) == 1


def read_outcomes(session: Session, model_id: int) -> list[StageOutcome]:
    query = (select(StageOutcome).where(StageOutcome.model_id == model_id)
             .order_by(StageOutcome.stage, StageOutcome.key))
    return _read(session, query)


def save_curve(session: Session, model_id: int, stage: str, curve: str, points: Iterable[CurvePointRow]) -> None:
    """A curve's points and their ASR (upserts keyed by model, stage, curve and point)."""
    points = list(points)
    rows = [
        {"model_id": model_id, "stage": stage, "curve": curve, "point": p.point, "x": p.x,
         "clean_accuracy": p.clean_accuracy, "clean_correct": p.clean_correct, "values": dict(p.values)}
        for p in points
    ]
    asr = [
        {"model_id": model_id, "stage": stage, "curve": curve, "point": p.point, "poison_name": name, "asr": rate,
         "hits": None}
        for p in points
        for name, rate in p.asr.items()
    ]
    upsert_rows(session, CurvePoint, rows, key=["model_id", "stage", "curve", "point"])
    upsert_rows(session, CurveAsr, asr, key=["model_id", "stage", "curve", "point", "poison_name"])


def read_curves(session: Session, model_id: int) -> dict[str, dict[str, list[CurvePointRow]]]:
    """A model's curves: stage -> curve -> points in order, each with its ASR by poison name."""
    asr: dict[tuple[str, str, int], dict[str, float]] = {}
    asr_query = select(CurveAsr).where(CurveAsr.model_id == model_id).order_by(CurveAsr.poison_name)
    for entry in _read(session, asr_query):
        asr.setdefault((entry.stage, entry.curve, entry.point), {})[entry.poison_name] = entry.asr
    curves: dict[str, dict[str, list[CurvePointRow]]] = {}
    query = (select(CurvePoint).where(CurvePoint.model_id == model_id)
             .order_by(CurvePoint.stage, CurvePoint.curve, CurvePoint.point))
    for p in _read(session, query):
        curves.setdefault(p.stage, {}).setdefault(p.curve, []).append(CurvePointRow(
            p.point, p.x, p.clean_accuracy, p.clean_correct, dict(p.values), asr.get((p.stage, p.curve, p.point), {})))
    return curves


def _read(session: Session, query: Select[Any]) -> list[Any]:
    return list(session.scalars(query.execution_options(populate_existing=True)))


def _check_name(value: str, what: str) -> None:
    """Networks and artifact kinds are the identifiers their stages declare (the schema bounds the length)."""
    if not (isinstance(value, str) and value.isidentifier() and len(value) <= NAME_LENGTH):
        raise ValueError(f"{what} {value!r} is not an identifier of at most {NAME_LENGTH} characters")
