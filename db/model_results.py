"""A model's results as typed objects: what `defend`'s table and files and the report read.

Readers of results never parse keys back apart (`asr_<name>`, "0.02"): the clean test set and
each poisoned one are separate fields, thresholds are Threshold objects in ascending order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from badnet_prune.db.models import Evaluation, Model
from badnet_prune.db.repository import get_model, get_sweep
from badnet_prune.db.results import (
    CurvePointRow,
    StoredStep,
    read_artifacts,
    read_curves,
    read_evaluations,
    read_outcomes,
    read_ranking,
    read_selections,
    read_steps,
)
from badnet_prune.numerics.thresholds import Threshold, parse_threshold

THRESHOLD_KINDS = ("B_prime", "G")  # the pruning defense's own networks, per threshold


@dataclass(frozen=True)
class Metrics:
    """One network on the test files: clean accuracy, ASR per poison, and for G what it flagged as N."""

    clean_accuracy: float | None = None
    asr: dict[str, float] = field(default_factory=dict)
    false_alarms: float | None = None  # G: % of clean test images flagged
    detection: dict[str, float] = field(default_factory=dict)  # G: % of each poisoned set flagged
    robust_accuracy: dict[str, float] = field(default_factory=dict)  # per poisoned set with true labels

    @property
    def measured(self) -> bool:
        return self.clean_accuracy is not None


@dataclass(frozen=True)
class RankedChannel:
    channel: int
    position: int
    mean_activation: float


@dataclass(frozen=True)
class StoredOutcome:
    """A stage task's outcome document (its stage declares the type) and a detector's score."""

    document: dict[str, Any]
    score: float | None


@dataclass(frozen=True)
class ThresholdResult:
    """What one threshold selected (step None: never reached) and how B'_t and G_t did on test data."""

    threshold: Threshold
    step: int | None
    clean_valid_accuracy: float | None
    b_prime: Metrics
    g: Metrics
    files: dict[str, str]  # artifact kind (B_prime, G) -> path


@dataclass(frozen=True)
class ModelResults:
    model_id: int
    name: str
    path: str
    sha256: str
    status: str
    error: str | None
    input_scale: float
    acc0: float | None
    policy: str  # the sweep's selection policy (badnet_prune.numerics.selection.POLICIES)
    ranking: list[RankedChannel]
    steps: list[StoredStep]
    b: Metrics
    thresholds: list[ThresholdResult]
    evaluations: list[Evaluation]
    networks: dict[tuple[str, str], Metrics] = field(default_factory=dict)  # (network, setting key) -> metrics
    files: dict[tuple[str, str], str] = field(default_factory=dict)  # (artifact kind, setting key) -> path
    outcomes: dict[str, dict[str, StoredOutcome]] = field(default_factory=dict)  # stage -> task key -> outcome
    curves: dict[str, dict[str, list[CurvePointRow]]] = field(default_factory=dict)  # stage -> curve -> points

    @property
    def pruning_order(self) -> list[int]:
        return [entry.channel for entry in self.ranking]

    @property
    def poisons(self) -> list[str]:
        """Poison names measured during pruning or on test data, sorted."""
        return sorted({name for step in self.steps for name in step.asr} | set(self.b.asr))

    @property
    def complete(self) -> bool:
        """Done and with B evaluated: the model has curves and tables to show."""
        return self.status == "done" and self.b.measured

    def g_paths(self) -> dict[Threshold, str]:
        return {entry.threshold: entry.files["G"] for entry in self.thresholds if "G" in entry.files}

    def keys(self, network: str) -> list[str]:
        """The setting keys at which a network was evaluated: thresholds by value, other keys after them."""
        found = {key for name, key in self.networks if name == network}
        return sorted(found, key=_setting_order)


def _setting_order(key: str) -> tuple[int, float, str]:
    try:
        return (0, parse_threshold(key).value, key)
    except ValueError:
        return (1, 0.0, key)


def read_model_results(session: Session, model_id: int, steps: list[StoredStep] | None = None) -> ModelResults:
    """Everything stored for one model (steps may be given when the caller read a whole sweep's at once)."""
    model: Model = get_model(session, model_id)
    evaluations = read_evaluations(session, model_id)
    metrics = _metrics(evaluations)
    artifacts = read_artifacts(session, model_id)
    thresholds = [
        ThresholdResult(
            threshold=parse_threshold(selection.threshold),
            step=selection.step,
            clean_valid_accuracy=selection.clean_valid_accuracy,
            b_prime=metrics.get(("B_prime", selection.threshold), Metrics()),
            g=metrics.get(("G", selection.threshold), Metrics()),
            files={a.kind: a.path for a in artifacts if a.threshold == selection.threshold
                   and a.kind in THRESHOLD_KINDS},
        )
        for selection in read_selections(session, model_id)
    ]
    if steps is None:
        steps = read_steps(session, model.sweep_id, model.name)
    outcomes: dict[str, dict[str, StoredOutcome]] = {}
    for row in read_outcomes(session, model_id):
        outcomes.setdefault(row.stage, {})[row.key] = StoredOutcome(dict(row.document), row.score)
    return ModelResults(
        model_id=model.id,
        name=model.name,
        path=model.path,
        sha256=model.sha256,
        status=model.status,
        error=model.error,
        input_scale=model.input_scale,
        acc0=model.acc0,
        policy=get_sweep(session, model.sweep_id).policy,
        ranking=[RankedChannel(c, p, m) for c, p, m in read_ranking(session, model_id)],
        steps=steps,
        b=metrics.get(("B", ""), Metrics()),
        thresholds=sorted(thresholds, key=lambda entry: entry.threshold),
        evaluations=evaluations,
        networks=metrics,
        files={(a.kind, a.threshold): a.path for a in artifacts},
        outcomes=outcomes,
        curves=read_curves(session, model_id),
    )


def _metrics(evaluations: list[Evaluation]) -> dict[tuple[str, str], Metrics]:
    collected: dict[tuple[str, str], dict] = {}
    for row in evaluations:
        entry = collected.setdefault((row.network, row.threshold), {"asr": {}, "detection": {}, "robust_accuracy": {}})
        if row.role == "clean_test":
            entry["clean_accuracy"] = row.accuracy
            if row.flagged is not None:
                entry["false_alarms"] = row.flagged
        else:
            entry["asr"][row.poison_name] = row.accuracy
            if row.robust_accuracy is not None:
                entry["robust_accuracy"][row.poison_name] = row.robust_accuracy
            if row.flagged is not None:
                entry["detection"][row.poison_name] = row.flagged
    return {key: Metrics(**values) for key, values in collected.items()}
