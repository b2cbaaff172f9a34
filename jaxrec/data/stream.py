"""The batch stream: every meta-training batch a pure function of ``(seed, step)``, prefetched by Grain.

Batch ``k`` of a stream over tasks is addressed as epoch ``e`` and position ``i``, ``(e, i) = divmod(k, B)`` with
``B`` batches per epoch. Epoch ``e`` orders its tasks with ``default_rng([seed, e])``
(:meth:`~jaxrec.data.TaskSet.batch_plan`); batch ``i`` of it is built, negatives sampled, with
``default_rng([seed, e, i])``; an optional ``transform`` (e.g. item-id dropout) gets ``default_rng([seed, e, i,
1])``. So the stream from step ``k`` is the full stream with its first ``k`` batches dropped, without building
them: a run resumes exactly by restarting the stream at its step, which is all a checkpoint needs to record.

:func:`stream` runs the batch function in Grain's prefetch threads (``grain.MapDataset.range(start, stop).map``;
order is kept), so that building batch ``k + 1`` on the host overlaps the device's work on batch ``k``.
:func:`jaxrec.data.task_batches`, :meth:`jaxrec.Experiment.batches` and so ``jaxrec train`` all read this one stream.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np

from jaxrec.core.batch import TaskBatch
from jaxrec.data.dataset import DataError

__all__ = ["StepBatches", "stream"]

_ENDLESS = 2**62  # an upper bound on steps that no run reaches


@dataclasses.dataclass
class StepBatches:
    """Batch ``k`` of the stream over ``tasks_of_epoch(e)`` (see the module docstring), ``batch_size`` tasks each.

    Attributes:
      tasks_of_epoch: the tasks of epoch ``e`` (a :class:`~jaxrec.data.TaskSet`); every epoch must have the same
        task shapes, so that the number of batches per epoch is fixed.
      batch_size: tasks per batch (the last batch of an epoch is padded with padding tasks).
      seed: the stream's seed.
      shuffle: shuffle tasks within and batches across shape buckets each epoch; without, every task once per
        epoch in bucket and user order.
      transform: ``transform(batch, rng) -> batch`` applied to every batch (augmentation), or None.
    """

    tasks_of_epoch: Callable[[int], Any]
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    transform: Callable[[TaskBatch, np.random.Generator], TaskBatch] | None = None

    def __post_init__(self):
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self._lock = threading.Lock()  # Grain calls from several threads; an epoch's plan is built once
        self._epochs: dict[int, tuple[Any, list]] = {}
        self._per_epoch = len(self._epoch(0)[1])
        if self._per_epoch == 0:
            raise DataError("no tasks to batch: the stream's epoch 0 has none")

    def _epoch(self, epoch: int) -> tuple[Any, list]:
        with self._lock:
            if epoch not in self._epochs:
                tasks = self.tasks_of_epoch(epoch)
                rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
                plan = tasks.batch_plan(self.batch_size, rng)
                if epoch and len(plan) != self._per_epoch:
                    raise DataError(f"epoch {epoch} has {len(plan)} batches, epoch 0 had {self._per_epoch}")
                self._epochs[epoch] = (tasks, plan)
                for old in [e for e in self._epochs if e < epoch - 1]:  # keep the epochs prefetching may still read
                    del self._epochs[old]
            return self._epochs[epoch]

    @property
    def per_epoch(self) -> int:
        """The number of batches per epoch (the same in every epoch).

        Returns:
          The count.
        """
        return self._per_epoch

    def __call__(self, step: int) -> TaskBatch:
        """Build the batch of a step.

        Args:
          step: the global step.

        Returns:
          The numpy batch.
        """
        epoch, index = divmod(int(step), self._per_epoch)
        tasks, plan = self._epoch(epoch)
        batch = tasks.make_batch(plan[index], np.random.default_rng([self.seed, epoch, index]))
        if self.transform is not None:
            batch = self.transform(batch, np.random.default_rng([self.seed, epoch, index, 1]))
        return batch


def stream(
    batch_at: Callable[[int], TaskBatch],
    *,
    start: int = 0,
    stop: int | None = None,
    prefetch: int = 2,
    device: Any = "default",
) -> Iterator[TaskBatch]:
    """Stream ``batch_at(k)`` for ``k = start, start + 1, ...`` up to ``stop``, in order.

    Args:
      batch_at: the batch of a step (e.g. a :class:`StepBatches`); called in Grain's prefetch threads.
      start: the first step streamed.
      stop: the step the stream stops before (None: endless).
      prefetch: how many batches are built ahead in background threads (0: built when asked for, no thread).
      device: ``"default"`` puts each batch on the default device (``jax.device_put``), a device or sharding puts
        it there, None leaves it in host (numpy) memory.

    Returns:
      An iterator over the batches of steps ``start .. stop - 1``.

    Raises:
      ValueError: if ``start`` is negative.
    """
    if int(start) < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    stop = _ENDLESS if stop is None else int(stop)

    def place(batch: TaskBatch) -> TaskBatch:
        if device is None:
            return batch
        return jax.device_put(batch) if device == "default" else jax.device_put(batch, device)

    if prefetch <= 0:
        return (place(batch_at(k)) for k in range(int(start), stop))
    steps = grain.MapDataset.range(int(start), max(stop, int(start))).map(lambda k: place(batch_at(k)))
    options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=int(prefetch))
    return iter(steps.to_iter_dataset(options))
