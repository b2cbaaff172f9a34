"""Top-N evaluation over the whole catalogue.

For every test user: adapt on the support interactions, score **every item** of the catalogue except the
support items, keep the top ``k`` with :func:`jax.lax.top_k`, and compare the list with the user's query
interactions (what they did next). Nothing is sampled: the sampled protocol (each positive against 100 sampled
negatives) ranks methods inconsistently with the full ranking (Krichene & Rendle, KDD 2020) and is offered only
beside it, labelled as biased (``sampled_hr@k``: :func:`evaluate_rankers` with ``scorers``, drawn by
:func:`sampled_negatives`, counted by :func:`sampled_statistics`).

Scoring is batched over users and streamed over the catalogue in chunks of ``C`` items (a ``lax.scan``): each
chunk's scores ``[U, C]`` are merged into a running top ``k``, so memory is ``O(U (C + k))`` whatever the
catalogue size ``V`` (a million items fits). A *ranker* maps ``(state, batch, exclude, catalogue)`` to the top
``k`` item codes ``[U, k]``; the meta-learned model is one (:func:`model_ranker`, or :func:`dot_ranker` for a
two-tower model, whose item vectors are computed once per chunk and scored by one matrix product), a baseline of
:mod:`jaxrec.evaluation.retrieval_baselines` another (:func:`dense_topk`), and :func:`rerank_ranker` chains a
retriever with an expressive re-ranking model adapted to the same support set.

Metrics per user, with ``R`` the user's query items (``|R| >= 1``), ``h_j = 1`` when the item at 0-based position
``j`` of the list is in ``R``:

* ``recall@k = sum_{j<k} h_j / |R|``;
* ``ndcg@k = sum_{j<k} h_j / log2(j + 2) / IDCG``, binary gain, ``IDCG = sum_{j < min(k, |R|)} 1 / log2(j + 2)``;
* ``hr@k = max_{j<k} h_j``; ``mrr@k = max_{j<k} h_j / (j + 1)``;
* ``pop@k``: the mean popularity of the ``k`` items recommended (the fraction of training users who interacted
  with each), a measure of novelty (lower is more novel);

each a mean over users, with the percentile bootstrap and paired intervals of :mod:`jaxrec.evaluation.metrics`.
``coverage@k`` (the fraction of the catalogue that appears in some user's top ``k``) is a catalogue-level figure.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxrec.core.batch import zero_padding
from jaxrec.core.inner import InnerLoop, adapt
from jaxrec.core.params import path_names
from jaxrec.evaluation.compare import compare_stats

__all__ = [
    "Catalogue",
    "candidate_topk",
    "coverage",
    "dense_topk",
    "dot_ranker",
    "evaluate_rankers",
    "exclude_items",
    "model_ranker",
    "RankerEvaluation",
    "rerank_ranker",
    "SampledRows",
    "streaming_topk",
    "topn_statistics",
    "user_orders",
    "model_scorer",
    "recency_weights",
    "fold_in_weights",
    "sampled_negatives",
    "sampled_statistics",
]

logger = logging.getLogger(__name__)

_NEG = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Every item, as model rows, chunked for streaming.

    Attributes:
      rows: the item row keys of every item code, ``[chunks, C, ...]`` (padding entries: code -1).
      codes: int32 ``[chunks, C]`` item codes, ``-1`` on padding.
      popularity: float32 ``[V]``: the fraction of training users who interacted with each item.
      n_items: ``V``.
    """

    rows: dict[str, np.ndarray]
    codes: np.ndarray
    popularity: np.ndarray
    n_items: int

    @classmethod
    def build(cls, featurizer: Any, popularity: np.ndarray, chunk: int = 8192) -> Catalogue:
        """Chunk the catalogue of a featurizer.

        Args:
          featurizer: the :class:`~jaxrec.data.Featurizer` (its ``item_rows`` of item codes).
          popularity: ``[V]`` the items' popularity.
          chunk: items per chunk (the last chunk padded).

        Returns:
          The catalogue.

        Raises:
          ValueError: if the catalogue has fewer than two items or ``chunk`` is not positive.
        """
        n = int(featurizer.n_items)
        if n < 2:
            raise ValueError(f"a catalogue of {n} item(s): top-N recommendation needs at least two items")
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        chunk = min(int(chunk), n)
        n_chunks = -(-n // chunk)
        codes = np.full(n_chunks * chunk, -1, np.int32)
        codes[:n] = np.arange(n, dtype=np.int32)
        rows = featurizer.item_rows(codes)
        rows = {k: v.reshape((n_chunks, chunk) + v.shape[1:]) for k, v in rows.items()}
        return cls(rows, codes.reshape(n_chunks, chunk), np.asarray(popularity, np.float32), n)

    def device(self) -> tuple[dict, jax.Array]:
        """The chunked rows and codes as device arrays (once per evaluation, not per batch)."""
        return jax.device_put(self.rows), jax.device_put(self.codes)


def exclude_items(scores: jax.Array, codes: jax.Array, exclude: jax.Array) -> jax.Array:
    """``scores [U, C]`` of the chunk's item ``codes [C]`` at -inf on padding and on each user's ``exclude [U, E]``
    items (``-1`` = none): a scatter at the excluded positions, O(U E), not a comparison of every pair.

    A NaN score is no score: -inf too, so the item is not listed (``top_k`` puts NaN first, where the list would
    then hold a hole and lose an item)."""
    scores = jnp.where(jnp.isnan(scores), _NEG, scores)
    start = codes[0]
    width = codes.shape[0]
    offset = exclude - start
    inside = (exclude >= 0) & (offset >= 0) & (offset < width)
    index = jnp.where(inside, offset, width)  # out of range: dropped by the scatter
    users = jnp.arange(scores.shape[0])[:, None]
    scores = scores.at[users, index].set(_NEG, mode="drop")
    return jnp.where(codes[None, :] >= 0, scores, _NEG)


def streaming_topk(
    chunk_scores: Callable[[Mapping[str, jax.Array]], jax.Array],
    catalogue_rows: Mapping[str, jax.Array],
    catalogue_codes: jax.Array,
    exclude: jax.Array,
    k: int,
) -> tuple[jax.Array, jax.Array]:
    """The top ``k`` items of every user over a chunked catalogue, merging chunk by chunk.

    Args:
      chunk_scores: ``chunk_scores(item_rows [C, ...]) -> [U, C]`` the users' scores of one chunk.
      catalogue_rows: the chunked item rows ``[chunks, C, ...]``.
      catalogue_codes: int32 ``[chunks, C]`` item codes (``-1`` = padding, never recommended; chunks must hold
        consecutive codes).
      exclude: int32 ``[U, E]`` items never recommended to each user (their support items; ``-1`` = none).
      k: the list length.

    Returns:
      ``(scores [U, k], items [U, k])``, best first; items ``-1`` where fewer than ``k`` items were eligible.
    """
    n_users = exclude.shape[0]
    k = int(k)

    def step(carry, chunk):
        best_scores, best_items = carry
        rows, codes = chunk
        scores = exclude_items(chunk_scores(rows).astype(jnp.float32), codes, exclude)
        width = min(k, codes.shape[0])
        top_scores, top_pos = jax.lax.top_k(scores, width)
        merged_scores = jnp.concatenate([best_scores, top_scores], axis=1)
        merged_items = jnp.concatenate([best_items, jnp.take(codes, top_pos)], axis=1)
        keep_scores, keep_pos = jax.lax.top_k(merged_scores, k)
        return (keep_scores, jnp.take_along_axis(merged_items, keep_pos, axis=1)), None

    init = (jnp.full((n_users, k), _NEG, jnp.float32), jnp.full((n_users, k), -1, jnp.int32))
    (scores, items), _ = jax.lax.scan(step, init, (dict(catalogue_rows), catalogue_codes))
    return scores, jnp.where(scores > _NEG, items, -1)


def dense_topk(scores: jax.Array, exclude: jax.Array, k: int, order: jax.Array | None = None) -> jax.Array:
    """The top ``k`` of dense scores ``[U, V]`` (a baseline's), excluding each user's ``exclude [U, E]`` items.

    Args:
      scores: ``[U, V]`` scores of every item.
      exclude: int32 ``[U, E]`` excluded items (``-1`` = none).
      k: the list length.
      order: int32 ``[U, V]``, each row a permutation of the item codes (:func:`user_orders`): tied scores fall in
        this order. None: by item code (``top_k`` keeps the first of ties), which on a catalogue coded by
        popularity or release favours some items in every list.

    Returns:
      int32 ``[U, k]`` item codes, best first (``-1`` where fewer than ``k`` were eligible, and past the catalogue's
      size when ``k > V``).
    """
    codes = jnp.arange(scores.shape[1], dtype=jnp.int32)
    masked = exclude_items(jnp.asarray(scores, jnp.float32), codes, exclude)
    if order is not None:
        masked = jnp.take_along_axis(masked, order, axis=1)
    width = min(int(k), scores.shape[1])  # a cut-off past a small catalogue: the whole catalogue, then padding
    top, items = jax.lax.top_k(masked, width)
    if order is not None:
        items = jnp.take_along_axis(order, items, axis=1)
    items = jnp.where(top > _NEG, items.astype(jnp.int32), -1)
    return jnp.pad(items, ((0, 0), (0, int(k) - width)), constant_values=-1)


def user_orders(key: jax.Array, users: jax.Array, items: jax.Array) -> jax.Array:
    """Each user's own random order of ``items [M]``, ``[U, M]``: the same for a user in every evaluation and for
    every method (the permutation drawn from ``fold_in(key, user)``), so that ties between items fall at random per
    user and not by item code, nor in one order shared by every user (one lucky or unlucky draw for all)."""
    return jax.vmap(lambda u: jax.random.permutation(jax.random.fold_in(key, u), items))(jnp.asarray(users))


def topn_statistics(
    items: jax.Array, targets: jax.Array, popularity: jax.Array, ks: Sequence[int]
) -> dict[str, jax.Array]:
    """Per-user top-N statistics of the recommended lists (see the module docstring).

    Args:
      items: int32 ``[U, K]`` recommended item codes, best first (``-1`` = none), ``K >= max(ks)``.
      targets: int32 ``[U, Q]`` each user's query items (``-1`` = padding).
      popularity: ``[V]`` item popularity.
      ks: the cut-offs.

    Returns:
      ``{"n": [U]`` query items, and for each ``k``: ``recall@k``, ``ndcg@k``, ``hr@k``, ``mrr@k``, ``pop@k``
      with their weights ``<metric>/w`` (1 for a user with a query item, else 0)``}``.
    """
    items = jnp.asarray(items)
    targets = jnp.asarray(targets)
    hits = jnp.any((items[:, :, None] == targets[:, None, :]) & (targets[:, None, :] >= 0), axis=2)
    hits = hits & (items >= 0)
    n_rel = jnp.sum(targets >= 0, axis=1).astype(jnp.float32)
    weight = (n_rel > 0).astype(jnp.float32)
    positions = jnp.arange(items.shape[1])
    discount = 1.0 / jnp.log2(positions + 2.0)
    pop = jnp.where(items >= 0, jnp.take(jnp.asarray(popularity), jnp.maximum(items, 0)), 0.0)
    out = {"n": n_rel}
    for k in ks:
        h = jnp.where(positions[None, :] < k, hits, False).astype(jnp.float32)
        ideal = jnp.sum(jnp.where(positions[None, :] < jnp.minimum(k, n_rel)[:, None], discount, 0.0), axis=1)
        listed = jnp.sum((items >= 0) & (positions[None, :] < k), axis=1)
        out[f"recall@{k}"] = jnp.sum(h, axis=1) / jnp.maximum(n_rel, 1.0)
        out[f"ndcg@{k}"] = jnp.sum(h * discount, axis=1) / jnp.maximum(ideal, 1e-12)
        out[f"hr@{k}"] = jnp.max(h, axis=1)
        out[f"mrr@{k}"] = jnp.max(h / (positions + 1.0), axis=1)
        out[f"pop@{k}"] = jnp.sum(jnp.where(positions[None, :] < k, pop, 0.0), axis=1) / jnp.maximum(listed, 1)
        for name in ("recall", "ndcg", "hr", "mrr", "pop"):
            out[f"{name}@{k}/w"] = weight
    return out


# each batch's statistics as one compiled program (op by op, a batch's hundred small operations were dispatched, and
# the first time compiled, one by one, for every ranker)
_compiled_topn_statistics = jax.jit(topn_statistics, static_argnames="ks")


def coverage(items: np.ndarray, n_items: int, k: int) -> float:
    """The fraction of the catalogue recommended to at least one user in the top ``k``.

    Args:
      items: ``[U, K]`` recommended item codes (``-1`` = none).
      n_items: the catalogue size.
      k: the cut-off.

    Returns:
      The coverage in ``[0, 1]``.
    """
    top = np.asarray(items)[:, :k]
    return float(len(np.unique(top[top >= 0])) / max(int(n_items), 1))


def recency_weights(mask: np.ndarray, strength: float, span: int | None = None) -> np.ndarray:
    """The weights of users' support interactions by their order, the oldest first: the newest weighs most, each
    one step older ``exp(-strength / (span - 1))`` times less.

    A new user's support is their first interactions and the query those that follow, so the newest of the support
    is the nearest the future. Without ``span`` each user's ``n`` weights are scaled to mean 1 (``exp(strength j /
    (n - 1))`` for the ``j``-th); with ``span`` (the ``shots`` of evaluation) an interaction's weight depends on its
    age alone, scaled so that a support of ``span`` items has mean 1: a support of ``span`` items is weighed as
    without it, and a longer or shorter one (a request to the service) gets the weights of its items' ages, not a
    spread stretched to its length. ``strength = 0`` weighs all alike (ones), as every fold-in did before.

    Args:
      mask: bool ``[U, S]``, the real support rows, the first ``n`` of each user in time order.
      strength: ``tau >= 0``.
      span: the support size the strength was chosen for, or None.

    Returns:
      float32 ``[U, S]`` (0 on padding).

    Raises:
      ValueError: if ``strength`` is negative or not finite, or ``span`` is below 1.
    """
    if not (np.isfinite(strength) and strength >= 0):
        raise ValueError(f"the recency strength must be a finite number >= 0, got {strength!r}")
    mask = np.asarray(mask, bool)
    n = mask.sum(axis=1, keepdims=True)
    age = (n - 1) - np.arange(mask.shape[1])[None, :]  # 0 for a user's newest, growing to the oldest
    if span is None:
        raw = np.where(mask, np.exp(-float(strength) * age / np.maximum(n - 1, 1)), 0.0)
        return (raw * n / np.maximum(raw.sum(axis=1, keepdims=True), 1e-30)).astype(np.float32)
    if int(span) < 1:
        raise ValueError(f"span must be >= 1, got {span!r}")
    step = float(strength) / max(int(span) - 1, 1)
    scale = int(span) / np.exp(-step * np.arange(int(span))).sum()  # a support of `span` items has mean 1
    return np.where(mask, scale * np.exp(-step * np.maximum(age, 0)), 0.0).astype(np.float32)


def fold_in_weights(
    mask: np.ndarray, weights: np.ndarray | None = None, recency: float = 0.0, span: int | None = None
) -> np.ndarray | None:
    """The weight of each support item in a baseline's fold-in: its interaction's weight (a play count, a
    confidence), times :func:`recency_weights` of strength ``recency`` where it is not 0.

    A baseline folds in a new user's support with the weights the meta-learner adapts on, as it was fitted on the
    weighted interactions: the same information for every method.

    Args:
      mask: bool ``[U, S]``, the real support rows (in time order where ``recency`` is used).
      weights: ``[U, S]`` the interactions' weights, or None (each 1).
      recency: the recency strength (0: none).
      span: the support size the strength was chosen for (:func:`recency_weights`).

    Returns:
      float ``[U, S]`` (0 on padding), or None when every item weighs 1 (``support_matrix``'s default: the same
      scores, to the bit).
    """
    mask = np.asarray(mask, bool)
    out = None
    if weights is not None:
        weights = np.where(mask, np.asarray(weights, np.float64), 0.0)
        out = None if np.all(weights[mask] == 1.0) else weights
    if recency:
        ordered = recency_weights(mask, recency, span)
        out = ordered if out is None else out * ordered
    return out


def sampled_statistics(
    positive_scores: jax.Array, negative_scores: jax.Array, mask: jax.Array, ks: Sequence[int]
) -> dict[str, jax.Array]:
    """The sampled protocol, **biased** (Krichene & Rendle, KDD 2020): each query positive ranked against its own
    sampled negatives (e.g. 100); ``hr@k`` is the fraction of positives ranked in the top ``k`` of their list, a
    positive tied with negatives placed among them in a uniformly random order (its expected hit).

    It is cheap and common in papers (NCF, MeLU's toolkits), and it does not rank methods as the full-catalogue
    ranking does; use it only to compare with such papers.

    Args:
      positive_scores: ``[U, Q]`` the query positives' scores.
      negative_scores: ``[U, Q, N]`` the scores of each positive's sampled negatives.
      mask: bool ``[U, Q]`` real positives.
      ks: the cut-offs.

    Returns:
      ``{"n": [U], "sampled_hr@k": [U], "sampled_hr@k/w": [U]}`` for each ``k``.
    """
    higher = jnp.sum(negative_scores > positive_scores[..., None], axis=-1)
    tied = jnp.sum(negative_scores == positive_scores[..., None], axis=-1)
    n = jnp.sum(mask, axis=1).astype(jnp.float32)
    out = {"n": n}
    for k in ks:
        # ties broken in a random order: the positive lands at higher + U{0..tied}, so a constant scorer is not
        # credited with a hit at every k (counting only the higher negatives did)
        chance = jnp.clip(k - higher, 0, tied + 1) / (tied + 1)
        hit = jnp.where(mask, chance, 0.0).astype(jnp.float32)
        out[f"sampled_hr@{k}"] = jnp.sum(hit, axis=1) / jnp.maximum(n, 1.0)
        out[f"sampled_hr@{k}/w"] = (n > 0).astype(jnp.float32)
    return out


_compiled_sampled_statistics = jax.jit(sampled_statistics, static_argnames="ks")


# ----------------------------------------------------------------------------------------------------------------
# rankers


def _user_rows(support: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The user keys of a task (``user``, ``user_<field>``, ``history_<key>``), read from its first support row."""
    return {k: v[0] for k, v in support.items() if k == "user" or k.startswith(("user_", "history_"))}


def _adapted(state: Any, batch: Any, inner: InnerLoop) -> Any:
    params, inner_lr = state
    inner = inner.replace(order="first", remat=False)

    def one(support, mask):
        return adapt(params, support, mask, inner, inner_lr=inner_lr)

    return jax.vmap(one)(batch.support, batch.support_mask)


def model_ranker(apply_fn: Callable, inner: InnerLoop, k: int) -> Callable:
    """The ranker of any model: adapt per user, then score each chunk with ``apply_fn`` on the user's keys
    broadcast over the chunk's items (``vmap`` over users).

    Args:
      apply_fn: ``apply_fn(params, rows) -> scores [rows]``.
      inner: the inner loop of the adaptation (``steps=0``: the model as it is).
      k: the list length.

    Returns:
      ``rank(state, batch, exclude, rows, codes) -> items [U, k]``, jit-compiled, ``state = (params, inner_lr)``.
    """

    @jax.jit
    def rank(state, batch, exclude, rows, codes):
        phi = _adapted(state, batch, inner) if inner.steps else None
        users = _clean_users(batch)

        def chunk_scores(item_rows):
            return _score_users(apply_fn, state[0], phi, users, item_rows, per_user=False)

        return streaming_topk(chunk_scores, rows, codes, exclude, k)[1]

    return rank


def _score_users(
    apply_fn: Callable, params: Any, phi: Any, users: Mapping[str, jax.Array], item_rows: Mapping, *, per_user: bool
) -> jax.Array:
    """Each user's scores of item rows: ``apply_fn`` on the user's keys broadcast over the items, with the user's
    adapted parameters ``phi [U, ...]`` (or ``params`` for every user when ``phi`` is None). ``item_rows`` are shared
    ``[C, ...]``, or with ``per_user`` each user's own ``[U, C, ...]``. Returns ``[U, C]``."""

    def one(p, user, items):
        width = items[next(iter(items))].shape[0]
        user = {key: jnp.broadcast_to(v, (width,) + v.shape) for key, v in user.items()}
        return apply_fn(p, {**user, **items})

    in_axes = (None if phi is None else 0, 0, 0 if per_user else None)
    return jax.vmap(one, in_axes=in_axes)(params if phi is None else phi, users, item_rows)


def _pick_rows(rows: Mapping[str, jax.Array], items: jax.Array) -> dict[str, jax.Array]:
    """The catalogue rows (chunked ``[chunks, C, ...]``) of each user's items ``[U, M]`` (``-1``: item 0's, to be
    masked by the caller), as ``[U, M, ...]``."""
    flat = {key: v.reshape((-1,) + v.shape[2:]) for key, v in rows.items()}
    return jax.tree.map(lambda v: jnp.take(v, jnp.maximum(items, 0), axis=0), flat)


def _clean_users(batch: Any) -> dict[str, jax.Array]:
    """Each task's user keys; a ``history_item`` is the task's whole support set (a support row's own history
    leaves that row out)."""
    support = zero_padding(batch.support, batch.support_mask)
    users = jax.vmap(_user_rows)(support)
    if "history_item" in support:
        length = support["history_item"].shape[-1]
        items = jnp.where(batch.support_mask, support["item"], 0)[:, :length]
        users["history_item"] = jnp.pad(items, ((0, 0), (0, length - items.shape[1])))
    return users


def is_user_side(inner: InnerLoop, params: Any) -> bool:
    """Whether every parameter the inner loop adapts is on the user side (its path names a user-side layer)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    adapted = [path for path, leaf in leaves if inner.adapt_filter(path, leaf)]
    return all(
        any(name.startswith(("user", "embed_user", "bias_embed_user")) for name in path_names(p)) for p in adapted
    )


def dot_ranker(model: Any, inner: InnerLoop, k: int) -> Callable:
    """The ranker of a two-tower model (:class:`~jaxrec.models.TwoTower`): adapt the user side, then one matrix
    product per chunk, ``[U, d] x [d, C]``, with the chunk's item vectors computed once for every user.

    Valid only when the inner loop adapts user-side parameters alone (:func:`is_user_side`): the item tower is then
    the same for every user.

    Args:
      model: the two-tower module (``user_vectors`` / ``item_vectors`` methods).
      inner: the inner loop.
      k: the list length.

    Returns:
      ``rank(state, batch, exclude, rows, codes) -> items [U, k]``, jit-compiled.
    """

    @jax.jit
    def rank(state, batch, exclude, rows, codes):
        params = state[0]
        users = _clean_users(batch)
        if inner.steps:
            phi = _adapted(state, batch, inner)
            vectors = jax.vmap(lambda p, u: model.apply(p, u, method=model.user_vectors))(phi, users)
        else:
            vectors = model.apply(params, users, method=model.user_vectors)

        def chunk_scores(item_rows):
            items = model.apply(params, item_rows, method=model.item_vectors)
            return vectors @ items.T

        return streaming_topk(chunk_scores, rows, codes, exclude, k)[1]

    return rank


def rerank_ranker(retrieve: Callable, apply_fn: Callable, inner: InnerLoop, k: int) -> Callable:
    """Retrieve then re-rank: the retriever's top ``R`` items, re-scored by a second (adapted) model.

    The recall stage is a cheap model over the whole catalogue (a two-tower or MF :func:`dot_ranker`, ``k = R``,
    a few hundred); the re-ranking stage adapts an expressive model (MeLU) to the same support set and scores only
    those ``R`` candidates: meta-learning for the recall stage and for re-ranking, at the cost of ``R`` rather
    than ``V`` forward passes of the expressive model per user.

    Args:
      retrieve: a ranker ``retrieve(state, batch, exclude, rows, codes) -> items [U, R]``.
      apply_fn: the re-ranking model's ``apply_fn(params, rows) -> scores [rows]``.
      inner: the re-ranking model's inner loop.
      k: the final list length (``<= R``).

    Returns:
      ``rank(retrieve_state, rerank_state, batch, exclude, rows, codes) -> items [U, k]``, in two jit-compiled
      stages (retrieve, re-rank).
    """

    @jax.jit
    def rerank(rerank_state, batch, candidates, rows):
        phi = _adapted(rerank_state, batch, inner) if inner.steps else None
        users = _clean_users(batch)
        scores = _score_users(apply_fn, rerank_state[0], phi, users, _pick_rows(rows, candidates), per_user=True)
        return candidate_topk(jnp.where(candidates >= 0, scores, _NEG), candidates, k)

    def rank(retrieve_state, rerank_state, batch, exclude, rows, codes):
        # two compiled stages, not one: XLA's CPU runtime stalled (idle, never returning) on the fused program
        candidates = retrieve(retrieve_state, batch, exclude, rows, codes)  # [U, R], -1 where none
        return rerank(rerank_state, batch, candidates, rows)

    return rank


def candidate_topk(scores: jax.Array, candidates: jax.Array, k: int) -> jax.Array:
    """The top ``k`` of each user's own candidates.

    Args:
      scores: ``[U, M]`` the candidates' scores (``-inf`` or NaN: never listed).
      candidates: int32 ``[U, M]`` their item codes.
      k: the list length (``M < k``: the list is padded).

    Returns:
      int32 ``[U, k]`` item codes, best first, ``-1`` where fewer than ``k`` candidates had a score above ``-inf``.
    """
    width = min(int(k), scores.shape[1])
    top, position = jax.lax.top_k(jnp.where(jnp.isnan(scores), _NEG, scores), width)
    items = jnp.where(top > _NEG, jnp.take_along_axis(candidates, position, axis=1), -1)
    return jnp.pad(items, ((0, 0), (0, int(k) - width)), constant_values=-1)


def model_scorer(apply_fn: Callable, inner: InnerLoop) -> Callable:
    """The scores of given items for each user, after the same adaptation as :func:`model_ranker`: what the
    sampled protocol (:func:`sampled_negatives`, :func:`sampled_statistics`) ranks.

    Args:
      apply_fn: ``apply_fn(params, rows) -> scores [rows]``.
      inner: the inner loop of the adaptation (``steps=0``: the model as it is).

    Returns:
      ``score(state, batch, items, rows, codes) -> [U, M]`` for item codes ``items [U, M]`` (``-1``: -inf),
      jit-compiled, ``state = (params, inner_lr)``; ``rows``, ``codes`` are the chunked catalogue.
    """

    @jax.jit
    def score(state, batch, items, rows, codes):
        phi = _adapted(state, batch, inner) if inner.steps else None
        scores = _score_users(apply_fn, state[0], phi, _clean_users(batch), _pick_rows(rows, items), per_user=True)
        return jnp.where(items >= 0, scores, _NEG)

    return score


def sampled_negatives(
    support: np.ndarray, query: np.ndarray, n_items: int, negatives: int, rng: np.random.Generator, redraws: int = 32
) -> tuple[np.ndarray, int]:
    """Draw ``negatives`` distinct items uniformly for each query positive, none of them one of the user's own items.

    Draws that hit the user's support or query items, or repeat an earlier draw of the same positive's list, are
    drawn again, all of them at once, up to ``redraws + 1`` times; what still hits or repeats is ``-1`` (left out of
    that positive's list) and counted. (A list of distinct negatives, as the sampled protocols of the literature
    draw: Krichene and Rendle, KDD 2020, sample without replacement.)

    Args:
      support: ``[U, S]`` item codes, ``-1`` on padding.
      query: ``[U, Q]`` item codes, ``-1`` on padding.
      n_items: ``V``.
      negatives: negatives per positive (``N``).
      rng: the generator.
      redraws: how many more rounds of redrawing the collisions follow the first.

    Returns:
      ``(items [U, Q, N], left_out)``: the negatives (``-1`` where none was found), and how many were left out.
    """
    users = support.shape[0]
    own = np.concatenate([support, query], axis=1)
    own_keys = np.unique((np.arange(users)[:, None] * np.int64(n_items) + own)[own >= 0])
    draw = rng.integers(0, n_items, size=(users, query.shape[1], negatives))
    row = np.arange(users, dtype=np.int64)[:, None, None] * np.int64(n_items)
    for _ in range(redraws + 1):
        hit = np.isin(row + draw, own_keys) | _repeats(draw)
        if not hit.any():
            break
        draw[hit] = rng.integers(0, n_items, size=int(hit.sum()))
    hit = np.isin(row + draw, own_keys) | _repeats(draw) | (query[:, :, None] < 0)
    draw[hit] = -1
    return draw.astype(np.int32), int(np.sum(hit & (query[:, :, None] >= 0)))


def _repeats(draw: np.ndarray) -> np.ndarray:
    """Whether each entry of ``draw [..., N]`` repeats an earlier one of its list (the first of equals is kept)."""
    order = np.argsort(draw, axis=-1, kind="stable")
    ordered = np.take_along_axis(draw, order, axis=-1)
    again = np.zeros(draw.shape, bool)
    again[..., 1:] = ordered[..., 1:] == ordered[..., :-1]
    out = np.empty_like(again)
    np.put_along_axis(out, order, again, axis=-1)
    return out


@functools.partial(jax.jit, static_argnames="k")
def _dense_rank(scores, exclude, k, order=None):
    return dense_topk(scores, exclude, k, order)


# ----------------------------------------------------------------------------------------------------------------
# evaluation


class SampledRows(NamedTuple):
    """The sampled protocol's rows, kept for ``--save-predictions`` so that its figures can be recomputed outside.

    Attributes:
      users: ``[U]`` the user codes (the task's ``task_id``).
      candidates: int32 ``[U, Q, 1 + N]`` each query positive (``[..., 0]``) and its sampled negatives; ``-1`` on
        padding (no positive) and where no negative was found.
      scores: ``{method: float32 [U, Q, 1 + N]}`` every scored method's scores of them.
    """

    users: np.ndarray
    candidates: np.ndarray
    scores: dict[str, np.ndarray]


class RankerEvaluation(NamedTuple):
    """What :func:`evaluate_rankers` returns.

    Attributes:
      summaries: ``{method: summary}`` with ``coverage@k`` and paired differences to the reference.
      stats: ``{method: per-user statistics}`` (``"user"`` holds the user codes).
      lists: ``{method: [U, K]}`` item lists (empty without ``keep_lists``).
      sampled: the sampled protocol's :class:`SampledRows` (None without ``keep_lists`` and ``scorers``).
    """

    summaries: dict[str, dict]
    stats: dict[str, dict]
    lists: dict[str, np.ndarray]
    sampled: SampledRows | None = None


def evaluate_rankers(
    rankers: Mapping[str, Callable],
    tasks: Any,
    catalogue: Catalogue,
    *,
    ks: Sequence[int] = (10, 20, 50),
    batch_size: int = 64,
    reference: str = "maml",
    resamples: int = 1000,
    seed: int = 0,
    keep_lists: bool = False,
    scorers: Mapping[str, Callable] | None = None,
    negatives: int = 100,
    coverage_of: int | None = None,
    avoid: Callable[[Any], np.ndarray | None] | None = None,
    progress: str | None = None,
) -> RankerEvaluation:
    """Evaluate rankers on the same users, over the whole catalogue.

    Every ranker sees the same batches (the same support sets, the same negatives for the inner loop's loss). The
    query rows only name the items to find: their negatives are none (``neg_mask`` false, the arrays zero, of the
    shapes a batch with them has), and a ranker reads the support alone (the query is the user's future).
    With ``scorers``, those methods are also scored by the sampled protocol (**biased**, see
    :func:`sampled_statistics`): each query positive against ``negatives`` items drawn uniformly from those the user
    did not interact with, the same draws for every method; its keys are ``sampled_hr@k``.

    Args:
      rankers: ``{name: rank(batch, exclude) -> items [U, K]}`` (bound to their state; a baseline ignores what it
        does not need), ``K >= max(ks)``.
      tasks: a :class:`~jaxrec.data.topn.TopNTaskSet`.
      catalogue: the :class:`Catalogue`.
      ks: the cut-offs.
      batch_size: users per batch.
      reference: the method the others are paired with.
      resamples: bootstrap resamples over users.
      seed: the seed of the bootstrap and of the negatives.
      keep_lists: also return every method's top lists and, with ``scorers``, the sampled protocol's candidates
        and scores (for ``--save-predictions``).
      scorers: ``{name: score(batch, exclude, items [U, M]) -> scores [U, M]}`` for the sampled protocol (a subset
        of the rankers' names; None: not scored).
      negatives: sampled negatives per positive.
      coverage_of: the number of items coverage is a fraction of (default: the catalogue's).
      avoid: ``avoid(batch) -> [U, W]`` item codes (``-1`` padding) never drawn as the sampled protocol's negatives,
        beside each user's support and query items: the user's other interactions, which the split keeps out of the
        task (None: nothing more).
      progress: a progress bar over the batches (tqdm, on stderr, gone when done) with this label, or None for none.

    Returns:
      The :class:`RankerEvaluation` ``(summaries, stats, lists, sampled)``.

    Raises:
      ValueError: a ranker's lists are narrower than ``max(ks)``, hold an item twice for a user, or a code outside
        the catalogue (the metrics would misread them), naming the ranker and the user.
    """
    ks = tuple(int(k) for k in ks)
    popularity = jnp.asarray(catalogue.popularity)
    pieces: dict[str, list] = {name: [] for name in rankers}
    lists: dict[str, list] = {name: [] for name in rankers}
    scorers = dict(scorers or {})
    keep_sampled = keep_lists and bool(scorers)
    sampled_users, sampled_candidates, sampled_scores = [], [], {name: [] for name in scorers}
    left_out = 0
    plan = tasks.batch_plan(batch_size, None)
    bar = tqdm(plan, desc=progress, unit="batch", leave=False, disable=progress is None)
    for b, task_index in enumerate(bar):
        # the query rows name the items to find: a ranker adapts on the support and ranks every item
        batch = tasks.make_batch(task_index, np.random.default_rng([seed, 7, b]), query_negatives=False)
        support_items, query_items = tasks.item_codes(task_index)
        keep = np.asarray(task_index) >= 0
        exclude = jnp.asarray(support_items)
        if scorers:
            extra = None if avoid is None else avoid(batch)
            own = support_items if extra is None else np.concatenate([support_items, np.asarray(extra)], axis=1)
            drawn, missed = sampled_negatives(
                own, query_items, catalogue.n_items, negatives, np.random.default_rng([seed, 11, b])
            )
            left_out += missed
            candidates = jnp.asarray(np.concatenate([query_items[:, :, None], drawn], axis=2))  # [U, Q, 1 + N]
            if keep_sampled:
                sampled_users.append(np.asarray(batch.task_id)[keep])
                sampled_candidates.append(np.asarray(candidates)[keep])
        targets = jnp.asarray(query_items)
        for name, rank in rankers.items():
            items = rank(batch, exclude)
            listed = np.asarray(items)[keep]
            _check_lists(name, listed, max(ks), catalogue.n_items, np.asarray(batch.task_id)[keep])
            stats = _compiled_topn_statistics(items, targets, popularity, ks=ks)
            if name in scorers:
                scores = scorers[name](batch, exclude, candidates.reshape(len(keep), -1)).reshape(candidates.shape)
                positives = candidates[..., 0] >= 0
                stats.update(_compiled_sampled_statistics(scores[..., 0], scores[..., 1:], positives, ks=ks))
                if keep_sampled:
                    sampled_scores[name].append(np.asarray(scores)[keep])
            stats = jax.device_get(stats)
            stats = {key: np.asarray(v)[keep] for key, v in stats.items()}
            stats["user"] = np.asarray(batch.task_id)[keep]
            pieces[name].append(stats)
            lists[name].append(listed)
    stats = {name: {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} for name, parts in pieces.items()}
    if left_out:
        logger.info("sampled protocol: %d negatives left out (own items or repeats after redraws)", left_out)
    summaries = compare_stats(stats, reference=reference, resamples=resamples, seed=seed, implicit=True)
    top = {name: np.concatenate(parts) for name, parts in lists.items()}
    for name in summaries:
        for k in ks:
            summaries[name][f"coverage@{k}"] = coverage(top[name], coverage_of or catalogue.n_items, k)
    sampled = None
    if keep_sampled and sampled_users:
        scores = {name: _joined(parts) for name, parts in sampled_scores.items() if parts}
        sampled = SampledRows(np.concatenate(sampled_users), _joined(sampled_candidates), scores)
    return RankerEvaluation(summaries, stats, top if keep_lists else {}, sampled)


def _check_lists(name: str, items: np.ndarray, k: int, n_items: int, users: np.ndarray) -> None:
    """Refuse a ranker's lists that the metrics would misread: narrower than the largest cut-off (Recall@50 would
    be Recall@10's), an item twice in a user's list (Recall above 1), or a code outside the catalogue."""
    if items.ndim != 2 or items.shape[1] < k:
        raise ValueError(
            f"ranker {name!r} returned lists of shape {items.shape}: each user's list needs at least {k} entries "
            "(the largest cut-off of ks; -1 where fewer items are eligible)"
        )
    outside = (items < -1) | (items >= n_items)
    if outside.any():
        row = int(np.argmax(outside.any(axis=1)))
        raise ValueError(
            f"ranker {name!r} listed item code {int(items[row][outside[row]][0])} for user {users[row]}, outside the "
            f"catalogue's codes 0..{n_items - 1} (-1: no item)"
        )
    ordered = np.sort(items, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if repeated.any():
        row = int(np.argmax(repeated.any(axis=1)))
        item = int(ordered[row, 1:][repeated[row]][0])
        raise ValueError(f"ranker {name!r} listed item {item} more than once for user {users[row]}")


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """Batches' ``[U_b, Q_b, ...]`` arrays as one ``[U, Q, ...]``, each padded with ``-1`` to the widest ``Q``."""
    width = max(p.shape[1] for p in parts)
    pad = [((0, 0), (0, width - p.shape[1])) + ((0, 0),) * (p.ndim - 2) for p in parts]
    return np.concatenate([np.pad(p, w, constant_values=-1) for p, w in zip(parts, pad, strict=True)])
