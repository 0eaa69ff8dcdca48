"""Atomic output writing: a file is either its previous version or the complete new one."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from territoria.errors import WRITE_ERRNOS, OutputError, os_errno, os_problem


def _umask() -> int:
    """The process's file mode creation mask (read, not changed, where /proc tells it: setting
    it to read it back is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: permissions of a written file: those of a file opened for writing (``mkstemp`` makes its
#: temporary files private, 0600, which planners sharing an output folder could not read)
FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    An operating-system error in writing it (no space left, no permission...) becomes an
    :class:`~territoria.errors.OutputError` naming ``path``, not its temporary file; an error
    about another file is raised as it is."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the temporary name ends with the final extension: format drivers check it (GeoPackage)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        os.chmod(tmp_path, FILE_MODE)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        if not _about_output(exc, path, tmp_path):
            raise  # an input the writer reads, say: reported as it is
        raise OutputError(path, os_problem(exc)) from exc
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _about_output(exc: OSError, path: Path, tmp: Path | None) -> bool:
    """Whether ``exc`` is about writing ``path``: it names the output, its temporary file or a
    folder above them, or names no file (as Arrow's errors) and says a file cannot be written."""
    if exc.filename is None:
        return os_errno(exc) in WRITE_ERRNOS
    failed = Path(exc.filename)
    return failed == tmp or path.is_relative_to(failed)


def write_atomic(path: Path | str, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` then move the temporary file onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, in an existing folder: for many small files.

    The temporary file is created, written and renamed through one descriptor: a third of
    :func:`write_atomic`'s system calls (no ``mkdir``, no reopening, no ``chmod``: the file
    gets the permissions the umask allows, as any new file). 4,186 files of 9 kB took
    0.34-0.39 s against 1.2-1.3 s (benchmarks/README.md, twenty-fourth measurement). Errors
    are reported as :func:`write_atomic`'s are, naming ``path``.
    """
    path = Path(path)
    # one writer per process and thread at a time: the name is its own (O_EXCL refuses any
    # other); a file of that name is a temporary left by a killed process of the same id
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        if not _about_output(exc, path, tmp):
            raise
        raise OutputError(path, os_problem(exc)) from exc
    return path


def write_parquet(df: pd.DataFrame, path: Path | str, float_dictionary: bool = True) -> Path:
    """Write a (Geo)DataFrame as (Geo)Parquet, atomically.

    ``float_dictionary=False`` writes the float columns without dictionary encoding. It suits
    tables of model outputs and feature matrices, whose floats are nearly all distinct:
    Parquet would build each column's dictionary, find it too large and fall back to plain
    pages. Without it the feature matrix, forecasts, backtest predictions, index and
    explanations of the main job are written in 0.45-0.8 x the time, and all but the
    explanations (+0.5 %) are 3-20 % smaller (benchmarks/README.md, twenty-first
    measurement). The panel and the parsed sources keep it: their values repeat.
    """
    options = {} if float_dictionary else {"use_dictionary": _dictionary_columns(df)}
    return write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False, **options))


def _dictionary_columns(df: pd.DataFrame) -> list[str]:
    """The columns of ``df`` worth a dictionary: all but floats and geometries."""
    return [str(c) for c, dtype in df.dtypes.items()
            if not pd.api.types.is_float_dtype(dtype) and str(dtype) != "geometry"]


def write_csv(df: pd.DataFrame, path: Path | str, **options) -> Path:
    """Write a CSV (UTF-8, ``\\n`` line ends) atomically; ``options`` go to ``to_csv``."""
    return write_atomic(path, lambda tmp: df.to_csv(tmp, index=False, lineterminator="\n", **options))


#: the powers of ten a double holds exactly
_POWERS_OF_TEN = 10.0 ** np.arange(23)


def round_significant(values, digits: int = 6) -> np.ndarray:
    """The numbers ``'%.<digits>g' % x`` writes, as floats: each value correctly rounded to
    ``digits`` significant decimal digits; NaN, infinities and zeros are kept.

    Vectorised: the value scaled by an exact power of ten is rounded to an integer, then
    divided back (both operands exact, so the result is the double nearest the decimal,
    as parsing the formatted text gives). Values whose scaled fraction lies within 1e-6 of
    a tie, or beyond the exact powers of ten (1e22), are formatted by Python instead.

    Examples
    --------
    >>> round_significant([2133111.0, 0.000123456789, -1.0, np.nan], 6).tolist()
    [2133110.0, 0.000123457, -1.0, nan]
    """
    x = np.array(values, dtype=float)
    nonzero = np.flatnonzero(np.isfinite(x) & (x != 0))
    v = x[nonzero]
    if not len(v):
        return x
    with np.errstate(over="ignore", invalid="ignore"):
        decimals = digits - 1 - np.floor(np.log10(np.abs(v))).astype(np.int64)
        up = _POWERS_OF_TEN[np.clip(decimals, 0, 22)]
        down = _POWERS_OF_TEN[np.clip(-decimals, 0, 22)]
        scaled = v * up / down
        m = np.rint(scaled)
        rounded = m / up * down
    # a wrong decade (log10 at a power of ten) shows as a mantissa out of its range
    doubtful = ((np.abs(np.abs(scaled - np.trunc(scaled)) - 0.5) < 1e-6) | (np.abs(decimals) > 22)
                | (np.abs(m) < 10.0 ** (digits - 1)) | (np.abs(m) >= 10.0 ** digits) | ~np.isfinite(rounded))
    fmt = f"%.{digits}g"
    rounded[doubtful] = [float(fmt % t) for t in v[doubtful]]
    x[nonzero] = rounded
    return x


def write_csv_rounded(df: pd.DataFrame, path: Path | str, digits: int = 6) -> Path:
    """Write a CSV with its float columns rounded to ``digits`` significant digits, atomically.

    The same values as ``to_csv(float_format="%.6g")`` except whole numbers, which keep
    every digit (a count held as a float for its missing values), in a tenth of the time: pandas
    formats each float in Python (2.2 s for the 2 million floats of the communes'
    priorities), Arrow's writer in C++ (0.2 s). Arrow's text differs in form only: text
    values are quoted, booleans are ``true``/``false``, and numbers down to 1e-7 have no
    exponent (pandas, like spreadsheets, reads both the same). Missing values are empty cells.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = write_csv_rounded(pd.DataFrame({"code": ["01001", None], "x": [1 / 3, np.nan],
    ...                                         "flag": [True, False]}), Path(d) / "t.csv")
    ...     print(p.read_text(), end="")
    code,x,flag
    "01001",0.333333,true
    ,,false
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    out = df.copy(deep=False)
    for i, (_, col) in enumerate(df.items()):
        if pd.api.types.is_float_dtype(col.dtype):
            x = col.to_numpy(dtype=float, na_value=np.nan)
            # whole numbers (counts held as floats for their missing values) keep every digit:
            # '%.6g' wrote Paris's 2,133,111 inhabitants as 2.13311e+06
            whole = np.isfinite(x) & (np.abs(x) < 2.0 ** 53) & (x == np.trunc(x))
            out.isetitem(i, np.where(whole, x, round_significant(x, digits)))
        elif col.dtype == object or isinstance(col.dtype, pd.CategoricalDtype):
            out.isetitem(i, col.astype("string"))  # Python objects as pandas writes them: str(value)
    # by position: a table may repeat a column name, which from_pandas refuses
    table = pa.Table.from_arrays([pa.array(out.iloc[:, i], from_pandas=True) for i in range(out.shape[1])],
                                 names=[str(c) for c in df.columns])

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow([str(c) for c in df.columns])
        with open(tmp, "ab") as f:
            pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="needed"))

    return write_atomic(path, write)


def write_json(obj, path: Path | str) -> Path:
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True, default=str) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
