"""The stage contract: everything about a stage (a defense, a detector, any step) declared in one module.

A stage declares its typed settings (the sweep file's table and defend's options are made from
them), how it is planned and what it waits for, its job (pure numerics called through the Runtime
protocol), what it stores and how "stored" is checked, its progress unit, and what it adds to
summary.json, the CSV exports and the report (pipeline.presentation). Planning, readiness, release,
resume, dispatch, status, the sweep file, defend and the report read this registry and list no
stages of their own: a new defense is its numerics file plus its stage module.

Ordering is by declaration: a stage may only wait for stages declared before it, so the registry's
order is a topological order of the graph.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from badnet_prune.numerics.thresholds import Threshold

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.pipeline.presentation import Presentation
    from badnet_prune.pipeline.runtime import Runtime

STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
CELERY_PREFIX = "badnet_prune."


class Scope(StrEnum):
    MODEL = "model"  # planned per model; runs once the stages it waits for are done for that model
    SWEEP = "sweep"  # planned once per sweep; runs once every model of the sweep has ended


class StageArguments(BaseModel):
    """A task's typed arguments, stored as JSON in the task row; `key` is their exact identity."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def key(self) -> str:
        return ""


class StageSettings(BaseModel):
    """A stage's sweep-wide settings: the sweep file's [stage] table, defend's --stage options.

    Strict and frozen: a TOML boolean is a boolean, unknown keys are refused, values are bounded.
    Each field's description is its option's help.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


@dataclass(frozen=True)
class ModelFacts:
    """What planning knows of a model from its files' metadata, without loading it."""

    name: str
    channel_count: int  # filters of the prune layer: pruning steps run 0..channel_count
    class_count: int | None  # the model's output classes, where its file says


@dataclass(frozen=True)
class SweepPlan:
    """The sweep-wide settings of the pruning defense every sweep runs."""

    thresholds: tuple[Threshold, ...]
    policy: str
    range_size: int
    prune_layer: str
    rank_layer: str


SettingsT = TypeVar("SettingsT", bound=StageSettings)
ArgumentsT = TypeVar("ArgumentsT", bound=StageArguments)


@dataclass(frozen=True)
class PlanContext(Generic[SettingsT]):
    """What a stage plans from: the model (None for a sweep-scope stage), the sweep, and its own settings."""

    model: ModelFacts | None
    sweep: SweepPlan
    settings: SettingsT | None = None


@dataclass(frozen=True)
class Job(Generic[ArgumentsT, SettingsT]):
    """One task as its job sees it: ids (everything else is read from the database), typed arguments, and
    the stage's settings in this sweep (None for a stage without settings)."""

    task_id: int
    sweep_id: int
    model_id: int | None
    arguments: ArgumentsT
    settings: SettingsT | None


@dataclass(frozen=True)
class Progress:
    """How a stage's work is counted in status and the watcher: `unit` ("steps", "epochs", "labels"), and
    how many of them one task holds."""

    unit: str = "tasks"
    count: Callable[[Any, Any], int] = field(default=lambda arguments, settings: 1)


@dataclass(frozen=True)
class Stage(Generic[ArgumentsT, SettingsT]):
    """One stage of the pipeline.

    settings: None for a stage every sweep runs; else its settings type, and the stage runs only in a
        sweep that enables it (a [name] table in the sweep file, --name for defend), unless
        `always` says it runs with its defaults when not named.
    plan: the arguments of each of its tasks for one model (or once for a sweep-scope stage).
    run: the job: reads what it needs by id through the runtime, writes its results idempotently.
    after: stages whose every task (of the same model) must be done before this one is sent.
    stored: whether a task's results are in the database (resume re-sends a 'done' task whose
        results are missing); None means the task row's state alone tells.
    outcome: the type of the document its tasks store in stage_outcomes, where they store one.
    presentation: the networks it evaluates and what it adds to summaries, exports and the report.
    option_prefix: the prefix of defend's options for its settings ('' keeps them bare).
    settings_from: another stage, declared before it, whose table enables and configures this one (its
        settings are that stage's; it has no table or options of its own): a follow-up step of a stage
        split in many tasks, such as a per-model summary once every task of the model is done.
    check: what the stage needs of the database and the sweep, checked when a sweep that runs it is
        registered, before anything is stored: given the session, its settings, the sweep's config (which
        stages run) and the models' file hashes, it raises BadInputError to refuse the sweep in one line,
        rather than fail every model after hours of other stages' work.
    """

    name: str
    description: str
    arguments: type[ArgumentsT]
    plan: Callable[[PlanContext[SettingsT]], Sequence[ArgumentsT]]
    run: Callable[[Runtime, Job[ArgumentsT, SettingsT]], None]
    after: tuple[str, ...] = ()
    scope: Scope = Scope.MODEL
    settings: type[SettingsT] | None = None
    always: bool = False
    stored: Callable[[Session, Job[ArgumentsT, SettingsT]], bool] | None = None
    outcome: type[BaseModel] | None = None
    progress: Progress = Progress()
    presentation: Presentation | None = None
    option_prefix: str | None = None
    settings_from: str | None = None
    check: Callable[[Session, SettingsT, Mapping[str, Any], Sequence[str]], None] | None = None

    @property
    def celery_name(self) -> str:
        return CELERY_PREFIX + self.name

    @property
    def flag(self) -> str:
        """defend's option that enables the stage: --fine-tune for fine_tune."""
        return "--" + self.name.replace("_", "-")

    @property
    def options_prefix(self) -> str:
        return self.name.replace("_", "-") + "-" if self.option_prefix is None else self.option_prefix

    def parse(self, raw: Mapping[str, Any]) -> ArgumentsT:
        """The stored JSON arguments as this stage's type (ValueError if they do not fit)."""
        return self.arguments.model_validate(dict(raw))

    def sweep_settings(self, config: Mapping[str, Any]) -> SettingsT | None:
        """This stage's settings in a sweep, from the sweep's stored config (its [name] table); None when the
        sweep does not run the stage (or the stage has no settings)."""
        if self.settings_from is not None:
            return get_stage(self.settings_from).sweep_settings(config)
        if self.settings is None:
            return None
        table = config.get(self.name)
        if table is None:
            return self.settings() if self.always else None
        return self.settings.model_validate(table, strict=False)

    def enabled(self, config: Mapping[str, Any]) -> bool:
        if self.settings_from is not None:
            return get_stage(self.settings_from).enabled(config)
        return self.settings is None or self.sweep_settings(config) is not None

    def job(self, task_id: int, sweep_id: int, model_id: int | None, arguments: Mapping[str, Any],
            config: Mapping[str, Any]) -> Job[ArgumentsT, SettingsT]:
        return Job(task_id, sweep_id, model_id, self.parse(arguments), self.sweep_settings(config))

    def planned(self, context: PlanContext[SettingsT]) -> list[tuple[str, dict[str, Any]]]:
        """(key, JSON arguments) of every task planned; keys are unique within the stage."""
        tasks = [(arguments.key(), arguments.model_dump(mode="json")) for arguments in self.plan(context)]
        keys = [key for key, _ in tasks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"stage {self.name} planned two tasks with one key: {keys}")
        return tasks

    def units(self, arguments: Mapping[str, Any], config: Mapping[str, Any]) -> int:
        """How many progress units one of its tasks holds."""
        return int(self.progress.count(self.parse(arguments), self.sweep_settings(config)))


_registry: dict[str, Stage[Any, Any]] = {}


def register(stage: Stage[ArgumentsT, SettingsT]) -> Stage[ArgumentsT, SettingsT]:
    """Add a stage; it may wait only for model stages already registered (so the order is topological)."""
    if not STAGE_NAME.match(stage.name):
        raise ValueError(f"stage name {stage.name!r} is not a lower-case identifier of at most 40 characters")
    known = _registry.get(stage.name)
    if known is not None:
        if known == stage:
            return stage  # a module imported twice (as a plugin and by name) declares the same stage
        raise ValueError(f"stage {stage.name!r} is declared twice")
    if stage.settings_from is not None and (stage.settings is not None or stage.settings_from not in _registry):
        raise ValueError(f"stage {stage.name!r} takes its settings from {stage.settings_from!r}: that stage must be "
                         f"declared before it, and it may not have settings of its own")
    for name in stage.after:
        waited = _registry.get(name)
        if waited is None:
            raise ValueError(f"stage {stage.name!r} waits for {name!r}, which is not declared before it")
        if waited.scope is not Scope.MODEL or stage.scope is not Scope.MODEL:
            raise ValueError(f"stage {stage.name!r}: only model stages wait for model stages by name")
    if stage.presentation is not None:
        taken = {network.name: other.name for other in _registry.values() if other.presentation is not None
                 for network in other.presentation.networks}
        for network in stage.presentation.networks:
            if network.name in taken:
                raise ValueError(f"stage {stage.name!r}: network {network.name!r} is {taken[network.name]}'s")
    _registry[stage.name] = stage
    return stage


def stages(scope: Scope | None = None) -> list[Stage[Any, Any]]:
    """Every declared stage: model stages in declaration order (a topological order), then sweep stages."""
    _load_builtin()
    ordered = [stage for wanted in Scope for stage in _registry.values() if stage.scope is wanted]
    return [stage for stage in ordered if scope is None or stage.scope is scope]


def get_stage(name: str) -> Stage[Any, Any]:
    _load_builtin()
    try:
        return _registry[name]
    except KeyError:
        raise LookupError(f"no stage {name!r}; declared: {', '.join(_registry)}") from None


def configurable() -> list[Stage[Any, Any]]:
    """The stages a sweep file or defend may name: those with settings."""
    return [stage for stage in stages() if stage.settings is not None]


def waiting_on(name: str) -> list[Stage[Any, Any]]:
    """The stages that wait for `name`: what its completion may release."""
    return [stage for stage in stages() if name in stage.after]


def roots() -> list[Stage[Any, Any]]:
    """Model stages that wait for nothing: the orchestrator sends them when a sweep starts."""
    return [stage for stage in stages(Scope.MODEL) if not stage.after]


def ready(stage: Stage[Any, Any], not_done: set[str]) -> bool:
    """Readiness, decided here once for release and resume: a stage may be sent for a model when none of
    the stages it waits for has a task of that model that is not done (a stage the sweep does not run
    has no tasks, so it never holds anything back)."""
    return not not_done.intersection(stage.after)


def _load_builtin() -> None:
    import badnet_prune.pipeline.stages  # noqa: F401  (declares the built-in stages on import)


def load_stage_modules(modules: Sequence[str]) -> None:
    """Import modules that declare extra stages (setting stage_modules), in every process that plans or runs."""
    import importlib

    for module in modules:
        importlib.import_module(module)
