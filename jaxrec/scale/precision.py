"""Mixed precision: compute a loss in bfloat16 (or float16) while the master parameters stay float32.

:func:`mixed_precision` wraps any ``loss_fn(params, rows, mask)``. Inside the wrapper the floating-point
parameters and floating-point row arrays are cast to the compute dtype; integer ids and boolean masks are left
alone, and the loss is returned in float32. Because the cast is part of the differentiated function, gradients
with respect to the float32 parameters come back in float32: the inner-loop updates, the meta-gradient and the
outer optimiser state all stay float32. Only the forward and backward arithmetic of the model runs at the
compute dtype, which is what speeds up matrix units on GPUs and TPUs (on CPU it is usually slower).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrec.core.losses import LossFn

__all__ = ["mixed_precision", "cast_floats"]


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Cast every floating-point array leaf of ``tree`` to ``dtype``.

    Args:
      tree: any pytree.
      dtype: the floating-point dtype to cast to.

    Returns:
      The pytree; integer, boolean and non-array leaves unchanged.
    """

    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


def mixed_precision(loss_fn: LossFn, compute_dtype: Any = jnp.bfloat16, output_dtype: Any = jnp.float32) -> LossFn:
    """``loss_fn`` evaluated at ``compute_dtype``, with its value (and so its gradients) in float32.

    Pass the result wherever a loss is expected (``jaxrec.meta_train(loss_fn=mixed_precision(loss))``); keep the
    parameters float32. The masked mean of the loss is then taken at the compute dtype too, and each inner step adds
    bfloat16's rounding: the meta-gradient matches float32's to a relative error of about 1e-2 at one inner step and
    5-10% at five (MeLU on the bundled data, batches of 32 users, second and first order alike), so check a run's
    figures against float32 before relying on it.

    Args:
      loss_fn: ``loss_fn(params, rows, mask) -> scalar``.
      compute_dtype: the dtype the floating-point parameters and rows are cast to (``jnp.bfloat16`` or
        ``jnp.float16``).
      output_dtype: the dtype of the returned loss.

    Returns:
      The wrapped ``loss_fn(params, rows, mask) -> scalar``, with ``loss_fn``'s docstring.
    """

    def wrapped(params, rows, mask):
        value = loss_fn(cast_floats(params, compute_dtype), cast_floats(rows, compute_dtype), mask)
        return jnp.asarray(value).astype(output_dtype)

    wrapped.__name__ = f"mixed_precision_{getattr(loss_fn, '__name__', 'loss')}"
    wrapped.__doc__ = loss_fn.__doc__
    return wrapped
