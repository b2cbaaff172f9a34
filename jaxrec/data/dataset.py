"""The :class:`Dataset` container and :func:`from_dataframe`, where every loader ends (a text log read by
:mod:`jaxrec.data.text`, Parquet, MovieLens). It validates and cleans the log in vectorised numpy:

1. the named columns must exist; ratings and weights must be finite numbers (the first bad one is named with its
   row), weights > 0; a rating column holding counts (integers beyond 100) is refused unless ``feedback`` says
   what it is;
2. duplicate ``(user, item)`` pairs keep the latest by timestamp (the last in file order without timestamps); in an
   implicit log (``feedback="implicit"``) they are merged instead: weights summed, the earliest timestamp kept;
3. users with fewer than ``min_user_ratings`` ratings are dropped;
4. raw ids are encoded to dense codes ``0..n-1`` (sorted by raw id) and side tables are aligned to the codes; a
   text id loses the spaces around it (``u1, i5``: counted in ``report["ids_stripped"]``, with a warning).

Nothing is dropped silently: every step that removes rows adds a count to :attr:`Dataset.report`, which
:meth:`Dataset.summary` prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

import numpy as np
import pandas as pd

from jaxrec.core.errors import JaxrecError

__all__ = [
    "DataError",
    "Dataset",
    "UnnamedColumnsError",
    "from_dataframe",
    "integer_ids",
    "numeric_column",
    "timestamp_seconds",
    "where_line",
]

logger = logging.getLogger(__name__)

FEEDBACK = (None, "explicit", "implicit")
ISO_DATE = r"\d{4}-\d{2}-\d{2}(?:$|[T ]\d)"  # an ISO-8601 date, alone or followed by a time
LineOffset = int | np.ndarray | None
_COUNT_LIKE_MAX = 100  # an integer rating column beyond this is a count (plays, clicks), not a rating scale


class DataError(JaxrecError, ValueError):
    """A data file or frame that cannot be turned into a :class:`Dataset`.

    The message names the file, column or line at fault.
    """


class UnnamedColumnsError(DataError):
    """A file's header names no user or item column by a common name, and no ``columns`` were given: the file may
    still be read by naming them (a caller that knows the layout, e.g. the run's own ``--columns``, can retry).

    Attributes:
      lacking: what the header lacks, without the remedy the message adds (``"FILE: no user column among the header
        [...]"``), for a caller that says what to do itself.
      remedy: the remedy the message adds, or None.
      named_by: what names the file's columns: ``"header"``, ``"no header"`` (a headerless file of more columns
        than the roles read by position) or ``"keys"`` (JSON records).
    """

    def __init__(self, lacking: str, remedy: str | None = None, named_by: str = "header") -> None:
        super().__init__(lacking if remedy is None else f"{lacking}; {remedy}")  # one argument: it pickles
        self.lacking, self.remedy, self.named_by = lacking, remedy, named_by


@dataclasses.dataclass
class Dataset:
    """An interaction log with dense integer codes and side tables.

    Attributes:
      name: dataset name (``"ml-100k"``, ``"ml-latest-small"``, a file stem, ...).
      ratings: DataFrame with ``user`` (int32 code), ``item`` (int32 code), ``rating`` (float32) and, when known,
        ``timestamp`` (int64 seconds). Implicit logs (and logs read with a weight column) also have ``weight``
        (float32 > 0: the interaction's count or confidence, 1.0 when the log has none); their ``rating`` is 1.0.
      users: side table indexed by user code ``0..n_users-1``; column ``raw_id`` plus demographics when known
        (``gender``, ``age``, ``occupation``, ``zip``).
      items: side table indexed by item code; column ``raw_id`` plus ``title``, ``genres`` (``"|"``-joined, ``""``
        when unknown) and ``year`` (nullable Int64) when known.
      report: counts of everything the loader dropped or repaired (``duplicates_removed``,
        ``users_below_min_dropped``, ``ratings_below_min_dropped``, ``users_dropped`` and ``items_dropped`` (ids
        left without a row), ...; implicit logs: ``below_threshold_dropped``, ``duplicates_merged``,
        ``interactions``).
      source: where the data came from (a path or ``"bundled"``).
      explicit: whether the log holds explicit ratings (False: an implicit log, every row an interaction rated 1.0).
    """

    name: str
    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ""
    explicit: bool = True

    @property
    def n_users(self) -> int:
        """Number of users (rows of :attr:`users`)."""
        return len(self.users)

    @property
    def n_items(self) -> int:
        """Number of items (rows of :attr:`items`)."""
        return len(self.items)

    @property
    def n_ratings(self) -> int:
        """Number of ratings (rows of :attr:`ratings`)."""
        return len(self.ratings)

    @property
    def has_timestamps(self) -> bool:
        """Whether :attr:`ratings` has a ``timestamp`` column."""
        return "timestamp" in self.ratings.columns

    @property
    def has_weights(self) -> bool:
        """Whether :attr:`ratings` has a ``weight`` column that is not all ones (counts or confidences)."""
        return "weight" in self.ratings.columns and bool((self.ratings["weight"].to_numpy() != 1.0).any())

    @property
    def rating_range(self) -> tuple[float, float]:
        """``(min, max)`` of the ratings; ``(0.0, 0.0)`` without ratings."""
        r = self.ratings["rating"].to_numpy()
        return (float(r.min()), float(r.max())) if len(r) else (0.0, 0.0)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the interactions: their count, columns and a SHA-256 of every column's values (codes,
        ratings, timestamps, weights), so that a checkpoint can tell the log it was trained on from another that
        encodes the same users and items (a log read without its timestamps, rows added or removed); and the same
        digest of the rows in sorted order, equal for the same log in another row order."""
        columns = sorted(self.ratings.columns)
        arrays = [np.ascontiguousarray(self.ratings[column].to_numpy()) for column in columns]
        digests = []
        for rows in (None, np.lexsort(arrays[::-1])):
            digest = hashlib.sha256()
            for column, values in zip(columns, arrays, strict=True):
                digest.update(f"{column}:{values.dtype.str}:".encode())
                digest.update((values if rows is None else values[rows]).tobytes())
            digests.append(digest.hexdigest())
        # the second digest is of the rows sorted: the same log in another row order (whose split differs: the
        # draws follow the rows) is told apart from another log
        return {"rows": len(self.ratings), "columns": columns, "sha256": digests[0], "sha256_any_order": digests[1]}

    @property
    def user_ids(self) -> np.ndarray:
        """Raw user id of each user code (the map back to the file's ids)."""
        return self.users["raw_id"].to_numpy()

    @property
    def item_ids(self) -> np.ndarray:
        """Raw item id of each item code."""
        return self.items["raw_id"].to_numpy()

    def user_code(self, raw_ids: Any) -> np.ndarray:
        """Look up the codes of raw user ids.

        Args:
          raw_ids: a raw user id or an array of them.

        Returns:
          The code of each id (same shape as ``raw_ids``); ``-1`` for ids not in the dataset.
        """
        return _lookup_codes(self.user_ids, raw_ids)

    def item_code(self, raw_ids: Any) -> np.ndarray:
        """Look up the codes of raw item ids.

        Args:
          raw_ids: a raw item id or an array of them.

        Returns:
          The code of each id (same shape as ``raw_ids``); ``-1`` for ids not in the dataset.
        """
        return _lookup_codes(self.item_ids, raw_ids)

    def summary(self) -> str:
        """Describe the dataset for a human reader.

        Returns:
          One paragraph: sizes, density, rating scale (implicit logs: interactions and their weight range), ratings
          per user, features and every count in :attr:`report`.
        """
        n_u, n_i, n_r = self.n_users, self.n_items, self.n_ratings
        density = n_r / max(n_u * n_i, 1)
        lo, hi = self.rating_range
        per_user = np.bincount(self.ratings["user"].to_numpy(), minlength=n_u) if n_r else np.zeros(1)
        kind = "ratings" if self.explicit else "interactions"
        if self.explicit:
            scale = f"ratings in [{lo:g}, {hi:g}]"
        else:
            scale = "implicit feedback: every row an interaction"
        if self.has_weights:
            w = self.ratings["weight"].to_numpy()
            scale += f", weights in [{float(w.min()):g}, {float(w.max()):g}]"
        lines = [
            f"Dataset {self.name!r} ({self.source}): {n_r:,} {kind}, {n_u:,} users, {n_i:,} items, "
            f"density {density:.4%}",
            f"  {scale}; per user min/median/max {int(per_user.min())}/"
            f"{int(np.median(per_user))}/{int(per_user.max())}; timestamps: {'yes' if self.has_timestamps else 'no'}",
            f"  user features: {[c for c in self.users.columns if c != 'raw_id']}; "
            f"item features: {[c for c in self.items.columns if c != 'raw_id']}",
        ]
        if self.report:
            lines.append("  cleaning: " + ", ".join(f"{k}={v}" for k, v in self.report.items()))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n_users={self.n_users}, n_items={self.n_items}, n_ratings={self.n_ratings})"
        )


def _lookup_codes(sorted_raw: np.ndarray, raw_ids: Any) -> np.ndarray:
    """Position of each raw id in the (sorted, unique) ``sorted_raw``; -1 where absent."""
    query = np.asarray(raw_ids)
    try:
        pos = np.searchsorted(sorted_raw, query)
    except TypeError:  # mixed types (e.g. str query against int ids): nothing matches
        return np.full(query.shape, -1, np.int64)
    pos = np.clip(pos, 0, max(len(sorted_raw) - 1, 0))
    found = (len(sorted_raw) > 0) & (sorted_raw[pos] == query) if len(sorted_raw) else np.zeros(query.shape, bool)
    return np.where(found, pos, -1)


# ----------------------------------------------------------------------------------------------------------------
# cleaning


def numeric_column(values: pd.Series, column: str, where: str, line_offset: LineOffset) -> np.ndarray:
    """``values`` as float64, or a :class:`DataError` naming the first non-numeric or missing entry."""
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna().to_numpy() | ~np.isfinite(numeric.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raw = values.iloc[first]
        loc = where_line(first, line_offset)
        what = "is missing (NaN)" if pd.isna(raw) else f"is not a finite number: {_written(raw)}"
        raise DataError(f"{where}: column {column!r} {loc} {what} ({int(bad.sum())} bad value(s) in total)")
    return numeric.to_numpy(dtype=np.float64)


def _encode(raw: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes ordered by raw id: ``codes[k]`` is the rank of ``raw[k]`` among the unique raw ids."""
    codes, uniques = pd.factorize(raw, sort=True)
    return codes.astype(np.int32), np.asarray(uniques)


def _compact(codes: np.ndarray, uniques: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber ``codes`` densely after rows were dropped, keeping the (sorted) order of ``uniques``."""
    used = np.bincount(codes, minlength=len(uniques)) > 0
    remap = (np.cumsum(used) - 1).astype(np.int32)
    return remap[codes], uniques[used]


def _latest_per_pair(user: np.ndarray, item: np.ndarray, times: np.ndarray | None) -> np.ndarray:
    """Boolean mask keeping, for each ``(user, item)`` pair, the row with the latest time (the last in file order
    among equal times, or without times).

    One argsort of the int64 pair key ``user * n_items + item`` (fast on logs already grouped by user, as MovieLens
    files are; measured faster than a hash-based ``duplicated`` on 20M rows); then, per run of equal pairs,
    ``reduceat`` finds the latest time and the largest file position among the rows at that time.
    """
    n_items = int(item.max()) + 1 if len(item) else 1
    pair = user.astype(np.int64) * n_items + item
    order = np.argsort(pair)
    sorted_pair = pair[order]
    keep = np.ones(len(pair), bool)
    new_run = np.r_[True, sorted_pair[1:] != sorted_pair[:-1]]
    if new_run.all():  # no duplicates: every MovieLens release
        return keep
    run_start = np.flatnonzero(new_run)
    run_of_row = np.cumsum(new_run) - 1
    if times is None:
        is_latest = np.ones(len(order), bool)
    else:
        t = times[order]
        is_latest = t == np.maximum.reduceat(t, run_start)[run_of_row]
    winner = np.maximum.reduceat(np.where(is_latest, order, -1), run_start)
    keep[:] = False
    keep[winner] = True
    return keep


def _merge_pairs(
    user: np.ndarray, item: np.ndarray, keep: np.ndarray, weights: np.ndarray, times: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Merge the kept rows of each ``(user, item)`` pair into one: the pair's first row in file order, holding the
    sum of the pair's weights and the earliest of its times.

    The argsort of :func:`_latest_per_pair`'s pair key (stable, so that each run starts at the pair's first row in
    file order), then ``np.add.reduceat`` / ``np.minimum.reduceat`` over the runs.

    Returns:
      ``(keep, weights, times)``: the mask of the merged rows and full-length copies of ``weights`` and ``times``
      whose entries at those rows hold the merged values (the inputs when nothing is merged).
    """
    rows = np.flatnonzero(keep)
    if len(rows) < 2:
        return keep, weights, times
    n_items = int(item.max()) + 1
    pair = user[rows].astype(np.int64) * n_items + item[rows]
    order = np.argsort(pair, kind="stable")
    sorted_pair = pair[order]
    new_run = np.r_[True, sorted_pair[1:] != sorted_pair[:-1]]
    if new_run.all():
        return keep, weights, times
    run_start = np.flatnonzero(new_run)
    sorted_rows = rows[order]
    first = sorted_rows[run_start]
    merged = np.zeros(len(keep), bool)
    merged[first] = True
    weights = weights.copy()
    weights[first] = np.add.reduceat(weights[sorted_rows], run_start)
    if times is not None:
        times = times.copy()
        times[first] = np.minimum.reduceat(times[sorted_rows], run_start)
    return merged, weights, times


def where_line(index: int, line_offset: LineOffset) -> str:
    """``"line N"`` of row ``index`` in the file, or ``"row N"`` of a frame.

    ``line_offset`` is the file line of row 0 (the rows are consecutive lines), or the file line of every row (a file
    with blank lines between its rows), or None for a frame.
    """
    if line_offset is None:
        return f"row {index}"
    if isinstance(line_offset, np.ndarray):
        return f"line {int(line_offset[index])}"
    return f"line {index + line_offset}"


def timestamp_seconds(col: pd.Series, column: str, where: str, line_offset: LineOffset) -> np.ndarray:
    """Integer seconds of a timestamp column: numbers as they are, datetimes and ISO-8601 text (``2024-01-08``,
    ``2024-01-08T17:00:07Z``; without a zone, UTC) as seconds since 1970-01-01 UTC.

    A text column is read as dates when any of its values looks like one; then the first value that is not a date
    (a number among dates, a typo) is named with its line. Otherwise the column must hold numbers, as before.
    """
    durations = pd.api.types.is_timedelta64_dtype(col) or "duration[" in str(col.dtype)  # numpy or pyarrow
    if durations or isinstance(col.dtype, pd.PeriodDtype):
        kind = "durations" if durations else "periods"
        raise DataError(
            f"{where}: column {column!r} holds {kind} ({col.dtype}), not points in time: give datetimes or seconds "
            "since 1970-01-01 UTC"
        )
    if pd.api.types.is_datetime64_any_dtype(col) or "timestamp[" in str(col.dtype):  # numpy, tz-aware or pyarrow
        col = pd.to_datetime(col, utc=True)
        missing = col.isna().to_numpy()
        if missing.any():  # NaT: as int64 it would be -2^63, the earliest time of all
            first = int(np.flatnonzero(missing)[0])
            raise DataError(
                f"{where}: column {column!r} {where_line(first, line_offset)} is missing ({int(missing.sum())} "
                "missing value(s) in total)"
            )
        return col.dt.tz_localize(None).astype("datetime64[s]").astype(np.int64).to_numpy()
    if pd.api.types.is_string_dtype(col) or pd.api.types.is_object_dtype(col):
        text = col.astype(str).str.strip()
        iso = text.str.match(ISO_DATE).fillna(False).to_numpy(bool) & col.notna().to_numpy()
        if iso.any():
            try:
                parsed = pd.to_datetime(text.where(iso), utc=True, format="ISO8601", errors="coerce")
            except (pd.errors.OutOfBoundsDatetime, OverflowError):  # "coerce" does not cover it: find the date
                bounds = (i for i in np.flatnonzero(iso) if not _in_datetime_range(text.iloc[i]))
                first = next(bounds, int(np.flatnonzero(iso)[0]))
                raise DataError(
                    f"{where}: column {column!r} {where_line(first, line_offset)} is a date outside the range times "
                    f"can hold: {col.iloc[first]!r}"
                ) from None
            bad = parsed.isna().to_numpy()
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raw = col.iloc[first]
                what = "is missing" if pd.isna(raw) else f"is not an ISO-8601 date like the others: {raw!r}"
                if not pd.isna(raw) and not _in_datetime_range(text.iloc[first]):  # pandas read it as NaT
                    what = f"is a date outside the range times can hold: {raw!r}"
                raise DataError(
                    f"{where}: column {column!r} {where_line(first, line_offset)} {what} ({int(bad.sum())} bad "
                    "value(s) in total)"
                )
            # whole seconds directly: a difference in nanoseconds overflows past 2262, which dates can reach
            return parsed.dt.tz_localize(None).astype("datetime64[s]").astype(np.int64).to_numpy()
    try:
        numbers = numeric_column(col, column, where, line_offset)
    except DataError as no_number:
        if not (pd.api.types.is_string_dtype(col) or pd.api.types.is_object_dtype(col)):
            raise
        if not pd.to_numeric(col.dropna().astype(str).str.strip(), errors="coerce").isna().any():
            raise  # every value given is a number: a missing one is the error, no word of other forms
        # text in another date form ("Fri Aug 25 13:55:02 -0700 2017", "09 13, 2009"): no guess at its order of
        # day and month; say which forms are read
        raise DataError(
            f"{no_number}; a time is a number (seconds since 1970-01-01 UTC, or milliseconds) or an ISO-8601 date "
            "(2017-08-25, 2017-08-25T13:55:02-07:00): convert the column first (pandas.to_datetime with its format)"
        ) from None
    beyond = np.abs(numbers) >= 2.0**63
    if beyond.any():  # as int64 it would wrap to -2^63, the earliest time of all
        first = int(np.flatnonzero(beyond)[0])
        raise DataError(
            f"{where}: column {column!r} {where_line(first, line_offset)} is a time beyond int64 seconds: "
            f"{_written(col.iloc[first])} ({int(beyond.sum())} such value(s) in total)"
        )
    seconds = np.floor(numbers).astype(np.int64)
    fractional = numbers != seconds
    if fractional.any():
        distinct, whole = len(np.unique(numbers)), len(np.unique(seconds))
        first = int(np.flatnonzero(fractional)[0])
        if whole < 0.5 * distinct:  # most times collapse (days as fractions, times in [0, 1)): no order is left
            raise DataError(
                f"{where}: column {column!r} holds fractions of its unit ({where_line(first, line_offset)}: "
                f"{_written(col.iloc[first])}) and its {distinct} distinct times are {whole} whole unit(s): times "
                "are whole seconds (or milliseconds); scale them (days x 86400) before reading"
            )
        logger.warning(
            "%s: column %r: %d time(s) with fractions of their unit (%s: %s) read as whole units (%d distinct "
            "time(s) merged; a user's ties keep the file's order)",
            where, column, int(fractional.sum()), where_line(first, line_offset), _written(col.iloc[first]),
            distinct - whole,
        )  # fmt: skip
    _warn_mixed_units(seconds, column, where, line_offset)
    return seconds


def _written(value: Any) -> str:
    """A value as its file wrote it: text quoted, a number plain (``inf``, ``100.25``; not ``np.float64(inf)``)."""
    return repr(value) if isinstance(value, str) else str(value)


def _in_datetime_range(text: str) -> bool:
    try:
        pd.to_datetime(text, utc=True, format="ISO8601")
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        return False
    except (ValueError, TypeError):  # not a date at all: named by the caller's own check
        return True
    return True


#: epoch times of the years 1973-2100 in seconds, and from 1973 on in milliseconds (or finer)
_SECONDS_RANGE, _MILLISECONDS_FROM = (10**8, 4.2 * 10**9), 10**11


def _warn_mixed_units(times: np.ndarray, column: str, where: str, line_offset: LineOffset) -> None:
    """Warn when a numeric time column holds epoch seconds beside epoch milliseconds (two exports joined): compared
    as written, every millisecond time is centuries after every second one, and the order by time is wrong."""
    fine = times >= _MILLISECONDS_FROM
    coarse = (times >= _SECONDS_RANGE[0]) & (times <= _SECONDS_RANGE[1])
    if fine.any() and coarse.any():
        logger.warning(
            "%s: column %r mixes epoch seconds (%d value(s), first %s) with milliseconds or finer (%d value(s), "
            "first %s): times are compared as written, so the order by time is wrong across the two; convert "
            "them to one unit",
            where,
            column,
            int(coarse.sum()),
            where_line(int(np.flatnonzero(coarse)[0]), line_offset),
            int(fine.sum()),
            where_line(int(np.flatnonzero(fine)[0]), line_offset),
        )


#: the share of a log's ratings at 0, the next rating at least 1, from which 0 reads as "not rated"
ZERO_AS_UNRATED_SHARE = 0.2


def _warn_zero_as_unrated(ratings: np.ndarray, column: str | None, where: str) -> None:
    """Warn when many ratings are 0 on a scale whose next value is 1 or more: logs such as Book-Crossing's (0-10) and
    Goodreads' (0-5) write 0 for an interaction without a rating, which read as a rating is the worst one."""
    if column is None or not len(ratings) or ratings.min() != 0:
        return
    zero = float(np.mean(ratings == 0))
    rated = ratings[ratings != 0]
    if zero >= ZERO_AS_UNRATED_SHARE and len(rated) and rated.min() >= 1:
        logger.warning(
            "%s: %.0f%% of the ratings in column %r are 0, and the others %g to %g: if 0 means 'not rated' (as in "
            "Book-Crossing and Goodreads), it is read as the lowest rating; leave those rows out, or read every row "
            "as an interaction (feedback='implicit', --feedback implicit; --positive-threshold R keeps ratings >= R)",
            where, 100 * zero, column, rated.min(), rated.max(),
        )  # fmt: skip


def _check_float32(values: np.ndarray, column: str | None, where: str, line_offset: LineOffset) -> None:
    """A :class:`DataError` for the first value beyond the float32 range (it would be stored as inf)."""
    too_big = np.abs(values) > np.finfo(np.float32).max
    if too_big.any():
        first = int(np.flatnonzero(too_big)[0])
        loc = where_line(first, line_offset)
        raise DataError(f"{where}: column {column!r} {loc} holds {float(values[first])!r}, beyond the float32 range")


def _check_not_counts(values: np.ndarray, column: str, where: str, line_offset: LineOffset) -> None:
    """A :class:`DataError` when a rating column looks like counts: integers, none negative, some beyond 100."""
    if not len(values) or values.min() < 0 or values.max() <= _COUNT_LIKE_MAX:
        return
    if not (values == np.round(values)).all():
        return
    first = int(np.flatnonzero(values > _COUNT_LIKE_MAX)[0])
    raise DataError(
        f"{where}: column {column!r} {where_line(first, line_offset)} holds {int(values[first])}: this looks like "
        "a count, not a rating (a rating scale is bounded); for implicit feedback (clicks, plays, check-ins) pass "
        "feedback='implicit' (CLI: --feedback implicit) and name the column 'weight' (e.g. --columns "
        "user,item,weight), or pass feedback='explicit' to read it as ratings"
    )


def _check_feedback(
    feedback: Any, rating: str | None, positive_threshold: Any, where: str
) -> tuple[str | None, float | None]:
    """Validate ``feedback`` and ``positive_threshold`` against each other and the rating column."""
    if not (feedback is None or (isinstance(feedback, str) and feedback in FEEDBACK)):
        raise DataError(
            f"{where}: feedback={feedback!r} is not one of {list(FEEDBACK)} (None: ratings when the log has a rating "
            "column, else implicit)"
        )
    if feedback == "explicit" and rating is None:
        raise DataError(
            f"{where}: feedback='explicit' needs a rating column but none is named (rating=None); name it "
            "(e.g. columns=['user', 'item', 'rating']) or pass feedback='implicit'"
        )
    if positive_threshold is None:
        return feedback, None
    if isinstance(positive_threshold, bool) or not isinstance(positive_threshold, int | float | np.number):
        raise DataError(f"{where}: positive_threshold={positive_threshold!r} is not a number")
    if not np.isfinite(positive_threshold):
        raise DataError(f"{where}: positive_threshold={positive_threshold!r} is not a finite number")
    if feedback != "implicit":
        raise DataError(
            f"{where}: positive_threshold={positive_threshold!r} turns ratings into interactions and needs "
            f"feedback='implicit' (got feedback={feedback!r})"
        )
    if rating is None:
        raise DataError(
            f"{where}: positive_threshold={positive_threshold!r} is compared with the ratings, but no rating column "
            "is named (a config made for rated data? positive_threshold None, on the command line "
            "--positive-threshold none, keeps every row as an interaction)"
        )
    return feedback, float(positive_threshold)


def from_dataframe(
    df: pd.DataFrame,
    user: str = "user",
    item: str = "item",
    rating: str | None = "rating",
    timestamp: str | None = None,
    user_features: pd.DataFrame | None = None,
    item_features: pd.DataFrame | None = None,
    *,
    weight: str | None = None,
    feedback: str | None = None,
    positive_threshold: float | None = None,
    name: str = "dataframe",
    min_user_ratings: int = 1,
    source: str = "",
    _line_offset: LineOffset = None,
) -> Dataset:
    """Build a :class:`Dataset` from any interaction log.

    The log is validated and cleaned as the module docstring describes (numeric ratings, the latest of duplicate
    pairs, ``min_user_ratings``, dense codes sorted by raw id).

    ``feedback`` says what the rows are:

    * ``"explicit"``: ratings; a rating column is required.
    * ``"implicit"``: every row is an interaction (a play, click, check-in). :attr:`Dataset.explicit` is False,
      ``rating`` is 1.0 on every kept row and ``weight`` holds the weight column (1.0 without one). A rating
      column is only compared with ``positive_threshold``: rows rated below it are dropped (counted in
      ``report["below_threshold_dropped"]``). Duplicate pairs are merged into one row, the sum of their weights
      at the earliest of their timestamps (``report["duplicates_merged"]`` rows merged away); without a weight
      column a pair's weight is its number of rows (``report["repeats_as_weights"]``), so that a log of repeated
      plays is a weighted log (:attr:`Dataset.has_weights`); ``report["interactions"]`` counts the rows kept.
    * ``None``: ratings when a rating column is named, else implicit as above; but a rating column that holds
      counts (integer values, none negative, some beyond 100) is an error, since a rating scale is bounded:
      pass ``feedback="implicit"`` (with the column as ``weight``) or ``"explicit"`` to say which it is. Without
      a rating column, duplicate pairs keep the latest as for ratings unless a weight column is named (then they
      are merged as in ``"implicit"``).

    Args:
      df: one row per interaction; other columns than the named ones are ignored.
      user: the column holding raw user ids (any hashable type).
      item: the column holding raw item ids (any hashable type).
      rating: column of explicit ratings (any numeric scale); ``None`` for implicit logs (every row rates 1.0).
        With ``feedback="implicit"`` and no ``positive_threshold`` a frame without a ``rating`` column needs no
        ``rating=None`` (the default name is then no column; another name must be a column).
      timestamp: optional column of integer seconds, datetimes or ISO-8601 text (``2024-01-08T17:00:07Z``; UTC
        without a zone), stored as seconds; used for dedup and time-based splits.
      user_features: optional side table indexed by raw user id (columns are copied; each a feature, as the
        :class:`~jaxrec.data.Featurizer` encodes it).
      item_features: optional side table indexed by raw item id (columns are copied; each a feature: ``"|"``-joined
        tags multi-hot, many-valued numbers binned, the rest categorical; ``title`` the display name).
      weight: optional column of interaction weights (counts of plays, clicks, check-ins, or confidences): finite
        numbers > 0, kept as the ``weight`` column.
      feedback: ``None``, ``"explicit"`` or ``"implicit"``, as described above.
      positive_threshold: with ``feedback="implicit"`` and a rating column, the lowest rating that counts as an
        interaction.
      name: the dataset's name.
      min_user_ratings: users with fewer ratings (after dedup) are dropped and counted in the report.
      source: where the data came from (named in error messages; default ``"dataframe"``).
      _line_offset: the file line of row 0, or an array of the file line of each row, so that errors name file
        lines (None: errors name rows).

    Returns:
      The cleaned :class:`Dataset`, with every dropped or repaired count in its ``report``.

    Raises:
      DataError: if ``df`` is not a DataFrame, ``feedback`` or ``positive_threshold`` is invalid or does not fit the
        columns, a named column is missing, the log is empty, an id is missing, a rating, weight or timestamp is not
        a finite number, a rating or weight exceeds the float32 range, a weight is not > 0, a rating column looks
        like counts (``feedback=None``), a side table has duplicate ids, or no rating is left after
        ``positive_threshold`` or ``min_user_ratings``.
    """
    where = source or name
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
    if feedback == "implicit" and rating == "rating" and positive_threshold is None and "rating" not in df.columns:
        rating = None  # the default name, absent from a click log: no rating column, as rating=None says
    feedback, positive_threshold = _check_feedback(feedback, rating, positive_threshold, where)
    named = {"user": user, "item": item, "rating": rating, "timestamp": timestamp, "weight": weight}
    missing = [f"{role}={col!r}" for role, col in named.items() if col is not None and col not in df.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}; the columns are {list(df.columns)}")
    if len(df) == 0:
        raise DataError(f"{where}: no ratings (the log is empty)")
    # the file readers take a 'timestamp' column by name (and name their source); a frame given here names it
    if timestamp is None and "timestamp" in df.columns and not source:
        logger.warning(
            "%s: the frame's column 'timestamp' is not read (timestamp=None): without times a user's interactions "
            "have no order (supports drawn at random, no split by time); pass timestamp='timestamp' to read it",
            where,
        )
    encoded = {}  # role -> the ids' dense codes and sorted uniques, each distinct id checked once
    stripped = np.zeros(len(df), bool)
    for role in ("user", "item"):
        ids = df[named[role]]
        if pd.api.types.is_unsigned_integer_dtype(ids) and len(ids) and int(ids.max()) >= 2**63:
            # beyond int64, where every id lookup reads integers: kept as their digits, as a text log reads them
            ids = ids.astype(str)
        nulls = ids.isna().to_numpy()
        codes, uniques = pd.factorize(ids) if nulls.any() else _encode(ids.to_numpy())
        if pd.api.types.is_string_dtype(ids) or pd.api.types.is_object_dtype(ids):  # "" and "  " are no id either
            if not nulls.any():  # (a missing id is refused below)
                codes, uniques, changed = _strip_ids(codes, uniques)
                stripped |= changed
            blank = np.array([isinstance(v, str) and not v.strip() for v in uniques], bool)
            if blank.any():
                nulls = nulls | np.isin(codes, np.flatnonzero(blank))
        if nulls.any():
            first = int(np.flatnonzero(nulls)[0])
            loc = where_line(first, _line_offset)
            raise DataError(f"{where}: column {named[role]!r} {loc} has a missing {role} id")
        if pd.api.types.is_object_dtype(ids) or isinstance(ids.dtype, pd.CategoricalDtype):  # 7 and "7": two ids
            text = np.array([isinstance(v, str) for v in uniques], bool)
            if text.any() and not text.all():
                rows = [int(np.flatnonzero(kind[codes])[0]) for kind in (~text, text)]  # the first row of each
                shown = " and ".join(f"{uniques[codes[r]]!r} {where_line(r, _line_offset)}" for r in rows)
                raise DataError(
                    f"{where}: column {named[role]!r} mixes numbers and text as {role} ids ({shown}): one id could "
                    "count as several; give the column one type (e.g. .astype(str))"
                )
        encoded[role] = (codes, uniques)

    # implicit: every row an interaction, duplicates merged; a log with neither ratings nor weights keeps the
    # latest of duplicates as a rated log does
    implicit = feedback == "implicit" or (feedback is None and rating is None and weight is not None)
    explicit = rating is not None and not implicit
    report: dict[str, Any] = {"ratings_read": len(df)}
    if stripped.any():
        report["ids_stripped"] = int(stripped.sum())
        first = int(np.flatnonzero(stripped)[0])
        logger.warning(
            "%s: %d row(s) had spaces around a user or item id (first %s): read without them, so that 'u1, i5' and "
            "'u1,i5' name the same item",
            where,
            report["ids_stripped"],
            where_line(first, _line_offset),
        )
    ratings = numeric_column(df[rating], rating, where, _line_offset) if rating is not None else np.ones(len(df))
    if explicit:
        _check_float32(ratings, rating, where, _line_offset)  # ratings are stored as float32: these would be inf
        if feedback is None:
            _check_not_counts(ratings, rating, where, _line_offset)
    weights = np.ones(len(df), np.float64)
    if weight is not None:
        weights = numeric_column(df[weight], weight, where, _line_offset)
        not_positive = weights <= 0
        if not_positive.any():
            first = int(np.flatnonzero(not_positive)[0])
            raise DataError(
                f"{where}: column {weight!r} {where_line(first, _line_offset)} holds {weights[first]:g}: weights "
                f"must be > 0 (a count or confidence of the interaction; {int(not_positive.sum())} bad value(s) in "
                "total)"
            )
        _check_float32(weights, weight, where, _line_offset)
    times = None
    if timestamp is not None:
        times = timestamp_seconds(df[timestamp], timestamp, where, _line_offset)

    user_codes, user_uniques = encoded["user"]
    item_codes, item_uniques = encoded["item"]

    if implicit:
        # 2a. ratings below the threshold are not interactions
        keep = np.ones(len(df), bool) if positive_threshold is None else ratings >= positive_threshold
        report["below_threshold_dropped"] = int(len(keep) - keep.sum())
        # a rating column read without a threshold: each rated row an interaction, whatever its rating
        report["ratings_as_interactions"] = rating is not None and positive_threshold is None
        if report["below_threshold_dropped"] and keep.any():
            logger.info(
                "%s: left out %d row(s) rated below positive_threshold=%g (not interactions)",
                where,
                report["below_threshold_dropped"],
                positive_threshold,
            )
        if positive_threshold is None and rating is not None and len(ratings) and ratings.min() < ratings.max():
            logger.warning(
                "%s: feedback='implicit' reads each of its %d rated rows as an interaction, whatever the rating "
                "(%g to %g in column %r); positive_threshold (--positive-threshold R) keeps the ratings >= R only",
                where,
                len(ratings),
                ratings.min(),
                ratings.max(),
                rating,
            )
        if not keep.any():
            raise DataError(
                f"{where}: no interactions left: every rating in column {rating!r} is below positive_threshold="
                f"{positive_threshold:g} (ratings in [{ratings.min():g}, {ratings.max():g}])"
            )
        # 2b. duplicates: one row per pair, the sum of the weights at the first interaction
        kept_before = int(keep.sum())
        keep, weights, times = _merge_pairs(user_codes, item_codes, keep, weights, times)
        report["duplicates_merged"] = kept_before - int(keep.sum())
        # without a weight column a pair's weight is its number of rows: a log of repeats is a weighted log
        report["repeats_as_weights"] = weight is None and report["duplicates_merged"] > 0
        if report["duplicates_merged"]:
            logger.info(
                "%s: merged %d duplicate (user, item) interaction(s) (%s)",
                where,
                report["duplicates_merged"],
                "a pair's weight is its number of rows" if weight is None else "weights summed",
            )
            sums = weights[keep]
            if (sums > np.finfo(np.float32).max).any():
                raise DataError(
                    f"{where}: the weights in column {weight!r} of a duplicate (user, item) pair sum to "
                    f"{sums.max():g}, beyond the float32 range"
                )
    else:
        # 2. duplicates: keep the latest rating of each pair (file order breaks ties)
        keep = _latest_per_pair(user_codes, item_codes, times)
        report["duplicates_removed"] = int(len(keep) - keep.sum())
        if report["duplicates_removed"]:
            logger.warning(
                "%s: kept the latest of %d duplicate (user, item) rating(s)", where, report["duplicates_removed"]
            )
        if rating is not None and len(ratings) and ratings.min() == ratings.max():
            logger.warning(
                "%s: every rating in column %r is %g: with one value every method predicts it exactly (MAE 0) and "
                "ranks by ties; for clicks or plays pass feedback='implicit' (--feedback implicit)",
                where,
                rating,
                ratings.min(),
            )
        _warn_zero_as_unrated(ratings[keep], rating, where)

    # 3. minimum ratings per user
    counts = np.bincount(user_codes[keep], minlength=len(user_uniques))
    too_few = counts < min_user_ratings
    report["users_below_min_dropped"] = int((too_few & (counts > 0)).sum())
    report["ratings_below_min_dropped"] = int(counts[too_few].sum())
    keep &= ~too_few[user_codes]
    if not keep.any():
        raise DataError(f"{where}: no ratings left after dropping users with fewer than {min_user_ratings} ratings")

    # 4. dense codes over what survived, ordered by raw id: compact the first encoding (no second hash pass)
    users_before, items_before = len(user_uniques), len(item_uniques)
    user_codes, user_uniques = _compact(user_codes[keep], user_uniques)
    item_codes, item_uniques = _compact(item_codes[keep], item_uniques)
    # what the steps above left without a single row: the ids no longer in the log (a threshold can empty an item)
    report["users_dropped"] = users_before - len(user_uniques)
    report["items_dropped"] = items_before - len(item_uniques)
    n_kept = int(keep.sum())
    frame = {
        "user": user_codes,
        "item": item_codes,
        "rating": ratings[keep].astype(np.float32) if explicit else np.ones(n_kept, np.float32),
    }
    if times is not None:
        frame["timestamp"] = times[keep]
    if not explicit or weight is not None:
        frame["weight"] = weights[keep].astype(np.float32)
    out = pd.DataFrame(frame)
    report["ratings_kept"] = len(out)
    if implicit:
        report["interactions"] = len(out)

    users = side_table(user_uniques, user_features, "user", where, report)
    items = side_table(item_uniques, item_features, "item", where, report)
    return Dataset(
        name=name,
        ratings=out,
        users=users,
        items=items,
        report=report,
        source=source or "dataframe",
        explicit=explicit,
    )


def side_table(
    uniques: np.ndarray, features: pd.DataFrame | None, role: str, where: str, report: dict | None = None
) -> pd.DataFrame:
    """Side table indexed by code, ``raw_id`` first; rows for ids absent from ``features`` hold missing values (their
    count in ``report[f"{role}_features_without"]`` when any). ``features``' ids are typed as the log's
    (:func:`typed_ids`: a table read as text joins a log of integer ids).

    Raises:
      DataError: if the table has an id twice, or rows of which none is one of the log's ids.
    """
    table = pd.DataFrame({"raw_id": uniques})
    if features is not None and len(features.columns):
        keys = typed_ids(features.index.to_numpy(), uniques)
        usable = np.flatnonzero([key is not None for key in keys])
        index = pd.Index(keys[usable])
        if index.has_duplicates:  # "7" and "007" are one id of a log of integer ids
            raise DataError(
                f"{where}: {role} {index[index.duplicated()][0]!r} is given twice (as the log's ids read it)"
            )
        found = index.get_indexer(pd.Index(uniques))
        if len(features) and not (found >= 0).any():
            shown = ", ".join(map(repr, features.index[:3].tolist()))
            raise DataError(
                f"{where}: none of the {len(features)} ids of the {role} side table ({shown}) is one of the log's "
                f"{role}s: is its id column the first, or named {role}?"
            )
        rows = np.where(found >= 0, usable[np.maximum(found, 0)] if len(usable) else -1, len(features))
        aligned = features.reset_index(drop=True).reindex(rows).reset_index(drop=True)  # dtypes kept (Int64 years)
        for col in features.columns:
            table[col] = aligned[col]
        if report is not None and (found < 0).any():
            report[f"{role}_features_without"] = int((found < 0).sum())
    table.index.name = f"{role}_code"
    return table


_INT64_TEXT = r"[+-]?0*[0-9]{1,19}"  # ASCII digits only: str.isdigit() and \d also take other scripts' digits ("²")


def integer_ids(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """The integers raw ids write, as a log of integer ids reads them: ``7``, ``"7"``, ``" 7 "`` and ``"007"`` are
    7, and so is a whole number a float writes (``7.0``, ``"7.0"``) while float64 holds it exactly (below ``2^53``);
    digits are exact to int64's ends (a 19-digit id stays itself, where float64 would merge it with neighbours).

    Returns:
      ``(ints, ok)``: int64 ``[n]`` (0 where not ok) and bool ``[n]``, False for anything else (text, booleans,
      fractions, an integer beyond int64): it matches no integer id.
    """
    text = pd.Series(list(values), dtype=object).astype(str).str.strip()
    digits = text.str.fullmatch(_INT64_TEXT).to_numpy(bool)
    ints = np.zeros(len(text), np.int64)
    exact = np.array([int(t) for t in text[digits]], dtype=object)
    fits = np.array([-(2**63) <= v < 2**63 for v in exact], bool)
    where = np.flatnonzero(digits)[fits]
    ints[where] = exact[fits].astype(np.int64)
    ok = np.zeros(len(text), bool)
    ok[where] = True
    numeric = pd.to_numeric(text.where(~digits), errors="coerce").to_numpy(np.float64)
    written = np.isfinite(numeric) & (numeric == np.round(numeric)) & (np.abs(numeric) < 2**53)
    ints[written] = numeric[written].astype(np.int64)
    return ints, ok | written


def typed_ids(ids: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Ids typed as a log's (``like``): integers where the log's are (:func:`integer_ids`), None for anything else
    (it matches no integer id); text otherwise."""
    if like.dtype.kind not in "iu":
        return np.array([str(i) for i in ids], dtype=object)
    ints, ok = integer_ids(ids)
    return np.array([int(v) if k else None for v, k in zip(ints, ok, strict=True)], dtype=object)


def _strip_ids(codes: np.ndarray, uniques: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encoded text ids without the spaces around them (a log written as ``u1, i5``: the space is the writer's, and
    kept it would make `` i5`` another item than ``i5``): ``(codes, uniques, rows changed)``, the codes again dense
    and ordered by id. Each distinct id is stripped once; the rows are only renumbered."""
    text = np.array([v.strip() if isinstance(v, str) else v for v in uniques], dtype=object)
    changed = np.array([isinstance(v, str) and v != t for v, t in zip(uniques, text, strict=True)], bool)
    if not changed.any():
        return codes, uniques, np.zeros(len(codes), bool)
    renumber, uniques = _encode(text)
    return renumber[codes], uniques, changed[codes]
