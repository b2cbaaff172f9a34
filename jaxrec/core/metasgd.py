"""Meta-SGD (Li et al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning"): one inner learning rate
per parameter, meta-learned with the initialisation,

    phi_t = theta - alpha * grad L_{s_t}(theta)      (elementwise, for K steps),

and the meta-gradient taken with respect to both ``theta`` and ``alpha``.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

__all__ = ["MetaSGDParams", "init_metasgd", "log_space", "split_meta_params"]


@flax.struct.dataclass
class MetaSGDParams:
    """Meta-SGD's meta-parameters: the initialisation and one inner learning rate per parameter.

    Attributes:
      params: the initialisation ``theta`` (any pytree).
      inner_lr: the per-parameter inner rates ``alpha``, a pytree with the structure of ``params``.
    """

    params: Any
    inner_lr: Any


def init_metasgd(params: Any, inner_lr: float) -> MetaSGDParams:
    """Meta-SGD parameters with every per-parameter learning rate set to ``inner_lr``.

    Args:
      params: the initialisation (any pytree); a :class:`MetaSGDParams` is returned as it is.
      inner_lr: the starting value of every rate.

    Returns:
      The :class:`MetaSGDParams`.
    """
    if isinstance(params, MetaSGDParams):
        return params
    return MetaSGDParams(params, jax.tree.map(lambda p: jnp.full_like(p, inner_lr), params))


def log_space(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Run ``inner`` on ``log(alpha)`` for positive parameters ``alpha`` (Meta-SGD's inner rates).

    With ``beta = log alpha`` the gradient is ``dL/dbeta = alpha * dL/dalpha``; ``inner`` turns it into an update
    ``u`` of ``beta``, which is the update ``alpha (exp(u) - 1)`` of ``alpha``. Adam in log space moves a rate by a
    factor (``e^{+-lr}`` a step at most, whatever its size), so rates an order of magnitude apart, such as an
    output bias that should jump to the user's offset and a wide layer that should barely move, are learned at
    the same relative speed, and a rate can never turn negative.

    Args:
      inner: the optax transformation applied in log space.

    Returns:
      An optax ``GradientTransformation`` over the rates ``alpha``; its ``update`` needs the current rates
      (``optimizer.update(grads, state, params)``) and raises ``ValueError`` without them.
    """

    def init(params):
        return inner.init(params)

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("log_space needs the current parameters (optimizer.update(grads, state, params))")
        log_grads = jax.tree.map(lambda g, a: g * a, grads, params)
        log_updates, state = inner.update(log_grads, state, jax.tree.map(jnp.log, params))
        return jax.tree.map(lambda u, a: a * jnp.expm1(u), log_updates, params), state

    return optax.GradientTransformation(init, update)


def split_meta_params(params: Any, inner_lr: Any) -> tuple[Any, Any]:
    """The initialisation and the inner rates of either kind of meta-parameters.

    Args:
      params: a :class:`MetaSGDParams`, or plain params.
      inner_lr: the inner rate used with plain params (ignored for :class:`MetaSGDParams`).

    Returns:
      ``(params, inner_lr)``: the fields of a :class:`MetaSGDParams`, or ``params`` and ``inner_lr`` as a float32
      array (None stays None: an optax inner solver takes no rate).
    """
    if isinstance(params, MetaSGDParams):
        return params.params, params.inner_lr
    return params, None if inner_lr is None else jnp.asarray(inner_lr, jnp.float32)
