"""Does XLA hoist the frozen embedding lookups out of the inner loop with ``--adapt head``?

    python benchmarks/hoist_check.py    # writes benchmarks/results/meta_step_hoist.json (or --out FILE)

Compiles the reference meta-step (second order, local embeddings on) with ``--adapt head`` and ``--adapt all``,
counts ``gather`` ops in the optimised HLO inside every while-loop body (the inner ``lax.scan`` and its transpose,
with the computations they call) and outside, and times 3 steps of each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import meta_step  # noqa: E402


def loop_op_counts(hlo: str) -> dict:
    """``{while body: {op: count}}`` over each body and everything it calls, transitively."""
    comps = {}
    for chunk in re.split(r"\n(?=\S.*\{\n)", hlo):
        m = re.match(r"(?:ENTRY )?(%?[\w.\-]+)", chunk.strip())
        if m:
            comps[m.group(1)] = chunk

    def closure(name, seen):
        if name in seen or name not in comps:
            return
        seen.add(name)
        for callee in re.findall(r"(?:calls=|to_apply=|body=|condition=)(%?[\w.\-]+)", comps[name]):
            closure(callee, seen)

    out = {}
    for body in set(re.findall(r"body=(%?[\w.\-]+)", hlo)):
        seen: set = set()
        closure(body, seen)
        text = "\n".join(comps[s] for s in seen)
        out[body] = {op: len(re.findall(rf"\b{op}\(", text)) for op in ("gather", "dot", "dynamic-slice", "sort")}
    return out


def main(argv=None):
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "meta_step_hoist.json")
    cli.add_argument("--out", default=default, help="the JSON file to write (default: the committed one)")
    path = cli.parse_args(argv).out
    out = {}
    for adapt in ("head", "all"):
        args = common.parser(__doc__).parse_args(["--adapt", adapt])
        args.local_embeddings = "on"
        trainer, state, batch, _ = meta_step.build(args)
        compiled = trainer._step.lower(state, batch).compile()
        hlo = compiled.as_text()
        times = []
        for _ in range(4):
            t = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
        out[adapt] = {
            "while_bodies": loop_op_counts(hlo),
            "gathers_total": len(re.findall(r"\bgather\(", hlo)),
            "step_ms": common.median_ms(times[1:]),
            "step_ms_all": [1e3 * t for t in times],
        }
        print(adapt, json.dumps(out[adapt]), flush=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
