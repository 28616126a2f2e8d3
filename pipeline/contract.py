"""The stage contract: what a stage of the pipeline declares, and the registry that holds them.

A stage is declared once (pipeline/stages/ for the built-in ones) with its typed arguments,
how it is planned for a model (or a sweep), which stages it waits for, how its results are
recognised as stored, and the job it runs. Planning, releasing successors, resume, the Celery
task registration, the in-process runner, `status` and progress read this registry and list
no stages of their own; a new stage is a new declaration (plus its numerics and, if it stores
new results, a migration).

Ordering is by declaration: a stage may only wait for stages declared before it, so the
registry's order is a topological order of the graph.
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

    from badnet_prune.worker.runtime import Runtime

STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
CELERY_PREFIX = "badnet_prune."


class Scope(StrEnum):
    MODEL = "model"  # planned per model; runs once the stages it waits for are done for that model
    SWEEP = "sweep"  # planned once per sweep; runs once every model of the sweep has ended


class StageArguments(BaseModel):
    """A stage's typed arguments, stored as JSON in the task row; `key` is their exact identity."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def key(self) -> str:
        return ""


@dataclass(frozen=True)
class PlanContext:
    """What planning knows of a model: its prune layer's channel count and the sweep's settings."""

    channel_count: int
    thresholds: tuple[Threshold, ...]
    range_size: int
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskContext:
    """Which task a job runs for: ids only, everything else is read from the database."""

    task_id: int
    sweep_id: int
    model_id: int | None


ArgumentsT = TypeVar("ArgumentsT", bound=StageArguments)


@dataclass(frozen=True)
class Stage(Generic[ArgumentsT]):
    """One stage of the pipeline.

    plan: the arguments of each task of this stage for one model (or, for a sweep-scope
        stage, for the sweep: its PlanContext then has channel_count 0).
    run: the job; reads what it needs by id through the runtime, writes results idempotently.
    after: stages whose every task (of the same model) must be done before this one is sent.
    stored: whether a task's results are in the database (resume re-sends a 'done' task whose
        results are missing); None means the task row's state alone tells.
    """

    name: str
    description: str
    arguments: type[ArgumentsT]
    plan: Callable[[PlanContext], Sequence[ArgumentsT]]
    run: Callable[[Runtime, TaskContext, ArgumentsT], None]
    after: tuple[str, ...] = ()
    scope: Scope = Scope.MODEL
    stored: Callable[[Session, TaskContext, ArgumentsT], bool] | None = None

    @property
    def celery_name(self) -> str:
        return CELERY_PREFIX + self.name

    def parse(self, raw: Mapping[str, Any]) -> ArgumentsT:
        """The stored JSON arguments as this stage's type (ValueError if they do not fit)."""
        return self.arguments.model_validate(dict(raw))

    def planned(self, context: PlanContext) -> list[tuple[str, dict[str, Any]]]:
        """(key, JSON arguments) of every task planned; keys are unique within the stage."""
        tasks = [(arguments.key(), arguments.model_dump(mode="json")) for arguments in self.plan(context)]
        keys = [key for key, _ in tasks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"stage {self.name} planned two tasks with one key: {keys}")
        return tasks


_registry: dict[str, Stage[Any]] = {}


def register(stage: Stage[ArgumentsT]) -> Stage[ArgumentsT]:
    """Add a stage; it may wait only for model stages already registered (so the order is topological)."""
    if not STAGE_NAME.match(stage.name):
        raise ValueError(f"stage name {stage.name!r} is not a lower-case identifier of at most 40 characters")
    known = _registry.get(stage.name)
    if known is not None:
        if known == stage:
            return stage  # a module imported twice (as a plugin and by name) declares the same stage
        raise ValueError(f"stage {stage.name!r} is declared twice")
    for name in stage.after:
        waited = _registry.get(name)
        if waited is None:
            raise ValueError(f"stage {stage.name!r} waits for {name!r}, which is not declared before it")
        if waited.scope is not Scope.MODEL or stage.scope is not Scope.MODEL:
            raise ValueError(f"stage {stage.name!r}: only model stages wait for model stages by name")
    _registry[stage.name] = stage
    return stage


def stages(scope: Scope | None = None) -> list[Stage[Any]]:
    """Every declared stage: model stages in declaration order (a topological order), then sweep stages."""
    _load_builtin()
    ordered = [stage for wanted in Scope for stage in _registry.values() if stage.scope is wanted]
    return [stage for stage in ordered if scope is None or stage.scope is scope]


def get_stage(name: str) -> Stage[Any]:
    _load_builtin()
    try:
        return _registry[name]
    except KeyError:
        raise LookupError(f"no stage {name!r}; declared: {', '.join(_registry)}") from None


def waiting_on(name: str) -> list[Stage[Any]]:
    """The stages that wait for `name`: what its completion may release."""
    return [stage for stage in stages() if name in stage.after]


def roots() -> list[Stage[Any]]:
    """Model stages that wait for nothing: the orchestrator sends them when a sweep starts."""
    return [stage for stage in stages(Scope.MODEL) if not stage.after]


def _load_builtin() -> None:
    import badnet_prune.pipeline.stages  # noqa: F401  (declares the built-in stages on import)


def load_stage_modules(modules: Sequence[str]) -> None:
    """Import modules that declare extra stages (setting stage_modules), in every process that plans or runs."""
    import importlib

    for module in modules:
        importlib.import_module(module)
