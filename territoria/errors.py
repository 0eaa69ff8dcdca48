"""Errors raised on bad input: one clear line naming the file, the column and the problem."""

from __future__ import annotations

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
