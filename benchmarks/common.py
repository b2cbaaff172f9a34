"""Shared flags and helpers of the meta-step benchmarks (jaxrec and the PyTorch references)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys


def parser(description: str) -> argparse.ArgumentParser:
    """The reference workload's flags (defaults = the reference workload)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--support", type=int, default=32)
    p.add_argument("--query", type=int, default=16)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--inner-lr", type=float, default=0.01)
    p.add_argument("--embed", type=int, default=32)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--item-vocab", type=int, default=1700)
    p.add_argument("--order", choices=["first", "second"], default="second")
    p.add_argument("--algorithm", choices=["maml", "reptile", "metasgd"], default="maml")
    p.add_argument("--adapt", choices=["all", "head"], default="all")
    p.add_argument(
        "--remat",
        nargs="?",
        const="step",
        default=False,
        choices=["step", "sqrt", "recompute"],
        help="remat policy of the inner loop (bare --remat: step); see jaxrec.core.remat.iterate",
    )
    p.add_argument("--task-chunk", type=int, default=None)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p


def median_ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def base_record(args: argparse.Namespace, impl: str) -> dict:
    return {
        "impl": impl,
        "config": {k: v for k, v in vars(args).items()},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cores": threads(),
    }


def library_versions() -> dict:
    """The versions a figure depends on: a rerun in another environment can differ in the last digits (XLA's
    kernels change between releases), so a results file says which it was made with (files written before this was
    recorded say nothing: their commands, rerun, give the figures to the last digits, see docs/results.md)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "pandas"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def emit(record: dict) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)
