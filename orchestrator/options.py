"""CLI options shared by several commands, defined once so their help text agrees."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from badnet_prune.numerics.selection import POLICIES

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.db.models import Sweep
    from badnet_prune.settings import Settings


def check_scale(value: float | None) -> float | None:
    """--input-scale's callback: 1 or 255 (None where the option may be left out)."""
    if value is not None and value not in (1.0, 255.0):
        raise typer.BadParameter("must be 1 (raw 0..255 pixels) or 255 (pixels divided by 255)")
    return value


ModelOption = Annotated[
    Path,
    typer.Option("--model", help="The BadNet: a full Keras model (.h5 legacy HDF5 or .keras) or a weights-only "
                 ".h5 file with DeepID layer names (like the lab's bd_weights.h5)."),
]
class InputScaleChoice(StrEnum):
    """--input-scale's choices; `value` as the sweep spec takes it ("auto" or a number)."""

    auto = "auto"
    raw = "1"
    divided = "255"

    @property
    def setting(self) -> float | str:
        return "auto" if self is InputScaleChoice.auto else float(self.value)


InputScaleOption = Annotated[
    InputScaleChoice,
    typer.Option("--input-scale",
                 help="What the model expects: 1 = raw 0..255 pixels (the lab's convention), "
                 "255 = pixels divided by 255 (the 2020 competition's), auto = the scale at which the model is "
                 "accurate on the first 512 clean images (said in one line; a given scale that looks wrong "
                 "gets a warning)."),
]
TrustCodeOption = Annotated[
    bool,
    typer.Option("--trust-model-code", help="Allow model files that carry code (Lambda layers, custom objects). "
                 "Loading such a file runs that code: use only for files you trust."),
]

# Choices as enums, so that --help lists them and a wrong one is refused before anything runs.
Policy = StrEnum("Policy", [(name, name) for name in POLICIES])


class OutputFormat(StrEnum):
    csv = "csv"
    json = "json"


PolicyOption = Annotated[
    Policy,
    typer.Option("--policy", help="How t selects B'_t. first (the lab's rule): the first step whose clean "
                 "validation accuracy drop reaches t, which may cost much more than t where one step costs a lot. "
                 "within: t as a budget, the most pruning whose drop stays within t. notebook: the lab notebook's "
                 "overwrite behaviour. Example: --policy within"),
]

# A sweep's id: an INTEGER primary key, so at most 2**63 - 1 (a larger number would reach the database driver
# and end in its overflow traceback instead of a usage line).
MAX_SWEEP_ID = 2**63 - 1
SweepArgument = Annotated[int, typer.Argument(metavar="SWEEP", min=1, max=MAX_SWEEP_ID,
                                              help="The sweep's id, as `sweep` printed it.")]


def existing_sweep(session: Session, sweep_id: int) -> Sweep:
    """The sweep, or one line saying that this database has none of that id."""
    from badnet_prune.db.repository import get_sweep
    from badnet_prune.numerics.errors import BadInputError

    try:
        return get_sweep(session, sweep_id)
    except LookupError:
        raise BadInputError(f"sweep {sweep_id}", "no such sweep in this database") from None


DbOption = Annotated[
    str | None,
    typer.Option("--db", help="The database: a SQLite file path (demo/badnet-prune.db) or a URL, sqlite:///FILE or "
                 "postgresql://user@host/db (default: $BADNET_PRUNE_DB, else ./badnet-prune.db). Commands that only "
                 "read refuse a SQLite file that does not exist instead of creating it."),
]
DefendDbOption = Annotated[
    str | None,
    typer.Option("--db", help="The database: a SQLite file path or a URL, sqlite:///FILE or postgresql://user@host/db "
                 "(default: $BADNET_PRUNE_DB, else OUT/badnet-prune.db, beside the results). "
                 "Example: --db postgresql://postgres@127.0.0.1/badnet"),
]
BrokerOption = Annotated[
    str | None,
    typer.Option("--broker", help="Celery broker URL, e.g. redis://127.0.0.1:6379/0 (default: $BADNET_PRUNE_BROKER). "
                 "Without one, tasks run in this process (the embedded default)."),
]
StatusBrokerOption = Annotated[
    str | None,
    typer.Option("--broker", help="The broker the sweep's tasks were sent to (default: $BADNET_PRUNE_BROKER): with it, "
                 "status also counts the queued or running tasks that no queue holds any more. Nothing runs here. "
                 "Example: --broker redis://127.0.0.1:6379/0"),
]
WorkerBrokerOption = Annotated[
    str | None,
    typer.Option("--broker", help="The Celery broker to consume tasks from (default: $BADNET_PRUNE_BROKER; one of "
                 "the two is required). Example: --broker redis://127.0.0.1:6379/0"),
]


def load_settings(db: str | None = None, broker: str | None = None, **overrides: object) -> Settings:
    """The environment's settings with these flags applied; a wrong value is one BadInputError line naming it."""
    from badnet_prune.settings import Settings

    return Settings.from_env().with_overrides(db_url=db, broker_url=broker, **overrides)

AsrBoundOption = Annotated[
    float,
    typer.Option("--asr-bound", min=0, max=100, help="A backdoor counts as removed where a repaired net's ASR on "
                 "its poisoned test set is at most this percentage. Example: --asr-bound 5"),
]
CleanBoundOption = Annotated[
    float,
    typer.Option("--clean-bound", min=0, max=100, help="The clean cost a repair may have: its clean test accuracy "
                 "drop from B, in points, and the share of clean test images it flags as N, in percent; above it "
                 "the verdict says so. Example: --clean-bound 2"),
]
