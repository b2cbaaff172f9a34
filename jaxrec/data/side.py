"""Side tables a user brings: a file of item (or user) features, read and joined to a log by raw id.

A side table has a header and one row per id: the id column is the one named ``item`` (``item_id``, ``itemId``,
``id``; ``user``... for users), else the first; every other column is a feature, encoded by the
:class:`~jaxrec.data.Featurizer` (``"|"``-joined tags multi-hot, many-valued numbers in quantile bins, the rest
categorical). Features are metadata, known for items no one has interacted with yet: how a new item reaches a
top-N list. Ids match the log's as its reader typed them (plain integers as numbers when the log's ids are), and
every mismatch is counted in the dataset's ``report``, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import numpy as np
import pandas as pd

from jaxrec.data.dataset import DataError, Dataset, side_table
from jaxrec.data.parquet import _pyarrow, is_parquet
from jaxrec.data.text import (
    BACKSLASH_QUOTE,
    first_backslash_quote,
    sniff_separator,
    typed_header,
    undecodable,
)

__all__ = ["join_side_files", "read_side_table", "with_side_features"]

logger = logging.getLogger(__name__)

_ID_NAMES = {
    "item": ("item", "item_id", "itemid", "movieid", "movie_id", "id"),
    "user": ("user", "user_id", "userid", "id"),
}


def read_side_table(
    path: str | os.PathLike, role: str, *, sep: str | None = None, encoding: str = "utf-8", flag: str | None = None
) -> pd.DataFrame:
    """Read a table of ``role`` (``"item"`` or ``"user"``) features: separated text with a header (``.gz``
    allowed; the separator sniffed) or Parquet.

    Args:
      path: the file.
      role: ``"item"`` or ``"user"``.
      sep: a text file's separator (default: sniffed).
      encoding: a text file's encoding.
      flag: the option that named the file, for messages (default ``--<role>-features``).

    Returns:
      The features indexed by raw id (text, stripped), one column per feature: a column of decimal numbers is
      float64 (a quantity), any other (integers included: codes such as a zip) text; an empty field is missing.
      A RecBole atomic table (``.item``, ``.user``: ``item_id:token  genre:token_seq  price:float``) is read as its
      header types it: ``float`` numbers (nullable ``Float64``: a quantity even of whole numbers), ``token`` text,
      ``token_seq`` space-separated tags (``"|"``-joined, so multi-hot), except an item's name (``movie_title``,
      ``item_name``), its ``title``; ``float_seq`` is left out; RecBole's ``genre`` (or ``class``) and
      ``release_year`` are MovieLens's ``genres`` and ``year``, read by their encoders.

    Raises:
      DataError: naming the file (and the line) if it is missing or unreadable, has no feature column, a missing
        id, or an id twice.
    """
    if role not in _ID_NAMES:
        raise ValueError(f"role must be 'item' or 'user', got {role!r}")
    flag = flag or f"--{role}-features"
    where = f"{flag} {path}"
    if not os.path.exists(path):
        raise DataError(f"{where}: file not found")
    parquet = is_parquet(path)
    if not parquet and sep is None:
        try:
            sep = sniff_separator(path, encoding=encoding)
        except DataError as e:
            if "file is empty" in str(e):
                raise DataError(f"{where}: the file is empty") from None
            escaped = next(filter(None, (first_backslash_quote(path, encoding, s) for s in ",;\t|")), None)
            if escaped is not None:  # the quote cut a field short, and the lines split apart
                raise DataError(f"{where}: cannot tell the separator; line {escaped}: {BACKSLASH_QUOTE}") from None
            raise DataError(
                f"{where}: expected an id column and at least one feature column, separated by a comma, a tab, '|', "
                "';' or '::' (the first lines do not split into the same fields)"
            ) from None
    try:
        if parquet:
            _pyarrow()  # an optional extra, as for Parquet logs: a clear error without it
            import pyarrow.parquet as pq

            arrow = pq.read_table(path)
            frame = pd.DataFrame(
                {f.name: _parquet_column(arrow.column(f.name).to_pandas(), f.type) for f in arrow.schema}
            )
            first_line = 1
        else:
            frame = pd.read_csv(
                path,
                sep=sep,
                dtype=str,
                keep_default_na=False,
                encoding=encoding,
                engine="python",
                on_bad_lines="error",
            )
            first_line = 2  # the header is line 1
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    except UnicodeDecodeError:
        raise DataError(f"{flag} {undecodable(path, encoding)}") from None
    except (ImportError, OSError, ValueError, pd.errors.ParserError) as e:
        escaped = (
            None if isinstance(e, ImportError | OSError) or parquet else first_backslash_quote(path, encoding, sep)
        )
        also = f"; line {escaped}: {BACKSLASH_QUOTE}" if escaped is not None else ""
        raise DataError(f"{where}: cannot read it as a table with a header: {str(e).strip()[:200]}{also}") from None
    if frame.shape[1] < 2:
        raise DataError(f"{where}: expected an id column and at least one feature column, found {frame.shape[1]}")
    types = {} if parquet else typed_header(frame.columns, where)
    if types:
        frame.columns = list(types)
        frame, types = _atomic_fields(frame, types, role, where)
    stripped = [str(c).strip() for c in frame.columns]
    renamed = [re.sub(r"\.[0-9]+$", "", c) for c in stripped]  # read_csv renames a repeated name "genre.1"
    twice = next((c for c in stripped if stripped.count(c) > 1), None)
    twice = twice or next((r for c, r in zip(stripped, renamed, strict=True) if r != c and r in stripped), None)
    if twice is not None:
        raise DataError(f"{where}: two columns are named {twice!r}: rename one")
    names = [c.lower() for c in stripped]
    id_column = next((frame.columns[names.index(n)] for n in _ID_NAMES[role] if n in names), frame.columns[0])
    if len(frame) == 0:
        raise DataError(f"{where}: no rows (only a header)")
    ids = frame.pop(id_column).astype("string").str.strip()
    column = f"id column {str(id_column).strip()!r}"
    missing = ids.isna() | (ids == "")
    if missing.any():
        raise DataError(f"{where}: line {int(np.argmax(missing.to_numpy())) + first_line}: no {role} id ({column})")
    repeated = ids.duplicated()
    if repeated.any():
        i = int(np.argmax(repeated.to_numpy()))
        raise DataError(f"{where}: line {i + first_line}: {role} {ids.iloc[i]!r} is given twice ({column})")
    features = {}
    for column in frame.columns:
        values = frame[column]
        declared = (types or {}).get(column)
        if declared == "float":
            features[str(column).strip()] = _declared_numbers(values, column, where, first_line)
            continue
        if declared is not None:  # a token: a code or a name, never a quantity
            text = values.astype("string").str.strip()
            features[str(column).strip()] = text.where(~text.str.lower().isin(_MISSING), None).astype(object).to_numpy()
            continue
        if not pd.api.types.is_float_dtype(values):  # Parquet's floats are quantities already
            text = values.astype("string").str.strip()
            text = text.where(~text.str.lower().isin(_MISSING), None)  # "", NA, NULL, \\N, nan, None: missing
            numbers = pd.to_numeric(text, errors="coerce")
            # a column of decimals is a quantity (binned when it has many values); a column of integers is a code
            # (a zip, a category id: "02138" keeps its zero, "7" is not near "8"), kept as text
            decimal = bool(text.notna().any()) and bool((numbers.notna() == text.notna()).all())
            decimal = decimal and not text.dropna().str.fullmatch(r"[+-]?[0-9]+").all()
            values = numbers.astype(np.float64) if decimal else text.astype(object)
        features[str(column).strip()] = values.to_numpy()  # by position: the frame's index is the ids
    return pd.DataFrame(features, index=pd.Index(ids.astype(object).to_numpy(), name="raw_id"))


#: RecBole's names of the item columns jaxrec reads with MovieLens's encoders (:mod:`jaxrec.data.featurizer`): the
#: genres a cross-domain split and the ``item_genres`` tags read, the release year of the new-item split (a user
#: column keeps its name: a new user's ``--features`` are written with the table's names)
_RECBOLE_NAMES = {"item": {"genre": "genres", "class": "genres", "release_year": "year"}, "user": {}}
#: the names RecBole's tables give an item's display name, in the order one is taken for the ``title``
_TITLE_NAMES = ("title", "movie_title", "item_name", "book_title", "name")


def _atomic_fields(
    frame: pd.DataFrame, types: dict[str, str], role: str, where: str
) -> tuple[pd.DataFrame, dict[str, str]]:
    """A RecBole atomic table's columns as the features they declare: a ``token_seq`` (space-separated tokens) an
    item's ``"|"``-joined tags (multi-hot), except the item's name (``movie_title``, ``item_name``: the display
    ``title`` where the table has none); a ``float_seq`` left out, with a warning (no feature reads a vector).
    RecBole's names of MovieLens's item columns (``genre`` or ``class``, ``release_year``) are read as jaxrec's."""
    renamed = {}
    if role == "item" and "title" not in types:
        lowered = {c.lower(): c for c in types}
        named = next((lowered[n] for n in _TITLE_NAMES if n in lowered), None)
        if named is not None:
            renamed[named] = "title"
    for source, target in _RECBOLE_NAMES[role].items():
        if source in types and target not in types and target not in renamed.values():
            renamed[source] = target
    frame = frame.rename(columns=renamed)  # a new frame, whose columns are changed below
    if renamed:
        types = {renamed.get(c, c): t for c, t in types.items()}
        logger.info("%s: RecBole's columns %s read as %s", where, list(renamed), list(renamed.values()))
    for column, kind in list(types.items()):
        if kind == "float_seq":
            logger.warning("%s: column %r holds sequences of numbers (float_seq): not used as a feature", where, column)
            frame = frame.drop(columns=column)
            del types[column]
        elif kind == "token_seq" and column != "title":
            tokens = frame[column].astype("string").str.split()
            frame[column] = tokens.map(lambda t: "|".join(t) if isinstance(t, list) else t).astype(object)
    return frame, types


def _declared_numbers(values: pd.Series, column: str, where: str, first_line: int) -> np.ndarray:
    """A column its atomic header declares ``float``: its numbers (a quantity), missing where the field says so."""
    text = values.astype("string").str.strip()
    text = text.where(~text.str.lower().isin(_MISSING), None)
    numbers = pd.to_numeric(text, errors="coerce")
    bad = (numbers.isna() & text.notna()).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{where}: line {i + first_line}: column {column!r} (float) holds {text.iloc[i]!r}, not a number"
        )
    return pd.array(numbers.astype(np.float64).to_numpy(), dtype="Float64")  # a quantity even of whole numbers


#: a side table's field that says "no value" (compared lower-case)
_MISSING = ("", "na", "n/a", "nan", "null", "none", "\\n")


def _parquet_column(column: pd.Series, kind) -> pd.Series:
    """A Parquet column as :func:`read_side_table` reads a text one: floats kept, lists ``"|"``-joined (tags), every
    other value as its text (an integer code ``7`` as ``"7"``, also where nulls made pandas read it as floats),
    None where missing."""
    pa = _pyarrow()
    if pa.types.is_floating(kind):
        return column.astype(np.float64)
    if pa.types.is_integer(kind):
        return column.map(lambda v: None if pd.isna(v) else str(int(v)))

    def text(value):
        if isinstance(value, list | tuple | np.ndarray):
            return "|".join(str(v) for v in value)
        return None if pd.isna(value) else str(value)

    return column.astype(object).map(text)


def with_side_features(
    dataset: Dataset, *, users: pd.DataFrame | None = None, items: pd.DataFrame | None = None, source: str = ""
) -> Dataset:
    """``dataset`` with side tables' columns joined to its users and items by raw id.

    Args:
      dataset: the log.
      users: features indexed by raw user id (:func:`read_side_table`), or None.
      items: features indexed by raw item id, or None.
      source: where the tables came from, for messages.

    Returns:
      A new :class:`~jaxrec.data.Dataset` (the interactions unchanged), its ``report`` counting per role the
      features' columns, the log's ids with and without a row, and the table's rows for ids not in the log.

    Raises:
      DataError: if no id of a table is one of the log's, or a column is already in the dataset's table.
    """
    report = dict(dataset.report)
    tables = {"users": dataset.users, "items": dataset.items}
    for role, side in (("user", users), ("item", items)):
        if side is None:
            continue
        table = tables[f"{role}s"]
        clash = [c for c in side.columns if c in table.columns]
        if clash:
            raise DataError(f"{source}: the {role} feature column {clash[0]!r} is already in {dataset.name}'s {role}s")
        counted: dict = {}
        extra = side_table(table["raw_id"].to_numpy(), side, role, source, counted)
        joined = table.copy()
        for column in side.columns:
            joined[column] = extra[column]  # the same codes 0..n-1, dtypes kept
        tables[f"{role}s"] = joined
        matched = len(table) - counted.get(f"{role}_features_without", 0)
        counts = {
            "columns": [str(c) for c in side.columns],
            "with_features": matched,
            "without_features": len(table) - matched,
            "rows_not_in_log": len(side) - matched,
        }
        report[f"{role}_features"] = counts
        if matched < len(table) / 2:  # most of the log's ids without features: a table of other ids, mostly
            logger.warning(
                "%s features from %s cover %d of the log's %d %ss: %s", role, source, matched, len(table), role, counts
            )
        else:
            logger.info("%s features from %s: %s", role, source or "a table", counts)
    return dataclasses.replace(dataset, users=tables["users"], items=tables["items"], report=report)


def join_side_files(
    dataset: Dataset,
    *,
    user_features: str | os.PathLike | None = None,
    item_features: str | os.PathLike | None = None,
    encoding: str = "utf-8",
) -> Dataset:
    """``dataset`` with the feature tables at these paths joined (:func:`read_side_table`,
    :func:`with_side_features`); ``dataset`` itself when no path is given."""
    for role, path in (("user", user_features), ("item", item_features)):
        if path is not None:
            table = read_side_table(path, role, encoding=encoding)
            dataset = with_side_features(dataset, **{f"{role}s": table}, source=f"--{role}-features {path}")
    return dataset
