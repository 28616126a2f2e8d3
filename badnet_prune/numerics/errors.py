"""One error type for everything a user can get wrong, so the CLI can print it as one line."""

from __future__ import annotations

from pathlib import Path


class BadInputError(Exception):
    """A file or option the user supplied cannot be used; the message names it and says why."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
