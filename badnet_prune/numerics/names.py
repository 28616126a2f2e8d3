"""Model and poisoned-set names are identifiers, never paths.

A name becomes part of file names (B'/G files, CSV exports), column names (asr_<poison>) and
database keys, so it is checked once where it enters: NAME_PATTERN, one letter or digit first,
then letters, digits, '_' or '-', at most 64 characters. That excludes '/', '..', spaces and
anything a shell, a spreadsheet or HTML would read specially. A name equal (ignoring case) to a
data-set role (RESERVED_NAMES) is refused too: a poisoned set called "clean" would otherwise be
indistinguishable from the clean test set.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from badnet_prune.numerics.errors import BadInputError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED_NAMES = frozenset({"clean", "clean_valid", "clean_test", "poisoned_valid", "poisoned_test"})


def check_name(value: str, what: str) -> str:
    """`value` if it is a valid name, else one BadInputError line naming `what` (an option, a file's key)."""
    try:
        return valid_name(value)
    except ValueError as error:
        raise BadInputError(what, str(error)) from None


def valid_name(value: object) -> str:
    """`value` if it is a valid name; ValueError saying why not (the form pydantic validators raise)."""
    if not isinstance(value, str):
        raise ValueError(f"a name must be a string, not {value!r}")
    if not value:
        raise ValueError("a name cannot be empty")
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"{value[:80]!r} is not a name: 1 to 64 letters, digits, '_' or '-', "
                         "starting with a letter or digit")
    if value.lower() in RESERVED_NAMES:
        raise ValueError(f"{value!r} is reserved for a data-set role ({', '.join(sorted(RESERVED_NAMES))})")
    return value


Name = Annotated[str, AfterValidator(valid_name)]
