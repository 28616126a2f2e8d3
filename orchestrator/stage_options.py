"""defend's options for every stage with settings, made from the stage declarations (pipeline.contract).

Each such stage gets a flag that runs it (--fine-tune) and one option per settings field
(--{prefix}{field}: --epochs for fine_tune, whose prefix is empty; --anp-eps for a stage named anp),
with the field's description as help, its default, and its choices where the field has fixed values.
The values are validated once, by the stage's own settings type; an error names the option. No stage
is named here: a stage module loaded through the stage_modules setting gets its options too.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from badnet_prune.numerics.errors import BadInputError
from badnet_prune.pipeline.contract import Stage, configurable

SEPARATOR = "__"  # parameter names: STAGE__FIELD (stage names hold no double underscore: pipeline.contract)


@dataclass(frozen=True)
class StageOption:
    parameter: str
    stage: Stage
    field: str | None  # None: the flag that runs the stage
    option: str


def stage_options() -> list[StageOption]:
    """Every configurable stage's flag and field options; two stages may not claim one option."""
    options: list[StageOption] = []
    for stage in configurable():
        assert stage.settings is not None
        options.append(StageOption(stage.name, stage, None, stage.flag))
        for field in stage.settings.model_fields:
            option = "--" + stage.options_prefix + field.replace("_", "-")
            options.append(StageOption(f"{stage.name}{SEPARATOR}{field}", stage, field, option))
    seen: dict[str, str] = {}
    for entry in options:
        if entry.option in seen:
            raise ValueError(f"option {entry.option} is claimed by stages {seen[entry.option]} and {entry.stage.name}")
        seen[entry.option] = entry.stage.name
    return options


def with_stage_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` (which takes **stage_values) with a typer parameter for every stage option."""
    signature = inspect.signature(command, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    added = [inspect.Parameter(entry.parameter, inspect.Parameter.KEYWORD_ONLY, default=_default(entry),
                               annotation=_annotation(entry)) for entry in stage_options()]
    command.__signature__ = signature.replace(parameters=[*fixed, *added])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in [*fixed, *added]}
    return command


def stage_tables(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings table of each stage whose flag is on, from the parameters with_stage_options added,
    validated by the stage's settings type; an option given without its stage's flag is refused."""
    tables: dict[str, dict[str, Any]] = {}
    for entry in stage_options():
        if entry.field is not None:
            continue
        given = {option.field: values[option.parameter] for option in stage_options()
                 if option.stage is entry.stage and option.field is not None
                 and values.get(option.parameter) is not None}
        if not values.get(entry.parameter):
            if given:
                raise BadInputError(_option_of(entry.stage, next(iter(given))), f"only with {entry.stage.flag}")
            continue
        tables[entry.stage.name] = validated(entry.stage, given)
    return tables


def validated(stage: Stage, given: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's settings from option values (or a notebook's mapping), as JSON; an error names the option."""
    assert stage.settings is not None
    try:
        return stage.settings.model_validate(dict(given)).model_dump(mode="json")
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        option = _option_of(stage, field) if field in stage.settings.model_fields else stage.flag
        message = first["msg"].removeprefix("Value error, ")
        raise BadInputError(option, f"{message}, got {first.get('input')!r}") from None


def _option_of(stage: Stage, field: str) -> str:
    return "--" + stage.options_prefix + field.replace("_", "-")


def _default(entry: StageOption) -> Any:
    return False if entry.field is None else None


def _annotation(entry: StageOption) -> Any:
    if entry.field is None:
        return Annotated[bool, typer.Option(entry.option, help=f"Run {entry.stage.name}: {entry.stage.description}.")]
    assert entry.stage.settings is not None
    info: FieldInfo = entry.stage.settings.model_fields[entry.field]
    default = info.get_default(call_default_factory=True)
    shown = default.value if isinstance(default, enum.Enum) else default
    described = (info.description or entry.field.replace("_", " ")).rstrip(".")
    given = "required" if info.is_required() else f"default {shown}"
    text = f"{entry.stage.name}: {described} ({given}; only with {entry.stage.flag})."
    return Annotated[_option_type(info) | None, typer.Option(entry.option, help=text, show_default=False)]


def _option_type(info: FieldInfo) -> Any:
    """The field's type as typer takes it: fixed values stay a Literal (typer shows and checks the choices), a
    tuple of values is an option given once per value."""
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        return annotation
    if get_origin(annotation) is tuple:
        element = get_args(annotation)[0]
        return list[get_args(element)[0] if get_origin(element) is Annotated else element]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        raise TypeError(f"settings field of type {annotation.__name__} has no command-line form")
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    return args[0] if get_origin(annotation) is not None and len(args) == 1 else annotation
