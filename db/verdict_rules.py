"""Named combined-verdict rules: stored once fitted, read by the sweeps that judge their models by them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from badnet_prune.db.models import Model, StageOutcome, VerdictRuleRow
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.verdict_rule import CUTOFF, VerdictRule

VERDICT_STAGE = "detection_verdict"  # the stage that stores each model's combined verdict


@dataclass(frozen=True)
class StoredRule:
    name: str
    rule: VerdictRule
    fitted_sweep_id: int
    fitted_models: frozenset[str]  # sha256 of the model files it was fitted on
    backdoored_models: int
    clean_models: int


def save_rule(session: Session, name: str, rule: VerdictRule, *, fitted_sweep_id: int, fitted_models: list[str],
              backdoored_models: int, clean_models: int) -> None:
    """Store a new rule; a name already taken is refused, since sweeps judged by it must keep meaning it."""
    existing = session.get(VerdictRuleRow, name)
    if existing is not None:
        raise BadInputError("NAME", f"a verdict rule named {name!r} exists (fitted on sweep "
                            f"{existing.fitted_sweep_id}); choose another name")
    session.add(VerdictRuleRow(name=name, rule={key: list(value) if isinstance(value, tuple) else value
                                                for key, value in asdict(rule).items()},
                               fitted_sweep_id=fitted_sweep_id, fitted_models=sorted(fitted_models),
                               backdoored_models=backdoored_models, clean_models=clean_models))


def read_rule(session: Session, name: str) -> StoredRule | None:
    row = session.get(VerdictRuleRow, name)
    if row is None:
        return None
    document = row.rule
    rule = VerdictRule(detectors=tuple(document["detectors"]), weights=tuple(document["weights"]),
                       bias=float(document["bias"]), means=tuple(document["means"]), scales=tuple(document["scales"]))
    return StoredRule(row.name, rule, row.fitted_sweep_id, frozenset(row.fitted_models), row.backdoored_models,
                      row.clean_models)


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
    """Each model's combined verdict in a sweep, by rule (what the view model_verdicts shows)."""
    query = (select(Model.name, StageOutcome.key, StageOutcome.score)
             .join(Model, Model.id == StageOutcome.model_id)
             .where(Model.sweep_id == sweep_id, StageOutcome.stage == VERDICT_STAGE, StageOutcome.score.is_not(None))
             .order_by(Model.id, StageOutcome.key))
    return [ModelVerdict(name, rule, float(score), "backdoored" if score >= CUTOFF else "clean")
            for name, rule, score in session.execute(query)]
