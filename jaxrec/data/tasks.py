"""Users as tasks: cold-start splits, per-user support/query sets, and padded :class:`~jaxrec.TaskBatch` streams.

Pipeline::

    ds = jaxrec.data.load()                                   # ratings with dense codes
    split = cold_start_split(ds, scheme="melu", seed=0)           # leak-free train / scenarios
    feat = jaxrec.data.Featurizer.fit(ds, split.train)        # vocabularies from meta-train only
    tasks = build_tasks(split.train, feat, split="melu", seed=0)  # one task per user, vectorised
    for batch in task_batches(tasks, batch_size=32, seed=0): ...  # infinite, shuffled, prefetched

    # evaluation: K-shot tasks of a scenario, every user once, in fixed-size batches padded with task_id -1
    ev = build_tasks(split.scenarios["new_user"], feat, split="kshot", support=5)
    for batch in task_batches(ev, batch_size=64, shuffle=False, epochs=1): ...

Every per-user operation is a sort by ``(user, random key)`` or ``(user, time)`` followed by group offsets; there is
no Python loop over users or rows (only over the handful of shape buckets).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from jaxrec.core.batch import TaskBatch
from jaxrec.core.features import FeatureSpec
from jaxrec.data.dataset import DataError, Dataset
from jaxrec.data.featurizer import Featurizer
from jaxrec.data.stream import StepBatches, stream

__all__ = [
    "ColdStartSplit",
    "TaskSet",
    "SPLITS",
    "TASK_SIDES",
    "build_tasks",
    "cold_start_split",
    "task_batches",
    "bucket_sizes",
]

logger = logging.getLogger(__name__)

SPLITS = ("random", "time", "melu", "kshot")
SCENARIOS = ("warm", "new_user", "new_item", "new_user_new_item", "cross_domain")
SCHEMES = ("melu", "time", "cross-domain")
TASK_SIDES = ("user", "item")


# ----------------------------------------------------------------------------------------------------------------
# vectorised group helpers


def _order_within_users(users: np.ndarray, rng: np.random.Generator, times: np.ndarray | None = None) -> np.ndarray:
    """Row order sorting by user, then by ``times`` (ties random) or, without times, uniformly at random.

    A random permutation followed by a *stable* sort by the composite key ``user << 32 | time`` gives random tie
    breaks with one int64 sort (much faster than ``np.lexsort`` over three keys on 20M rows). Times that span 2^32
    units or more (epoch milliseconds over 50 days) do not fit the key: two stable sorts of the permutation, by time
    and then by user, give the same order.
    """
    users = users.astype(np.int64)
    if times is None:
        key = (users << 32) | rng.integers(0, 1 << 32, size=len(users), dtype=np.int64)
        return np.argsort(key)
    perm = rng.permutation(len(users))
    t = times[perm].astype(np.int64)
    if len(t) and int(t.max()) - int(t.min()) >= (1 << 32):  # Python ints: the span itself may overflow int64
        by_time = perm[np.argsort(t, kind="stable")]
        return by_time[np.argsort(users[by_time], kind="stable")]
    t = t - t.min() if len(t) else t
    key = (users[perm] << 32) | t
    return perm[np.argsort(key, kind="stable")]


def _group_offsets(sorted_groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``(start, count)`` per group id of an array sorted by group."""
    counts = np.bincount(sorted_groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return starts, counts


def _rank_within_groups(sorted_groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Position of each row inside its group, for an array sorted by group."""
    starts, _ = _group_offsets(sorted_groups, n_groups)
    return np.arange(len(sorted_groups)) - starts[sorted_groups]


def bucket_sizes(lengths: np.ndarray, buckets: Sequence[int] | None) -> np.ndarray:
    """Choose the padded length of each task side.

    Args:
      lengths: the real length of each task side.
      buckets: None for the next power of two, but never more than the longest length (so a fixed query size of
        10 pads to 10, not 16); or a list of sizes: the smallest listed size that fits, longer sides being
        truncated to the largest.

    Returns:
      The padded length of each side, int64 of the shape of ``lengths``.

    Raises:
      ValueError: if a bucket size is not positive.
    """
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) == 0:
        return lengths
    if buckets is None:
        pow2 = 1 << np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
        return np.minimum(pow2, lengths.max())
    sizes = np.asarray(sorted(set(int(b) for b in buckets)), np.int64)
    if sizes[0] < 1:
        raise ValueError(f"bucket sizes must be positive, got {list(buckets)}")
    return sizes[np.minimum(np.searchsorted(sizes, lengths), len(sizes) - 1)]


# ----------------------------------------------------------------------------------------------------------------
# cold-start splits


@dataclasses.dataclass
class ColdStartSplit:
    """Meta-train ratings and the cold-start evaluation scenarios (ratings frames with dataset codes).

    Attributes:
      train: ratings to meta-train on (and to fit the Featurizer on).
      scenarios: ``"warm"``, ``"new_user"``, ``"new_item"``, ``"new_user_new_item"`` -> ratings, possibly empty;
        under ``scheme="cross-domain"`` only ``"cross_domain"``.
      new_users: user codes that never appear in ``train``.
      new_items: item codes that never appear in ``train`` (cross-domain: the other domain's items; items of
        neither domain are in no frame).
      scheme: the split scheme, ``"melu"``, ``"time"`` or ``"cross-domain"``.
      seed: the seed of the split.
      stats: sizes of each part.
    """

    train: pd.DataFrame
    scenarios: dict[str, pd.DataFrame]
    new_users: np.ndarray
    new_items: np.ndarray
    scheme: str
    seed: int
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """Describe the split in one line.

        Returns:
          The scheme, the seed and the ratings / users of ``train`` and of each scenario.
        """
        parts = [f"train {len(self.train):,} ratings / {self.train['user'].nunique():,} users"]
        parts += [f"{k} {len(v):,} / {v['user'].nunique():,}" for k, v in self.scenarios.items()]
        return f"cold_start_split(scheme={self.scheme!r}, seed={self.seed}): " + "; ".join(parts)


def item_release_key(ds: Dataset) -> np.ndarray:
    """Order items by release for the new-item split.

    Args:
      ds: the dataset.

    Returns:
      Per item code: the release year when known, else the calendar year of its first rating, else NaN.
    """
    key = np.full(ds.n_items, np.nan)
    if "year" in ds.items:
        key = pd.to_numeric(ds.items["year"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    if ds.has_timestamps and np.isnan(key).any():
        first = _first_time(ds.ratings["item"].to_numpy(), ds.ratings["timestamp"].to_numpy(), ds.n_items)
        first_year = pd.to_datetime(first, unit="s").year.to_numpy(np.float64)
        key = np.where(np.isnan(key), first_year, key)
    return key


def _first_time(codes: np.ndarray, times: np.ndarray, n: int) -> np.ndarray:
    first = np.full(n, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, codes, times.astype(np.int64))
    return first


def newest_items(key: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Pick the newest items.

    Ties are broken at random and items with an unknown key are never new. When no key is known (no year, no
    timestamp) every item ties: the result is a seeded random ``fraction`` of the items.

    Args:
      key: per item code, its release key (:func:`item_release_key`; NaN when unknown).
      fraction: the share of all items to pick.
      rng: the generator of the tie breaks.

    Returns:
      The sorted codes of the ``fraction`` of items with the largest ``key``.
    """
    if np.isnan(key).all():
        key = np.zeros(len(key))
    known = np.flatnonzero(~np.isnan(key))
    n_new = int(round(fraction * len(key)))
    order = np.lexsort((rng.random(len(known)), -key[known]))
    return np.sort(known[order[:n_new]])


def cold_start_split(
    ds: Dataset,
    scheme: str = "melu",
    seed: int = 0,
    *,
    new_item_frac: float = 0.2,
    new_user_frac: float = 0.2,
    warm_user_frac: float = 0.2,
    warm_holdout: float = 0.5,
    time_quantile: float = 0.8,
    target_genres: tuple = (),
    source_genres: tuple = (),
    train_domain: str = "source",
) -> ColdStartSplit:
    """Split a dataset into meta-train ratings and four cold-start scenarios, without leaks.

    ``scheme="melu"`` (after MeLU, Lee et al. KDD 2019, which splits MovieLens items by release year and users at
    random):

    * *new items*: the newest ``new_item_frac`` of items by release year (first-rating year when the year is
      unknown; random tie break; a random ``new_item_frac`` of items when no item has a year or a timestamp);
      *new users*: ``new_user_frac`` of users at random.
    * *warm*: a random ``warm_user_frac`` of the existing users are warm-evaluation users; a random
      ``warm_holdout`` share of each one's existing-item ratings (at least one, but never all) is held out as the
      warm scenario and the rest stays in train. Warm users are therefore known to the model (their ids are in the
      vocabulary) but the warm rows are not in train.
    * *train*: existing users x existing items, minus the warm rows.
    * *new_user*: new users x existing items; *new_item*: existing users x new items;
      *new_user_new_item*: new users x new items.

    ``scheme="time"``: with ``cutoff`` the ``time_quantile`` quantile of all timestamps, users and items whose first
    rating is after the cutoff are new; train is existing x existing rated up to the cutoff, warm is existing x
    existing rated after it.

    Under ``"melu"`` and ``"time"`` the five frames partition the ratings; no new user or new item appears in
    ``train``.

    ``scheme="cross-domain"`` (train on a source domain, adapt on a few ratings of a target domain): the items
    with any of ``target_genres`` are the target domain, those with any of ``source_genres`` (default: every other
    item) and none of the target genres the source domain; ``new_user_frac`` of the users at random are new.
    *train* is the existing users' ratings of the ``train_domain`` (``"source"``: the transfer setting; ``"target"``:
    the target domain alone, the in-domain reference) and the one scenario, *cross_domain*, is the new users'
    ratings of target items, the same frame whatever ``train_domain`` is. Items of neither domain and the new users'
    source ratings are in no frame (counted in ``stats``).

    Args:
      ds: the dataset.
      scheme: ``"melu"``, ``"time"`` or ``"cross-domain"``.
      seed: the seed of every random choice of the split.
      new_item_frac: ``"melu"``: the share of items that are new.
      new_user_frac: ``"melu"``: the share of users that are new.
      warm_user_frac: ``"melu"``: the share of existing users that are warm-evaluation users.
      warm_holdout: ``"melu"``: the share of a warm user's existing-item ratings held out as the warm scenario.
      time_quantile: ``"time"``: the quantile of all timestamps that is the cutoff.
      target_genres: ``"cross-domain"``: the genres of the target domain (at least one).
      source_genres: ``"cross-domain"``: the genres of the source domain (empty: every item of no target genre).
      train_domain: ``"cross-domain"``: ``"source"`` or ``"target"``, the domain of the training ratings.

    Returns:
      The :class:`ColdStartSplit`; an empty scenario is logged as a warning.

    Raises:
      ValueError: if ``scheme`` or ``train_domain`` is unknown.
      DataError: if ``scheme="time"`` and the dataset has no timestamps; if ``scheme="cross-domain"`` and the
        dataset has no genres, a genre is not among them, or a domain has no item.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown cold-start scheme {scheme!r}; choose one of {SCHEMES}")
    if scheme == "cross-domain":
        return _cross_domain_split(ds, seed, new_user_frac, target_genres, source_genres, train_domain)
    rng = np.random.default_rng(seed)
    r = ds.ratings
    users = r["user"].to_numpy()
    items = r["item"].to_numpy()
    stats: dict[str, Any] = {}
    if scheme == "melu":
        release = item_release_key(ds)
        if np.isnan(release).all():
            # no year and no timestamp: new items are a seeded random share, so the item scenarios still exist
            stats["new_items_by"] = "random"
        new_items = newest_items(release, new_item_frac, rng)
        new_users = np.sort(rng.permutation(ds.n_users)[: int(round(new_user_frac * ds.n_users))])
        is_new_user = np.zeros(ds.n_users, bool)
        is_new_user[new_users] = True
        existing = np.flatnonzero(~is_new_user)
        warm_users = rng.permutation(existing)[: int(round(warm_user_frac * len(existing)))]
        is_new_item = np.zeros(ds.n_items, bool)
        is_new_item[new_items] = True
        row_new_user, row_new_item = is_new_user[users], is_new_item[items]
        held_out = _warm_holdout_rows(users, ~row_new_user & ~row_new_item, warm_users, ds.n_users, warm_holdout, rng)
        stats["warm_users"] = len(warm_users)
    else:
        if not ds.has_timestamps:
            raise DataError(f"{ds.name}: scheme='time' needs timestamps, and this dataset has none")
        times = r["timestamp"].to_numpy()
        cutoff = np.quantile(times, time_quantile)
        first_user = _first_time(users, times, ds.n_users)
        first_item = _first_time(items, times, ds.n_items)
        new_users = np.flatnonzero((first_user > cutoff) & (first_user < np.iinfo(np.int64).max))
        new_items = np.flatnonzero((first_item > cutoff) & (first_item < np.iinfo(np.int64).max))
        row_new_user, row_new_item = first_user[users] > cutoff, first_item[items] > cutoff
        held_out = ~row_new_user & ~row_new_item & (times > cutoff)
        stats["cutoff"] = int(cutoff)
    old_old = ~row_new_user & ~row_new_item
    masks = {
        "warm": old_old & held_out,
        "new_user": row_new_user & ~row_new_item,
        "new_item": ~row_new_user & row_new_item,
        "new_user_new_item": row_new_user & row_new_item,
    }
    train = r[old_old & ~held_out].reset_index(drop=True)
    scenarios = {k: r[m].reset_index(drop=True) for k, m in masks.items()}
    stats.update(new_users=len(new_users), new_items=len(new_items), train=len(train))
    stats.update({k: len(v) for k, v in scenarios.items()})
    for k, v in scenarios.items():
        if len(v) == 0:
            logger.warning("%s: cold-start scenario %r is empty under scheme %r", ds.name, k, scheme)
    return ColdStartSplit(train, scenarios, new_users, new_items, scheme, seed, stats)


def domain_items(ds: Dataset, target_genres: tuple, source_genres: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    """The item codes of a cross-domain split's two domains, from the items' ``genres`` (``"A|B"`` lists).

    Args:
      ds: the dataset (its items need a ``genres`` column).
      target_genres: the target domain's genres: an item with any of them is a target item.
      source_genres: the source domain's genres: an item with any of them and no target genre is a source item;
        empty: every item with no target genre.

    Returns:
      ``(source, target)``: bool ``[n_items]`` masks, disjoint.

    Raises:
      DataError: no ``genres`` column, no target genre, a genre no item has (the message lists the known ones),
        a genre in both domains, or a domain without items.
    """
    if "genres" not in ds.items:
        raise DataError(
            f"{ds.source}: a cross-domain split by genre needs the items' genres, and this dataset has none"
        )
    return genre_domains(ds.items["genres"], target_genres, source_genres, where=ds.source)


def genre_domains(
    genres: pd.Series, target_genres: tuple, source_genres: tuple = (), *, where: str = "items"
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`domain_items` from the items' ``genres`` column alone (``"A|B"`` lists, one per item code), as a run
    folder keeps it; ``where`` names the source in errors."""
    lists = genres.fillna("").astype(str).str.split("|")
    known = sorted({g for genres in lists for g in genres if g})
    target, source = tuple(target_genres), tuple(source_genres)
    if not target:
        raise DataError(f"{where}: a cross-domain split needs target genres; the items' genres are {known}")
    unknown = [g for g in target + source if g not in known]
    if unknown:
        raise DataError(f"{where}: no item has the genre(s) {unknown}; the items' genres are {known}")
    both = sorted(set(target) & set(source))
    if both:
        raise DataError(f"{where}: genre(s) {both} are in both the source and the target domain")
    is_target = np.array([any(g in target for g in genres) for genres in lists], bool)
    is_source = ~is_target
    if source:
        is_source &= np.array([any(g in source for g in genres) for genres in lists], bool)
    for name, mask in (("source", is_source), ("target", is_target)):
        if not mask.any():
            raise DataError(f"{where}: the {name} domain of this cross-domain split has no item")
    return is_source, is_target


def _cross_domain_split(
    ds: Dataset, seed: int, new_user_frac: float, target_genres: tuple, source_genres: tuple, train_domain: str
) -> ColdStartSplit:
    """``cold_start_split(scheme="cross-domain")``: see its docstring."""
    if train_domain not in ("source", "target"):
        raise ValueError(f"train_domain must be 'source' or 'target', got {train_domain!r}")
    is_source, is_target = domain_items(ds, target_genres, source_genres)
    rng = np.random.default_rng(seed)
    new_users = np.sort(rng.permutation(ds.n_users)[: int(round(new_user_frac * ds.n_users))])
    is_new_user = np.zeros(ds.n_users, bool)
    is_new_user[new_users] = True
    r = ds.ratings
    row_new_user = is_new_user[r["user"].to_numpy()]
    items = r["item"].to_numpy()
    row_source, row_target = is_source[items], is_target[items]
    train_rows = ~row_new_user & (row_source if train_domain == "source" else row_target)
    train = r[train_rows].reset_index(drop=True)
    scenarios = {"cross_domain": r[row_new_user & row_target].reset_index(drop=True)}
    stats = {
        "source_items": int(is_source.sum()),
        "target_items": int(is_target.sum()),
        "items_in_neither_domain": int((~is_source & ~is_target).sum()),
        "ratings_in_neither_domain": int((~row_source & ~row_target).sum()),
        "new_users": len(new_users),
        "new_users_source_ratings_unused": int((row_new_user & row_source).sum()),
        "existing_users_other_domain_ratings_unused": int(
            (~row_new_user & ~train_rows & (row_source | row_target)).sum()
        ),
        "train_domain": train_domain,
        "train": len(train),
        "cross_domain": len(scenarios["cross_domain"]),
    }
    if len(scenarios["cross_domain"]) == 0:
        logger.warning("%s: cold-start scenario 'cross_domain' is empty", ds.name)
    new_items = np.flatnonzero(is_target if train_domain == "source" else is_source)
    return ColdStartSplit(train, scenarios, new_users, new_items, "cross-domain", seed, stats)


def _warm_holdout_rows(
    users: np.ndarray,
    eligible: np.ndarray,
    warm_users: np.ndarray,
    n_users: int,
    holdout: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Row mask: for each warm user, a random ``holdout`` share of its eligible rows (>= 1, < all)."""
    is_warm = np.zeros(n_users, bool)
    is_warm[warm_users] = True
    rows = np.flatnonzero(eligible & is_warm[users])
    out = np.zeros(len(users), bool)
    if len(rows) == 0:
        return out
    order = rows[_order_within_users(users[rows], rng)]
    sorted_users = users[order]
    _, counts = _group_offsets(sorted_users, n_users)
    position = _rank_within_groups(sorted_users, n_users)
    n = counts[sorted_users]
    n_held = np.clip(np.round(holdout * n), 1, n - 1)  # users with one eligible row keep it in train
    out[order[position < n_held]] = True
    return out


# ----------------------------------------------------------------------------------------------------------------
# tasks


@dataclasses.dataclass
class TaskSet:
    """One task per user: contiguous support and query row ranges into row arrays sorted by user.

    Task ``t`` is user ``users[t]``; its support rows are ``row_*[support_start[t] : support_start[t] +
    support_len[t]]`` and likewise for the query. ``support_pad`` / ``query_pad`` are the bucketed padded lengths;
    tasks with the same pair are batched together, so a jitted meta-step compiles once per distinct pair.
    Build with :func:`build_tasks`.

    Attributes:
      featurizer: the :class:`~jaxrec.data.Featurizer` that turns codes into rows.
      users: int32 ``[tasks]``: the user code of each task (the task id).
      row_user: int32 ``[rows + 1]`` user codes, sorted by user; the last entry is a padding row (-1).
      row_item: int32 ``[rows + 1]`` item codes.
      row_rating: float32 ``[rows + 1]`` raw ratings.
      support_start: int64 ``[tasks]``: where each task's support rows start.
      support_len: int32 ``[tasks]``: how many support rows each task has.
      query_start: where each task's query rows start.
      query_len: how many query rows each task has.
      support_pad: int32 ``[tasks]``: the padded support length of each task.
      query_pad: the padded query length of each task.
      split: the support/query split (one of :data:`SPLITS`).
      negatives: implicit mode: label-0 rows appended per real row, sampled afresh for every batch.
      stats: sizes and counts of the build (``tasks``, ``users_dropped``, ``users_subsampled``, ``rows``, ...).
      rated_keys: sorted ``user * n_items + item`` of the rated pairs, for negative sampling (implicit mode only).
      history: ``L``: rows carry ``history_item`` / ``history_rating`` ``[rows, L]`` (0 = none).
      by: ``"user"``, or ``"item"`` when each task is an item (then ``users`` and ``task_id`` hold item codes and
        the rows are sorted by item).
    """

    featurizer: Featurizer
    users: np.ndarray  # int32 [tasks] user code (the task id)
    row_user: np.ndarray  # int32 [rows + 1]; the last entry is a padding row (-1)
    row_item: np.ndarray  # int32 [rows + 1]
    row_rating: np.ndarray  # float32 [rows + 1]
    support_start: np.ndarray  # int64 [tasks]
    support_len: np.ndarray  # int32 [tasks]
    query_start: np.ndarray
    query_len: np.ndarray
    support_pad: np.ndarray  # int32 [tasks]
    query_pad: np.ndarray
    split: str
    negatives: int = 0
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    rated_keys: np.ndarray | None = None  # sorted user * n_items + item, for negative sampling
    history: int = 0  # L: rows carry history_item / history_rating [rows, L] (0 = none)
    by: str = "user"  # "item": each task is an item, and ``users`` holds item codes

    def __len__(self) -> int:
        return len(self.users)

    def __repr__(self) -> str:  # the dataclass's would print every row array and the featurizer (tens of kB)
        shapes = ", ".join(f"{s}x{q}" for s, q in self.shapes)
        return (
            f"TaskSet({len(self)} tasks by {self.by}, {len(self.row_user) - 1} rows, split={self.split!r}, "
            f"shapes (support x query)=[{shapes}], negatives={self.negatives}, history={self.history})"
        )

    @property
    def spec(self) -> FeatureSpec:
        """The featurizer's spec with ``history`` = this task set's ``L`` (what a model of these rows needs)."""
        spec = self.featurizer.spec
        return spec if spec.history == self.history else dataclasses.replace(spec, history=self.history)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Distinct ``(support, query)`` padded lengths (before negatives are appended)."""
        pairs = np.unique(np.stack([self.support_pad, self.query_pad], 1), axis=0) if len(self) else []
        return [(int(s), int(q)) for s, q in pairs]

    def padding_stats(self, batch_size: int) -> dict[str, float]:
        """Measure the padding of one epoch of batches.

        Args:
          batch_size: tasks per batch.

        Returns:
          ``batches_per_epoch``; ``shapes``, the number of distinct batch shapes (what a jitted meta-step compiles
          for); and ``support_padding``, ``query_padding`` and ``padding_waste``, the fractions of padded row
          slots (padding tasks included) of the support, the query and both.
        """
        real_s = real_q = slots_s = slots_q = 0
        shapes = set()
        for task_index in self.batch_plan(batch_size, None):
            real = task_index[task_index >= 0]
            s, q = int(self.support_pad[real].max()), int(self.query_pad[real].max())
            shapes.add((s, q))
            real_s += int(self.support_len[real].sum())
            real_q += int(self.query_len[real].sum())
            slots_s += batch_size * s
            slots_q += batch_size * q
        waste = lambda real, slots: 1.0 - real / slots if slots else 0.0
        return {
            "batches_per_epoch": -(-len(self) // batch_size),
            "shapes": len(shapes),
            "support_padding": waste(real_s, slots_s),
            "query_padding": waste(real_q, slots_q),
            "padding_waste": waste(real_s + real_q, slots_s + slots_q),
        }

    def summary(self, batch_size: int | None = None) -> str:
        """Describe the task set in one line.

        Args:
          batch_size: also report the batches and the padding waste of an epoch of batches of this size.

        Returns:
          The split, the number of tasks, the support and query lengths, the shapes and the dropped users.
        """
        s = self.stats
        text = (
            f"TaskSet(split={self.split!r}): {len(self)} tasks, support {s.get('support_len')}, query "
            f"{s.get('query_len')}, {len(self.shapes)} shape(s); dropped {s.get('users_dropped', 0)} {self.by}(s)"
        )
        if batch_size:
            p = self.padding_stats(batch_size)
            text += f"; batch {batch_size}: {p['batches_per_epoch']} batches, padding waste {p['padding_waste']:.1%}"
        return text

    # -- batches ---------------------------------------------------------------------------------------------------

    def batch_plan(self, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
        """Plan the batches of one epoch.

        Tasks are grouped by ``(support_pad, query_pad)`` bucket in ascending order; the ``len % batch_size``
        tasks left over by a bucket join the next one (the batch takes the larger shape), so only the very last
        batch holds padding tasks and every task appears exactly once.

        Args:
          batch_size: tasks per batch.
          rng: with a generator, tasks are shuffled within buckets and batches shuffled across buckets; with None,
            buckets come in shape order and tasks in user order.

        Returns:
          The task indices of each batch, ``[batch_size]`` each (``-1`` = padding task).
        """
        plan: list[np.ndarray] = []
        carry = np.zeros(0, np.int64)
        for s, q in self.shapes:
            idx = np.flatnonzero((self.support_pad == s) & (self.query_pad == q))
            if rng is not None:
                idx = rng.permutation(idx)
            idx = np.concatenate([carry, idx])
            n_full = len(idx) // batch_size * batch_size
            plan.extend(idx[:n_full].reshape(-1, batch_size))
            carry = idx[n_full:]
        if len(carry):
            plan.append(np.concatenate([carry, np.full(batch_size - len(carry), -1, np.int64)]))
        if rng is not None:
            plan = [plan[k] for k in rng.permutation(len(plan))]
        return plan

    def make_batch(self, task_index: np.ndarray, rng: np.random.Generator | None = None) -> TaskBatch:
        """Build the batch of the given tasks.

        The batch is padded to the largest ``(support_pad, query_pad)`` of its tasks. In implicit mode the
        negatives and the BPR ``neg_item`` are sampled with ``rng``; with ``history`` every row gets its history.

        Args:
          task_index: task indices; ``-1`` entries become padding tasks (``task_id`` -1, all-false masks).
          rng: the generator of negative sampling (default: ``default_rng(0)``).

        Returns:
          A numpy :class:`~jaxrec.TaskBatch` with ``task_id`` = user code.
        """
        task_index = np.asarray(task_index)
        real = task_index >= 0
        safe = np.where(real, task_index, 0)
        s_pad = int(self.support_pad[safe[real]].max()) if real.any() else int(self.support_pad.max(initial=1))
        q_pad = int(self.query_pad[safe[real]].max()) if real.any() else int(self.query_pad.max(initial=1))
        users = np.where(real, self.users[safe], -1).astype(np.int32)
        s_start, s_len = self.support_start[safe], np.where(real, self.support_len[safe], 0)
        support, s_mask = self._side(s_start, s_len, s_pad)
        query, q_mask = self._side(self.query_start[safe], np.where(real, self.query_len[safe], 0), q_pad)
        if self.history:
            s_hist = self._history(s_start, np.minimum(np.arange(s_pad)[None, :], s_len[:, None]))
            q_hist = self._history(s_start, np.broadcast_to(s_len[:, None], (len(s_len), q_pad)))
        if self.negatives or self.featurizer.implicit_threshold is not None:
            rng = rng or np.random.default_rng(0)
            support, s_mask = self._add_negatives(support, s_mask, users, rng)
            query, q_mask = self._add_negatives(query, q_mask, users, rng)
        rows_s = self.featurizer.rows(support["user"], support["item"], support["rating"])
        rows_q = self.featurizer.rows(query["user"], query["item"], query["rating"])
        for rows, side in ((rows_s, support), (rows_q, query)):
            if "neg_item" in side:
                rows.update(self.featurizer.item_rows(side["neg_item"], prefix="neg_"))
        if self.history:
            rows_s.update(self._history_rows(s_hist, s_mask))
            rows_q.update(self._history_rows(q_hist, q_mask))
        return TaskBatch(support=rows_s, query=rows_q, support_mask=s_mask, query_mask=q_mask, task_id=users)

    def codes(self, task_index: np.ndarray) -> tuple[tuple[dict, np.ndarray], tuple[dict, np.ndarray]]:
        """The dataset codes of the given tasks' real rows, padded as :meth:`make_batch` pads them.

        Args:
          task_index: task indices (``-1`` = a padding task).

        Returns:
          ``((support, support_mask), (query, query_mask))``; each side ``{"user", "item", "rating"}`` of
          ``[T, L]`` arrays (``-1`` codes on padding), without the negatives of implicit mode.
        """
        task_index = np.asarray(task_index)
        real = task_index >= 0
        safe = np.where(real, task_index, 0)
        out = []
        for start, length, pad in (
            (self.support_start, self.support_len, self.support_pad),
            (self.query_start, self.query_len, self.query_pad),
        ):
            size = int(pad[safe[real]].max()) if real.any() else int(pad.max(initial=1))
            out.append(self._side(start[safe], np.where(real, length[safe], 0), size))
        return out[0], out[1]

    def _side(self, start: np.ndarray, length: np.ndarray, size: int) -> tuple[dict, np.ndarray]:
        offsets = np.arange(size)
        mask = offsets[None, :] < length[:, None]
        idx = np.where(mask, start[:, None] + offsets[None, :], -1)  # -1: the padding row at the end
        codes = {"user": self.row_user[idx], "item": self.row_item[idx], "rating": self.row_rating[idx]}
        return codes, mask

    def _history(self, start: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """Row indices ``[tasks, rows, L]`` of the last ``L`` of the first ``seen[t, r]`` support rows of task
        ``t`` (oldest first, ``-1`` = padding on the left): ``seen`` is a support row's position (the rows before
        it, never itself) or, for a query row, the support length (all of the support, never a query row)."""
        offset = seen[..., None] - self.history + np.arange(self.history)  # [tasks, rows, L], last = seen - 1
        return np.where(offset >= 0, start[:, None, None] + offset, -1)

    def _history_rows(self, idx: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """``history_item`` (vocabulary ids, 0 = padding) and ``history_rating`` (0 where the item is 0) for the
        rows of ``mask``; extra columns (implicit negatives, appended ``k`` times after the real rows) repeat the
        history of the real row they were drawn for. Padded rows get an all-padding history."""
        reps = mask.shape[1] // idx.shape[1]
        idx = np.where(mask[..., None], np.tile(idx, (1, reps, 1)), -1)
        items = np.take(self.featurizer.item_index, self.row_item[idx])  # padding row -> code -1 -> slot 0
        ratings = np.where(items > 0, self.row_rating[idx], 0.0).astype(np.float32)
        return {"history_item": items.astype(np.int32), "history_rating": ratings}

    def _add_negatives(self, side: dict, mask: np.ndarray, users: np.ndarray, rng) -> tuple[dict, np.ndarray]:
        """Implicit mode: ``negatives`` label-0 rows per real row, for items the user did not rate, appended after
        the real rows; every row gets a ``neg_item`` (an unrated item) for BPR."""
        k = self.negatives
        n_tasks, size = mask.shape
        task_user = np.broadcast_to(users[:, None], (n_tasks, size * (1 + k)))
        if k:
            neg_items, ok = self._sample_unrated(np.broadcast_to(users[:, None], (n_tasks, size * k)), rng)
            neg_mask = np.tile(mask, (1, k)) & ok
            side = {
                "user": np.concatenate([side["user"], np.where(neg_mask, task_user[:, size:], -1)], 1),
                "item": np.concatenate([side["item"], np.where(neg_mask, neg_items, -1)], 1),
                # below every threshold: the featurizer labels these rows 0
                "rating": np.concatenate([side["rating"], np.full(neg_items.shape, -np.inf, np.float32)], 1),
            }
            mask = np.concatenate([mask, neg_mask], 1)
        bpr_neg, _ = self._sample_unrated(task_user, rng)
        side["neg_item"] = np.where(mask, bpr_neg, -1)
        return side, mask

    def _sample_unrated(
        self, users: np.ndarray, rng: np.random.Generator, tries: int = 8
    ) -> tuple[np.ndarray, np.ndarray]:
        """Uniform items not rated by ``users`` (rejection sampling, vectorised); ``ok`` false where all tries hit
        a rated item (a user who rated nearly everything)."""
        n_items = self.featurizer.n_items
        items = rng.integers(0, n_items, size=users.shape)
        ok = np.ones(users.shape, bool)
        if self.rated_keys is None:
            return items.astype(np.int32), ok
        for _ in range(tries):
            keys = users.astype(np.int64) * n_items + items
            pos = np.minimum(np.searchsorted(self.rated_keys, keys), len(self.rated_keys) - 1)
            ok = (self.rated_keys[pos] != keys) | (users < 0)
            if ok.all():
                break
            items = np.where(ok, items, rng.integers(0, n_items, size=users.shape))
        return items.astype(np.int32), ok

    def batches(
        self, batch_size: int, *, seed: int = 0, epochs: int | None = None, shuffle: bool = True
    ) -> Iterator[TaskBatch]:
        """Iterate over numpy batches of the stream of :mod:`jaxrec.data.stream`, built on demand.

        Args:
          batch_size: tasks per batch.
          seed: the stream's seed; the stream is a function of it.
          epochs: how many passes over the tasks (None: endless).
          shuffle: shuffle tasks and batches each epoch; without, every task once per epoch in bucket and user
            order.

        Yields:
          Numpy :class:`~jaxrec.TaskBatch` es; none for an empty task set with a finite ``epochs`` (e.g. an empty
          cold-start scenario).

        Raises:
          ValueError: if ``batch_size`` is less than 1.
          DataError: if the task set is empty and ``epochs`` is None (an endless stream of nothing would hang the
            training loop).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(self) == 0:
            if epochs is None:  # an endless stream of nothing would hang the training loop
                raise DataError(f"no tasks to batch ({self.summary()})")
            return  # e.g. an empty cold-start scenario: nothing to evaluate
        batch_at = StepBatches(lambda _: self, batch_size, seed, shuffle)
        stop = None if epochs is None else int(epochs) * batch_at.per_epoch
        yield from stream(batch_at, stop=stop, prefetch=0, device=None)


def _split_sizes(
    n: np.ndarray, split: str, support: int | None, query: int | float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Support and query sizes per user from its rating count ``n`` (before validity checks)."""
    if split == "kshot":
        if support is None:
            raise ValueError("split='kshot' needs support=K")
        n_s = np.full_like(n, support)
        n_q = n - support
        if query is not None:
            n_q = np.minimum(n_q, int(query))
        return n_s, n_q
    if query is None:
        query = 10 if split == "melu" else 0.2
    if isinstance(query, float) and 0 < query < 1:
        n_q = np.maximum(np.round(query * n).astype(n.dtype), 1)
    else:
        n_q = np.full_like(n, int(query))
    n_s = n - n_q
    if support is not None:
        n_s = np.minimum(n_s, int(support))  # the rows nearest the query are kept
    return n_s, n_q


def build_tasks(
    ratings: pd.DataFrame,
    featurizer: Featurizer,
    split: str = "random",
    *,
    support: int | None = None,
    query: int | float | None = None,
    seed: int | Sequence[int] = 0,
    min_ratings: int | None = None,
    max_ratings: int | None = None,
    min_support: int = 1,
    min_query: int = 1,
    order: str | None = None,
    support_buckets: Sequence[int] | None = None,
    query_buckets: Sequence[int] | None = None,
    negatives: int = 0,
    history: int = 0,
    subsample: tuple[int, int] | None = None,
    subsample_seed: int | Sequence[int] | None = None,
    by: str = "user",
) -> TaskSet:
    """Build one task per user of ``ratings`` (dataset codes), with a seeded support/query split.

    ``by="item"`` makes each *item* a task instead (item cold start, Vartak et al. NeurIPS 2017: an item's
    support set is some of the users who rated it, its query the others); every rule below then reads "item" for
    "user" (``TaskSet.users`` holds item codes and ``task_id`` is the item code). Item tasks are for rated data
    without histories: the negatives and histories of implicit mode are per user.

    Splits (``n`` = the user's rating count):

    * ``"random"``: shuffle the user's ratings; the last ``query`` (an int, or a fraction of ``n``; default 0.2)
      are the query, the rest the support (at most ``support`` of them when given).
    * ``"time"``: the same with ratings in time order, so the query holds the latest ratings.
    * ``"melu"`` (MeLU, Lee et al. KDD 2019): users with 13 to 100 ratings; after a shuffle the last ``query=10``
      are the query and the rest the support.
    * ``"kshot"``: ``support=K`` ratings (random, or the earliest with ``order="time"``) as support, the remaining
      ones (at most ``query``) as query.

    Users left with fewer than ``min_support`` support or ``min_query`` query rows, or outside ``[min_ratings,
    max_ratings]``, are dropped and counted in ``stats["users_dropped"]``.

    ``subsample=(lo, hi)``: a user with more than ``hi`` ratings becomes a task over a random subset of them (the
    latest ones in time order) whose size is drawn uniformly from ``[lo, hi]`` (seeded), before the split and the
    ``max_ratings`` filter; counted in ``stats["users_subsampled"]``. Meta-training tasks built from heavy users
    then have the support sizes of the cold-start users they are meant for (MeLU's 13..100 ratings), instead of
    always filling the largest support bucket. The sizes are drawn with ``subsample_seed`` (default ``seed``):
    task sets built with different seeds and the same ``subsample_seed`` have the same task sizes (and padded
    shapes), only other ratings in them.

    Implicit mode (``featurizer.implicit_threshold`` set): the target is ``label = rating >= threshold``, every
    row carries a sampled unrated ``neg_item`` (with its ``neg_item_*`` features) for BPR, and ``negatives=k``
    appends ``k`` label-0 rows per real row for items the user did not rate (sampled afresh for every batch).

    ``history=L > 0`` adds ``history_item`` (item vocabulary ids, 0 = padding) and ``history_rating`` (raw ratings,
    0 where the item is 0) ``[rows, L]`` to every row, built per batch: the last ``L`` *support* rows that come
    strictly before the row in the task's support order (time order under ``split="time"``), most recent last,
    left-padded. A support row never sees itself or later rows; a query row sees the whole support (its last ``L``
    rows) and never a query rating. Negatives repeat the history of their real row; padded rows get all zeros.
    Use :attr:`TaskSet.spec` (``history=L``) to create the model.

    Args:
      ratings: a ratings frame with ``user``, ``item``, ``rating`` (and, for time order, ``timestamp``) columns.
      featurizer: the :class:`~jaxrec.data.Featurizer` of the dataset.
      split: one of :data:`SPLITS`.
      support: the most support rows per task; the ``K`` of ``"kshot"`` (required there).
      query: the query rows per task: an int, or a fraction of ``n`` (default 10 for ``"melu"``, 0.2 for
        ``"random"`` and ``"time"``); for ``"kshot"``, at most this many of the remaining rows (default: all).
      seed: the seed of the shuffles and, by default, of the subsample sizes.
      min_ratings: users with fewer ratings are dropped (``"melu"``: default 13).
      max_ratings: users with more ratings are dropped (``"melu"``: default 100).
      min_support: users left with fewer support rows are dropped.
      min_query: users left with fewer query rows are dropped.
      order: ``"random"`` or ``"time"`` (default: ``"time"`` for ``split="time"``, else ``"random"``).
      support_buckets: the padded support lengths (see :func:`bucket_sizes`).
      query_buckets: the padded query lengths (see :func:`bucket_sizes`).
      negatives: implicit mode: ``k`` label-0 rows per real row.
      history: ``L``, the history length of every row (0: none).
      subsample: ``(lo, hi)``: subsample users with more than ``hi`` ratings to ``[lo, hi]`` of them.
      subsample_seed: the seed of the subsample sizes (default ``seed``).
      by: ``"user"`` (a task per user) or ``"item"`` (a task per item).

    Returns:
      The :class:`TaskSet`; dropped and subsampled users are counted in its ``stats``.

    Raises:
      ValueError: if ``split`` is unknown, ``"kshot"`` lacks ``support``, ``history`` is not an int >= 0,
        ``negatives`` is set without an implicit featurizer, or ``subsample`` is not ``(lo, hi)`` with
        ``1 <= lo <= hi``.
      DataError: if a column is missing (``timestamp`` for time order) or a user code is outside the
        featurizer's dataset.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if by not in TASK_SIDES:
        raise ValueError(f"unknown task side by={by!r}; choose one of {TASK_SIDES}")
    if by == "item" and (history or featurizer.implicit_threshold is not None):
        raise ValueError(
            "by='item' (items as tasks) is for rated data without histories: implicit negatives and histories are "
            "drawn per user"
        )
    for col in ("user", "item", "rating"):
        if col not in ratings:
            raise DataError(f"build_tasks: ratings have no {col!r} column; the columns are {list(ratings.columns)}")
    if isinstance(history, bool) or not isinstance(history, int | np.integer) or history < 0:
        raise ValueError(f"history must be an int >= 0 (the sequence length L), got {history!r}")
    if negatives and featurizer.implicit_threshold is None:
        raise ValueError("negatives= needs an implicit featurizer: Featurizer.fit(..., implicit_threshold=...)")
    order = order or ("time" if split == "time" else "random")
    if order == "time" and "timestamp" not in ratings:
        raise DataError(f"build_tasks: split={split!r} with time order needs a 'timestamp' column")
    if split == "melu":
        min_ratings = 13 if min_ratings is None else min_ratings
        max_ratings = 100 if max_ratings is None else max_ratings
    rng = np.random.default_rng(seed)
    # the task key: users, or items for item tasks (every per-user rule below then applies per item)
    n_users = featurizer.n_users if by == "user" else featurizer.n_items
    users = ratings[by].to_numpy()
    if len(users) and (users.min() < 0 or users.max() >= n_users):
        raise DataError(f"build_tasks: {by} codes outside the featurizer's dataset")
    times = ratings["timestamp"].to_numpy() if order == "time" else None
    row_order = _order_within_users(users, rng, times)
    sorted_users = users[row_order]
    starts, counts = _group_offsets(sorted_users, n_users)
    present = np.flatnonzero(counts)
    n = counts[present].astype(np.int64)
    user_starts = starts[present].astype(np.int64)
    n_subsampled = 0
    if subsample is not None:
        lo, hi = (int(v) for v in subsample)
        if not 1 <= lo <= hi:
            raise ValueError(f"subsample must be (lo, hi) with 1 <= lo <= hi, got {subsample!r}")
        heavy = n > hi
        size_rng = np.random.default_rng(seed if subsample_seed is None else subsample_seed)
        size = size_rng.integers(lo, hi + 1, size=len(n))
        if order == "time":  # keep the latest ratings: the window ends where the user's rows end
            user_starts = np.where(heavy, user_starts + n - size, user_starts)
        # in random order the first ``size`` rows of the shuffled user are a uniform random subset
        n = np.where(heavy, size, n)
        n_subsampled = int(heavy.sum())
    n_s, n_q = _split_sizes(n, split, support, query)
    keep = (n_s >= min_support) & (n_q >= min_query)
    if min_ratings is not None:
        keep &= n >= min_ratings
    if max_ratings is not None:
        keep &= n <= max_ratings
    support_pad = bucket_sizes(n_s[keep], support_buckets)
    query_pad = bucket_sizes(n_q[keep], query_buckets)
    # sides longer than the largest bucket are truncated: keep the support rows nearest the query
    first_query = user_starts[keep] + n[keep] - n_q[keep] if split != "kshot" else user_starts[keep] + n_s[keep]
    s_len = np.minimum(n_s[keep], support_pad)
    q_len = np.minimum(n_q[keep], query_pad)

    def padded(values: np.ndarray, dtype, fill) -> np.ndarray:
        return np.concatenate([values[row_order].astype(dtype), np.array([fill], dtype)])

    rated_keys = None
    if featurizer.implicit_threshold is not None:  # user tasks only (checked above)
        rated_keys = np.sort(users.astype(np.int64) * featurizer.n_items + ratings["item"].to_numpy())
    stats = {
        "tasks": int(keep.sum()),
        "users_dropped": int((~keep).sum()),
        "users_subsampled": n_subsampled,
        "rows": int(s_len.sum() + q_len.sum()),
        "support_len": _describe(s_len),
        "query_len": _describe(q_len),
    }
    if stats["users_dropped"]:
        logger.info("build_tasks(%s): dropped %d %s(s) with too few/many ratings", split, stats["users_dropped"], by)
    return TaskSet(
        featurizer=featurizer,
        users=present[keep].astype(np.int32),
        row_user=padded(ratings["user"].to_numpy(), np.int32, -1),
        row_item=padded(ratings["item"].to_numpy(), np.int32, -1),
        row_rating=padded(ratings["rating"].to_numpy(), np.float32, 0.0),
        support_start=(first_query - s_len).astype(np.int64),
        support_len=s_len.astype(np.int32),
        query_start=first_query.astype(np.int64),
        query_len=q_len.astype(np.int32),
        support_pad=support_pad.astype(np.int32),
        query_pad=query_pad.astype(np.int32),
        split=split,
        negatives=int(negatives),
        stats=stats,
        rated_keys=rated_keys,
        history=int(history),
        by=by,
    )


def _describe(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": int(x.min()), "mean": round(float(x.mean()), 2), "max": int(x.max())}


# ----------------------------------------------------------------------------------------------------------------
# device stream


def task_batches(
    data: TaskSet | pd.DataFrame,
    *,
    batch_size: int,
    support: int | None = None,
    query: int | float | None = None,
    seed: int = 0,
    epochs: int | None = None,
    shuffle: bool = True,
    featurizer: Featurizer | None = None,
    split: str = "random",
    device: Any = None,
    prefetch: bool = True,
    **build_kwargs: Any,
) -> Iterator[TaskBatch]:
    """Stream device-resident :class:`~jaxrec.TaskBatch` es of ``batch_size`` tasks each.

    ``shuffle=False, epochs=1`` visits every task exactly once in a fixed order, keeps ``task_id`` = user code and
    pads the last batch of each shape bucket with padding tasks (``task_id`` -1, all-false masks). Batches are
    built in numpy and moved with ``jax.device_put``; the stream is a function of ``seed`` only
    (:mod:`jaxrec.data.stream`).

    Args:
      data: a :class:`TaskSet`, or a ratings DataFrame plus ``featurizer``.
      batch_size: tasks per batch.
      support: DataFrame only: passed to :func:`build_tasks`.
      query: DataFrame only: passed to :func:`build_tasks`.
      seed: the seed of the stream (and of :func:`build_tasks` for a DataFrame).
      epochs: passes over the tasks (None: repeat forever).
      shuffle: shuffle tasks and batches each epoch.
      featurizer: DataFrame only: the :class:`~jaxrec.data.Featurizer` of the rows.
      split: DataFrame only: the split of :func:`build_tasks`.
      device: where the batches go (None: the default device).
      prefetch: build batches in a background thread (Grain, 2 batches ahead); False builds each when asked for.
      **build_kwargs: DataFrame only: further options of :func:`build_tasks` (e.g. ``history=L``,
        ``negatives=k``).

    Returns:
      An iterator over the batches; an empty one for an empty task set with a finite ``epochs``.

    Raises:
      ValueError: if a DataFrame comes without ``featurizer``, or a :class:`TaskSet` with build options.
      DataError: if there are no tasks and ``epochs`` is None (an endless stream of nothing would hang the training
        loop).
    """
    if isinstance(data, pd.DataFrame):
        if featurizer is None:
            raise ValueError("task_batches(DataFrame) needs featurizer=; fit one with Featurizer.fit(dataset, train)")
        data = build_tasks(data, featurizer, split, support=support, query=query, seed=seed, **build_kwargs)
    elif support is not None or query is not None or build_kwargs:
        raise ValueError("support=/query=/build options apply when data is a DataFrame; this TaskSet is built")
    if len(data) == 0:
        if epochs is None:  # an endless stream of nothing would hang the training loop
            raise DataError(f"no tasks to batch ({data.summary()})")
        return iter(())
    batch_at = StepBatches(lambda _: data, batch_size, seed, shuffle)
    stop = None if epochs is None else int(epochs) * batch_at.per_epoch
    return stream(batch_at, stop=stop, prefetch=2 if prefetch else 0, device="default" if device is None else device)
