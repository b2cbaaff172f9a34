"""Masked per-task losses.

The meta-learning core only ever sees ``loss_fn(params, rows, mask) -> scalar`` for one task, where ``rows`` is a
dict of arrays ``[rows, ...]`` and ``mask`` a bool ``[rows]``. Padded rows must not change the loss or its
gradient, so every loss here is a *masked mean*

    L(params) = sum_r m_r * l_r(params) / max(sum_r m_r, 1),

which is exactly zero (with zero gradient) for a task whose mask is all false.

The builders take a model's ``apply_fn(params, rows) -> scores [rows]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "LossFn",
    "masked_mean",
    "mse_loss",
    "bce_loss",
    "with_auxiliary",
    "l2_to_init",
]

Rows = Mapping[str, jax.Array]
LossFn = Callable[[Any, Rows, jax.Array], jax.Array]
ApplyFn = Callable[[Any, Rows], jax.Array]


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` over the rows where ``mask`` holds (per trailing coordinate); 0 when no row does.

    ``jnp.where`` (not a product) keeps a NaN or inf in a padded row out of the value. It does not keep it out of
    the gradient of whatever produced ``values`` (``0 * nan = nan`` in the backward pass): the builders below
    mask their per-row residuals before any non-linearity, and :func:`jaxrec.adapt` / :func:`jaxrec.meta_loss`
    zero padded rows before the model sees them (:func:`jaxrec.zero_padding`).

    Args:
      values: per-row values ``[rows, ...]``.
      mask: bool ``[rows]``; false rows are padding.

    Returns:
      The masked mean over the rows, of shape ``values.shape[1:]`` (a scalar for ``[rows]``), of the dtype of
      ``values``.
    """
    mask = mask.astype(bool)
    rows = mask.reshape(mask.shape + (1,) * (values.ndim - 1))
    total = jnp.sum(jnp.where(rows, values, 0.0), axis=0)
    count = jnp.sum(mask).astype(values.dtype)
    return total / jnp.maximum(count, 1.0)


def _target(rows: Mapping[str, jax.Array], key: str) -> jax.Array:
    """``rows[key]``, or a KeyError that names the row keys there are (the loss's ``target`` is a row key)."""
    if key not in rows:
        raise KeyError(f"the rows have no target {key!r} (their keys: {', '.join(sorted(rows))}): pass target=KEY")
    return rows[key]


def mse_loss(apply_fn: ApplyFn, target: str = "rating") -> LossFn:
    """Masked mean squared error between ``apply_fn(params, rows)`` and ``rows[target]``.

    Args:
      apply_fn: ``apply_fn(params, rows) -> scores [rows]``.
      target: the row key of the explicit target.

    Returns:
      ``loss_fn(params, rows, mask) -> scalar``.
    """

    def loss_fn(params, rows, mask):
        scores = apply_fn(params, rows)
        targets = _target(rows, target)
        if jnp.shape(scores) != jnp.shape(targets):  # e.g. [rows, 1] from nn.Dense(1) would broadcast to a matrix
            raise ValueError(
                f"the model's scores have shape {jnp.shape(scores)}, its targets {target!r} {jnp.shape(targets)}: "
                "apply_fn must return one score per row (squeeze a trailing axis of 1)"
            )
        residual = jnp.where(mask, scores - jnp.where(mask, targets, 0.0), 0.0)
        return masked_mean(jnp.square(residual), mask)

    return loss_fn


def bce_loss(apply_fn: ApplyFn, target: str = "label") -> LossFn:
    """Masked binary cross-entropy with logits.

    Args:
      apply_fn: ``apply_fn(params, rows) -> logits [rows]``.
      target: the row key of the 0/1 label.

    Returns:
      ``loss_fn(params, rows, mask) -> scalar``.
    """

    def loss_fn(params, rows, mask):
        labels = _target(rows, target)
        logits = apply_fn(params, rows)
        if jnp.shape(logits) != jnp.shape(labels):
            raise ValueError(
                f"the model's logits have shape {jnp.shape(logits)}, its labels {target!r} {jnp.shape(labels)}: "
                "apply_fn must return one logit per row (squeeze a trailing axis of 1)"
            )
        logits = jnp.where(mask, logits, 0.0)
        labels = jnp.where(mask, labels, 0).astype(logits.dtype)
        # log(1 + e^x) - y x, the numerically stable form of BCE with logits
        per_row = jax.nn.softplus(logits) - labels * logits
        return masked_mean(per_row, mask)

    return loss_fn


def with_auxiliary(loss_fn: LossFn, aux_fn: Callable[[Any], jax.Array], weight: float) -> LossFn:
    """``loss_fn + weight * aux_fn(params)``: an extra term that depends on the parameters only.

    Args:
      loss_fn: ``loss_fn(params, rows, mask) -> scalar``.
      aux_fn: ``aux_fn(params) -> scalar``.
      weight: the weight of the extra term.

    Returns:
      The combined ``loss_fn(params, rows, mask) -> scalar``.
    """

    def combined(params, rows, mask):
        return loss_fn(params, rows, mask) + weight * aux_fn(params)

    return combined


def l2_to_init(weight: float) -> Callable[[Any, Any], jax.Array]:
    """Inner-loop regulariser ``weight/2 * ||phi - theta||^2`` pulling adapted params towards the initialisation.

    Pass it as ``inner_aux`` to :func:`jaxrec.adapt` (it sees both the adapted and the initial parameters); it is
    the proximal term of iMAML (Rajeswaran et al. 2019) and keeps a few noisy ratings from dragging the model away.

    Args:
      weight: the regularisation weight.

    Returns:
      ``aux(adapted, init) -> scalar``.
    """

    def aux(adapted, init):
        sq = jax.tree.map(lambda a, b: jnp.sum(jnp.square(a - b)), adapted, init)
        return 0.5 * weight * sum(jax.tree.leaves(sq))

    return aux
