"""Parameter paths: naming the leaves of a params pytree, choosing which adapt, finding embedding tables.

A leaf is addressed by its key path from ``jax.tree_util.tree_flatten_with_path``, read as plain strings
(:func:`path_names`, e.g. ``("params", "head", "output", "kernel")``). An *adapt filter* chooses the leaves that
move in the inner loop: ``None`` (every leaf), a predicate ``(path, leaf) -> bool``, or a bool pytree with the
structure of the params; :func:`adapt_filter` builds predicates from names (``"all"``, ``"head"``, a regex).

A params object may also choose its own initialisation per task: if it has a method
``for_task(inner_lr, rows, mask, loss_fn) -> (params, inner_lr)`` (see :func:`task_initialisation`), the inner
loop starts each task from what it returns. :class:`jaxrec.contrib.grouping.GroupedParams` is one such object.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "AdaptFilter",
    "adapt_filter",
    "adapt_mask",
    "embedding_tables",
    "path_names",
    "resolve_adapt_filter",
    "task_initialisation",
    "has_task_initialisation",
    "named_filter",
]

# an adapt filter: None (every leaf), a predicate (path, leaf) -> bool, or a bool pytree with the params' structure
AdaptFilter = Callable[[tuple, Any], bool] | Any | None


def path_names(path) -> tuple[str, ...]:
    """A key path of ``jax.tree_util.tree_flatten_with_path`` as plain strings.

    Args:
      path: the key path (a sequence of ``DictKey``, ``GetAttrKey``, ``SequenceKey``, ``FlattenedIndexKey``; any
        other entry is read with ``str``).

    Returns:
      The names, e.g. ``("params", "head", "output", "kernel")``.
    """
    names = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            names.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            names.append(str(entry.name))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            names.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            names.append(str(entry.key))
        else:
            names.append(str(entry))
    return tuple(names)


@functools.lru_cache(maxsize=256)
def named_filter(spec: str) -> AdaptFilter:
    """The predicate of a named adapt filter (``"all"``, ``"head"`` or a regex), one object per name, so that inner
    loops built from the same name are equal (and share compiled functions).

    Args:
      spec: the name or regex (not ``"default"``, which needs a model: use :func:`adapt_filter`).

    Returns:
      The predicate ``(path, leaf) -> bool``.

    Raises:
      ValueError: for ``"default"``.
    """
    if spec == "default":
        raise ValueError(
            "adapt_filter='default' needs the model whose default to use: jaxrec.adapt_filter(spec, model)"
        )
    return adapt_filter(spec)


def adapt_filter(spec: str | AdaptFilter | None, model: Any = None) -> AdaptFilter:
    """A predicate ``(path, leaf) -> bool`` choosing the parameters adapted per task.

    Args:
      spec: one of ``"all"``; ``"head"`` (everything under a module named ``head``: the decision layers of
        MeLU / NeuMF / GRU; MF, linear and FM have no head); ``"default"`` or ``None``
        (``model.default_adapt_filter``, needs ``model``); a callable (returned as is); otherwise a regex searched
        in the ``/``-joined path, e.g. ``"head/output"`` or ``"embed_user"``.
      model: the model whose ``default_adapt_filter`` serves ``"default"`` / ``None``.

    Returns:
      The predicate.

    Raises:
      ValueError: ``spec`` is ``"default"`` or ``None`` and no ``model`` is given.
      TypeError: ``spec`` is neither a string nor a callable.
    """
    if callable(spec):
        return spec
    if spec is None or spec == "default":
        if model is None:
            raise ValueError("adapt_filter('default') needs the model whose default_adapt_filter to use")
        return model.default_adapt_filter
    if spec == "all":
        return lambda path, leaf: True
    if spec == "head":
        return lambda path, leaf: "head" in path_names(path)
    if not isinstance(spec, str):
        raise TypeError(f"adapt filter must be a string or a callable, got {type(spec).__name__}")
    pattern = re.compile(spec)
    return lambda path, leaf: pattern.search("/".join(path_names(path))) is not None


def adapt_mask(params, predicate: AdaptFilter):
    """The adapt filter as a pytree of bools with the structure of ``params``, e.g. for ``optax.masked``.

    Args:
      params: the params pytree.
      predicate: a predicate ``(path, leaf) -> bool``.

    Returns:
      The bool pytree.

    Raises:
      ValueError: the predicate selects no leaf.
    """
    mask = jax.tree_util.tree_map_with_path(lambda path, leaf: bool(predicate(path, leaf)), params)
    if not any(jax.tree.leaves(mask)):
        raise ValueError("adapt filter selects no parameter")
    return mask


def embedding_tables(params) -> dict[tuple[str, ...], str]:
    """The ``nn.Embed`` tables of a params pytree and the row keys whose ids index them.

    Tables are named ``[<role>_]embed_<row key>``, e.g. ``("params", "embed_item", "embedding") -> "item"``,
    ``("params", "gmf_embed_user", "embedding") -> "user"``,
    ``("params", "embed_history_item", "embedding") -> "history_item"`` (ids ``[rows, L]``).

    Args:
      params: the params pytree.

    Returns:
      ``{parameter path: row key}``, one entry per embedding table.
    """
    tables = {}
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = path_names(path)
        if len(names) >= 2 and names[-1] == "embedding" and "embed_" in names[-2]:
            tables[names] = names[-2].split("embed_", 1)[1]
    return tables


def resolve_adapt_filter(params: Any, adapt_filter: AdaptFilter) -> tuple[bool, ...]:
    """The adapt filter as one bool per leaf of ``params``.

    Args:
      params: the params pytree.
      adapt_filter: ``None`` (adapt everything), a predicate ``(path, leaf) -> bool`` on the key path from
        ``jax.tree_util.tree_flatten_with_path``, or a pytree of bools with the structure of ``params``.

    Returns:
      One bool per leaf, in ``jax.tree.leaves`` order.

    Raises:
      ValueError: a bool-pytree filter does not have the structure of ``params``.
      TypeError: a predicate returned a traced value (it read a leaf's values inside ``jit``).
    """
    if adapt_filter is None:
        return tuple(True for _ in jax.tree.leaves(params))
    if callable(adapt_filter):
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        chosen = []
        for path, leaf in flat:
            try:
                chosen.append(bool(adapt_filter(path, leaf)))
            except jax.errors.ConcretizationTypeError as err:  # e.g. jnp.any(leaf != 0) on a traced leaf
                raise TypeError(
                    f"the adapt filter returned a traced value for {jax.tree_util.keystr(path)}: it decides from a "
                    "parameter's path, shape and dtype (Python bools), not from its values"
                ) from err
        return tuple(chosen)
    params_def = jax.tree.structure(params)
    filter_def = jax.tree.structure(adapt_filter)
    if params_def != filter_def:
        raise ValueError(
            f"adapt_filter pytree does not match the params structure:\n  params: {params_def}\n  filter: {filter_def}"
        )
    return tuple(bool(x) for x in jax.tree.leaves(adapt_filter))


def check_differentiable(params: Any) -> None:
    """Check that every leaf of ``params`` is a floating-point array, as a gradient with respect to it needs.

    Args:
      params: the params pytree.

    Raises:
      TypeError: naming the leaves of another dtype (``jax.grad`` names none of them).
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    bad = [
        f"{jax.tree_util.keystr(path)} ({jnp.result_type(leaf)})"
        for path, leaf in flat
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    if bad:
        raise TypeError(
            f"meta-parameters must be floating-point arrays; these are not: {', '.join(bad[:8])}"
            + (", ..." if len(bad) > 8 else "")
        )


def has_task_initialisation(params: Any) -> bool:
    """Whether ``params`` chooses its initialisation per task.

    Args:
      params: a params pytree or an object such as :class:`~jaxrec.contrib.grouping.GroupedParams`.

    Returns:
      True when ``params`` has a callable ``for_task`` method.
    """
    return callable(getattr(params, "for_task", None))


def task_initialisation(
    params: Any, inner_lr: Any, rows: Mapping[str, jax.Array], mask: jax.Array, loss_fn: Callable
) -> tuple[Any, Any]:
    """The initialisation one task adapts from, given its support rows.

    Plain params pass through; an object with ``for_task`` (e.g. grouped initialisations) picks its own.

    Args:
      params: the meta-learned params, or an object with ``for_task``.
      inner_lr: the inner rate (scalar or params-shaped).
      rows: the task's support rows.
      mask: bool ``[rows]``; false rows are padding.
      loss_fn: ``loss_fn(params, rows, mask) -> scalar``, the support loss.

    Returns:
      ``(theta_t, inner_lr_t)``.
    """
    if has_task_initialisation(params):
        return params.for_task(inner_lr, rows, mask, loss_fn)
    return params, inner_lr
