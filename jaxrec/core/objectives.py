"""Meta-objectives over a batch of tasks: MAML (second or first order), Meta-SGD and Reptile.

For a batch of ``T`` tasks with support sets ``s_t`` and query sets ``q_t`` the MAML meta-loss is

    L(theta) = sum_t w_t L_{q_t}(phi_t(theta)) / sum_t w_t,    phi_t = adapt(theta, s_t),

where ``w_t = 1`` when task ``t`` has at least one query row and ``0`` for a padding task. Tasks are mapped with
``jax.vmap`` (no Python loop per task). ``jax.grad(meta_loss)`` is the exact MAML meta-gradient for
``order="second"`` (Finn et al. 2017); for ``order="first"`` it is the first-order approximation.

Meta-SGD (Li et al. 2017) meta-learns a per-parameter inner learning rate ``alpha`` together with ``theta``:
``phi_t = theta - alpha * grad L_{s_t}(theta)`` (for K steps), and the meta-gradient is taken w.r.t. both.

Reptile (Nichol et al. 2018) needs no second derivatives: ``theta <- theta + eps * mean_t (phi_t - theta)``.
Here its *pseudo-gradient* ``theta - mean_t phi_t`` is returned, so any optax optimiser can apply it;
``optax.sgd(eps)`` gives exactly the update above.

``task_chunk=N`` evaluates the batch ``N`` tasks at a time inside a ``lax.scan`` and accumulates the gradient:
the same value and gradient (up to float summation order) with the peak memory of ``N`` tasks.

``local_embeddings={table path: row key}`` (e.g. :func:`jaxrec.models.embedding_tables`) adapts, per task, only
the embedding rows the task reads (:mod:`jaxrec.scale.local_embeddings`): the same meta-loss and meta-gradient, at a
cost per task independent of the vocabulary size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxrec.core.batch import TaskBatch, validate_batch, zero_padding
from jaxrec.core.inner import InnerLoop, adapt, as_inner_loop
from jaxrec.core.metasgd import MetaSGDParams
from jaxrec.core.params import has_task_initialisation, task_initialisation
from jaxrec.scale.local_embeddings import gather_tables, local_tables_context, localize, scatter_add_tables

__all__ = [
    "ALGORITHMS",
    "meta_loss",
    "meta_value_and_grad",
    "reptile_direction",
    "task_losses",
]

ALGORITHMS = ("maml", "reptile", "metasgd")


def _task_weights(mask: jax.Array) -> jax.Array:
    return jnp.any(mask, axis=1).astype(jnp.result_type(float))


def task_losses(
    params: Any,
    batch: TaskBatch,
    inner: InnerLoop | None = None,
    *,
    inner_lr: Any,
    local_embeddings: Mapping | None = None,
    **options: Any,
) -> jax.Array:
    """The query loss of each task after adaptation; ``vmap`` over tasks, params shared.

    Args:
      params: the meta-parameters ``theta`` (any pytree, or per-task initialisations such as
        :class:`~jaxrec.contrib.grouping.GroupedParams`).
      batch: the :class:`~jaxrec.TaskBatch`.
      inner: the :class:`~jaxrec.InnerLoop`, or give its fields as keywords
        (:func:`jaxrec.core.inner.as_inner_loop`).
      inner_lr: the inner rate (scalar, or params-shaped per-parameter rates).
      local_embeddings: ``{table path: row key}``, or None. Each task then adapts only the table rows it reads
        (:func:`jaxrec.scale.local_embeddings.localize`); the losses are the same.
      **options: inner-loop fields as keywords.

    Returns:
      The per-task query losses, ``[T]``.

    Raises:
      BatchShapeError: the batch's arrays and masks disagree (:func:`~jaxrec.validate_batch`).
    """
    inner = as_inner_loop(inner, **options)
    validate_batch(batch)

    def one_task(support, support_mask, query, query_mask):
        _, _, loss, _ = _adapt_and_score(
            params, inner_lr, support, support_mask, query, query_mask, inner=inner, local_embeddings=local_embeddings
        )
        return loss

    return jax.vmap(one_task)(batch.support, batch.support_mask, batch.query, batch.query_mask)


def _adapt_and_score(params, inner_lr, support, support_mask, query, query_mask, *, inner, local_embeddings):
    """One task: ``(theta, phi, query loss at phi, index)``, embedding tables localised when asked.

    :class:`~jaxrec.contrib.grouping.GroupedParams` are first reduced to the task's group (``select_group``).

    ``theta`` and ``phi`` are the (possibly local) initial and adapted parameters; ``index`` maps local table rows
    back to the full tables (empty without localisation).
    """
    params, inner_lr = task_initialisation(params, inner_lr, support, support_mask, inner.loss_fn)
    theta, rates, support, query, index, context = _maybe_localize(
        params, inner_lr, support, support_mask, query, query_mask, local_embeddings
    )
    with context:
        phi = adapt(theta, support, support_mask, inner, inner_lr=rates)
        loss = inner.outer_loss_fn(phi, zero_padding(query, query_mask), query_mask)
    return theta, phi, loss, index


def _maybe_localize(params, inner_lr, support, support_mask, query, query_mask, tables):
    """``(theta, inner_lr, support, query, index, context)`` of one task, with its embedding tables localised if asked.

    A params-shaped ``inner_lr`` (Meta-SGD) is localised like the parameters; ``context`` lets Flax embedding
    modules read the local tables.
    """
    if not tables:
        return params, inner_lr, support, query, {}, contextlib.nullcontext()
    theta, support, query, index = localize(params, support, support_mask, query, query_mask, tables)
    return theta, gather_tables(inner_lr, index), support, query, index, local_tables_context()


def _chunked(batch: TaskBatch, task_chunk: int) -> TaskBatch:
    """Reshape ``[T, ...]`` to ``[T / N, N, ...]``, padding with empty tasks so that N divides T."""
    num_tasks = batch.num_tasks
    if task_chunk <= 0:
        raise ValueError(f"task_chunk must be a positive number of tasks, got {task_chunk}")
    pad = (-num_tasks) % task_chunk

    def reshape(x, fill):
        if pad:
            x = jnp.concatenate([x, jnp.full((pad,) + x.shape[1:], fill, x.dtype)], axis=0)
        return x.reshape((-1, task_chunk) + x.shape[1:])

    return TaskBatch(
        support=jax.tree.map(lambda x: reshape(x, 0), batch.support),
        query=jax.tree.map(lambda x: reshape(x, 0), batch.query),
        support_mask=reshape(batch.support_mask, False),
        query_mask=reshape(batch.query_mask, False),
        task_id=None,
    )


def _weighted_sum(params, batch, inner_lr, inner, local_embeddings):
    losses = task_losses(params, batch, inner, inner_lr=inner_lr, local_embeddings=local_embeddings)
    weights = _task_weights(batch.query_mask)
    # jnp.where keeps a padding task's value (never NaN by construction, but be safe) out of the sum
    return jnp.sum(jnp.where(weights > 0, losses * weights, 0.0)), jnp.sum(weights)


def meta_loss(
    params: Any,
    batch: TaskBatch,
    inner: InnerLoop | None = None,
    *,
    inner_lr: Any = None,
    task_chunk: int | None = None,
    local_embeddings: Mapping | None = None,
    **options: Any,
) -> jax.Array:
    """The mean query loss after adaptation over the real tasks of ``batch`` (see the module docstring).

    ``jax.grad(meta_loss)`` is the exact MAML meta-gradient for ``order="second"``.

    Args:
      params: the meta-parameters ``theta``; a :class:`~jaxrec.MetaSGDParams` uses its learned per-parameter
        rates (``inner_lr`` is then ignored).
      batch: the :class:`~jaxrec.TaskBatch`.
      inner: the :class:`~jaxrec.InnerLoop`, or its fields as keywords (``loss_fn=..., inner_steps=...``).
      inner_lr: the inner rate (scalar, or params-shaped per-parameter rates).
      task_chunk: evaluate the batch this many tasks at a time inside a ``lax.scan`` (the same value, with the
        peak memory of ``task_chunk`` tasks), or None for all at once.
      local_embeddings: ``{table path: row key}`` of tables that each task adapts only at the rows it reads, or
        None.
      **options: inner-loop fields as keywords.

    Returns:
      The meta-loss, a scalar.

    Raises:
      BatchShapeError: the batch's arrays and masks disagree.
      ValueError: ``task_chunk`` is not positive.
    """
    value, _ = _value_and_maybe_grad(
        params,
        batch,
        as_inner_loop(inner, **options),
        with_grad=False,
        inner_lr=inner_lr,
        task_chunk=task_chunk,
        local_embeddings=local_embeddings,
    )
    return value


def meta_value_and_grad(
    params: Any,
    batch: TaskBatch,
    inner: InnerLoop | None = None,
    *,
    inner_lr: Any = None,
    task_chunk: int | None = None,
    local_embeddings: Mapping | None = None,
    **options: Any,
) -> tuple:
    """The meta-loss and its gradient with respect to ``params``.

    Args:
      params: the meta-parameters (a :class:`~jaxrec.MetaSGDParams` is differentiated in both its fields).
      batch: the :class:`~jaxrec.TaskBatch`.
      inner: the :class:`~jaxrec.InnerLoop`, or its fields as keywords.
      inner_lr: the inner rate (ignored for :class:`~jaxrec.MetaSGDParams`).
      task_chunk: accumulate the value and gradient this many tasks at a time, or None for all at once.
      local_embeddings: ``{table path: row key}`` of task-local tables, or None.
      **options: inner-loop fields as keywords.

    Returns:
      ``(meta_loss, grad meta_loss)``; the gradient has the structure of ``params``.

    Raises:
      BatchShapeError: the batch's arrays and masks disagree.
      ValueError: ``task_chunk`` is not positive.
    """
    return _value_and_maybe_grad(
        params,
        batch,
        as_inner_loop(inner, **options),
        with_grad=True,
        inner_lr=inner_lr,
        task_chunk=task_chunk,
        local_embeddings=local_embeddings,
    )


def _value_and_maybe_grad(params, batch, inner, *, with_grad, inner_lr, task_chunk, local_embeddings):
    validate_batch(batch)

    def weighted(meta_params, chunk):
        if isinstance(meta_params, MetaSGDParams):
            return _weighted_sum(meta_params.params, chunk, meta_params.inner_lr, inner, local_embeddings)
        return _weighted_sum(meta_params, chunk, inner_lr, inner, local_embeddings)

    if with_grad:
        evaluate = jax.value_and_grad(weighted, has_aux=True)
    else:

        def evaluate(p, chunk):
            return weighted(p, chunk), None

    if task_chunk is None or task_chunk >= batch.num_tasks:
        (total, count), grads = evaluate(params, batch)
    else:
        chunks = _chunked(batch, int(task_chunk))
        zero_grads = jax.tree.map(jnp.zeros_like, params) if with_grad else None

        def accumulate(carry, chunk):
            total, count, grads = carry
            (t, c), g = evaluate(params, chunk)
            grads = jax.tree.map(jnp.add, grads, g) if with_grad else None
            return (total + t, count + c, grads), None

        zero = jnp.zeros((), jnp.result_type(float))
        (total, count, grads), _ = jax.lax.scan(accumulate, (zero, zero, zero_grads), chunks)
    denominator = jnp.maximum(count, 1.0)
    value = total / denominator
    if with_grad:
        grads = jax.tree.map(lambda g: g / denominator.astype(g.dtype), grads)
    return value, grads


def reptile_direction(
    params: Any,
    batch: TaskBatch,
    inner: InnerLoop | None = None,
    *,
    inner_lr: Any,
    local_embeddings: Mapping | None = None,
    **options: Any,
) -> tuple[jax.Array, Any]:
    """Reptile's pseudo-gradient ``theta - mean_t phi_t`` and the mean query loss at ``phi_t`` (Nichol et al. 2018).

    ``phi_t`` is ``theta`` adapted on task ``t``'s support set; the mean runs over tasks that have support rows
    (a padding task has none and would only shrink the step). No derivative of the inner loop is taken, so the
    inner loop runs in first order.

    Args:
      params: the meta-parameters ``theta`` (plain params: no per-task initialisation).
      batch: the :class:`~jaxrec.TaskBatch`.
      inner: the :class:`~jaxrec.InnerLoop`, or its fields as keywords.
      inner_lr: the inner rate.
      local_embeddings: ``{table path: row key}``, or None. Each task then adapts only the table rows it reads and
        its shift ``phi_t - theta`` (zero on every other row) is scatter-added back into the full tables.
      **options: inner-loop fields as keywords.

    Returns:
      ``(loss, direction)``: the mean query loss over tasks with query rows, and the pseudo-gradient (the
      structure of ``params``), which ``optax.sgd(eps)`` turns into Reptile's update.

    Raises:
      BatchShapeError: the batch's arrays and masks disagree.
      ValueError: ``params`` chooses its initialisation per task (e.g.
        :class:`~jaxrec.contrib.grouping.GroupedParams`), which needs a meta-gradient algorithm.
    """
    # no derivative of the inner loop is taken: its order is irrelevant, first order traces less
    inner = as_inner_loop(inner, **options).replace(order="first")
    validate_batch(batch)
    if has_task_initialisation(params):
        raise ValueError(
            "reptile_direction: per-task initialisations (e.g. contrib.grouping.GroupedParams) need a meta-gradient "
            "algorithm"
        )

    def one_task(support, support_mask, query, query_mask):
        theta, phi, loss, index = _adapt_and_score(
            params, inner_lr, support, support_mask, query, query_mask, inner=inner, local_embeddings=local_embeddings
        )
        shift = jax.tree.map(lambda p, t: jax.lax.stop_gradient(p - t), phi, theta)
        return shift, loss, index

    shifts, losses, index = jax.vmap(one_task)(batch.support, batch.support_mask, batch.query, batch.query_mask)
    support_weights = _task_weights(batch.support_mask)
    n_support = jnp.maximum(jnp.sum(support_weights), 1.0)

    def weigh(shift):
        w = support_weights.reshape((-1,) + (1,) * (shift.ndim - 1)).astype(shift.dtype)
        return w * shift

    total_shift = scatter_add_tables(jax.tree.map(jnp.zeros_like, params), jax.tree.map(weigh, shifts), index)
    direction = jax.tree.map(lambda s: -s / n_support.astype(s.dtype), total_shift)
    query_weights = _task_weights(batch.query_mask)
    loss = jnp.sum(jnp.where(query_weights > 0, losses, 0.0)) / jnp.maximum(jnp.sum(query_weights), 1.0)
    return loss, direction


def no_inner_step(algorithm: str) -> str:
    """Why ``algorithm`` learns nothing without an inner step (Reptile's direction ``theta - phi`` is 0, Meta-SGD's
    rates scale no step): the message of its refusal."""
    if algorithm == "reptile":
        return (
            "algorithm='reptile' moves theta towards the adapted parameters, which are theta itself with "
            "inner_steps=0: nothing would be learned; take at least one inner step"
        )
    return (
        "algorithm='metasgd' meta-learns the rates of the inner steps, and inner_steps=0 takes none: they would "
        "never move; take at least one inner step, or use algorithm='maml'"
    )


def check_algorithm(algorithm: str, order: str) -> None:
    """Check a meta-learning algorithm and inner-loop order.

    Args:
      algorithm: one of :data:`ALGORITHMS`.
      order: ``"second"`` or ``"first"``.

    Raises:
      ValueError: either is unknown.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}: expected one of {ALGORITHMS}")
    if order not in ("second", "first"):
        raise ValueError(f"unknown order {order!r}: expected 'second' or 'first'")
