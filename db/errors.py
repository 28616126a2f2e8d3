"""Errors of the storage layer that a CLI prints as one line instead of a traceback."""

from __future__ import annotations


class DatabaseUnavailable(Exception):
    """The database cannot be reached or opened; the message says which one and why, on one line."""

    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = one_line(reason)
        super().__init__(f"cannot reach database {target}: {self.reason}")


class ReadOnlyQueryError(Exception):
    """A user query was refused (it would write, or is not one statement) or failed to run."""


def one_line(text: object) -> str:
    """Driver messages span several lines (libpq adds hints); a CLI wants them on one."""
    return " ".join(str(text).split()) or "unknown error"
