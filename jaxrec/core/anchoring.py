"""Meta-training anchored to its start: an optax transformation that pulls every parameter back to where it began.

A meta-learner started at a strong solution (the ALS factors of ``item_start="als"``, the bias model) can drift
away from it on a small meta-train set: the outer objective regularises the adapted user side (the inner loop's
prior) but nothing else. L2-SP (Li, Grandvalet and Davoine, "Explicit inductive bias for transfer learning with
convolutional networks", ICML 2018) adds ``(lambda / 2) ||theta - theta_0||^2`` to the objective; decoupled from
the adaptive step as AdamW decouples weight decay (Loshchilov and Hutter, ICLR 2019), each step becomes

    theta <- theta + u - eta * lambda * (theta - theta_0),

with ``u`` the update of the optimiser before it (e.g. Adam's) and ``eta`` its rate. ``lambda = 0`` is no anchor;
at a large ``lambda`` the parameters stay at the start.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["DecayToStartState", "decay_to_start"]


class DecayToStartState(NamedTuple):
    """The parameters at ``init``: where every step pulls back to."""

    start: Any


def decay_to_start(rate: float) -> optax.GradientTransformation:
    """``u <- u - rate * (theta - theta_0)``: decoupled decay towards the parameters given to ``init``.

    Chain it after the optimiser, with ``rate = eta * lambda``: ``optax.chain(optax.adam(eta),
    decay_to_start(eta * lam))``.

    Args:
      rate: the pull per step (>= 0).

    Returns:
      The transformation; its ``update`` needs ``params``.

    Raises:
      ValueError: if ``rate`` is negative (at construction), or ``update`` is called without ``params``.
    """
    if rate < 0:
        raise ValueError(f"decay_to_start: rate must be >= 0, got {rate}")

    def init(params):
        # a copy: the meta-step donates the params it is given
        return DecayToStartState(jax.tree.map(lambda p: jnp.array(p, copy=True), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("decay_to_start needs the params in update(updates, state, params)")
        updates = jax.tree.map(lambda u, p, s: u - rate * (p - s).astype(u.dtype), updates, params, state.start)
        return updates, state

    return optax.GradientTransformation(init, update)
