"""Reading official files as published: separators, encodings, secret cells, French numbers.

Every problem becomes a :class:`~territoria.errors.DataError` naming the file, the column (or
line) and what is wrong, instead of a pandas traceback.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from territoria.errors import DataError

#: Markers for statistical secrecy or missing values (INSEE: ``s`` secret, ``ns`` not
#: significant, ``nd`` not available, ``so`` not applicable).
SECRET_MARKERS = frozenset(
    {"", "s", "ns", "nd", "n.d.", "nc", "n.c.", "so", "secret", "na", "nan", "x"}
)

# Thin spaces, no-break spaces and plain spaces used as thousands separators in French files.
_THOUSANDS = (" ", "\u00a0", "\u202f", "\u2009", "\t")
_NUMBER = r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$"
_COMMUNE_CODE = re.compile(r"^(?:\d{5}|2[AB]\d{3})$")
# UTF-8 encodings of Latin-1 letters and typographic marks (é is C3 A9): in a Windows-1252
# file they would read "Ã©", which French official files never contain
_UTF8_ACCENT = re.compile(rb"\xc3[\x80-\xbf]|\xc2[\xa0-\xbf]|\xe2\x80[\x80-\xbf]")


def read_bytes(path: Path) -> bytes:
    """Raw bytes of a file, transparently gunzipped; a clear error if it is missing."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found (check --data or the bundled data folder)")
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(path, f"not a valid gzip file ({exc})") from None
    return data


def decode_text(data: bytes, path: Path, encoding: str = "utf-8-sig") -> str:
    """Decode text, falling back to Windows-1252 (older INSEE files are Latin-1/Windows-1252)."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        if _UTF8_ACCENT.search(data):
            # UTF-8 accents next to bytes that are not UTF-8: decoding it all as Windows-1252
            # would garble every accented name silently
            line = data[: exc.start].count(b"\n") + 1
            raise DataError(path, "mixed encodings: this line is not UTF-8 while other lines are "
                            "(the file must use one encoding)", line=line) from None
        return data.decode("cp1252", errors="strict") if _is_cp1252(data) else _undecodable(path)


def _is_cp1252(data: bytes) -> bool:
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return False
    return True


def _undecodable(path: Path) -> str:
    raise DataError(path, "cannot decode the file as UTF-8 or Windows-1252 (wrong encoding?)")


def read_text(path: Path, encoding: str = "utf-8-sig") -> str:
    """Text of a (possibly gzipped) file with the encoding fallback of :func:`decode_text`."""
    path = Path(path)
    return decode_text(read_bytes(path), path, encoding)


def read_zip_member(path: Path, member: str) -> bytes:
    """Bytes of one member of a zip archive, with clear errors."""
    if not Path(path).exists():
        raise DataError(path, "file not found (check --data or the bundled data folder)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if member not in names:
                raise DataError(path, f"archive has no member '{member}' (found: {names})")
            return zf.read(member)
    except zipfile.BadZipFile:
        raise DataError(path, "not a valid zip archive") from None


def read_first_sheet(path: Path) -> list[list]:
    """Cells of the first worksheet of an xlsx or xls workbook, row by row (``.gz`` accepted).

    Read with calamine (Rust): a BPE crosstab of ~6 million cells takes about a second,
    where openpyxl takes several. Empty cells are ``""``; numbers are floats (use
    :func:`cell_text` for codes).
    """
    from python_calamine import CalamineError, CalamineWorkbook

    data = read_bytes(path)
    if not data:
        raise DataError(path, "empty file: no header and no rows")
    try:
        book = CalamineWorkbook.from_filelike(io.BytesIO(data))
        rows = book.get_sheet_by_index(0).to_python(skip_empty_area=False)
    except (CalamineError, ValueError, IndexError) as exc:
        raise DataError(path, f"not a valid Excel workbook ({exc})") from None
    return rows


def cell_text(value) -> str | None:
    """Text of a spreadsheet cell: ``None`` when empty, ``1001.0`` read as ``"1001"``."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_csv(
    path: Path,
    *,
    sep: str = ";",
    required: Sequence[str] = (),
    skiprows: int = 0,
    header: int | None = 0,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8-sig",
    text: str | None = None,
) -> pd.DataFrame:
    """Read an official CSV as text columns, checking separator, columns and emptiness.

    All cells are kept as strings so that secret markers and French number formats are
    interpreted by :func:`parse_number`, never guessed by pandas.

    Parameters
    ----------
    path : Path
        File to read (``.gz`` accepted). Used in error messages even when ``text`` is given.
    sep : str
        Separator of the official format.
    required : sequence of str
        Columns that must be present.
    skiprows : int
        Title lines before the header.
    header, names
        As in :func:`pandas.read_csv` (``header=None`` with ``names`` for header-less files).
    text : str, optional
        Already decoded content (for archive members).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.csv"
    >>> _ = p.write_text("CODGEO;MED19\\n01001;23970\\n")
    >>> read_csv(p, required=["CODGEO", "MED19"]).iloc[0].tolist()
    ['01001', '23970']
    """
    path = Path(path)
    if text is None:
        text = read_text(path, encoding)
    # (line number, text) of the non-blank lines after the title lines, as pandas reads them
    body = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if i >= skiprows and ln.strip()]
    if not body:
        raise DataError(path, "empty file: no header and no rows")
    if header is not None and len(body) <= header + 1:
        raise DataError(path, "header only: the file has no data rows")
    if header is not None:
        _check_separator(path, body[header][1], sep, required)
        n_fields = len(next(csv.reader([body[header][1]], delimiter=sep)))
        _check_field_counts(path, body[header + 1:], sep, n_fields)
    elif names is not None:
        _check_field_counts(path, body, sep, len(names))
    try:
        df = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            skiprows=skiprows,
            header=header,
            names=list(names) if names is not None else None,
            dtype="string[pyarrow]",
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=True,
            quoting=csv.QUOTE_MINIMAL,
        )
    except pd.errors.ParserError as exc:
        line = _line_of(str(exc))
        raise DataError(path, f"malformed or truncated CSV ({exc})", line=line) from None
    df.columns = [str(c).strip() for c in df.columns]
    check_columns(df, required, path)
    return df


def _check_field_counts(path: Path, numbered: list[tuple[int, str]], sep: str, n_fields: int) -> None:
    """Every data line has the header's number of fields.

    pandas pads a short line with empty cells (read as secret, i.e. missing: a file cut
    mid-line would load silently) and takes an extra first field as the index (shifting every
    column); both are reported with their line instead.
    """
    counts = pc.count_substring(pa.array([ln for _, ln in numbered], pa.string()), sep)
    for pos in np.flatnonzero(counts.to_numpy(zero_copy_only=False) + 1 != n_fields):
        # the fast count includes separators inside quotes: count those lines exactly
        n = len(next(csv.reader([numbered[pos][1]], delimiter=sep)))
        if n != n_fields:
            problem = ("truncated file or cut line" if n < n_fields else "stray separator or shifted row")
            raise DataError(path, f"{n} fields where the header has {n_fields} ({problem})",
                            line=numbered[pos][0])


def _line_of(message: str) -> int | None:
    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None


def _check_separator(path: Path, header_line: str, sep: str, required: Sequence[str]) -> None:
    if sep in header_line:
        return
    for other in (";", ",", "\t", "|"):
        if other != sep and other in header_line:
            shown = "tab" if other == "\t" else repr(other)
            raise DataError(
                path,
                f"wrong separator: the header is split by {shown} but the official format "
                f"uses {sep!r}",
            )
    if len(required) > 1:
        raise DataError(path, f"wrong separator: no {sep!r} in the header line")


def check_columns(df: pd.DataFrame, required: Iterable[str], path: Path) -> None:
    """Raise a DataError naming the first missing column, with a hint when it looks renamed."""
    present = list(df.columns)
    for col in required:
        if col in present:
            continue
        close = difflib.get_close_matches(col, present, n=1, cutoff=0.75)
        case = [c for c in present if c.lower() == col.lower()]
        hint = f" (renamed? found '{(case or close)[0]}')" if (case or close) else ""
        raise DataError(path, f"missing column{hint}", column=col)


def parse_number(
    values: pd.Series,
    *,
    path: Path,
    column: str,
    decimal_comma: bool = True,
    secrets: Iterable[str] = SECRET_MARKERS,
    none_marker: str | None = None,
    lo: float | None = None,
    hi: float | None = None,
    header_lines: int = 1,
) -> pd.Series:
    """Convert official text cells to floats.

    Secret markers become NaN; thin-space thousands separators are removed; decimal commas are
    read as decimal points; ``none_marker`` (e.g. ARCEP's ``-``) means zero. Any other
    non-numeric cell, or a value outside ``[lo, hi]``, raises a DataError naming the line.

    Examples
    --------
    >>> s = pd.Series(["1\\u202f234", "12,5", "s", ""])
    >>> parse_number(s, path="f.csv", column="X").tolist()
    [1234.0, 12.5, nan, nan]
    """
    # pyarrow compute keeps the cleaning vectorised (pandas' regex replace runs per cell)
    arr = pa.array(values.astype("string[pyarrow]").array).fill_null("")
    text = pc.utf8_trim_whitespace(arr)
    is_secret = pc.is_in(pc.utf8_lower(text), value_set=pa.array(sorted({m.lower() for m in secrets}), type=pa.string()))
    cleaned = text
    for sep in _THOUSANDS:
        cleaned = pc.replace_substring(cleaned, sep, "")
    if decimal_comma:
        cleaned = pc.replace_substring(cleaned, ",", ".")
    if none_marker is not None:
        is_none = pc.equal(text, none_marker)
        cleaned = pc.if_else(is_none, "0", cleaned)
        is_secret = pc.and_(is_secret, pc.invert(is_none))
    numeric = pc.match_substring_regex(cleaned, _NUMBER)
    bad = pc.and_(pc.invert(numeric), pc.invert(is_secret)).to_numpy(zero_copy_only=False)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataError(
            path,
            f"non-numeric value {text[pos].as_py()!r} (expected a number or a secret marker)",
            column=column,
            line=pos + 1 + header_lines,
        )
    parsed = pc.cast(pc.if_else(numeric, cleaned, None), pa.float64())
    out = pd.Series(parsed.to_numpy(zero_copy_only=False), index=values.index, dtype=float)
    if not np.isfinite(out.dropna()).all():
        raise DataError(path, "infinite value", column=column)
    _check_range(out, path, column, lo, hi, header_lines)
    return out.astype(float)


def _check_range(
    out: pd.Series, path: Path, column: str, lo: float | None, hi: float | None, header_lines: int
) -> None:
    for bound, bad in ((lo, out < lo if lo is not None else None), (hi, out > hi if hi is not None else None)):
        if bound is None or not bad.any():
            continue
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            path,
            f"value {out.iloc[pos]} outside the plausible range [{lo}, {hi}]",
            column=column,
            line=pos + 1 + header_lines,
        )


def commune_codes(values: pd.Series, *, path: Path, column: str, header_lines: int = 1) -> pd.Series:
    """Normalise commune codes to 5 characters (``1001`` → ``01001``; ``2a004`` → ``2A004``).

    Raises a DataError naming the line of the first code that is not a commune code.
    """
    text = values.astype(str).str.strip().str.upper()
    text = text.where(~text.str.fullmatch(r"\d{4}"), "0" + text)
    ok = text.str.match(_COMMUNE_CODE)
    if not ok.all():
        pos = int(np.flatnonzero(~ok.to_numpy())[0])
        raise DataError(
            path, f"invalid commune code {values.iloc[pos]!r}", column=column, line=pos + 1 + header_lines
        )
    return text


def check_unique(codes: pd.Series, *, path: Path, column: str) -> None:
    """Raise a DataError if a zone code appears twice where the format has one row per zone."""
    dup = codes[codes.duplicated()]
    if len(dup):
        raise DataError(
            path, f"duplicated code {dup.iloc[0]!r} ({len(dup)} duplicates)", column=column
        )
