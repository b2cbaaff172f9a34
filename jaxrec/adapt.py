"""The inner loop: adapt a parameter pytree to one task's support set.

MAML's inner loop (Finn et al. 2017) takes ``K`` gradient steps from the shared initialisation ``theta``:

    phi_0 = theta,    phi_{k+1} = phi_k - alpha * grad L_s(phi_k),    k = 0 .. K-1,

and returns ``phi_K``. Written with ``jax.grad`` inside ``lax.scan``, ``phi_K`` stays a differentiable function
of ``theta``, so ``jax.grad`` of any function of ``phi_K`` is the exact second-order meta-gradient

    d L_q(phi_K) / d theta = prod_{k=0}^{K-1} (I - alpha H_s(phi_k)) grad L_q(phi_K).

``order="first"`` wraps every inner update in ``stop_gradient``: then ``d phi_K / d theta = I`` and the
meta-gradient is ``grad L_q(phi_K)`` (first-order MAML). Any optax ``GradientTransformation`` can replace plain
SGD; it is differentiated through like everything else.

Only the leaves selected by ``adapt_filter`` move in the inner loop (MeLU's local update of the decision layers,
Lee et al. 2019; ANIL, Raghu et al. 2020). The other leaves are held fixed inside the loop but remain inputs of
the loss, so the outer gradient still reaches them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrec.losses import LossFn

__all__ = ["adapt", "AdaptFilter", "resolve_adapt_filter", "zero_padding", "ORDERS", "inner_unroll"]

ORDERS = ("second", "first")
AdaptFilter = Callable[[tuple, Any], bool] | Any | None

_UNROLL: list[int | bool] = [1]


@contextlib.contextmanager
def inner_unroll(unroll: int | bool = True):
    """While active (at trace time), the inner-loop ``lax.scan`` of :func:`adapt` uses ``unroll=unroll``.

    ``True`` unrolls the ``K`` steps fully (no while loop), e.g. so that XLA's cost analysis, which counts a
    while-loop body once, counts every inner step. The result is the same computation either way.
    """
    _UNROLL.append(unroll)
    try:
        yield
    finally:
        _UNROLL.pop()


def zero_padding(rows: Mapping[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
    """Overwrite padded rows with zeros (slot 0 for ids).

    Masked losses already ignore padded rows in the forward pass, but a NaN or inf sitting in a padded row would
    still poison the backward pass (``0 * nan = nan`` in ``x^T dy``). Zeroing makes the content of padded rows
    irrelevant, bit for bit.
    """

    def clean(x):
        keep = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)).astype(bool)
        return jnp.where(keep, x, jnp.zeros((), x.dtype))

    return {key: clean(value) for key, value in rows.items()}


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}: expected one of {ORDERS}")


def resolve_adapt_filter(params: Any, adapt_filter: AdaptFilter) -> tuple[bool, ...]:
    """The adapt filter as one bool per leaf of ``params`` (in ``jax.tree.leaves`` order).

    ``adapt_filter`` is ``None`` (adapt everything), a predicate ``(path, leaf) -> bool`` on the key path from
    ``jax.tree_util.tree_flatten_with_path``, or a pytree of bools with the structure of ``params``.
    """
    if adapt_filter is None:
        return tuple(True for _ in jax.tree.leaves(params))
    if callable(adapt_filter):
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        return tuple(bool(adapt_filter(path, leaf)) for path, leaf in flat)
    params_def = jax.tree.structure(params)
    filter_def = jax.tree.structure(adapt_filter)
    if params_def != filter_def:
        raise ValueError(
            f"adapt_filter pytree does not match the params structure:\n  params: {params_def}\n  filter: {filter_def}"
        )
    return tuple(bool(x) for x in jax.tree.leaves(adapt_filter))


@dataclasses.dataclass(frozen=True)
class _Partition:
    """Splits a params pytree into the leaves that adapt and those that stay fixed, and joins them back."""

    treedef: Any
    adapted: tuple[bool, ...]

    @classmethod
    def of(cls, params: Any, adapt_filter: AdaptFilter) -> _Partition:
        return cls(jax.tree.structure(params), resolve_adapt_filter(params, adapt_filter))

    def split(self, tree: Any) -> tuple[list, list]:
        leaves = self.treedef.flatten_up_to(tree)
        moving = [leaf for leaf, a in zip(leaves, self.adapted, strict=True) if a]
        fixed = [leaf for leaf, a in zip(leaves, self.adapted, strict=True) if not a]
        return moving, fixed

    def join(self, moving: list, fixed: list) -> Any:
        moving_it, fixed_it = iter(moving), iter(fixed)
        leaves = [next(moving_it) if a else next(fixed_it) for a in self.adapted]
        return self.treedef.unflatten(leaves)


def _learning_rates(inner_lr: Any, part: _Partition) -> list:
    """``inner_lr`` as one entry per adapted leaf: a scalar is shared, a params-shaped pytree is per parameter."""
    if not isinstance(inner_lr, Mapping | list | tuple) and jnp.ndim(inner_lr) == 0:
        return [inner_lr] * sum(part.adapted)
    try:
        moving, _ = part.split(inner_lr)
    except ValueError as err:
        raise ValueError("a per-parameter inner_lr must be a pytree with the structure of params") from err
    return moving


def adapt(
    params: Any,
    rows: Mapping[str, jax.Array],
    mask: jax.Array,
    *,
    loss_fn: LossFn,
    inner_lr: Any,
    inner_steps: int,
    order: str = "second",
    inner_optimizer: optax.GradientTransformation | None = None,
    adapt_filter: AdaptFilter = None,
    inner_aux: Callable[[Any, Any], jax.Array] | None = None,
    remat: bool = False,
) -> Any:
    """Adapt ``params`` to one task: ``inner_steps`` steps on ``loss_fn(params, rows, mask)``.

    Args:
      params: the initialisation ``theta`` (any pytree).
      rows: the task's support rows, a dict of arrays ``[rows, ...]``.
      mask: bool ``[rows]``; false rows are padding. A task whose mask is all false has a zero loss and zero
        gradient, so it comes back unadapted (``phi_K = theta``): it is scored with the shared initialisation.
      loss_fn: ``loss_fn(params, rows, mask) -> scalar``.
      inner_lr: step size ``alpha`` of plain SGD; a scalar, or a params-shaped pytree of per-parameter rates
        (Meta-SGD). Ignored when ``inner_optimizer`` is given.
      inner_steps: ``K`` (static).
      order: ``"second"`` (exact, differentiates through the inner gradients) or ``"first"``.
      inner_optimizer: an optax ``GradientTransformation`` used instead of SGD, differentiated through.
      adapt_filter: which leaves adapt (see :func:`resolve_adapt_filter`); the rest stay fixed in the loop.
      inner_aux: optional ``inner_aux(phi, theta) -> scalar`` added to the inner loss, e.g.
        :func:`jaxrec.losses.l2_to_init`.
      remat: recompute each inner step in the backward pass (``jax.checkpoint``): memory O(K * |params|)
        instead of O(K * activations), at the price of one more forward/backward per step.

    Returns:
      ``phi_K``, a pytree with the structure of ``params``.
    """
    _check_order(order)
    inner_steps = int(inner_steps)
    if inner_steps < 0:
        raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
    if inner_steps == 0:
        return params
    part = _Partition.of(params, adapt_filter)
    moving0, fixed = part.split(params)
    rows = zero_padding(rows, mask)
    if not moving0:
        return params

    def inner_loss(moving):
        phi = part.join(moving, fixed)
        loss = loss_fn(phi, rows, mask)
        if inner_aux is not None:
            loss = loss + inner_aux(phi, params)
        return loss

    if inner_optimizer is None:
        rates = _learning_rates(inner_lr, part)

        def step(moving, _):
            grads = jax.grad(inner_loss)(moving)
            if order == "first":
                grads = jax.lax.stop_gradient(grads)
            moving = [p - lr * g for p, lr, g in zip(moving, rates, grads, strict=True)]
            return moving, None

        if remat:
            step = jax.checkpoint(step)
        moving, _ = jax.lax.scan(step, moving0, None, length=inner_steps, unroll=_UNROLL[-1])
        return part.join(moving, fixed)

    def opt_step(carry, _):
        moving, opt_state = carry
        grads = jax.grad(inner_loss)(moving)
        if order == "first":
            grads = jax.lax.stop_gradient(grads)
        updates, opt_state = inner_optimizer.update(grads, opt_state, moving)
        if order == "first":
            updates = jax.lax.stop_gradient(updates)
        return (optax.apply_updates(moving, updates), opt_state), None

    if remat:
        opt_step = jax.checkpoint(opt_step)
    opt_state0 = inner_optimizer.init(moving0)
    (moving, _), _ = jax.lax.scan(opt_step, (moving0, opt_state0), None, length=inner_steps, unroll=_UNROLL[-1])
    return part.join(moving, fixed)
