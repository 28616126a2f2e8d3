"""The `badnet-prune` command line: a typer app whose commands each live in their own module."""

from __future__ import annotations

import logging
import os
import sys

import typer

from badnet_prune.errors import BadInputError
from db.errors import DatabaseUnavailable
from db.session import dispose_engines
from orchestrator.commands import (
    cache,
    defend,
    demo,
    evaluate,
    migrate,
    report,
    sql,
    status,
    steps,
    sweep,
    synth,
    worker,
)

app = typer.Typer(
    name="badnet-prune",
    help="Find and neutralise backdoors in image classifiers with the pruning defense.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def badnet_prune() -> None:
    """Find and neutralise backdoors in image classifiers with the pruning defense."""


app.command("evaluate")(evaluate.evaluate)
app.command("demo")(demo.demo)
app.command("defend")(defend.defend)
app.command("sweep")(sweep.sweep)
app.command("status")(status.status)
app.command("steps")(steps.steps)
app.command("worker")(worker.worker)
app.command("migrate")(migrate.migrate)
app.command("sql")(sql.sql)
app.command("report")(report.report)
app.command("synth")(synth.synth)
app.command("cache")(cache.cache)


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
