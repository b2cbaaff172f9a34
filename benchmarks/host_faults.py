"""Page faults and kernel time per meta-step on a CPU host: why a step whose scratch buffer passes 64 MiB slows down.

    python benchmarks/host_faults.py                       # second order, (T, K) = (32, 10), (32, 12), (32, 5), (64, 5)
    python benchmarks/host_faults.py --points 32:20 16:20   # other (tasks:inner steps) points

XLA's CPU runtime allocates each step's scratch buffer (the compiled ``temp`` bytes) from a worker thread. glibc
serves such a thread from a secondary arena whose heaps are at most 64 MiB, so a larger buffer is ``mmap``ed and
unmapped at every step whatever ``jaxrec.keep_freed_host_memory`` sets, and every one of its pages faults on first
touch. The minor-fault count per step (``getrusage``) does not depend on the machine's load, unlike a time: it is
about ``peak / 4 KiB`` above the limit and about 0 below it. Prints one JSON record per point and writes
``benchmarks/results/host_faults.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import meta_step  # noqa: E402

from jaxrec.scale.host_memory import keep_freed_host_memory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def measure(tasks: int, inner_steps: int, order: str, steps: int) -> dict:
    """Compiled peak memory, and minor faults, kernel and user CPU ms per step over ``steps`` steps."""
    args = common.parser("host_faults").parse_args(
        ["--tasks", str(tasks), "--inner-steps", str(inner_steps), "--order", order, "--steps", str(steps)]
    )
    args.local_embeddings = "on"
    trainer, state, batch, _ = meta_step.build(args)
    compiled = trainer._step.lower(state, batch).compile()
    memory = meta_step.memory_and_cost(compiled)
    for _ in range(3):  # warm-up: the first steps fault in whatever is kept afterwards
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "tasks": tasks,
        "inner_steps": inner_steps,
        "order": order,
        "peak_mib": memory["peak_bytes"] / 2**20,
        "temp_mib": memory["temp_bytes"] / 2**20,
        "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "system_ms_per_step": 1e3 * (after.ru_stime - before.ru_stime) / steps,
        "user_ms_per_step": 1e3 * (after.ru_utime - before.ru_utime) / steps,
        "wall_ms_per_step": 1e3 * wall / steps,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", nargs="+", default=["32:10", "32:12", "32:5", "64:5"], help="tasks:inner_steps")
    p.add_argument("--order", choices=["first", "second"], default="second")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="host_faults")
    args = p.parse_args(argv)
    kept = keep_freed_host_memory()
    records = []
    for point in args.points:
        tasks, inner_steps = (int(v) for v in point.split(":"))
        records.append(measure(tasks, inner_steps, args.order, args.steps))
        print(json.dumps(records[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    head = {"malloc": "heap" if kept else "default", "steps": args.steps, "command": " ".join(sys.argv[1:])}
    (RESULTS / f"{args.out}.json").write_text(json.dumps({**head, "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
