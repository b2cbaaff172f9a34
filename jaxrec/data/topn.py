"""Top-N tasks from implicit feedback: users split into meta-train, validation and new users; K-shot tasks whose
support is a user's first interactions and whose query is what they did next; sampled negatives.

Pipeline::

    ds = jaxrec.data.from_csv("checkins.tsv", columns=["user", "item", "weight"], feedback="implicit")
    split = topn_split(ds, test_frac=0.2, val_frac=0.1, seed=0)            # disjoint users
    feat = implicit_featurizer(ds, split.train)                           # vocabularies from meta-train only
    new = split.scenarios["new_user"]
    sampler = NegativeSampler.fit(split.train, ds.n_items, count=20, avoid=[new])  # uniform over training items
    train = topn_tasks(split.train, feat, sampler, shots=10, query=20, seed=0, train=True)
    test = topn_tasks(new, feat, sampler, shots=10, query=100, seed=0)

A new user's task is their first ``shots`` interactions (in time order where the log has timestamps, so the
query is the user's future; else a seeded random ``shots``; ties in time in a seeded random order) and, as query,
the next ones, at most ``query`` of them. Time runs per user: the split is by user, with no cut in time across
users, so meta-train users' interactions may be later than a new user's support (the strong-generalisation protocol
of Liang et al., WWW 2018).
Meta-train users with more interactions are kept whole in the data and subsampled to task sizes: each epoch's
task of such a user is a fresh random window of ``shots + query`` of their interactions (nothing is dropped;
the counts are in :attr:`TopNTaskSet.stats`).

Negatives are drawn per batch in the pipeline, vectorised over every row of the batch (no Python loop per row):
``count`` items per positive row from ``q`` (uniform over the training items, or proportional to their
popularity), redrawn where they hit an item the user interacted with in the frames the sampler was fitted on
(``split.train``, and the ``avoid`` frames: a new user's interactions are in neither unless passed there, as
above); a draw still hitting one after a few tries is masked out (``neg_mask``). The draws are a function of the
batch's generator, so of the seed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from jaxrec.core.batch import TaskBatch
from jaxrec.core.features import FeatureSpec
from jaxrec.data.dataset import DataError, Dataset
from jaxrec.data.featurizer import Featurizer
from jaxrec.data.tasks import TaskSet, _describe, build_tasks

__all__ = [
    "SAMPLERS",
    "NegativeSampler",
    "TopNSplit",
    "TopNTaskSet",
    "implicit_featurizer",
    "topn_split",
    "support_history",
    "topn_tasks",
    "warm_frame",
]

logger = logging.getLogger(__name__)

SAMPLERS = ("uniform", "popularity")
TOPN_SCENARIOS = ("new_user", "warm", "new_item")


# ----------------------------------------------------------------------------------------------------------------
# the split


@dataclasses.dataclass
class TopNSplit:
    """Interactions split by user for top-N evaluation.

    Attributes:
      train: the meta-train users' interactions (and the warm users' earlier ones).
      validation: the validation users' interactions (held out of training; every choice is made on them).
      scenarios: ``"new_user"``: the test users' interactions (never trained on); ``"warm"``: the latest
        interactions of a sample of meta-train users, held out of ``train`` (their earlier ones are in it);
        ``"new_item"`` (with ``new_item_frac``): the meta-train users' interactions with the new items, which no
        part of the split trains on.
      new_items: the item codes held out as new items (empty without ``new_item_frac``).
      stats: counts of users and interactions per part.
      validation_new_items: the item codes held out as validation new items, from the same newest items as the new
        items (empty without ``val_new_item_frac``); every choice about new items is made on them.
      validation_new_item: the meta-train users' interactions with the validation new items.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    scenarios: dict[str, pd.DataFrame]
    stats: dict[str, Any]
    new_items: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    validation_new_items: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    validation_new_item: pd.DataFrame | None = None

    def summary(self) -> str:
        """Describe the split in one line."""
        return "top-N split: " + ", ".join(f"{k}={v}" for k, v in self.stats.items())


def _time_rank(frame: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each row's position in its user's interactions (time order, ties and untimed logs in random order) and the
    user's interaction count."""
    users = frame["user"].to_numpy()
    n = len(users)
    order = rng.permutation(n)
    key = frame["timestamp"].to_numpy()[order] if "timestamp" in frame else np.zeros(n, np.int64)
    order = order[np.lexsort((key, users[order]))]
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1]
    counts = np.diff(np.r_[starts, n])
    run = np.repeat(np.arange(len(starts)), counts)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - starts[run]
    total = np.empty(n, np.int64)
    total[order] = counts[run]
    return rank, total


def topn_split(
    dataset: Dataset,
    *,
    test_frac: float = 0.2,
    val_frac: float = 0.1,
    warm_frac: float = 0.1,
    warm_holdout: float = 0.2,
    new_item_frac: float = 0.0,
    val_new_item_frac: float = 0.0,
    seed: int = 0,
) -> TopNSplit:
    """Split a log's users into meta-train, validation and new (test) users, hold out warm users' latest
    interactions and, with ``new_item_frac``, the newest items.

    New items (the item cold start): the ``new_item_frac`` of the interacted items first interacted with last
    (by timestamp; a seeded random draw in an untimed log) lose every interaction in every part, so that nothing
    trains on them: they are in the catalogue with their features and no interactions, as an item is on the day
    it is released. The meta-train users' interactions with them are the ``new_item`` scenario's queries; the
    validation and new users' ones are dropped and counted (``new_item_dropped``). The users are drawn before the
    items, so the user split does not depend on ``new_item_frac``.

    Validation new items (``val_new_item_frac``): the newest ``new_item_frac + val_new_item_frac`` of the items are
    held out, and a seeded random ``val_new_item_frac`` of the items among them are the validation new items, the
    rest the new items: both from the same release period, so that the choices about new items (the item-id
    dropout, a new-item weight) made on the meta-train users' interactions with the validation new items
    (``validation_new_item``) are made on items like the new ones, as the validation users are like the new users.
    (Items released just before the new items have had longer to gather interactions and rank differently.)

    Args:
      dataset: the log (implicit, or rated interactions).
      test_frac: the fraction of users that are new users (the ``new_user`` scenario).
      val_frac: the fraction of the other users held out as validation users.
      warm_frac: the fraction of meta-train users whose latest ``warm_holdout`` interactions form the ``warm``
        scenario (0: no warm scenario).
      warm_holdout: the fraction of a warm user's interactions held out (the latest, at least one).
      new_item_frac: the fraction of the interacted items held out as new items (0: no ``new_item`` scenario).
      val_new_item_frac: the fraction of the interacted items held out as validation new items, drawn with the new
        items from the newest (0: none; needs ``new_item_frac``).
      seed: the seed of the user draws and of the order of untimed interactions.

    Returns:
      The :class:`TopNSplit`.

    Raises:
      DataError: if the log has fewer than 3 users, or a fraction is outside ``[0, 1)``.
    """
    fractions = (("test_frac", test_frac), ("val_frac", val_frac), ("warm_frac", warm_frac))
    for name, value in fractions + (("new_item_frac", new_item_frac), ("val_new_item_frac", val_new_item_frac)):
        if not 0.0 <= float(value) < 1.0:
            raise DataError(f"{dataset.name}: {name} must be in [0, 1), got {value!r}")
    if val_new_item_frac > 0 and new_item_frac <= 0:
        raise DataError(
            f"{dataset.name}: val_new_item_frac (--val-item-frac in top-N) holds out validation new items beside the "
            "new items: it needs new_item_frac > 0 (--new-item-frac)"
        )
    frame = dataset.ratings
    users = np.unique(frame["user"].to_numpy())
    if len(users) < 3:
        raise DataError(f"{dataset.source or dataset.name}: {len(users)} user(s); a top-N split needs at least 3")
    rng = np.random.default_rng([seed, 11])
    shuffled = rng.permutation(users)
    n_test = int(round(test_frac * len(users)))
    n_val = int(round(val_frac * (len(users) - n_test)))
    test_users, val_users = shuffled[:n_test], shuffled[n_test : n_test + n_val]
    train_users = shuffled[n_test + n_val :]
    part = np.zeros(dataset.n_users, np.int8)  # 0 train, 1 validation, 2 test
    part[val_users], part[test_users] = 1, 2
    new_items, val_new_items = _newest_items(
        frame, new_item_frac, np.random.default_rng([seed, 13]), validation_fraction=val_new_item_frac
    )
    is_new = np.isin(frame["item"].to_numpy(), new_items)
    is_val_new = np.isin(frame["item"].to_numpy(), val_new_items)
    new_rows, val_new_rows, frame = frame[is_new], frame[is_val_new], frame[~is_new & ~is_val_new]
    row_part = part[frame["user"].to_numpy()]
    train = frame[row_part == 0]
    scenarios = {"new_user": frame[row_part == 2].reset_index(drop=True)}
    warm_rows = np.zeros(len(train), bool)
    if warm_frac > 0 and len(train_users):
        warm_users = rng.permutation(train_users)[: max(1, int(round(warm_frac * len(train_users))))]
        is_warm = np.isin(train["user"].to_numpy(), warm_users)
        rank, total = _time_rank(train, rng)
        held = np.maximum(np.round(warm_holdout * total).astype(np.int64), 1)
        warm_rows = is_warm & (rank >= total - held) & (total >= 2)
        scenarios["warm"] = train[warm_rows].reset_index(drop=True)
    stats = {
        "train_users": len(train_users),
        "validation_users": len(val_users),
        "new_users": len(test_users),
        "train_interactions": int((~warm_rows).sum()),
        "validation_interactions": int((row_part == 1).sum()),
        "new_user_interactions": int((row_part == 2).sum()),
        "warm_held_out": int(warm_rows.sum()),
    }
    validation_new_item = None
    if len(new_items):
        new_train = part[new_rows["user"].to_numpy()] == 0
        scenarios["new_item"] = new_rows[new_train].reset_index(drop=True)
        stats.update(
            new_items=len(new_items),
            new_item_interactions=int(new_train.sum()),
            new_item_dropped=int((~new_train).sum()),
        )
    if len(val_new_items):
        val_train = part[val_new_rows["user"].to_numpy()] == 0
        validation_new_item = val_new_rows[val_train].reset_index(drop=True)
        stats.update(
            validation_new_items=len(val_new_items),
            validation_new_item_interactions=int(val_train.sum()),
            validation_new_item_dropped=int((~val_train).sum()),
        )
    return TopNSplit(
        train=train[~warm_rows].reset_index(drop=True),
        validation=frame[row_part == 1].reset_index(drop=True),
        scenarios=scenarios,
        stats=stats,
        new_items=new_items,
        validation_new_items=val_new_items,
        validation_new_item=validation_new_item,
    )


def _newest_items(
    frame: pd.DataFrame, fraction: float, rng: np.random.Generator, validation_fraction: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The codes of the ``fraction + validation_fraction`` of the interacted items whose first interaction is latest
    (ties and untimed logs in random order), split at random into ``fraction`` and ``validation_fraction`` of the items;
    at least one item each when its fraction is positive, and never every item."""
    none = np.zeros(0, np.int64)
    items = np.unique(frame["item"].to_numpy())
    if fraction <= 0 or len(items) < 2:
        return none, none

    def count(share: float, most: int) -> int:  # at least one item for a positive share
        return min(max(int(round(share * len(items))), 1), most) if share > 0 else 0

    n_new = count(fraction, len(items) - 1)
    n_val = count(validation_fraction, len(items) - 1 - n_new)
    if "timestamp" in frame:
        first = frame.groupby("item")["timestamp"].min().reindex(items).to_numpy()
        order = np.lexsort((rng.random(len(items)), first))
    else:
        order = rng.permutation(len(items))
    newest = items[order[len(items) - n_new - n_val :]]
    if n_val:  # only with validation items: without them the new items are the newest, as they always were
        newest = np.random.default_rng(rng.integers(2**63)).permutation(newest)
    return np.sort(newest[n_val:]).astype(np.int64), np.sort(newest[:n_val]).astype(np.int64)


def warm_frame(train: pd.DataFrame, held_out: pd.DataFrame, shots: int, seed: int = 0) -> pd.DataFrame:
    """The interactions of the warm scenario's tasks: each warm user's ``shots`` latest training interactions (their
    support, ordered first) and their held-out latest ones (their query).

    The returned ``timestamp`` is 0 on the support rows and 1 on the query rows, so that :func:`topn_tasks` puts
    exactly the training interactions in the support. Users with fewer than ``shots`` training interactions are
    left out (counted by the caller as the users the task set lacks).

    Args:
      train: the training interactions (the warm users' earlier ones among them).
      held_out: the warm scenario's held-out interactions.
      shots: support interactions per task.
      seed: the order of untimed interactions.

    Returns:
      ``user, item[, weight], timestamp`` rows.
    """
    users = np.unique(held_out["user"].to_numpy())
    mine = train[np.isin(train["user"].to_numpy(), users)]
    rank, total = _time_rank(mine, np.random.default_rng([seed, 12]))
    support = mine[(rank >= total - shots) & (total >= shots)]
    query = held_out[np.isin(held_out["user"].to_numpy(), np.unique(support["user"].to_numpy()))]
    columns = [c for c in ("user", "item", "weight") if c in train]
    return pd.concat([support[columns].assign(timestamp=0), query[columns].assign(timestamp=1)], ignore_index=True)


def implicit_featurizer(dataset: Dataset, train: pd.DataFrame) -> Featurizer:
    """A :class:`~jaxrec.data.Featurizer` fitted on the training interactions, whose target is a logit.

    Args:
      dataset: the dataset.
      train: the training interactions.

    Returns:
      The featurizer with ``spec.target = "label"`` and no rating range (models start at zero logits).
    """
    feat = Featurizer.fit(dataset, train)
    spec = dataclasses.replace(feat.spec, target="label", rating_range=None)
    return dataclasses.replace(feat, spec=spec)


# ----------------------------------------------------------------------------------------------------------------
# negatives


@dataclasses.dataclass(frozen=True)
class NegativeSampler:
    """Draws items a user has not interacted with (see the module docstring).

    Attributes:
      kind: ``"uniform"`` over the training items or ``"popularity"`` (``q_i`` proportional to the item's number
        of training interactions).
      count: negatives per positive row.
      n_items: the catalogue size (dataset item codes ``0 .. n_items - 1``).
      cdf: the cumulative distribution over item codes.
      logq: ``log q_i`` of every item code, for the logQ correction; an item never drawn (no training interaction:
        a new user's support may hold one) gets the rarest drawn item's, as a positive's ``s - log q`` of
        ``log 0`` would be infinite and its softmax loss NaN.
      interacted: sorted keys ``user * n_items + item`` of the interactions draws must avoid.
      tries: redraws of a draw that hits an interacted item before it is masked out.
    """

    kind: str
    count: int
    n_items: int
    cdf: np.ndarray
    logq: np.ndarray
    interacted: np.ndarray
    tries: int = 8

    @classmethod
    def fit(
        cls,
        train: pd.DataFrame,
        n_items: int,
        *,
        count: int = 20,
        kind: str = "uniform",
        avoid: Sequence[pd.DataFrame] = (),
    ) -> NegativeSampler:
        """Build the sampler of a training log.

        Args:
          train: the training interactions (the distribution ``q`` is over their items).
          n_items: the catalogue size.
          count: negatives per positive row.
          kind: one of :data:`SAMPLERS`.
          avoid: further interaction frames whose pairs draws must avoid (the evaluation users' own).

        Returns:
          The sampler.

        Raises:
          ValueError: if ``kind`` is unknown or ``count`` is not positive.
          DataError: if ``train`` has no interaction.
        """
        if kind not in SAMPLERS:
            raise ValueError(f"unknown negative sampler {kind!r}; choose one of {SAMPLERS}")
        if int(count) < 1:
            raise ValueError(f"negatives must be >= 1, got {count}")
        if len(train) == 0:
            raise DataError("cannot sample negatives: no training interaction")
        counts = np.bincount(train["item"].to_numpy(), minlength=n_items).astype(np.float64)
        weight = counts if kind == "popularity" else (counts > 0).astype(np.float64)
        q = weight / weight.sum()
        drawn = q > 0
        logq = np.full(n_items, np.log(q[drawn].min()), np.float32)
        logq[drawn] = np.log(q[drawn])
        frames = [train, *avoid]
        keys = np.concatenate(
            [f["user"].to_numpy().astype(np.int64) * n_items + f["item"].to_numpy() for f in frames if len(f)]
        )
        return cls(kind, int(count), int(n_items), np.cumsum(q), logq, np.unique(keys))

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``count`` negatives for each entry of ``users``.

        Args:
          users: user codes of any shape (``-1`` = padding: drawn, never checked).
          rng: the generator.

        Returns:
          ``(items, ok)`` of shape ``users.shape + (count,)``: item codes, and false where every try hit an
          interacted item.
        """
        shape = np.shape(users) + (self.count,)
        owner = np.broadcast_to(np.asarray(users, np.int64)[..., None], shape)
        items = self._draw(shape, rng)
        ok = np.ones(shape, bool)
        for _ in range(self.tries):
            keys = owner * self.n_items + items
            pos = np.minimum(np.searchsorted(self.interacted, keys), len(self.interacted) - 1)
            ok = (self.interacted[pos] != keys) | (owner < 0)
            if ok.all():
                break
            items = np.where(ok, items, self._draw(shape, rng))
        return items.astype(np.int32), ok

    def _draw(self, shape: tuple, rng: np.random.Generator) -> np.ndarray:
        u = rng.random(shape) * self.cdf[-1]
        return np.minimum(np.searchsorted(self.cdf, u, side="right"), self.n_items - 1)


# ----------------------------------------------------------------------------------------------------------------
# tasks


@dataclasses.dataclass
class TopNTaskSet:
    """K-shot top-N tasks: a :class:`~jaxrec.data.TaskSet` of interactions whose batches carry sampled negatives.

    The rows of a batch are the positives, with the row keys of the featurizer plus ``weight`` (the confidence
    weight), ``neg_item [rows, N]`` and the negatives' side features, ``neg_mask [rows, N]``, ``logq [rows]`` and
    ``neg_logq [rows, N]`` (see :mod:`jaxrec.core.ranking`). With ``spec.history = L`` every row also carries
    ``history_item [rows, L]``: the task's support items, a support row's own item left out (so that a model
    reading the support set, e.g. :class:`~jaxrec.models.TwoTower` with ``pool_history``, never sees the row it is
    scored on).

    Attributes:
      tasks: the underlying task set (``row_rating`` holds the weights).
      sampler: the :class:`NegativeSampler`.
      negatives_read: whether the losses read the support's and the query's negatives (the inner loss, the query
        loss): a side whose are not read gets none (``neg_mask`` false, zero arrays of the same shapes), and drawing
        them, most of a batch's cost, is saved. A loss over the whole catalogue (the exact ALS loss) reads none.
        The support's are still drawn where the query's are, so that the query's draws are what they would be.
    """

    tasks: TaskSet
    sampler: NegativeSampler
    negatives_read: tuple[bool, bool] = (True, True)

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"TopNTaskSet({self.tasks!r}, {self.sampler.count} negatives a row)"

    @property
    def users(self) -> np.ndarray:
        """The user code of each task."""
        return self.tasks.users

    @property
    def featurizer(self) -> Featurizer:
        """The featurizer of the rows."""
        return self.tasks.featurizer

    @property
    def by(self) -> str:
        """Who a task is: ``"user"`` (top-N tasks are always users)."""
        return self.tasks.by

    @property
    def spec(self) -> FeatureSpec:
        """The feature spec of the rows."""
        return self.tasks.spec

    @property
    def stats(self) -> dict[str, Any]:
        """The counts of the build (tasks, users dropped or subsampled, rows, lengths)."""
        return self.tasks.stats

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The distinct padded ``(support, query)`` lengths."""
        return self.tasks.shapes

    def summary(self, batch_size: int | None = None) -> str:
        """Describe the task set in one line."""
        return self.tasks.summary(batch_size).replace("TaskSet", f"TopNTaskSet({self.sampler.count} negatives)", 1)

    def batch_plan(self, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
        """Plan an epoch's batches (:meth:`~jaxrec.data.TaskSet.batch_plan`)."""
        return self.tasks.batch_plan(batch_size, rng)

    def item_codes(self, task_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The dataset item codes of the given tasks' support and query rows.

        Args:
          task_index: task indices (``-1`` = a padding task).

        Returns:
          ``(support [T, S], query [T, Q])`` item codes, ``-1`` on padding, padded as :meth:`make_batch` pads.
        """
        (support, _), (query, _) = self.tasks.codes(task_index)
        return support["item"], query["item"]

    def make_batch(
        self, task_index: np.ndarray, rng: np.random.Generator | None = None, *, query_negatives: bool = True
    ) -> TaskBatch:
        """Build the batch of the given tasks, negatives drawn with ``rng``.

        Args:
          task_index: task indices; ``-1`` entries become padding tasks.
          rng: the generator of the negatives (default ``default_rng(0)``).
          query_negatives: draw the query rows' negatives too. False for a batch whose query rows only name the
            items to find (the full-catalogue evaluation: a ranker adapts on the support and ranks every item):
            their negatives are then none (``neg_mask`` false, the arrays of the same shapes), which saves most of
            the drawing (the query rows outnumber the support's), and the support's draws are the same, as they
            come first from ``rng``.

        Returns:
          A numpy :class:`~jaxrec.TaskBatch` with ``task_id`` = user code.
        """
        rng = rng or np.random.default_rng(0)
        task_index = np.asarray(task_index)
        sides = self.tasks.codes(task_index)
        users = np.where(task_index >= 0, self.tasks.users[np.maximum(task_index, 0)], -1).astype(np.int32)
        feat, sampler = self.featurizer, self.sampler
        rows = []
        query_drawn = self.negatives_read[1] and query_negatives
        support_drawn = self.negatives_read[0] or query_drawn  # the query's draws follow the support's in ``rng``
        for drawn, (codes, mask) in zip((support_drawn, query_drawn), sides, strict=True):
            side = feat.user_rows(codes["user"])
            side.update(feat.item_rows(codes["item"]))
            side["weight"] = np.where(mask, codes["rating"], 0.0).astype(np.float32)
            owner = np.where(mask, codes["user"], -1)
            if drawn:
                negatives, ok = sampler.sample(owner, rng)
                side.update(feat.item_rows(negatives, prefix="neg_"))
            else:
                negatives = np.zeros(owner.shape + (sampler.count,), np.int32)
                ok = np.zeros(negatives.shape, bool)
                side.update(_rows_like(feat.item_rows(negatives[:1], prefix="neg_"), negatives.shape))
            side["neg_mask"] = ok & mask[..., None]
            side["logq"] = np.where(mask, sampler.logq[np.maximum(codes["item"], 0)], 0.0).astype(np.float32)
            side["neg_logq"] = np.where(side["neg_mask"], sampler.logq[negatives], 0.0).astype(np.float32)
            rows.append(side)
        (s_codes, s_mask), (_, q_mask) = sides
        if self.spec.history:
            rows[0]["history_item"], rows[1]["history_item"] = support_history(
                rows[0]["item"], s_mask, q_mask.shape[1], self.spec.history
            )
        return TaskBatch(support=rows[0], query=rows[1], support_mask=s_mask, query_mask=q_mask, task_id=users)


def _rows_like(rows: dict[str, np.ndarray], shape: tuple) -> dict[str, np.ndarray]:
    """Zero arrays of ``rows``' dtypes whose leading dimensions are ``shape`` (each row's own trailing ones kept)."""
    return {key: np.zeros(shape + value.shape[len(shape) :], value.dtype) for key, value in rows.items()}


def support_history(
    support_items: np.ndarray, support_mask: np.ndarray, query_rows: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``history_item`` of the support and query rows of tasks: each task's support items (vocabulary slots,
    0 = none), a support row's own item left out (a row never sees itself), every support item for a query row.

    Args:
      support_items: ``[T, S]`` the support rows' item slots.
      support_mask: bool ``[T, S]``, false on padding.
      query_rows: ``Q``, the query rows per task.
      length: ``L``, the history length (cut or right-padded with 0).

    Returns:
      ``(support [T, S, L], query [T, Q, L])`` int32.
    """
    items = _pad_history(np.where(support_mask, support_items, 0).astype(np.int32), length)  # [T, L]
    n_support = support_items.shape[1]
    # row r's own slot (within the first L) zeroed: [T, S, L], never [T, S, S] (a user of thousands of items)
    own = np.arange(n_support)[:, None] == np.arange(length)[None, :]  # [S, L]
    support = np.where(own[None], 0, items[:, None, :])
    query = np.broadcast_to(items[:, None, :], (len(items), query_rows, length))
    return support, np.ascontiguousarray(query)


def _pad_history(items: np.ndarray, length: int) -> np.ndarray:
    """``items [..., S]`` cut or right-padded with 0 to ``length``."""
    if items.shape[-1] >= length:
        return items[..., :length]
    pad = np.zeros(items.shape[:-1] + (length - items.shape[-1],), items.dtype)
    return np.concatenate([items, pad], axis=-1)


def topn_tasks(
    interactions: pd.DataFrame,
    featurizer: Featurizer,
    sampler: NegativeSampler,
    *,
    shots: int = 10,
    query: int = 100,
    seed: int | Sequence[int] = 0,
    train: bool = False,
    size_seed: int | None = None,
    history: int = 0,
    order: str = "random",
) -> TopNTaskSet:
    """Build one top-N task per user.

    Evaluation tasks (``train=False``): the user's first ``shots`` interactions (time order where the log has
    timestamps, else seeded random) as support, the next ``query`` ones as query; users with at most ``shots``
    interactions have no query and are counted in ``stats["users_dropped"]``. Meta-train tasks (``train=True``):
    a seeded random ``shots`` of the user's interactions as support and, as query, up to ``query`` others; a user
    with more than ``shots + query`` interactions contributes a random subset of that size (different for every
    ``seed``, the sizes fixed by ``size_seed``), counted in ``stats["users_subsampled"]``; a user with a single
    interaction has no query and is counted as dropped.

    Args:
      interactions: a frame with ``user``, ``item`` (dataset codes), optionally ``weight`` and ``timestamp``.
      featurizer: the featurizer (:func:`implicit_featurizer`).
      sampler: the negative sampler.
      shots: support interactions per task (``K``).
      query: the most query interactions per task.
      seed: the seed of the orders and subsets.
      train: meta-train tasks (random support/query) instead of evaluation tasks (the first ``shots``).
      size_seed: meta-train tasks: the seed of the subsample sizes (default ``seed``).
      history: ``L > 0``: every row carries the task's support items as ``history_item [rows, L]`` (see
        :class:`TopNTaskSet`; ``L = shots`` holds the whole support set).
      order: meta-train tasks: ``"random"`` (a random subset, shuffled) or ``"time"`` (with timestamps: a window of
        ``shots + query`` consecutive interactions at a seeded random position, the support its first ``shots``:
        a support followed by its future, as in evaluation).

    Returns:
      The :class:`TopNTaskSet`.

    Raises:
      ValueError: if ``shots`` or ``query`` is not positive.
      DataError: if a column is missing.
    """
    if int(shots) < 1 or int(query) < 1:
        raise ValueError(f"shots and query must be >= 1, got shots={shots}, query={query}")
    for col in ("user", "item"):
        if col not in interactions:
            raise DataError(f"topn_tasks: interactions have no {col!r} column; the columns are {list(interactions)}")
    frame = pd.DataFrame(
        {
            "user": interactions["user"].to_numpy(),
            "item": interactions["item"].to_numpy(),
            "rating": interactions["weight"].to_numpy() if "weight" in interactions else 1.0,
        }
    )
    if order not in ("random", "time"):
        raise ValueError(f"order must be 'random' or 'time', got {order!r}")
    timed = "timestamp" in interactions and (not train or order == "time")
    if timed:
        frame["timestamp"] = interactions["timestamp"].to_numpy()
    shots, query = int(shots), int(query)
    if train:
        # one support row and the rest as query keeps every user with two interactions or more, each task's rows
        # contiguous; _support_first then moves the support boundary to ``shots``
        window = shots + query
        common = dict(support=1, query=window - 1, seed=seed, support_buckets=(1,), query_buckets=(window - 1,))
        if timed:
            # a window of shots + query consecutive interactions at a seeded random position of each user's
            # history: the support is followed by its future, as in an evaluation task
            rank, total = _time_rank(frame, np.random.default_rng(seed))
            users = frame["user"].to_numpy()
            offset_of_user = np.random.default_rng([*np.ravel(seed), 13]).random(int(users.max()) + 1)
            first = np.floor(offset_of_user[users] * np.maximum(total - window + 1, 1)).astype(np.int64)
            in_window = (rank >= first) & (rank < first + window)
            tasks = build_tasks(frame[in_window], featurizer, "kshot", order="time", history=history, **common)
            tasks.stats["users_subsampled"] = int(np.unique(users[total > window]).size)
        else:
            tasks = build_tasks(
                frame,
                featurizer,
                "kshot",
                order="random",
                subsample=(window, window),
                subsample_seed=size_seed,
                history=history,
                **common,
            )
        tasks = _support_first(tasks, shots, query)
    else:
        tasks = build_tasks(
            frame,
            featurizer,
            "kshot",
            support=shots,
            query=query,
            seed=seed,
            order="time" if timed else "random",
            support_buckets=(shots,),
            query_buckets=(query,),
            history=history,
        )
    return TopNTaskSet(tasks, sampler)


def _support_first(tasks: TaskSet, shots: int, query: int) -> TaskSet:
    """Re-cut each task's rows: the first ``min(shots, n - 1)`` of its (shuffled) rows as support, the rest as
    query (at most ``query``). The rows of a task are contiguous: support then query."""
    start = tasks.support_start
    n = tasks.support_len.astype(np.int64) + tasks.query_len  # the task's rows: one support row, then query
    s_len = np.minimum(shots, n - 1)
    q_len = np.minimum(n - s_len, query)
    keep = (s_len >= 1) & (q_len >= 1)
    stats = dict(tasks.stats)
    stats["users_dropped"] = int(stats.get("users_dropped", 0) + (~keep).sum())
    stats["tasks"] = int(keep.sum())
    stats["rows"] = int(s_len[keep].sum() + q_len[keep].sum())
    stats["support_len"], stats["query_len"] = _describe(s_len[keep]), _describe(q_len[keep])
    return dataclasses.replace(
        tasks,
        users=tasks.users[keep],
        support_start=start[keep],
        support_len=s_len[keep].astype(np.int32),
        query_start=(start + s_len)[keep],
        query_len=q_len[keep].astype(np.int32),
        support_pad=np.full(int(keep.sum()), shots, np.int32),
        query_pad=np.full(int(keep.sum()), query, np.int32),
        split="topn-train",
        stats=stats,
    )
