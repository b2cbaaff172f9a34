"""The batch contract: a padded, masked batch of support/query tasks.

Every task (one user) owns a *support* set (the few ratings the model adapts on) and a *query* set (the ratings
it is judged on). Tasks have different numbers of rows, so each side is padded to a common length and carries a
boolean mask: padded rows are invisible to every loss, gradient and metric. A whole task can be padding too
(both masks all false, e.g. to fill a batch that must divide the device count); it then carries no weight in the
meta-update. MAML's meta-loss weighs a task by its query rows, so a task with support rows and an all-false query
mask carries no weight there either; Reptile's direction weighs a task by its support rows
(:func:`~jaxrec.core.objectives.reptile_direction`), so there such a task counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.core.errors import JaxrecError

__all__ = ["TaskBatch", "BatchShapeError", "validate_batch", "zero_padding"]


class BatchShapeError(JaxrecError, ValueError):
    """Raised for a :class:`TaskBatch` whose arrays or masks do not agree on their leading axes."""


@flax.struct.dataclass
class TaskBatch:
    """A pytree of ``T`` tasks.

    Attributes:
      support: dict of arrays ``[T, S, ...]``: the rows each task adapts on.
      query: dict of arrays ``[T, Q, ...]``: the rows each task is judged on.
      support_mask: bool ``[T, S]``; false marks padding.
      query_mask: bool ``[T, Q]``; false marks padding.
      task_id: optional int ``[T]`` naming each task (the user code); ``-1`` marks a padding task. Used in
        error messages (which users made a loss non-finite) and by evaluation.
    """

    support: Mapping[str, Any]
    query: Mapping[str, Any]
    support_mask: Any
    query_mask: Any
    task_id: Any = None

    @property
    def num_tasks(self) -> int:
        """``T``, the number of tasks (padding tasks included)."""
        return int(self.support_mask.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(tasks, support rows, query rows)``: the static shape a meta-step compiles for."""
        return (
            int(self.support_mask.shape[0]),
            int(self.support_mask.shape[1]),
            int(self.query_mask.shape[1]),
        )

    def validate(self) -> TaskBatch:
        """Check the batch's shapes (:func:`validate_batch`).

        Returns:
          The batch itself, for chaining.

        Raises:
          BatchShapeError: an array or mask disagrees on its leading axes.
        """
        validate_batch(self)
        return self


def _check_side(name: str, rows: Mapping[str, Any], mask: Any, num_tasks: int) -> None:
    if not isinstance(rows, Mapping) or not rows:
        raise BatchShapeError(f"TaskBatch.{name} must be a non-empty dict of arrays, got {type(rows).__name__}")
    mask_shape = tuple(np.shape(mask))
    if len(mask_shape) != 2:
        raise BatchShapeError(f"TaskBatch.{name}_mask must be [tasks, rows], got shape {mask_shape}")
    if mask_shape[0] != num_tasks:
        raise BatchShapeError(f"TaskBatch.{name}_mask has {mask_shape[0]} tasks but support_mask has {num_tasks}")
    dtype = getattr(mask, "dtype", None)
    if dtype is None:  # a list is a pytree of many leaves: it fails inside jit, far from here
        raise BatchShapeError(f"TaskBatch.{name}_mask must be a bool array (numpy or jax), got {type(mask).__name__}")
    if dtype != np.bool_:
        raise BatchShapeError(f"TaskBatch.{name}_mask must be bool, got {dtype}")
    for key, value in rows.items():
        if getattr(value, "dtype", None) is None:
            raise BatchShapeError(
                f"TaskBatch.{name}[{key!r}] must be an array (numpy or jax), got {type(value).__name__}"
            )
        shape = tuple(np.shape(value))
        if shape[:2] != mask_shape:
            raise BatchShapeError(
                f"TaskBatch.{name}[{key!r}] has leading axes {shape[:2]} but {name}_mask is {mask_shape}: "
                "every array needs leading axes [tasks, rows] matching its mask"
            )


def validate_batch(batch: TaskBatch) -> None:
    """Check that every array and mask of a batch agrees on its leading axes ``[tasks, rows]``.

    Args:
      batch: the :class:`TaskBatch`.

    Raises:
      TypeError: ``batch`` is not a :class:`TaskBatch`.
      BatchShapeError: naming the first array whose leading axes disagree; also for an empty side, a mask that is
        not bool ``[tasks, rows]``, or a ``task_id`` not of shape ``[tasks]``.
    """
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"expected a jaxrec.TaskBatch, got {type(batch).__name__}")
    num_tasks = int(np.shape(batch.support_mask)[0]) if np.ndim(batch.support_mask) else -1
    _check_side("support", batch.support, batch.support_mask, num_tasks)
    _check_side("query", batch.query, batch.query_mask, num_tasks)
    if batch.task_id is not None and tuple(np.shape(batch.task_id)) != (num_tasks,):
        raise BatchShapeError(f"TaskBatch.task_id must have shape ({num_tasks},), got {tuple(np.shape(batch.task_id))}")


def zero_padding(rows: Mapping[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
    """Overwrite padded rows with zeros (slot 0 for ids).

    Masked losses already ignore padded rows in the forward pass, but a NaN or inf sitting in a padded row would
    still poison the backward pass (``0 * nan = nan`` in ``x^T dy``). Zeroing makes the content of padded rows
    irrelevant, bit for bit.

    Args:
      rows: a dict of arrays ``[rows, ...]`` (or with any leading axes matching ``mask``).
      mask: bool, the leading axes of the rows; false rows are padding.

    Returns:
      A new dict with the same keys, padded rows set to zero.
    """

    def clean(x):
        keep = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)).astype(bool)
        return jnp.where(keep, x, jnp.zeros((), x.dtype))

    return {key: clean(value) for key, value in rows.items()}
