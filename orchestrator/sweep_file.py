"""Reading a sweep file (TOML): models, data files, thresholds, policy and task sizes.

The file is validated once, here, by strict pydantic models: a boolean is a TOML boolean (the
string "false" is refused, not read as true), numbers are numbers within their ranges, names are
identifiers (badnet_prune.numerics.names), and unknown keys are an error that names them, so a typo never
silently falls back to a default. Every problem is one BadInputError line:
`FILE: key path: what was expected, got what` (list positions counted from 1: model #1).
Relative paths are relative to the sweep file.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    PrivateAttr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.input_scale import AUTO_INPUT_SCALE, SCALES
from badnet_prune.numerics.names import NAME_PATTERN, Name
from badnet_prune.numerics.selection import validate_policy
from badnet_prune.numerics.thresholds import Threshold, parse_thresholds

DEFAULT_THRESHOLDS = parse_thresholds(("0.02", "0.04", "0.1"))
MAX_RANGE_SIZE = 100_000
MAX_TEXT = 200  # sweep and layer names: text, but not a megabyte of it


def _resolve(value: object, info: ValidationInfo) -> Path:
    """A file path from the sweep file, made absolute against the file's folder."""
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError("expected a file path (a non-empty string)")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (info.context["base"] / path).resolve()


SCALE_EXPECTED = 'expected 1 (raw 0..255 pixels) or 255 (pixels divided by 255), or "auto" (the default)'


def _auto_scale(value: object) -> object:
    """"auto" as AUTO_INPUT_SCALE (the rank stage then chooses); a number 0 is refused, never read as auto."""
    if value == "auto":
        return AUTO_INPUT_SCALE
    if isinstance(value, int | float) and not isinstance(value, bool) and value == AUTO_INPUT_SCALE:
        raise ValueError(SCALE_EXPECTED)
    return value


def _input_scale(value: float) -> float:
    if value not in (AUTO_INPUT_SCALE, *SCALES):
        raise ValueError(SCALE_EXPECTED)
    return float(value)


FilePath = Annotated[Path, BeforeValidator(_resolve)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
InputScale = Annotated[float, BeforeValidator(_auto_scale), AfterValidator(_input_scale)]


class _Spec(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class PoisonedSpec(_Spec):
    """A poisoned set: validation data (design) and test data (evaluation), labelled with the attacker's targets."""

    name: Name
    valid: FilePath
    test: FilePath


MAX_CLASS_ID = 2**31 - 1


def _identifier(value: str) -> str:
    """An attack's name: letters, digits, '_' or '-' (as a model name, but "clean" is one)."""
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"{value[:80]!r} is not an identifier: 1 to 64 letters, digits, '_' or '-', "
                         "starting with a letter or digit")
    return value


def _class_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CLASS_ID:
        raise ValueError(f"{what} is {value!r}, expected a class id (an integer from 0 to {MAX_CLASS_ID})")
    return value


def _targets(value: object) -> tuple[int, ...] | dict[str, int]:
    """A list of class ids, or a table of poisoned-set name = class id."""
    if isinstance(value, list | tuple):
        return tuple(_class_id(item, f"target {index + 1}") for index, item in enumerate(value))
    if isinstance(value, dict):
        return {name: _class_id(item, f"the target of {name!r}")
                for name, item in value.items()}
    raise ValueError("expected a list of class ids, or a table of poisoned-set name = class id")


class TruthSpec(_Spec):
    """A model's ground truth, where known (the zoo writes it; TrojAI's metadata gives it): [model.truth].

    backdoored: whether the model has a backdoor. attack: what kind, an identifier (the zoo's: clean,
    sunglasses, pruning-aware, patch, blended, multi-trigger). targets: the attacker's target labels,
    as a list, or as a table naming for each of the model's poisoned sets its target. A model that is
    not backdoored has no targets.
    """

    backdoored: StrictBool
    attack: Annotated[str, AfterValidator(_identifier)] | None = None
    targets: Annotated[tuple[int, ...] | dict[str, int], BeforeValidator(_targets)] = ()

    @model_validator(mode="after")
    def _clean_has_no_targets(self) -> TruthSpec:
        if not self.backdoored and self.targets:
            raise ValueError("a model that is not backdoored has no targets: remove `targets` or set backdoored = true")
        return self


class ModelSpec(_Spec):
    name: Name
    path: FilePath
    input_scale: InputScale = AUTO_INPUT_SCALE  # "auto" (the default): chosen by the rank stage
    clean_valid: FilePath
    clean_test: FilePath
    poisoned: tuple[PoisonedSpec, ...] = ()
    truth: TruthSpec | None = None  # [model.truth]: ground truth, for the leaderboard

    @model_validator(mode="after")
    def _targets_name_poisoned_sets(self) -> ModelSpec:
        if self.truth is not None and isinstance(self.truth.targets, dict):
            names = {poisoned.name for poisoned in self.poisoned}
            unknown = [name for name in self.truth.targets if name not in names]
            if unknown:
                raise ValueError(f"truth.targets names {', '.join(map(repr, unknown))}, not among the model's "
                                 f"poisoned sets ({', '.join(sorted(names)) or 'none'}); a list of targets "
                                 "names no set")
        return self

    @field_validator("poisoned", mode="before")
    @classmethod
    def _poisoned_table(cls, value: object) -> object:
        """The file's `poisoned = { NAME = { valid = ..., test = ... } }` as a list of PoisonedSpec inputs."""
        if not isinstance(value, dict):
            raise ValueError("expected a table of NAME = { valid = ..., test = ... }")
        _no_repeats("poisoned set names", list(value))
        return tuple({"name": name, **files} if isinstance(files, dict) else files for name, files in value.items())


class SweepSpec(_Spec):
    name: Text
    models: tuple[ModelSpec, ...] = Field(validation_alias="model")  # parse_sweep refuses an empty list
    thresholds: tuple[InstanceOf[Threshold], ...] = DEFAULT_THRESHOLDS
    policy: Annotated[str, AfterValidator(validate_policy)] = "first"
    prune_layer: Text = "conv_3"
    rank_layer: Text = "pool_3"
    range_size: int = Field(10, ge=1, le=MAX_RANGE_SIZE)
    trust_model_code: StrictBool = False
    _source: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> dict[str, Any]:
        """The mapping this spec was read from, as given (stored with the sweep for the record)."""
        return self._source

    @property
    def stage_settings(self) -> dict[str, BaseModel]:
        """The settings of each stage the sweep names (its [stage] tables), by stage name, validated."""
        return {name: value for name in _stage_tables() if isinstance(value := getattr(self, name, None), BaseModel)}

    @field_validator("models", mode="before")
    @classmethod
    def _model_tables(cls, value: object) -> object:
        """TOML's array of [[model]] tables arrives as a list; the spec keeps a tuple."""
        return tuple(value) if isinstance(value, list) else value

    @field_validator("thresholds", mode="before")
    @classmethod
    def _thresholds(cls, value: object) -> tuple[Threshold, ...]:
        return parse_thresholds(value)

    @model_validator(mode="after")
    def _distinct_models(self) -> SweepSpec:
        _no_repeats("model names", [model.name for model in self.models])
        return self


def _stage_tables() -> dict[str, type[BaseModel]]:
    """Each stage with settings (pipeline.contract), by name: its sweep-file table."""
    from badnet_prune.pipeline.contract import configurable

    return {stage.name: stage.settings for stage in configurable() if stage.settings is not None}


_spec_types: dict[tuple[str, ...], type[SweepSpec]] = {}


def sweep_spec_type() -> type[SweepSpec]:
    """SweepSpec with an optional table per declared stage with settings ([fine_tune], and those of the
    stage_modules setting), made once per set of stages: the sweep file knows no stage by name."""
    tables = _stage_tables()
    key = tuple(sorted(tables))
    if key not in _spec_types:
        clash = sorted(set(tables) & set(SweepSpec.model_fields))
        if clash:
            raise ValueError(f"stage names clash with sweep-file keys: {', '.join(clash)}")
        fields: dict[str, Any] = {name: (settings | None, None) for name, settings in tables.items()}
        _spec_types[key] = create_model("SweepSpec", __base__=SweepSpec, **fields)
    return _spec_types[key]


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
    if not isinstance(raw.get("model", []), list) or not raw.get("model"):
        raise BadInputError(source, "lists no models: add at least one [[model]] table")
    try:
        spec = sweep_spec_type().model_validate({"name": default_name, **raw}, context={"base": Path(base)})
    except ValidationError as error:
        raise BadInputError(source, _one_line(error, raw)) from None
    spec._source = raw
    return spec


def _no_repeats(what: str, names: list[str]) -> None:
    """Names that differ only in case would collide in file names on some file systems: refused too."""
    folded = [name.lower() if isinstance(name, str) else name for name in names]
    repeated = sorted({name for name, key in zip(names, folded, strict=True) if folded.count(key) > 1})
    if repeated:
        raise ValueError(f"{what} repeat (ignoring case): {', '.join(map(str, repeated))}")


def _one_line(error: ValidationError, raw: dict[str, Any]) -> str:
    """`key path: what was expected, got what` for each problem pydantic found, joined by '; '."""
    problems = []
    for item in error.errors(include_url=False):
        where = _key_path(item["loc"], raw)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key (allowed: {', '.join(_keys_at(item['loc']))})")
            continue
        if item["type"] == "missing":
            problems.append(f"{where}: missing (required)")
            continue
        got = repr(item.get("input"))
        got = f"{got[:60]}..." if len(got) > 60 else got
        expected = re.sub(r"^\w+ should (be|have) ", "expected ", message).replace(" or instance of ", "")
        expected = re.sub(r"(a valid dictionary)\w+(?:Spec|Settings)", r"\1", expected)
        whole = not item["loc"]  # a check of the whole sweep: its input is the whole file
        # a check of a table or list as a whole says itself which part is wrong: the table is not repeated
        told = item["type"] == "value_error" and isinstance(item.get("input"), dict | list)
        quiet = whole or told or got in expected
        problems.append(f"{where}: {expected}" if quiet else f"{where}: {expected}, got {got}")
    return "; ".join(dict.fromkeys(problems))


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the table holding `loc` may have: the sweep (depth 1), a stage's table such as [fine_tune],
    a [[model]] (3), its [model.truth] (4), a poisoned set (5)."""
    tables = _stage_tables()
    stage_table = tables.get(str(loc[0])) if len(loc) == 2 else None
    truth = TruthSpec if len(loc) == 4 and loc[2] == "truth" else None
    spec = stage_table or truth or {1: sweep_spec_type(), 3: ModelSpec, 5: PoisonedSpec}.get(len(loc),
                                                                                             sweep_spec_type())
    keys = [info.validation_alias or name for name, info in spec.model_fields.items()]
    return sorted(key for key in keys if not (spec is PoisonedSpec and key == "name"))


def _key_path(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """The TOML key of a pydantic location: ('model', 0, 'poisoned', 1, 'valid') -> 'model #1 poisoned.sun.valid'."""
    parts: list[str] = []
    node: Any = raw
    for step in loc:
        if isinstance(step, int):
            if isinstance(node, dict):  # the poisoned table, validated as a list: name the set
                name = list(node)[step] if step < len(node) else step
                bare = isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_-]+", name)
                parts.append(f".{name}" if bare else f".{json.dumps(str(name))[:80]}")  # quoted as TOML does
                node = node.get(name)
            else:
                parts.append(f" #{step + 1}")
                node = node[step] if isinstance(node, list) and step < len(node) else None
            continue
        parts.append(f".{step}" if parts else str(step))
        node = node.get(step) if isinstance(node, dict) else None
    return "".join(parts) or "the sweep"
