"""Registering a sweep: its models, data files (with sha256) and every task its stages plan.

Planning reads file metadata only (hashes, counts, the prune layer's filter count); it never
loads a model into TensorFlow. The tasks come from the stage declarations (pipeline.contract):
each stage plans its own for every model, and the sweep's own stages once. A model whose files
are unusable is recorded as failed here, with its reason, and the others are planned as usual.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from badnet_prune.db.repository import (
    Truth,
    add_model,
    create_sweep,
    set_model_status,
    set_sweep_status,
    upsert_data_file,
)
from badnet_prune.db.tasks import plan_all
from badnet_prune.files.data import open_data_file
from badnet_prune.files.hashing import sha256_file, sha256_files
from badnet_prune.files.model_inspect import outline_model
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.thresholds import Threshold, parse_thresholds
from badnet_prune.orchestrator.sweep_file import ModelSpec, SweepSpec
from badnet_prune.pipeline.contract import ModelFacts, PlanContext, Scope, Stage, SweepPlan, stages


@dataclass(frozen=True)
class PlannedSweep:
    sweep_id: int
    model_ids: list[int]  # the models planned (not failed at planning)
    failed: dict[str, str]  # model name -> reason
    notes: list[str]  # one line per data file read in another layout than the lab's (files.data)


@dataclass(frozen=True)
class CheckedModel:
    """A model's inputs as checked before registering: the prune layer's channels, each data file's images, and
    the classes the model file declares (None where it does not say plainly; stages that plan per label read it)."""

    channels: int
    counts: dict[Path, int]
    notes: list[str]
    num_classes: int | None = None


# (path, the model's image shape, its classes) -> (images, layout note): what one check of a data file found,
# kept for the sweep's other models, which mostly share their data files
Opened = dict[tuple[Path, tuple[int, int, int] | None, int | None], tuple[int, str | None]]


def check_model_inputs(model: ModelSpec, prune_layer: str, rank_layer: str, opened: Opened | None = None
                       ) -> CheckedModel:
    """Refuse, in one BadInputError line, a model whose files the workers could not use, before anything is
    registered: the model file (its structure, without TensorFlow), its prune and rank layers (listing the
    model's Conv2D and pooling layers where one is missing), and each data file against the model's input shape
    (channels first or last) and classes, as `evaluate` checks them. `opened` spares a sweep's models sharing
    data files (and input shape and classes) from reading them again."""
    outline = outline_model(model.path)
    channels = outline.prune_filters(model.path, prune_layer, rank_layer)
    opened = {} if opened is None else opened
    counts: dict[Path, int] = {}
    notes: list[str] = []
    for _, _, path in _data_files(model):
        key = (path, outline.image_shape, outline.num_classes)
        if key not in opened:
            data_file = open_data_file(path, outline.image_shape, outline.num_classes)
            opened[key] = (data_file.count, data_file.layout_note)
        counts[path], note = opened[key]
        if note is not None and note not in notes:
            notes.append(note)
    return CheckedModel(channels, counts, notes, outline.num_classes)


def sweep_files(spec: SweepSpec) -> list[Path]:
    """Every model and data file of the sweep, for hashing them ahead of planning."""
    return [path for model in spec.models for path in _model_files(model)]


def register_sweep(
    session: Session,
    spec: SweepSpec,
    artifact_dir: Path,
    extra_config: dict | None = None,
    hashes: dict[str, str] | None = None,
) -> PlannedSweep:
    """Record the sweep and plan its tasks; extra_config (e.g. flat_artifacts) is stored with it.

    hashes: sha256 by path, computed ahead (sweep_files); files missing from it are hashed here.
    """
    config = {**_json_safe(spec.source), **(extra_config or {}), "trust_model_code": spec.trust_model_code,
              **{name: settings.model_dump(mode="json") for name, settings in spec.stage_settings.items()}}
    if hashes is None:
        hashes = sha256_files(sweep_files(spec))
    running = [stage for stage in stages() if stage.enabled(config)]
    model_hashes = [found for model in spec.models if (found := hashes.get(str(model.path)))]
    for stage in running:
        if stage.check is not None:
            stage.check(session, stage.sweep_settings(config), config, model_hashes)
    thresholds = parse_thresholds(spec.thresholds)
    sweep_id = create_sweep(
        session, name=spec.name, config=config, thresholds=[t.key for t in thresholds], policy=spec.policy,
        prune_layer=spec.prune_layer, rank_layer=spec.rank_layer, range_size=spec.range_size,
        artifact_dir=str(Path(artifact_dir).resolve()),
    )
    planned: list[int] = []
    failed: dict[str, str] = {}
    notes: list[str] = []
    data_ids: dict[tuple[str, str], int] = {}  # (path, sha256) -> id: many models share their data files
    opened: Opened = {}
    tasks: list[tuple[int | None, str, str, dict[str, Any], int]] = []  # every model's, planned in one statement
    plan = SweepPlan(thresholds=thresholds, policy=spec.policy, range_size=spec.range_size,
                     prune_layer=spec.prune_layer, rank_layer=spec.rank_layer)
    for model in spec.models:
        try:
            model_id, checked = _register_model(session, sweep_id, spec, model, hashes, data_ids, opened)
        except BadInputError as error:
            failed[model.name] = str(error)
            model_id = add_model(session, sweep_id, name=model.name, path=str(model.path), sha256="",
                                 input_scale=model.input_scale, data=[], truth=_truth(model))
            set_model_status(session, model_id, "failed", error=str(error))
            continue
        facts = ModelFacts(name=model.name, channel_count=checked.channels, class_count=checked.num_classes)
        tasks += [task for stage in running if stage.scope is Scope.MODEL
                  for task in _planned(stage, model_id, facts, plan, config)]
        planned.append(model_id)
        notes += [note for note in checked.notes if note not in notes]
    tasks += [task for stage in running if stage.scope is Scope.SWEEP
              for task in _planned(stage, None, None, plan, config)]
    plan_all(session, sweep_id, tasks)
    set_sweep_status(session, sweep_id, "running")
    return PlannedSweep(sweep_id, planned, failed, notes)


def _planned(stage: Stage, model_id: int | None, facts: ModelFacts | None, plan: SweepPlan,
             config: dict[str, Any]) -> list[tuple[int | None, str, str, dict[str, Any], int]]:
    """One stage's tasks for a model (or the sweep), each with its progress units."""
    context = PlanContext(model=facts, sweep=plan, settings=stage.sweep_settings(config))
    return [(model_id, stage.name, key, arguments, stage.units(arguments, config))
            for key, arguments in stage.planned(context)]


def _json_safe(value: Any) -> Any:
    """The sweep definition as JSON can hold it (thresholds as their keys), to be stored and replayed."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, Threshold):
        return value.key
    if isinstance(value, Path):
        return str(value)
    return value


def _truth(model: ModelSpec) -> Truth | None:
    """The model's [model.truth] as the database stores it (None: the sweep file gives none)."""
    if model.truth is None:
        return None
    return Truth(model.truth.backdoored, model.truth.attack, model.truth.targets)


def _data_files(model: ModelSpec) -> list[tuple[str, str, Path]]:
    files = [("clean_valid", "", model.clean_valid), ("clean_test", "", model.clean_test)]
    for poisoned in model.poisoned:
        files += [("poisoned_valid", poisoned.name, poisoned.valid), ("poisoned_test", poisoned.name, poisoned.test)]
    return files


def _model_files(model: ModelSpec) -> list[Path]:
    return [model.path, *(path for _, _, path in _data_files(model))]


def _register_model(
    session: Session, sweep_id: int, spec: SweepSpec, model: ModelSpec, hashes: dict[str, str],
    data_ids: dict[tuple[str, str], int],
    opened: Opened,
) -> tuple[int, CheckedModel]:
    """The model's id and what check_model_inputs found (channels, classes, layout notes); each data file is recorded
    once per sweep (data_ids)."""
    def sha256(path: Path) -> str:
        return hashes.get(str(path)) or sha256_file(path)

    checked = check_model_inputs(model, spec.prune_layer, spec.rank_layer, opened)
    data = []
    for role, poison_name, path in _data_files(model):
        known = (str(path), sha256(path))
        if known not in data_ids:
            data_ids[known] = upsert_data_file(session, path, known[1], checked.counts[path])
        data.append((role, poison_name, data_ids[known]))
    model_id = add_model(
        session, sweep_id, name=model.name, path=str(model.path), sha256=sha256(model.path),
        input_scale=model.input_scale, data=data, truth=_truth(model),
    )
    set_model_status(session, model_id, "pending", channel_count=checked.channels)
    return model_id, checked
