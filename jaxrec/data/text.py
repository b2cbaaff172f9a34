"""Reading a delimited text log: the separator sniffed, the header inferred, each column's role resolved, ids kept
as their exact text, and every bad line named by its number in the file.

:func:`from_csv` reads a log into a :class:`~jaxrec.data.Dataset` (through :func:`~jaxrec.data.from_dataframe`,
which validates and counts); :func:`read_log_table` gives the rows and roles alone, for readers of other tables
(a service's batch of users, a file of one user's ratings).
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxrec.data.dataset import ISO_DATE, DataError, Dataset, UnnamedColumnsError, from_dataframe

__all__ = [
    "SEPARATORS",
    "WEIGHT_NAMES",
    "atomic_header",
    "typed_header",
    "from_csv",
    "read_log_table",
    "read_table",
    "resolve_columns",
    "role_arguments",
    "role_columns",
    "sniff_separator",
    "table_columns",
    "undecodable",
]

SEPARATORS = ("::", ",", "\t", "|", ";")
_ROLES = ("user", "item", "rating", "timestamp", "weight")
_POSITIONAL_ROLES = _ROLES[:4]  # the order of a headerless file's columns when columns= is not given
#: a weight column's common names (a count, plays, clicks), read as one by every reader of a log or a new user's file
WEIGHT_NAMES = ("weight", "count", "counts", "plays", "playcount", "clicks")
_COMMON_NAMES = {
    "user": ("user", "userid", "user_id", "uid"),
    "item": ("item", "itemid", "item_id", "movieid", "movie_id", "iid"),
    "rating": ("rating", "ratings", "score", "label"),
    "timestamp": ("timestamp", "time", "ts", "date"),
    "weight": WEIGHT_NAMES,
}
_NUMERIC_ROLES = ("rating", "weight", "timestamp")
#: the field types of RecBole's atomic files (``.inter``, ``.user``, ``.item``), whose header types each name:
#: ``user_id:token  item_id:token  rating:float  timestamp:float``
ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
_ATOMIC_LABEL = re.compile(r"(.+):(" + "|".join(ATOMIC_TYPES) + r")")
_REPEATED_ATOMIC_LABEL = re.compile(r"(:(?:" + "|".join(ATOMIC_TYPES) + r"))\.[0-9]+$")  # pandas' "rating:float.1"
_POWERS_OF_TEN = 10 ** np.arange(19, dtype=np.int64)  # the digits of an int64 id: how many powers it reaches

logger = logging.getLogger(__name__)


def sniff_separator(path: str | os.PathLike, sample_lines: int = 20, encoding: str = "utf-8") -> str:
    """Guess the field separator of a text file among ``::``, ``,``, tab, ``|`` and ``;``.

    ``::`` when every sampled line holds it; else the candidate that splits every sampled line into the same
    number (> 1) of fields, preferring more fields.

    Args:
      path: the file (``.gz`` allowed).
      sample_lines: how many non-blank lines from the top are sampled.
      encoding: the file's text encoding.

    Returns:
      The separator.

    Raises:
      DataError: if the file is empty or unreadable, or no candidate splits the lines consistently.
    """
    lines = _head_lines(path, sample_lines, encoding)
    if not lines:
        raise DataError(f"{path}: file is empty")
    if all("::" in line for line in lines):
        return "::"
    best, best_fields = None, 1
    for sep in SEPARATORS[1:]:
        widths = {len(_split_fields(line, sep)) for line in lines}  # a tab-separated file has no quoting
        if len(widths) > 1:  # a stray quote must not hide the separator: the reader names it with its line
            widths = {len(line.split(sep)) for line in lines}
        if len(widths) == 1 and (n := widths.pop()) > best_fields:
            best, best_fields = sep, n
    if best is None:
        raise DataError(
            f"{path}: cannot tell the separator: line 1 ({lines[0][:80]!r}) does not split consistently on any of "
            f"{[s for s in SEPARATORS]}; pass sep= explicitly"
        )
    return best


def _head_lines(path: str | os.PathLike, n: int, encoding: str = "utf-8") -> list[str]:
    lines = []
    try:
        with _open_text(path, encoding) as f:
            for line in f:
                if line.strip():
                    lines.append(line.rstrip("\r\n"))
                if len(lines) >= n:
                    break
    except (EOFError, OSError) as e:  # a truncated gzip, or a plain file named .gz (gzip.BadGzipFile)
        raise DataError(f"{path}: cannot read the file: {e}") from e
    return lines


def _open_text(path: str | os.PathLike, encoding: str):
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding, errors="replace")
    return open(path, encoding=encoding, errors="replace")


def _open_bytes(path: str | os.PathLike):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _leading_blank_lines(path: str | os.PathLike, encoding: str) -> int:
    """How many blank (or whitespace-only) lines come before the file's first line of text."""
    n = 0
    try:
        with _open_text(path, encoding) as f:
            for line in f:
                if line.strip():
                    break
                n += 1
    except (EOFError, OSError) as e:
        raise DataError(f"{path}: cannot read the file: {e}") from e
    return n


def _blank_lines(path: str | os.PathLike, encoding: str) -> set[int]:
    """The 1-based numbers of the file's blank (or whitespace-only) lines."""
    try:
        with _open_text(path, encoding) as f:
            return {n for n, line in enumerate(f, 1) if not line.strip()}
    except (EOFError, OSError) as e:
        raise DataError(f"{path}: cannot read the file: {e}") from e


def _line_breaks_and_quotes(path: str | os.PathLike, encoding: str) -> tuple[int, bool, bool] | None:
    """``(number of lines, whether a '"' occurs, whether a backslash-quote '\\"' occurs)`` from a byte scan (no
    parsing: fast), or None for an encoding that does not write a line break as the single byte ``\n`` (UTF-16,
    UTF-32)."""
    if any(c.encode(encoding, errors="replace") != c.encode() for c in ("\n", '"', "\\")):
        return None
    breaks, quote, escaped, last = 0, False, False, b"\n"
    try:
        with _open_bytes(path) as f:
            while chunk := f.read(1 << 22):
                breaks += chunk.count(b"\n")
                quote = quote or b'"' in chunk
                escaped = escaped or b'\\"' in last + chunk[:1] or b'\\"' in chunk
                last = chunk[-1:]
    except (EOFError, OSError) as e:
        raise DataError(f"{path}: cannot read the file: {e}") from e
    return breaks + (last != b"\n"), quote, escaped


#: why a line whose quoted field escapes a quote with a backslash is refused, and the remedy
BACKSLASH_QUOTE = (
    'a quoted field escapes a quote with a backslash (\\"), which CSV does not: the field ends at that quote and '
    'the rest is appended to it; write the quote twice instead (e.g. sed \'s/\\\\"/""/g\')'
)


def _backslash_closes_a_field(line: str, sep: str) -> bool:
    """Whether a quoted field of ``line`` ends at a quote that a backslash precedes while more of the field follows
    (``"12\\"34X"``): a quote inside the field to a writer that escapes with backslashes. A field that ends in a
    backslash (``"C:\\dir\\"``, then the separator), a doubled quote (``""``) and a quote in an unquoted field
    are CSV as written."""
    quoted, start, i = False, True, 0
    while i < len(line):
        char = line[i]
        if quoted:
            if char == '"':
                if line[i + 1 : i + 2] == '"':  # a doubled quote: one quote inside the field
                    i += 2
                    continue
                rest = line[i + 1 :].rstrip("\r\n")
                if i and line[i - 1] == "\\" and rest and not rest.startswith(sep):
                    return True
                quoted = False
        elif line.startswith(sep, i):
            start = True
            i += len(sep)
            continue
        elif char == '"' and start:
            quoted = True
        start = False
        i += 1
    return False


def first_backslash_quote(path: str | os.PathLike, encoding: str, sep: str) -> int | None:
    """The first line (from 1) of a ``sep``-separated text file whose quoted field escapes a quote with a backslash
    (:func:`_backslash_closes_a_field`), or None; only the lines that hold ``\\"`` are looked into."""
    try:
        with _open_text(path, encoding) as f:
            for n, line in enumerate(f, 1):
                if '\\"' in line and _backslash_closes_a_field(line, sep):
                    return n
    except (EOFError, OSError):
        return None
    return None


def _first_line_break(frame: pd.DataFrame, lines: np.ndarray) -> tuple[Any, int, str] | None:
    """``(column, line, value)`` of the first text field holding a line break, or None."""
    found = None  # (row, column)
    for col in frame.columns:
        values = frame[col]
        if not (pd.api.types.is_string_dtype(values) or pd.api.types.is_object_dtype(values)):
            continue
        text = values.astype(str)
        hit = np.flatnonzero(
            (text.str.contains("\n", regex=False) | text.str.contains("\r", regex=False)).to_numpy(bool)
        )
        if len(hit) and (found is None or hit[0] < found[0]):
            found = (int(hit[0]), col)
    if found is None:
        return None
    row, col = found
    return col, int(lines[row]), str(frame[col].iloc[row])


def _check_quotes(
    frame: pd.DataFrame, path: Path, lines: np.ndarray, encoding: str, header: bool, lead: int, sep: str
) -> None:
    """A :class:`DataError` when a quote ``"`` made one field of several lines, or cut a field short.

    A field that opens with ``"`` runs to the next ``"``, across line breaks: an item named ``"Heroes (single)``
    would swallow the lines after it into its id, without an error from the parser. Each line is one row when no
    field spans lines, so fewer rows than lines (counted by a byte scan) means a field swallowed some; a file that
    holds no ``"`` at all is not checked further.

    A quote escaped with a backslash (``"12\\"34X"``, as Book-Crossing's files write it) is no escape in CSV: the
    field ends at that quote and the parser appends the rest, quote included, giving the id ``12\\34X"`` without a
    word. A file whose bytes hold ``\\"`` is read line by line for such a field, and the first line with one is
    refused.
    """
    scan = _line_breaks_and_quotes(path, encoding)
    if scan is not None:
        n_lines, has_quote, escaped = scan
        line = first_backslash_quote(path, encoding, sep) if escaped else None
        if line is not None:
            raise DataError(f"{path}: line {line}: {BACKSLASH_QUOTE}")
        if not has_quote or len(frame) >= n_lines - lead - header:
            return
    hit = _first_line_break(frame, lines)
    if hit is not None:
        col, line, value = hit
        raise DataError(
            f"{path}: column {col!r} line {line} holds a line break ({value[:60]!r}...): a field that begins with a "
            "quote '\"' runs to the next quote, over the lines between; remove the stray quote, or quote the whole "
            "field and double the quotes inside it"
        )
    if scan is not None:
        raise DataError(
            f"{path}: {n_lines - lead - int(header)} data line(s) but {len(frame)} row(s) parsed: a quote '\"' joined "
            "lines into one field; check the quotes"
        )


def _table_kwargs(
    path: Path, sep: str, names: Sequence[str] | None, header: bool, encoding: str, allow_extra: bool
) -> tuple[dict[str, Any], list[int] | None]:
    """The :func:`pandas.read_csv` arguments of :func:`read_table` and the file position of each column read
    (None: every column, in order), after checking the first line's width against ``names``."""
    first = _head_lines(path, 1, encoding)
    if not first:
        raise DataError(f"{path}: file is empty")
    width = len(first[0].split(sep))
    if names is not None and width != len(names) and not (allow_extra and width > len(names)):
        how = "fewer" if width < len(names) else "more"
        raise DataError(
            f"{path}: line 1 has {width} field(s) separated by {sep!r} but {len(names)} are expected "
            f"({', '.join(names)}): {how} columns than expected (wrong separator or file?)"
        )
    kwargs: dict[str, Any] = dict(encoding=encoding, header=0 if header else None, engine="c")
    usecols = None
    if sep == "::":
        usecols = list(range(0, 2 * width, 2))[: len(names) if names else width]
        kwargs.update(sep=":", usecols=usecols)
    elif sep == "\t":
        # a tab-separated file has no quoting: a '"' in a field (an item "Heroes (single) or "Weird Al" Yankovic)
        # is text, not the start of a field running over the next lines
        kwargs.update(sep=sep, quoting=csv.QUOTE_NONE)
    else:
        kwargs.update(sep=sep, quotechar='"')
    if sep != "::" and names is not None and width > len(names):
        usecols = list(range(len(names)))
        kwargs["usecols"] = usecols
    return kwargs, usecols


def table_columns(path: str | os.PathLike, sep: str, header: bool, *, encoding: str = "utf-8") -> list:
    """The column labels :func:`read_table` gives the file (``names=None``): the header's names, or positions
    ``0..n-1`` without a header."""
    path = Path(path)
    kwargs, usecols = _table_kwargs(path, sep, None, header, encoding, False)
    if not header:
        return list(range(len(usecols))) if usecols is not None else list(range(_width(path, sep, encoding)))
    try:
        labels = pd.read_csv(path, nrows=0, skiprows=_leading_blank_lines(path, encoding), **kwargs).columns
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{path}: cannot parse the header with separator {sep!r}: {e}") from e
    except (EOFError, OSError) as e:
        raise DataError(f"{path}: cannot read the file: {e}") from e
    return list(labels)


def check_repeated_header(path: Path, sep: str, encoding: str, read: Any) -> None:
    """Refuse a header that names a column it reads more than once (``read``: the names read, or None for a guess
    of roles, which reads every named column): pandas renames the repeat (``rating.1``), and an error would name a
    column the file lacks. Empty names (a spreadsheet's trailing separators) and unread repeats are let be."""
    fields = [f.lstrip("\ufeff") for f in _split_fields(_head_lines(path, 1, encoding)[0], sep)]
    repeated = sorted({f for f in fields if f.strip() and fields.count(f) > 1 and (read is None or f in read)})
    if repeated:
        where = ", ".join(f"{name!r} (columns {[i for i, f in enumerate(fields) if f == name]})" for name in repeated)
        raise DataError(f"{path}, line 1: the header names {where} more than once; rename or drop the repeats")


def _width(path: Path, sep: str, encoding: str) -> int:
    """The number of fields of the first line as the parser splits it (a quoted separator does not split)."""
    line = _head_lines(path, 1, encoding)[0]
    return len(_split_fields(line, sep))


def _split_fields(line: str, sep: str) -> list[str]:
    """One line's fields, split as :func:`read_table` splits them (quotes only where the separator has them)."""
    if sep == "::":
        return line.split("::")
    if sep == "\t":
        return line.split("\t")
    return next(csv.reader([line], delimiter=sep))


def read_table(
    path: str | os.PathLike,
    sep: str,
    names: Sequence[str] | None,
    header: bool,
    *,
    encoding: str = "utf-8",
    dtype: Mapping[str, Any] | None = None,
    allow_extra: bool = False,
    text_columns: Sequence[int] = (),
    line_numbers: bool = False,
) -> pd.DataFrame:
    """Read a separated text file with the fast C parser, checking its width.

    ``::`` is read as the single character ``:`` with the empty in-between fields skipped (the C engine cannot
    take multi-character separators and the python engine is ~20x slower); fields must then not contain ``:``.
    A tab-separated file is read without quoting: a ``"`` is part of the text.

    Args:
      path: the file (``.gz`` allowed).
      sep: the field separator.
      names: the expected columns in order, or None to take the file's.
      header: whether the first line is a header.
      encoding: the text encoding.
      dtype: optional pandas dtypes per column.
      allow_extra: accept more fields than ``names`` (the extra ones are not read).
      text_columns: positions (among the columns read) of columns kept as their exact text (ids: ``00001`` is not
        the number 1, ``NA`` or ``None`` is not missing); then only an empty field is missing, in every column.
      line_numbers: index the rows by their 1-based line in the file, skip blank lines (without it, the rows are
        numbered from 0 and blank lines are skipped by the parser), and refuse a quote that joined lines into one
        field.

    Returns:
      The table; with ``names`` and no header, its columns are ``names``; with neither, ``0..n-1``.

    Raises:
      DataError: if the file is missing, empty or unreadable, its first line does not have as many fields as
        ``names``, it does not parse with ``sep``, a quote joins lines into one field (``line_numbers``), or it has
        a header but no rows.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    kwargs, usecols = _table_kwargs(path, sep, names, header, encoding, allow_extra)
    kwargs["dtype"] = dict(dtype) if dtype else None
    if text_columns:
        positions = [usecols[j] if usecols is not None else j for j in text_columns]
        kwargs["dtype"] = {**(kwargs["dtype"] or {}), **{p: str for p in positions}}
        kwargs.update(keep_default_na=False, na_values=[""])
    lead = 0
    if line_numbers:
        lead = _leading_blank_lines(path, encoding)
        kwargs.update(skip_blank_lines=False, skiprows=lead)
    try:
        frame = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: file is empty") from e
    except UnicodeDecodeError as e:
        raise DataError(undecodable(path, encoding)) from e
    except (pd.errors.ParserError, ValueError) as e:
        unclosed = re.search(r"EOF inside string starting at row (\d+)", str(e))
        if unclosed and line_numbers:  # the parser counts every line from 0 (blank ones too: skip_blank_lines=False)
            raise DataError(
                f"{path}: line {int(unclosed.group(1)) + lead + 1} opens a quote '\"' that is never closed (the field "
                "would run to the end of the file); remove the stray quote, or quote the whole field"
            ) from e
        quoted = kwargs.get("quoting") != csv.QUOTE_NONE
        escaped = first_backslash_quote(path, encoding, sep) if quoted else None
        also = f"; line {escaped}: {BACKSLASH_QUOTE}" if escaped is not None else ""
        raise DataError(f"{path}: cannot parse with separator {sep!r}: {e}{also}") from e
    except (EOFError, OSError) as e:  # a gzip cut short or damaged past the lines sniffed above
        raise DataError(f"{path}: cannot read the file: {e}") from e
    if names is not None:
        if not header:
            frame.columns = list(names)
    elif not header:
        frame.columns = list(range(frame.shape[1]))
    lines = np.arange(len(frame)) + lead + (2 if header else 1)
    rest_empty = None
    if line_numbers:
        if kwargs.get("quoting") != csv.QUOTE_NONE:
            _check_quotes(frame, path, lines, encoding, header, lead, ":" if sep == "::" else sep)
        frame, lines, rest_empty = _drop_blank_lines(frame, path, lines, _rest_empty(frame), encoding)
        frame.index = pd.Index(lines, name="line")
    if len(frame) == 0:
        raise DataError(f"{path}: file has a header but no rows")
    _check_rows_split(frame, path, sep, lines, rest_empty)
    return frame


def undecodable(path: str | os.PathLike, encoding: str) -> str:
    """The message for a file that is not ``encoding`` text: the first line that does not decode, and its bytes."""
    with _open_bytes(path) as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as e:
                bad = line[e.start : e.end]
                return (
                    f"{path}: line {n} is not {encoding} text (byte(s) {bad.hex(' ')} at column {e.start + 1}): pass "
                    "the file's encoding (--encoding latin-1, cp1252, ...)"
                )
    return f"{path}: the file is not {encoding} text: pass its encoding (--encoding latin-1, cp1252, ...)"


def _rest_empty(frame: pd.DataFrame) -> np.ndarray:
    """Whether each row's fields after the first are all empty (column by column: faster than ``all(axis=1)``)."""
    rest = [frame.iloc[:, j].isna().to_numpy() for j in range(1, frame.shape[1])]
    return np.logical_and.reduce(rest) if rest else np.zeros(len(frame), bool)


def _drop_blank_lines(
    frame: pd.DataFrame, path: Path, lines: np.ndarray, rest_empty: np.ndarray, encoding: str
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The rows of ``frame`` read from lines that are not blank, their lines and ``rest_empty``;
    ``attrs["blank_lines"]`` counts those dropped. A line of empty fields (``,,``) is not blank: it stays, to be
    reported as missing ids."""
    maybe = rest_empty.copy()
    if maybe.any():  # of those, a blank line's first field is empty too (or spaces)
        first = frame.iloc[np.flatnonzero(maybe), 0]
        maybe[maybe] = first.isna().to_numpy() | first.astype(str).str.strip().eq("").to_numpy(bool)
    dropped = 0
    if maybe.any():
        blank = np.isin(lines, np.fromiter(_blank_lines(path, encoding), np.int64)) & maybe
        dropped = int(blank.sum())
        if dropped:
            frame, lines, rest_empty = frame[~blank], lines[~blank], rest_empty[~blank]
    frame.attrs["blank_lines"] = dropped
    return frame, lines, rest_empty


def _check_rows_split(
    frame: pd.DataFrame, path: Path, sep: str, lines: np.ndarray, rest_empty: np.ndarray | None
) -> None:
    """Rows whose every field landed in the first column, under a wider first line, were written with another
    separator (tab-separated rows under a comma header): say so, rather than report the empty fields.

    ``rest_empty``: :func:`_rest_empty` of ``frame`` when known (None: computed here, when needed)."""
    first_type = frame.dtypes.iloc[0] if frame.shape[1] else None
    if frame.shape[1] < 2 or not (pd.api.types.is_string_dtype(first_type) or pd.api.types.is_object_dtype(first_type)):
        return
    rest_empty = _rest_empty(frame) if rest_empty is None else rest_empty
    if not rest_empty.any():
        return
    first = int(np.flatnonzero(rest_empty)[0])
    field = str(frame.iloc[first, 0])
    other = next((c for c in ("\t", ";", "|", "::", ",") if c != sep and c in field), None)
    if other is not None:
        raise DataError(
            f"{path}: line {int(lines[first])} ({field[:60]!r}) is one field with separator {sep!r} but the first "
            f"line has {frame.shape[1]}: its fields look separated by {other!r}; pass that separator (--sep)"
        )


def _value_in_role(text: str, role: str) -> bool:
    """Whether a field of a numeric role (rating, weight, timestamp) holds a value rather than a column name."""
    return _looks_numeric(text) or (role == "timestamp" and re.match(ISO_DATE, text) is not None)


def _positions_of_numeric_roles(columns: Any, width: int) -> dict[int, str]:
    """``{position: role}`` of the rating, weight and timestamp columns of a headerless reading of ``columns``."""
    return {p: r for p, r in _positions_of_roles(columns, width).items() if r in _NUMERIC_ROLES}


def _positions_of_roles(columns: Any, width: int) -> dict[int, str]:
    """``{position: role}`` of the columns in a role in a headerless reading of ``columns`` (``_`` included)."""
    if columns is None:
        by_position = dict(enumerate(_POSITIONAL_ROLES[: min(width, len(_POSITIONAL_ROLES))]))
    elif isinstance(columns, Mapping):
        by_position = {c: r for r, c in columns.items() if isinstance(c, int) and not isinstance(c, bool)}
    elif isinstance(columns, str):
        return {}
    else:
        by_position = dict(enumerate(columns))
    return {p: r for p, r in by_position.items() if 0 <= p < width}


def known_names(columns: Any) -> set[str]:
    """Lower-case names a header may give the roles: the role names, their common names, and the column names
    of a ``columns`` mapping."""
    names = set(_ROLES) | {n for common in _COMMON_NAMES.values() for n in common}
    if isinstance(columns, Mapping):
        names |= {c.strip().lower() for c in columns.values() if isinstance(c, str)}
    return names


def _unlike_data(fields: list[str], following: list[list[str]]) -> bool:
    """Whether line 1 looks unlike the lines after it: a field without a digit where every following line has
    digits in that column (``visitor`` over ``u17``), which a column name is and an id rarely is."""
    if len(following) < 2:
        return False
    for j, text in enumerate(fields):
        if any(ch.isdigit() for ch in text):
            continue
        if all(len(row) > j and any(ch.isdigit() for ch in row[j]) for row in following):
            return True
    return False


#: what a log writes for a missing value: a first line holding one in a numeric role is data, not a header
_MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "-", "?", "missing", "#n/a"})


def _infer_header(path: Path, sep: str, fields: list[str], columns: Any, encoding: str) -> bool:
    """Whether line 1 (split into ``fields``) is a header.

    With a numeric role (rating, weight, timestamp) among the columns, line 1 is data when a field in such a role
    holds a number (or, for a timestamp, an ISO-8601 date) or a missing value (empty, ``NA``, ``null``, ...), or
    when its user id is one of the next lines' users; else a header (``reader,book,stars``). So a first row with a
    bad value (``u9,i5,n/a``) is reported as the bad row it is, never read as a header and lost. Without a numeric
    role (``columns=["user", "item"]``), it is a header when a field is a role's name (``user``, ``item_id``,
    ``count``, ...) or a name in a ``columns`` mapping, or when it looks unlike the lines after it (no digit where
    they all have one); else it is data, kept as the first row.
    """
    text = [f.strip().strip('"').strip() for f in fields]
    following = [_split_fields(line, sep) for line in _head_lines(path, 21, encoding)[1:]]
    if atomic_header(text) is not None and not any(atomic_header(row) for row in following):
        return True  # every field "name:type", and not the lines after it: RecBole's typed header
    roles = _positions_of_roles(columns, len(text))
    numeric = {p: r for p, r in roles.items() if r in _NUMERIC_ROLES}
    if numeric:
        if any(_value_in_role(text[p], role) or text[p].lower() in _MISSING_TOKENS for p, role in numeric.items()):
            return False
        user = next((p for p, r in roles.items() if r == "user"), None)
        users = {row[user].strip().strip('"').strip() for row in following if user is not None and len(row) > user}
        return user is None or text[user] not in users
    known = known_names(columns)
    if any(t.lower() in known for t in text):
        return True
    return _unlike_data(text, following)


def atomic_header(labels: Sequence[Any]) -> dict[str, str] | None:
    """``{name: type}`` of a RecBole atomic header, where every label is ``name:type`` (``user_id:token``,
    ``genre:token_seq``, ``rating:float``), or ``None`` for any other header (one that names a column twice
    included: :func:`typed_header` refuses it). A file in this form is read by its names (``user_id``), so that
    roles are guessed and ``columns=`` is written as for any log."""
    found = [_ATOMIC_LABEL.fullmatch(_label_text(label)) for label in labels]
    if not found or not all(found):
        return None
    names = {m.group(1).strip(): m.group(2) for m in found}
    return names if len(names) == len(found) else None


def _label_text(label: Any) -> str:
    """A header label as the file writes it: without a byte-order mark, nor pandas' ``.1`` of a repeated name."""
    return _REPEATED_ATOMIC_LABEL.sub(r"\1", str(label).strip().lstrip("\ufeff"))


def typed_header(labels: Sequence[Any], where: Any) -> dict[str, str] | None:
    """:func:`atomic_header` of a file's header, refusing one that types some names as RecBole does and not the
    others (``user_id:token  item_id``, ``year:int``), which would otherwise be read by its labels as written, and
    one that types a name twice."""
    atomic = atomic_header(labels)
    typed = [_ATOMIC_LABEL.fullmatch(_label_text(label)) for label in labels]
    if atomic is not None or not any(typed):
        return atomic
    if all(typed):
        names = [m.group(1).strip() for m in typed]
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{where}: line 1 names {twice} more than once; rename or drop the repeats")
    untyped = [
        "an unnamed column (a separator at the end of the line?)" if str(label).startswith("Unnamed: ") else str(label)
        for label, m in zip(labels, typed, strict=True)
        if not m
    ]
    raise DataError(
        f"{where}: line 1 types some columns as RecBole's atomic files do (name:type) but not {untyped} (the types "
        f"are {', '.join(ATOMIC_TYPES)}): type every column, or none"
    )


def _atomic_name(column: Any, atomic: Mapping[str, str]) -> Any:
    """A column of an atomic header given as its header writes it (``item_id:token``) as its name (``item_id``)."""
    found = _ATOMIC_LABEL.fullmatch(column.strip()) if isinstance(column, str) else None
    return found.group(1).strip() if found and found.group(1).strip() in atomic else column


def exact_ids(values: pd.Series) -> pd.Series:
    """An id column read as text, as integers when every id is an integer written as one (``42``, not ``042``,
    ``+42`` or ``4.2e1``; spaces around it aside): the integers' text is their exact form, and the codes sort as they
    always did (numerically), so that a log of integer ids (MovieLens) splits as before. Any other column stays
    text: ``00001`` and ``1`` are two ids.

    The distinct ids are checked, not every row: a log repeats its ids.
    """
    codes, uniques = pd.factorize(values)
    if len(values) == 0 or (codes < 0).any():
        return values  # a missing id is reported by from_dataframe
    text = pd.Series(uniques, dtype=str)
    try:
        ints = text.astype(np.int64).to_numpy()  # fails at once on text ids; accepts "007", "+7", "1_000" too
    except (ValueError, TypeError, OverflowError):
        return values
    # the text of a plain integer has exactly its digits (and its sign): "007", "+7" or "1_000" have more
    written = np.maximum(np.searchsorted(_POWERS_OF_TEN, np.abs(ints), side="right"), 1) + (ints < 0)
    if not (text.str.strip().str.len().to_numpy() == written).all():
        return values
    return pd.Series(ints[codes], index=values.index, name=values.name)


def read_log_table(
    path: str | os.PathLike,
    columns: Any = None,
    sep: str | None = None,
    header: bool | str = "infer",
    *,
    encoding: str = "utf-8",
    allow_extra: bool = False,
) -> tuple[pd.DataFrame, dict, np.ndarray, bool]:
    """The rows of a separated text log and the column of each role, read as :func:`from_csv` reads them (the
    separator sniffed, the header inferred, ids kept as their exact text, blank lines skipped, each row's line kept).

    Returns:
      ``(frame, roles, lines, header)``: the table (every column), ``{role: column}``, each row's 1-based line in
      the file, and whether line 1 was a header.

    Raises:
      DataError: naming the file, and the line or column, as :func:`read_table` and :func:`resolve_columns` do.
    """
    path = Path(path)
    columns = role_columns(columns)
    if sep is not None and len(sep) != 1 and sep != "::":
        raise DataError(f"{path}: separator {sep!r}: give one character (',', '\\t', ';', '|') or '::'")
    sep = sep or sniff_separator(path, encoding=encoding)
    first = _head_lines(path, 1, encoding)
    if not first:
        raise DataError(f"{path}: file is empty")
    fields = _split_fields(first[0], sep)
    if len(fields) < 2:
        raise DataError(
            f"{path}: line 1 ({first[0][:80]!r}) has a single field with separator {sep!r}: wrong separator? "
            "(sep=None sniffs it)"
        )
    if header == "infer":
        header = _infer_header(path, sep, fields, columns, encoding)
        logger.info("%s: line 1 read as %s", path, "a header" if header else "data (no header)")
    header = bool(header)
    labels = table_columns(path, sep, header, encoding=encoding)
    atomic = typed_header(labels, path) if header else None
    if atomic is not None:
        labels = list(atomic)
        logger.info("%s: a RecBole atomic header, read by its names %s", path, labels)
        if isinstance(columns, Mapping):  # "item_id:token" as the header writes it is the column "item_id"
            columns = {role: _atomic_name(col, atomic) for role, col in columns.items()}
    named = role_columns(columns) if header else ()  # roles in file order read by position: names do not matter
    if named is None or isinstance(named, Mapping):
        read = None if named is None else [c for c in named.values() if isinstance(c, str)]
        check_repeated_header(path, sep, encoding, read)
    roles = resolve_columns(labels, columns, header, path, allow_extra)
    ids = [labels.index(roles[role]) for role in ("user", "item")]
    frame = read_table(path, sep, None, header, encoding=encoding, text_columns=ids, line_numbers=True)
    if atomic is not None:
        frame.columns = labels
    lines = frame.index.to_numpy()
    return frame.reset_index(drop=True), roles, lines, header


def from_csv(
    path: str | os.PathLike,
    columns: Mapping[str, str | int] | Sequence[str] | str | None = None,
    sep: str | None = None,
    header: bool | str = "infer",
    *,
    feedback: str | None = None,
    positive_threshold: float | None = None,
    name: str | None = None,
    min_user_ratings: int = 1,
    allow_extra: bool = False,
    encoding: str = "utf-8",
) -> Dataset:
    """Load any interaction log stored as separated text (``.gz`` allowed).

    Args:
      path: the file.
      columns: which column plays which role. A mapping ``{"user": "userId", "item": "movieId", "rating": ...,
        "timestamp": ..., "weight": ...}`` of names (with a header) or 0-based positions (the other columns are
        not in a role), also spelt ``"user=userId,item=movieId"`` as ``--columns`` takes it; or a sequence of role
        names in file order, e.g. ``["user", "item", "rating", "timestamp"]`` or ``["user", "item", "weight"]``
        (use ``"_"`` for a column to ignore), or the same as one comma-separated string (``"user,item,_"``, as
        ``--columns`` takes it). ``None`` guesses: common header names (``userId``, ``item_id``, a
        weight column ``count``, ``plays``, ``clicks``, ...) or, without a header, the order user, item,
        rating[, timestamp]. Omit ``"rating"`` for an implicit log; ``"weight"`` is an implicit log's count or
        confidence column.
      sep: separator; ``None`` sniffs among ``::``, ``,``, tab, ``|``, ``;``.
      header: ``True``, ``False`` or ``"infer"``: line 1 is a header unless its fields in the rating, weight or
        timestamp roles hold numbers (or ISO-8601 dates); with no such role (``columns=["user", "item"]``), a header
        when a field is a role's name (``user``, ``item_id``, ...) or looks unlike the lines after it.
        ``report["header_line_read"]`` says which.
      name: the dataset's name (default: the file name up to its first dot).
      min_user_ratings: users with fewer ratings (after dedup) are dropped and counted in the report.
      allow_extra: with a header and ``columns=None``, columns beyond the guessed roles are an error unless this is
        set (a mapping reads the columns it names and leaves the others).
      encoding: the text encoding.
      feedback: ``None``, ``"explicit"`` or ``"implicit"`` (see :func:`from_dataframe`).
      positive_threshold: with ``feedback="implicit"`` and a rating column, the lowest rating that counts as an
        interaction (see :func:`from_dataframe`).

    A RecBole atomic file (``.inter``: every header name typed, ``user_id:token  item_id:token  rating:float``) is
    read by its names (``user_id``); ``columns=`` may name a column either way.

    User and item ids keep their text (``00001`` and ``1`` are two users, ``NA`` and ``None`` are ids; only an
    empty field is missing), except that a column of plain integers (``42``, never ``042``) is read as integers. A
    tab-separated file has no quoting; elsewhere a field that opens a quote ``"`` and swallows lines is an error.
    Blank lines are skipped (counted in ``report["blank_lines_skipped"]``) and errors name the file's lines.

    Returns:
      The cleaned :class:`Dataset` (see :func:`from_dataframe`); errors name file lines.

    Raises:
      DataError: if the file is missing, empty or unreadable, the separator is wrong or cannot be sniffed, a role's
        column is missing, unknown or unexpected, or the log fails a check of :func:`from_dataframe`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    frame, roles, lines, header = read_log_table(path, columns, sep, header, encoding=encoding, allow_extra=allow_extra)
    columns = role_columns(columns)
    for role in ("user", "item"):
        frame[roles[role]] = exact_ids(frame[roles[role]])
    if feedback == "implicit" and columns is None and not header and "rating" in roles and positive_threshold is None:
        _warn_rating_ignored(path, list(roles))
    ds = dataset_of_roles(frame, roles, path, feedback, positive_threshold, name, min_user_ratings, lines)
    read = {"header_line_read": header}
    if frame.attrs.get("blank_lines"):
        read["blank_lines_skipped"] = frame.attrs["blank_lines"]
    ds.report = {**read, **ds.report}
    return ds


def _warn_rating_ignored(path: Path, roles: list[str]) -> None:
    """Warn that a headerless implicit log's third column, read as a rating by position, is ignored: a play or
    click count there would be lost in silence."""
    as_weight = ",".join("weight" if role == "rating" else role for role in roles)
    logger.warning(
        "%s: without a header or columns=, column 3 is read as a rating, and an implicit log ignores ratings (no "
        "positive_threshold): if it counts plays or clicks, read it as the interactions' weight with "
        "columns=%r (CLI: --columns %s)",
        path,
        as_weight.split(","),
        as_weight,
    )


def dataset_of_roles(
    frame: pd.DataFrame,
    roles: Mapping[str, Any],
    path: Path,
    feedback: str | None,
    positive_threshold: float | None,
    name: str | None,
    min_user_ratings: int,
    lines: np.ndarray | None = None,
) -> Dataset:
    """:func:`from_dataframe` of a file's columns by role: named after the file (up to its first dot) unless
    ``name`` is given, its errors naming the file and, with ``lines``, each row's line."""
    return from_dataframe(
        frame,
        **role_arguments(roles),
        feedback=feedback,
        positive_threshold=positive_threshold,
        name=name or path.name.split(".")[0],
        min_user_ratings=min_user_ratings,
        source=str(path),
        _line_offset=lines,
    )


def role_arguments(roles: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`from_dataframe`'s column arguments from a map of roles to columns (:func:`resolve_columns`)."""
    return {
        "user": roles["user"],
        "item": roles["item"],
        **{r: roles.get(r) for r in ("rating", "timestamp", "weight")},
    }


def role_columns(columns: Any) -> Any:
    """``columns=`` as a mapping or a sequence of roles: the command line's spelling ``"user,item,timestamp"`` (the
    roles in file order) or ``"user=customer_id,item=sku"`` (role=column, the others not read) split at its commas,
    a sequence of ``role=column`` entries made a mapping; anything else as given."""
    if isinstance(columns, str):  # not a string's characters
        columns = [entry.strip() for entry in columns.split(",")]
    if isinstance(columns, Mapping) or columns is None:
        return columns
    columns = list(columns)
    pairs = [isinstance(entry, str) and "=" in entry for entry in columns]
    if not any(pairs):
        return columns
    if not all(pairs):
        raise DataError(
            f"columns= {columns} mixes role=column entries with roles in file order; use one form: "
            "'user=customer_id,item=sku' or 'user,item,_'"
        )
    mapping = {}
    for entry in columns:
        role, column = (part.strip() for part in entry.split("=", 1))
        if role in mapping:
            raise DataError(f"columns= {columns} names the role {role!r} more than once")
        mapping[role] = column
    return mapping


def resolve_columns(cols: list, columns: Any, header: bool, path: Path, allow_extra: bool) -> dict:
    """Map roles to the file's column labels, raising a :class:`DataError` for missing or unexpected ones (a
    column beyond the guessed roles when ``columns`` is None and not ``allow_extra``; an explicit mapping reads its
    columns and leaves the others)."""
    if columns is None:
        if header:
            lowered = {str(c).strip().lower(): c for c in cols}
            roles = {}
            for role, names in _COMMON_NAMES.items():
                hit = next((lowered[n] for n in names if n in lowered), None)
                if hit is not None:
                    roles[role] = hit
            for role in ("user", "item"):
                if role not in roles:
                    # a mapping reads only the columns it names: the remedy names the roles found as well
                    named = {**{r: roles[r] for r in ("user", "item") if r in roles}, role: "<name>"}
                    named.update({r: c for r, c in roles.items() if r not in named})
                    mapping = ", ".join(f"{r!r}: {c}" if c == "<name>" else f"{r!r}: {c!r}" for r, c in named.items())
                    flag = ",".join(f"{r}={c}" for r, c in named.items())
                    raise UnnamedColumnsError(
                        f"{path}: no {role} column among the header {cols}",
                        f"pass columns={{{mapping}, ...}} (--columns {flag},...; a rating, time or weight column is "
                        "read only where named)",
                    )
        else:
            if len(cols) > 4:
                raise UnnamedColumnsError(
                    f"{path}: {len(cols)} columns without a header, expected user, item[, rating[, timestamp]]",
                    "pass columns=[...] naming each in order (--columns user,item,_,...: '_' skips one)",
                    named_by="no header",
                )
            roles = dict(zip(_POSITIONAL_ROLES, cols, strict=False))
    elif isinstance(columns, Mapping):
        unknown = set(columns) - set(_ROLES)
        if unknown:
            raise DataError(f"{path}: unknown role(s) {sorted(unknown)} in columns=; roles are {list(_ROLES)}")
        roles = {}
        for role, col in columns.items():
            if isinstance(col, str) and col not in cols and col.isdigit():  # "user=0": a position, as on the CLI
                col = int(col)
            if isinstance(col, int) and header:
                if col >= len(cols):
                    raise DataError(f"{path}: column position {col} for {role!r} but the file has {len(cols)} columns")
                col = cols[col]
            if col not in cols:
                raise DataError(f"{path}: missing column {col!r} (for {role!r}); the file's columns are {cols}")
            roles[role] = col
    else:
        columns = list(columns)
        if len(columns) != len(cols):
            raise DataError(
                f"{path}: the columns given name {len(columns)} column(s) {columns} but the file has "
                f"{len(cols)}: {cols}"
            )
        twice = sorted({role for role in columns if role != "_" and columns.count(role) > 1})
        if twice:
            raise DataError(f"{path}: columns= {columns} names {', '.join(map(repr, twice))} more than once")
        roles = {role: col for role, col in zip(columns, cols, strict=True) if role != "_"}
        unknown = set(roles) - set(_ROLES)
        if unknown:
            raise DataError(f"{path}: unknown role(s) {sorted(unknown)} in columns=; roles are {list(_ROLES)} or '_'")
    shared = sorted({col for col in roles.values() if list(roles.values()).count(col) > 1}, key=str)
    if shared:
        both = [role for role in roles if roles[role] == shared[0]]
        raise DataError(f"{path}: columns= {columns} reads column {shared[0]!r} as both {' and '.join(both)}")
    absent = [role for role in ("user", "item") if role not in roles]
    if absent:
        raise DataError(
            f"{path}: columns= {columns} has no {' and no '.join(absent)} column; a log needs a user and an item column"
        )
    if header and columns is None:
        extra = [c for c in cols if c not in roles.values()]
        if extra and not allow_extra:
            guessed = ",".join(f"{role}={col}" for role, col in roles.items())
            raise DataError(
                f"{path}: unexpected extra column(s) {extra}; name the roles' columns in columns= (--columns "
                f"{guessed}: the others are then not read; add e.g. weight={extra[0]} where one is a count or a "
                "confidence; jaxrec.data.from_csv: allow_extra=True)"
            )
    return roles
