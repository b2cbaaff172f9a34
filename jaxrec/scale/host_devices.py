"""One XLA device per core on a CPU-only host, so that the task axis (and a service's batch) is split over them.

XLA's CPU backend runs one computation of small, sequential ops mostly on one core; exposed as ``N`` devices
(``jax_num_cpu_devices``), a host runs the ``N`` shards of a sharded step at once. On the 2-core reference machine
the meta-step ran about 2x faster that way (``benchmarks/results/scaling.json``). GPU and TPU backends ignore the
setting. It takes effect only before JAX starts its backends (the first computation or device query), so a script
calls :func:`use_every_core` first thing::

    import jaxrec
    jaxrec.use_every_core()       # before any JAX computation
    params, state = jaxrec.meta_train(params, batches, ...)   # mesh="auto": the task axis over every core
"""

from __future__ import annotations

import logging
import os
import re

import jax

__all__ = ["available_cores", "use_every_core"]

logger = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def use_every_core(count: int | None = None) -> int:
    """Expose the host's cores as ``count`` XLA CPU devices (default: one per available core).

    Args:
      count: how many CPU devices (>= 1); None for :func:`available_cores`.

    Returns:
      The count in effect: ``count``, or the one ``XLA_FLAGS`` already sets
      (``--xla_force_host_platform_device_count``), which it leaves.

    Raises:
      RuntimeError: if JAX's backends already started (call this before any JAX computation).
      ValueError: if ``count`` is less than 1.
    """
    n = available_cores() if count is None else int(count)
    if n < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    flags = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    if flags:
        logger.debug("XLA_FLAGS sets the host device count; use_every_core(%s) leaves it", count)
        return int(flags.group(1))
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:
        raise RuntimeError(f"use_every_core: JAX already started its backends; call it before any JAX use ({e})") from e
    return n
