"""Errors that the command line turns into one-line messages instead of tracebacks."""

from __future__ import annotations

from pathlib import Path


class MeluError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option)."""


class DataError(MeluError):
    """A data file is missing, truncated or malformed.

    The message always names the file, and the line where one is known, because the user has to
    find and repair that file by hand.
    """

    def __init__(self, path: Path | str, reason: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {reason}")


class CheckpointError(MeluError):
    """A checkpoint is missing, of an unknown format version, or not a melu checkpoint."""
