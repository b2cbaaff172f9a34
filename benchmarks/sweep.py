"""Sweeps of the jaxrec meta-step: order x inner steps, tasks, vocabulary, adapt all/head, remat.

    python benchmarks/sweep.py --grid study --rounds 5 --out sweep_study  # the cost study: K=1..20, T, V, remat, ...
    python benchmarks/sweep.py --grid study --out sweep_study --plot-only  # redraw its figures (PNG + SVG)
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
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import meta_step  # noqa: E402

from jaxrec.scale.host_memory import keep_freed_host_memory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HEAP_LIMIT = 64 * 2**20  # glibc's largest heap of a thread arena (64-bit): a larger buffer is mmapped per use
BASE = dict(
    tasks=32, inner_steps=5, item_vocab=1700, order="second", adapt="all", remat=False, local="on", algorithm="maml"
)
REMAT_POLICIES = ("step", "sqrt", "recompute")


def study_grid() -> list[dict]:
    """The cost study: K = 1..20 (both orders; every remat policy at K = 1, 5, 10, 20), T = 8..512, V = 1.7k..10^6,
    adapt head, Meta-SGD and Reptile; one axis at a time around the reference workload."""
    points = []
    for k in (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20):
        for order in ("first", "second"):
            points.append({"axis": "inner_steps", "inner_steps": k, "order": order})
        if k in (1, 5, 10, 20):
            for policy in REMAT_POLICIES:
                points.append({"axis": "remat", "inner_steps": k, "order": "second", "remat": policy})
    for order in ("first", "second"):
        for t in (8, 16, 64, 128, 256, 512):
            points.append({"axis": "tasks", "tasks": t, "order": order})
        for v in (10_000, 100_000, 1_000_000):
            points.append({"axis": "vocab", "item_vocab": v, "order": order})
        points.append({"axis": "adapt", "adapt": "head", "order": order})
        for algorithm in ("metasgd", "reptile"):
            points.append({"axis": "algorithm", "algorithm": algorithm, "order": order})
    return [BASE | p for p in points]


def grid(name: str) -> list[dict]:
    if name == "study":
        return study_grid()
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


def run_point(
    point: dict, steps: int, warmup: int, memory_only: bool, rounds: int = 1, min_round_s: float = 0.0
) -> dict:
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
        "--algorithm",
        point.get("algorithm", "maml"),
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
        # A step of a few ms is timed over enough steps that each round lasts min_round_s: the clock and the
        # scheduler's noise are then a small part of every median.
        for _ in range(warmup):  # a first step pays for page faults and caches: time one after it
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        steps = max(steps, math.ceil(min_round_s / (time.perf_counter() - t)))
        record["timed_steps"] = steps
        medians = []
        for _ in range(rounds):  # each round: warm-up steps, then the median of its timed steps
            times = []
            for i in range(warmup + steps):
                t = time.perf_counter()
                state, metrics = compiled(state, batch)
                jax.block_until_ready(metrics)
                if i >= warmup:
                    times.append(time.perf_counter() - t)
            medians.append(common.median_ms(times))
        record["step_ms"] = float(statistics.median(medians))
        record["step_ms_rounds"] = medians
        record["tasks_per_s"] = point["tasks"] / (record["step_ms"] / 1e3)
        if record.get("flops"):
            record["gflops_per_s"] = record["flops"] / (record["step_ms"] / 1e3) / 1e9
    return record


def ratios(records: list[dict]) -> list[dict]:
    """second/first-order step-time and peak-memory ratios at equal settings."""
    out = []
    for r in records:
        if r["order"] != "second":
            continue
        key = {k: r.get(k) for k in ("tasks", "inner_steps", "item_vocab", "adapt", "remat", "local", "algorithm")}
        for f in records:
            if f["order"] == "first" and all(f.get(k) == v for k, v in key.items()):
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
                same = all(f.get(k) == v for k, v in key.items() if k != "remat")
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


def exact_flop_ratio(k: int) -> float:
    """The exact-second-order FLOP ratio of K inner steps, counted in network passes (a backward pass costs about two
    forwards): first order runs K forward-backward steps and the query's (3K + 3 passes); second order also runs,
    for every inner step, the backward pass through its gradient, a Hessian-vector product of about six passes
    (9K + 3). It is 2 at K = 1 and tends to 3 as K grows."""
    return (9 * k + 3) / (3 * k + 3)


def plot_study(data: dict, stem: Path) -> list[Path]:
    """The cost study's figures, each as PNG and SVG: the second/first ratios against K with the FLOP-ratio line;
    time and memory against K per remat policy; tasks/s against T and against V; achieved GFLOP/s as a fraction of
    the run's matmul rate against K and against T (``_fraction``, where the JSON has that rate)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "jaxrec"  # stable element ids: a redraw of the same JSON is the same file
    import matplotlib.pyplot as plt

    records = data["records"]
    written = []

    def save(fig, name):
        for suffix in (".png", ".svg"):
            path = stem.with_name(f"{stem.name}_{name}{suffix}")
            fig.savefig(path, dpi=120, metadata={"Date": None} if suffix == ".svg" else None)
            written.append(path)
        plt.close(fig)

    def series(axis, order, remat=False, x="inner_steps", **match):
        pts = [
            r
            for r in records
            if r["axis"] in axis and r["order"] == order and r["remat"] == remat
            and all(r.get(k) == v for k, v in match.items())
        ]  # fmt: skip
        return sorted(pts, key=lambda r: r[x])

    # 1. second / first ratios against K
    fig, ax = plt.subplots(figsize=(7, 4.2))
    first = {r["inner_steps"]: r for r in series(("inner_steps",), "first")}
    second = [r for r in series(("inner_steps",), "second") if r["inner_steps"] in first]
    ks = [r["inner_steps"] for r in second]
    ax.plot(ks, [r["step_ms"] / first[k]["step_ms"] for r, k in zip(second, ks, strict=True)], "o-", label="time")
    ax.plot(ks, [r["peak_bytes"] / first[k]["peak_bytes"] for r, k in zip(second, ks, strict=True)], "s-",
            label="compiled peak memory")  # fmt: skip
    ax.plot(ks, [r["flops"] / first[k]["flops"] for r, k in zip(second, ks, strict=True) if r.get("flops")], "^--",
            label="XLA FLOP count")  # fmt: skip
    grid_k = list(range(1, max(ks) + 1))
    ax.plot(grid_k, [exact_flop_ratio(k) for k in grid_k], "k:", label="(9K+3)/(3K+3)")
    over = [r["inner_steps"] for r in second if r.get("temp_bytes", 0) > HEAP_LIMIT]
    if over and data.get("backend", "cpu") == "cpu":
        # on a CPU host glibc maps a scratch buffer above its thread-arena limit afresh at every step
        # (benchmarks/host_faults.py counts the page faults)
        ax.axvline(min(over) - 0.5, color="grey", lw=0.8)
        ax.text(min(over) - 0.4, 0.03, "second-order scratch > 64 MiB:\nmapped and faulted every step",
                transform=ax.get_xaxis_transform(), fontsize=7, color="grey")  # fmt: skip
    ax.set(xlabel="inner steps K", ylabel="second order / first order", title="What exact second order costs (T=32)")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, "ratio")

    # 2. time and memory against K per remat policy
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines = [("first", False)] + [("second", False)] + [("second", p) for p in REMAT_POLICIES]
    for order, remat in lines:
        pts = series(("inner_steps", "remat"), order, remat)
        label = f"{order} order" + (f", remat={remat}" if remat else "")
        a.plot([r["inner_steps"] for r in pts], [r["step_ms"] for r in pts], "o-", label=label)
        b.plot([r["inner_steps"] for r in pts], [r["peak_bytes"] / 2**20 for r in pts], "o-", label=label)
    a.set(xlabel="inner steps K", ylabel="meta-step ms (median of rounds)", title="time, T=32")
    b.set(xlabel="inner steps K", ylabel="compiled peak MiB", title="memory, T=32")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, "remat")

    # 3. tasks/s against T and against V
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for order in ("first", "second"):
        base = [r for r in series(("inner_steps",), order) if r["inner_steps"] == BASE["inner_steps"]]
        pts = sorted(series(("tasks",), order, x="tasks") + base, key=lambda r: r["tasks"])
        a.plot([r["tasks"] for r in pts], [r["tasks_per_s"] for r in pts], "o-", label=f"{order} order")
        pts = sorted(series(("vocab",), order, x="item_vocab") + base, key=lambda r: r["item_vocab"])
        b.plot([r["item_vocab"] for r in pts], [r["tasks_per_s"] for r in pts], "o-", label=f"{order} order")
    a.set(xscale="log", xlabel="tasks per batch T", ylabel="tasks/s", title="throughput against T (K=5, V=1,700)")
    b.set(xscale="log", xlabel="item vocabulary V", ylabel="tasks/s", title="throughput against V (K=5, T=32)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, "throughput")

    # 4. achieved GFLOP/s as a fraction of the matmul rate of the same run, against K and against T
    rate = data.get("matmul_gflops_per_s")
    if rate and any(r.get("fraction_of_matmul_rate") for r in records):
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
        for order in ("first", "second"):
            pts = [r for r in series(("inner_steps",), order) if r.get("fraction_of_matmul_rate")]
            a.plot([r["inner_steps"] for r in pts], [r["fraction_of_matmul_rate"] for r in pts], "o-",
                   label=f"{order} order")  # fmt: skip
            base = [r for r in series(("inner_steps",), order) if r["inner_steps"] == BASE["inner_steps"]]
            pts = [r for r in sorted(series(("tasks",), order, x="tasks") + base, key=lambda r: r["tasks"])
                   if r.get("fraction_of_matmul_rate")]  # fmt: skip
            b.plot([r["tasks"] for r in pts], [r["fraction_of_matmul_rate"] for r in pts], "o-", label=f"{order} order")
        a.set(xlabel="inner steps K", title="against K (T=32, V=1,700)")
        a.set_xticks(sorted({r["inner_steps"] for r in series(("inner_steps",), "first")}))
        b.set(xscale="log", xlabel="tasks per batch T", title="against T (K=5, V=1,700)")
        ts = sorted({r["tasks"] for r in series(("tasks",), "first", x="tasks")} | {BASE["tasks"]})
        b.set_xticks(ts, [str(t) for t in ts])
        b.minorticks_off()
        top = 1.15 * max(r["fraction_of_matmul_rate"] for r in records if r["axis"] in ("inner_steps", "tasks")
                         and not r["remat"] and r.get("fraction_of_matmul_rate"))  # fmt: skip
        for ax in (a, b):
            ax.set_ylim(0, top)
            ax.set_ylabel("fraction of the matmul rate")
            ax.secondary_yaxis("right", functions=(lambda f: f * rate, lambda g: g / rate)).set_ylabel(
                "achieved GFLOP/s (XLA FLOPs / median ms)"
            )
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(
            f"Meta-step GFLOP/s as a fraction of a 2048x2048 jnp.dot measured in the same run ({rate:.0f} GFLOP/s)",
            fontsize=10,
        )
        fig.tight_layout()
        save(fig, "fraction")
    return written


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--grid", choices=["full", "reduced", "remat", "study"], default="full")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--min-round-s",
        type=float,
        default=0.5,
        help="time at least this long per round: a fast point gets more than --steps timed steps",
    )
    p.add_argument("--rounds", type=int, default=1, help="timed rounds per point (their medians kept in the JSON)")
    p.add_argument("--memory-only", action="store_true")
    p.add_argument("--plot-only", action="store_true", help="redraw the figures from an existing --out JSON")
    p.add_argument("--out", default="sweep")
    p.add_argument(
        "--malloc",
        choices=["heap", "default"],
        default="heap",
        help="heap: glibc keeps freed memory for reuse (jaxrec.keep_freed_host_memory, as compare.py and the CLI "
        "run); default: glibc's own thresholds, under which large scratch buffers are unmapped after every step",
    )
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.out}.json"
    if args.plot_only:
        data = json.loads(path.read_text())
        if data.get("grid") == "study":
            plot_study(data, RESULTS / args.out)
        else:
            plot(data["records"], RESULTS / f"{args.out}.png")
        return
    kept = args.malloc == "heap" and keep_freed_host_memory()
    records = []
    head = {
        "grid": args.grid,
        "memory_only": args.memory_only,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "rounds": args.rounds,
        "steps": args.steps,
        "min_round_s": args.min_round_s,
        "malloc": "heap" if kept else "default",
    }
    head["matmul_gflops_per_s"] = None if args.memory_only else meta_step.matmul_peak(2048)
    for point in grid(args.grid):
        records.append(run_point(point, args.steps, args.warmup, args.memory_only, args.rounds, args.min_round_s))
        if head["matmul_gflops_per_s"] and records[-1].get("gflops_per_s"):
            records[-1]["fraction_of_matmul_rate"] = records[-1]["gflops_per_s"] / head["matmul_gflops_per_s"]
        print(json.dumps(records[-1]), flush=True)
        path.write_text(json.dumps(head | {"records": records, "ratios": ratios(records)}, indent=1))
    if args.grid == "study":  # its remat figure already draws time and memory against K
        plot_study(json.loads(path.read_text()), RESULTS / args.out)
    else:
        plot(records, RESULTS / f"{args.out}.png")


if __name__ == "__main__":
    main()
