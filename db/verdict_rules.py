"""Named combined-verdict rules: stored once fitted, read by the sweeps that judge their models by them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import column, select, table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from badnet_prune.db.models import Model, VerdictRuleRow
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.verdict_rule import VerdictRule

# the view of migration 0011: each model's combined verdict by rule, as the detection_verdict stage stored it
MODEL_VERDICTS = table("model_verdicts", column("sweep_id"), column("model_id"), column("model"), column("rule"),
                       column("probability"), column("verdict"))


@dataclass(frozen=True)
class StoredRule:
    """A rule as stored: what judges a model, and what it was fitted on, so that those models are refused."""

    name: str
    rule: VerdictRule
    fitted_sweep_id: int
    fitted_models: frozenset[str]  # sha256 of the model files it was fitted on
    backdoored_models: int
    clean_models: int
    # the settings of each detector's table in the sweep it was fitted on ({} for a rule stored without them)
    detector_settings: dict[str, dict[str, Any]] = field(default_factory=dict)


def save_rule(session: Session, name: str, rule: VerdictRule, *, fitted_sweep_id: int, fitted_models: list[str],
              backdoored_models: int, clean_models: int,
              detector_settings: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Store a new rule, with the settings its detectors were run with (by table); a name already taken is
    refused, since sweeps judged by it must keep meaning it (the primary key decides, also when another process
    stored the same name a moment ago)."""
    document = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(rule).items()}
    document["detector_settings"] = {table: dict(values) for table, values in (detector_settings or {}).items()}
    try:
        with session.begin_nested():
            session.add(VerdictRuleRow(name=name, rule=document,
                                       fitted_sweep_id=fitted_sweep_id, fitted_models=sorted(fitted_models),
                                       backdoored_models=backdoored_models, clean_models=clean_models))
    except IntegrityError:
        raise BadInputError("NAME", f"a verdict rule named {name!r} exists; choose another name") from None


def read_rule(session: Session, name: str) -> StoredRule | None:
    """The rule stored under `name` (None: no such rule); a row edited into nonsense is refused in one line."""
    row = session.get(VerdictRuleRow, name)
    if row is None:
        return None
    document = row.rule
    try:
        rule = VerdictRule(detectors=tuple(str(d) for d in document["detectors"]),
                           weights=tuple(float(w) for w in document["weights"]), bias=float(document["bias"]),
                           means=tuple(float(m) for m in document["means"]),
                           scales=tuple(float(s) for s in document["scales"]))
        detector_settings = {str(table): dict(values) for table, values in
                             dict(document.get("detector_settings", {})).items()}
    except (KeyError, TypeError, ValueError) as error:
        raise BadInputError(f"verdict rule {name!r}", f"its stored row is malformed: {error}") from None
    values = (*rule.weights, rule.bias, *rule.means, *rule.scales)
    lengths = {len(rule.detectors), len(rule.weights), len(rule.means), len(rule.scales)}
    if len(lengths) != 1 or not all(math.isfinite(v) for v in values) or min(rule.scales, default=1.0) <= 0:
        raise BadInputError(f"verdict rule {name!r}", "its stored row is malformed: lengths differ, or a value is "
                            "not finite, or a scale is not positive")
    return StoredRule(row.name, rule, row.fitted_sweep_id, frozenset(row.fitted_models), row.backdoored_models,
                      row.clean_models, detector_settings)


def model_file_hashes(session: Session, sweep_id: int) -> dict[int, str]:
    """Each model of a sweep: the sha256 of its file, which names it across sweeps."""
    return dict(session.execute(select(Model.id, Model.sha256).where(Model.sweep_id == sweep_id)).all())


@dataclass(frozen=True)
class ModelVerdict:
    model: str
    rule: str
    probability: float
    verdict: str  # backdoored, or clean: the probability at or above the cut-off, or below


def sweep_verdicts(session: Session, sweep_id: int) -> list[ModelVerdict]:
    """Each model's combined verdict in a sweep, by rule: the view model_verdicts, which SQL users read too."""
    view = MODEL_VERDICTS.c
    query = (select(view.model, view.rule, view.probability, view.verdict).where(view.sweep_id == sweep_id)
             .order_by(view.model_id, view.rule))
    return [ModelVerdict(model, rule, float(probability), verdict)
            for model, rule, probability, verdict in session.execute(query) if probability is not None]
