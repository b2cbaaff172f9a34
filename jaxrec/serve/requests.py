"""A served model's catalogue, and the checks that turn a request's raw item ids and ratings into a user's support.

Everything here is plain data: the web layer (:mod:`jaxrec.serve.app`) maps a :class:`RequestError` to a 422 with
its message, so a bad request is named precisely and never reaches the compiled call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxrec.data.dataset import DataError, integer_ids
from jaxrec.experiment.recommend import merge_duplicates, unusable_values
from jaxrec.serve.engine import UserInput

__all__ = ["Catalogue", "RequestError", "UserSupport"]


class RequestError(ValueError):
    """A request the model cannot answer as sent (its message says why, naming the field and the value)."""


@dataclasses.dataclass(frozen=True)
class UserSupport:
    """A request's usable items, and what was left out of them (every count reported back to the caller).

    Attributes:
      codes: the item codes used (each once).
      values: their ratings or weights.
      unknown: the raw ids not in the catalogue (ignored).
      duplicates: items sent more than once (a rating model keeps the last rating; an implicit one the first
        occurrence, a weighted model's weights summed).
      below_threshold: ratings below the run's positive threshold (implicit runs; not adapted to).
      seen: the codes of the known items rated below the threshold, and of those the request excludes: left out of
        the list, as the support's are.
      excluded: the known items the request excludes (besides the user's own).
      unknown_excluded: the excluded ids not in the catalogue (ignored).
      ratings_ignored: ratings sent to a model of unweighted interactions without a positive threshold, or to one
        whose log's ratings were each an interaction: each item counts as an interaction whatever its rating (said in
        the answer, as ``jaxrec recommend`` notes an ignored column).
      ratings_as_weights: ratings sent to a model of weighted interactions (plays, counts): each value is read as
        the interaction's weight, as the training log's were (said in the answer).
    """

    codes: np.ndarray
    values: np.ndarray
    unknown: list
    duplicates: int
    below_threshold: int
    seen: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    excluded: int = 0
    unknown_excluded: int = 0
    ratings_ignored: bool = False
    ratings_as_weights: bool = False

    def report(self) -> dict[str, Any]:
        """The JSON-ready counts of what was used and ignored (and excluded, when the request excludes items)."""
        report = {
            "used": len(self.codes),
            "unknown": len(self.unknown),
            "unknown_items": self.unknown[:20],
            "duplicates": self.duplicates,
            "below_threshold": self.below_threshold,
        }
        if self.excluded or self.unknown_excluded:
            report.update(excluded=self.excluded, unknown_excluded=self.unknown_excluded)
        if self.ratings_ignored:
            report["ratings_ignored"] = True
        if self.ratings_as_weights:
            report["ratings_as_weights"] = True
        return report


class Catalogue:
    """The items of a trained model: raw ids, titles, lookup by id and search by title.

    Args:
      trained: the :class:`~jaxrec.experiment.trained.TrainedModel`.

    Attributes:
      ids: the raw item id of each code (JSON-ready: ints where the data's ids are integers).
      titles: the title of each code, or None.
      implicit: the model is a top-N model of implicit feedback.
      rating_range: ``(low, high)`` of an explicit model's scale, or None.
      positive_threshold: an implicit model's threshold on ratings, or None.
      weighted: an implicit model trained on weighted interactions (counts, plays): a request may send weights.
      user_features: the names of the user side features the model reads (a request may send them), or empty.
    """

    def __init__(self, trained):
        raw = np.asarray(trained.item_ids)
        self.integer_ids = raw.dtype.kind in "iu"
        self.ids = [int(x) for x in raw] if self.integer_ids else [str(x) for x in raw]
        self._code = {x: code for code, x in enumerate(self.ids)}  # the ids are their own keys
        titles = trained.titles
        self.titles = None if titles is None else [str(t) for t in titles]
        self._folded = None if titles is None else np.char.lower(np.asarray(self.titles, dtype=str))
        self.implicit = trained.config.data.feedback == "implicit"
        spec_range = trained.featurizer.spec.rating_range
        self.rating_range = None if spec_range is None else (float(spec_range[0]), float(spec_range[1]))
        self.positive_threshold = trained.config.data.positive_threshold
        # a threshold reads a request's values as ratings: its weights are those of the training log's rated rows
        self.weighted = self.implicit and self.positive_threshold is None and bool(getattr(trained, "weighted", False))
        # a model of unweighted interactions without a threshold reads an item, not a value sent with it
        self.values_ignored = self.implicit and self.positive_threshold is None and not self.weighted
        # a log whose ratings were each an interaction: a new user's rating is no weight either
        self.ratings_ignored = self.values_ignored or (
            self.weighted and bool(getattr(trained, "ratings_as_interactions", False))
        )
        self._featurizer = trained.featurizer
        self.user_features = trained.featurizer.user_features_read

    def __len__(self) -> int:
        return len(self.ids)

    def _key(self, raw: Any) -> int | str | None:
        """The lookup key of a raw id: integer ids match as the command line's files match them (``7``, ``"7"``,
        ``" 7 "``, ``7.0``: :func:`~jaxrec.data.dataset.integer_ids`); string ids match exactly."""
        if self.integer_ids:
            if type(raw) is int:  # the common cases without pandas: a file of thousands of users asks per row
                return raw
            if type(raw) is float:
                return int(raw) if raw.is_integer() and abs(raw) < 2**53 else None
            if isinstance(raw, str):
                text = raw.strip()
                digits = text[1:] if text[:1] in "+-" else text
                if digits.isascii() and digits.isdigit() and len(digits) <= 18:
                    return int(text)
                if not any("0" <= ch <= "9" for ch in text):  # no number at all ("abc"): no parse to try
                    return None
            ints, ok = integer_ids([raw])
            return int(ints[0]) if ok[0] else None
        return str(raw)

    def code(self, raw: Any) -> int | None:
        """The item code of a raw id, or None when the catalogue does not have it. A text id is matched without its
        spaces first, then as written, as ``jaxrec recommend`` matches a file's ids (the log's ids were stripped)."""
        if isinstance(raw, str) and not self.integer_ids and raw != raw.strip():
            found = self._code.get(raw.strip())
            if found is not None:
                return found
        key = self._key(raw)
        return None if key is None else self._code.get(key)

    def item(self, code: int, score: float | None = None) -> dict[str, Any]:
        """The JSON record of an item (id, title where known, score where given)."""
        out: dict[str, Any] = {"item": self.ids[code]}
        if self.titles is not None:
            out["title"] = self.titles[code]
        if score is not None:
            out["score"] = None if not math.isfinite(score) else round(float(score), 6)
        return out

    def search(self, query: str, limit: int) -> list[int]:
        """The codes of the items whose title (or id) contains ``query``, case-insensitive; titles starting with it
        first, then in catalogue order."""
        text = query.strip().lower()
        if not text:
            return list(range(min(limit, len(self.ids))))
        haystack = self._folded if self._folded is not None else np.char.lower(np.asarray(self.ids, dtype=str))
        where = np.char.find(haystack, text)
        found = np.flatnonzero(where >= 0)
        order = np.argsort(where[found] > 0, kind="stable")  # prefix matches first
        return [int(c) for c in found[order][:limit]]

    def support(
        self,
        ratings: Sequence[tuple[Any, float]] | None,
        interactions: Sequence[Any] | None,
        max_items: int,
        weights: Sequence[float] | None = None,
    ) -> UserSupport:
        """Check a request's ratings or interactions and keep the usable ones.

        Args:
          ratings: ``(raw id, rating)`` pairs, or None.
          interactions: raw item ids (implicit models), or None.
          max_items: the most items a request may send (the largest support bucket).
          weights: the weight of each interaction (models trained on weighted logs), or None (1 each). A weighted
            model reads a rating's value as a weight too.

        Returns:
          The :class:`UserSupport`: known items, each once (a rating model keeps the last rating and its place; an
          implicit one the first occurrence's place, a weighted model's weights summed, as the training log's
          duplicates were merged).

        Raises:
          RequestError: if both or neither field is given, interactions are sent to an explicit model, there are too
            many items, a rating is outside the model's scale, or weights are sent without interactions, to a model
            trained without them, or in another number than the interactions.
        """
        if (ratings is None) == (interactions is None):
            raise RequestError("send either 'ratings' ([{item, rating}, ...]) or 'interactions' ([item, ...])")
        if weights is not None:
            if interactions is None:
                raise RequestError("'weights' go with 'interactions' (one weight per item), not with 'ratings'")
            if not self.weighted:
                raise RequestError("this model was trained on interactions without weights: send 'interactions' alone")
            if len(weights) != len(interactions):
                raise RequestError(
                    f"'weights' has {len(weights)} values for {len(interactions)} interactions: send one per item"
                )
        sent_ratings = None
        if interactions is None and self.ratings_ignored and not self.values_ignored:
            # the log's ratings were each an interaction, whatever the rating: so are these (repeats still add up)
            sent_ratings, interactions = ratings, [raw for raw, _ in ratings]
        if interactions is not None:
            if not self.implicit:
                raise RequestError(
                    "this model predicts explicit ratings: send 'ratings' ([{item, rating}, ...]), not 'interactions'"
                )
            ratings = (
                [(raw, 1.0) for raw in interactions]
                if weights is None
                else list(zip(interactions, weights, strict=True))
            )
        sent = len(ratings)
        if sent > max_items:
            raise RequestError(f"at most {max_items} items per request, got {sent}")
        # a weighted model reads a value as an interaction's weight (as `jaxrec recommend` reads a file's second
        # column; an interaction sent without one weighs 1); any other implicit model counts an item once
        field = "ratings" if interactions is None else "weights"
        bad = self.unusable([value for _, value in ratings])
        if bad is not None:
            i, why = bad
            raw, value = ratings[i]
            if why == "float32":  # pydantic refused inf and nan; the model computes in float32
                raise RequestError(f"{field}[{i}] (item {raw!r}): {value} is beyond float32, the model's precision")
            if why == "scale":
                low, high = self.rating_range
                raise RequestError(
                    f"ratings[{i}] (item {raw!r}): rating {value} is outside the scale [{low:g}, {high:g}]"
                )
            raise RequestError(
                f"ratings[{i}] (item {raw!r}): {value} is not a positive weight (this model was trained on "
                "weighted interactions: a value is an interaction's weight)"
            )
        known: list[tuple[int, float]] = []
        unknown, below, seen = [], 0, []
        # an interaction is a positive; a rating is one when it reaches the run's positive threshold
        threshold = self.positive_threshold if self.implicit and interactions is None else None
        for raw, value in ratings:
            code = self.code(raw)
            if code is None:
                unknown.append(raw)
            elif threshold is not None and value < threshold:
                below += 1
                seen.append(code)
            else:
                known.append((code, float(value)))
        codes, values, duplicates = merge_duplicates(
            [c for c, _ in known], [v for _, v in known], implicit=self.implicit, weighted=self.weighted
        )
        if not all(_float32_finite(v) for v in values):  # a weighted model's duplicates are summed
            raise RequestError(f"the {field} of an item sent more than once sum beyond float32, the model's precision")
        seen = np.setdiff1d(np.asarray(seen, np.int64), codes)
        ignored = interactions is None and self.values_ignored and any(value != 1 for _, value in known)
        missing = set(unknown)  # the known items' ratings, read as interactions: said where any is not 1
        ignored = ignored or any(v != 1 for r, v in sent_ratings or () if r not in missing)
        as_weights = interactions is None and self.weighted and bool(known)
        return UserSupport(
            codes,
            values.astype(np.float32),
            unknown,
            duplicates,
            below,
            seen,
            ratings_ignored=ignored,
            ratings_as_weights=as_weights,
        )

    def unusable(self, values: Sequence[float]) -> tuple[int, str] | None:
        """The first of a user's values this model cannot take, and why; None when it can take them all.

        :func:`~jaxrec.experiment.recommend.unusable_values` with the model's checks: ``"float32"`` always,
        ``"scale"`` for a rating model, ``"weight"`` for a weighted one."""
        scale = self.rating_range if (self.rating_range and not self.implicit) else None
        return unusable_values(values, scale=scale, weights=self.weighted)

    def excluding(self, support: UserSupport, exclude: Sequence[Any], max_items: int) -> UserSupport:
        """``support`` with the items of ``exclude`` (raw ids) left out of its list too, as its seen items are.

        Args:
          support: the checked support (:meth:`support`).
          exclude: raw ids of items not to recommend; unknown ones are counted, and an id the user sent is in the
            support already.
          max_items: the most items a list may leave out besides the support (the largest support bucket).

        Raises:
          RequestError: if the excluded and seen items are more than ``max_items``.
        """
        codes = [self.code(raw) for raw in exclude]
        known = np.unique(np.asarray([c for c in codes if c is not None], np.int64))
        seen = np.setdiff1d(np.union1d(support.seen, known), support.codes)
        if len(seen) > max_items:
            below = " (with those rated below the threshold)" if self.positive_threshold is not None else ""
            raise RequestError(
                f"exclude: at most {max_items} items besides the user's own{below}, got {len(seen)} (a catalogue-wide "
                "list goes to jaxrec serve --exclude)"
            )
        unknown = sum(c is None for c in codes)
        excluded = len(np.setdiff1d(known, support.codes))  # the user's own items are out of the list already
        return dataclasses.replace(support, seen=seen, excluded=excluded, unknown_excluded=unknown)

    def feature_slots(
        self, features: dict[str, Any] | None, *, ignore_others: bool = False
    ) -> tuple[dict[str, int] | None, list[str]]:
        """A new user's side features as the model's slots, and the features whose values no training user had
        (read as unknown); ``(None, [])`` without features. ``ignore_others``: leave out columns the model does not
        read (a side table's), rather than refuse them.

        Raises:
          RequestError: if a feature is not one the model reads (naming those it reads), or unreadable.
        """
        if not features:
            return None, []
        try:
            return self._featurizer.encode_user_features(features, ignore_others=ignore_others)
        except DataError as e:
            raise RequestError(f"features: {e}") from None

    def features_not_given(self, features: dict[str, Any] | None) -> list[str]:
        """The model's user features a request leaves out or sends without a value (read as unknown)."""
        return self._featurizer.user_features_not_given(features)

    def user_input(
        self, support: UserSupport, k: int, probe: Sequence[int] = (), user_slots: dict[str, int] | None = None
    ) -> UserInput:
        """The engine's input for a checked support (and the user's side-feature slots, :meth:`feature_slots`)."""
        probe = np.asarray(probe, np.int64)
        return UserInput(support.codes, support.values, k=k, probe=probe, seen=support.seen, user_slots=user_slots)


def _float32_finite(value: float) -> bool:
    """Whether a number stays finite in float32 (3.5e38 does not)."""
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(value)))
