"""The inner loop's iteration under a remat policy: how much of ``K`` inner steps the backward pass keeps.

Every policy gives the same value and the same first derivatives; they differ in what reverse mode stores (see
:func:`iterate`). ``"recompute"`` and ``"sqrt"`` are custom VJPs that replay steps from stored carries, the
checkpointing schedules of Griewank (1992) for a loop whose length is known.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["REMAT_POLICIES", "iterate"]

REMAT_POLICIES = (False, True, "step", "sqrt", "recompute")


def iterate(
    step: Callable, diff: Any, data: Any, carry: Any, steps: int, remat: bool | str = False, unroll: int | bool = 1
) -> Any:
    """``carry`` after ``steps`` applications of ``carry <- step(diff, data, carry)``, under a remat policy.

    The value and every first derivative are the same for each policy; what differs is what reverse mode stores
    for the backward pass of ``K = steps`` steps with carries ``c_0 .. c_K``:

    * ``False``: a ``lax.scan``; every step's residuals (activations and carries): O(K (activations + |c|)).
    * ``True`` / ``"step"``: a ``lax.scan`` of ``jax.checkpoint(step)``: the carries ``c_k`` only, O(K |c|), and
      each step's forward pass runs once more when it is differentiated.
    * ``"recompute"``: a custom VJP that stores only ``c_0`` and, walking back from ``k = K - 1`` to 0, recomputes
      ``c_k`` from ``c_0`` (``k`` steps) and applies the VJP of step ``k``: O(|c|) memory, independent of ``K``,
      for ``K (K - 1) / 2`` extra steps. Only reverse mode is defined for it (``jax.grad``, not ``jax.jvp``).
    * ``"sqrt"``: the same custom VJP with ``c_0, c_s, c_2s, ...`` stored, ``s = ceil(sqrt(K))``: O(sqrt(K) |c|)
      memory for at most ``K (s - 1) / 2`` extra steps.

    Args:
      step: ``step(diff, data, carry) -> carry``, one step.
      diff: the differentiable inputs of every step (parameters, rates).
      data: the other inputs of every step (rows, masks): their cotangents are zero.
      carry: ``c_0``, the starting carry.
      steps: ``K``, the number of steps.
      remat: the policy: ``False``, ``True`` / ``"step"``, ``"recompute"`` or ``"sqrt"`` (above).
      unroll: the ``lax.scan`` unroll of the first three policies (``True`` unrolls fully, e.g. so that XLA's
        cost analysis, which counts a while-loop body once, counts every step); the computation is the same.

    Returns:
      ``c_K``.

    Raises:
      ValueError: ``remat`` is not one of :data:`REMAT_POLICIES`.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}: expected one of {REMAT_POLICIES}")
    steps = int(steps)
    if remat in ("recompute", "sqrt") and steps > 1:
        every = steps if remat == "recompute" else math.ceil(math.sqrt(steps))
        # a NumPy value mapped by a caller's vmap reaches the custom VJP as a non-canonical constant of the outer trace
        # (an internal AssertionError); an operation on it first makes it a value of that trace
        data = jax.tree.map(_traced, data)
        # a jaxpr of one step, traced here: the backward pass replays it without re-entering Python (and so without
        # needing whatever trace-time context the loss was built in)
        converted, consts = jax.closure_convert(step, diff, data, carry)
        return _replay(converted, steps, every, (diff, consts), data, carry)

    def body(c, _):
        return step(diff, data, c), None

    if remat in (True, "step"):
        body = jax.checkpoint(body)
    carry, _ = jax.lax.scan(body, carry, None, length=steps, unroll=unroll)
    return carry


def _traced(x):
    """``x`` as the result of an operation (``x`` itself in value): never a NumPy constant inside the trace."""
    return jax.lax.optimization_barrier(x) if isinstance(x, jax.core.Tracer) else jnp.asarray(x)


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
