"""`badnet-prune report SWEEP --out DIR`: the sweep's results, read from the database, as files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from badnet_prune.orchestrator.options import AsrBoundOption, CleanBoundOption, DbOption, SweepArgument, load_settings
from badnet_prune.orchestrator.verdicts import ASR_BOUND, CLEAN_BOUND


def _folder(text: str) -> Path:
    """--out as given: an empty value (an unset shell variable) is refused rather than read as `.`."""
    if not text.strip():
        raise typer.BadParameter("is empty; name the report's folder")
    return Path(text)


def report(
    sweep_id: SweepArgument,
    out: Annotated[Path, typer.Option("--out", parser=_folder,
                                      help="Folder for index.html, models/, report.md, figures/ and csv/.")],
    db: DbOption = None,
    asr_bound: AsrBoundOption = ASR_BOUND,
    clean_bound: CleanBoundOption = CLEAN_BOUND,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Test images per data set in each model's "
                       "sample grid, labelled by B and G (loads the model files); 0 skips the grid.")] = 6,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON (index, model pages, "
                       "report.md, csv/) instead of the index's path.")] = False,
) -> None:
    """Write a report of a sweep: index.html (across models), a page per model, report.md and CSV tables.

    Example: badnet-prune report 1 --out report --db demo/badnet-prune.db
    """
    from badnet_prune.numerics.errors import BadInputError

    check_out_folder(out)
    settings = load_settings(db=db)

    from badnet_prune.db.session import prepare_database
    from badnet_prune.orchestrator.report.write import write_report

    engine = prepare_database(settings.db_url, create=False)  # reading: a mistyped file is an error, not a new db
    try:
        index = write_report(engine, sweep_id, out, asr_bound=asr_bound, clean_bound=clean_bound,
                             samples_per_set=samples)
    except LookupError:
        raise BadInputError(f"sweep {sweep_id}", "no such sweep in this database") from None
    if as_json:
        import json

        folder = index.resolve().parent
        written = {"sweep": sweep_id, "index": str(folder / "index.html"), "report_md": str(folder / "report.md"),
                   "csv": sorted(str(path) for path in (folder / "csv").glob("*.csv")),
                   "models": sorted(str(path) for path in (folder / "models").glob("*.html"))}
        print(json.dumps(written, indent=2))
    else:
        print(index.resolve())


def check_out_folder(out: Path) -> None:
    """Refuse, in one line and before anything is read or written, an --out that cannot be the report's folder:
    a file, a path through a file, or a folder this process cannot write."""
    import os

    from badnet_prune.numerics.errors import BadInputError

    if out.exists() and not out.is_dir():
        raise BadInputError("--out", f"{out} is a file, not a folder; name a new or existing folder")
    existing = next(folder for folder in (out, *out.absolute().parents) if folder.exists())
    if not existing.is_dir():
        raise BadInputError("--out", f"{existing} is a file, so {out} cannot be made a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInputError("--out", f"{existing} is not writable")
