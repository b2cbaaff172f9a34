"""Row-sparse outer updates of large embedding tables: per-step cost independent of the vocabulary size.

**Batch-level localisation.** A :class:`~jaxrec.TaskBatch` of ``T`` tasks with ``S`` support and ``Q`` query rows
reads at most ``N = T (S + Q) L`` rows of an embedding table ``W [V, E]`` (``L`` ids per row, 1 for a plain id).
Let ``u = unique(ids)`` over *all* tasks and both sides (``U = min(N, V)`` slots: the sorted distinct ids, then
padding slots holding id 0), ``W_u = W[u]`` (``[U, E]``), and remap every id ``i`` of the batch to its slot ``j``
(``u[j] = i``). The remapped batch reads ``W_u[j] = W[u[j]] = W[i]``: the same values, so the meta-objective ``M``
(adaptation of every task and its query loss, with or without :mod:`jaxrec.scale.local_embeddings`) satisfies

    M(W; ids) = M~(W_u; local ids)    for every W,

because ``M`` depends on ``W`` only through the rows the batch's ids select (each task's inner loop moves only
the rows it reads; see :mod:`jaxrec.scale.local_embeddings`). Differentiating both sides (``W_u = P W`` with the
``[U, V]`` selection matrix ``P``, ``P[j, u[j]] = 1``):

    grad_W M = P^T grad_{W_u} M~,    i.e.    (grad_W M)[r] = sum_{j : u[j] = r} (grad_{W_u} M~)[j].

* A row ``r`` outside ``u`` has a zero gradient (the sum is empty).
* The distinct ids occupy distinct slots, so a row read by the batch appears in exactly one *distinct* slot.
  The padding slots past the distinct count also hold id 0, but no remapped id points at them: their gradient
  is exactly zero, so ``(grad_W M)[u[j]] = (grad_{W_u} M~)[j]`` row for row.
* Writing rows back, however, must not let a padding slot (a stale copy of row 0) overwrite row 0: every write
  is a scatter with ``mode="drop"`` whose masked slots point past the table (``V + j``), so they write nothing
  and the remaining indices are unique (``unique_indices=True`` holds).

A slot is *touched* (:attr:`RowIndex.touched`) when a real (unmasked) row of the batch reads it. Padded rows read
id 0 (as :func:`jaxrec.zero_padding` makes them), ids outside ``[0, V)`` read the OOV row 0 (as the models do),
so row 0 is touched when a real row holds the OOV id, and not when only padding reads it (its gradient through
masked rows is zero). Only touched rows are ever written.

Ids of a table are read under its row key and, when the batch has one, under ``neg_<key>`` (the sampled negatives
of :func:`jaxrec.bpr_loss`); both are remapped with the same ``u``. Tables that share a row key (NeuMF's
``gmf_embed_item`` and ``mlp_embed_item``) share ``u``.

**Row-sparse optimisers** (:class:`RowSparseOptimizer`) update only the touched rows of the full tables, in place
(a scatter into the donated buffers of :class:`jaxrec.MetaTrainer`), reading and writing ``U`` rows per table:

* :func:`row_sparse_sgd`: ``W[r] <- W[r] - lr g[r]`` on touched rows. **Exact**: it equals dense ``optax.sgd``,
  since every other row has a zero gradient (``W - lr * 0 = W``).
* :func:`row_sparse_adam`: *lazy Adam* (TensorFlow's ``LazyAdamOptimizer`` / ``tfa.optimizers.LazyAdam``,
  PyTorch's ``torch.optim.SparseAdam``): on a touched row ``r``, with the global step count ``t`` (shared by all
  rows and tables, incremented every applied step)

      m[r] <- b1 m[r] + (1 - b1) g[r],    v[r] <- b2 v[r] + (1 - b2) g[r]^2,
      W[r] <- W[r] - lr (m[r] / (1 - b1^t)) / (sqrt(v[r] / (1 - b2^t)) + eps),

  and ``m``, ``v`` and ``W`` of every other row are left as they are. **This is not dense Adam**: dense Adam
  also decays ``m``, ``v`` of a row with a zero gradient and keeps moving it by its momentum
  ``-lr m_hat / (sqrt(v_hat) + eps)``. Both agree on a step where every row with a non-zero ``m`` is touched
  (in particular at the first step, and for tables fully read by every batch); the arithmetic mirrors
  ``optax.adam`` so they then agree to rounding.

References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015; TensorFlow
``tf.contrib.opt.LazyAdamOptimizer`` and TensorFlow Addons ``LazyAdam``; PyTorch ``torch.optim.SparseAdam``;
Naumov et al., "Deep Learning Recommendation Model for Personalization and Recommendation Systems" (DLRM), 2019
(row-sparse embedding updates).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrec.core.batch import TaskBatch
from jaxrec.core.params import path_names
from jaxrec.scale.local_embeddings import Tables, _valid_ids, tables_by_key

__all__ = [
    "RowIndex",
    "RowSparseAdamState",
    "RowSparseOptimizer",
    "gather_rows",
    "localize_batch",
    "merge_tables",
    "row_sparse_adam",
    "row_sparse_sgd",
    "scatter_index",
    "split_tables",
]

NEGATIVE_PREFIX = "neg_"


class RowIndex(NamedTuple):
    """The rows of one table a batch reads.

    Attributes:
      ids: int32 ``[U]``: the sorted distinct global ids, then padding slots holding id 0.
      touched: bool ``[U]``: the slot holds a row read by a real (unmasked) row of the batch; padding slots and
        a row read only by padded rows are not touched and are never written.
    """

    ids: jax.Array
    touched: jax.Array


Index = dict[tuple[str, ...], RowIndex]


# ----------------------------------------------------------------------------------------------------------------
# batch-level localisation


def _read_keys(rows: Mapping[str, Any], key: str) -> list[str]:
    """The keys of ``rows`` whose ids index the table of row key ``key``: ``key`` and ``neg_<key>``."""
    return [k for k in (key, NEGATIVE_PREFIX + key) if k in rows]


def _batch_index(batch: TaskBatch, key: str, vocab: int) -> tuple[RowIndex, dict, dict]:
    """``(index, support, query)``: the distinct ids of row key ``key`` (and ``neg_<key>``) over the whole batch,
    and each side's remapped ids."""
    parts = []  # (side, key, valid ids, real-row flags)
    for side, rows, mask in (("support", batch.support, batch.support_mask), ("query", batch.query, batch.query_mask)):
        for name in _read_keys(rows, key):
            ids = _valid_ids(rows[name], vocab, mask)
            real = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (ids.ndim - mask.ndim)).astype(bool), ids.shape)
            parts.append((side, name, ids, real))
    flat = jnp.concatenate([ids.reshape(-1) for _, _, ids, _ in parts])
    real = jnp.concatenate([r.reshape(-1) for _, _, _, r in parts])
    size = min(int(flat.size), int(vocab))
    unique, inverse = jnp.unique(flat, size=size, fill_value=0, return_inverse=True)
    inverse = inverse.reshape(-1).astype(jnp.int32)
    # a slot is touched when a real row reads it; out-of-range targets (masked rows) are dropped
    touched = jnp.zeros((size,), bool).at[jnp.where(real, inverse, size)].set(True, mode="drop")
    support, query, offset = {}, {}, 0
    for side, name, ids, _ in parts:
        local = inverse[offset : offset + ids.size].reshape(ids.shape)
        offset += ids.size
        (support if side == "support" else query)[name] = local
    return RowIndex(unique.astype(jnp.int32), touched), support, query


def localize_batch(params: Any, batch: TaskBatch, tables: Tables) -> tuple[Any, TaskBatch, Index]:
    """Replace each table in ``tables`` by the rows the whole batch reads, and remap the batch's ids.

    Args:
      params: the parameter pytree (nested dicts as Flax variables, or e.g. a :class:`jaxrec.MetaSGDParams`:
        the paths in ``tables`` are those of this tree).
      batch: the :class:`~jaxrec.TaskBatch` (ids ``[T, rows]`` or ``[T, rows, L]``).
      tables: ``{param path: row key}`` (see :func:`jaxrec.models.embedding_tables`).

    Returns:
      ``(local_params, local_batch, index)``: ``local_params`` with each table ``W [V, E]`` replaced by
      ``W[u] [U, E]``; ``local_batch`` with the ids of each table's row key (and ``neg_<key>``) remapped to
      slots of ``u``; ``index[path]`` the :class:`RowIndex` of each table. Evaluate the objective on
      ``(local_params, local_batch)`` (inside :func:`jaxrec.scale.local_embeddings.local_tables_context` for Flax
      ``nn.Embed``); its gradient w.r.t. the local tables is the dense gradient's rows ``u`` (module docstring).

    Raises:
      KeyError: a table path is not in ``params`` or its row key is in neither side of the batch.
      ValueError: tables sharing a row key have different vocabulary sizes.
    """
    by_key = tables_by_key(params, tables)
    for key, (paths, _) in by_key.items():
        if key not in batch.support and key not in batch.query:
            raise KeyError(
                f"the batch has no row key {key!r} indexing embedding table {'/'.join(paths[0])}: a row-sparse "
                "update needs the ids of every table it updates"
            )
    support, query = dict(batch.support), dict(batch.query)
    index: Index = {}
    for key, (paths, vocab) in sorted(by_key.items()):
        rows_index, local_s, local_q = _batch_index(batch, key, vocab)
        support.update(local_s)
        query.update(local_q)
        for path in paths:
            index[path] = rows_index
    local_batch = TaskBatch(support, query, batch.support_mask, batch.query_mask, batch.task_id)
    return gather_rows(params, index), local_batch, index


def gather_rows(tree: Any, index: Mapping[tuple[str, ...], RowIndex]) -> Any:
    """``tree`` with each leaf at a path of ``index`` replaced by its rows ``leaf[index[path].ids]``.

    Args:
      tree: a params-shaped pytree (the params, or e.g. Meta-SGD's per-parameter rates).
      index: ``{param path: RowIndex}``, as :func:`localize_batch` returns it.

    Returns:
      The pytree with each indexed table ``[V, ...]`` replaced by its ``[U, ...]`` rows; other leaves unchanged.
    """

    def gather(path, leaf):
        rows = index.get(path_names(path))
        return leaf if rows is None else jnp.take(leaf, rows.ids, axis=0)

    return jax.tree_util.tree_map_with_path(gather, tree)


def scatter_index(rows: RowIndex, vocab: int, commit: Any = True) -> jax.Array:
    """The scatter targets of a table's slots.

    The targets are distinct by construction, so ``unique_indices=True`` holds.

    Args:
      rows: the table's :class:`RowIndex`.
      vocab: the table's row count ``V``.
      commit: a (possibly traced) bool; false drops every slot.

    Returns:
      int32 ``[U]``: the global id of a touched slot, ``vocab + slot`` (past the table, dropped by
      ``mode="drop"``) otherwise.
    """
    slots = jnp.arange(rows.ids.shape[0], dtype=jnp.int32)
    return jnp.where(rows.touched & commit, rows.ids, jnp.int32(vocab) + slots)


def _set_rows(table: jax.Array, target: jax.Array, values: jax.Array) -> jax.Array:
    return table.at[target].set(values.astype(table.dtype), mode="drop", unique_indices=True)


# ----------------------------------------------------------------------------------------------------------------
# splitting a pytree into its tables and the rest


def split_tables(tree: Any, tables: Tables | Mapping | set) -> tuple[Any, Any]:
    """Split a pytree into its tables and the rest.

    Args:
      tree: a params-shaped pytree.
      tables: the table paths (the keys of a ``{param path: row key}`` mapping, or a set of paths).

    Returns:
      ``(rest, tables_only)``: two trees shaped like ``tree``, holding ``None`` at the table paths and elsewhere
      respectively (optax optimisers and ``jax.tree.map`` skip ``None``).

    Raises:
      KeyError: a table path is not in ``tree``.
    """
    paths = {tuple(p) for p in tables}
    found = {path_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
    missing = sorted(paths - found)
    if missing:
        raise KeyError(f"embedding table {'/'.join(missing[0])} not found in params")
    rest = jax.tree_util.tree_map_with_path(lambda p, x: None if path_names(p) in paths else x, tree)
    only = jax.tree_util.tree_map_with_path(lambda p, x: x if path_names(p) in paths else None, tree)
    return rest, only


def merge_tables(rest: Any, tables: Any) -> Any:
    """The inverse of :func:`split_tables`: each leaf from whichever tree holds it.

    Args:
      rest: the tree holding ``None`` at the table paths.
      tables: the tree holding the tables (``None`` elsewhere).

    Returns:
      The merged pytree.
    """
    return jax.tree.map(lambda r, t: t if r is None else r, rest, tables, is_leaf=lambda x: x is None)


# ----------------------------------------------------------------------------------------------------------------
# row-sparse optimisers


class RowSparseOptimizer(NamedTuple):
    """An outer optimiser for embedding tables that touches only the rows a batch reads (optax style).

    Attributes:
      init: ``init(tables) -> state``; ``tables`` is a pytree whose array leaves are full ``[V, ...]`` tables
        (``None`` elsewhere, as :func:`split_tables` returns them).
      update: ``update(row_grads, state, tables, index, commit=True) -> (tables, state)``; ``row_grads`` is shaped
        like ``tables`` with ``[U, ...]`` gradients of the rows ``index[path].ids`` (the gradient w.r.t. the local
        tables of :func:`localize_batch`); it returns the tables with their touched rows updated in place and the
        new state. ``commit`` (a traced bool) false leaves every table and the state unchanged (the non-finite
        guard).
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]


def _map_tables(fn, tables, *trees, index, outputs: int) -> tuple:
    """``fn(rows, table, *leaves) -> outputs`` arrays over the table leaves of ``tables`` (``None`` elsewhere);
    returns ``outputs`` trees shaped like ``tables``."""
    is_none = lambda x: x is None  # noqa: E731
    flat, treedef = jax.tree_util.tree_flatten_with_path(tables, is_leaf=is_none)
    others = [treedef.flatten_up_to(tree) for tree in trees]
    results = []
    for (path, table), *leaves in zip(flat, *others, strict=True):
        if table is None:
            results.append((None,) * outputs)
            continue
        rows = index.get(path_names(path))
        if rows is None:
            raise KeyError(f"no row index for table {'/'.join(path_names(path))}")
        results.append(fn(rows, table, *leaves))
    return tuple(treedef.unflatten([r[i] for r in results]) for i in range(outputs))


def row_sparse_sgd(learning_rate: float) -> RowSparseOptimizer:
    """Row-sparse SGD, ``W[r] <- W[r] - lr g[r]`` on the touched rows: exactly dense ``optax.sgd(lr)``.

    Args:
      learning_rate: ``lr``.

    Returns:
      The :class:`RowSparseOptimizer` (its state is ``optax.EmptyState()``).
    """

    def init(tables):
        del tables
        return optax.EmptyState()

    def update(row_grads, state, tables, index, commit=True):
        def one(rows, table, grad):
            target = scatter_index(rows, table.shape[0], commit)
            step = (-learning_rate * grad).astype(table.dtype)  # optax.sgd: updates = -lr * g; p + updates
            return (table.at[target].add(step, mode="drop", unique_indices=True),)

        (new_tables,) = _map_tables(one, tables, row_grads, index=index, outputs=1)
        return new_tables, state

    return RowSparseOptimizer(init, update)


class RowSparseAdamState(NamedTuple):
    """Lazy Adam's state.

    Attributes:
      count: int32 scalar, the global step count ``t`` (shared by all rows and tables; committed steps only).
      mu: the first moments ``m``, full ``[V, ...]`` per table.
      nu: the second moments ``v``, full ``[V, ...]`` per table.
    """

    count: jax.Array
    mu: Any
    nu: Any


def row_sparse_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> RowSparseOptimizer:
    """Lazy Adam on the touched rows (see the module docstring).

    ``m``, ``v`` and the parameter of a row change only on steps whose batch reads it; bias correction uses the
    global step count. Not equal to dense Adam for rows a step does not touch (dense Adam keeps moving them by
    their momentum).

    Args:
      learning_rate: ``lr``.
      b1: the decay rate of the first moment.
      b2: the decay rate of the second moment.
      eps: added to ``sqrt(v_hat)`` in the denominator.

    Returns:
      The :class:`RowSparseOptimizer`; its state is a :class:`RowSparseAdamState`.
    """

    def init(tables):
        mu, nu = jax.tree.map(jnp.zeros_like, tables), jax.tree.map(jnp.zeros_like, tables)
        return RowSparseAdamState(jnp.zeros((), jnp.int32), mu, nu)

    def update(row_grads, state, tables, index, commit=True):
        count = optax.safe_increment(state.count)
        # as optax.tree.bias_correction: computed in the default float precision, divided in the moment's dtype
        correction1, correction2 = 1 - b1**count, 1 - b2**count

        def one(rows, table, grad, mu, nu):
            target = scatter_index(rows, table.shape[0], commit)
            m = (1 - b1) * grad + b1 * jnp.take(mu, rows.ids, axis=0)
            v = (1 - b2) * grad**2 + b2 * jnp.take(nu, rows.ids, axis=0)
            m_hat = m / correction1.astype(m.dtype)
            v_hat = v / correction2.astype(v.dtype)
            step = -learning_rate * (m_hat / (jnp.sqrt(v_hat) + eps))
            new = jnp.take(table, rows.ids, axis=0) + step.astype(table.dtype)
            return _set_rows(table, target, new), _set_rows(mu, target, m), _set_rows(nu, target, v)

        new_tables, mu, nu = _map_tables(one, tables, row_grads, state.mu, state.nu, index=index, outputs=3)
        count = jnp.where(commit, count, state.count)
        return new_tables, RowSparseAdamState(count, mu, nu)

    return RowSparseOptimizer(init, update)
