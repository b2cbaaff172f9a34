"""Ranking losses over sampled negatives: learning top-N recommendation from implicit feedback.

In implicit feedback every row of a task is a *positive* (an interaction: a click, a play, a check-in) and there
are no observed negatives. Each positive row ``r`` therefore carries ``N`` items the user has not interacted with,
sampled from a distribution ``q`` (uniform, or proportional to popularity): the row keys ``neg_item [rows, N]``
(with the negatives' side features ``neg_item_<field> [rows, N, ...]``), ``neg_mask [rows, N]`` (false for a
padded or rejected draw) and, for the sampled softmax, ``logq [rows]`` and ``neg_logq [rows, N]``. With ``s^+``
the positive's score and ``s^-_j`` the negatives', the per-row losses are

* **BPR** (Rendle et al. UAI 2009): ``mean_j -log sigmoid(s^+ - s^-_j)``;
* **BCE** (NCF, He et al. WWW 2017): ``softplus(-s^+) + mean_j softplus(s^-_j)``, the positive against label 0
  for each negative;
* **ALS** (the implicit-ALS objective of Hu, Koren & Volinsky, ICDM 2008, with the sum over every item estimated
  from the negatives): ``sum_i s_i^2 + sum_r [(1 + c) (1 - s^+_r)^2 - (s^+_r)^2]``, the catalogue term
  ``sum_i s_i^2 ~ mean_j (s^-_j)^2 / q_j`` (importance-weighted, unbiased for any ``q``), divided by the number of
  positives; ``c`` is the confidence of an interaction (``confidence``, times its weight). It is quadratic in a
  linear user side, so one Newton inner step is the exact ALS fold-in towards the meta-learned prior;
* **ALS, exact catalogue term** (:func:`catalogue_als_loss`): the same objective with ``sum_i s_i^2`` computed
  over every item, ``p~^T G p~`` with ``G = sum_i q~_i q~_i^T`` the Gram matrix of the catalogue's item vectors
  (the trick that makes implicit ALS affordable, Hu et al. ICDM 2008, section 4) and ``p~`` the user vector,
  for a model whose score is a dot product ``s_i = <p~, q~_i>`` (:class:`~jaxrec.models.TwoTower`); one Newton
  step is then exactly the fold-in of the ``mf`` baseline, towards the meta-learned prior;
* **sampled softmax** with the logQ correction (Bengio & Senecal 2008; Yi et al. RecSys 2019):
  ``-log softmax([s^+ - log q^+, s^-_1 - log q_1, ...])_0``, an unbiased-in-the-limit estimate of the full
  softmax over the catalogue; with a uniform ``q`` the correction is a constant and cancels.

A task's loss is the weighted masked mean over its rows, ``sum_r m_r w_r l_r / max(sum_r m_r w_r, eps)``, where
``w_r`` is the row's confidence weight (key ``weight``: a play count, 1 for a plain click; Hu et al. ICDM 2008).
Padded rows and padded negatives change neither the loss nor its gradient. The builders take a model's
``apply_fn(params, rows) -> scores [rows]``: any model of :mod:`jaxrec.models` scores its negatives by the same
function, its rows repeated with the item keys swapped. :func:`bpr_loss` (``jaxrec.bpr_loss``) is BPR for rows
of one negative each as well.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxrec.core.losses import LossFn

__all__ = [
    "bpr_loss",
    "RANKING_LOSSES",
    "catalogue_als_loss",
    "catalogue_logistic_loss",
    "negative_rows",
    "ranking_loss",
    "row_weights",
]

Rows = Mapping[str, jax.Array]
ApplyFn = Callable[[Any, Rows], jax.Array]

RANKING_LOSSES = ("bpr", "bce", "softmax", "als")

# row keys that describe the negatives themselves and are not model inputs
_NEGATIVE_META = ("neg_item", "neg_mask", "neg_logq")


def negative_rows(rows: Rows) -> dict[str, jax.Array]:
    """The rows of the sampled negatives: every row repeated ``N`` times, its item keys swapped for the negatives'.

    Args:
      rows: one task's rows ``[rows, ...]`` with ``neg_item [rows, N]`` and, for each item key ``item_<field>``
        the model reads, ``neg_item_<field> [rows, N, ...]``.

    Returns:
      Rows ``[rows * N, ...]``: ``item`` and ``item_<field>`` from the ``neg_`` keys, every other key repeated.
    """
    n_rows, n_neg = rows["neg_item"].shape[:2]
    out = {}
    for key, value in rows.items():
        if key.startswith("neg_") or key in ("logq", "weight"):
            continue
        negative = f"neg_{key}"
        if negative in rows:
            v = rows[negative]
            out[key] = v.reshape((n_rows * n_neg,) + v.shape[2:])
        else:
            out[key] = jnp.repeat(value, n_neg, axis=0)
    return out


def row_weights(rows: Rows, mask: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """The confidence weight of each real row: ``rows["weight"]`` where given (else 1), 0 on padding.

    Args:
      rows: the task's rows.
      mask: bool ``[rows]``.
      dtype: the weights' dtype.

    Returns:
      ``[rows]`` weights.
    """
    weight = rows.get("weight")
    weight = jnp.ones(mask.shape, dtype) if weight is None else jnp.asarray(weight, dtype)
    return jnp.where(mask, weight, 0.0)


def bpr_loss(apply_fn: ApplyFn, negative_key: str = "neg_item", item_key: str = "item") -> LossFn:
    """Bayesian personalised ranking (Rendle et al. 2009): ``-log sigmoid(s(u, i+) - s(u, i-))``.

    Each row holds a positive ``item`` and a sampled ``neg_item``; the negative score is the model applied to the
    same row with the item swapped (and the item's side features ``item_<field>`` swapped for
    ``neg_item_<field>`` where the rows carry them). Rows with several negatives each, ``neg_item [rows, N]`` and
    ``neg_mask [rows, N]`` (the top-N pipeline's), take the mean over a row's real negatives
    (:func:`ranking_loss` with ``"bpr"``). Either way a task's loss is the mean over its rows weighted by their
    confidence ``weight`` where the rows carry one (:func:`row_weights`), so one negative as ``[rows]`` or as
    ``[rows, 1]`` gives the same value.

    Args:
      apply_fn: ``apply_fn(params, rows) -> scores [rows]``.
      negative_key: the row key of the sampled negative item.
      item_key: the row key of the positive item.

    Returns:
      ``loss_fn(params, rows, mask) -> scalar``.
    """

    several = ranking_loss(apply_fn, "bpr")

    def loss_fn(params, rows, mask):
        if jnp.ndim(rows[negative_key]) == jnp.ndim(rows[item_key]) + 1:  # several negatives a row: [rows, N]
            if (negative_key, item_key) != ("neg_item", "item") or "neg_mask" not in rows:
                raise ValueError(
                    f"rows with several negatives each ({negative_key!r} of shape {jnp.shape(rows[negative_key])}) "
                    "need the keys 'item', 'neg_item' and 'neg_mask' [rows, N]"
                )
            return several(params, rows, mask)
        positive = apply_fn(params, rows)
        swapped = dict(rows)
        swapped[item_key] = rows[negative_key]
        for key in list(rows):
            # side features of the negative item travel as neg_<key> when the data pipeline provides them
            if key.startswith("item_") and f"neg_{key}" in rows:
                swapped[key] = rows[f"neg_{key}"]
        negative = apply_fn(params, swapped)
        margin = jnp.where(mask, positive - negative, 0.0)
        weights = row_weights(rows, mask, positive.dtype)  # as ranking_loss weighs them: one value for one layout
        return jnp.sum(-jax.nn.log_sigmoid(margin) * weights) / jnp.maximum(jnp.sum(weights), 1e-6)

    return loss_fn


def ranking_loss(apply_fn: ApplyFn, kind: str = "bpr", confidence: float = 10.0) -> LossFn:
    """A masked ranking loss of positives against their sampled negatives (see the module docstring).

    Args:
      apply_fn: ``apply_fn(params, rows) -> scores [rows]``.
      kind: ``"bpr"``, ``"bce"``, ``"softmax"`` (sampled softmax with the logQ correction) or ``"als"``
        (``"als_exact"`` is :func:`catalogue_als_loss`, which needs the model's towers).
      confidence: ``"als"``: the extra confidence ``c`` of an interaction (times its weight).

    Returns:
      ``loss_fn(params, rows, mask) -> scalar`` for one task's rows (``neg_item``, ``neg_mask`` and, for the
      softmax, ``logq`` / ``neg_logq`` among them).

    Raises:
      ValueError: if ``kind`` is not one of :data:`RANKING_LOSSES`.
    """
    if kind == "als_exact":
        raise ValueError("ranking loss 'als_exact' needs the model's user and item towers: use catalogue_als_loss")
    if kind not in RANKING_LOSSES:
        raise ValueError(f"unknown ranking loss {kind!r}; choose one of {RANKING_LOSSES}")

    def loss_fn(params, rows, mask):
        mask = mask.astype(bool)
        positive = apply_fn(params, rows)
        n_rows, n_neg = rows["neg_item"].shape[:2]
        negative = apply_fn(params, negative_rows(rows)).reshape(n_rows, n_neg)
        neg_ok = rows["neg_mask"].astype(bool) & mask[:, None]
        # masked before any non-linearity, so a stray value in a padded slot reaches no gradient
        positive = jnp.where(mask, positive, 0.0)
        negative = jnp.where(neg_ok, negative, 0.0)
        n_ok = jnp.maximum(jnp.sum(neg_ok, axis=1), 1).astype(positive.dtype)
        if kind == "bpr":
            per_pair = jax.nn.softplus(negative - positive[:, None])  # -log sigmoid(s+ - s-)
            per_row = jnp.sum(jnp.where(neg_ok, per_pair, 0.0), axis=1) / n_ok
        elif kind == "bce":
            per_neg = jnp.sum(jnp.where(neg_ok, jax.nn.softplus(negative), 0.0), axis=1) / n_ok
            per_row = jax.nn.softplus(-positive) + per_neg
        elif kind == "als":
            weights = row_weights(rows, mask, positive.dtype)
            n_pos = jnp.maximum(jnp.sum(mask), 1).astype(positive.dtype)
            inverse_q = jnp.where(neg_ok, jnp.exp(-jnp.where(neg_ok, rows["neg_logq"], 0.0)), 0.0)
            n_neg = jnp.maximum(jnp.sum(neg_ok), 1).astype(positive.dtype)
            catalogue = jnp.sum(inverse_q * jnp.square(negative)) / n_neg
            hits = (1.0 + confidence * weights) * jnp.square(1.0 - positive) - jnp.square(positive)
            return (catalogue + jnp.sum(jnp.where(mask, hits, 0.0))) / n_pos
        else:
            logq = jnp.where(mask, rows["logq"], 0.0)
            neg_logq = jnp.where(neg_ok, rows["neg_logq"], 0.0)
            logits = jnp.concatenate([(positive - logq)[:, None], negative - neg_logq], axis=1)
            keep = jnp.concatenate([mask[:, None], neg_ok], axis=1)
            logits = jnp.where(keep, logits, -jnp.inf)
            # a padded row has every logit at -inf: its logsumexp is replaced by the (finite) positive logit
            lse = jax.nn.logsumexp(jnp.where(mask[:, None], logits, 0.0), axis=1)
            per_row = lse - jnp.where(mask, logits[:, 0], 0.0)
        weights = row_weights(rows, mask, positive.dtype)
        total = jnp.sum(jnp.where(mask, per_row, 0.0) * weights)
        return total / jnp.maximum(jnp.sum(weights), 1e-6)

    return loss_fn


def catalogue_als_loss(
    apply_fn: ApplyFn,
    user_fn: ApplyFn,
    gram_fn: Callable[[Any], jax.Array],
    confidence: float = 10.0,
    shared_user: bool = False,
) -> LossFn:
    """The implicit-ALS objective with its catalogue term exact, for a model scored by a dot product.

    With ``s_i = <p~, q~_i>`` (the user vector ``p~``, the item vector ``q~_i``, biases folded in as a trailing
    coordinate), the sum over every item of the catalogue is a quadratic form of the ``d x d`` Gram matrix
    ``G = sum_i q~_i q~_i^T`` (Hu, Koren & Volinsky, ICDM 2008, section 4)::

        L = [ p~^T G p~ + sum_r m_r ((1 + c w_r) (1 - s_r)^2 - s_r^2) ] / sum_r m_r

    (``m_r`` the row mask, ``w_r`` its confidence weight): every item at target 0 with confidence 1, each
    interaction at target 1 with confidence ``1 + c w_r``. The sampled negatives of the rows are not read. ``G``
    depends on the item tower only, so under ``vmap`` over tasks it is computed once for the batch, not per task,
    and its gradient reaches the item tower through the meta-gradient. Quadratic in a linear user side: one
    Newton inner step (:mod:`jaxrec.core.newton`) is exactly the ALS fold-in of the user vector towards the
    meta-learned prior, the ``mf`` baseline's solve when the item tower is ALS's item factors.

    Args:
      apply_fn: ``apply_fn(params, rows) -> scores [rows]`` (``<p~_r, q~_r>``).
      user_fn: ``user_fn(params, rows) -> [rows, d]``, each row's user vector ``p~`` (the same for every row of
        a task).
      gram_fn: ``gram_fn(params) -> [d, d]``, the Gram matrix of every catalogue item's vector.
      confidence: the extra confidence ``c`` of an interaction (times its weight).
      shared_user: every real row of a task has the same user vector (the user tower reads no per-row input, such
        as a history that leaves the row's own item out): ``p~^T G p~`` is then formed once, from the first real
        row, rather than for every row and averaged. The same loss at a fraction of the work: a Newton step forms
        its Hessian from one ``(d + 1) x (d + 1)`` quadratic form per tangent, not one per row.

    Returns:
      ``loss_fn(params, rows, mask) -> scalar`` for one task's rows.
    """

    def loss_fn(params, rows, mask):
        mask = mask.astype(bool)
        positive = jnp.where(mask, apply_fn(params, rows), 0.0)
        gram = gram_fn(params)
        n_pos = jnp.maximum(jnp.sum(mask), 1).astype(positive.dtype)
        if shared_user:
            first = jnp.argmax(mask)  # a padded row's inputs are zeroed: its user vector is not the user's
            user = user_fn(params, jax.tree.map(lambda x: x[first][None], rows))[0]
            catalogue = jnp.where(jnp.any(mask), user @ gram @ user, 0.0)
        else:  # each row's own user vector: the mean over real rows of p~_r^T G p~_r
            users = jnp.where(mask[:, None], user_fn(params, rows), 0.0)
            catalogue = jnp.sum((users @ gram) * users) / n_pos
        hits = _relabelled(positive, rows, mask, confidence, lambda s: jnp.square(1.0 - s), jnp.square)
        return (catalogue + hits) / n_pos

    return loss_fn


def _relabelled(positive, rows, mask, confidence, label_one, label_zero):
    """``sum_r m_r ((1 + c w_r) label_one(s_r) - label_zero(s_r))``: each interaction's label-1 term at its
    confidence, less the label-0 term the catalogue sum gave it."""
    weights = row_weights(rows, mask, positive.dtype)
    hits = (1.0 + confidence * weights) * label_one(positive) - label_zero(positive)
    return jnp.sum(jnp.where(mask, hits, 0.0))


def catalogue_logistic_loss(
    apply_fn: ApplyFn,
    user_fn: ApplyFn,
    logits_fn: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]],
    confidence: float = 10.0,
) -> LossFn:
    """Weighted logistic regression of every catalogue item on the user's interactions (logistic MF, Johnson 2014).

    Every item is a label-0 example with weight 1 and each interaction a label-1 example with weight ``1 + c w_r``
    (the confidences of :func:`catalogue_als_loss`, with the log-loss in place of the squared error)::

        L = [ sum_i softplus(s_i) + sum_r m_r ((1 + c w_r) softplus(-s_r) - softplus(s_r)) ] / sum_r m_r

    The sum over the catalogue is not a quadratic form, so every item's score is formed (``logits_fn``); the
    Newton inner step (:mod:`jaxrec.core.newton`) is then one step of iteratively reweighted least squares with
    the prior as ridge, and ``K`` inner steps iterate to the MAP user vector.

    Args:
      apply_fn: ``apply_fn(params, rows) -> scores [rows]``.
      user_fn: ``user_fn(params, rows) -> [rows, d]``, each row's user vector (the same for every row of a task).
      logits_fn: ``logits_fn(params, user) -> (scores [M], weights [M])``: every catalogue item's score for the
        user vector ``user`` and its weight as a label-0 example (1; split between an item's vector with and
        without its id under id dropout, :func:`jaxrec.experiment.protocol.exact_logistic_loss`).
      confidence: the extra confidence ``c`` of an interaction (times its weight).

    Returns:
      ``loss_fn(params, rows, mask) -> scalar`` for one task's rows.
    """

    def loss_fn(params, rows, mask):
        mask = mask.astype(bool)
        positive = jnp.where(mask, apply_fn(params, rows), 0.0)
        # every row of a task carries the same user vector: the first real row's (a padded row's may differ)
        user = user_fn(params, rows)[jnp.argmax(mask)]
        n_pos = jnp.maximum(jnp.sum(mask), 1).astype(positive.dtype)
        scores, item_weights = logits_fn(params, user)
        # a task without a real row has no loss (as the ALS loss's masked p~^T G p~), not the catalogue's
        catalogue = jnp.where(jnp.any(mask), jnp.sum(item_weights * jax.nn.softplus(scores)), 0.0)
        hits = _relabelled(positive, rows, mask, confidence, lambda s: jax.nn.softplus(-s), jax.nn.softplus)
        return (catalogue + hits) / n_pos

    return loss_fn
