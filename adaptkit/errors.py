"""The errors adaptkit raises for input a user can fix, and the one error type for files that cannot be read.

Every error that derives from `AdaptkitError` carries a message that names the file, key or value at fault
and says what to do; the command line prints it as one line and exits with `exit_code`. Anything else that
escapes is a bug in adaptkit, and the command line says so.
"""

from __future__ import annotations

from pathlib import Path


class AdaptkitError(Exception):
    """Input that adaptkit cannot use as given; the message says what is wrong and what to do."""

    exit_code = 2


class FileError(AdaptkitError, ValueError):
    """A file adaptkit needs is missing, unreadable or not what it claims to be."""

    def __init__(self, path: str | Path, problem: str, fix: str = "") -> None:
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{path}: {problem}" + (f"; {fix}" if fix else ""))
