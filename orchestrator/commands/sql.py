"""`badnet-prune sql "SELECT ..."`: one read-only query against the results database, least privilege.

On PostgreSQL the query runs logged in as the reader role (SELECT on the project's tables and views
only); on SQLite on a read-only connection. A statement timeout applies on both; the database is never
created or migrated here. Whole cell values are printed: a table on a terminal, CSV when piped, or JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from badnet_prune.orchestrator.options import DbOption, load_settings


def sql(
    query: Annotated[str, typer.Argument(metavar="QUERY", help="One SELECT statement; it runs read-only, as "
                                         "the database's reader role on PostgreSQL, with a statement timeout.")],
    db: DbOption = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (the default when stdout is not a terminal).")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of rows, one object per row.")] = False,
) -> None:
    """Run a read-only SQL query (tables and the documented views) and print its rows.

    Example: badnet-prune sql "SELECT model, threshold, step FROM selection_results"
    """
    from badnet_prune.db.errors import ReadOnlyQueryError
    from badnet_prune.db.query import run_read_only_query
    from badnet_prune.numerics.errors import BadInputError

    if as_csv and as_json:
        raise BadInputError("--json", "cannot be combined with --csv: choose one output format")
    settings = load_settings(db=db)
    try:
        columns, rows = run_read_only_query(settings.db_url, query, timeout_s=settings.statement_timeout_s)
    except ReadOnlyQueryError as error:
        raise BadInputError("query", str(error)) from None
    if as_json:
        print(_as_json(columns, rows))
    elif as_csv or not sys.stdout.isatty():
        from badnet_prune.orchestrator.exports import to_csv

        print(to_csv(columns, [dict(zip(columns, row, strict=True)) for row in rows]), end="")
    else:
        print_table(columns, rows, Console())


def _as_json(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    from badnet_prune.numerics.errors import BadInputError

    if len(set(columns)) != len(columns):
        repeated = sorted({name for name in columns if columns.count(name) > 1})
        raise BadInputError("--json", f"the query names the column(s) {', '.join(repeated)} more than once; "
                                      "give each a distinct name with AS")
    return json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=str, indent=2)


def print_table(columns: list[str], rows: list[tuple[Any, ...]], console: Console) -> None:
    """A table whose cells fold onto more lines rather than being cut at the terminal's width; values are
    plain text, so a stored name such as `[link=...]` is shown, not read as Rich markup."""
    table = Table()
    for column in columns:
        table.add_column(Text(column), overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if value is None else str(value)) for value in row))
    console.print(table)
