"""Turn ratings into model rows following the row-key convention of :mod:`jaxrec.core.features`.

The :class:`Featurizer` is fitted on the *meta-train* ratings only:

* ``"user"`` / ``"item"`` vocabularies hold the users / items that appear in the training ratings (slot ``k+1`` for
  the ``k``-th by code); everyone else maps to the out-of-vocabulary slot 0, so a cold user or item still gets a
  valid row.
* side features are *metadata*, known for cold users and items too, so they are always looked up; their value
  vocabularies are built from the training users / items (a value never seen in training maps to slot 0):

  - ``user_gender``, ``user_occupation``: the raw category;
  - ``user_age``: the ml-1m buckets ``<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+`` (ml-100k's exact ages are
    bucketed the same way, so the two datasets share one encoding);
  - ``user_zip``: the **first character** of the zip code (in the US the first digit is one of ten national
    regions; a finer prefix would be mostly singletons on ml-100k's 943 users);
  - ``item_year``: release decade (``"1990s"``);
  - ``item_genres``: multi-hot float32 ``[rows, G]`` over the training genres;
  - any other column of a log's own side tables (``from_dataframe(user_features=..., item_features=...)``, or
    ``--user-features`` / ``--item-features``): ``user_<column>`` / ``item_<column>`` (a name with characters
    outside ``[A-Za-z0-9_]`` keeps its ASCII ones and gains a digest of itself). An item column of ``"|"``-joined
    values (tags) is multi-hot, as genres are; a column of decimal numbers (floats: a price, a rating) of more than
    :data:`EXACT_NUMBERS` distinct values is cut into :data:`NUMERIC_BINS` quantile bins (a column of pandas'
    nullable ``Float64`` too, whole numbers included: a quantity by its type, as a RecBole ``float`` is read); any
    other column (integers included: a zip, a category id are codes) is categorical, one slot per value, unless
    every value differs (an id, free text: a warning, not a feature). An item's ``title`` is its display name, not
    a feature; columns named as MovieLens's (above) are read by its encoders (a warning where none of their values
    reads so).

Everything is a per-code table, so :meth:`Featurizer.rows` is one ``np.take`` per key, for arrays of codes of any
shape (``[rows]`` or ``[tasks, rows]``). Code ``-1`` selects an all-zero padding row.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from jaxrec.core.features import FeatureSpec
from jaxrec.data.dataset import DataError, Dataset, typed_ids

__all__ = ["Featurizer", "age_bucket", "zip_prefix", "year_bucket"]

logger = logging.getLogger(__name__)

_FORMAT = "jaxrec.Featurizer/1"
#: side-table columns with encoders of their own (MovieLens's), and the item's display title (not a feature)
_USER_KNOWN = ("raw_id", "gender", "age", "occupation", "zip")
_ITEM_KNOWN = ("raw_id", "title", "year", "genres")
#: the user feature keys MovieLens's encoders give (:func:`_user_fields`)
_MOVIELENS_USER_KEYS = ("user_gender", "user_age", "user_occupation", "user_zip")
#: a numeric side column with more distinct values than this is cut into quantile bins
EXACT_NUMBERS = 32
#: the most tags a multi-hot item column keeps (the commonest on training items): a column of words (a RecBole
#: ``token_seq`` of an address) would otherwise make a table of items x every word
MAX_TAGS = 1000
#: the quantile bins of such a column
NUMERIC_BINS = 10
AGE_EDGES = (18, 25, 35, 45, 50, 56)
AGE_LABELS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


def age_bucket(age: pd.Series) -> pd.Series:
    """Bucket ages into the ml-1m age groups ``<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+``.

    ml-1m already stores the bucket's lower bound, which falls in the same bucket, so ml-1m and ml-100k (exact
    ages) share one encoding.

    Args:
      age: ages (anything :func:`pandas.to_numeric` reads; unreadable values count as missing).

    Returns:
      The bucket label of each age (same index), None where the age is missing.
    """
    age = pd.to_numeric(age, errors="coerce")
    idx = np.searchsorted(np.asarray(AGE_EDGES), age.to_numpy(dtype=np.float64, na_value=np.nan), side="right")
    labels = np.asarray(AGE_LABELS, dtype=object)[np.clip(idx, 0, len(AGE_LABELS) - 1)]
    return pd.Series(np.where(age.isna().to_numpy(), None, labels), index=age.index, dtype=object)


def zip_prefix(zips: pd.Series) -> pd.Series:
    """Take the first character of each zip code, upper-cased.

    Args:
      zips: zip codes.

    Returns:
      The first character of each zip code (same index), missing where the zip code is empty or missing.
    """
    first = zips.astype("string").str.strip().str[:1].str.upper()
    return first.where(first.str.len() > 0).astype(object)


def year_bucket(years: pd.Series) -> pd.Series:
    """Bucket release years into decades.

    Args:
      years: release years (anything :func:`pandas.to_numeric` reads).

    Returns:
      The decade of each year as ``"1990s"`` (same index), None where the year is unknown.
    """
    y = pd.to_numeric(years, errors="coerce")
    decade = (y // 10 * 10).astype("Int64").astype("string") + "s"
    return decade.astype(object).where(y.notna().to_numpy(), None)


def _user_fields(users: pd.DataFrame) -> dict[str, pd.Series]:
    fields = {}
    if "gender" in users:
        fields["user_gender"] = users["gender"].astype("string").str.upper().astype(object)
    if "age" in users:
        fields["user_age"] = age_bucket(users["age"])
    if "occupation" in users:
        fields["user_occupation"] = users["occupation"].astype("string").str.lower().astype(object)
    if "zip" in users:
        fields["user_zip"] = zip_prefix(users["zip"])
    return fields


def _item_fields(items: pd.DataFrame) -> dict[str, pd.Series]:
    return {"item_year": year_bucket(items["year"])} if "year" in items else {}


def _field_key(role: str, column: Any) -> str:
    """The row key of a side column: ``<role>_<column>``; a name with characters outside ``[A-Za-z0-9_]`` (a space,
    another script) keeps its ASCII ones and gains a digest of the whole name, so that two names never meet."""
    name = str(column)
    ascii_name = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if ascii_name == name:
        return f"{role}_{name}"
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{role}_{ascii_name.strip('_') or 'feature'}_{digest}"


def _whole_numbers(known: np.ndarray) -> bool:
    """Whether a float column's known values are all whole numbers a float holds exactly (codes, not quantities)."""
    return bool(len(known) and np.all(known == np.round(known)) and np.all(np.abs(known) < 2**53))


def _bin_edges(values: pd.Series) -> np.ndarray | None:
    """The inner edges of a side column's quantile bins (:func:`_categorical`), or None when it is not binned."""
    if not pd.api.types.is_float_dtype(values):
        return None
    known = pd.to_numeric(values, errors="coerce").astype(np.float64).dropna().to_numpy()
    declared = isinstance(values.dtype, pd.Float64Dtype)  # a quantity by its type (a RecBole ``float``)
    if _whole_numbers(known) and not declared:
        return None  # whole numbers stored as floats (an integer column with a gap): codes
    if len(np.unique(known)) <= EXACT_NUMBERS:
        return None
    return np.unique(np.quantile(known, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))


def _bin_labels(edges: np.ndarray) -> np.ndarray:
    """The label ``[low, high)`` of each bin the inner ``edges`` make (6 significant digits)."""
    bounds = [-np.inf, *np.asarray(edges, np.float64).tolist(), np.inf]
    return np.array([f"[{bounds[b]:.6g}, {bounds[b + 1]:.6g})" for b in range(len(bounds) - 1)], object)


def _categorical(values: pd.Series, edges: np.ndarray | None) -> pd.Series:
    """A side column's category of each row (text; None where missing): the value itself, or for a column of
    decimal numbers (floats: a quantity; integers are codes) of more than :data:`EXACT_NUMBERS` distinct values its
    quantile bin among the table's values (metadata, known for every row, so the bins need no training rows), whose
    inner ``edges`` are :func:`_bin_edges`'s of the column."""
    if pd.api.types.is_float_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce").astype(np.float64)
        known = numbers.dropna().to_numpy()
        if edges is not None:
            bins = np.searchsorted(edges, numbers.to_numpy(), side="right")
            return pd.Series(
                np.where(numbers.isna().to_numpy(), None, _bin_labels(edges)[bins]), index=values.index, dtype=object
            )
        if _whole_numbers(known):
            # whole numbers stored as floats (an integer column with a gap, which pandas makes float): codes
            whole = pd.Series(np.round(numbers.to_numpy()), index=values.index).astype("Int64").astype("string")
            return whole.astype(object).where(numbers.notna().to_numpy(), None)
    text = values.astype("string").str.strip()
    return text.where(text.notna() & (text != ""), None).astype(object)


def _side_fields(table: pd.DataFrame, role: str, known: tuple) -> tuple[dict, dict, dict]:
    """A side table's other columns than ``known`` as ``(categorical, multi_hot, edges)``, fields by row key: item
    columns of ``"|"``-joined text multi-hot, every other one categorical (:func:`_categorical`); ``edges``: the
    exact inner edges of the binned ones' quantile bins (their labels round them).

    Raises:
      DataError: if two columns map to one row key (``"a b"`` and ``"a_b"``).
    """
    categorical, multi_hot, edges, source = {}, {}, {}, {}
    for column in table.columns:
        if column in known:
            continue
        key = _field_key(role, column)
        if key in source:  # the same name twice
            raise DataError(f"{role} side columns {source[key]!r} and {column!r} both become the feature {key!r}")
        source[key] = column
        values = table[column]
        joined = values.dropna().astype(str)
        if role == "item" and not pd.api.types.is_numeric_dtype(values) and joined.str.contains("|", regex=False).any():
            multi_hot[key] = values
            continue
        cut = _bin_edges(values)
        field = _categorical(values, cut)
        given = field.dropna()
        if given.empty:  # a vocabulary of the unknown slot alone: nothing to learn, and a table no row can index
            logger.warning("%s side column %r has no values: not used as a feature", role, column)
            continue
        if len(given) > EXACT_NUMBERS and given.nunique() == len(given):
            # an identifier or free text: no two rows share a value, so it tells nothing about a row it has not seen
            # a display name under another header ("Book-Title", "name"): say where a name goes
            named = (
                role == "item"
                and "title" not in table.columns
                and any(w in str(column).lower() for w in ("title", "name"))
            )
            logger.warning(
                "%s side column %r: every value differs (an id or free text), not used as a feature%s",
                role,
                column,
                "; a column named 'title' is shown as each item's name" if named else "",
            )
            continue
        categorical[key] = field
        if cut is not None:
            edges[key] = cut
    return categorical, multi_hot, edges


#: the label of a numeric column's quantile bin (:func:`_categorical`): ``[low, high)``
_BIN = re.compile(r"^\[(-?inf|[-+0-9.eE]+), (-?inf|[-+0-9.eE]+)\)$")


def _is_binned(vocab: list) -> bool:
    """Whether a vocabulary is a numeric column's quantile bins (every label ``[low, high)``)."""
    return bool(vocab) and all(isinstance(v, str) and _BIN.match(v) for v in vocab)


@functools.lru_cache(maxsize=4096)
def _movielens_label(key: str, value: Any) -> Any:
    """The label MovieLens's encoder of ``key`` (:func:`_user_fields`) gives one value (None: it reads none); kept,
    as a service meets the same few values again and again."""
    try:
        column = key.split("_", 1)[1]
        return _user_fields(pd.DataFrame({column: pd.Series([value], dtype=object)}))[key].iloc[0]
    except (OverflowError, ValueError, TypeError):
        return None


def _stripped(value: Any) -> Any:
    """A new user's feature value as a side table's is read: text without the spaces around it (" M " is M)."""
    return value.strip() if isinstance(value, str) else value


def _not_given(value: Any) -> bool:
    """Whether a new user's feature value is missing: None, NaN, pandas' NA or empty text."""
    if isinstance(value, str):
        return value == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or a mapping: given, and read by no encoder
        return False


def _index_in(label: Any, vocab: list) -> int | None:
    """The index of ``label`` in ``vocab``: its text, else the one label of the same number (None: neither)."""
    if _not_given(label):
        return None
    if label in vocab:
        return vocab.index(label)
    try:
        number = float(label)
    except (TypeError, ValueError, OverflowError):
        return None
    same = []
    for i, entry in enumerate(vocab):
        try:
            if float(entry) == number:
                same.append(i)
        except (TypeError, ValueError, OverflowError):
            continue
    return same[0] if len(same) == 1 else None


def _bin_label(value: Any, vocab: list) -> str | None:
    """The label of the bin of ``vocab`` that holds the number ``value`` (None: not a number, or in no bin)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    for label in vocab:
        low, high = (float(x) for x in _BIN.match(label).groups())
        if low <= number < high:
            return label
    return None


def _multi_hot(values: pd.Series, train_codes: np.ndarray, key: str = "") -> tuple[np.ndarray, list]:
    """``(float32 [rows, G], vocabulary)`` of a ``"|"``-joined column over the tags seen on ``train_codes``.

    Built from the tags of each row, never a dense table of every tag (a column of words has tens of thousands);
    at most :data:`MAX_TAGS` tags are kept, those on the most training rows (ties by name), the rest counted in a
    warning.
    """
    joined = values.fillna("").astype(str).str.replace(r"\s*\|\s*", "|", regex=True).str.strip()  # "rock | pop"
    tags = joined.str.split("|")
    rows = np.repeat(np.arange(len(tags)), tags.str.len().to_numpy())
    flat = pd.Series(np.concatenate(tags.to_numpy()) if len(tags) else np.array([], str), dtype=object)
    pairs = pd.DataFrame({"row": rows, "tag": flat}).drop_duplicates()
    pairs = pairs[pairs["tag"] != ""]  # a row of no value
    trained = np.zeros(len(tags), bool)
    trained[train_codes] = True
    counts = pairs[trained[pairs["row"].to_numpy()]]["tag"].value_counts()
    vocab = sorted(counts.index.tolist())
    if len(vocab) > MAX_TAGS:
        kept = counts.rename_axis("tag").reset_index(name="n").sort_values(["n", "tag"], ascending=[False, True])
        vocab = sorted(kept["tag"].iloc[:MAX_TAGS].tolist())
        logger.warning(
            "item side column %r has %d distinct tags on training items: the %d on the most items are features, %d "
            "rarer ones are not",
            key.removeprefix("item_"),
            len(counts),
            MAX_TAGS,
            len(counts) - MAX_TAGS,
        )
    slot = pd.Index(vocab, dtype=object).get_indexer(pairs["tag"].to_numpy())
    table = np.zeros((len(tags), len(vocab)), np.float32)
    table[pairs["row"].to_numpy()[slot >= 0], slot[slot >= 0]] = 1.0
    return table, vocab


def _tags(value: Any) -> list[str]:
    """The tags of a multi-hot value: ``"|"``-joined text, or a list (a Parquet list column), without blanks."""
    parts = value if isinstance(value, list | tuple | np.ndarray) else str(value).split("|")
    return [t for t in (str(p).strip() for p in parts) if t]


def _with_padding(table: np.ndarray) -> np.ndarray:
    """Append one all-zero row, selected by code -1 (numpy's negative indexing) for padded rows."""
    pad = np.zeros((1, *table.shape[1:]), table.dtype)
    return np.concatenate([table, pad])


def _slots(values: pd.Series, train_codes: np.ndarray) -> tuple[np.ndarray, list]:
    """Slot of each code's value in the vocabulary of values seen on ``train_codes`` (sorted; 0 = unknown)."""
    seen = pd.Series(values.to_numpy()[train_codes]).dropna()
    vocab = sorted(seen.unique().tolist(), key=str)
    slots = pd.Index(vocab, dtype=object).get_indexer(values.to_numpy()).astype(np.int32) + 1  # -1 (unknown) -> 0
    return slots, vocab


@dataclasses.dataclass
class Featurizer:
    """Per-code lookup tables that turn ``(user code, item code)`` pairs into rows. Build with :meth:`fit`.

    Every table has one entry per dataset code plus a last, all-zero padding entry selected by code -1.

    Attributes:
      spec: the :class:`~jaxrec.core.features.FeatureSpec` of the rows.
      user_index: int32 ``[n_users + 1]``: dataset user code -> ``"user"`` slot; the last entry is padding.
      item_index: int32 ``[n_items + 1]``: dataset item code -> ``"item"`` slot.
      user_tables: ``"user_<field>"`` -> int32 ``[n_users + 1]`` slots.
      item_tables: ``"item_<field>"`` -> int32 ``[n_items + 1]`` slots.
      item_multi_hot: multi-hot item fields, e.g. ``"item_genres"`` -> float32 ``[n_items + 1, G]``.
      vocabularies: key -> the label of slot 1, 2, ... (slot 0 is OOV / unknown).
      implicit_threshold: when set, the target is ``"label" = rating >= implicit_threshold``.
      dataset_name: the name of the dataset it was fitted on.
      user_raw_ids: the raw id of each user code when they are ints or strings (JSON-able), else None.
      item_raw_ids: the raw id of each item code when they are ints or strings, else None.
      user_feature_names: the side-table column of each user feature key (``"user_age"`` -> ``"age"``).
      item_feature_names: the side-table column of each item feature key of a table (``--item-features``).
      bin_edges: the exact inner edges of each binned numeric feature's bins, by key (their labels round them to 6
        digits), so that a new user's or item's value falls in the bin a training one's did.
    """

    spec: FeatureSpec
    user_index: np.ndarray  # int32 [n_users + 1]: dataset user code -> "user" slot; last entry = padding
    item_index: np.ndarray  # int32 [n_items + 1]
    user_tables: dict[str, np.ndarray]  # "user_<field>" -> int32 [n_users + 1]
    item_tables: dict[str, np.ndarray]  # "item_<field>" -> int32 [n_items + 1]
    item_multi_hot: dict[str, np.ndarray]  # e.g. "item_genres" -> float32 [n_items + 1, G]
    vocabularies: dict[str, list]  # key -> label of slot 1, 2, ... (slot 0 is OOV/unknown)
    implicit_threshold: float | None = None
    dataset_name: str = ""
    user_raw_ids: list | None = None
    item_raw_ids: list | None = None
    user_feature_names: dict[str, str] = dataclasses.field(default_factory=dict)
    item_feature_names: dict[str, str] = dataclasses.field(default_factory=dict)
    bin_edges: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def n_users(self) -> int:
        """Number of users of the fitted dataset (codes ``0 .. n_users - 1``)."""
        return len(self.user_index) - 1

    @property
    def n_items(self) -> int:
        """Number of items of the fitted dataset (codes ``0 .. n_items - 1``)."""
        return len(self.item_index) - 1

    @classmethod
    def fit(
        cls,
        dataset: Dataset,
        train_ratings: pd.DataFrame | None = None,
        *,
        implicit_threshold: float | None = None,
        rating_range: tuple[float, float] | None = None,
    ) -> Featurizer:
        """Build the vocabularies and lookup tables from the training ratings.

        Args:
          dataset: the dataset whose codes the featurizer maps (side features are read from its tables).
          train_ratings: the ratings the vocabularies are built from (default: all of ``dataset.ratings``).
          implicit_threshold: when set, the target is ``"label" = rating >= threshold`` (float 0/1) instead of
            ``"rating"``, and ``spec.rating_range`` is None.
          rating_range: ``(low, high)`` of the rating scale (default: the training ratings' least and greatest).

        Returns:
          The fitted :class:`Featurizer`.

        Raises:
          DataError: if ``train_ratings`` is empty or holds codes outside ``dataset``, or a rating of ``dataset`` is
            outside ``rating_range``.
        """
        train = dataset.ratings if train_ratings is None else train_ratings
        if rating_range is not None and implicit_threshold is None:
            _check_scale(dataset, rating_range)
        if len(train) == 0:
            raise DataError(f"{dataset.name}: cannot fit a Featurizer on an empty training set")
        train_u, train_i = train["user"].to_numpy(), train["item"].to_numpy()
        if (
            train_u.max() >= dataset.n_users
            or train_i.max() >= dataset.n_items
            or min(train_u.min(), train_i.min()) < 0
        ):
            raise DataError(f"{dataset.name}: train_ratings hold codes outside the dataset; pass the same dataset")
        train_users = np.flatnonzero(np.bincount(train_u, minlength=dataset.n_users))  # = np.unique, without a sort
        train_items = np.flatnonzero(np.bincount(train_i, minlength=dataset.n_items))

        user_index = np.zeros(dataset.n_users, np.int32)
        user_index[train_users] = np.arange(1, len(train_users) + 1, dtype=np.int32)
        item_index = np.zeros(dataset.n_items, np.int32)
        item_index[train_items] = np.arange(1, len(train_items) + 1, dtype=np.int32)
        categorical = {"user": len(train_users) + 1, "item": len(train_items) + 1}
        vocabularies: dict[str, list] = {}

        user_known, item_known = _user_fields(dataset.users), _item_fields(dataset.items)
        user_other, _, user_edges = _side_fields(dataset.users, "user", _USER_KNOWN)  # a user column: never multi-hot
        item_other, item_joined, item_edges = _side_fields(dataset.items, "item", _ITEM_KNOWN)
        for table, fields in ((dataset.users, user_known), (dataset.items, item_known)):
            for key, values in fields.items():  # a column named as MovieLens's, read by MovieLens's encoder
                column = key.split("_", 1)[1]
                if values.isna().all() and table[column].notna().any():
                    example = table[column].dropna().iloc[0]
                    logger.warning(
                        "side column %r is read as MovieLens's %s, and none of its values (e.g. %r) reads so: not a "
                        "feature (rename the column to encode it as a category)",
                        column,
                        column,
                        example,
                    )  # its table, of the unknown slot alone, stays: a run's featurizer is compared with its record
        user_tables = {}
        for key, values in {**user_known, **user_other}.items():
            user_tables[key], vocabularies[key] = _slots(values, train_users)
            categorical[key] = len(vocabularies[key]) + 1
        item_tables = {}
        for key, values in {**item_known, **item_other}.items():
            item_tables[key], vocabularies[key] = _slots(values, train_items)
            categorical[key] = len(vocabularies[key]) + 1
        item_multi_hot = {}
        joined = {"item_genres": dataset.items["genres"]} if "genres" in dataset.items else {}
        for key, values in {**joined, **item_joined}.items():
            table, vocab = _multi_hot(values, train_items, key)
            if vocab:
                item_multi_hot[key], vocabularies[key] = table, vocab

        ratings = train["rating"].to_numpy()
        if implicit_threshold is not None:
            rating_range = None  # 0/1 labels: no rating scale
        elif rating_range is None:
            rating_range = (ratings.min(), ratings.max())
            _warn_beyond_learned_scale(dataset, rating_range)
        spec = FeatureSpec(
            categorical=categorical,
            multi_hot={k: v.shape[1] for k, v in item_multi_hot.items()},
            target="label" if implicit_threshold is not None else "rating",
            rating_range=None if rating_range is None else (float(rating_range[0]), float(rating_range[1])),
        )
        return cls(
            spec=spec,
            user_index=_with_padding(user_index),
            item_index=_with_padding(item_index),
            user_tables={k: _with_padding(v) for k, v in user_tables.items()},
            item_tables={k: _with_padding(v) for k, v in item_tables.items()},
            item_multi_hot={k: _with_padding(v) for k, v in item_multi_hot.items()},
            vocabularies=vocabularies,
            implicit_threshold=implicit_threshold,
            dataset_name=dataset.name,
            user_raw_ids=_jsonable(dataset.user_ids),
            user_feature_names={
                key: str(column)
                for column in dataset.users.columns
                for key in (f"user_{column}" if column in _USER_KNOWN else _field_key("user", column),)
                if key in user_tables
            },
            item_raw_ids=_jsonable(dataset.item_ids),
            item_feature_names={
                key: str(column)
                for column in dataset.items.columns
                for key in (_field_key("item", column),)
                if column not in _ITEM_KNOWN and (key in item_tables or key in item_multi_hot)
            },
            bin_edges={
                key: np.asarray(cut, np.float64).tolist()
                for key, cut in {**user_edges, **item_edges}.items()
                if key in user_tables or key in item_tables
            },
        )

    # -- rows ------------------------------------------------------------------------------------------------------

    def user_rows(self, users: np.ndarray) -> dict[str, np.ndarray]:
        """Look up the user-side row keys.

        Args:
          users: user codes of any shape (-1 = padding).

        Returns:
          ``"user"`` and ``"user_<field>"`` arrays of the shape of ``users``.
        """
        out = {"user": np.take(self.user_index, users)}
        out.update({k: np.take(t, users) for k, t in self.user_tables.items()})
        return out

    def item_rows(self, items: np.ndarray, prefix: str = "") -> dict[str, np.ndarray]:
        """Look up the item-side row keys.

        Args:
          items: item codes of any shape (-1 = padding).
          prefix: prepended to every key, e.g. ``"neg_"``.

        Returns:
          ``"item"``, ``"item_<field>"`` and multi-hot keys (each with ``prefix``); multi-hot arrays have a
          trailing width axis.
        """
        out = {prefix + "item": np.take(self.item_index, items)}
        out.update({prefix + k: np.take(t, items) for k, t in self.item_tables.items()})
        out.update({prefix + k: np.take(t, items, axis=0) for k, t in self.item_multi_hot.items()})
        return out

    @property
    def user_feature_keys(self) -> list[str]:
        """The row keys of the users' side features (``user_<field>``), in the tables' order."""
        return list(self.user_tables)

    @property
    def user_features_read(self) -> list[str]:
        """The columns of the user features a new user's values are read from (sorted): every feature but those with
        no value in their vocabulary (a column named as MovieLens's none of whose values its encoder read: every
        user, and every value sent, is its unknown slot)."""
        return sorted(self.user_feature_name(key) for key in self.user_tables if self.vocabularies.get(key))

    @property
    def features_read(self) -> dict[str, dict[str, str]]:
        """What the model reads of the side tables, by role and column: ``"categorical (N values)"``, ``"binned (N
        bins)"`` or ``"multi-hot (N tags)"`` (``N`` from the training rows' vocabulary); a column of a table that is
        not here is no feature (a display title, every value distinct, no value at all)."""

        def counted(n: int, what: str) -> str:
            return f"{n} {what}{'s' * (n != 1)}"

        def kind(key: str) -> str:
            size = len(self.vocabularies.get(key, []))
            return (
                f"binned ({counted(size, 'bin')})"
                if self._is_binned_key(key)
                else f"categorical ({counted(size, 'value')})"
            )

        return {
            "user": {self.user_feature_name(k): kind(k) for k in self.user_tables if self.vocabularies.get(k)},
            "item": {
                **{self._item_feature_name(k): kind(k) for k in self.item_tables if self.vocabularies.get(k)},
                **{
                    self._item_feature_name(k): f"multi-hot ({counted(table.shape[1], 'tag')})"
                    for k, table in self.item_multi_hot.items()
                },
            },
        }

    def user_feature_name(self, key: str) -> str:
        """The side-table column of a user feature key (the key's own suffix for a featurizer saved without them)."""
        return self.user_feature_names.get(key, key.split("_", 1)[1])

    def encode_user_features(
        self, features: Mapping[str, Any], *, ignore_others: bool = False
    ) -> tuple[dict[str, int], list[str]]:
        """A new user's side features (raw values by column name, as the training side table gave them) as slots.

        Each value is encoded as the training users' were and looked up in the field's vocabulary: MovieLens's
        ``age`` bucketed, ``zip`` cut to its first character (sent as text: a number has lost its leading zeros),
        ``gender`` upper-cased; a binned numeric column's value by the bin its exact edges give, as a training
        value's (a record written before the edges were kept: by the labels' 6 digits); any other value by its text,
        or as a number equal to one label (``2`` is the category ``"2.0"`` of a decimal column). A value no training
        user had (or that no encoder reads), or a field not given, is the unknown slot 0, as it is for such a user
        in the evaluation.

        Args:
          features: ``{column: value}`` (``{"age": 25, "gender": "F"}``); None, NaN or empty text count as not
            given; text is read without the spaces around it.
          ignore_others: leave out columns that are not the model's features (a whole side table), rather than
            refuse them.

        Returns:
          ``(slots, unknown)``: the slot of every user field (``{"user_age": 3, ...}``: every key of
          :attr:`user_feature_keys`) and the columns whose values are not in their vocabulary.

        Raises:
          DataError: if a column is not one of the model's user features (the message lists them), or a zip code
            is a number.
        """
        by_name = {self.user_feature_name(key): key for key in self.user_tables}
        keys = {name: by_name.get(str(name), _field_key("user", name)) for name in features}
        extra = [name for name, key in keys.items() if key not in self.user_tables]
        if extra and not ignore_others:
            known = ", ".join(self.user_features_read) or "none"
            shown = f"{extra[:10]}" + (f" and {len(extra) - 10} more" if len(extra) > 10 else "")
            raise DataError(
                f"user features {shown} are not the model's: it reads {known} (a run's user features are the columns "
                "of its --user-features table, or MovieLens's demographics)"
            )
        slots, unknown = {key: 0 for key in self.user_tables}, []
        for name, key in keys.items():
            value = _stripped(features[name])
            if key not in self.user_tables or _not_given(value) or not self.vocabularies.get(key):
                continue  # not a feature, not given, or a feature no value reads (unknown for everyone)
            index = _index_in(self._user_label(key, name, value), self.vocabularies.get(key, []))
            if index is None:
                unknown.append(str(name))
            else:
                slots[key] = index + 1
        return slots, unknown

    def user_features_not_given(self, features: Mapping[str, Any] | None) -> list[str]:
        """The model's user features (column names, sorted) that ``features`` leaves out or gives no value (None,
        NaN, empty text): each is read as unknown by :meth:`encode_user_features`."""
        given = {str(name) for name, value in (features or {}).items() if not _not_given(_stripped(value))}
        return [name for name in self.user_features_read if name not in given]

    def _user_label(self, key: str, name: str, value: Any) -> Any:
        """The label a training user with ``value`` in the column of ``key`` got (None: no encoder reads it)."""
        if key in _MOVIELENS_USER_KEYS:
            if key == "user_zip" and isinstance(value, int | float | np.number) and not isinstance(value, bool):
                raise DataError(f"user feature {name!r}: send a zip code as text ('02138'): a number loses zeros")
            try:
                return _movielens_label(key, value)
            except TypeError:  # unhashable (a list): no encoder reads it
                return None
        if self._is_binned_key(key):
            return self._binned_label(key, value)
        return str(value).strip()

    def item_features(self) -> tuple[np.ndarray, list[str]]:
        """Every item's side features as one 0/1 matrix: a one-hot column per known value of each categorical item
        field (unknown values: no column) and the multi-hot columns; the item id is not a feature.

        Returns:
          ``(features float32 [n_items, D], names)``, ``names[d]`` = ``"<field>=<value>"`` (``D = 0`` without side
          features).
        """
        columns, names = [], []
        for key, table in sorted(self.item_tables.items()):
            slots = table[: self.n_items]
            values = self.vocabularies.get(key, [])
            one_hot = slots[:, None] == np.arange(1, len(values) + 1)[None, :]
            columns.append(one_hot.astype(np.float32))
            names += [f"{key}={v}" for v in values]
        for key, table in sorted(self.item_multi_hot.items()):
            columns.append(np.asarray(table[: self.n_items], np.float32))
            names += [f"{key}={v}" for v in self.vocabularies.get(key, range(table.shape[1]))]
        if not columns:
            return np.zeros((self.n_items, 0), np.float32), []
        return np.concatenate(columns, axis=1), names

    def with_items(self, table: pd.DataFrame, where: str = "the new items") -> tuple[Featurizer, dict[str, Any]]:
        """This featurizer with items added after training, each from its side features alone.

        A new item gets the unknown id slot (as an item held out of training has) and its features' slots in the
        training vocabularies, each value encoded as a training item's was (a decimal by the bin its exact edges
        give, a ``"|"``-joined column or a list by its known tags, MovieLens's ``year`` by its decade; a value no
        training item had is the unknown slot, and counted). A model that reads item features then scores it from
        them; the codes of the trained items do not move (the new ones follow them).

        Args:
          table: the new items' features, indexed by raw id (:func:`~jaxrec.data.read_side_table`'s form); its
            columns named as the training table's (a ``title`` column is a display title, not a feature).
          where: the table's name, for messages.

        Returns:
          ``(featurizer, report)``: the report gives the table's ``rows`` added (positions, in their new codes'
          order), counts ``added``, ``already_in_catalogue`` (ids the catalogue has:
          left as trained), ``unknown_values`` (column -> added items with a value, or a tag, no training item had),
          ``missing_values`` (column -> added items with no value), ``without_features`` (added items with no
          feature value at all), and names ``features_not_given`` (the model's feature columns the table lacks)
          and ``columns_not_read``.

        Raises:
          DataError: naming ``where`` if the model reads no item features (every new item would score alike), the
            catalogue's raw ids were not kept, the table has no row, an id is missing, not of the catalogue's kind
            (text for integer ids) or given twice, or no id is new.
        """
        if not self.item_tables and not self.item_multi_hot:
            raise DataError(
                f"{where}: the model was trained without item features, so a new item (no interactions) would score "
                "as every other new item; train with --item-features to recommend items added later"
            )
        if self.item_raw_ids is None:
            raise DataError(f"{where}: this catalogue's raw item ids were not kept, so no item can be added to it")
        if len(table) == 0:
            raise DataError(f"{where}: the table has no items")
        raw = [r.strip() if isinstance(r, str) else r for r in table.index]  # as a file's ids are read
        if any(_not_given(r) for r in raw):
            raise DataError(f"{where}: row {next(i for i, r in enumerate(raw) if _not_given(r)) + 1} has no item id")
        known = np.asarray(self.item_raw_ids)
        typed = typed_ids(np.asarray(raw, dtype=object), known)
        bad = [r for r, key in zip(raw, typed, strict=True) if key is None]
        if bad:
            raise DataError(f"{where}: item {bad[0]!r} is not an integer id, as the catalogue's are ({len(bad)} such)")
        ids = pd.Index(list(typed), dtype=object)
        if ids.has_duplicates:
            raise DataError(f"{where}: item {ids[ids.duplicated()][0]!r} is given twice (as the catalogue reads ids)")
        fresh = ~ids.isin(pd.Index(known.tolist(), dtype=object))
        if not fresh.any():
            raise DataError(f"{where}: every one of its {len(ids)} items is in the catalogue already: none to add")
        new = table.loc[fresh]
        by_key = {("item_year" if c == "year" else _field_key("item", c)): c for c in new.columns if c != "title"}
        features = [*self.item_tables, *self.item_multi_hot]
        report: dict[str, Any] = {
            "added": int(fresh.sum()),
            "rows": np.flatnonzero(fresh).tolist(),
            "already_in_catalogue": int((~fresh).sum()),
            "unknown_values": {},
            "missing_values": {},
            "without_features": 0,
            "features_not_given": sorted(self._item_feature_name(k) for k in features if k not in by_key),
            "columns_not_read": sorted(str(c) for k, c in by_key.items() if k not in features),
        }
        given = np.zeros(len(new), bool)  # an item with any feature value
        item_tables, item_multi_hot = {}, {}
        for key in features:
            multi = key in self.item_multi_hot
            vocab = self.vocabularies.get(key, [])
            width = self.item_multi_hot[key].shape[1] if multi else 0
            encoded = np.zeros((len(new), width), np.float32) if multi else np.zeros(len(new), np.int32)
            if key in by_key:
                column = by_key[key]
                values = [_stripped(v) for v in new[column]]
                missing = np.array([_not_given(v) or (multi and not _tags(v)) for v in values])
                unknown = 0
                for row, value in enumerate(values):
                    if missing[row]:
                        continue
                    if multi:
                        tags = _tags(value)
                        found = [vocab.index(t) for t in tags if t in vocab]
                        encoded[row, found] = 1.0
                        unknown += len(found) < len(tags)
                    else:
                        index = _index_in(self._item_label(key, value), vocab)
                        encoded[row] = 0 if index is None else index + 1
                        unknown += index is None
                given |= ~missing
                for counts, n in ((report["unknown_values"], unknown), (report["missing_values"], int(missing.sum()))):
                    if n:
                        counts[str(column)] = int(n)
            old = (self.item_multi_hot if multi else self.item_tables)[key]
            (item_multi_hot if multi else item_tables)[key] = np.concatenate([old[:-1], encoded, old[-1:]])
        report["without_features"] = int((~given).sum())
        added = self.item_index[:-1], np.zeros(len(new), np.int32), self.item_index[-1:]
        raw_ids = [*self.item_raw_ids, *(int(v) if known.dtype.kind in "iu" else str(v) for v in ids[fresh])]
        grown = dataclasses.replace(
            self,
            item_index=np.concatenate(added),
            item_tables=item_tables,
            item_multi_hot=item_multi_hot,
            item_raw_ids=raw_ids,
        )
        return grown, report

    def _item_feature_name(self, key: str) -> str:
        """The column an item feature key was read from (``"item_genre"`` -> ``"genre"``)."""
        return self.item_feature_names.get(key, key.split("_", 1)[1])

    def _item_label(self, key: str, value: Any) -> Any:
        """The label a training item with ``value`` in the column of ``key`` got."""
        if key == "item_year":
            return year_bucket(pd.Series([value], dtype=object)).iloc[0]
        return self._binned_label(key, value) if self._is_binned_key(key) else value

    def _is_binned_key(self, key: str) -> bool:
        return key in self.bin_edges or _is_binned(self.vocabularies.get(key, []))

    def _binned_label(self, key: str, value: Any) -> str | None:
        """The label of the bin of ``key`` that holds the number ``value``: by the exact edges, as the training
        values were binned (a record written before they were kept: by the rounded labels, :func:`_bin_label`)."""
        if key not in self.bin_edges:
            return _bin_label(value, self.vocabularies.get(key, []))
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if np.isnan(number):
            return None
        edges = np.asarray(self.bin_edges[key], np.float64)
        return str(_bin_labels(edges)[np.searchsorted(edges, number, side="right")])

    def target(self, ratings: np.ndarray) -> dict[str, np.ndarray]:
        """Turn ratings into the target row key.

        Args:
          ratings: raw ratings of any shape.

        Returns:
          ``{"rating": float32}`` or, in implicit mode, ``{"label": float32 0/1}``.
        """
        ratings = np.asarray(ratings, np.float32)
        if self.implicit_threshold is None:
            return {"rating": ratings}
        return {"label": (ratings >= self.implicit_threshold).astype(np.float32)}

    def rows(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Build all row keys for parallel arrays of codes.

        Args:
          users: user codes (-1 = padding).
          items: item codes of the same shape (-1 = padding).
          ratings: optional raw ratings of the same shape, for the target key.

        Returns:
          Every user, item (and target) row key, each of the common shape (multi-hot keys with a width axis).
        """
        out = self.user_rows(users)
        out.update(self.item_rows(items))
        if ratings is not None:
            out.update(self.target(ratings))
        return out

    def transform(self, ratings: pd.DataFrame) -> dict[str, np.ndarray]:
        """Build the rows of a ratings frame.

        Args:
          ratings: a frame with ``user`` and ``item`` code columns and, optionally, ``rating``.

        Returns:
          The row keys, each ``[len(ratings), ...]``; the target only when there is a ``rating`` column.

        Raises:
          DataError: if a ``user`` or ``item`` column is missing, or a code is outside the fitted dataset.
        """
        for col in ("user", "item"):
            if col not in ratings:
                raise DataError(
                    f"Featurizer.transform: missing column {col!r}; the columns are {list(ratings.columns)}"
                )
        users = ratings["user"].to_numpy()
        items = ratings["item"].to_numpy()
        if len(users) and (
            users.max() >= self.n_users or items.max() >= self.n_items or min(users.min(), items.min()) < 0
        ):
            raise DataError("Featurizer.transform: user/item codes outside the fitted dataset")
        rating = ratings["rating"].to_numpy() if "rating" in ratings else None
        return self.rows(users, items, rating)

    # -- save / load -----------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Describe the featurizer as JSON-able data (the inverse of :meth:`from_dict`).

        Returns:
          A dict with the format tag, the spec, the tables as lists (without their padding entries; multi-hot
          tables as lists of active columns per item), the vocabularies and the raw ids.
        """
        return {
            "format": _FORMAT,
            "dataset": self.dataset_name,
            "spec": self.spec.to_dict(),
            "implicit_threshold": self.implicit_threshold,
            "user_index": self.user_index[:-1].tolist(),
            "item_index": self.item_index[:-1].tolist(),
            "user_tables": {k: v[:-1].tolist() for k, v in self.user_tables.items()},
            "item_tables": {k: v[:-1].tolist() for k, v in self.item_tables.items()},
            "item_multi_hot": {
                k: {"width": int(v.shape[1]), "active": [np.flatnonzero(row).tolist() for row in v[:-1]]}
                for k, v in self.item_multi_hot.items()
            },
            "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
            "user_raw_ids": self.user_raw_ids,
            "user_feature_names": dict(self.user_feature_names),
            "item_raw_ids": self.item_raw_ids,
            # written when there are any: a record of MovieLens's, or one written before them, stays the same
            **({"item_feature_names": dict(self.item_feature_names)} if self.item_feature_names else {}),
            **({"bin_edges": {k: list(v) for k, v in self.bin_edges.items()}} if self.bin_edges else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Featurizer:
        """Rebuild a featurizer from :meth:`to_dict`'s description.

        Args:
          d: the description.

        Returns:
          The :class:`Featurizer`, with its padding entries restored.

        Raises:
          DataError: if ``d`` is not a saved featurizer of this format.
        """
        if d.get("format") != _FORMAT:
            raise DataError(f"not a saved Featurizer (format {d.get('format')!r}, expected {_FORMAT!r})")
        multi_hot = {}
        for key, packed in d["item_multi_hot"].items():
            table = np.zeros((len(packed["active"]), packed["width"]), np.float32)
            rows = np.repeat(np.arange(len(packed["active"])), [len(a) for a in packed["active"]])
            cols = np.fromiter((c for a in packed["active"] for c in a), np.int64, count=len(rows))
            table[rows, cols] = 1.0
            multi_hot[key] = _with_padding(table)
        return cls(
            spec=FeatureSpec.from_dict(d["spec"]),
            user_index=_with_padding(np.asarray(d["user_index"], np.int32)),
            item_index=_with_padding(np.asarray(d["item_index"], np.int32)),
            user_tables={k: _with_padding(np.asarray(v, np.int32)) for k, v in d["user_tables"].items()},
            item_tables={k: _with_padding(np.asarray(v, np.int32)) for k, v in d["item_tables"].items()},
            item_multi_hot=multi_hot,
            vocabularies={k: list(v) for k, v in d["vocabularies"].items()},
            implicit_threshold=d.get("implicit_threshold"),
            dataset_name=d.get("dataset", ""),
            user_raw_ids=d.get("user_raw_ids"),
            user_feature_names=dict(d.get("user_feature_names") or {}),
            item_raw_ids=d.get("item_raw_ids"),
            item_feature_names=dict(d.get("item_feature_names") or {}),
            bin_edges={k: list(v) for k, v in (d.get("bin_edges") or {}).items()},
        )


def _jsonable(ids: np.ndarray) -> list | None:
    values = ids.tolist()
    return values if all(isinstance(v, int | str) for v in values[:1000]) else None


def _outside_scale(dataset: Dataset, rating_range: tuple[float, float]) -> str | None:
    """Where the log's first rating outside ``rating_range`` is (the file, the user, the item, the value, and how
    many there are), or None when every rating is on it."""
    low, high = rating_range
    ratings = dataset.ratings["rating"].to_numpy()
    outside = (ratings < low) | (ratings > high)
    if not outside.any():
        return None
    row = dataset.ratings.iloc[int(np.flatnonzero(outside)[0])]
    where = dataset.source if dataset.source not in ("", "bundled") else dataset.name
    # a raw id as the log wrote it: a number plain, text quoted (a NumPy scalar's repr is np.int64(0))
    user, item = (dataset.user_ids[int(row["user"])], dataset.item_ids[int(row["item"])])
    user, item = (v.item() if isinstance(v, np.generic) else v for v in (user, item))
    return (
        f"{where}: the rating {float(row['rating']):g} of user {user!r} on item "
        f"{item!r} is outside the rating scale [{low:g}, {high:g}] "
        f"({int(outside.sum())} rating(s) outside it in total)"
    )


def _check_scale(dataset: Dataset, rating_range: tuple[float, float]) -> None:
    """A :class:`DataError` naming the first rating of the log outside a declared scale (user, item and value)."""
    message = _outside_scale(dataset, rating_range)
    if message is not None:
        raise DataError(message)


def _warn_beyond_learned_scale(dataset: Dataset, rating_range: tuple[float, float]) -> None:
    """Warn that ratings of users outside meta-train lie beyond the scale learned from the meta-train ratings: the
    predictions are clipped to that scale, so such a rating is an error no model can avoid (a typo in the log, or
    a scale to declare)."""
    message = _outside_scale(dataset, rating_range)
    if message is not None:
        logger.warning(
            "%s, the scale of the meta-train ratings, to which every prediction is clipped: declare the scale "
            "(--rating-scale LOW,HIGH) to refuse such ratings, or mend the log",
            message,
        )
