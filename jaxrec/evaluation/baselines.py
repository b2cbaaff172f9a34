"""Honest baselines for cold-start evaluation, run in the same harness as the meta-learner.

Each baseline is a predictor ``predict(state, batch) -> scores [T, Q]`` (see :mod:`jaxrec.evaluation.predict`),
fitted on the meta-train ratings only and, where it personalises, using nothing of a test user but its support set:

* ``global_mean``: ``mu``, the mean meta-train rating.
* ``user_mean``: the mean of the user's support ratings (``mu`` when there are none).
* ``item_mean``: the item's mean meta-train rating; ``mu`` for items unseen in meta-train (new items).
* ``bias``: the classical baseline predictor (Koren 2010, "Factor in the neighbors", eq. 2)
  ``r_hat(u, i) = mu + b_i + b_u``. Item biases are learned on meta-train ratings by regularised alternating
  least squares: with ``lambda_i``, ``lambda_u`` ridge strengths, a few rounds of the closed forms

      b_u = sum_{i in R(u)} (r_ui - mu - b_i) / (lambda_u + |R(u)|),
      b_i = sum_{u in R(i)} (r_ui - mu - b_u) / (lambda_i + |R(i)|)

  (vectorised with ``np.bincount``). A test user's ``b_u`` is the same closed form on its support set; an unseen
  item has ``b_i = 0``. Strong on MAE: most of the variance of ratings is user and item offsets.
* ``no_adapt``: the same model, trained without meta-learning on all meta-train ratings as independent rows (plain
  supervised MSE/BCE with optax Adam), and applied to the query without adaptation.
* ``finetune``: that model fine-tuned on each user's support set with the meta-learner's inner loop (same
  number of steps, same adapted parameters) and a learning rate tuned on a validation slice of meta-train users
  (never on a test scenario). The rate grid includes 0, so a tuned fine-tune is never worse than ``no_adapt`` on
  validation.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.core.batch import TaskBatch
from jaxrec.core.inner import InnerLoop
from jaxrec.data.augment import drop_ids
from jaxrec.evaluation.metrics import aggregate
from jaxrec.evaluation.predict import collect, meta_predict

__all__ = [
    "global_mean",
    "user_mean",
    "item_mean",
    "bias_predict",
    "fit_item_means",
    "fit_bias_model",
    "support_user_bias",
    "train_supervised",
    "supervised_history",
    "tune_finetune_lr",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# predictors


def global_mean(state: Any, batch: TaskBatch) -> jax.Array:
    """Predict the mean meta-train rating ``mu`` for every query row.

    Args:
      state: ``mu``.
      batch: the tasks.

    Returns:
      ``[T, Q]`` scores, all ``mu``.
    """
    return jnp.broadcast_to(jnp.asarray(state, jnp.float32), batch.query_mask.shape)


def _support_mean(batch: TaskBatch, target: str, fallback: jax.Array) -> jax.Array:
    values = batch.support[target].astype(jnp.float32)
    mask = batch.support_mask.astype(bool)
    count = jnp.sum(mask, axis=1)
    total = jnp.sum(jnp.where(mask, values, 0.0), axis=1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), fallback)


def user_mean(state: Any, batch: TaskBatch, *, target: str = "rating") -> jax.Array:
    """Predict the mean of the user's support targets for every query row.

    Args:
      state: ``mu``, the prediction for a task whose support set is empty.
      batch: the tasks.
      target: the row key of the targets.

    Returns:
      ``[T, Q]`` scores, one value per task.
    """
    mean = _support_mean(batch, target, jnp.asarray(state, jnp.float32))
    return jnp.broadcast_to(mean[:, None], batch.query_mask.shape)


def _lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    ids = jnp.asarray(ids).astype(jnp.int32)
    return table[jnp.where((ids >= 0) & (ids < table.shape[0]), ids, 0)]


def item_mean(state: Any, batch: TaskBatch) -> jax.Array:
    """Predict each query item's mean meta-train rating.

    Args:
      state: the table of item means by item slot (:func:`fit_item_means`; slot 0, unseen items, holds ``mu``).
      batch: the tasks.

    Returns:
      ``[T, Q]`` scores ``state[item]`` (ids outside the table read slot 0).
    """
    return _lookup(jnp.asarray(state), batch.query["item"])


def support_user_bias(residuals: jax.Array, mask: jax.Array, user_reg: float | jax.Array) -> jax.Array:
    """Fit the user offset of the bias model on a support set in closed form.

    ``b_u = sum_s m_s r_s / (lambda_u + sum_s m_s)`` over the last axis.

    Args:
      residuals: the residuals ``r - mu - b_i`` of the support rows.
      mask: the support mask ``m`` (false = padding).
      user_reg: the ridge strength ``lambda_u``.

    Returns:
      ``b_u``, with the last axis reduced.
    """
    mask = mask.astype(bool)
    return jnp.sum(jnp.where(mask, residuals, 0.0), axis=-1) / (user_reg + jnp.sum(mask, axis=-1))


def bias_predict(state: Any, batch: TaskBatch, *, target: str = "rating", task_side: str = "user") -> jax.Array:
    """Predict with the bias model ``mu + b_i + b_u``, the task's own offset fitted on its support set.

    User tasks: ``b_u`` from the support residuals ``r - mu - b_i``, with the fitted item biases. Item tasks
    (``task_side="item"``): the other way round, the new item's ``b_i`` from ``r - mu - b_u`` with the fitted
    biases of the (known) users who rated it; both by :func:`support_user_bias`'s closed form.

    Args:
      state: ``(mu, known_bias, task_reg)``: :func:`fit_bias_model`'s ``mu``, the fitted biases of the other side
        by vocabulary slot (``b_i`` for user tasks, ``b_u`` for item tasks) and the ridge strength of the task's
        offset (``lambda_u``, or ``lambda_i``).
      batch: the tasks.
      target: the row key of the targets.
      task_side: ``"user"`` or ``"item"``, what a task is.

    Returns:
      ``[T, Q]`` scores.
    """
    mu, known_bias, task_reg = state
    known = "item" if task_side == "user" else "user"
    support_residual = batch.support[target].astype(jnp.float32) - mu - _lookup(known_bias, batch.support[known])
    b_task = support_user_bias(support_residual, batch.support_mask, task_reg)
    return mu + _lookup(known_bias, batch.query[known]) + b_task[:, None]


# ----------------------------------------------------------------------------------------------------------------
# fitting (host side, vectorised)


def fit_item_means(items: np.ndarray, targets: np.ndarray, n_items: int, mu: float | None = None) -> np.ndarray:
    """Fit the table of item means.

    Args:
      items: the item id (vocabulary slot) of each rating.
      targets: the target of each rating.
      n_items: the size of the item vocabulary.
      mu: the value of ids without ratings (default: the mean target).

    Returns:
      float32 ``[n_items]``: the mean target per item id; ids without ratings (and id 0, the OOV slot) get
      ``mu``.
    """
    items = np.asarray(items, np.int64)
    targets = np.asarray(targets, np.float64)
    mu = float(targets.mean()) if mu is None else float(mu)
    count = np.bincount(items, minlength=n_items)[:n_items]
    total = np.bincount(items, weights=targets, minlength=n_items)[:n_items]
    table = np.where(count > 0, total / np.maximum(count, 1), mu)
    table[0] = mu
    return table.astype(np.float32)


def fit_bias_model(
    users: np.ndarray,
    items: np.ndarray,
    targets: np.ndarray,
    n_users: int,
    n_items: int,
    *,
    item_reg: float = 10.0,
    user_reg: float = 5.0,
    iterations: int = 10,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Fit the bias model ``r ~ mu + b_u + b_i`` by regularised alternating least squares.

    Each round solves the ridge problem for all ``b_u`` given ``b_i`` in closed form, then for all ``b_i``
    given ``b_u`` (coordinate descent on a convex objective, so it converges; ten rounds are plenty).

    Args:
      users: the user index of each rating.
      items: the item index of each rating.
      targets: the target of each rating.
      n_users: the number of users.
      n_items: the number of items.
      item_reg: the ridge strength ``lambda_i``.
      user_reg: the ridge strength ``lambda_u``.
      iterations: the rounds of alternating updates.

    Returns:
      ``(mu, item_bias [n_items], user_bias [n_users])``, the biases as float32.
    """
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    r = np.asarray(targets, np.float64)
    mu = float(r.mean())
    n_u = np.bincount(users, minlength=n_users)[:n_users]
    n_i = np.bincount(items, minlength=n_items)[:n_items]
    b_u, b_i = np.zeros(n_users), np.zeros(n_items)
    for _ in range(iterations):
        b_u = np.bincount(users, weights=r - mu - b_i[items], minlength=n_users)[:n_users] / (user_reg + n_u)
        b_i = np.bincount(items, weights=r - mu - b_u[users], minlength=n_items)[:n_items] / (item_reg + n_i)
    return mu, b_i.astype(np.float32), b_u.astype(np.float32)


def supervised_history(ratings: Any, items: np.ndarray, targets: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Build the history of independent rows for a sequence model.

    Each row's history is the ``length`` ratings of the same user that come before it (by time when there are
    timestamps, else in file order), oldest first, left-padded with item 0 / rating 0.

    Args:
      ratings: the ratings frame (``user`` and, optionally, ``timestamp`` columns), one row per rating.
      items: the vocabulary id of each row's item.
      targets: the target of each row.
      length: the history length ``L``.

    Returns:
      ``history_item`` (int32) and ``history_rating`` (float32), ``[rows, length]`` each, in the rows' order.
    """
    users = ratings["user"].to_numpy()
    keys = [np.arange(len(users))]
    if "timestamp" in ratings:
        keys.insert(0, ratings["timestamp"].to_numpy())
    order = np.lexsort(tuple(keys[::-1]) + (users,))
    sorted_users = users[order]
    offsets = np.arange(-length, 0)  # oldest first
    idx = np.arange(len(order))[:, None] + offsets[None, :]
    valid = idx >= 0
    idx = np.where(valid, idx, 0)
    valid &= sorted_users[idx] == sorted_users[:, None]
    hist_item = np.where(valid, np.asarray(items)[order][idx], 0)
    hist_rating = np.where(valid & (hist_item > 0), np.asarray(targets, np.float32)[order][idx], 0.0)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return {"history_item": hist_item[back].astype(np.int32), "history_rating": hist_rating[back].astype(np.float32)}


def train_supervised(
    params: Any,
    rows: Mapping[str, np.ndarray],
    *,
    loss_fn: Callable,
    epochs: int = 5,
    learning_rate: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    item_dropout: float = 0.0,
) -> tuple[Any, np.ndarray]:
    """Train ``params`` on ``rows`` (independent ratings, no tasks) by Adam on minibatches.

    One jit-compiled epoch (``lax.scan`` over shuffled minibatches; the last partial batch is dropped).

    Args:
      params: the starting model variables.
      rows: the training rows, ``[n, ...]`` per key.
      loss_fn: ``loss_fn(params, rows, mask) -> loss``.
      epochs: passes over the rows.
      learning_rate: Adam's learning rate.
      batch_size: rows per minibatch (at most ``n``).
      seed: the seed of the shuffles and of the dropout.
      item_dropout: the fraction of the ``item`` ids replaced by the OOV slot, drawn afresh each epoch
        (:func:`jaxrec.data.augment.drop_ids`, numpy rng ``[seed, epoch]``).

    Returns:
      ``(params, per-epoch mean loss)``.
    """
    items = np.asarray(rows["item"]) if item_dropout and "item" in rows else None  # host copy, redrawn per epoch
    rows = {k: jnp.asarray(v) for k, v in rows.items()}
    n = int(next(iter(rows.values())).shape[0])
    batch_size = max(1, min(int(batch_size), n))
    steps = n // batch_size
    optimizer = optax.adam(learning_rate)
    mask = jnp.ones(batch_size, bool)

    @jax.jit
    def epoch(params, opt_state, rows, key):
        order = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)

        def step(carry, idx):
            params, opt_state = carry
            batch = {k: v[idx] for k, v in rows.items()}
            loss, grads = jax.value_and_grad(loss_fn)(params, batch, mask)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
        return params, opt_state, jnp.mean(losses)

    opt_state = optimizer.init(params)
    history = []
    for e in range(int(epochs)):
        if items is not None:
            rows = dict(rows, item=jnp.asarray(drop_ids(items, item_dropout, np.random.default_rng([seed, e]))))
        params, opt_state, loss = epoch(params, opt_state, rows, jax.random.key(seed * 1000 + e))
        history.append(float(loss))
    logger.info("supervised training: %d epochs, loss %s", epochs, [round(x, 4) for x in history])
    return params, np.asarray(history)


def tune_finetune_lr(
    params: Any,
    val_tasks: Any,
    learning_rates: Sequence[float],
    inner: InnerLoop,
    *,
    apply_fn: Callable,
    target: str = "rating",
    rating_range: Sequence[float] | None = None,
    implicit: bool = False,
    batch_size: int = 64,
) -> tuple[float, dict[float, float]]:
    """Choose the fine-tuning rate with the best validation MAE (implicit: AUC).

    The learning rate is a traced argument, so the whole grid shares one compilation per batch shape.

    Args:
      params: the supervised model's variables.
      val_tasks: the validation tasks (a :class:`~jaxrec.TaskSet` or an iterable of batches).
      learning_rates: the grid of rates.
      inner: the :class:`~jaxrec.InnerLoop` of the fine-tuning.
      apply_fn: ``apply_fn(params, rows) -> scores``.
      target: the row key of the targets.
      rating_range: the range predictions are clipped to for MAE.
      implicit: score by AUC instead of MAE.
      batch_size: tasks per evaluation batch.

    Returns:
      ``(rate, {rate: score})``: the best rate and the validation score of every rate.
    """
    predict = functools.partial(meta_predict, inner=inner, apply_fn=apply_fn)
    scores = {}
    for lr in learning_rates:
        stats = collect(
            predict,
            (params, jnp.asarray(lr, jnp.float32)),
            val_tasks,
            target=target,
            rating_range=rating_range,
            implicit=implicit,
            batch_size=batch_size,
            name="finetune",
        )
        metrics = aggregate(stats, implicit=implicit)
        score = -metrics["auc"] if implicit else metrics["mae"]
        scores[float(lr)] = float(abs(score))
        if not np.isfinite(score):
            scores[float(lr)] = float("inf") if not implicit else 0.0
    pick = max if implicit else min
    best = pick(scores, key=scores.get)
    logger.info("finetune learning rate %s (validation %s)", best, scores)
    return best, scores


# ----------------------------------------------------------------------------------------------------------------
# an experiment's baselines
