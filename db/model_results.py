"""A model's results as typed objects: what `defend`'s table and files and the report read.

Readers of results never parse keys back apart (`asr_<name>`, "0.02"): the clean test set and
each poisoned one are separate fields, thresholds are Threshold objects in ascending order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from badnet_prune.db.models import Evaluation, Model
from badnet_prune.db.repository import get_model
from badnet_prune.db.results import (
    FineTuneEpochRow,
    StoredStep,
    read_artifacts,
    read_evaluations,
    read_fine_tunes,
    read_ranking,
    read_selections,
    read_steps,
)
from badnet_prune.numerics.thresholds import Threshold, parse_threshold

FINE_KINDS = ("B_fine", "G_fine")


@dataclass(frozen=True)
class Metrics:
    """One network on the test files: clean accuracy, ASR per poison, and for G what it flagged as N."""

    clean_accuracy: float | None = None
    asr: dict[str, float] = field(default_factory=dict)
    false_alarms: float | None = None  # G: % of clean test images flagged
    detection: dict[str, float] = field(default_factory=dict)  # G: % of each poisoned set flagged

    @property
    def measured(self) -> bool:
        return self.clean_accuracy is not None


@dataclass(frozen=True)
class RankedChannel:
    channel: int
    position: int
    mean_activation: float


@dataclass(frozen=True)
class FineTuneOutcome:
    """Fine-pruning at one threshold: every epoch, the one kept, and B''_t and G''_t on test data.

    kept_epoch is None when the threshold selected no step: there was nothing to fine-tune.
    """

    kept_epoch: int | None
    epochs: tuple[FineTuneEpochRow, ...]
    settings: dict[str, Any]
    split_sha256: str | None
    b_fine: Metrics
    g_fine: Metrics
    files: dict[str, str]  # artifact kind (B_fine, G_fine) -> path

    @property
    def poisons(self) -> list[str]:
        return sorted({name for epoch in self.epochs for name in epoch.asr})


@dataclass(frozen=True)
class ThresholdResult:
    """What one threshold selected (step None: never reached) and how B'_t and G_t did on test data.

    fine: fine-pruning's outcome at this threshold, None when the sweep did not fine-tune (or not yet).
    """

    threshold: Threshold
    step: int | None
    clean_valid_accuracy: float | None
    b_prime: Metrics
    g: Metrics
    files: dict[str, str]  # artifact kind (B_prime, G) -> path
    fine: FineTuneOutcome | None = None


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
    ranking: list[RankedChannel]
    steps: list[StoredStep]
    b: Metrics
    thresholds: list[ThresholdResult]
    evaluations: list[Evaluation]

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


def read_model_results(session: Session, model_id: int, steps: list[StoredStep] | None = None) -> ModelResults:
    """Everything stored for one model (steps may be given when the caller read a whole sweep's at once)."""
    model: Model = get_model(session, model_id)
    evaluations = read_evaluations(session, model_id)
    metrics = _metrics(evaluations)
    artifacts = read_artifacts(session, model_id)
    fine = {
        row.threshold: FineTuneOutcome(
            kept_epoch=row.kept_epoch, epochs=row.epochs, settings=dict(row.settings), split_sha256=row.split_sha256,
            b_fine=metrics.get(("B_fine", row.threshold), Metrics()),
            g_fine=metrics.get(("G_fine", row.threshold), Metrics()),
            files={a.kind: a.path for a in artifacts if a.threshold == row.threshold and a.kind in FINE_KINDS},
        )
        for row in read_fine_tunes(session, model_id)
    }
    thresholds = [
        ThresholdResult(
            threshold=parse_threshold(selection.threshold),
            step=selection.step,
            clean_valid_accuracy=selection.clean_valid_accuracy,
            b_prime=metrics.get(("B_prime", selection.threshold), Metrics()),
            g=metrics.get(("G", selection.threshold), Metrics()),
            files={a.kind: a.path for a in artifacts if a.threshold == selection.threshold
                   and a.kind not in FINE_KINDS},
            fine=fine.get(selection.threshold),
        )
        for selection in read_selections(session, model_id)
    ]
    if steps is None:
        steps = read_steps(session, model.sweep_id, model.name)
    return ModelResults(
        model_id=model.id,
        name=model.name,
        path=model.path,
        sha256=model.sha256,
        status=model.status,
        error=model.error,
        input_scale=model.input_scale,
        acc0=model.acc0,
        ranking=[RankedChannel(c, p, m) for c, p, m in read_ranking(session, model_id)],
        steps=steps,
        b=metrics.get(("B", ""), Metrics()),
        thresholds=sorted(thresholds, key=lambda entry: entry.threshold),
        evaluations=evaluations,
    )


def _metrics(evaluations: list[Evaluation]) -> dict[tuple[str, str], Metrics]:
    collected: dict[tuple[str, str], dict] = {}
    for row in evaluations:
        entry = collected.setdefault((row.network, row.threshold), {"asr": {}, "detection": {}})
        if row.role == "clean_test":
            entry["clean_accuracy"] = row.accuracy
            if row.flagged is not None:
                entry["false_alarms"] = row.flagged
        else:
            entry["asr"][row.poison_name] = row.accuracy
            if row.flagged is not None:
                entry["detection"][row.poison_name] = row.flagged
    return {key: Metrics(**values) for key, values in collected.items()}
