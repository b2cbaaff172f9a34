"""Spreading the task axis of a batch over devices with ``jax.sharding``.

The meta-step is written for one device; placing its inputs is enough for XLA to partition it: parameters and
optimiser state are *replicated* (``PartitionSpec()``), every array of a :class:`~jaxrec.TaskBatch` is *sharded*
along its leading task axis (``PartitionSpec("tasks")``), and the compiler inserts the cross-device reduction of
the meta-gradient. No ``pmap``.

A batch whose task count the mesh does not divide is padded with empty tasks (all-false masks, ``task_id`` -1),
which carry zero weight in every meta-objective, so the result equals the unpadded single-device one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrec.core.batch import TaskBatch

__all__ = ["TASK_AXIS", "make_mesh", "default_mesh", "pad_tasks", "shard_batch", "replicate"]

TASK_AXIS = "tasks"


def make_mesh(devices: int | list | None = None) -> Mesh:
    """A 1-D mesh with the axis ``"tasks"``.

    Args:
      devices: a count of the first global devices, a list of devices, or None for all devices.

    Returns:
      The ``jax.sharding.Mesh``.

    Raises:
      ValueError: a count outside ``[1, jax.device_count()]``.
    """
    if devices is None:
        chosen = jax.devices()
    elif isinstance(devices, int):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            raise ValueError(f"asked for {devices} devices but {len(available)} are available: {available}")
        chosen = available[:devices]
    else:
        chosen = list(devices)
    return Mesh(np.array(chosen), (TASK_AXIS,))


def default_mesh() -> Mesh | None:
    """The mesh a meta-training run uses by default.

    Returns:
      A mesh over all devices when there is more than one, else ``None`` (plain single-device execution).
    """
    return make_mesh() if jax.device_count() > 1 else None


def pad_tasks(batch: TaskBatch, multiple: int) -> TaskBatch:
    """Append empty tasks so that ``multiple`` divides the task count.

    Empty tasks have zero-filled rows, all-false masks and ``task_id`` -1; they carry zero weight in every
    meta-objective.

    Args:
      batch: the :class:`~jaxrec.TaskBatch` (NumPy or JAX arrays; the padded batch keeps the kind).
      multiple: the number that must divide the task count.

    Returns:
      The padded batch (``batch`` itself when nothing is missing).
    """
    pad = (-batch.num_tasks) % multiple
    if pad == 0:
        return batch
    xp = np if isinstance(batch.support_mask, np.ndarray) else jnp

    def extend(x, fill):
        return xp.concatenate([x, xp.full((pad,) + tuple(x.shape[1:]), fill, dtype=x.dtype)], axis=0)

    task_id = batch.task_id
    if task_id is not None:
        task_id = extend(task_id, -1)
    return TaskBatch(
        support={k: extend(v, 0) for k, v in batch.support.items()},
        query={k: extend(v, 0) for k, v in batch.query.items()},
        support_mask=extend(batch.support_mask, False),
        query_mask=extend(batch.query_mask, False),
        task_id=task_id,
    )


def shard_batch(batch: TaskBatch, mesh: Mesh) -> TaskBatch:
    """Pad ``batch`` to a multiple of the mesh size and shard its task axis across the mesh.

    In a multi-process run each process passes its *own* share of tasks (padded to a multiple of its local
    devices); the global batch is assembled with ``jax.make_array_from_process_local_data`` (every process must
    pass the same local shape).

    Args:
      batch: the :class:`~jaxrec.TaskBatch` (this process's share in a multi-process run).
      mesh: the mesh whose axis ``"tasks"`` shards the task axis.

    Returns:
      The batch, every array sharded along its leading task axis.
    """
    sharding = NamedSharding(mesh, PartitionSpec(TASK_AXIS))
    if jax.process_count() > 1:
        local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
        batch = pad_tasks(batch, local_devices)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
            batch,
        )
    batch = pad_tasks(batch, mesh.size)
    return jax.device_put(batch, sharding)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree (params, optimiser state) in full on every device of ``mesh``.

    Across processes, arrays held on this process's devices (e.g. a restored checkpoint) go through host memory:
    JAX cannot move a committed single-process array onto another process's devices. Every process must then
    pass the same values.

    Args:
      tree: the pytree to replicate.
      mesh: the mesh.

    Returns:
      The pytree, every array replicated on the mesh (``PartitionSpec()``).
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() > 1 and not sharding.is_fully_addressable:
        local = lambda x: isinstance(x, jax.Array) and x.is_fully_addressable  # noqa: E731
        tree = jax.tree.map(lambda x: np.asarray(x) if local(x) else x, tree)
    return jax.device_put(tree, sharding)
