"""Recommendations for a new user: read their few ratings, adapt the meta-learned model to them, rank the catalogue."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxrec.core.batch import zero_padding
from jaxrec.core.inner import adapt
from jaxrec.core.metasgd import split_meta_params
from jaxrec.core.params import task_initialisation
from jaxrec.data import DataError, Featurizer, sniff_separator
from jaxrec.data.dataset import integer_ids
from jaxrec.data.jsonlines import is_json_lines
from jaxrec.data.text import BACKSLASH_QUOTE, WEIGHT_NAMES, first_backslash_quote, undecodable
from jaxrec.data.topn import support_history
from jaxrec.evaluation.topn import is_user_side, recency_weights
from jaxrec.experiment.checkpoint import CheckpointError, read_metadata
from jaxrec.experiment.protocol import exact_als_gram, exact_als_loss_of_gram, topn_unknown_ids, trained_catalogue
from jaxrec.experiment.run import RunError
from jaxrec.models import TwoTower

__all__ = [
    "Recommender",
    "TopNRecommender",
    "ITEM_CODES",
    "ItemWording",
    "checked_items",
    "checked_support",
    "checked_values",
    "chosen_recency",
    "item_codes_of",
    "merge_duplicates",
    "on_scale",
    "padded",
    "read_item_list",
    "read_ratings_for",
    "read_user_ratings",
    "recommender_for",
    "unusable_values",
    "UserRatings",
]


logger = logging.getLogger(__name__)

#: the row keys of a model of rating histories (:class:`~jaxrec.models.GRURecommender`)
HISTORY_KEYS = ("history_item", "history_rating")

_ITEM_NAMES = ("item", "itemid", "item_id", "movieid", "movie_id", "iid", "id")


_RATING_NAMES = ("rating", "ratings", "score", "stars", *WEIGHT_NAMES)  # a weight column is a weighted run's values


def read_user_ratings(
    path: str | os.PathLike,
    item_ids,
    rating_range: tuple[float, float] | None,
    *,
    implicit: bool = False,
    positive_threshold: float | None = None,
    weighted: bool = False,
    encoding: str = "utf-8",
    ratings_as_interactions: bool = False,
):
    """Read a new user's ratings from a small ``item,rating`` file of raw item ids.

    The header is optional (``item``/``movieId``/... and ``rating`` columns, else the first two columns). Unknown
    item ids are ignored and duplicates keep the last rating, each with a note. For a top-N model (``implicit``)
    a file of item ids alone, one per line, is the user's interactions (each of weight 1, whatever the run's
    positive threshold); ``item,rating`` rows are read too, ratings below ``positive_threshold`` left out of the
    support (with a note) and returned as ``seen``. A top-N model trained on weighted
    interactions (``weighted``: counts, plays) reads ``item,weight`` rows as the training log's rows were read:
    each weight a confidence, an item's weights summed; an unweighted one counts each item once and says so when
    the second column holds anything but ones. A weighted run whose log's ratings were each an interaction
    (``ratings_as_interactions``) reads a new user's alike: each line one interaction, whatever its rating (a column
    its header calls a weight stays weights).

    Args:
      path: the file.
      item_ids: the raw id of each item code of the model's dataset.
      rating_range: ``(low, high)`` of the model's rating scale, or None for no check.
      implicit: the model is a top-N model of implicit feedback.
      positive_threshold: the run's ``positive_threshold`` (implicit only).
      weighted: the top-N model was trained on a log whose weights are not all 1 (implicit only).
      encoding: the file's text encoding (``--encoding``).
      ratings_as_interactions: the top-N run read its log's ratings as interactions, without a positive threshold
        (only a weighted run reads values at all).

    Returns:
      :class:`UserRatings` ``(codes, values, notes, seen)``: int32 codes, float32 ratings (for a top-N model the
      weights), the notes for the user, and the codes of items rated below the positive threshold (seen, not in the
      support).

    Raises:
      RunError: if the file is missing or does not parse as ``item,rating`` lines, has no usable rating, or holds
        a rating that is not a number, one outside ``rating_range``, or a weight that is not positive.
    """

    path = Path(path).expanduser()
    if not path.is_file():
        raise RunError(f"--ratings {path}: file not found")
    if is_json_lines(path):
        raise RunError(
            f"--ratings {path}: a JSON-lines file; --ratings takes item,rating lines or item ids one a line (a "
            "JSON-lines file of users' rows goes to --users)"
        )
    try:
        try:
            sep = sniff_separator(path, encoding=encoding)
        except DataError as unsplit:
            if not implicit:  # the command has no --sep: say what the lines must look like
                if "file is empty" in str(unsplit):
                    raise
                raise RunError(
                    f"--ratings {path}: expected lines of item,rating separated by a comma, a tab, '|', ';' or '::' "
                    "(this model predicts ratings: a bare list of items is for a top-N model)"
                ) from None
            sep = None  # a list of item ids, one per line, has no separator to sniff
        if sep is None:
            frame = _item_id_lines(path, encoding=encoding)
        else:
            frame = pd.read_csv(
                path,
                sep=sep,
                encoding=encoding,
                header=None,
                dtype=str,
                skip_blank_lines=True,
                keep_default_na=False,
                engine="python" if len(sep) > 1 else "c",
                on_bad_lines="error",
            )
            escaped = first_backslash_quote(path, encoding, sep) if frame.apply(_holds_quote).any() else None
            if escaped is not None:  # the quote ended its field, and the rest was appended to it
                raise RunError(f"--ratings {path}: line {escaped}: {BACKSLASH_QUOTE}")
    except RunError:
        raise
    except DataError as e:
        raise RunError(f"--ratings: {e} (expected lines of item,rating)") from None
    except UnicodeDecodeError:
        raise RunError(f"--ratings {undecodable(path, encoding)}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise RunError(f"--ratings {path}: cannot parse as item,rating lines: {str(e).strip()[:200]}") from None
    listed = frame.shape[1] == 1 and implicit
    if listed:
        frame[1] = "1"  # a list of item ids: every one an interaction
        if str(frame.iloc[0, 0]).strip().strip('"').lower() in _ITEM_NAMES:
            frame.iloc[0, 1] = "rating"
    if frame.shape[1] < 2:
        raise RunError(f"--ratings {path}: expected two columns item,rating, found {frame.shape[1]}")
    first = [str(v).strip().strip('"').lower() for v in frame.iloc[0]]
    # a first row is a header when its item is no item of the catalogue and it names a column or holds no number: a
    # row of data with a bad value ("79,4.5 stars", "sku-1,nan") is not one (taken for one it was dropped unsaid,
    # its item then listed back), nor a row whose item the catalogue knows by a column's name ("id,5")
    named = any(name in _ITEM_NAMES or name in _RATING_NAMES for name in first)
    lead = frame.iloc[:1, 0]
    known = _codes_of(lead.str.strip().to_numpy(), lead.to_numpy(), item_ids)[0] >= 0
    header = not known and (named or not _is_number(first[1]))
    item_col, rating_col = 0, 1
    if header:
        item_col = next((i for i, name in enumerate(first) if name in _ITEM_NAMES), 0)
        rating_col = next((i for i, name in enumerate(first) if name in _RATING_NAMES), 1)
        frame = frame.iloc[1:]
    if len(frame) == 0:
        raise RunError(f"--ratings {path}: no ratings (only a header)")
    line_of = np.arange(len(frame)) + (2 if header else 1)
    written = frame.iloc[:, item_col].to_numpy()  # an id with spaces of its own (" padded ") is matched as written
    raw_items = frame.iloc[:, item_col].str.strip().to_numpy()
    values = pd.to_numeric(frame.iloc[:, rating_col].str.strip(), errors="coerce").to_numpy(np.float64)
    weighted = implicit and weighted and positive_threshold is None
    # a weighted run whose log's ratings were each an interaction, whatever the rating: so are a new user's (their
    # repeats add up); a column the header calls a weight stays weights
    named = first[rating_col] if header else "rating"
    as_interactions = weighted and ratings_as_interactions and not listed and named not in WEIGHT_NAMES
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "weight" if weighted and not as_interactions else "rating"
        raise RunError(f"--ratings {path}: line {line_of[i]}: {what} {frame.iloc[i, rating_col]!r} is not a number")
    if as_interactions:
        given, values = values, np.ones(len(values))
    unusable = unusable_values(values, scale=rating_range, weights=weighted)
    if unusable is not None:
        i, why = unusable
        where = f"--ratings {path}: line {line_of[i]}"
        if why == "float32":
            raise RunError(f"{where}: {frame.iloc[i, rating_col]!r} is beyond float32, the model's precision")
        if why == "weight":
            raise RunError(f"{where}: weight {values[i]:g} is not positive")
        lo, hi = rating_range
        raise RunError(f"{where}: rating {values[i]:g} is outside the model's rating scale [{lo:g}, {hi:g}]")
    notes = []
    if as_interactions:
        if (given != 1).any():
            notes.append(
                "the run read its log's ratings as interactions (no positive threshold): the second column is "
                "ignored, each line one interaction"
            )
    elif weighted:
        if not listed:
            notes.append("the model was trained on weighted interactions: the second column is each one's weight")
    elif implicit and positive_threshold is None and (values != 1).any():
        notes.append(
            "the model was trained on interactions without weights: the second column is ignored, each item counts once"
        )
    seen = np.zeros(0, np.int64)
    codes = _codes_of(raw_items, written, item_ids)
    if implicit and positive_threshold is not None and not listed:  # a listed id is an interaction, not a rating
        below = values < positive_threshold
        if below.all():
            raise RunError(
                f"--ratings {path}: every rating is below the model's positive threshold {positive_threshold:g}; "
                "`recommend --users` and the service answer such a user the model's list before adaptation"
            )
        known_below = below & (codes >= 0)  # an unknown id is noted as unknown below, whatever its rating
        if known_below.any():
            notes.append(
                f"{int(known_below.sum())} rating(s) below the positive threshold {positive_threshold:g}: not "
                "adapted to, and left out of the list (seen)"
            )
        seen = codes[known_below]
        keep = ~known_below
        raw_items, values, codes = raw_items[keep], values[keep], codes[keep]
    unknown = codes < 0
    what = "interaction(s)" if implicit else "rating(s)"
    if unknown.any():
        shown = ", ".join(map(str, raw_items[unknown][:5])) + (" ..." if unknown.sum() > 5 else "")
        notes.append(f"ignored {int(unknown.sum())} {what} with unknown item id(s): {shown}")
    codes, values = codes[~unknown], values[~unknown]
    if len(codes) == 0:
        what = (
            f"every known item's rating is below the model's positive threshold {positive_threshold:g}"
            if len(seen)
            else "none of the items is known to the model's dataset (a file of another catalogue?)"
        )
        raise RunError(
            f"--ratings {path}: {what}; `recommend --users` and the service answer such a user the model's list "
            "before adaptation"
        )
    codes, values, duplicates = merge_duplicates(codes, values, implicit=implicit, weighted=weighted)
    if duplicates:
        kept = "kept the last rating of each item"
        if implicit:
            kept = "weights summed" if weighted else "kept one of each item"
        notes.append(f"{duplicates} duplicate {what}: {kept}")
    seen = np.setdiff1d(seen, codes)  # an item rated both below and above the threshold is in the support
    return UserRatings(codes.astype(np.int32), values.astype(np.float32), notes, seen.astype(np.int32))


def _codes_of(raw_items: np.ndarray, written: np.ndarray, item_ids) -> np.ndarray:
    """The codes of a file's ids: matched without their spaces first, then as written (-1: not in the catalogue)."""
    codes = item_codes_of(raw_items, np.asarray(item_ids))
    unknown = codes < 0
    if unknown.any():
        codes[unknown] = item_codes_of(written[unknown], np.asarray(item_ids))
    return codes


class UserRatings(NamedTuple):
    """A new user's file, read (:func:`read_user_ratings`).

    Attributes:
      codes: int32 item codes of the support, each once.
      values: float32 ratings (for a top-N model the weights).
      notes: what was ignored or merged, for the user.
      seen: int32 codes of items rated below a top-N run's positive threshold: not in the support, but seen, so
        left out of the list (``top_k(..., exclude=seen)``).
    """

    codes: np.ndarray
    values: np.ndarray
    notes: list
    seen: np.ndarray


def merge_duplicates(codes, values, *, implicit: bool, weighted: bool = False):
    """A new user's items each once, merged as the training log's rows were (the one rule of ``recommend`` and
    ``serve``): a rating model keeps an item's last rating, at its place; an implicit model keeps an item where it
    first happened (the log merges duplicates at their earliest time: the order a recency weighting reads), of
    weight 1, or its weights summed when ``weighted``.

    Args:
      codes: ``[n]`` item codes, in the order given.
      values: ``[n]`` their ratings or weights.
      implicit: the model is a top-N model.
      weighted: the top-N model was trained on weighted interactions.

    Returns:
      ``(codes, values, duplicates)``: the kept items in their order, their values, and how many rows merged.
    """
    codes, values = np.asarray(codes, np.int64), np.asarray(values, np.float64)
    distinct, first, which = np.unique(codes, return_index=True, return_inverse=True)
    if implicit:
        keep = np.sort(first)
        values = (
            np.bincount(which, weights=values, minlength=len(distinct))[which] if weighted else np.ones_like(values)
        )
    else:
        keep = np.sort(len(codes) - 1 - np.unique(codes[::-1], return_index=True)[1])
    return codes[keep], values[keep], len(codes) - len(distinct)


def read_item_list(
    path: str | os.PathLike, item_ids, *, flag: str = "--exclude", encoding: str = "utf-8"
) -> tuple[np.ndarray, list]:
    """A file of raw item ids, one per line (items never to recommend: out of stock, withdrawn), as item codes.

    Read as a top-N model's ``--ratings`` list is read: each whole line is an id, a line quoted as a whole is
    unquoted, blank lines are skipped, an id is matched without its spaces first, then as written.

    Args:
      path: the file.
      item_ids: the raw id of each item code of the model's dataset.
      flag: the option that named the file, for the errors.
      encoding: the file's text encoding.

    Returns:
      ``(codes, unknown)``: the distinct int64 codes of the known ids, sorted, and the ids not in the catalogue (in
      file order; the caller says how many it ignored).

    Raises:
      RunError: if the file is missing, unreadable or holds no item id.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise RunError(f"{flag} {path}: file not found")
    try:
        written = _item_id_lines(path, flag, encoding)[0].to_numpy()
    except UnicodeDecodeError:
        raise RunError(f"{flag} {undecodable(path, encoding)}") from None
    except OSError as e:
        raise RunError(f"{flag} {path}: cannot read it as text: {e}") from None
    codes = _codes_of(np.array([w.strip() for w in written], dtype=object), written, item_ids)
    return np.unique(codes[codes >= 0]).astype(np.int64), [w.strip() for w in written[codes < 0]]


def _item_id_lines(path: Path, flag: str = "--ratings", encoding: str = "utf-8") -> pd.DataFrame:
    """A file of item ids, one per line, as a one-column frame: each whole line is an id (``Earth, Wind & Fire``
    holds a comma but is one id); a line quoted as a whole (``"Earth, Wind & Fire"``) is unquoted; blank lines are
    skipped. Each id keeps its spaces: an id is matched without them first, then as written (``" padded "``).

    Raises:
      RunError: if the file holds no item id (it is empty or blank).
    """
    ids = []
    with open(path, encoding="utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding) as f:
        for line in f:
            text, bare = line.rstrip("\r\n"), line.strip()
            if len(bare) >= 2 and bare[0] == bare[-1] == '"':
                text = bare[1:-1].replace('""', '"')
            if bare:
                ids.append(text)  # as written: the caller matches it stripped, else with its own spaces
    if not ids:
        raise RunError(f"{flag} {path}: the file holds no item ids (expected one item id per line)")
    return pd.DataFrame({0: pd.Series(ids, dtype=str)})


def _holds_quote(column: pd.Series) -> bool:
    return bool(column.astype(str).str.contains('"', regex=False).any())


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def item_codes_of(raw_items, item_ids):
    """Dataset codes of raw item id strings (-1 when unknown); ids compare as integers when the dataset's are
    (:func:`~jaxrec.data.dataset.integer_ids`: ``"7"``, ``"007"`` and ``"7.0"`` are item 7). ``item_ids``: the
    dataset's raw item ids by code (an array, or a list such as ``featurizer.item_raw_ids``)."""
    item_ids = np.asarray(item_ids)
    if item_ids.dtype.kind in "iu":
        query, whole = integer_ids(raw_items)
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
      rating_range: ``(low, high)`` the predicted ratings :meth:`top_k` returns are clipped to, as MAE clips them
        (None for binary targets, whose scores are not ratings).
    """

    def __init__(self, experiment, params):

        self.exp = experiment
        self.featurizer = experiment.featurizer
        self.rating_range = self.featurizer.spec.rating_range
        self.state = split_meta_params(params, experiment.inner_lr)
        self.history = int(experiment.spec.history)
        n_items = self.featurizer.n_items
        self.candidates = jax.device_put(self.featurizer.rows(np.full(n_items, -1), np.arange(n_items)))

        user_keys = self.featurizer.user_feature_keys

        def scores(state, support, mask, candidates):
            # a candidate row is the user's too: their side features (slot 0, unknown, when none are given)
            candidates = {**candidates, **{k: jnp.broadcast_to(support[k][0], (n_items,)) for k in user_keys}}
            if self.history:  # the candidates read what a row after the support reads: its last L ratings
                support = dict(support)
                following = {k: support.pop(f"next_{k}") for k in HISTORY_KEYS}
                candidates = {
                    **candidates,
                    **{k: jnp.broadcast_to(v[0], (n_items, *v.shape[1:])) for k, v in following.items()},
                }
            init, inner_lr = task_initialisation(*state, support, mask, experiment.loss_fn)  # e.g. the user's group
            phi = adapt(
                init, zero_padding(support, mask), mask, experiment.inner.replace(order="first"), inner_lr=inner_lr
            )
            return experiment.apply_fn(phi, candidates)

        self.score_one = scores
        self._scores = jax.jit(scores)

    def min_support(self) -> int:
        """The smallest support size the rows can be padded to."""
        return 1

    def support(self, item_codes, ratings, size: int | None = None, user_features=None):
        """Build the padded support set of a new user.

        Args:
          item_codes: the codes of the rated items.
          ratings: their ratings.
          size: the padded size (default: the next power of two, at least 8).
          user_features: the user's side features, ``{column: value}`` (:meth:`~jaxrec.data.Featurizer.
            encode_user_features`), or None.

        Returns:
          ``(rows, mask)``; the user is unknown (OOV).
        """
        items, values, mask = padded([item_codes], [ratings], size or _bucket(len(item_codes), 8))
        rows, mask = self.supports(items, values, mask, [user_slots(self.featurizer, user_features)])
        return {k: v[0] for k, v in rows.items()}, mask[0]

    def supports(self, items: np.ndarray, ratings: np.ndarray, mask: np.ndarray, slots=None):
        """The support rows of a batch of new users at once (see :func:`padded`).

        Args:
          items: ``[B, S]`` item codes (-1 = padding).
          ratings: ``[B, S]`` their ratings.
          mask: ``[B, S]`` the real entries.
          slots: each user's side-feature slots (:func:`user_slots`; None: unknown), or None for none of them.

        Returns:
          ``(rows, mask)``, every row key ``[B, S, ...]``; the users are unknown (OOV). A model of rating histories
          (``spec.history = L``, the GRU) also gets each row's ``history_item`` / ``history_rating`` (the ``L``
          ratings before it, in the order given, as :func:`~jaxrec.data.build_tasks` gives a support row) and, as
          ``next_history_item`` / ``next_history_rating``, what a row after the support reads (its last ``L``).
        """
        rows = self.featurizer.rows(np.full(items.shape, -1), items, ratings)
        with_user_slots(rows, slots)
        if self.history:
            slots = np.where(mask, rows["item"], 0)
            values = np.where(mask, np.asarray(ratings, np.float32), 0.0)
            size = items.shape[1]
            own = _ratings_before(slots, values, np.broadcast_to(np.arange(size), items.shape), self.history)
            rows.update({k: np.where(mask[..., None], v, 0) for k, v in own.items()})  # padded rows: no history
            following = _ratings_before(slots, values, mask.sum(axis=1, keepdims=True), self.history)  # [B, 1, L]
            rows.update({f"next_{k}": np.repeat(v, size, axis=1) for k, v in following.items()})
        return rows, mask

    def scores(self, item_codes, ratings, user_features=None):
        """Score every item after adapting to the user's ratings.

        Args:
          item_codes: the codes of the rated items.
          ratings: their ratings.
          user_features: the user's side features, ``{column: value}``, or None (a model that reads some then
            takes the unknown value of each, as a user without them).

        Returns:
          The predicted score of every item, indexed by dataset code.

        Raises:
          ValueError: if the items or ratings are not a usable support (:func:`checked_support`).
        """
        item_codes, ratings = checked_support(
            item_codes, ratings, self.featurizer.n_items, weights=False, scale=self.rating_range
        )
        rows, mask = self.support(item_codes, ratings, user_features=user_features)
        return np.array(self._scores(self.state, rows, mask, self.candidates))

    def top_k(self, item_codes, ratings, k: int, exclude=(), user_features=None):
        """Recommend the ``k`` best items the user has not rated.

        Args:
          item_codes: the codes of the rated items.
          ratings: their ratings.
          k: how many items.
          exclude: codes of other items to leave out of the list.
          user_features: the user's side features (see :meth:`scores`).

        Returns:
          ``(codes, predictions)`` of the best items, best first: ranked by the model's scores, each prediction
          clipped to the rating scale (a model may score beyond it; what it predicts is a rating on the scale).
        """
        best, scores = _best(self.scores(item_codes, ratings, user_features), item_codes, k, exclude)
        return best, self.clip(scores)

    def clip(self, scores):
        """Predicted ratings clipped to the rating scale (unchanged without one)."""
        if self.rating_range is None:
            return scores
        return np.clip(scores, *self.rating_range)


class TopNRecommender:
    """Adapts a top-N model (``feedback="implicit"``) to a new user's interactions and ranks the catalogue.

    The support rows are the user's items, each with ``negatives`` items drawn uniformly from the training
    catalogue (seeded, never one of the user's items), and the history of :class:`~jaxrec.data.topn.TopNTaskSet`;
    the inner loop is the run's (its ranking loss). Compiled once per support size bucket.

    A run trained with ``--hybrid NAME`` ranks by its hybrid ``z(maml) + w z(NAME)`` (the trained model's
    :attr:`~jaxrec.experiment.trained.TrainedModel.hybrid`, :mod:`jaxrec.experiment.hybrid_record`), as its
    evaluation did: :meth:`scores` are then the hybrid's, :meth:`model_scores` the adapted model's alone. A run that
    chose a recency weighting of the support (``support_recency``) weighs a user's items by their order as given,
    the oldest first (:func:`~jaxrec.evaluation.topn.recency_weights`), as its evaluation weighed the support.

    A run trained with ``--rerank MODEL`` whose validation users ranked the re-ranked lists higher (or given the
    re-ranker) lists as its evaluated ``rerank`` method did
    (:mod:`jaxrec.experiment.reranker_record`): the adapted model's top ``R`` items (the recall stage, the model
    alone and the support unweighted, as evaluated), re-scored by the re-ranker adapted to the same support, the
    best ``k`` of them by its scores (ties in the recall stage's order; so at most ``R`` items); :meth:`scores` are
    then the re-ranker's.

    Args:
      experiment: the :class:`~jaxrec.experiment.trained.TrainedModel` of a top-N run (or its
        :class:`~jaxrec.experiment.topn.TopNExperiment`: then the support's weighting it chose for ``params``, and no
        hybrid or re-ranker, which only a trained run records).
      params: the meta-learned parameters.
      seed: the seed of the negatives.
      hybrid: the :class:`~jaxrec.experiment.hybrid_record.ServedHybrid` to rank by; ``"auto"``: the trained
        model's (None when it has none); None: the adapted model alone.
      reranker: the :class:`~jaxrec.experiment.reranker_record.ServedReranker` to re-rank by (the lists are then
        the re-ranked ones, no hybrid); ``"auto"``: the trained model's where its ``lists`` (the validation users
        chose the re-ranked lists), else none; None: none.
    """

    def __init__(self, experiment, params, seed: int = 0, hybrid: Any = "auto", reranker: Any = "auto"):
        self.exp = experiment
        if _auto(reranker):  # the trained model's, where its validation users chose the re-ranked lists
            reranker = getattr(experiment, "reranker", None)
            reranker = reranker if reranker is not None and reranker.lists else None
        self.reranker = reranker
        self.hybrid = getattr(experiment, "hybrid", None) if _auto(hybrid) else hybrid
        if self.reranker is not None:  # the re-ranking's recall stage is the adapted model alone
            self.hybrid = None
        self.featurizer = experiment.featurizer
        self.state = split_meta_params(params, experiment.inner_lr)
        self.negatives = int(experiment.config.topn.negatives)
        # the re-ranking was evaluated on the support unweighted, both stages
        self.recency = 0.0 if self.reranker is not None else chosen_recency(experiment, params)
        self.shots = int(experiment.config.topn.shots)  # the support size the recency was chosen for
        self.history = int(experiment.spec.history)
        self.seed = seed
        n_items = self.featurizer.n_items
        self.trained_items = np.flatnonzero(self.featurizer.item_index[:-1] > 0)
        user_keys = list(self.featurizer.user_rows(np.full(1, -1)))  # the id (unknown) and the side features
        item_rows = self.featurizer.item_rows(np.arange(n_items))
        self.item_side = fixed_item_side(experiment, self.state[0], item_rows)
        model, inner = experiment.model, experiment.inner.replace(order="first")

        def user_rows(support, mask, lead):
            rows = {k: jnp.broadcast_to(support[k][0], (lead,)) for k in user_keys}  # the support's user
            if self.history:
                items = jnp.where(mask, support["item"], 0)[: self.history]
                history = jnp.pad(items, (0, self.history - items.shape[0]))
                rows["history_item"] = jnp.broadcast_to(history, (lead, self.history))
            return rows

        def scores(state, support, mask, candidates):
            phi = adapt(state[0], zero_padding(support, mask), mask, inner, inner_lr=state[1])
            return experiment.apply_fn(phi, {**user_rows(support, mask, n_items), **candidates})

        def dot_scores(state, support, mask, side):  # the item side formed once (fixed_item_side)
            adapting = inner
            if side.gram is not None:  # the exact ALS fold-in, its Gram matrix given rather than formed
                loss = exact_als_loss_of_gram(model, lambda _: side.gram, experiment.config.topn.als_confidence)
                adapting = inner.replace(loss_fn=loss)
            phi = adapt(state[0], zero_padding(support, mask), mask, adapting, inner_lr=state[1])
            user = model.apply(phi, user_rows(support, mask, 1), method=model.user_vectors)[0]
            return side.vectors @ user

        fixed = self.item_side is not None
        self.candidates = jax.device_put(self.item_side if fixed else item_rows)
        self.score_one = dot_scores if fixed else scores
        self._scores = jax.jit(self.score_one)
        self.rerank_one = None
        if self.reranker is not None:
            reranking = self.reranker.inner.replace(order="first")

            def rerank_scores(state, support, mask, rows, items):  # the re-ranker's scores of ``items [M]``
                phi = adapt(state[0], zero_padding(support, mask), mask, reranking, inner_lr=state[1])
                picked = jax.tree.map(lambda v: jnp.take(v, jnp.maximum(items, 0), axis=0), rows)
                return self.reranker.model.apply(phi, {**user_rows(support, mask, items.shape[0]), **picked})

            self.rerank_one = rerank_scores
            self.item_rows = jax.device_put(item_rows)
            self.rerank_state = jax.device_put(self.reranker.state)
            self.rerank_candidates = min(int(self.reranker.candidates), n_items)
            self._rerank_scores = jax.jit(rerank_scores)

    def min_support(self) -> int:
        """The smallest support size the rows can be padded to: the model's history length."""
        return max(1, self.history)

    def support(self, item_codes, weights, size: int | None = None, user_features=None):
        """The padded support rows of a new user.

        Args:
          item_codes: the codes of the user's items.
          weights: their weights.
          size: the padded size (default: the next power of two, at least 8 and at least the history).
          user_features: the user's side features, ``{column: value}``, or None.

        Returns:
          ``(rows, mask)``.
        """
        items, values, mask = padded([item_codes], [weights], max(size or _bucket(len(item_codes), 8), self.history))
        rows, mask = self.supports(items, values, mask, [user_slots(self.featurizer, user_features)])
        return {k: v[0] for k, v in rows.items()}, mask[0]

    def supports(self, items: np.ndarray, weights: np.ndarray, mask: np.ndarray, slots=None):
        """The support rows of a batch of new users at once (see :func:`padded`).

        Each user's negatives are drawn uniformly from the training catalogue less their own items, by a generator
        of their own seeded with ``seed``: a user's rows, and so their answer, do not depend on the batch.

        Args:
          items: ``[B, S]`` item codes (-1 = padding); ``S`` at least the history.
          weights: ``[B, S]`` their weights.
          mask: ``[B, S]`` the real entries.
          slots: each user's side-feature slots (:func:`user_slots`; None: unknown), or None for none of them.

        Returns:
          ``(rows, mask)``, every row key ``[B, S, ...]``.
        """
        batch, size = items.shape
        rows = self.featurizer.user_rows(np.full(items.shape, -1))
        with_user_slots(rows, slots)
        rows.update(self.featurizer.item_rows(items))
        rows["weight"] = np.where(mask, weights, 0.0).astype(np.float32)
        if self.recency:  # the run's weighting of the support by its order, the items as sent: the oldest first
            with np.errstate(over="ignore"):  # a weight near float32's end: non-finite scores, refused by top_k
                rows["weight"] = rows["weight"] * recency_weights(mask, self.recency, self.shots)
        negatives, drawn = self._negatives(items, mask)
        rows.update(self.featurizer.item_rows(negatives, prefix="neg_"))
        rows["neg_mask"] = np.broadcast_to((mask & drawn[:, None])[:, :, None], (batch, size, self.negatives)).copy()
        logq = np.float32(-np.log(len(self.trained_items)))
        rows["logq"] = np.where(mask, logq, 0.0).astype(np.float32)
        rows["neg_logq"] = np.where(rows["neg_mask"], logq, 0.0).astype(np.float32)
        if self.history:
            rows["history_item"], _ = support_history(rows["item"], mask, 0, self.history)
        return rows, mask

    def _negatives(self, items: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[B, S, negatives]`` codes: for each user, uniform draws from the trained items that are not theirs,
        and ``[B]`` whether the user has any such item (one who has every trained item gets placeholder codes,
        masked out by the caller: no negative to contrast their items with, and nothing left to recommend).

        A draw ``r`` in ``[0, n_u)`` (``n_u``: the user's pool size) is the ``r``-th trained item that is not the
        user's: ``r`` plus the number of the user's items at or before it in the trained order (their sorted
        positions ``p_i`` shifted by ``i``), found by one ``searchsorted`` over every user at once.
        """
        batch, size = items.shape
        trained = self.trained_items
        n = len(trained)
        position = np.searchsorted(trained, np.where(mask, items, -1))
        theirs = mask & (position < n) & (trained[np.minimum(position, n - 1)] == items)
        # each user's distinct trained positions, sorted, shifted by their rank; the rest pushed past every draw
        marked = np.sort(np.where(theirs, position, n + size), axis=1)
        distinct = np.concatenate([np.ones((batch, 1), bool), marked[:, 1:] != marked[:, :-1]], axis=1)
        marked = np.sort(np.where(distinct & (marked < n), marked, n + size), axis=1)
        counts = np.sum(marked < n, axis=1)
        shifted = np.where(marked < n, marked - np.arange(size), 2 * (n + size))
        pools = n - counts
        draws = np.stack(
            [np.random.default_rng(self.seed).integers(0, max(pool, 1), (size, self.negatives)) for pool in pools]
        )
        offset = (np.arange(batch) * 4 * (n + size))[:, None]
        flat = (shifted + offset).ravel()
        before = np.searchsorted(flat, (draws.reshape(batch, -1) + offset).ravel(), side="right")
        before = before.reshape(batch, -1) - (np.arange(batch) * size)[:, None]
        return trained[np.minimum(draws + before.reshape(draws.shape), n - 1)], pools > 0

    def model_scores(self, item_codes, weights, user_features=None):
        """The adapted model's score of every item (indexed by dataset code); a ValueError if the items or weights
        are not a usable support (:func:`checked_support`)."""
        codes, weights = checked_support(item_codes, weights, self.featurizer.n_items, weights=True)
        return self._model_scores(codes, weights, user_features)

    def _model_scores(self, item_codes: np.ndarray, weights: np.ndarray, user_features=None) -> np.ndarray:
        rows, mask = self.support(item_codes, weights, user_features=user_features)
        return np.array(self._scores(self.state, rows, mask, self.candidates))

    def _reranked(self, rows: dict, mask: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The re-ranker's scores of ``items`` after adapting to the support ``(rows, mask)`` (:meth:`support`)."""
        items = jnp.asarray(items, jnp.int32)
        return np.array(self._rerank_scores(self.rerank_state, rows, mask, self.item_rows, items), np.float32)

    def scores(self, item_codes, weights, user_features=None):
        """Score every item after adapting to the user's items (indexed by dataset code): the re-ranker's scores
        when there is one, the hybrid's when there is one (``-inf`` on the user's own items), else the adapted
        model's. ``user_features``: the user's side features, ``{column: value}``, or None (the unknown value of
        each)."""
        item_codes, weights = checked_support(item_codes, weights, self.featurizer.n_items, weights=True)
        if self.reranker is not None:
            rows, mask = self.support(item_codes, weights, user_features=user_features)
            return self._reranked(rows, mask, np.arange(self.featurizer.n_items))
        model = self._model_scores(item_codes, weights, user_features)
        if self.hybrid is None:
            return model
        codes = np.asarray(item_codes, np.int64)[None, :]
        partner = self.hybrid.partner_scores(codes, np.ones(codes.shape, bool), np.asarray(weights)[None, :])
        return np.array(self.hybrid.combine(model[None, :], partner, jnp.asarray(codes, jnp.int32))[0])

    def top_k(self, item_codes, weights, k: int, exclude=(), user_features=None):
        """Recommend the ``k`` best items the user has not interacted with: ``(codes, scores)``, best first, ties
        broken by the lower code (as the evaluation and the service break them). ``exclude``: codes of other items
        the user has seen, left out of the list too (e.g. rated below the run's positive threshold, so not in the
        support); ``user_features``: the user's side features (see :meth:`scores`). With a re-ranker: the best
        ``k`` of the recall stage's top ``R`` by the re-ranker's scores, ties in the recall stage's order."""
        if self.reranker is None:
            return _best(self.scores(item_codes, weights, user_features), item_codes, k, exclude)
        item_codes, weights = checked_support(item_codes, weights, self.featurizer.n_items, weights=True)
        rows, mask = self.support(item_codes, weights, user_features=user_features)  # both stages adapt to them
        recall = np.array(self._scores(self.state, rows, mask, self.candidates))
        _check_k(k)
        candidates, _ = _best(recall, item_codes, self.rerank_candidates, exclude)
        scores = self._reranked(rows, mask, candidates)
        if not np.all(np.isfinite(scores)):  # as the recall stage's scores, and the service's answer (a 422)
            raise ValueError(_NOT_FINITE)
        order = np.argsort(-scores, kind="stable")[:k]
        return candidates[order], scores[order]


class ItemSide(NamedTuple):
    """A trained two-tower model's item side, formed once for every new user (:func:`fixed_item_side`).

    Attributes:
      vectors: ``[V, d + 1]``, every item's vector and bias (:meth:`~jaxrec.models.TwoTower.item_vectors`): a
        user's scores are one matrix-vector product.
      gram: ``[d + 1, d + 1]``, the Gram matrix of the exact ALS loss's catalogue term
        (:func:`~jaxrec.experiment.protocol.exact_als_gram`), or None when the inner loss has no such term.
    """

    vectors: jax.Array
    gram: jax.Array | None


def fixed_item_side(experiment, params: Any, item_rows: dict) -> ItemSide | None:
    """The item side of a top-N run's two-tower model, formed once: it does not depend on the user, so a new user's
    adaptation and scores need not form it again (each call formed the item tower over the whole catalogue twice and
    the ``V x (d + 1)^2`` Gram matrix once: most of a call's time on a large catalogue).

    Args:
      experiment: the trained model or experiment (``model``, ``inner``, ``config``, ``featurizer``).
      params: the meta-learned parameters (Meta-SGD's rates split off).
      item_rows: every catalogue item's rows.

    Returns:
      The :class:`ItemSide`, or None when the model is not a :class:`~jaxrec.models.TwoTower` or its inner loop
      adapts more than the user side (the item side then differs per user).
    """
    model, config = experiment.model, experiment.config
    if not isinstance(model, TwoTower) or not is_user_side(experiment.inner, params):
        return None
    vectors = jax.jit(lambda p, rows: model.apply(p, rows, method=model.item_vectors))(params, item_rows)
    if config.topn.ranking_loss != "als_exact":  # no Gram term: the inner loss as run, the scores from these vectors
        return ItemSide(vectors, None)
    gram_fn = exact_als_gram(model, trained_catalogue(experiment.featurizer), topn_unknown_ids(config))
    return ItemSide(vectors, jax.jit(gram_fn)(params))


def user_slots(featurizer, user_features) -> dict[str, int] | None:
    """A new user's side-feature slots (:meth:`~jaxrec.data.Featurizer.encode_user_features`), or None without
    features; a value no training user had is the unknown slot, and logged.

    Raises:
      ValueError: if a feature is not one of the model's (a :class:`~jaxrec.data.DataError`).
    """
    if not user_features:
        return None
    slots, unknown = featurizer.encode_user_features(user_features)
    if unknown:
        logger.info("user features %s: values no training user had, read as unknown", unknown)
    return slots


def with_user_slots(rows: dict, slots) -> dict:
    """``rows`` (``[B, S]`` user keys) with each user's side-feature slots in every one of their rows (``slots``:
    one dict or None per user; None leaves the unknown slot 0). In place; returns ``rows``."""
    for b, mine in enumerate(slots or ()):
        for key, slot in (mine or {}).items():
            rows[key][b] = slot
    return rows


def _ratings_before(slots: np.ndarray, values: np.ndarray, ends: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """``history_item`` / ``history_rating`` ``[B, R, length]``: for each end position ``ends[b, r]``, the
    ``length`` items (vocabulary slots) and ratings of ``slots``/``values [B, S]`` just before it, oldest first,
    left-padded with 0 (``slots`` 0 on padding, which follows a user's real entries, as :func:`padded` gives)."""
    before = ends[..., None] - length + np.arange(length)  # [B, R, L]
    picked = np.clip(before, 0, slots.shape[1] - 1)
    rows = np.arange(len(slots))[:, None, None]
    item = np.where(before >= 0, slots[rows, picked], 0).astype(np.int32)
    rating = np.where(item > 0, values[rows, picked], 0.0).astype(np.float32)
    return {"history_item": item, "history_rating": rating}


def chosen_recency(experiment, params: Any = None) -> float:
    """The recency strength of the support a top-N run's meta method chose: a trained model's
    ``support_recency``, or the one a :class:`~jaxrec.experiment.topn.TopNExperiment` chose on its validation users
    for ``params`` (:meth:`~jaxrec.experiment.topn.TopNExperiment.recency_for`); 0 (no weighting) when none was
    chosen. An experiment with a grid to choose from that has not chosen for these parameters (before
    :meth:`~jaxrec.experiment.topn.TopNExperiment.validate` or ``evaluate`` of them) is warned of: the lists would
    then differ from the evaluation's, which weighs the support."""
    recorded = getattr(experiment, "support_recency", None)
    if recorded is not None:
        return float(recorded)
    chosen = experiment.recency_for(params) if hasattr(experiment, "recency_for") else None
    if chosen is not None:
        return float(chosen)
    grid = experiment.config.topn.support_recency
    if grid and any(grid) and getattr(getattr(experiment, "dataset", None), "has_timestamps", False):
        logger.warning(
            "no support_recency among %s is chosen for these parameters yet (validate or evaluate them first): the "
            "support is not weighted by its order, so these lists will differ from the evaluation's, which weighs it",
            list(grid),
        )
    return 0.0


def on_scale(values, scale) -> np.ndarray:
    """Whether ratings lie on the scale ``(low, high)``, compared in float32: the precision ratings are kept in, and
    the scale learned from them (5.3 is 5.3000002 there, 0.3 is 0.30000001), so a scale's own ends are on it."""
    values = np.asarray(values, np.float64).astype(np.float32)
    return (np.float32(scale[0]) <= values) & (values <= np.float32(scale[1]))


def unusable_values(values, *, scale=None, weights: bool = False) -> tuple[int, str] | None:
    """The first of a new user's values a model cannot take, and why; None when it can take them all.

    The reasons, checked in this order for each value: ``"float32"`` (not a finite number in float32, the model's
    precision: 1e39 is inf there), ``"weight"`` (``weights``: an interaction's weight must be > 0) and ``"scale"``
    (a rating off ``scale = (low, high)``, compared as :func:`on_scale` does). One check for ``jaxrec recommend``'s
    files, the service's requests and the recommenders' Python calls.
    """
    values = np.asarray(values, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(values.astype(np.float32))
    not_weight = ~(values > 0) if weights else np.zeros(values.shape, bool)
    off = ~on_scale(values, scale) if scale is not None else np.zeros(values.shape, bool)
    bad = ~finite | not_weight | off
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return i, "float32" if not finite[i] else "weight" if not_weight[i] else "scale"


class ItemWording(NamedTuple):
    """How :func:`checked_items` names what its caller was given (a dataset's item codes, an export's positions).

    Attributes:
      argument: the argument's name (``"item_codes"``).
      kind: what every entry must be, in the plural (``"item codes"``).
      entry: the same, one of them (``"an item code"``).
      mapping: how raw ids become entries (shown when the entries are not integers).
      outside: what to do about an entry outside the catalogue (appended to that message; may be empty).
      repeat: what to do about an item given twice (appended to that message; may be empty).
      label: ``label(entry) -> str``, an entry's name in the message about a repeat.
    """

    argument: str
    kind: str
    entry: str
    mapping: str
    outside: str
    repeat: str
    label: Any


#: recommend's wording: dataset item codes
ITEM_CODES = ItemWording(
    argument="item_codes",
    kind="item codes",
    entry="an item code",
    mapping="map raw ids to codes with item_codes_of(ids, featurizer.item_raw_ids)",
    outside="; item_codes_of gives -1 for an id not in the catalogue: leave those items out",
    repeat=" (merge_duplicates merges repeats as recommend and serve do)",
    label=lambda code: f"item {code}",
)


def checked_items(item_codes, n_items: int, wording: ItemWording = ITEM_CODES) -> np.ndarray:
    """A new user's items, checked: at least one, each an integer in ``[0, n_items)``, none twice.

    Args:
      item_codes: the items (dataset codes, or the positions a caller's ``wording`` names).
      n_items: the catalogue's size.
      wording: how the messages name the entries (:class:`ItemWording`).

    Returns:
      int64 ``[n]``, the items.

    Raises:
      ValueError: naming the first offending entry.
    """
    codes = np.asarray(item_codes)
    if codes.ndim != 1 or (codes.size and not np.issubdtype(codes.dtype, np.integer)):
        raise ValueError(
            f"{wording.argument} must be a flat list of integer {wording.kind}, got {codes.dtype} of shape "
            f"{codes.shape} ({wording.mapping})"
        )
    if codes.size == 0:
        raise ValueError("no items (an empty support): a new user needs at least one item to adapt to")
    outside = np.flatnonzero((codes < 0) | (codes >= n_items))
    if outside.size:
        i = int(outside[0])
        raise ValueError(
            f"{wording.argument}[{i}] = {int(codes[i])} is not {wording.entry} (0 to {n_items - 1}){wording.outside}"
        )
    distinct, counts = np.unique(codes, return_counts=True)
    if np.any(counts > 1):
        first = int(np.argmax(counts > 1))
        raise ValueError(
            f"{wording.label(int(distinct[first]))} is given {int(counts[first])} times: give each item once"
            f"{wording.repeat}"
        )
    return codes.astype(np.int64)


def checked_support(item_codes, values, n_items: int, *, weights: bool, scale=None) -> tuple[np.ndarray, np.ndarray]:
    """A new user's items and their ratings or weights, as given to a recommender, checked.

    Args:
      item_codes: the items' dataset codes, each once (``item_codes_of`` maps raw ids to codes, -1 for an id not in
        the catalogue; ``merge_duplicates`` merges repeated items as ``recommend`` and ``serve`` do).
      values: one rating (or weight) per item.
      n_items: the catalogue's size (codes are ``0 .. n_items - 1``).
      weights: the values are interactions' weights (each must be > 0), not ratings.
      scale: ``(low, high)``, the rating scale every rating must lie in, or None.

    Returns:
      ``(codes int64 [n], values float32 [n])``.

    Raises:
      ValueError: naming the first offending entry: no item, codes that are not integers in ``[0, n_items)``, an
        item given twice (:func:`checked_items`), a value count other than the items', a value that is not a finite
        number, a weight ``<= 0`` or a rating off the scale.
    """
    codes = checked_items(item_codes, n_items)
    return codes, checked_values(codes, values, weights=weights, scale=scale)


def checked_values(codes: np.ndarray, values, *, weights: bool, scale=None) -> np.ndarray:
    """The ratings or weights of checked items (:func:`checked_items`), checked.

    Args:
      codes: the items, one per value (named in the messages).
      values: one rating (or weight) per item.
      weights: the values are interactions' weights (each must be > 0), not ratings.
      scale: ``(low, high)``, the rating scale every rating must lie in, or None.

    Returns:
      float32 ``[n]``, the values.

    Raises:
      ValueError: a value count other than the items', a value that is not a finite number, a weight ``<= 0`` or a
        rating off the scale.
    """
    name = "weights" if weights else "ratings"
    try:
        vals = np.asarray(values, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numbers: {e}") from None
    if vals.shape != codes.shape:
        raise ValueError(f"{vals.size} {name} for {codes.size} items: give one per item")
    bad = unusable_values(vals, scale=None if weights else scale, weights=weights)
    if bad is not None:
        i, why = bad
        entry = f"{name}[{i}] (item {int(codes[i])}) is {vals[i]}"
        if why == "float32":
            raise ValueError(f"{entry}, not a finite number in float32 (the model's precision)")
        if why == "weight":
            raise ValueError(f"{entry}: a weight must be > 0")
        raise ValueError(f"{entry}, outside the rating scale [{scale[0]:g}, {scale[1]:g}]")
    return vals.astype(np.float32)


def padded(item_codes, values, size: int):
    """``(items, values, mask)`` ``[B, size]`` of users' item codes and values (ragged lists), padded with -1 and 0.

    Raises:
      ValueError: if a user has more than ``size`` items.
    """
    longest = max((len(c) for c in item_codes), default=0)
    if longest > size:
        raise ValueError(f"a user has {longest} items, more than the padded size {size}")
    lengths = np.array([len(c) for c in item_codes], np.int64)
    mask = np.arange(size)[None, :] < lengths[:, None]
    items = np.full(mask.shape, -1, np.int64)
    items[mask] = np.concatenate([np.asarray(c, np.int64) for c in item_codes]) if longest else []
    out = np.zeros(mask.shape, np.float32)
    out[mask] = np.concatenate([np.asarray(v, np.float32) for v in values]) if longest else []
    return items, out, mask


def _bucket(n: int, least: int) -> int:
    """The next power of two of ``n``, at least ``least``."""
    return max(least, 1 << int(np.ceil(np.log2(max(n, 1)))))


_NOT_FINITE = (
    "the model's scores for this user are not finite numbers: the weights or ratings given are too large for its "
    "float32 arithmetic; scale them down"
)


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer (how many items to recommend), got {k!r}")


def _auto(choice: Any) -> bool:
    return isinstance(choice, str) and choice == "auto"


def _best(scores: np.ndarray, item_codes, k: int, exclude=()):
    """The ``k`` best items but ``item_codes`` and ``exclude``, best first, ties broken as ``jax.lax.top_k`` (the
    evaluation's and the service's) breaks them: the lower code first."""
    _check_k(k)
    exclude = np.asarray(exclude, np.int64).ravel()
    outside = exclude[(exclude < 0) | (exclude >= len(scores))]
    if outside.size:
        raise ValueError(f"exclude holds codes outside 0 to {len(scores) - 1}: {outside[:5].tolist()}")
    seen = np.unique(np.concatenate([np.asarray(item_codes, np.int64).ravel(), exclude]))
    ranked = np.ones(len(scores), bool)
    ranked[seen] = False
    if not np.all(np.isfinite(scores[ranked])):
        raise ValueError(_NOT_FINITE)
    scores[seen] = -np.inf
    k = min(k, len(scores) - len(seen))
    if k <= 0:
        return np.zeros(0, np.int64), scores[:0]
    kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
    above = np.flatnonzero(scores > kth)
    best = np.concatenate([above, np.flatnonzero(scores == kth)[: k - len(above)]])
    best = best[np.lexsort((best, -scores[best]))]
    return best, scores[best]


def recommender_for(trained) -> Recommender | TopNRecommender:
    """The recommender of a trained run: :class:`TopNRecommender` for a top-N run (``feedback="implicit"``), else
    :class:`Recommender`.

    Args:
      trained: the run's :class:`~jaxrec.experiment.trained.TrainedModel`.

    Returns:
      The recommender over its meta-learned parameters.

    Raises:
      RunError: for a run of item tasks (``tasks_by="item"``): its model adapts to a new item from the users who
        rated it, not to a new user from their ratings.
    """
    if trained.config.protocol.tasks_by == "item":
        raise RunError(
            f"this run ({trained.config.model.name}) was trained on item tasks (tasks_by='item'): it adapts to a new "
            "item from the users who rated it, and recommending to a new user from their ratings is not what it "
            "learned; train a run on user tasks (the default) to recommend"
        )
    topn = trained.config.data.feedback == "implicit"
    return (TopNRecommender if topn else Recommender)(trained, trained.params)


def read_ratings_for(checkpoint: str, ratings: str, encoding: str = "utf-8", item_ids=None):
    """Read a new user's ratings against the item ids and rating scale recorded in a checkpoint.

    Args:
      checkpoint: a run folder or its checkpoint folder.
      ratings: the ``item,rating`` file (see :func:`read_user_ratings`).
      encoding: its text encoding.
      item_ids: the catalogue's raw ids by code, where it grew since training
        (:meth:`~jaxrec.experiment.trained.TrainedModel.with_items`); default: the recorded ones.

    Returns:
      The :class:`UserRatings` of :func:`read_user_ratings`.

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
    data = (meta.get("config") or {}).get("data") or {}
    return read_user_ratings(
        ratings,
        np.asarray(featurizer.item_raw_ids if item_ids is None else item_ids),
        featurizer.spec.rating_range,
        implicit=data.get("feedback") == "implicit",
        positive_threshold=data.get("positive_threshold"),
        weighted=bool(meta.get("weighted", False)),
        encoding=encoding,
        ratings_as_interactions=bool(meta.get("ratings_as_interactions", False)),
    )
