"""jaxrec vs the two PyTorch references on the reference workload, run alternately in subprocesses.

    python benchmarks/compare.py --rounds 3 --vocabs 1700 100000 1000000 --sparse-vocabs 1000000

At each vocabulary of ``--sparse-vocabs`` jaxrec also runs with ``--outer-tables sparse`` (row-sparse lazy Adam
on the embedding tables, :mod:`jaxrec.scale.row_sparse`), listed as ``jaxrec_sparse`` next to the dense ``jaxrec``.

Writes ``benchmarks/results/compare.json`` (raw records), ``compare.md`` (median table, speed-ups against the
PyTorch loop and torch.func measured in the same run) and ``compare.png`` / ``compare.svg`` (grouped by workload, one
colour per implementation, the ratio to the plain jaxrec step on each bar).

``--devices 1 2`` (default) runs every jaxrec variant twice: on one XLA CPU device (``jaxrec``) and with the task
axis sharded over two host devices, one per core (``jaxrec_2dev``, ``meta_step.py --devices 2``). PyTorch uses
every core through its intra-op threads (``torch.set_num_threads``) in both references.

``--malloc heap`` (default) runs every implementation, PyTorch included, with glibc keeping freed memory in its
heap (``MALLOC_MMAP_MAX_=0``; :mod:`jaxrec.scale.host_memory` explains why XLA CPU needs it); ``--malloc default``
keeps glibc's defaults. ``--task-chunk N`` is passed to every jaxrec run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def variants(vocabs, torch_vocabs, orders, sparse_vocabs=(), devices=(1,)):
    step = [sys.executable, str(HERE / "meta_step.py"), "--matmul-peak", "2048"]
    for vocab in vocabs:
        for n in devices:
            suffix = "" if n == 1 else f"_{n}dev"
            dev = [] if n == 1 else ["--devices", str(n)]
            for order in orders if vocab == vocabs[0] else ["second"]:
                yield ("jaxrec" + suffix, order, vocab, step + dev)
            if vocab in sparse_vocabs:
                yield ("jaxrec_sparse" + suffix, "second", vocab, step + dev + ["--outer-tables", "sparse"])
        if vocab in torch_vocabs:
            yield ("torch_loop", "second", vocab, [sys.executable, str(HERE / "torch_reference.py"), "--style", "loop"])
            if vocab == vocabs[0]:  # torch.func materialises [T, V, E] per-task tables: first vocabulary only
                yield (
                    "torch_func",
                    "second",
                    vocab,
                    [sys.executable, str(HERE / "torch_reference.py"), "--style", "func"],
                )


# glibc keeps freed memory in its heap instead of unmapping it (jaxrec.keep_freed_host_memory does the same
# in-process): the same environment for every implementation
HEAP_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}


def run(cmd, order, vocab, steps, warmup, env=None):
    full = cmd + ["--order", order, "--item-vocab", str(vocab), "--steps", str(steps), "--warmup", str(warmup)]
    out = subprocess.run(full, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        return {"error": out.stderr[-2000:], "cmd": full}
    return json.loads(lines[-1])


def table(records) -> tuple[str, dict]:
    ok = ok_records(records)
    groups: dict[tuple, list] = {}
    for r in ok:
        c = r["config"]
        groups.setdefault((r["impl"], c["order"], c["item_vocab"]), []).append(r)
    med = {k: statistics.median(x["step_ms"] for x in v) for k, v in groups.items()}
    lines = [
        "| impl | order | V | step ms (median) | tasks/s | x torch loop | x torch.func | peak MB | GFLOP/s "
        "| x matmul rate | rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(groups, key=lambda k: (k[2], k[0], k[1])):
        impl, order, vocab = key
        rs = groups[key]
        ms = med[key]
        loop, loop_mark = reference(med, "torch_loop", vocab)
        func, func_mark = reference(med, "torch_func", vocab)
        peak = [r.get("peak_bytes") for r in rs if r.get("peak_bytes")]
        gf = [r.get("gflops_per_s") for r in rs if r.get("gflops_per_s")]
        frac = [r.get("fraction_of_matmul_peak") for r in rs if r.get("fraction_of_matmul_peak")]
        tasks = rs[0]["config"]["tasks"]
        lines.append(
            f"| {impl} | {order} | {vocab} | {ms:.1f} | {1e3 * tasks / ms:.1f} | "
            f"{loop / ms if loop else float('nan'):.1f}{loop_mark} | "
            f"{func / ms if func else float('nan'):.1f}{func_mark} | "
            f"{statistics.median(peak) / 2**20 if peak else float('nan'):.1f} | "
            f"{statistics.median(gf) if gf else float('nan'):.2f} | "
            f"{statistics.median(frac) if frac else float('nan'):.3f} | {len(rs)} |"
        )
    ratios = [
        f"{impl} {med[(impl, 'second', v)] / med[(impl, 'first', v)]:.2f}x"
        for impl, order, v in sorted(med)
        if order == "first" and (impl, "second", v) in med
    ]
    if ratios:
        lines.append("")
        lines.append("Second-/first-order step time (medians): " + ", ".join(ratios) + ".")
    mallocs = sorted({str(r.get("malloc", "default")) for r in ok})
    chunks = sorted({str(r["config"].get("task_chunk")) for r in ok if r["impl"].startswith("jaxrec")})
    lines.append("")
    lines.append(
        f"Settings: malloc {', '.join(mallocs)} (every implementation); jaxrec task_chunk {', '.join(chunks)}."
    )
    lines.append("")
    lines.append(
        "\\* PyTorch not run at this vocabulary: ratio against its run at the largest smaller vocabulary (PyTorch"
        " with dense nn.Embedding tables does more work as V grows, but its timings here are dominated by load)."
    )
    lines += per_round(records)
    peaks = [r["matmul_gflops_per_s"] for r in records if r.get("matmul_gflops_per_s")]
    if peaks:
        lines.append("")
        lines.append(
            f"Large-matmul rate (2048x2048 jnp.dot, same runs): median {statistics.median(peaks):.1f} GFLOP/s."
        )
    methods = sorted({r["flops_method"] for r in records if r.get("flops_method")})
    if methods:
        lines.append("")
        lines.append("FLOPs per step: " + "; ".join(methods) + " (GFLOP/s = FLOPs / median step time).")
    return "\n".join(lines) + "\n", med


def ok_records(records):
    """The records of runs that finished (a failed run keeps its stderr under ``"error"``)."""
    return [r for r in records if "error" not in r]


def per_round(records) -> list[str]:
    """Step ms of every variant in every round (rounds run back to back, so each round's ratios are side by side)."""
    rounds = sorted({r.get("round", 0) for r in records})
    cells: dict[tuple, dict] = {}
    for r in ok_records(records):
        c = r["config"]
        cells.setdefault((r["impl"], c["order"], c["item_vocab"]), {})[r.get("round", 0)] = r["step_ms"]
    out = ["", "Per round (step ms; the machine's load from other users varied between rounds):", ""]
    out.append("| impl | order | V | " + " | ".join(f"round {i}" for i in rounds) + " |")
    out.append("|---|---|---|" + "---|" * len(rounds))
    for key in sorted(cells, key=lambda k: (k[2], k[0], k[1])):
        row = [f"{cells[key][i]:.0f}" if i in cells[key] else "-" for i in rounds]
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(row) + " |")
    return out


def reference(med, impl, vocab):
    """PyTorch's median at ``vocab``, else at the largest smaller vocabulary it ran at (marked ``*``)."""
    if (impl, "second", vocab) in med:
        return med[(impl, "second", vocab)], ""
    ran = sorted(v for i, o, v in med if i == impl and o == "second" and v < vocab)
    return (med[(impl, "second", ran[-1])], "\\*") if ran else (None, "")


#: one colour per implementation, the same in every figure
COLOURS = {
    "jaxrec": "#1f77b4",
    "jaxrec_2dev": "#6baed6",
    "jaxrec_sparse": "#2ca02c",
    "jaxrec_sparse_2dev": "#98df8a",
    "torch_loop": "#d62728",
    "torch_func": "#ff9896",
}


def plot(med, path):
    """Step time grouped by workload (order, V), one colour per implementation, each bar labelled with its time in ms
    and its ratio to the plain jaxrec step of the same workload; written as ``path`` (PNG) and beside it as SVG."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "jaxrec"  # stable element ids: a redraw of the same JSON is the same file
    import matplotlib.pyplot as plt

    workloads = sorted({(o, v) for _, o, v in med}, key=lambda w: (w[1], w[0] != "second"))
    impls = sorted({i for i, _, _ in med}, key=lambda i: (list(COLOURS).index(i) if i in COLOURS else 99, i))
    width = 0.8 / max(sum((i, o, v) in med for i in impls) for o, v in workloads)
    fig, ax = plt.subplots(figsize=(9, 4.6))
    labelled = set()
    for x, (order, vocab) in enumerate(workloads):
        present = [i for i in impls if (i, order, vocab) in med]  # packed and centred: no empty slots in a group
        base = med.get(("jaxrec", order, vocab))
        for n, impl in enumerate(present):
            y = med[(impl, order, vocab)]
            xc = x + (n - (len(present) - 1) / 2) * width
            label = None if impl in labelled else impl
            labelled.add(impl)
            ax.bar(xc, y, width * 0.95, label=label, color=COLOURS.get(impl, "#7f7f7f"))
            text = f"{y:.0f}" + (f"\n{y / base:.2f}x" if base and impl != "jaxrec" else "")
            ax.annotate(text, (xc, y), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(workloads)), [f"{o} order\nV = {v:,}" for o, v in workloads], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("meta-step ms (median; log scale)")
    ax.set_title("MeLU meta-step, T=32 S=32 Q=16 K=5, 2-core CPU: ms, and x the plain jaxrec step", fontsize=10)
    handles = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))  # label -> handle
    ax.legend([handles[i] for i in impls], impls, fontsize=8, ncol=3, loc="upper left")
    ax.margins(y=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(Path(path).with_suffix(".svg"), metadata={"Date": None})  # byte-stable on a redraw
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--vocabs", type=int, nargs="+", default=[1700, 100000, 1000000])
    p.add_argument("--torch-vocabs", type=int, nargs="*", default=[1700], help="vocabularies PyTorch runs at")
    p.add_argument("--orders", nargs="+", default=["second", "first"])
    p.add_argument(
        "--sparse-vocabs",
        type=int,
        nargs="*",
        default=[1000000],
        help="vocabularies at which jaxrec also runs with --outer-tables sparse (row 'jaxrec_sparse')",
    )
    p.add_argument(
        "--devices",
        type=int,
        nargs="+",
        default=[1, 2],
        help="jaxrec runs once per count: 1 is the plain step, N > 1 shards the tasks over N host CPU devices "
        "(rows 'jaxrec_<N>dev'; meta_step.py --devices)",
    )
    p.add_argument(
        "--malloc",
        choices=["heap", "default"],
        default="heap",
        help="heap: every implementation runs with glibc keeping freed memory for reuse (MALLOC_MMAP_MAX_=0, "
        "see jaxrec.scale.host_memory); default: glibc's defaults",
    )
    p.add_argument("--task-chunk", type=int, default=None, help="passed to every jaxrec run (tasks per vmapped chunk)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default="compare")
    p.add_argument("--table-only", action="store_true", help="rewrite the .md/.png/.svg from an existing .json")
    args = p.parse_args(argv)
    if args.table_only:
        md, med = table(json.loads((RESULTS / f"{args.out}.json").read_text()))
        (RESULTS / f"{args.out}.md").write_text(md)
        plot(med, RESULTS / f"{args.out}.png")
        print(md)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    records = []
    env = dict(os.environ) | (HEAP_MALLOC if args.malloc == "heap" else {})
    chunk = ["--task-chunk", str(args.task_chunk)] if args.task_chunk else []
    for rnd in range(args.rounds):
        for impl, order, vocab, cmd in variants(
            args.vocabs, args.torch_vocabs, args.orders, args.sparse_vocabs, args.devices
        ):
            cmd = cmd + chunk if impl.startswith("jaxrec") else cmd
            rec = run(cmd, order, vocab, args.steps, args.warmup, env)
            rec["round"], rec["malloc"] = rnd, args.malloc
            if impl.startswith("jaxrec") and "error" not in rec:
                rec["impl"] = impl  # its own row in the tables (sparse outer update, device count)
            records.append(rec)
            print(
                json.dumps(
                    {k: rec.get(k) for k in ("impl", "round", "step_ms", "error")} | {"V": vocab, "order": order}
                ),
                file=sys.stderr,
                flush=True,
            )
            (RESULTS / f"{args.out}.json").write_text(json.dumps(records, indent=1))
    md, med = table(records)
    (RESULTS / f"{args.out}.md").write_text(md)
    plot(med, RESULTS / f"{args.out}.png")
    print(md)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
