"""Interaction logs stored as Parquet: a file, or a folder of files (a partitioned dataset), read with pyarrow.

Parquet keeps each column's type, so ids keep theirs (an integer column gives integer ids, a string column text ids:
``00001`` and ``1`` stay two users) and timestamps their zone; only the columns in a role are read. The rows then
go through :func:`~jaxrec.data.dataset.from_dataframe`, as a text log's do: the same checks, the same counts of what
was merged or dropped, errors naming the column and the row (0-based, in the order pyarrow reads the rows).

pyarrow is an optional dependency (``pip install 'jaxrec[parquet]'``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxrec.data.dataset import DataError, Dataset
from jaxrec.data.text import dataset_of_roles, resolve_columns, role_columns

__all__ = ["from_parquet", "is_parquet", "read_parquet_roles"]

logger = logging.getLogger(__name__)

_MAGIC = b"PAR1"  # the first and last four bytes of every Parquet file


def is_parquet(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Parquet file (by its magic bytes, whatever its name) or a folder holding one (at any
    depth, as a partitioned dataset lays them out)."""
    path = Path(path)
    if path.is_dir():
        return bool(_folder_files(path)[0])
    try:
        with open(path, "rb") as f:
            return f.read(4) == _MAGIC
    except OSError:
        return False


def _folder_files(path: Path) -> tuple[list[Path], list[Path]]:
    """A folder's Parquet files and its other files, at any depth, sorted; names opening with ``_`` or ``.``
    (``_SUCCESS``, ``.crc``) are neither, as pyarrow and Spark keep them."""
    found = sorted(
        f
        for f in path.rglob("*")
        if f.is_file() and not any(p.startswith(("_", ".")) for p in f.relative_to(path).parts)
    )
    parquet = [f for f in found if is_parquet(f)]
    return parquet, [f for f in found if f not in parquet]


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.dataset
    except ImportError as missing:
        raise DataError(f"reading Parquet needs pyarrow ({missing}): pip install 'jaxrec[parquet]'") from missing
    return pyarrow


def _check_types(schema: Any, roles: Mapping[str, str], path: Path) -> None:
    """A :class:`DataError` naming a role's column whose type cannot hold it: ids must be integers or text (a
    float column of whole numbers, as pandas writes integers with gaps, is accepted), the other roles numbers
    (a timestamp also a date or a point in time, or text; not a duration or a time of day)."""
    pa = _pyarrow()
    types = pa.types
    for role, column in roles.items():
        kind = schema.field(column).type
        if types.is_dictionary(kind):
            kind = kind.value_type
        if role in ("user", "item"):
            ok = types.is_integer(kind) or types.is_string(kind) or types.is_large_string(kind)
            ok = ok or types.is_floating(kind)
        elif role == "timestamp":
            ok = types.is_integer(kind) or types.is_floating(kind) or types.is_timestamp(kind) or types.is_date(kind)
            ok = ok or types.is_string(kind) or types.is_large_string(kind)
        else:
            ok = types.is_integer(kind) or types.is_floating(kind) or types.is_decimal(kind)
        if not ok:
            raise DataError(
                f"{path}: column {column!r} (the {role}) is of Parquet type {kind}, which cannot hold a {role}"
            )


def _whole_ids(frame: Any, column: str, role: str, path: Path) -> None:
    """A float id column of whole numbers as integers (in place); a fraction, an infinity or a number beyond float64's
    exact integers (``2^53``, where neighbouring ids merge) is a :class:`DataError` naming its row. Missing ids are
    left for :func:`from_dataframe` to name."""
    values = frame[column].to_numpy(np.float64)
    present = ~np.isnan(values)
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2**53)
    fraction = present & ~whole
    if fraction.any():
        first = int(np.flatnonzero(fraction)[0])
        raise DataError(
            f"{path}: column {column!r} row {first} holds {values[first]:g}, not a whole {role} id (below 2^53)"
        )
    if present.all():
        frame[column] = values.astype(np.int64)


def from_parquet(
    path: str | os.PathLike,
    columns: Mapping[str, str | int] | Sequence[str] | str | None = None,
    *,
    feedback: str | None = None,
    positive_threshold: float | None = None,
    name: str | None = None,
    min_user_ratings: int = 1,
    allow_extra: bool = False,
) -> Dataset:
    """Load an interaction log stored as Parquet.

    Args:
      path: a Parquet file, or a folder of them (a partitioned dataset; its partition keys are columns too).
      columns: which column plays which role, as :func:`~jaxrec.data.from_csv` takes it: a mapping ``{"user":
        "customer_id", "item": "sku", "weight": "quantity"}`` (the other columns are not read), the same as
        ``"user=customer_id,item=sku,weight=quantity"`` (``--columns`` on the command line), or the roles of every
        column in the file's order (``"_"`` skips one). ``None`` guesses from common names (``user_id``,
        ``itemId``, ``timestamp``, ``count``, ...).
      feedback: ``None``, ``"explicit"`` or ``"implicit"`` (see :func:`~jaxrec.data.from_dataframe`).
      positive_threshold: with ``feedback="implicit"`` and a rating column, the lowest rating that is an
        interaction.
      name: the dataset's name (default: the file or folder name up to its first dot).
      min_user_ratings: users with fewer ratings (after dedup) are dropped and counted in the report.
      allow_extra: with ``columns=None``, columns beyond the guessed roles are an error unless this is set.

    Returns:
      The cleaned :class:`~jaxrec.data.Dataset`; ``report["columns_read"]`` lists the columns read.

    Raises:
      DataError: if pyarrow is missing, the path does not exist or is not Parquet, a role's column is missing or of a
        type that cannot hold it (a list, a struct, a fractional id), or the log fails a check of
        :func:`~jaxrec.data.from_dataframe` (named with its column and row).
    """
    path = Path(path)
    frame, roles, found = read_parquet_roles(path, columns, allow_extra=allow_extra)
    dataset, skipped, wanted = found["dataset"], found["skipped"], found["read"]
    try:
        ds = dataset_of_roles(frame, roles, path, feedback, positive_threshold, name, min_user_ratings)
    except DataError as bad:
        raise _in_file(bad, dataset, path) from bad
    ds.report = {"columns_read": wanted, **({"files_skipped": len(skipped)} if skipped else {}), **ds.report}
    return ds


def read_parquet_roles(
    path: str | os.PathLike, columns: Any = None, *, allow_extra: bool = False
) -> tuple[Any, dict, dict]:
    """The columns in a role of a Parquet file or folder, read as :func:`from_parquet` reads them (types checked,
    a float id column of whole numbers as integers).

    Returns:
      ``(frame, roles, found)``: the frame of the columns read, ``{role: column}``, and ``found``: ``"labels"``
      (every column of the file), ``"read"`` (those read), ``"dataset"`` (pyarrow's) and ``"skipped"`` (a folder's
      files that are not Parquet).

    Raises:
      DataError: if pyarrow is missing, the path does not exist or is not Parquet, or a role's column is missing or
        of a type that cannot hold it (a list, a struct, a fractional id).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    files = _folder_parquet(path) if path.is_dir() else None  # before pyarrow is asked for: a folder of CSVs
    pa = _pyarrow()
    try:
        dataset, skipped = _open(path, files)
        schema = dataset.schema
    except (pa.ArrowException, OSError) as unreadable:
        raise DataError(f"{path}: not a readable Parquet file or folder: {unreadable}") from unreadable
    labels = [label for label in schema.names if not label.startswith("__index_level_")]  # pandas' saved index
    roles = resolve_columns(labels, role_columns(columns), True, path, allow_extra)
    _check_types(schema, roles, path)
    wanted = list(dict.fromkeys(roles.values()))
    frame = _frame(_read(dataset, wanted, path), wanted, path)
    for role in ("user", "item"):
        if frame[roles[role]].dtype.kind == "f":
            _whole_ids(frame, roles[role], role, path)
    logger.info("%s: read %d row(s) of column(s) %s", path, len(frame), wanted)
    return frame, roles, {"labels": labels, "read": wanted, "dataset": dataset, "skipped": skipped}


def _folder_parquet(path: Path) -> tuple[list[Path], list[Path]]:
    """A folder's Parquet files and its other files (:func:`_folder_files`), refusing a folder without Parquet
    files (and naming a RecBole log in it: a dataset folder of ``.inter``, ``.item`` and ``.user`` files)."""
    parquet, others = _folder_files(path)
    if not parquet:
        inter = sorted(f.name for f in path.iterdir() if f.name.endswith((".inter", ".inter.gz")))
        hint = f"; its RecBole log is a file: give {path / inter[0]} (--data)" if inter else ""
        raise DataError(f"{path}: a folder without Parquet files (a log is a file, or a folder of Parquet files){hint}")
    return parquet, others


def _open(path: Path, files: tuple[list[Path], list[Path]] | None) -> tuple[Any, list[str]]:
    """The pyarrow dataset of a file, or of a folder's Parquet files (``files``: :func:`_folder_parquet`'s, by
    their magic bytes; the others, a stray ``notes.csv``, are left out and named in a warning) with hive partition
    keys (``day=2024-01-08/``) as text: a key is a folder name, and ``007`` and ``7`` are two ids, not one integer."""
    pa = _pyarrow()
    if files is None:
        return pa.dataset.dataset(str(path), format="parquet"), []
    parquet, others = files
    skipped = [str(f.relative_to(path)) for f in others]
    if skipped:
        logger.warning("%s: %d file(s) that are not Parquet left out: %s", path, len(skipped), ", ".join(skipped[:5]))
    folders = [part for f in parquet for part in f.relative_to(path).parts[:-1]]
    keys = list(dict.fromkeys(part.split("=", 1)[0] for part in folders if "=" in part))
    text = pa.dataset.partitioning(pa.schema([(key, pa.string()) for key in keys]), flavor="hive") if keys else None
    files = [str(f) for f in parquet]
    return pa.dataset.dataset(files, format="parquet", partitioning=text, partition_base_dir=str(path)), skipped


def _read(dataset: Any, columns: list[str], path: Path) -> Any:
    """The named columns as one table, or a :class:`DataError` naming the first file that cannot give them (a
    folder whose files disagree on a column's type)."""
    pa = _pyarrow()
    try:
        return dataset.to_table(columns=columns)
    except (pa.ArrowException, OSError) as unreadable:
        for fragment in dataset.get_fragments():
            try:
                fragment.to_table(schema=dataset.schema, columns=columns)
            except (pa.ArrowException, OSError) as its_own:
                raise DataError(f"{fragment.path}: cannot read columns {columns}: {its_own}") from unreadable
        raise DataError(f"{path}: cannot read columns {columns}: {unreadable}") from unreadable


def _frame(table: Any, columns: list[str], path: Path) -> Any:
    """The table as a pandas frame: dictionary columns decoded (pandas' categoricals are not ids), dates as
    timestamps (pandas would give Python date objects)."""
    pa = _pyarrow()
    for column in columns:
        index = table.schema.get_field_index(column)
        kind = table.schema.field(column).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
            table = table.set_column(index, column, table[column].cast(kind))
        if pa.types.is_date(kind):
            table = table.set_column(index, column, table[column].cast(pa.timestamp("s")))
    try:
        return table.to_pandas()
    except (pa.ArrowException, ValueError) as unreadable:
        raise DataError(f"{path}: cannot convert columns {columns} to a frame: {unreadable}") from unreadable


def _in_file(bad: DataError, dataset: Any, path: Path) -> DataError:
    """A folder's error with its file: ``row N`` of the concatenated rows, also as the file and its own row."""
    found = re.search(r" row (\d+) ", str(bad))
    if not path.is_dir() or found is None:
        return bad
    row = int(found.group(1))
    for fragment in dataset.get_fragments():
        count = fragment.count_rows()
        if row < count:
            return DataError(f"{bad} (the folder's rows in file order: {fragment.path}, its row {row})")
        row -= count
    return bad
