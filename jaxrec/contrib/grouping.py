"""Several meta-learned initialisations; each task adapts from the one that fits its support set best.

One shared initialisation ``theta`` serves every user; when users differ in kind (harsh and generous raters, or
tastes that pull a network in opposite directions) the meta-gradients of one kind undo those of another (negative
transfer). Task grouping keeps ``G`` initialisations ``theta_1 .. theta_G`` of the leaves that adapt, and each task
picks one from its support set ``s_t`` alone (never its query set):

    g_t = argmin_g L_{s_t}(theta_g),    phi_t = adapt(theta_{g_t}, s_t),    L(theta) = mean_t L_{q_t}(phi_t),

a hard version of the multi-initialisation / task-clustering MAML of Yao et al. (ICML 2019, "Hierarchically
Structured Meta-learning") and Zhou et al. (TSA-MAML, 2021). The choice is an ``argmin`` (no gradient flows
through it); given the choices, the meta-gradient is exact: it reaches ``theta_{g_t}`` through task ``t`` and is
zero for the groups no task chose (Adam's momentum may still move a group in the steps after one that chose it).
The leaves outside the grouping filter are shared by every group. Group the decision layers, not embedding
tables: a grouped table is picked whole for every task (a ``[V, E]`` copy per task, which undoes
``local_embeddings``), and the state holds ``G`` copies of it.

:class:`GroupedParams` holds the stacked leaves; :func:`jaxrec.core.objectives.task_losses` (hence every
meta-objective but Reptile) and :func:`jaxrec.evaluation.predict.meta_predict` recognise it, and Meta-SGD's
per-parameter rates made from it are grouped alike.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jaxrec.core.batch import zero_padding
from jaxrec.core.losses import LossFn
from jaxrec.core.params import AdaptFilter, resolve_adapt_filter

__all__ = ["GroupedParams", "group_params", "select_group", "choose_group"]


@flax.struct.dataclass
class GroupedParams:
    """``G`` initialisations that share some leaves, as one params pytree.

    Attributes:
      params: the params pytree; its grouped leaves carry a leading ``[G]`` axis.
      grouped: one bool per leaf of ``params`` (``jax.tree.leaves`` order): whether the leaf is grouped (static).
    """

    params: Any
    grouped: tuple[bool, ...] = flax.struct.field(pytree_node=False)

    @property
    def num_groups(self) -> int:
        """``G``, the number of initialisations."""
        leaves = jax.tree.leaves(self.params)
        return int(next(leaf.shape[0] for leaf, g in zip(leaves, self.grouped, strict=True) if g))

    def pick(self, group: Any) -> Any:
        """The plain params pytree of one initialisation.

        Args:
          group: the group index ``g`` (an int or a traced scalar).

        Returns:
          ``theta_g``: each grouped leaf at index ``group``, the shared leaves as they are.
        """
        leaves, treedef = jax.tree.flatten(self.params)
        picked = [leaf[group] if g else leaf for leaf, g in zip(leaves, self.grouped, strict=True)]
        return treedef.unflatten(picked)

    def for_task(self, inner_lr: Any, rows: Mapping[str, jax.Array], mask: jax.Array, loss_fn: LossFn) -> tuple:
        """The per-task initialisation hook of :func:`jaxrec.core.params.task_initialisation`.

        Args:
          inner_lr: the inner rate; grouped rates (:class:`GroupedParams`) are picked by the same group.
          rows: the task's support rows.
          mask: bool ``[rows]``; false rows are padding.
          loss_fn: ``loss_fn(params, rows, mask) -> scalar``, the support loss that chooses the group.

        Returns:
          ``(theta_g, inner_lr_g)`` of the group that ``rows`` choose (:func:`choose_group`).
        """
        return select_group(self, inner_lr, rows, mask, loss_fn)


def group_params(params: Any, groups: int, grouped: AdaptFilter = None) -> GroupedParams:
    """Copies of some leaves of ``params``, stacked on a new leading axis; the other leaves are shared.

    The copies are equal: break the symmetry before meta-training (different starting values per group), or every
    task picks group 0 and the others never move.

    Args:
      params: the params pytree.
      groups: ``G``, the number of copies (>= 1).
      grouped: which leaves to copy, an adapt filter: a predicate on the key path, a bool pytree, or None for
        every leaf.

    Returns:
      The :class:`GroupedParams`.

    Raises:
      ValueError: ``groups`` is not a whole number >= 1, or the filter selects no leaf.
    """
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"groups must be a whole number >= 1, got {groups!r}")
    mask = resolve_adapt_filter(params, grouped)
    if not any(mask):
        raise ValueError("group_params: the filter selects no leaf to group")
    leaves, treedef = jax.tree.flatten(params)
    stacked = [jnp.stack([leaf] * int(groups)) if g else leaf for leaf, g in zip(leaves, mask, strict=True)]
    return GroupedParams(treedef.unflatten(stacked), mask)


def choose_group(grouped: GroupedParams, rows: Mapping[str, jax.Array], mask: jax.Array, loss_fn: LossFn) -> jax.Array:
    """The group of one task from its support rows: ``argmin_g loss_fn(theta_g, rows, mask)``.

    A task without support rows has nothing to choose by: it gets the middle group ``G // 2`` (with
    :meth:`jaxrec.Experiment.grouped_start`, the median user offset). No gradient flows through the choice.

    Args:
      grouped: the :class:`GroupedParams`.
      rows: the task's support rows.
      mask: bool ``[rows]``; false rows are padding (zeroed before the losses are evaluated).
      loss_fn: ``loss_fn(params, rows, mask) -> scalar``.

    Returns:
      The group ``g_t``, an int32 scalar.
    """
    rows = zero_padding(rows, mask)
    losses = jax.vmap(lambda g: loss_fn(grouped.pick(g), rows, mask))(jnp.arange(grouped.num_groups))
    best = jnp.argmin(jax.lax.stop_gradient(losses))
    return jnp.where(jnp.any(mask), best, grouped.num_groups // 2).astype(jnp.int32)


def select_group(
    params: Any, inner_lr: Any, rows: Mapping[str, jax.Array], mask: jax.Array, loss_fn: LossFn
) -> tuple[Any, Any]:
    """The initialisation and inner rate of one task (:func:`choose_group`).

    Args:
      params: :class:`GroupedParams`, or plain params (which pass through unchanged, with ``inner_lr``).
      inner_lr: the inner rate; a grouped ``inner_lr`` (Meta-SGD's rates of grouped params) is picked with the
        same ``g``.
      rows: the task's support rows.
      mask: bool ``[rows]``; false rows are padding.
      loss_fn: ``loss_fn(params, rows, mask) -> scalar``, the support loss that chooses the group.

    Returns:
      ``(theta_g, inner_lr_g)``.
    """
    if not isinstance(params, GroupedParams):
        return params, inner_lr
    group = choose_group(params, rows, mask, loss_fn)
    if isinstance(inner_lr, GroupedParams):
        inner_lr = inner_lr.pick(group)
    return params.pick(group), inner_lr
