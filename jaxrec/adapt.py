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
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.losses import LossFn
from jaxrec.newton_adapt import is_newton, newton_step, solve_part, solve_then_descend, solved_leaves

__all__ = ["adapt", "AdaptFilter", "resolve_adapt_filter", "zero_padding", "ORDERS", "REMAT_POLICIES", "inner_unroll"]

ORDERS = ("second", "first")
AdaptFilter = Callable[[tuple, Any], bool] | Any | None

REMAT_POLICIES = (False, True, "step", "sqrt", "recompute")
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
    remat: bool | str = False,
) -> Any:
    """Adapt ``params`` to one task: ``inner_steps`` steps on ``loss_fn(params, rows, mask)``.

    Args:
      params: the initialisation ``theta`` (any pytree).
      rows: the task's support rows, a dict of arrays ``[rows, ...]``.
      mask: bool ``[rows]``; false rows are padding. A task whose mask is all false has a zero loss and zero
        gradient, so it comes back unadapted (``phi_K = theta``): it is scored with the shared initialisation.
      loss_fn: ``loss_fn(params, rows, mask) -> scalar``.
      inner_lr: step size ``alpha`` of plain SGD; a scalar, or a params-shaped pytree of per-parameter rates
        (Meta-SGD). Ignored when ``inner_optimizer`` is an optax transformation; the prior variances of the Newton
        step (:func:`jaxrec.newton`).
      inner_steps: ``K`` (static).
      order: ``"second"`` (exact, differentiates through the inner gradients) or ``"first"``.
      inner_optimizer: an optax ``GradientTransformation`` used instead of SGD, differentiated through; or
        :func:`jaxrec.newton` for Newton steps on the MAP objective with prior ``N(theta, diag(inner_lr))``
        (the rates are then prior variances; see :mod:`jaxrec.newton_adapt`).
      adapt_filter: which leaves adapt (see :func:`resolve_adapt_filter`); the rest stay fixed in the loop.
      inner_aux: optional ``inner_aux(phi, theta) -> scalar`` added to the inner loss, e.g.
        :func:`jaxrec.losses.l2_to_init`.
      remat: how much of the inner loop the backward pass keeps (second order only matters; see
        :func:`iterate`). ``False``: every step's residuals, memory O(K * (activations + |phi|)). ``True`` or
        ``"step"``: only each step's input ``phi_k`` (``jax.checkpoint`` per step), O(K * |phi|), one more
        inner gradient per step. ``"sqrt"``: every ``ceil(sqrt(K))``-th ``phi_k``, O(sqrt(K) * |phi|).
        ``"recompute"``: ``theta`` only, O(|phi|) whatever ``K``, for ``K (K - 1) / 2`` recomputed inner steps.

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
    # everything a step reads is an explicit argument, so that remat="recompute" can replay it in its backward
    # pass: ``diff`` (differentiable: fixed leaves, rates, theta for inner_aux) and ``data`` (the support rows)
    theta = params if inner_aux is not None else None
    data = (rows, mask)

    def inner_loss(moving, fixed, theta, data):
        phi = part.join(moving, fixed)
        loss = loss_fn(phi, *data)
        if inner_aux is not None:
            loss = loss + inner_aux(phi, theta)
        return loss

    def gradient(moving, fixed, theta, data):
        grads = jax.grad(inner_loss)(moving, fixed, theta, data)
        return jax.lax.stop_gradient(grads) if order == "first" else grads

    if is_newton(inner_optimizer):
        rates = [jnp.asarray(r) for r in _learning_rates(inner_lr, part)]
        diff = (fixed, rates, theta, moving0)
        if inner_optimizer.solve is None:
            step = functools.partial(newton_step, inner_loss, inner_optimizer, order)
            return part.join(iterate(step, diff, data, moving0, inner_steps, remat), fixed)
        paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        solved = solved_leaves(inner_optimizer, [p for p, a in zip(paths, part.adapted, strict=True) if a])
        step = functools.partial(solve_then_descend, inner_loss, gradient, inner_optimizer, order, solved)
        moving = iterate(step, diff, data, moving0, inner_steps, remat)
        moving = solve_part(inner_loss, inner_optimizer, order, solved, diff, data, moving)
        return part.join(moving, fixed)

    if inner_optimizer is None:

        def sgd_step(diff, data, moving):
            fixed, rates, theta = diff
            grads = gradient(moving, fixed, theta, data)
            return [p - lr * g for p, lr, g in zip(moving, rates, grads, strict=True)]

        rates = [jnp.asarray(r) for r in _learning_rates(inner_lr, part)]
        moving = iterate(sgd_step, (fixed, rates, theta), data, moving0, inner_steps, remat)
        return part.join(moving, fixed)

    def opt_step(diff, data, carry):
        fixed, theta = diff
        moving, opt_state = carry
        grads = gradient(moving, fixed, theta, data)
        updates, opt_state = inner_optimizer.update(grads, opt_state, moving)
        if order == "first":
            updates = jax.lax.stop_gradient(updates)
        return optax.apply_updates(moving, updates), opt_state

    carry0 = (moving0, inner_optimizer.init(moving0))
    moving, _ = iterate(opt_step, (fixed, theta), data, carry0, inner_steps, remat)
    return part.join(moving, fixed)


def iterate(step: Callable, diff: Any, data: Any, carry: Any, steps: int, remat: bool | str = False) -> Any:
    """``carry`` after ``steps`` applications of ``carry <- step(diff, data, carry)``, under a remat policy.

    ``diff`` holds the differentiable inputs of every step (parameters, rates), ``data`` the others (rows, masks:
    their cotangents are zero). The value and every first derivative are the same for each policy; what differs
    is what reverse mode stores for the backward pass of ``K = steps`` steps with carries ``c_0 .. c_K``:

    * ``False``: a ``lax.scan``; every step's residuals (activations and carries): O(K (activations + |c|)).
    * ``True`` / ``"step"``: a ``lax.scan`` of ``jax.checkpoint(step)``: the carries ``c_k`` only, O(K |c|), and
      each step's forward pass runs once more when it is differentiated.
    * ``"recompute"``: a custom VJP that stores only ``c_0`` and, walking back from ``k = K - 1`` to 0, recomputes
      ``c_k`` from ``c_0`` (``k`` steps) and applies the VJP of step ``k``: O(|c|) memory, independent of ``K``,
      for ``K (K - 1) / 2`` extra steps. Only reverse mode is defined for it (``jax.grad``, not ``jax.jvp``).
    * ``"sqrt"``: the same custom VJP with ``c_0, c_s, c_2s, ...`` stored, ``s = ceil(sqrt(K))``: O(sqrt(K) |c|)
      memory for at most ``K (s - 1) / 2`` extra steps.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}: expected one of {REMAT_POLICIES}")
    steps = int(steps)
    if remat in ("recompute", "sqrt") and steps > 1:
        every = steps if remat == "recompute" else math.ceil(math.sqrt(steps))
        # a jaxpr of one step, traced now: the backward pass replays it without re-entering Python (and so without
        # needing whatever trace-time context the loss was built in)
        converted, consts = jax.closure_convert(step, diff, data, carry)
        return _replay(converted, steps, every, (diff, consts), data, carry)

    def body(c, _):
        return step(diff, data, c), None

    if remat in (True, "step"):
        body = jax.checkpoint(body)
    carry, _ = jax.lax.scan(body, carry, None, length=steps, unroll=_UNROLL[-1])
    return carry


def _run(step, diff, data, carry, n):
    """``n`` (possibly traced) steps of the closure-converted ``step``; ``diff = (diff, consts)``."""
    args, consts = diff
    return jax.lax.fori_loop(0, n, lambda _, c: step(args, data, c, *consts), carry)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _replay(step, steps, every, diff, data, carry):
    return _run(step, diff, data, carry, steps)


def _replay_fwd(step, steps, every, diff, data, carry):
    # checkpoints c_0, c_every, c_2every, ... (c_0 alone for "recompute"), stacked on a leading axis
    def segment(c, _):
        return _run(step, diff, data, c, every), c

    n_seg = -(-steps // every)
    if n_seg > 1:
        last, saved = jax.lax.scan(segment, carry, None, length=n_seg - 1)
        stacked = jax.tree.map(lambda s, c: jnp.concatenate([s, c[None]]), saved, last)
    else:
        last, stacked = carry, jax.tree.map(lambda c: c[None], carry)
    out = _run(step, diff, data, last, steps - (n_seg - 1) * every)
    return out, (diff, data, stacked)


def _replay_bwd(step, steps, every, residuals, cotangent):
    diff, data, stacked = residuals

    def one_step(d, c):
        args, consts = d
        return step(args, data, c, *consts)

    def back(i, acc):
        g_carry, g_diff = acc
        k = steps - 1 - i
        start = jax.tree.map(lambda s: s[k // every], stacked)
        c_k = _run(step, diff, data, start, k % every)
        _, vjp = jax.vjp(one_step, diff, c_k)
        d_diff, d_carry = vjp(g_carry)
        return d_carry, jax.tree.map(jnp.add, g_diff, d_diff)

    zeros = jax.tree.map(jnp.zeros_like, diff)
    g_carry, g_diff = jax.lax.fori_loop(0, steps, back, (cotangent, zeros))
    g_data = jax.tree.map(_zero_cotangent, data)
    return g_diff, g_data, g_carry


def _zero_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


_replay.defvjp(_replay_fwd, _replay_bwd)
