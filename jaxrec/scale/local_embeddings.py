"""Task-local embedding adaptation: adapt only the embedding rows a task touches.

A task (one user) with ``S`` support and ``Q`` query rows reads at most ``R = S + Q`` rows (``R = (S + Q) L`` for
ids ``[rows, L]``) of an embedding table ``W [V, E]``. Let ``u = unique(ids)`` (``R`` slots, padded with id 0) and
``W_u = W[u]`` (``[R, E]``), and remap every id ``i`` to its slot ``j`` with ``u[j] = i``. Then for any loss ``L``

    L(W; ids) = L(W_u; local ids),    grad_W L = scatter_add(u, grad_{W_u} L),

and every row of ``W`` outside ``u`` has a zero gradient, so an SGD inner loop on ``W`` never moves it: adapting
``W_u`` for ``K`` steps and reading the query through it gives exactly the query loss of adapting the full table
(elementwise inner optimisers too: a row with zero gradients takes zero steps). Because ``W_u`` is a
differentiable gather of ``W``, ``jax.grad`` of the meta-loss flows back to ``W`` through the gather's transpose
(a scatter-add of ``T`` tasks x ``R`` rows into ``W``): the exact meta-gradient, second or first order, at a cost
per task independent of ``V``.

Padding rows take id 0 (as :func:`jaxrec.zero_padding` does), and ids outside ``[0, V)`` map to the OOV slot 0
(as the models do), so slot 0 of the local table is global row 0 whenever a padded or OOV row exists. Slots past
the number of distinct ids repeat row 0 and are read by nothing: they keep a zero gradient and add nothing.

Tables that share a row key (NeuMF's ``gmf_embed_item`` and ``mlp_embed_item``, MF's ``embed_item`` and
``bias_embed_item``, FM's ``factors_embed_item`` and ``linear/embed_item``) read the same ids, so they share one
``u``, computed once from the key's original ids, and the key's ids are remapped once: every such table ``W`` is
replaced by its own ``W[u]`` read through the same local ids, and the identity above holds for each of them (the
loss reads each table at the rows it would have read). Sampled negatives ``neg_<key>`` (BPR's ``neg_item``) read
the tables of ``<key>`` too: their ids join the key's ``u`` (``R`` counts them) and are remapped with it.

Tables with ``V <= R`` are left as they are: localising them saves nothing. Localised tables do not have the
shape a Flax ``nn.Embed`` declares; :func:`local_tables_context` lets ``nn.Embed`` read such a table (it is entered
by :mod:`jaxrec.core.objectives` around every evaluation of the loss on localised parameters).

Exactness assumes that the task loss depends on a table only through the rows its ids select (true of every
model in :mod:`jaxrec.models`) and that ``inner_aux`` vanishes on untouched rows (true of
:func:`jaxrec.l2_to_init`, which is zero where ``phi = theta``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxrec.core.params import embedding_tables, path_names

__all__ = ["localize", "gather_tables", "scatter_add_tables", "local_tables_context", "Tables"]

Tables = Mapping[tuple[str, ...], str]

logger = logging.getLogger(__name__)


def _valid_ids(ids: jax.Array, vocab: int, mask: jax.Array) -> jax.Array:
    """Ids outside ``[0, vocab)`` and ids of padded rows become 0 (the OOV / padding slot)."""
    ids = jnp.asarray(ids).astype(jnp.int32)
    keep = mask.reshape(mask.shape + (1,) * (ids.ndim - mask.ndim)).astype(bool)
    return jnp.where(keep & (ids >= 0) & (ids < vocab), ids, 0)


NEGATIVE_PREFIX = "neg_"  # ``neg_<key>``: the ids of sampled negatives, read through the tables of ``<key>``


def _read_keys(rows: Mapping[str, Any], key: str) -> list[str]:
    """The keys of ``rows`` whose ids index the tables of row key ``key``: ``key`` and ``neg_<key>``."""
    return [name for name in (key, NEGATIVE_PREFIX + key) if name in rows]


def _local_table(ids: list[jax.Array], size: int) -> tuple[jax.Array, list[jax.Array]]:
    """``u`` (``[size]`` sorted distinct ids of all ``ids``, padded with 0) and each array's local ids
    (``u[local] = ids``)."""
    both = jnp.concatenate([part.reshape(-1) for part in ids])
    unique, inverse = jnp.unique(both, size=size, fill_value=0, return_inverse=True)
    inverse = inverse.reshape(-1).astype(jnp.int32)
    local, offset = [], 0
    for part in ids:
        local.append(inverse[offset : offset + part.size].reshape(part.shape))
        offset += part.size
    return unique.astype(jnp.int32), local


def tables_by_key(params: Any, tables: Tables) -> dict[str, tuple[list[tuple[str, ...]], int]]:
    """The tables one remapping of a key's ids serves, grouped by row key.

    Args:
      params: the parameter pytree.
      tables: ``{param path: row key}``.

    Returns:
      ``{row key: (table paths, vocabulary size)}``.

    Raises:
      KeyError: a table path is not in ``params``.
      ValueError: a row key other than the one that indexes a table named as one (its name says which:
        :func:`~jaxrec.core.params.embedding_tables`; a path named otherwise is taken as given, with a warning), or
        tables sharing a row key have different vocabulary sizes (one remapping cannot serve both).
    """
    leaves = {path_names(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    indexed_by = embedding_tables(params)
    by_key: dict[str, list[tuple[str, ...]]] = {}
    for path, key in tables.items():
        path = tuple(path)
        if path not in leaves:
            raise KeyError(f"embedding table {'/'.join(path)} not found in params")
        # a wrong table or key is no error of XLA's: ids outside the local table read NaN, every step is skipped
        if path not in indexed_by:  # a model of one's own may name its tables otherwise: its key is taken as given
            logger.warning(
                "%s is not named as an embedding table ([<role>_]embed_<row key>/embedding): its rows are taken to be "
                "indexed by the ids of %r, as given",
                "/".join(path),
                key,
            )
        elif indexed_by[path] != key:
            raise ValueError(
                f"table {'/'.join(path)} is indexed by the row key {indexed_by[path]!r} (its name says so), not "
                f"{key!r}; jaxrec.embedding_tables(params) gives every table's key"
            )
        by_key.setdefault(key, []).append(path)
    out = {}
    for key, paths in by_key.items():
        vocabs = sorted({int(leaves[p].shape[0]) for p in paths})
        if len(vocabs) > 1:
            raise ValueError(
                f"tables {['/'.join(p) for p in paths]} share row key {key!r} but have vocabularies {vocabs}"
            )
        out[key] = (paths, vocabs[0])
    return out


def localize(
    params: Any,
    support: Mapping[str, jax.Array],
    support_mask: jax.Array,
    query: Mapping[str, jax.Array],
    query_mask: jax.Array,
    tables: Tables,
) -> tuple[Any, dict, dict, dict]:
    """Replace each table in ``tables`` by the rows one task touches and remap its ids.

    Tables that share a row key (NeuMF's ``gmf_embed_item`` and ``mlp_embed_item``) share one index, built once
    from the key's original ids (with those of ``neg_<key>``, if present); the key's ids are remapped once.

    Args:
      params: the parameter pytree (nested dicts, as Flax variables).
      support: one task's support rows (a dict of ``[rows]`` or ``[rows, L]`` arrays).
      support_mask: bool ``[rows]``; padded rows read row 0.
      query: one task's query rows (a dict of ``[rows]`` or ``[rows, L]`` arrays).
      query_mask: bool ``[rows]``; padded rows read row 0.
      tables: ``{param path: row key}`` (see :func:`jaxrec.models.embedding_tables`).

    Returns:
      ``(local_params, local_support, local_query, index)``: ``index[path] = u``, the global rows behind the
      local table (the same array for every table of a row key; use :func:`gather_tables` to localise a
      params-shaped pytree such as Meta-SGD rates the same way). Pure and differentiable in ``params``.

    Raises:
      KeyError: a table path is not in ``params``.
      ValueError: tables sharing a row key have different vocabulary sizes (one remapping cannot serve both).
    """
    # ids are read from the caller's rows (never from rows already remapped) and written to copies
    local_support, local_query = dict(support), dict(query)
    index: dict[tuple[str, ...], jax.Array] = {}
    for key, (paths, vocab) in tables_by_key(params, tables).items():
        if key not in support or key not in query:
            continue
        parts = [
            (local_support, name, _valid_ids(support[name], vocab, support_mask)) for name in _read_keys(support, key)
        ]
        parts += [(local_query, name, _valid_ids(query[name], vocab, query_mask)) for name in _read_keys(query, key)]
        size = sum(ids.size for _, _, ids in parts)
        if vocab <= size:
            continue
        unique, local = _local_table([ids for _, _, ids in parts], size)
        for (rows, name, _), local_ids in zip(parts, local, strict=True):
            rows[name] = local_ids
        for path in paths:
            index[path] = unique
    return gather_tables(params, index), local_support, local_query, index


def gather_tables(tree: Any, index: Mapping[tuple[str, ...], jax.Array]) -> Any:
    """``tree`` with each leaf at a path of ``index`` replaced by its rows ``leaf[index[path]]``.

    Args:
      tree: a params-shaped pytree (the params, or e.g. Meta-SGD rates).
      index: ``{param path: u}``, as :func:`localize` returns it.

    Returns:
      The pytree with its tables localised; other leaves unchanged.
    """

    def gather(path, leaf):
        rows = index.get(path_names(path))
        return leaf if rows is None else jnp.take(leaf, rows, axis=0)

    return jax.tree_util.tree_map_with_path(gather, tree)


def scatter_add_tables(full: Any, local: Any, index: Mapping[tuple[str, ...], jax.Array]) -> Any:
    """``full`` plus ``local`` scattered back into the full tables.

    Args:
      full: a params-shaped pytree with full tables.
      local: a pytree with the structure of ``full``, its tables localised; it may carry leading task axes.
      index: ``{param path: u}``; its arrays carry the same leading task axes as ``local``.

    Returns:
      ``full.at[index[path]].add(local)`` at table paths, and ``full + local`` summed over the task axes
      elsewhere.
    """

    def add(path, f, loc):
        rows = index.get(path_names(path))
        if rows is None:
            extra = loc.ndim - f.ndim
            return f + jnp.sum(loc, axis=tuple(range(extra))) if extra else f + loc
        flat_rows = rows.reshape(-1)
        return f.at[flat_rows].add(loc.reshape((flat_rows.size,) + f.shape[1:]))

    return jax.tree_util.tree_map_with_path(add, full, local)


def _embed_interceptor(next_fun, args, kwargs, context):
    """Let ``nn.Embed.setup`` accept a table whose row count differs from ``num_embeddings`` (a local table).

    Flax checks a stored parameter's shape against its initialiser; a localised table fails that check, so its
    ``setup`` reads the stored table directly instead. Every other method and module runs unchanged.
    """
    import flax.linen as nn

    module = context.module
    if context.method_name == "setup" and isinstance(module, nn.Embed) and module.scope is not None:
        if module.scope.has_variable("params", "embedding"):
            table = module.scope.get_variable("params", "embedding")
            if getattr(table, "shape", (module.num_embeddings,))[0] != module.num_embeddings:
                module.embedding = table
                return None
    return next_fun(*args, **kwargs)


@contextlib.contextmanager
def local_tables_context():
    """A context manager: while active (at trace time), Flax ``nn.Embed`` modules accept localised ``[R, E]`` tables.

    Yields:
      None.
    """
    try:
        import flax.linen as nn
    except ImportError:  # pragma: no cover - flax is a dependency
        yield
        return
    with nn.intercept_methods(_embed_interceptor):
        yield


def local_rows(vocab: int, rows: int, width: int = 1) -> int:
    """The rows of a local table.

    Args:
      vocab: the table's vocabulary size ``V``.
      rows: the number of support + query rows.
      width: the number of ids per row (``L``, 1 for a plain id).

    Returns:
      ``min(vocab, rows * width)``.
    """
    return min(int(vocab), int(rows) * int(width))


def local_fraction(params: Any, tables: Tables, rows: int) -> float:
    """The fraction of the parameters a task adapts with local tables (for reports).

    Args:
      params: the parameter pytree.
      tables: ``{param path: row key}`` of the localised tables.
      rows: the rows of each local table (:func:`local_rows`); tables with at most this many rows count in full.

    Returns:
      ``sum |local| / sum |full|``.
    """
    leaves = {path_names(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    full = sum(math.prod(leaf.shape) for leaf in leaves.values())
    local = 0
    for path, leaf in leaves.items():
        if path in tables and leaf.shape[0] > rows:
            local += rows * math.prod(leaf.shape[1:])
        else:
            local += math.prod(leaf.shape)
    return local / max(full, 1)
