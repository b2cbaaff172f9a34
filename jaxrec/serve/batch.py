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

from jaxrec.data import DataError, sniff_separator
from jaxrec.data.dataset import has_header, numeric_column, resolve_columns, role_columns, timestamp_seconds
from jaxrec.serve.engine import ServingModel
from jaxrec.serve.requests import Catalogue, RequestError

__all__ = ["read_users", "recommend_users"]

logger = logging.getLogger(__name__)


def read_users(path: str | os.PathLike, columns: Any = None) -> pd.DataFrame:
    """Read a file of users' interactions (separated text, ``.gz`` allowed, or Parquet), its columns found as the
    log reader finds them (:func:`~jaxrec.data.from_csv`): by a header's common names (``user``/``userId``,
    ``item``/``movieId``, ``rating``, ``weight``/``plays``, ``timestamp``), or by ``columns`` (``--columns``:
    ``"user,item,weight,timestamp"`` in file order, ``_`` for a column to skip, or ``"user=visitor,item=venue"``).

    Returns:
      ``user`` and ``item`` (raw ids as text, spaces around them stripped, as the log's), ``value`` (float64: the
      rating or weight, when the file has one) and ``line`` (the row's line in the file, or its row in a Parquet
      file), each user's rows oldest first: by the timestamp where there is one (ties in file order), else in file
      order.

    Raises:
      DataError: naming the file, and the column or line: a missing user or item column, a value that is not a
        number, a time that does not parse, an empty id.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    parquet = path.suffix.lower() in (".parquet", ".pq")
    columns = role_columns(columns)
    try:
        if parquet:
            frame, header = pd.read_parquet(path).astype(str), True
        else:
            sep = sniff_separator(path)
            header = has_header(path, sep, columns)
            frame = pd.read_csv(
                path,
                sep=sep,
                header=0 if header else None,
                dtype=str,
                keep_default_na=False,
                engine="python" if len(sep) > 1 else "c",
            )
    except DataError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, ImportError) as e:
        raise DataError(f"{path}: cannot read as a table of users' interactions: {str(e).strip()[:200]}") from None
    if frame.empty:
        raise DataError(f"{path}: no rows of users' interactions")
    roles = resolve_columns(list(frame.columns), columns, header, path, allow_extra=True)
    if "rating" in roles and "weight" in roles:
        raise DataError(f"{path}: a rating and a weight column: give the one a new user's values are")
    out = pd.DataFrame({"user": frame[roles["user"]].str.strip(), "item": frame[roles["item"]].str.strip()})
    out["line"] = np.arange(len(frame)) + (1 if parquet else 1 + int(header))
    lines = out["line"].to_numpy()
    if (value := roles.get("rating", roles.get("weight"))) is not None:
        out["value"] = numeric_column(frame[value], value, str(path), lines)
    if (time := roles.get("timestamp")) is not None:
        out["time"] = timestamp_seconds(frame[time], time, str(path), lines)
        out = out.sort_values("time", kind="stable").drop(columns="time")
    empty = (out["user"] == "").to_numpy() | (out["item"] == "").to_numpy()
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise DataError(f"{path}: line {out['line'].iat[i]}: an empty user or item id")
    return out.reset_index(drop=True)


def recommend_users(
    trained: Any, users: pd.DataFrame, k: int = 10, *, batch: int = 64, where: str = "users"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The top ``k`` unseen items of every user of ``users`` (:func:`read_users`), as the service ranks them.

    Args:
      trained: the run's :class:`~jaxrec.experiment.trained.TrainedModel`.
      users: ``user``, ``item`` and optionally ``value`` rows, each user's oldest first.
      k: how many items per user.
      batch: users per compiled call.
      where: how errors name the input (the file).

    Returns:
      ``(lists, report)``: a frame of ``user``, ``rank`` (1 = best), ``item`` (raw id), ``score`` (and ``title``
      where the run has titles), users in the order they first appear; and the counts: ``users``, ``rows``,
      ``unknown`` (rows of items not in the catalogue, ignored), ``duplicates`` (merged),
      ``below_threshold`` (ratings below the run's positive threshold: not adapted to, left out of the list) and
      ``without_items`` (users with no known item, who get no list) with up to five of them in ``skipped``.

    Raises:
      ValueError: ``k`` or ``batch`` below 1, a file without ratings for a rating model, or a user's values the
        model cannot take (off the scale, not a positive weight, beyond float32), naming the user.
    """
    if k < 1 or batch < 1:
        raise ValueError(f"k and batch must be >= 1, got {k} and {batch}")
    catalogue = Catalogue(trained)
    if "value" not in users and not catalogue.implicit:
        raise ValueError(f"{where}: this model predicts ratings: the file needs a rating column")
    order = pd.unique(users["user"])
    groups = users.groupby("user", sort=False).indices
    longest = max((len(groups[u]) for u in order), default=1)
    sizes = [16]
    while sizes[-1] < longest:
        sizes.append(sizes[-1] * 4)
    engine = ServingModel(trained, batch_sizes=(batch,), support_sizes=sizes, max_k=k, devices=1)
    report = {"users": len(order), "rows": len(users), "unknown": 0, "duplicates": 0, "below_threshold": 0}
    inputs, kept, skipped = [], [], []
    items, values = users["item"].to_numpy(), users["value"].to_numpy() if "value" in users else None
    for user in order:
        rows = groups[user]
        try:
            if values is None:
                support = catalogue.support(None, list(items[rows]), sizes[-1])
            else:
                support = catalogue.support(list(zip(items[rows], values[rows], strict=True)), None, sizes[-1])
        except RequestError as e:
            raise ValueError(f"{where}: user {user!r}: {e}") from None
        report["unknown"] += len(support.unknown)
        report["duplicates"] += support.duplicates
        report["below_threshold"] += support.below_threshold
        if len(support.codes) == 0:
            skipped.append(user)
            continue
        inputs.append(catalogue.user_input(support, k))
        kept.append(user)
    report["without_items"] = len(skipped)
    report["skipped"] = [str(u) for u in skipped[:5]]
    if skipped:
        logger.info("%d user(s) with no item the model knows get no list (e.g. %s)", len(skipped), skipped[:5])
    # users of similar support sizes batched together: a batch is padded to its longest user's bucket
    by_size = np.argsort([max(len(u.codes), len(u.seen)) for u in inputs], kind="stable")
    ranked = [None] * len(inputs)
    for i, answer in zip(by_size, engine.rank([inputs[i] for i in by_size]), strict=True):
        ranked[i] = answer
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
    return lists, report
