"""What a task needs to know about its model, read in one place: files, hashes and sweep settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from badnet_prune.db.models import DataFile, Model, ModelData, Sweep
from badnet_prune.numerics.thresholds import Threshold, parse_threshold


@dataclass(frozen=True)
class DataRef:
    path: str
    sha256: str


@dataclass(frozen=True)
class ModelInputs:
    model_id: int
    sweep_id: int
    name: str
    path: str
    sha256: str
    input_scale: float  # AUTO_INPUT_SCALE (0) until the rank stage has chosen it
    input_scale_auto: bool  # the rank stage chooses the scale (the sweep asked for "auto")
    status: str
    acc0: float | None
    channel_count: int | None
    thresholds: tuple[Threshold, ...]
    policy: str
    prune_layer: str
    rank_layer: str
    artifact_dir: str
    config: dict[str, Any]  # the sweep's definition as stored: stage settings are read from it by their stage
    data: dict[str, dict[str, DataRef]] = field(default_factory=dict)  # role -> poison name -> file

    @property
    def trust_model_code(self) -> bool:
        """The sweep allowed model files that carry code (only a JSON true counts)."""
        return self.config.get("trust_model_code") is True

    @property
    def flat_artifacts(self) -> bool:
        """defend's one-model sweep writes its files straight into its folder (only a JSON true counts)."""
        return self.config.get("flat_artifacts") is True


def model_inputs(session: Session, model_id: int) -> ModelInputs:
    model = session.get(Model, model_id, populate_existing=True)
    if model is None:
        raise LookupError(f"no model {model_id}")
    sweep = session.get(Sweep, model.sweep_id, populate_existing=True)
    assert sweep is not None  # the foreign key guarantees it
    query = (
        select(ModelData.role, ModelData.poison_name, DataFile.path, DataFile.sha256)
        .join(DataFile, DataFile.id == ModelData.data_file_id)
        .where(ModelData.model_id == model_id)
        .order_by(ModelData.role, ModelData.poison_name)
    )
    data: dict[str, dict[str, DataRef]] = {}
    for role, poison_name, path, sha256 in session.execute(query):
        data.setdefault(role, {})[poison_name] = DataRef(path, sha256)
    return ModelInputs(
        model_id=model.id,
        sweep_id=sweep.id,
        name=model.name,
        path=model.path,
        sha256=model.sha256,
        input_scale=model.input_scale,
        input_scale_auto=model.input_scale_auto,
        status=model.status,
        acc0=model.acc0,
        channel_count=model.channel_count,
        thresholds=tuple(parse_threshold(key) for key in sweep.thresholds),
        policy=sweep.policy,
        prune_layer=sweep.prune_layer,
        rank_layer=sweep.rank_layer,
        artifact_dir=sweep.artifact_dir,
        config=dict(sweep.config),
        data=data,
    )


def save_input_scale(session: Session, model_id: int, scale: float, *, auto: bool, note: str) -> None:
    """Record the scale the rank stage chose or checked, and its one line; later tasks re-read it."""
    values = {"input_scale": scale, "input_scale_auto": auto, "input_scale_note": note}
    session.execute(update(Model).where(Model.id == model_id).values(values))


def input_scale_notes(session: Session, sweep_id: int) -> dict[str, str]:
    """Each model's line on its input scale (models whose rank stage has written one), by model name."""
    query = (
        select(Model.name, Model.input_scale_note)
        .where(Model.sweep_id == sweep_id, Model.input_scale_note.is_not(None))
        .order_by(Model.name)
    )
    return {name: note for name, note in session.execute(query)}
