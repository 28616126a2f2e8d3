"""Registering a sweep: its models, data files (with sha256) and every task it will need.

Planning reads file metadata only (hashes, counts, the prune layer's filter count); it never
loads a model into TensorFlow. A model whose files are unusable is recorded as failed here,
with its reason, and the others are planned as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from badnet_prune.data import open_data_file
from badnet_prune.errors import BadInputError
from badnet_prune.hashing import sha256_file, sha256_files
from badnet_prune.model_inspect import prune_layer_filters
from db.repository import add_model, create_sweep, set_model_status, set_sweep_status, upsert_data_file, upsert_task
from orchestrator.sweep_file import ModelSpec, SweepSpec


@dataclass(frozen=True)
class PlannedSweep:
    sweep_id: int
    rank_tasks: list[tuple[int, int]]  # (task id, model id) to send first
    finish_task: int
    failed: dict[str, str]  # model name -> reason


def channel_ranges(channel_count: int, range_size: int) -> list[tuple[int, int]]:
    """Steps 0..C in contiguous ranges [a, b) of at most range_size steps."""
    steps = channel_count + 1
    return [(start, min(start + range_size, steps)) for start in range(0, steps, range_size)]


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
    config = {**spec.source, **(extra_config or {}), "trust_model_code": spec.trust_model_code}
    sweep_id = create_sweep(
        session, name=spec.name, config=config, thresholds=spec.thresholds, policy=spec.policy,
        prune_layer=spec.prune_layer, rank_layer=spec.rank_layer, range_size=spec.range_size,
        artifact_dir=str(Path(artifact_dir).resolve()),
    )
    rank_tasks: list[tuple[int, int]] = []
    failed: dict[str, str] = {}
    if hashes is None:
        hashes = sha256_files(sweep_files(spec))
    for model in spec.models:
        try:
            model_id, channels = _register_model(session, sweep_id, spec, model, hashes)
        except BadInputError as error:
            failed[model.name] = str(error)
            model_id = add_model(session, sweep_id, name=model.name, path=str(model.path), sha256="",
                                 input_scale=model.input_scale, data=[])
            set_model_status(session, model_id, "failed", error=str(error))
            continue
        rank_tasks.append((upsert_task(session, sweep_id, model_id, "rank", ""), model_id))
        for start, stop in channel_ranges(channels, spec.range_size):
            upsert_task(session, sweep_id, model_id, "prune_range", f"{start}-{stop}")
        for threshold in spec.thresholds:
            upsert_task(session, sweep_id, model_id, "threshold", f"{threshold:g}")
    finish_task = upsert_task(session, sweep_id, None, "finish", "")
    set_sweep_status(session, sweep_id, "running")
    return PlannedSweep(sweep_id, rank_tasks, finish_task, failed)


def _data_files(model: ModelSpec) -> list[tuple[str, str, Path]]:
    files = [("clean_valid", "", model.clean_valid), ("clean_test", "", model.clean_test)]
    for poisoned in model.poisoned:
        files += [("poisoned_valid", poisoned.name, poisoned.valid), ("poisoned_test", poisoned.name, poisoned.test)]
    return files


def _model_files(model: ModelSpec) -> list[Path]:
    return [model.path, *(path for _, _, path in _data_files(model))]


def _register_model(
    session: Session, sweep_id: int, spec: SweepSpec, model: ModelSpec, hashes: dict[str, str]
) -> tuple[int, int]:
    def sha256(path: Path) -> str:
        return hashes.get(str(path)) or sha256_file(path)

    channels = prune_layer_filters(model.path, spec.prune_layer)
    data = []
    for role, poison_name, path in _data_files(model):
        count = open_data_file(path).count
        data.append((role, poison_name, upsert_data_file(session, path, sha256(path), count)))
    model_id = add_model(
        session, sweep_id, name=model.name, path=str(model.path), sha256=sha256(model.path),
        input_scale=model.input_scale, data=data,
    )
    set_model_status(session, model_id, "pending", channel_count=channels)
    return model_id, channels
