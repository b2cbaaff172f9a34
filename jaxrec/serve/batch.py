"""Recommend for a file of many new users at once (``jaxrec recommend --users FILE``): the offline twin of the service.

A nightly job that scores the day's new sign-ups has a log of their first interactions, not one request per user.
:func:`recommend_users` reads each user's rows as the service reads a request (:class:`~jaxrec.serve.requests.
Catalogue`: raw ids, the run's positive threshold, weights, duplicates merged, unknown items counted) and ranks them
through the service's engine (:class:`~jaxrec.serve.engine.ServingModel`): every batch of users is one compiled
adapt-and-rank call, so a user's list is the one ``jaxrec serve`` and ``jaxrec recommend`` give them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxrec.data import DataError
from jaxrec.data.dataset import integer_ids, numeric_column, timestamp_seconds, where_line
from jaxrec.data.jsonlines import is_json_lines, read_json_lines_roles
from jaxrec.data.parquet import is_parquet, read_parquet_roles
from jaxrec.data.text import read_log_table
from jaxrec.serve.engine import ServingModel
from jaxrec.serve.requests import Catalogue, RequestError

__all__ = ["read_users", "recommend_users"]

logger = logging.getLogger(__name__)

#: the support sizes a batch is padded to: powers of two from this one
_SMALLEST_SUPPORT = 16
#: a batch of ``batch`` users is padded to at most this many support rows a user; longer users go fewer a call
_FULL_BATCH_SUPPORT = 256


def _row_of(users: pd.DataFrame, i: int) -> str:
    """Where row ``i`` of :func:`read_users`' frame is in its file: its line, or a Parquet file's row."""
    line = int(users["line"].iat[i])
    return f"line {line}" if line >= 0 else f"row {int(users['order'].iat[i])}"


def read_users(
    path: str | os.PathLike, columns: Any = None, sep: str | None = None, *, encoding: str = "utf-8"
) -> pd.DataFrame:
    """Read a file of users' interactions as the log readers read a log (:func:`~jaxrec.data.from_csv`: separated
    text, ``.gz`` allowed; :func:`~jaxrec.data.from_parquet`: a Parquet file or folder, known by its magic bytes):
    the columns by a header's common names (``user``/``userId``, ``item``/``movieId``, ``rating``,
    ``weight``/``plays``, ``timestamp``) or by ``columns`` (``--columns``: ``"user,item,weight,timestamp"`` in file
    order, ``_`` for a column to skip, or ``"user=visitor,item=venue"``).

    Returns:
      ``user`` and ``item`` (raw ids as text, spaces around them stripped, as the log's), ``rating`` or ``weight``
      (float64, when the file has one), ``line`` (the row's line in a text file, -1 in a Parquet file) and
      ``order`` (the row's place in the file), each user's rows oldest first: by the timestamp where there is one
      (ties in file order), else in file order. ``attrs["ignored_columns"]`` lists the file's columns in no role.

    Raises:
      DataError: naming the file, and the column and line (a Parquet file: row): a missing user or item column, a
        value that is not a number, a time that does not parse, an empty or missing id, a rating beside a weight.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if is_parquet(path):
        if sep is not None:
            raise DataError(f"{path}: a Parquet file has no separator: leave sep (--sep) out")
        frame, roles, found = read_parquet_roles(path, columns, allow_extra=True)
        labels, lines = found["labels"], None
    elif is_json_lines(path):
        if sep is not None:
            raise DataError(f"{path}: a JSON-lines file has no separator: leave sep (--sep) out")
        frame, roles, lines, labels = read_json_lines_roles(path, columns, encoding=encoding)
    else:
        frame, roles, lines, _ = read_log_table(path, columns, sep, encoding=encoding, allow_extra=True)
        labels = list(frame.columns)
    if "rating" in roles and "weight" in roles:
        raise DataError(f"{path}: a rating column and a weight column: give the one that holds a new user's values")
    where = str(path)
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for role in ("user", "item"):
        ids = frame[roles[role]]
        missing = ids.isna().to_numpy() | (ids.astype(str).str.strip() == "").to_numpy()
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise DataError(f"{where}: {where_line(i, lines)}: the {role} id is missing")
        out[role] = ids.astype(str).str.strip().to_numpy()
    out["line"] = -1 if lines is None else lines
    out["order"] = np.arange(len(frame))
    for role in ("rating", "weight"):
        if role in roles:
            out[role] = numeric_column(frame[roles[role]], roles[role], where, lines)
    if (time := roles.get("timestamp")) is not None:
        out["time"] = timestamp_seconds(frame[time], time, where, lines)
        out = out.sort_values("time", kind="stable").drop(columns="time").reset_index(drop=True)
    out.attrs["ignored_columns"] = [str(c) for c in labels if c not in roles.values()]
    return out


def _values(catalogue: Catalogue, users: pd.DataFrame, where: str) -> np.ndarray | None:
    """The rows' values as the model reads them (None: interactions, each a positive of weight 1), checked row by
    row so that an error names the line: a rating model needs ratings on its scale; a thresholded top-N model reads
    ratings, not weights; a weighted one reads positive weights."""
    ignored = users.attrs.get("ignored_columns", [])
    hint = f" (the file's other columns: {ignored}; name one with --columns rating=<name>)" if ignored else ""
    if not catalogue.implicit:
        if "rating" not in users:
            what = "a weight column is not a rating" if "weight" in users else "the file needs a rating column"
            raise ValueError(f"{where}: this model predicts ratings: {what}{hint}")
    elif catalogue.positive_threshold is not None and "weight" in users:
        raise ValueError(
            f"{where}: this model was trained on ratings (positive threshold {catalogue.positive_threshold:g}): give "
            "a rating column to compare with it, or the items alone (each an interaction), not a weight column"
        )
    column = "rating" if "rating" in users else "weight" if "weight" in users else None
    if column is None:
        return None
    if catalogue.values_ignored or (column == "rating" and catalogue.ratings_ignored):
        return None  # each row an interaction (recommend_users notes the column); a weighted model sums repeats
    values = users[column].to_numpy(np.float64)
    bad = catalogue.unusable(values)  # the service's checks, row by row here so that an error names the line
    if bad is not None:
        i, why = bad
        entry = f"{where}: {_row_of(users, i)} (user {users['user'].iat[i]!r}): {column} {values[i]:g}"
        if why == "float32":
            raise ValueError(f"{entry} is beyond float32, the model's precision")
        if why == "scale":
            low, high = catalogue.rating_range
            raise ValueError(f"{entry} is outside the model's rating scale [{low:g}, {high:g}]")
        raise ValueError(f"{entry} is not a positive weight (this model was trained on weighted interactions)")
    return values


def recommend_users(
    trained: Any,
    users: pd.DataFrame,
    k: int = 10,
    *,
    batch: int = 64,
    where: str = "users",
    exclude=(),
    user_features: pd.DataFrame | None = None,
    features_where: str = "user features",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The top ``k`` unseen items of every user of ``users`` (:func:`read_users`), as the service ranks them.

    Users are batched by their number of items (a batch is padded to its longest user's), and a batch of long users
    holds fewer of them: a user of thousands of items is ranked alone.

    Args:
      trained: the run's :class:`~jaxrec.experiment.trained.TrainedModel`.
      users: :func:`read_users`' frame: ``user``, ``item``, ``line``, ``order`` and optionally ``rating`` or
        ``weight`` rows, each user's oldest first.
      k: how many items per user.
      batch: the most users per compiled call.
      where: how errors name the input (the file).
      exclude: item codes never to recommend (:func:`~jaxrec.experiment.recommend.read_item_list`).
      user_features: the users' side features indexed by raw user id (:func:`~jaxrec.data.read_side_table`), for
        a model trained with them; a user without a row takes the unknown value of each, as one without features.
      features_where: how errors name the table (its file).

    Returns:
      ``(lists, report)``: a frame of ``user``, ``rank`` (1 = best), ``item`` (raw id), ``score`` (and ``title``
      where the run has titles), users in the order they first appear in the file; and the counts: ``users``,
      ``rows``, ``unknown`` (rows of items not in the catalogue, ignored), ``duplicates`` (merged),
      ``below_threshold`` (ratings below the run's positive threshold: not adapted to, left out of the list),
      ``without_items`` (users with no known item), ``without_positives`` (users whose known items are all rated
      below the threshold), each of whom gets the model's list before adaptation, as the service answers them (up
      to five of each in ``unadapted``), ``listed`` (users with a list: every user), ``ignored_columns`` and
      ``values_ignored`` (the rating or weight column an unweighted top-N model does not read, or the rating column
      of a model whose log's ratings were each an interaction (``ratings_as_interactions``), when it holds other
      values than 1); with ``user_features``, ``with_features`` and ``without_features`` (users with and without a
      row of the table) and ``unknown_feature_values`` (values no training user had, read as unknown).

    Raises:
      ValueError: ``k`` or ``batch`` below 1, a file whose values the model cannot read as it needs (a rating
        model without ratings, weights for a thresholded model), or a value it cannot take (off the scale, not a
        positive weight, beyond float32), naming the line and the user.
    """
    if k < 1 or batch < 1:
        raise ValueError(f"k and batch must be >= 1, got {k} and {batch}")
    catalogue = Catalogue(trained)
    features = None
    if user_features is not None:
        integer_users = all(isinstance(u, int) for u in (trained.featurizer.user_raw_ids or [None])[:1000])
        features = _UserFeatures(catalogue, user_features, features_where, integer_users)
    values = _values(catalogue, users, where)
    groups = users.groupby("user", sort=False).indices
    first = users.groupby("user", sort=False)["order"].min()
    order = list(first.sort_values(kind="stable").index)
    report: dict[str, Any] = {"users": len(order), "rows": len(users), "unknown": 0, "duplicates": 0}
    report.update(below_threshold=0, ignored_columns=list(users.attrs.get("ignored_columns", [])))
    given = next((c for c in ("rating", "weight") if c in users), None)
    ignored = given is not None and values is None and bool((users[given] != 1).any())
    report["values_ignored"] = given if ignored else None  # an unweighted model counts each item once
    # ... and a model whose log's ratings were each an interaction reads a rating as one
    report["ratings_as_interactions"] = ignored and not catalogue.values_ignored
    items = users["item"].to_numpy()
    if catalogue.integer_ids:  # read once, not row by row: the catalogue matches the integers as these
        ints, ok = integer_ids(items)
        items = np.array([int(v) if good else raw for v, good, raw in zip(ints, ok, items, strict=True)], dtype=object)
    if features is not None:
        report.update(with_features=0, without_features=0, unknown_feature_values=0, features_not_given=0)
        report["feature_columns_ignored"] = features.ignored
    inputs, kept, no_items, no_positives = [], [], [], []
    longest = max((len(rows) for rows in groups.values()), default=1)
    for user in order:
        rows = groups[user]
        sent = (
            (None, list(items[rows])) if values is None else (list(zip(items[rows], values[rows], strict=True)), None)
        )
        try:
            support = catalogue.support(*sent, max(longest, 1))
        except RequestError as e:  # what the row checks above cannot see: a repeated item's weights summed
            raise ValueError(f"{where}: user {user!r}: {e}") from None
        report["unknown"] += len(support.unknown)
        report["duplicates"] += support.duplicates
        report["below_threshold"] += support.below_threshold
        if len(support.codes) == 0:  # the model's list before adaptation, as the service answers such a user
            (no_positives if support.below_threshold else no_items).append(user)
        slots = None
        if features is not None:
            slots, unknown, not_given = features.slots(user)
            report["with_features" if unknown is not None else "without_features"] += 1
            report["unknown_feature_values"] += len(unknown or ())
            report["features_not_given"] += bool(unknown is not None and not_given)
        inputs.append(catalogue.user_input(support, k, user_slots=slots))
        kept.append(user)
    report.update(without_items=len(no_items), without_positives=len(no_positives), listed=len(kept))
    report["unadapted"] = [str(u) for u in (no_items[:5] + no_positives[:5])]
    ranked = _rank(trained, inputs, k, batch, exclude)
    broken = next((u for u, r in zip(kept, ranked, strict=True) if not r.finite), None)
    if broken is not None:
        raise ValueError(f"{where}: user {broken!r}: the values overflow the model's float32 scores")
    lengths = [len(r.codes) for r in ranked]
    codes = np.concatenate([r.codes for r in ranked]) if ranked else np.zeros(0, np.int64)
    lists = pd.DataFrame(
        {
            "user": np.repeat(np.asarray(kept, dtype=object), lengths),
            "rank": np.concatenate([np.arange(1, n + 1) for n in lengths]) if ranked else np.zeros(0, np.int64),
            "item": np.asarray(catalogue.ids, dtype=object)[codes],
            "score": np.concatenate([r.scores for r in ranked]) if ranked else np.zeros(0, np.float32),
        }
    )
    if catalogue.titles is not None:
        lists["title"] = np.asarray(catalogue.titles, dtype=object)[codes]
    report["empty_lists"] = int(sum(n == 0 for n in lengths))  # a user who has every item
    logger.info("ranked %d user(s); %d of them unadapted", len(kept), len(no_items) + len(no_positives))
    return lists, report


class _UserFeatures:
    """A side table's users' feature slots, looked up by raw user id as training joined the table to its log (an
    integer id by its value, ``007`` is user 7, when the model's users have integer ids), each distinct row of
    values encoded once.

    Raises:
      ValueError: if the model reads no user features, or none of the table's columns.
    """

    def __init__(self, catalogue: Catalogue, table: pd.DataFrame, where: str, integer_users: bool):
        if not catalogue.user_features:
            raise ValueError(f"{where}: the model was trained without user features: leave the table out")
        read = [c for c in table.columns if str(c) in catalogue.user_features]
        if not read:
            raise ValueError(
                f"{where}: none of the table's columns {[str(c) for c in table.columns]} is a feature of the model "
                f"({', '.join(catalogue.user_features)})"
            )
        self.ignored = [str(c) for c in table.columns if c not in read]  # as training left an all-distinct one out
        self._catalogue, self._integer = catalogue, integer_users
        keys = self._keys(table.index.to_numpy())
        seen: dict = {}
        for raw, key in zip(table.index, keys, strict=True):  # "1" and "01" are one user of an integer log
            if key in seen:
                raise ValueError(f"{where}: ids {seen[key]!r} and {raw!r} are the same user: give each user once")
            seen[key] = raw
        rows = table[read].astype(object).where(table[read].notna(), None).itertuples(index=False, name=None)
        self._rows = dict(zip(keys, rows, strict=True))
        self._columns = read
        self._encoded: dict[tuple, tuple] = {}

    def _keys(self, ids) -> list:
        text = [str(u).strip() for u in ids]
        if not self._integer:
            return text
        values, whole = integer_ids(np.asarray(text, dtype=object))
        return [int(v) if ok else t for v, ok, t in zip(values, whole, text, strict=True)]

    def slots(self, user: Any) -> tuple[dict[str, int] | None, list[str] | None, list[str]]:
        """``(slots, unknown, not_given)`` of a user: the model's slots, the values no training user had, and the
        model's features the row leaves blank or the table lacks (each read as unknown); ``(None, None, [])`` for a
        user without a row."""
        row = self._rows.get(self._keys([user])[0])
        if row is None:
            return None, None, []
        if row not in self._encoded:
            features = {c: v for c, v in zip(self._columns, row, strict=True) if v is not None}
            self._encoded[row] = (
                *self._catalogue.feature_slots(features),
                self._catalogue.features_not_given(features),
            )
        return self._encoded[row]


def _rank(trained: Any, inputs: list, k: int, batch: int, exclude=()) -> list:
    """The engine's answers for ``inputs``, in their order: users sorted by size, each size bucket's users in calls
    of at most ``batch * _FULL_BATCH_SUPPORT / size`` users (at least one)."""
    if not inputs:
        return []
    need = np.array([max(len(u.codes), len(u.seen)) for u in inputs])
    sizes = [_SMALLEST_SUPPORT]
    while sizes[-1] < need.max():
        sizes.append(sizes[-1] * 2)

    def per_call(size: int) -> int:
        return max(1, min(batch, batch * _FULL_BATCH_SUPPORT // size))

    engine = ServingModel(
        trained,
        batch_sizes=sorted({per_call(s) for s in sizes}),
        support_sizes=sizes,
        max_k=k,
        devices=1,
        exclude=exclude,
    )
    bucket_of = np.array([engine.bucket_for(1, n).support for n in need])
    ranked: list = [None] * len(inputs)
    for size in sorted(set(bucket_of.tolist())):
        members = np.flatnonzero(bucket_of == size)
        step = per_call(size)
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            for i, answer in zip(chunk, engine.rank([inputs[i] for i in chunk]), strict=True):
                ranked[i] = answer
    return ranked
