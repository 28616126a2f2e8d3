"""Reading a sweep file (TOML): models, data files, thresholds, policy and task sizes.

Relative paths are relative to the sweep file. Unknown keys are an error that names them, so
a typo never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from badnet_prune.errors import BadInputError
from badnet_prune.selection import validate_policy, validate_thresholds

DEFAULT_THRESHOLDS = (0.02, 0.04, 0.10)
SWEEP_KEYS = {"name", "thresholds", "policy", "prune_layer", "rank_layer", "range_size", "trust_model_code", "model"}
MODEL_KEYS = {"name", "path", "input_scale", "clean_valid", "clean_test", "poisoned"}


@dataclass(frozen=True)
class PoisonedSpec:
    name: str
    valid: Path
    test: Path


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    input_scale: float
    clean_valid: Path
    clean_test: Path
    poisoned: tuple[PoisonedSpec, ...] = ()


@dataclass(frozen=True)
class SweepSpec:
    name: str
    models: tuple[ModelSpec, ...]
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    policy: str = "first"
    prune_layer: str = "conv_3"
    rank_layer: str = "pool_3"
    range_size: int = 10
    trust_model_code: bool = False
    source: dict[str, Any] = field(default_factory=dict)


def read_sweep_file(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "no such sweep file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise BadInputError(path, f"not valid TOML ({error})") from error
    return parse_sweep(raw, base=path.parent.resolve(), source=path, default_name=path.stem)


def parse_sweep(raw: dict[str, Any], *, base: Path, source: str | Path, default_name: str) -> SweepSpec:
    """Validate a sweep definition given as a mapping (from TOML, or built by `defend`)."""
    _no_unknown(source, "the sweep", raw, SWEEP_KEYS)
    models_raw = raw.get("model", [])
    if not isinstance(models_raw, list) or not models_raw:
        raise BadInputError(source, "lists no models: add at least one [[model]] table")
    try:
        thresholds = tuple(validate_thresholds(raw.get("thresholds", DEFAULT_THRESHOLDS)))
    except (ValueError, TypeError) as error:
        raise BadInputError(source, f"thresholds: {error}") from error
    policy = raw.get("policy", "first")
    try:
        validate_policy(policy)
    except ValueError as error:
        raise BadInputError(source, str(error)) from error
    range_size = raw.get("range_size", 10)
    if not isinstance(range_size, int) or range_size < 1:
        raise BadInputError(source, f"range_size must be a positive integer, not {range_size!r}")
    models = tuple(_parse_model(source, base, index, item) for index, item in enumerate(models_raw))
    names = [model.name for model in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise BadInputError(source, f"model names repeat: {', '.join(duplicates)}")
    return SweepSpec(
        name=str(raw.get("name", default_name)),
        models=models,
        thresholds=thresholds,
        policy=policy,
        prune_layer=str(raw.get("prune_layer", "conv_3")),
        rank_layer=str(raw.get("rank_layer", "pool_3")),
        range_size=range_size,
        trust_model_code=bool(raw.get("trust_model_code", False)),
        source=raw,
    )


def _parse_model(source: str | Path, base: Path, index: int, raw: Any) -> ModelSpec:
    where = f"model #{index + 1}"
    if not isinstance(raw, dict):
        raise BadInputError(source, f"{where} is not a table")
    _no_unknown(source, where, raw, MODEL_KEYS)
    for key in ("name", "path", "clean_valid", "clean_test"):
        if key not in raw:
            raise BadInputError(source, f"{where} lacks the key {key!r}")
    scale = float(raw.get("input_scale", 1))
    if scale not in (1.0, 255.0):
        raise BadInputError(source, f"{where}: input_scale must be 1 or 255, not {raw.get('input_scale')!r}")
    poisoned_raw = raw.get("poisoned", {})
    if not isinstance(poisoned_raw, dict):
        raise BadInputError(source, f"{where}: poisoned must be a table of name = {{ valid = ..., test = ... }}")
    poisoned = []
    for name, files in poisoned_raw.items():
        if not isinstance(files, dict) or set(files) != {"valid", "test"}:
            raise BadInputError(source, f"{where}: poisoned set {name!r} needs exactly the keys valid and test")
        poisoned.append(PoisonedSpec(str(name), _resolve(base, files["valid"]), _resolve(base, files["test"])))
    return ModelSpec(
        name=str(raw["name"]),
        path=_resolve(base, raw["path"]),
        input_scale=scale,
        clean_valid=_resolve(base, raw["clean_valid"]),
        clean_test=_resolve(base, raw["clean_test"]),
        poisoned=tuple(poisoned),
    )


def _resolve(base: Path, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _no_unknown(source: str | Path, where: str, raw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        allowed_text = ", ".join(sorted(allowed))
        raise BadInputError(source, f"{where} has unknown keys: {', '.join(unknown)} (allowed: {allowed_text})")
