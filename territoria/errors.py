"""Errors raised on bad input or on an output that cannot be written: one clear line naming
the file, the column and the problem."""

from __future__ import annotations

import errno
import re
from pathlib import Path


class DataError(Exception):
    """A data or configuration file cannot be used as it is.

    The message always names the file and, where it applies, the column (or line) and the
    problem, so that the CLI can print it as one line and exit with code 2.

    Examples
    --------
    >>> str(DataError("cc_filosofi_2019_COM.CSV", "missing column", column="MED19"))
    "cc_filosofi_2019_COM.CSV: column 'MED19': missing column"
    """

    def __init__(
        self,
        file: str | Path,
        problem: str,
        *,
        column: str | None = None,
        line: int | None = None,
    ) -> None:
        self.file = str(file)
        self.problem = problem
        self.column = column
        self.line = line
        where = [self.file]
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(": ".join(where) + ": " + problem)

    def __reduce__(self):
        # rebuilt from its fields, so that an error raised in a worker process (territoria.workers)
        # reaches the parent as the same one-line error
        return _rebuild, (type(self), self.file, self.problem, self.column, self.line)


def _rebuild(cls: type[DataError], file: str, problem: str, column: str | None, line: int | None) -> DataError:
    return cls(file, problem, column=column, line=line)


class OutputError(DataError):
    """An output file cannot be written: no space left, no permission, a file size limit.

    Raised by the atomic writers (:func:`territoria.io.atomic_path`), which leave the previous
    version of the file in place; the message names the output, not its temporary file. The
    CLI prints it as one line and exits with code 1.

    Examples
    --------
    >>> str(OutputError("out/panel.parquet", os_problem(OSError(errno.ENOSPC, "No space left on device"))))
    'out/panel.parquet: no space left on the device: free some space or write to another folder (--out)'
    """


_OS_PROBLEMS = {
    errno.ENOSPC: "no space left on the device: free some space or write to another folder (--out)",
    errno.EDQUOT: "disk quota exceeded: free some space or write to another folder (--out)",
    errno.EFBIG: "file too large for the file system or for the file size limit of the process (ulimit -f)",
    errno.EACCES: "permission denied: write to a folder you may write to (--out)",
    errno.EPERM: "operation not permitted: write to a folder you may write to (--out)",
    errno.EROFS: "read-only file system: write to another folder (--out)",
}


#: error numbers that say an output cannot be written where it is asked to be
WRITE_ERRNOS = frozenset(_OS_PROBLEMS)


def os_errno(exc: OSError) -> int | None:
    """The error number of ``exc``, read from the message where Arrow leaves it only there
    (``[errno 28] No space left on device``).

    Examples
    --------
    >>> os_errno(OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"))
    28
    """
    if exc.errno is not None:
        return exc.errno
    found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
    return int(found.group(1)) if found else None


def os_problem(exc: OSError) -> str:
    """What an operating-system error means for whoever runs the command, and what to do.

    Examples
    --------
    >>> os_problem(OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"))
    'no space left on the device: free some space or write to another folder (--out)'
    >>> os_problem(OSError(errno.EIO, "Input/output error"))
    'Input/output error'
    """
    return _OS_PROBLEMS.get(os_errno(exc)) or exc.strerror or str(exc)
