"""`badnet-prune sql "SELECT ..."`: one read-only query against the results database."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.options import DbOption, load_settings


def sql(
    query: Annotated[str, typer.Argument(help="One SELECT statement; it runs in a read-only transaction.")],
    db: DbOption = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
) -> None:
    """Run a read-only SQL query (tables and the documented views) and print its rows."""
    from badnet_prune.errors import BadInputError
    from db.errors import ReadOnlyQueryError
    from db.query import run_read_only_query
    from db.session import prepare_database
    from orchestrator.exports import to_csv

    engine = prepare_database(load_settings(db=db).db_url)
    try:
        columns, rows = run_read_only_query(engine, query)
    except ReadOnlyQueryError as error:
        raise BadInputError("query", str(error)) from None
    if as_csv:
        print(to_csv(columns, [dict(zip(columns, row, strict=True)) for row in rows]), end="")
        return
    table = Table()
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    Console().print(table)
