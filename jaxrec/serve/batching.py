"""Micro-batching: concurrent requests gathered into one compiled call.

A request waits at most ``max_wait`` seconds for others to join it (or until ``max_batch`` have), then the batch
runs on one worker thread while the event loop goes on accepting requests, which form the next batch. Under light
load a request is answered after ``max_wait`` plus one call; under heavy load every call is a full batch, so
throughput grows with load instead of queueing users one at a time (Clipper, Crankshaw et al., NSDI 2017, and
every model server since use this policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["MicroBatcher"]

logger = logging.getLogger(__name__)


class MicroBatcher:
    """Gathers items submitted concurrently into batches for one blocking function.

    Args:
      run: ``run(items) -> results``, one result per item, in order (blocking; runs on the worker thread).
      max_batch: the most items per call.
      max_wait: how long (seconds) the first item of a batch waits for others.

    Attributes:
      batches: the calls made so far.
      items: the items answered so far.
    """

    def __init__(self, run: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int, max_wait: float):
        if max_batch < 1 or max_wait < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait >= 0, got {max_batch} and {max_wait}")
        self.run, self.max_batch, self.max_wait = run, int(max_batch), float(max_wait)
        self.batches = 0
        self.items = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxrec-batch")

    async def start(self) -> None:
        """Start the gathering loop (on the running event loop)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop; requests still waiting get a ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=False)

    async def submit(self, item: Any) -> Any:
        """Queue one item and wait for its result (an exception of the call is raised here, for its batch only)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _gather(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [(item, future) for item, future in batch if not future.cancelled()]  # a client that left
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.run, [item for item, _ in live])
            except Exception as e:  # noqa: BLE001 - the error belongs to this batch's requests, not to the service
                if len(live) == 1:
                    logger.exception("a request failed")
                    self._settle(live[0][1], error=e)
                    continue
                # one request's failure is not its neighbours': each runs again alone, to fail or answer by itself
                logger.warning(
                    "a batch of %d request(s) failed (%s: %s); each runs alone", len(live), type(e).__name__, e
                )
                for item, future in live:
                    try:
                        (result,) = await loop.run_in_executor(self._executor, self.run, [item])
                    except Exception as alone:  # noqa: BLE001 - this request's own error
                        logger.exception("a request failed")
                        self._settle(future, error=alone)
                    else:
                        self.batches += 1
                        self.items += 1
                        self._settle(future, result=result)
                continue
            self.batches += 1
            self.items += len(live)
            for (_, future), result in zip(live, results, strict=True):
                self._settle(future, result=result)

    @staticmethod
    def _settle(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
        """Answer a request's future, unless its client has gone."""
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
