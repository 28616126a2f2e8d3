"""The `badnet-prune` command line: a typer app whose commands each live in their own module."""

from __future__ import annotations

import logging
import os
import sys
from enum import Enum
from importlib.metadata import version
from pathlib import PurePath
from typing import Annotated, Any, get_args

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from badnet_prune.db.errors import DatabaseUnavailable
from badnet_prune.db.session import dispose_engines
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.orchestrator.commands import (
    cache,
    classify,
    defend,
    demo,
    evaluate,
    fit_verdict,
    leaderboard,
    migrate,
    report,
    sql,
    status,
    steps,
    sweep,
    synth,
    worker,
    zoo,
)
from badnet_prune.orchestrator.stage_options import with_stage_options

_VALUE_WORDS = {str: "TEXT", int: "INTEGER", float: "NUMBER"}


def value_words(param: TyperOption | TyperArgument) -> str | None:
    """What a parameter takes, in the help's words: nothing for a flag, the choices, or PATH, INTEGER...

    Typer shows the annotation's Python type (`<list[Path]>`, `<bool>` beside every flag), which
    tells a user nothing; this is what click itself writes.
    """
    if isinstance(param, TyperOption) and param.is_flag:
        return None
    described = param.type_descriptor
    if described.choices is not None:
        return "|".join(str(c.value) if isinstance(c, Enum) else str(c) for c in described.choices)
    annotation = get_args(described.annotation)[0] if described.is_list else described.annotation
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "PATH"
    return _VALUE_WORDS.get(annotation, "VALUE")


class _WordedOption(TyperOption):
    def display_type(self, ctx: typer.Context) -> str | None:
        return value_words(self)


class _WordedArgument(TyperArgument):
    def display_type(self, ctx: typer.Context) -> str | None:
        return value_words(self)


def _worded(params: list[Any]) -> None:
    """Give typer's parameters the help's words (value_words) in place of their Python types."""
    for param in params:
        if type(param) is TyperOption:
            param.__class__ = _WordedOption
        elif type(param) is TyperArgument:
            param.__class__ = _WordedArgument


class _Plain:
    """Help that names kinds of values (value_words), and usage errors in one line like every other error.

    Click's usage errors come as a framed box with a usage line; here they are the one
    `error: COMMAND: problem` line that every wrong input gets (BadInputError, exit status 2).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _worded(self.params)

    def get_help_option(self, ctx: typer.Context) -> TyperOption | None:
        option = super().get_help_option(ctx)
        _worded([option])
        return option

    def make_context(self, info_name: str | None, args: list[str], parent: typer.Context | None = None,
                     **extra: Any) -> typer.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as error:
            if isinstance(error, NoArgsIsHelpError):
                raise
            path = " ".join(part for part in (parent and parent.command_path, info_name) if part)
            raise _one_line(error, path) from None


def _one_line(error: UsageError, command_path: str) -> BadInputError:
    # typer checks values with pydantic, whose "Value error, " prefix says nothing to a user
    message = error.format_message().replace(": Value error, ", ": ")
    return BadInputError(command_path, f"{message} (`{command_path} -h` lists the options)")


class Command(_Plain, TyperCommand):
    """Every badnet-prune command."""


class Group(_Plain, TyperGroup):
    """The badnet-prune app; a mistyped command name is one line too."""

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as error:
            raise _one_line(error, ctx.command_path) from None


app = typer.Typer(
    name="badnet-prune",
    cls=Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        print(f"badnet-prune {version('badnet-prune')}")
        raise typer.Exit()


@app.callback()
def badnet_prune(
    show_version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                               help="Print the version and exit.")] = False,
) -> None:
    """Find and neutralise backdoors in image classifiers with the pruning defense.

    Example: badnet-prune demo, then badnet-prune COMMAND -h for any command's options.
    """


def _load_declared_stages() -> None:
    """Import the stage modules the stage_modules setting names: their settings are defend's options too.

    A wrong setting is left for the command that reads the settings to say, in its one line."""
    from badnet_prune.pipeline.contract import load_stage_modules
    from badnet_prune.settings import Settings

    try:
        modules = Settings.from_env().stage_modules
    except BadInputError:
        return
    load_stage_modules(modules)


_load_declared_stages()
COMMANDS = {
    "evaluate": evaluate.evaluate,
    "classify": classify.classify,
    "demo": demo.demo,
    "defend": with_stage_options(defend.defend),
    "sweep": sweep.sweep,
    "status": status.status,
    "steps": steps.steps,
    "worker": worker.worker,
    "migrate": migrate.migrate,
    "sql": sql.sql,
    "report": report.report,
    "leaderboard": leaderboard.leaderboard,
    "fit-verdict": fit_verdict.fit_verdict,
    "synth": synth.synth,
    "zoo": zoo.zoo,
    "cache": cache.cache,
}
for _name, _function in COMMANDS.items():
    app.command(_name, cls=Command)(_function)


def main() -> None:
    """Run the CLI; a user's mistake ends in one line on stderr and exit status 2, not a traceback."""
    try:
        app()
    except (BadInputError, DatabaseUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def console_main() -> None:
    """The `badnet-prune` console script: main(), and a quick exit once a command has succeeded.

    TensorFlow's part of the interpreter's teardown takes about a second (bench/RESULTS.md) and
    does nothing a finished command needs, so after a success the output is flushed, database
    connections are closed and the process ends without it. Failures exit the ordinary way.
    """
    try:
        main()
    except SystemExit as exited:
        if exited.code not in (None, 0) or "tensorflow" not in sys.modules:
            raise
    else:
        if "tensorflow" not in sys.modules:
            return
    dispose_engines()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
