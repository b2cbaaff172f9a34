"""Hybrid top-N ranking: two methods' scores of every item, standardised per user and added.

For a user ``u`` with eligible items ``E_u`` (the catalogue less their support items and less any item either
method cannot score) and two methods' scores ``a(u, i)`` and ``b(u, i)``::

    h(u, i) = z_u(a)(i) + w z_u(b)(i),   z_u(s)(i) = (s(u, i) - mean_{j in E_u} s(u, j)) / std_{j in E_u} s(u, j)

Standardising makes the weight ``w >= 0`` a property of the pair of methods, not of the scale of either score (an
adapted dot product, a sum of cosines, an EASE score), so one ``w`` chosen on validation users carries over to new
users; only in part for a sparse score (item-kNN's is 0 for most items), whose few non-zero items get large
z-scores that vary with how many there are. A latent-factor model added to a neighbourhood model is Koren's
integrated model (KDD 2008, section 5): the neighbourhood captures the strong local item-to-item relations a
low-rank model smooths away, the factors the global structure. Here each part is fitted on its own and only ``w``
is chosen jointly.

The scores are dense, ``[U, V]`` per batch of users: a hybrid costs ``O(U V)`` memory (``O(U V)`` model rows for
the meta-learner's scores, each user's catalogue scored through the model), unlike the streamed catalogue of a
single model (:func:`jaxrec.evaluation.topn.streaming_topk`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrec.evaluation.topn import dense_topk, exclude_items

__all__ = ["hybrid_scores", "hybrid_topk", "standardize"]


def standardize(scores: jax.Array, eligible: jax.Array) -> jax.Array:
    """Each row of ``scores [U, V]`` less its mean, over its standard deviation, both over the ``eligible [U, V]``
    entries; a row whose eligible scores are all equal becomes 0 (no preference), not NaN nor the rounding error
    of its mean; ineligible entries are 0."""
    count = jnp.maximum(jnp.sum(eligible, axis=1, keepdims=True), 1)
    kept = jnp.where(eligible, scores, 0.0)
    mean = jnp.sum(kept, axis=1, keepdims=True) / count
    centred = jnp.where(eligible, scores - mean, 0.0)
    std = jnp.sqrt(jnp.sum(jnp.square(centred), axis=1, keepdims=True) / count)
    top = jnp.max(jnp.where(eligible, scores, -jnp.inf), axis=1, keepdims=True)
    bottom = jnp.min(jnp.where(eligible, scores, jnp.inf), axis=1, keepdims=True)
    varies = (top > bottom) & (std > 0)
    return jnp.where(varies, centred / jnp.where(varies, std, 1.0), 0.0)


def hybrid_scores(first: jax.Array, second: jax.Array, weight: float, exclude: jax.Array) -> jax.Array:
    """``h = z(first) + weight z(second)`` over the items each user may be recommended, ``-inf`` elsewhere.

    Args:
      first: float ``[U, V]`` scores of every catalogue item (``-inf`` allowed: an item the method cannot score).
      second: float ``[U, V]``, the other method's.
      weight: ``w >= 0``, the second method's weight.
      exclude: int32 ``[U, E]`` each user's support items (``-1`` = none), never recommended.

    Returns:
      float32 ``[U, V]``.
    """
    first = jnp.asarray(first, jnp.float32)
    second = jnp.asarray(second, jnp.float32)
    codes = jnp.arange(first.shape[1], dtype=jnp.int32)
    eligible = jnp.isfinite(exclude_items(jnp.zeros_like(first), codes, exclude))
    eligible = eligible & jnp.isfinite(first) & jnp.isfinite(second)
    combined = standardize(first, eligible) + weight * standardize(second, eligible)
    return jnp.where(eligible, combined, -jnp.inf)


@functools.partial(jax.jit, static_argnames="k")
def hybrid_topk(
    first: jax.Array, second: jax.Array, weight: float, exclude: jax.Array, k: int, order: jax.Array | None = None
) -> jax.Array:
    """The top ``k`` items of :func:`hybrid_scores`, ``int32 [U, k]`` (``-1`` where fewer were eligible); ties fall
    in ``order`` (:func:`~jaxrec.evaluation.topn.dense_topk`)."""
    return dense_topk(hybrid_scores(first, second, weight, exclude), exclude, k, order)
