"""Recommendations for a new user: read their few ratings, adapt the meta-learned model to them, rank the catalogue."""

from __future__ import annotations

import math
import os
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from jaxrec.core.batch import zero_padding
from jaxrec.core.inner import adapt
from jaxrec.core.metasgd import split_meta_params
from jaxrec.core.params import task_initialisation
from jaxrec.data import DataError, Featurizer, sniff_separator
from jaxrec.experiment.checkpoint import CheckpointError, read_metadata
from jaxrec.experiment.run import RunError

__all__ = ["Recommender", "read_ratings_for", "read_user_ratings"]


_ITEM_NAMES = ("item", "itemid", "item_id", "movieid", "movie_id", "iid", "id")


_RATING_NAMES = ("rating", "ratings", "score", "stars")


def read_user_ratings(path: str | os.PathLike, item_ids, rating_range: tuple[float, float] | None):
    """Read a new user's ratings from a small ``item,rating`` file of raw item ids.

    The header is optional (``item``/``movieId``/... and ``rating`` columns, else the first two columns). Unknown
    item ids are ignored and duplicates keep the last rating, each with a note.

    Args:
      path: the file.
      item_ids: the raw id of each item code of the model's dataset.
      rating_range: ``(low, high)`` of the model's rating scale, or None for no check.

    Returns:
      ``(item codes, ratings, notes)``: int32 codes, float32 ratings and the notes for the user.

    Raises:
      RunError: if the file is missing or does not parse as ``item,rating`` lines, has no usable rating, or holds
        a rating that is not a number or one outside ``rating_range``.
    """

    path = Path(path).expanduser()
    if not path.is_file():
        raise RunError(f"--ratings {path}: file not found")
    try:
        sep = sniff_separator(path)
        frame = pd.read_csv(
            path,
            sep=sep,
            header=None,
            dtype=str,
            skip_blank_lines=True,
            keep_default_na=False,
            engine="python" if len(sep) > 1 else "c",
            on_bad_lines="error",
        )
    except DataError as e:
        raise RunError(f"--ratings: {e} (expected lines of item,rating)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise RunError(f"--ratings {path}: cannot parse as item,rating lines: {str(e).strip()[:200]}") from None
    if frame.shape[1] < 2:
        raise RunError(f"--ratings {path}: expected two columns item,rating, found {frame.shape[1]}")
    first = [str(v).strip().strip('"').lower() for v in frame.iloc[0]]
    header = not _is_number(first[-1]) or not _is_number(first[1])
    item_col, rating_col = 0, 1
    if header:
        item_col = next((i for i, name in enumerate(first) if name in _ITEM_NAMES), 0)
        rating_col = next((i for i, name in enumerate(first) if name in _RATING_NAMES), 1)
        frame = frame.iloc[1:]
    if len(frame) == 0:
        raise RunError(f"--ratings {path}: no ratings (only a header)")
    line_of = np.arange(len(frame)) + (2 if header else 1)
    raw_items = frame.iloc[:, item_col].str.strip().to_numpy()
    values = pd.to_numeric(frame.iloc[:, rating_col].str.strip(), errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise RunError(f"--ratings {path}: line {line_of[i]}: rating {frame.iloc[i, rating_col]!r} is not a number")
    if rating_range is not None:
        lo, hi = rating_range
        out = (values < lo) | (values > hi)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise RunError(
                f"--ratings {path}: line {line_of[i]}: rating {values[i]:g} is outside the model's "
                f"rating scale [{lo:g}, {hi:g}]"
            )
    codes = _item_codes(raw_items, np.asarray(item_ids))
    notes = []
    unknown = codes < 0
    if unknown.any():
        shown = ", ".join(map(str, raw_items[unknown][:5])) + (" ..." if unknown.sum() > 5 else "")
        notes.append(f"ignored {int(unknown.sum())} rating(s) of unknown item id(s): {shown}")
    codes, values = codes[~unknown], values[~unknown]
    if len(codes) == 0:
        raise RunError(f"--ratings {path}: none of the rated items is known to the model's dataset")
    last = len(codes) - 1 - np.unique(codes[::-1], return_index=True)[1]  # last occurrence of each item
    if len(last) < len(codes):
        notes.append(f"{len(codes) - len(last)} duplicate rating(s): kept the last rating of each item")
    keep = np.sort(last)
    return codes[keep].astype(np.int32), values[keep].astype(np.float32), notes


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _item_codes(raw_items, item_ids):
    """Dataset codes of raw item id strings (-1 when unknown); ids compare as integers when the dataset's are."""
    if item_ids.dtype.kind in "iu":
        numeric = pd.to_numeric(pd.Series(raw_items), errors="coerce").to_numpy(np.float64)
        whole = np.isfinite(numeric) & (numeric == np.round(numeric)) & (np.abs(numeric) < 2**62)
        query = np.where(whole, numeric, -(2**62)).astype(np.int64)
    else:
        query, whole = np.asarray(raw_items).astype(str), np.ones(len(raw_items), bool)
        item_ids = item_ids.astype(str)
    order = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, query), 0, max(len(sorted_ids) - 1, 0))
    found = whole & (len(sorted_ids) > 0) & (sorted_ids[pos] == query)
    return np.where(found, order[pos], -1)


class Recommender:
    """Adapts the meta-learned model to one new user's ratings and scores every item.

    The adaptation and scoring are jit-compiled once per support size bucket (powers of two, at least 8), so warm
    calls take milliseconds.

    Args:
      experiment: the model's :class:`~jaxrec.experiment.trained.TrainedModel` (or its :class:`~jaxrec.Experiment`):
        anything with ``featurizer``, ``inner``, ``inner_lr``, ``loss_fn`` and ``apply_fn``.
      params: the meta-learned parameters.

    Attributes:
      exp: the experiment.
      featurizer: its featurizer.
      state: ``(params, inner_lr)`` of the adaptation.
      candidates: the device rows of every item, for an unknown user.
    """

    def __init__(self, experiment, params):

        self.exp = experiment
        self.featurizer = experiment.featurizer
        self.state = split_meta_params(params, experiment.inner_lr)
        n_items = self.featurizer.n_items
        self.candidates = jax.device_put(self.featurizer.rows(np.full(n_items, -1), np.arange(n_items)))

        def scores(state, support, mask, candidates):
            init, inner_lr = task_initialisation(*state, support, mask, experiment.loss_fn)  # e.g. the user's group
            phi = adapt(
                init, zero_padding(support, mask), mask, experiment.inner.replace(order="first"), inner_lr=inner_lr
            )
            return experiment.apply_fn(phi, candidates)

        self._scores = jax.jit(scores)

    def support(self, item_codes, ratings):
        """Build the padded support set of a new user.

        Args:
          item_codes: the codes of the rated items.
          ratings: their ratings.

        Returns:
          ``(rows, mask)``, padded to the next power of two (at least 8); the user is unknown (OOV).
        """
        size = max(8, 1 << int(np.ceil(np.log2(max(len(item_codes), 1)))))
        items = np.full(size, -1, np.int64)
        items[: len(item_codes)] = item_codes
        values = np.zeros(size, np.float32)
        values[: len(ratings)] = ratings
        mask = np.arange(size) < len(item_codes)
        rows = self.featurizer.rows(np.full(size, -1), items, values)
        return rows, mask

    def scores(self, item_codes, ratings):
        """Score every item after adapting to the user's ratings.

        Args:
          item_codes: the codes of the rated items.
          ratings: their ratings.

        Returns:
          The predicted score of every item, indexed by dataset code.
        """
        rows, mask = self.support(item_codes, ratings)
        return np.array(self._scores(self.state, rows, mask, self.candidates))

    def top_k(self, item_codes, ratings, k: int):
        """Recommend the ``k`` best items the user has not rated.

        Args:
          item_codes: the codes of the rated items.
          ratings: their ratings.
          k: how many items.

        Returns:
          ``(codes, scores)`` of the best items, best first.
        """
        scores = self.scores(item_codes, ratings)
        scores[np.asarray(item_codes)] = -np.inf
        k = min(k, len(scores) - len(item_codes))
        best = np.argpartition(-scores, k - 1)[:k] if k > 0 else np.zeros(0, np.int64)
        best = best[np.argsort(-scores[best], kind="stable")]
        return best, scores[best]


def read_ratings_for(checkpoint: str, ratings: str):
    """Read a new user's ratings against the item ids and rating scale recorded in a checkpoint.

    Args:
      checkpoint: a run folder or its checkpoint folder.
      ratings: the ``item,rating`` file (see :func:`read_user_ratings`).

    Returns:
      ``(item codes, ratings, notes)`` of :func:`read_user_ratings`.

    Raises:
      CheckpointError: if the checkpoint or its featurizer record is unreadable, or it records no raw item ids.
      RunError: if the ratings file is not usable.
    """

    meta = read_metadata(checkpoint)
    try:
        featurizer = Featurizer.from_dict(meta["featurizer"])
    except (KeyError, TypeError, ValueError, DataError) as e:
        raise CheckpointError(f"{checkpoint}: the checkpoint's featurizer record is unreadable: {e}") from e
    if featurizer.item_raw_ids is None:
        raise CheckpointError(f"{checkpoint}: the checkpoint does not record raw item ids")
    return read_user_ratings(ratings, np.asarray(featurizer.item_raw_ids), featurizer.spec.rating_range)
