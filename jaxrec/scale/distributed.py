"""Multi-process (multi-host) meta-training over ``jax.distributed``.

One Python process runs per host (or per accelerator group); each calls :func:`initialize`, builds and loads only
*its share* of every task batch (:func:`process_share`, :func:`local_tasks`), and passes those local batches to
:func:`jaxrec.meta_train` with ``mesh=global_mesh()``. :func:`jaxrec.shard_batch` then assembles the global batch
with ``jax.make_array_from_process_local_data``; parameters and optimiser state are replicated on every device, and
the compiler reduces the meta-gradient across all of them, so every process ends with the same parameters as one
process given the whole batch.

Process ``p`` of ``P`` owns the ``p``-th contiguous block of the task axis, which is the block of the global array
held by its devices in :func:`global_mesh` (devices ordered by process). Shares are equal-sized: the last shares
are padded with empty tasks (zero weight in every meta-objective) when ``P`` does not divide the task count.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh

from jaxrec.core.batch import TaskBatch
from jaxrec.scale.sharding import make_mesh, pad_tasks

__all__ = ["initialize", "is_multiprocess", "process_share", "local_tasks", "global_mesh"]

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "JAXREC_COORDINATOR"
ENV_NUM_PROCESSES = "JAXREC_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXREC_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def _resolve(coordinator_address, num_processes, process_id) -> tuple[str | None, int | None, int | None]:
    """Explicit arguments first, then ``JAXREC_*`` environment variables."""
    if coordinator_address is None:
        coordinator_address = os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    return coordinator_address, num_processes, process_id


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | list[int] | None = None,
    *,
    cpu_collectives: str = "gloo",
    timeout_s: int = 300,
) -> bool:
    """Join a multi-process run.

    With one process (or none given) this is a no-op. It must run before any other JAX call of the process.
    Calling it again once initialised returns ``True`` without re-initialising.

    Args:
      coordinator_address: ``"host:port"`` of process 0; default ``$JAXREC_COORDINATOR``.
      num_processes: the number of processes; default ``$JAXREC_NUM_PROCESSES``.
      process_id: this process's index in ``[0, num_processes)``; default ``$JAXREC_PROCESS_ID``.
      local_device_ids: the local devices this process uses (passed to ``jax.distributed.initialize``).
      cpu_collectives: the cross-process collectives of the CPU backend (``"gloo"``, or ``"mpi"``), set unless
        already configured; GPU and TPU backends ignore it.
      timeout_s: the initialisation timeout, in seconds.

    Returns:
      Whether ``jax.distributed`` is initialised: ``False`` for a single process.

    Raises:
      ValueError: several processes but no coordinator address, a ``process_id`` outside ``[0, num_processes)``,
        or a ``JAXREC_*`` count or id that is not an integer.
    """
    coordinator_address, num_processes, process_id = _resolve(coordinator_address, num_processes, process_id)
    if num_processes is None or num_processes <= 1:
        logger.info("single process: jax.distributed not initialised")
        return False
    if jax.distributed.is_initialized():
        return True
    if coordinator_address is None:
        raise ValueError(f"{num_processes} processes need a coordinator address (argument or ${ENV_COORDINATOR})")
    if process_id is None or not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id must be in [0, {num_processes}), got {process_id} (argument or ${ENV_PROCESS_ID})"
        )
    if cpu_collectives and jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    logger.info("joining %s as process %d of %d", coordinator_address, process_id, num_processes)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=timeout_s,
    )
    return True


def is_multiprocess() -> bool:
    """Whether this run spans more than one process.

    Returns:
      True when ``jax.process_count() > 1``.
    """
    return jax.process_count() > 1


def process_share(
    n_items: int, process_index: int | None = None, process_count: int | None = None
) -> tuple[slice, int]:
    """The items of ``range(n_items)`` this process owns, and the common share size.

    Process ``p`` of ``P`` owns the contiguous block ``[p * k, min((p + 1) * k, n_items))`` with
    ``k = ceil(n_items / P)``; the block may be shorter than ``k`` (or empty) for the last processes, which then pad
    to ``k`` so that every process passes the same local shape.

    Args:
      n_items: the number of items (e.g. tasks of the global batch).
      process_index: ``p``; default ``jax.process_index()``.
      process_count: ``P``; default ``jax.process_count()``.

    Returns:
      ``(slice, share_size)``: this process's block and ``k``.

    Raises:
      ValueError: ``n_items < 0``, ``P < 1`` or ``p`` outside ``[0, P)``.
    """
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if n_items < 0 or count < 1 or not 0 <= index < count:
        raise ValueError(f"bad share request: {n_items} items, process {index} of {count}")
    size = -(-n_items // count)
    start = min(index * size, n_items)
    return slice(start, min(start + size, n_items)), size


def local_tasks(batch: TaskBatch, process_index: int | None = None, process_count: int | None = None) -> TaskBatch:
    """This process's share of a (host-side) global ``batch``, padded to the common share size.

    Convenient when every process can build the same global batch cheaply; for large data, build only the
    tasks of :func:`process_share` on each process instead.

    Args:
      batch: the global :class:`~jaxrec.TaskBatch`.
      process_index: this process's index; default ``jax.process_index()``.
      process_count: the number of processes; default ``jax.process_count()``.

    Returns:
      The local :class:`~jaxrec.TaskBatch` (NumPy arrays), padded with empty tasks to the share size.

    Raises:
      ValueError: the batch leaves this process no task (its block of :func:`process_share` is empty).
    """
    share, size = process_share(batch.num_tasks, process_index, process_count)
    take = lambda x: np.asarray(x)[share]  # noqa: E731
    local = TaskBatch(
        support={k: take(v) for k, v in batch.support.items()},
        query={k: take(v) for k, v in batch.query.items()},
        support_mask=take(batch.support_mask),
        query_mask=take(batch.query_mask),
        task_id=None if batch.task_id is None else take(batch.task_id),
    )
    if local.num_tasks == 0:
        raise ValueError(f"{batch.num_tasks} tasks leave this process none: a batch needs one task per process")
    return pad_tasks(local, size) if local.num_tasks < size else local


def global_mesh() -> Mesh:
    """A 1-D ``"tasks"`` mesh over every device of every process, grouped by process.

    Each process's devices form one contiguous block, so the local share of a batch lands on local devices.

    Returns:
      The ``jax.sharding.Mesh``.
    """
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return make_mesh(devices)
