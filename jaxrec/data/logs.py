"""Any interaction log a user brings, read by its format: Parquet (a file or a folder of files), JSON lines or
separated text."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from jaxrec.data.dataset import DataError, Dataset
from jaxrec.data.jsonlines import from_json_lines, is_json_lines
from jaxrec.data.parquet import from_parquet, is_parquet
from jaxrec.data.text import from_csv

__all__ = ["read_log"]


def read_log(
    path: str | os.PathLike,
    columns: Mapping[str, str | int] | Sequence[str] | str | None = None,
    *,
    sep: str | None = None,
    encoding: str = "utf-8",
    feedback: str | None = None,
    positive_threshold: float | None = None,
) -> Dataset:
    """Read the log at ``path``: :func:`~jaxrec.data.from_parquet` for a Parquet file (known by its magic bytes,
    whatever its name) or a folder, :func:`~jaxrec.data.from_json_lines` for a file whose first character opens a
    JSON object, :func:`~jaxrec.data.from_csv` for any other file.

    Args:
      path: the file or folder.
      columns: the roles of its columns (see :func:`~jaxrec.data.from_csv`).
      sep: a text file's separator (default: sniffed); refused for Parquet and JSON lines, which have none.
      encoding: a text file's encoding (Parquet's text is UTF-8).
      feedback: ``None``, ``"explicit"`` or ``"implicit"``.
      positive_threshold: with ``feedback="implicit"`` on rated data, the lowest rating that is an interaction.

    Returns:
      The cleaned :class:`~jaxrec.data.Dataset`.

    Raises:
      DataError: as the reader of the format raises it (a folder without Parquet files included), or for a
        separator given with a Parquet or JSON-lines log.
    """
    if os.path.isdir(path) or is_parquet(path):  # a folder is Parquet's or nothing: from_parquet names an empty one
        if sep is not None:
            raise DataError(f"{path}: a Parquet log has no separator; drop sep= (--sep)")
        return from_parquet(path, columns, feedback=feedback, positive_threshold=positive_threshold)
    if is_json_lines(path):
        if sep is not None:
            raise DataError(f"{path}: a JSON-lines log has no separator; drop sep= (--sep)")
        return from_json_lines(
            path, columns, feedback=feedback, positive_threshold=positive_threshold, encoding=encoding
        )
    return from_csv(path, columns, sep=sep, feedback=feedback, positive_threshold=positive_threshold, encoding=encoding)
