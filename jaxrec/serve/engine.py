"""Adapt-and-rank for a batch of new users in one compiled call, for a few padded shape buckets.

A request is one new user's few ratings (or interactions). :class:`ServingModel` pads a batch of them to a
``(batch, support)`` bucket, adapts the meta-learned model to every user at once (``vmap`` of the run's inner loop,
first order: nothing differentiates through it at serving time), scores the whole catalogue, removes each user's
own items and keeps the best ``max_k`` with ``lax.top_k``; the scores of up to ``max_probe`` named items come back
with them (``/predict``). A run trained with ``--hybrid`` ranks by its hybrid, as its evaluation did
(:mod:`jaxrec.experiment.hybrid_record`): the partner's scores are computed on the host and combined inside the
compiled call. A run trained with ``--rerank`` lists as its evaluated ``rerank`` method did
(:mod:`jaxrec.experiment.reranker_record`): a second compiled call re-scores each user's top ``R`` items (and the
probed ones) by the re-ranker adapted to the same support. Every bucket is compiled by
:meth:`ServingModel.warm_up` before the first request, so a request never waits on XLA; the compiled function's
cache size is reported so that this is checked, not assumed.

With more than one device (on a CPU host: one per core), a batch whose bucket divides among them is sharded over
its user axis; the parameters are replicated.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxrec.evaluation.topn import exclude_items
from jaxrec.experiment.recommend import padded, recommender_for
from jaxrec.scale.sharding import make_mesh

__all__ = ["Bucket", "Ranked", "ServingModel", "UserInput"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class UserInput:
    """One user's request, already validated: item codes, their ratings or weights, and what to return.

    Attributes:
      codes: int item codes of the user's items (known items only, no duplicates).
      values: their ratings (explicit) or weights (implicit).
      k: how many recommendations.
      probe: item codes whose scores to return (``/predict``), or empty.
      seen: codes of other items the user has (rated below a top-N run's positive threshold): not adapted to, left
        out of the list as ``codes`` are.
      user_slots: the user's side-feature slots (:func:`~jaxrec.experiment.recommend.user_slots`), or None (the
        unknown value of each).
    """

    codes: np.ndarray
    values: np.ndarray
    k: int = 10
    probe: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    seen: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    user_slots: dict | None = None


@dataclasses.dataclass(frozen=True)
class Ranked:
    """The answer for one user: the top-k codes and scores (best first), the probed items' scores, and whether
    the model's scores were finite (a support whose values overflow float32 makes them inf or nan)."""

    codes: np.ndarray
    scores: np.ndarray
    probe_scores: np.ndarray
    finite: bool = True


@dataclasses.dataclass(frozen=True)
class Bucket:
    """A padded shape: ``batch`` users of at most ``support`` items each."""

    batch: int
    support: int


class ServingModel:
    """A trained model served: batched adapt-and-rank, compiled once per shape bucket.

    Args:
      trained: the :class:`~jaxrec.experiment.trained.TrainedModel` (explicit or top-N run).
      batch_sizes: the batch buckets (users per compiled call); the largest is the micro-batch limit.
      support_sizes: the support buckets (items per user); the largest is the most a request may send.
      max_k: the most recommendations a request may ask for.
      max_probe: the most items a ``/predict`` request may score.
      devices: how many devices to shard the user axis over (default: all of them).
      exclude: codes of items never to recommend (out of stock, withdrawn): left out of every list inside the
        compiled call, still scored by ``/predict``.

    Attributes:
      trained: the model.
      recommender: its :class:`~jaxrec.experiment.recommend.Recommender` or ``TopNRecommender``.
      buckets: every compiled :class:`Bucket`.
      n_items: the catalogue size.
      excluded: ``[n_items]`` bool, the items never recommended.
    """

    def __init__(
        self,
        trained,
        batch_sizes: Sequence[int] = (1, 8, 64),
        support_sizes: Sequence[int] = (16, 64, 256),
        max_k: int = 100,
        max_probe: int = 100,
        devices: int | None = None,
        exclude: Sequence[int] = (),
    ):
        self.trained = trained
        self.recommender = recommender_for(trained)
        self.hybrid = getattr(self.recommender, "hybrid", None)
        self.reranker = getattr(self.recommender, "reranker", None)
        self.n_items = int(trained.featurizer.n_items)
        least = self.recommender.min_support()
        self.batch_sizes = tuple(sorted({int(b) for b in batch_sizes}))
        self.support_sizes = tuple(sorted({max(int(s), least) for s in support_sizes}))
        if not self.batch_sizes or self.batch_sizes[0] < 1 or not self.support_sizes or self.support_sizes[0] < 1:
            raise ValueError(f"bucket sizes must be >= 1, got {batch_sizes} and {support_sizes}")
        self.max_k = max(1, min(int(max_k), self.n_items))
        # the recall stage's list length: the re-ranker's candidates, else the list itself
        self._recall = self.recommender.rerank_candidates if self.reranker is not None else self.max_k
        self.max_k = min(self.max_k, self._recall)
        self.max_probe = max(1, int(max_probe))
        self.buckets = [Bucket(b, s) for b in self.batch_sizes for s in self.support_sizes]
        exclude = np.asarray(exclude, np.int64).ravel()
        outside = exclude[(exclude < 0) | (exclude >= self.n_items)]
        if outside.size:
            raise ValueError(f"exclude holds codes outside 0 to {self.n_items - 1}: {outside[:5].tolist()}")
        self.excluded = np.zeros(self.n_items, bool)
        self.excluded[exclude] = True
        self._open = self.n_items - int(self.excluded.sum())  # the items a list may hold before a user's own
        n_devices = jax.device_count() if devices is None else int(devices)
        self.mesh = make_mesh(n_devices) if n_devices > 1 else None
        self._lock = threading.Lock()  # one compiled call at a time: the batcher's worker, a benchmark, a test
        self._state = self.recommender.state
        self._candidates = self.recommender.candidates
        self._excluded = jnp.asarray(self.excluded)
        self._rerank_state = self._item_rows = None
        if self.reranker is not None:
            self._rerank_state, self._item_rows = self.recommender.rerank_state, self.recommender.item_rows
        if self.mesh is not None:
            replicated = NamedSharding(self.mesh, PartitionSpec())
            self._state = jax.device_put(self._state, replicated)
            self._candidates = jax.device_put(self._candidates, replicated)
            self._excluded = jax.device_put(self._excluded, replicated)
            if self.reranker is not None:
                self._rerank_state = jax.device_put(self._rerank_state, replicated)
                self._item_rows = jax.device_put(self._item_rows, replicated)
        self._rank = jax.jit(self._rank_batch)
        # two compiled calls, not one fused: XLA's CPU runtime stalled on the fused retrieve-and-re-rank program
        self._rerank = jax.jit(self._rerank_batch)

    # ---------------------------------------------------------------------------------------------------------
    # the compiled call

    def _rank_batch(self, state, candidates, excluded, support, mask, codes, seen, probe, partner=None):
        """``(top scores [B, max_k], top codes [B, max_k], probe scores [B, P], finite [B])`` of a padded batch of
        users: ``codes [B, S]`` their support's items, ``seen [B, S]`` other items they have (-1 = none), both left
        out of the list, as the ``excluded [V]`` items are out of every list; with a hybrid, ``partner [B, V]``
        holds its partner's scores and the hybrid's rank (and are returned)."""
        scores = jax.vmap(self.recommender.score_one, in_axes=(None, 0, 0, None))(state, support, mask, candidates)
        scores = scores.astype(jnp.float32)
        own = jnp.where(mask, codes, -1)
        theirs = jnp.concatenate([own, seen], axis=1)
        users = jnp.arange(scores.shape[0])[:, None]
        listed = (
            jnp.ones(scores.shape, bool).at[users, jnp.where(theirs >= 0, theirs, self.n_items)].set(False, mode="drop")
        ) & ~excluded
        if partner is not None:  # z(model) + w z(partner) over the items but the support's, as the library ranks
            scores = self.hybrid.combine(scores, partner, own)
        finite = jnp.all(jnp.isfinite(scores) | ~listed, axis=1)  # overflowing weights: inf or nan scores
        catalogue = jnp.arange(self.n_items, dtype=jnp.int32)
        unseen = exclude_items(scores, catalogue, theirs)  # each user's own items at -inf
        unseen = jnp.where(excluded, -jnp.inf, unseen)
        top_scores, top_codes = jax.lax.top_k(unseen, self._recall)
        probe_scores = jnp.take_along_axis(scores, jnp.clip(probe, 0, self.n_items - 1), axis=1)
        scale = getattr(self.recommender, "rating_range", None)
        if scale is not None:  # ranked by the model's scores; each a predicted rating on the scale, as MAE reads it
            top_scores, probe_scores = (jnp.clip(x, *scale) for x in (top_scores, probe_scores))
        return top_scores, top_codes, probe_scores, finite

    def _rerank_batch(self, state, rows, support, mask, recall_scores, recall_codes, probe):
        """The re-ranked ``(top scores [B, max_k], top codes [B, max_k], probe scores [B, P], finite [B])``: the
        re-ranker, adapted to each user's support, scores their recall stage's ``R`` items (``-inf`` in
        ``recall_scores``: none, their own or excluded) and the probed ones, in one pass; the best ``max_k``
        candidates by its scores, ties in the recall stage's order (``lax.top_k`` keeps the first)."""
        items = jnp.concatenate([recall_codes, probe], axis=1)
        scores = jax.vmap(self.recommender.rerank_one, in_axes=(None, 0, 0, None, 0))(state, support, mask, rows, items)
        scores = scores.astype(jnp.float32)
        width = recall_codes.shape[1]
        listed = recall_scores > -jnp.inf
        candidates = jnp.where(listed & ~jnp.isnan(scores[:, :width]), scores[:, :width], -jnp.inf)
        finite = jnp.all(jnp.isfinite(scores[:, :width]) | ~listed, axis=1)
        top_scores, position = jax.lax.top_k(candidates, self.max_k)
        return top_scores, jnp.take_along_axis(recall_codes, position, axis=1), scores[:, width:], finite

    def bucket_for(self, users: int, support: int) -> Bucket:
        """The smallest bucket that holds ``users`` users of ``support`` items.

        Raises:
          ValueError: if no bucket is large enough.
        """
        batch = next((b for b in self.batch_sizes if b >= users), None)
        size = next((s for s in self.support_sizes if s >= support), None)
        if batch is None or size is None:
            raise ValueError(
                f"{users} user(s) of {support} item(s) exceed the largest bucket "
                f"({self.batch_sizes[-1]} users of {self.support_sizes[-1]} items)"
            )
        return Bucket(batch, size)

    def _inputs(self, users: Sequence[UserInput], bucket: Bucket):
        """The padded device inputs of a batch (absent users are empty supports, their answers dropped)."""
        empty = [np.zeros(0, np.int64)] * (bucket.batch - len(users))
        items, values, mask = padded(
            [u.codes for u in users] + empty, [u.values for u in users] + empty, bucket.support
        )
        slots = [u.user_slots for u in users] + [None] * len(empty)
        support, mask = self.recommender.supports(items, values, mask, slots)
        probes = [u.probe for u in users] + empty
        probe = np.maximum(padded(probes, probes, self.max_probe)[0], 0).astype(np.int32)
        codes = np.where(mask, items, 0).astype(np.int32)
        seen = [u.seen for u in users] + empty
        seen = padded(seen, seen, bucket.support)[0].astype(np.int32)
        # the hybrid's partner is a scipy model: its scores are computed here, on the host, and enter the call
        partner = None if self.hybrid is None else self.hybrid.partner_scores(items, mask, values)
        inputs = (support, mask, codes, seen, probe, partner)
        if self.mesh is None:
            return jax.device_put(inputs)
        split = bucket.batch % self.mesh.size == 0  # else every device computes the small batch whole
        spec = PartitionSpec(self.mesh.axis_names[0]) if split else PartitionSpec()
        return jax.device_put(inputs, NamedSharding(self.mesh, spec))

    def rank(self, users: Sequence[UserInput]) -> list[Ranked]:
        """Adapt to each user and rank the catalogue, in one compiled call (or one per largest batch).

        Args:
          users: the validated requests (at most the largest batch bucket per call is best; more are split).

        Returns:
          One :class:`Ranked` per user, in order.
        """
        out: list[Ranked] = []
        largest = self.batch_sizes[-1]
        for start in range(0, len(users), largest):
            chunk = list(users[start : start + largest])
            # a user's items rated below the threshold are excluded beside their support: the bucket holds either
            bucket = self.bucket_for(len(chunk), max((max(len(u.codes), len(u.seen)) for u in chunk), default=0))
            inputs = self._inputs(chunk, bucket)
            with self._lock:
                top, codes, probe, finite = self._call(inputs)
            for i, user in enumerate(chunk):
                theirs = np.union1d(user.codes, user.seen).astype(np.int64)
                k = min(user.k, self._open - int(np.count_nonzero(~self.excluded[theirs])))
                answer = Ranked(codes[i, :k].astype(np.int64), top[i, :k], probe[i, : len(user.probe)], bool(finite[i]))
                out.append(answer)
        return out

    def _call(self, inputs) -> tuple[np.ndarray, ...]:
        """The compiled call (or the two of a re-ranking run) on a batch's device inputs, on the host."""
        top, codes, probe, finite = self._rank(self._state, self._candidates, self._excluded, *inputs)
        if self.reranker is not None:
            support, mask, _, _, probe_codes, _ = inputs
            top, codes, probe, refinite = self._rerank(
                self._rerank_state, self._item_rows, support, mask, top, codes, probe_codes
            )
            finite = finite & refinite
        return jax.device_get((top, codes, probe, finite))

    def warm_up(self) -> float:
        """Compile every bucket (and run it once); returns the seconds it took."""
        started = time.perf_counter()
        for bucket in self.buckets:
            users = [UserInput(np.zeros(0, np.int64), np.zeros(0, np.float32))] * bucket.batch
            inputs = self._inputs(users, bucket)
            with self._lock:
                self._call(inputs)
        seconds = time.perf_counter() - started
        logger.info("compiled %d shape bucket(s) in %.1f s", len(self.buckets), seconds)
        return seconds

    def compiled_shapes(self) -> int:
        """How many shapes a compiled function holds (after :meth:`warm_up`: one per bucket, and no more)."""
        shapes = int(self._rank._cache_size())
        if self.reranker is not None:  # its second call is compiled once per bucket too
            shapes = max(shapes, int(self._rerank._cache_size()))
        return shapes
