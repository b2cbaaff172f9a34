"""Logs as JSON lines (one JSON object a line, ``.gz`` allowed: Amazon reviews, Yelp, Steam, Goodreads), read as the
text logs are: roles by a key's common name or by ``columns``, ids kept as written, errors naming the file's line.

The file is parsed a chunk of lines at a time by pandas, and only the keys in a role are kept, so that a log of
long review texts is read in bounded memory.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxrec.data.dataset import DataError, Dataset, UnnamedColumnsError
from jaxrec.data.text import dataset_of_roles, exact_ids, known_names, resolve_columns, role_columns, undecodable

__all__ = ["from_json_lines", "is_json_lines", "read_json_lines_roles"]

logger = logging.getLogger(__name__)

#: lines parsed in one call of pandas (a chunk of long reviews stays a few hundred MB at most)
CHUNK_LINES = 100_000


def _open(path: Path, encoding: str):
    return gzip.open(path, "rt", encoding=encoding) if path.name.endswith(".gz") else open(path, encoding=encoding)


#: names that say a file holds JSON, whatever its first line looks like (a pretty-printed object, an array)
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


def is_json_lines(path: str | os.PathLike) -> bool:
    """Whether a file holds JSON lines: its first non-blank line (after a byte-order mark) is a JSON object, or its
    name ends in ``.jsonl``, ``.ndjson`` or ``.json`` (``.gz`` after it allowed) and it begins with ``{`` or ``[``
    (then the reader names what is not one object a line). A text log whose first field begins with ``{`` (a GUID
    id) is no JSON object, and stays a text log."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
            head = f.read(1 << 16)
    except (EOFError, OSError):
        return False
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if head[:1] not in (b"{", b"["):
        return False
    if path.name.removesuffix(".gz").lower().endswith(JSON_SUFFIXES):
        return True
    try:
        return isinstance(json.loads(head.split(b"\n", 1)[0]), dict)
    except ValueError:  # not JSON (a cut-off line included), or not UTF-8
        return False


def _not_an_object(path: Path, n: int, text: str, first: bool) -> DataError:
    """The error for a line that opens no JSON object, with what it looks like instead (``first``: no record
    came before it)."""
    if text[0] == "[" and first:
        why = "the file holds a JSON array, not one object a line: write it as JSON lines (e.g. pandas.read_json(path)"
        why += ".to_json(out, orient='records', lines=True))"
    else:
        why = "expected one JSON object a line (a record printed over several lines is not JSON lines)"
    return DataError(f"{path}: line {n} is not a JSON object ({text[:60]!r}): {why}")


def _chunks(path: Path, encoding: str, chunk_lines: int, blank: list[int]):
    """``(lines, frame)`` per chunk of non-blank lines: each record's 1-based line, and pandas' frame of them;
    ``blank`` gets the number of blank lines skipped."""
    numbers, texts = [], []
    blank[:] = [0]
    try:
        with _open(path, encoding) as f:
            for n, line in enumerate(f, 1):
                text = line.strip().removeprefix("\ufeff")
                if not text:
                    blank[0] += 1
                    continue
                if text[0] != "{":
                    raise _not_an_object(path, n, text, first=n == blank[0] + 1)
                numbers.append(n)
                texts.append(text)
                if len(texts) == chunk_lines:
                    yield np.asarray(numbers), _parse(path, numbers, texts)
                    numbers, texts = [], []
    except UnicodeDecodeError:
        raise DataError(undecodable(path, encoding)) from None
    except (EOFError, OSError) as e:  # a gzip cut short or damaged
        raise DataError(f"{path}: cannot read the file: {e}") from e
    if texts:
        yield np.asarray(numbers), _parse(path, numbers, texts)


#: pandas' reading of JSON values as written: no dtypes guessed, keys kept as text ("10" is no column 10), and (before
#: pandas 3, where ``dtype=False`` does not cover it) no key named like a date read as one, its unit guessed per chunk
_AS_WRITTEN = {"dtype": False, "convert_axes": False} | (
    {"convert_dates": False} if int(pd.__version__.split(".")[0]) < 3 else {}
)


def _parse(path: Path, numbers: list[int], texts: list[str]) -> pd.DataFrame:
    """The records of one chunk; a line that is not valid JSON is named (looked for only when pandas fails)."""
    try:
        return pd.read_json(io.StringIO("\n".join(texts)), lines=True, **_AS_WRITTEN)
    except ValueError as e:
        for n, text in zip(numbers, texts, strict=True):
            try:
                json.loads(text)
            except json.JSONDecodeError as bad:
                hint = ""
                if text in ("{", "{\r"):
                    hint = " (a record printed over several lines: JSON lines hold one object a line)"
                elif text.startswith("{'"):
                    hint = " (single quotes: a Python dict, not JSON; json.dumps(ast.literal_eval(line)) converts it)"
                raise DataError(f"{path}: line {n} is not valid JSON: {bad.msg} at column {bad.colno}{hint}") from None
        raise DataError(f"{path}: cannot read it as JSON lines: {e}") from None


def _nested_row(values: pd.Series) -> int:
    """The row of the first object or list in a column that holds one."""
    return int(np.flatnonzero(values.map(lambda v: isinstance(v, dict | list)).to_numpy())[0])


def _first_nested(values: pd.Series) -> int | None:
    """The row of the first object or list in a column, or None (pandas cannot hash them: a fast test first)."""
    try:
        pd.factorize(values)
        return None
    except TypeError:
        return _nested_row(values)


def _ids(values: pd.Series, column: str, path: Path, lines: np.ndarray) -> pd.Series:
    """A role's ids as a text log's are: written as text (a whole number ``7.0``, as JSON writers export a float
    column, is ``7``), and integers where every id is a plain one (:func:`~jaxrec.data.text.exact_ids`); an object,
    a list, ``true``, an infinite number or a number pandas could only hold as an inexact float is no id (missing
    ones are left to :func:`~jaxrec.data.from_dataframe` to name). The distinct ids are looked at, not every row."""

    def refuse(row: int, what: str) -> DataError:
        return DataError(f"{path}: key {column!r} line {lines[row]} holds {what}, not an id")

    try:
        codes, uniques = pd.factorize(values)
    except TypeError:  # an object or a list, which pandas cannot hash
        nested = _nested_row(values)
        raise refuse(nested, json.dumps(values.iloc[nested])[:60]) from None
    if values.dtype == bool or values.dtype == object:  # true beside 1 is one value to pandas: find it by type
        flags = values.map(lambda v: isinstance(v, bool | np.bool_), na_action="ignore").fillna(False).to_numpy(bool)
        if flags.any():
            row = int(np.flatnonzero(flags)[0])
            raise refuse(row, str(values.iloc[row]).lower())
    if values.dtype.kind == "f":  # every number of the column became a float64: beyond 2^53 two ids may meet
        inexact = ~np.isfinite(values.to_numpy()) & values.notna().to_numpy() | (np.abs(values.to_numpy()) >= 2**53)
        if inexact.any():
            row = int(np.flatnonzero(inexact)[0])
            raise refuse(row, f"{values.iloc[row]:g} (a float: give large ids as integers or text)")
    written = []
    for u in uniques:
        if isinstance(u, str):
            written.append(u)
        elif isinstance(u, float | np.floating) and not np.isfinite(u):
            raise refuse(int(np.flatnonzero(codes == len(written))[0]), str(u))
        else:
            written.append(str(int(u)) if float(u).is_integer() and abs(float(u)) < 2**63 else str(u))
    written = np.array([*written, None], dtype=object)
    return exact_ids(pd.Series(written[codes], index=values.index, name=values.name))  # code -1: the None


def _keys(message: str) -> str:
    """A message of the text readers, in the words of JSON records."""
    return message.replace("among the header", "among the records' keys").replace(
        "the file's columns are", "the records' keys are"
    )


def read_json_lines_roles(
    path: str | os.PathLike,
    columns: Any = None,
    *,
    encoding: str = "utf-8",
    allow_extra: bool = True,
    chunk_lines: int = CHUNK_LINES,
) -> tuple[pd.DataFrame, dict, np.ndarray, list]:
    """The keys in a role of a JSON-lines log, each record's line, and every key the records hold.

    Args:
      path: the file (``.gz`` allowed).
      columns: the roles' keys, as :func:`~jaxrec.data.from_csv` takes columns (``"user=reviewerID,item=asin"``);
        None guesses them from common names (``user_id``, ``item_id``, ``rating``, ``timestamp``, ...).
      encoding: the text encoding.
      allow_extra: keys beyond the guessed roles are expected in a record (a review's text, its summary).
      chunk_lines: records parsed at a time.

    Returns:
      ``(frame, roles, lines, labels)``: the role keys of every record (ids as a text log's; a record without one of
      them: missing there), ``{role: key}``, each record's 1-based line, and every key of the records, in the order
      they first come.

    Raises:
      DataError: naming the file and line: a line that is not a JSON object, an id that is an object, a list, a
        boolean or an inexact number, a nested rating, weight or time; or naming the file: a role's key in no
        record, ``columns`` as roles in order (records have no order of keys), a file that is empty or not
        ``encoding`` text.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    columns = role_columns(columns)
    if columns is not None and not isinstance(columns, Mapping):
        raise DataError(
            f"{path}: JSON lines name their keys: give columns as role=key (e.g. --columns user=reviewerID,item=asin), "
            f"not roles in order ({columns})"
        )
    named = None if columns is None else {str(key) for key in columns.values()}
    known = known_names(None)  # without columns, the keys that a role's common name may be
    frames, lines, labels, seen, blank = [], [], [], set(), [0]
    for numbers, chunk in _chunks(path, encoding, chunk_lines, blank):
        for key in chunk.columns:
            if key not in seen:
                seen.add(key)
                labels.append(str(key))
        # only the keys a role may read are kept: a chunk of review texts is let go at once
        keep = [k for k in chunk.columns if (k in named if named is not None else str(k).strip().lower() in known)]
        frames.append(chunk[keep])
        lines.append(numbers)
    if not frames:
        raise DataError(f"{path}: file is empty")
    absent = [f"{key!r} (for {role!r})" for role, key in (columns or {}).items() if str(key) not in seen]
    if absent:
        raise DataError(f"{path}: no record holds the key(s) {', '.join(absent)}; the records' keys are {labels}")
    try:
        roles = resolve_columns(labels, columns, True, path, allow_extra)
    except UnnamedColumnsError as e:  # a record has keys, not a header
        raise UnnamedColumnsError(_keys(e.lacking), e.remedy, named_by="keys") from None
    except DataError as e:
        raise DataError(_keys(str(e))) from None
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    frame = frame.reindex(columns=list(dict.fromkeys(roles.values())))  # a key some records lack: missing there
    lines = np.concatenate(lines)
    for role in ("user", "item"):
        frame[roles[role]] = _ids(frame[roles[role]], roles[role], path, lines)
    for role in ("rating", "weight", "timestamp"):
        key = roles.get(role)
        if key is not None and not pd.api.types.is_numeric_dtype(frame[key]):
            # "" is a missing value in JSON writers' hands (Goodreads' read_at), as an empty field is in a text log
            text = frame[key].map(lambda v: v.strip() if isinstance(v, str) else v, na_action="ignore")
            frame[key] = frame[key].where(text != "", None)
        if key is not None and frame[key].dtype == object:
            row = _first_nested(frame[key])
            if row is not None:
                raise DataError(
                    f"{path}: key {key!r} line {lines[row]} holds {json.dumps(frame[key].iloc[row])[:60]}, not a {role}"
                )
    logger.info("%s: read %d record(s), key(s) %s", path, len(frame), list(dict.fromkeys(roles.values())))
    frame.attrs["blank_lines_skipped"] = blank[0]
    return frame, roles, lines, labels


def from_json_lines(
    path: str | os.PathLike,
    columns: Mapping[str, str] | Sequence[str] | str | None = None,
    *,
    feedback: str | None = None,
    positive_threshold: float | None = None,
    encoding: str = "utf-8",
    name: str | None = None,
    min_user_ratings: int = 1,
) -> Dataset:
    """Load an interaction log of JSON lines (``{"reviewerID": "A2SU", "asin": "0000031852", "overall": 5.0,
    "unixReviewTime": 1393545600}`` a line).

    Args:
      path: the file (``.gz`` allowed).
      columns: which key plays which role (``{"user": "reviewerID", "item": "asin", "rating": "overall",
        "timestamp": "unixReviewTime"}``, or ``"user=reviewerID,item=asin,..."`` as ``--columns`` writes it); the
        other keys are not read. None guesses from common names.
      feedback: ``None``, ``"explicit"`` or ``"implicit"`` (see :func:`~jaxrec.data.from_dataframe`).
      positive_threshold: with ``feedback="implicit"`` and a rating key, the lowest rating that is an interaction.
      encoding: the text encoding.
      name: the dataset's name (default: the file name up to its first dot).
      min_user_ratings: users with fewer ratings (after dedup) are dropped and counted in the report.

    Returns:
      The cleaned :class:`~jaxrec.data.Dataset`; ``report["columns_read"]`` lists the keys read.

    Raises:
      DataError: as :func:`read_json_lines_roles` does, or if the log fails a check of
        :func:`~jaxrec.data.from_dataframe` (named with its key and line).
    """
    path = Path(path)
    frame, roles, lines, _ = read_json_lines_roles(path, columns, encoding=encoding)
    ds = dataset_of_roles(frame, roles, path, feedback, positive_threshold, name, min_user_ratings, lines)
    skipped = frame.attrs.get("blank_lines_skipped", 0)
    ds.report = {
        "columns_read": list(dict.fromkeys(roles.values())),
        **({"blank_lines_skipped": skipped} if skipped else {}),
        **ds.report,
    }
    return ds
