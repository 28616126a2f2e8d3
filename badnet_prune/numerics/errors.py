"""One error type for everything a user can get wrong, so the CLI can print it as one line."""

from __future__ import annotations

from pathlib import Path


class BadInputError(Exception):
    """A file or option the user supplied cannot be used; the message names it and says why."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


def first_line(error: BaseException) -> str:
    """An error's message as one line for a user or a stored row: its first line, or its type where it says
    nothing."""
    return (str(error).strip() or type(error).__name__).splitlines()[0]
