"""Sweeps of the jaxrec meta-step: order x inner steps, tasks, vocabulary, adapt all/head, remat.

    python benchmarks/sweep.py --grid full          # every axis (about 30 compilations; < 15 min on 2 idle cores)
    python benchmarks/sweep.py --grid reduced       # order x K and remat memory only
    python benchmarks/sweep.py --memory-only        # compile and read memory/cost analysis, no timing
    python benchmarks/sweep.py --grid remat --memory-only --out sweep_memory   # K=10: second+remat vs first

One axis varies at a time around the reference workload (T=32, S=32, Q=16, K=5, V=1700, second order, adapt
all, local embeddings on). Writes ``benchmarks/results/sweep.json`` (records, with the second/first-order ratios)
and ``sweep.png``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import meta_step  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BASE = dict(tasks=32, inner_steps=5, item_vocab=1700, order="second", adapt="all", remat=False, local="on")


def grid(name: str) -> list[dict]:
    if name == "remat":  # the memory target: second order + remat vs first order, K = 10
        return [BASE | {"axis": "remat", "inner_steps": 10, "order": "first"}] + [
            BASE | {"axis": "remat", "inner_steps": 10, "order": "second", "remat": policy}
            for policy in (False, "step", "sqrt", "recompute")
        ]
    points = []
    for k in (1, 2, 5, 10) if name == "full" else (1, 5, 10):
        for order in ("first", "second"):
            points.append({"axis": "inner_steps", "inner_steps": k, "order": order})
    for order in ("first", "second"):
        points.append({"axis": "remat", "inner_steps": 10, "order": order, "remat": "step"})
    points.append({"axis": "remat", "inner_steps": 10, "order": "second", "remat": "recompute"})
    if name == "full":
        for t in (8, 64, 128, 256):
            for order in ("first", "second"):
                points.append({"axis": "tasks", "tasks": t, "order": order})
        for v in (100_000, 1_000_000):
            points.append({"axis": "vocab", "item_vocab": v})
        for v in (1700, 100_000):
            points.append({"axis": "vocab", "item_vocab": v, "local": "off"})
        for order in ("first", "second"):
            points.append({"axis": "adapt", "adapt": "head", "order": order})
    return [BASE | p for p in points]


def run_point(point: dict, steps: int, warmup: int, memory_only: bool) -> dict:
    argv = [
        "--tasks",
        str(point["tasks"]),
        "--inner-steps",
        str(point["inner_steps"]),
        "--item-vocab",
        str(point["item_vocab"]),
        "--order",
        point["order"],
        "--adapt",
        point["adapt"],
        "--local-embeddings",
        point["local"],
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
    ] + (["--remat", "step" if point["remat"] is True else point["remat"]] if point["remat"] else [])
    args = common.parser("sweep").parse_args([a for a in argv if a != "--local-embeddings" and a not in ("on", "off")])
    args.local_embeddings = point["local"]
    trainer, state, batch, _ = meta_step.build(args)
    t0 = time.perf_counter()
    compiled = trainer._step.lower(state, batch).compile()
    record = dict(point, compile_s=time.perf_counter() - t0, **meta_step.memory_and_cost(compiled))
    record.update(meta_step.unrolled_flops(args))
    if not memory_only:
        times = []
        for i in range(warmup + steps):
            t = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            if i >= warmup:
                times.append(time.perf_counter() - t)
        record["step_ms"] = common.median_ms(times)
        record["tasks_per_s"] = point["tasks"] / (record["step_ms"] / 1e3)
    return record


def ratios(records: list[dict]) -> list[dict]:
    """second/first-order step-time and peak-memory ratios at equal settings."""
    out = []
    for r in records:
        if r["order"] != "second":
            continue
        key = {k: r[k] for k in ("tasks", "inner_steps", "item_vocab", "adapt", "remat", "local")}
        for f in records:
            if f["order"] == "first" and all(f[k] == v for k, v in key.items()):
                row = dict(key)
                if r.get("step_ms") and f.get("step_ms"):
                    row["time_ratio"] = r["step_ms"] / f["step_ms"]
                if r.get("peak_bytes") and f.get("peak_bytes"):
                    row["memory_ratio"] = r["peak_bytes"] / f["peak_bytes"]
                if r.get("flops") and f.get("flops"):  # the work itself: a floor under the time ratio
                    row["flop_ratio"] = r["flops"] / f["flops"]
                out.append(row)
        if r["remat"]:  # the memory target compares second order + remat with plain first order
            for f in records:
                same = all(f[k] == v for k, v in key.items() if k != "remat")
                if f["order"] == "first" and not f["remat"] and same and r.get("peak_bytes") and f.get("peak_bytes"):
                    out.append(key | {"vs": "first order, no remat", "memory_ratio": r["peak_bytes"] / f["peak_bytes"]})
    return out


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for order in ("first", "second"):
        for remat in (False, "step", "sqrt", "recompute"):
            pts = sorted(
                (r["inner_steps"], r)
                for r in records
                if r["axis"] in ("inner_steps", "remat") and r["order"] == order and r["remat"] == remat
            )
            if not pts:
                continue
            label = f"{order}{f' remat={remat}' if remat else ''}"
            ks = [k for k, _ in pts]
            if any(r.get("step_ms") for _, r in pts):
                a.plot(ks, [r.get("step_ms") for _, r in pts], "o-", label=label)
            b.plot(ks, [r["peak_bytes"] / 2**20 for _, r in pts], "o-", label=label)
    a.set(xlabel="inner steps K", ylabel="step ms (median)", title="time, T=32")
    b.set(xlabel="inner steps K", ylabel="peak MB (memory_analysis)", title="memory, T=32")
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--grid", choices=["full", "reduced", "remat"], default="full")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--memory-only", action="store_true")
    p.add_argument("--out", default="sweep")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    records = []
    for point in grid(args.grid):
        records.append(run_point(point, args.steps, args.warmup, args.memory_only))
        print(json.dumps(records[-1]), flush=True)
        out = {"grid": args.grid, "memory_only": args.memory_only, "records": records, "ratios": ratios(records)}
        (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=1))
    plot(records, RESULTS / f"{args.out}.png")


if __name__ == "__main__":
    main()
