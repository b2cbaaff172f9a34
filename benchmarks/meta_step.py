"""Time jaxrec's meta-step on the reference MeLU workload; prints one JSON line.

    python benchmarks/meta_step.py --order second --adapt all --local-embeddings on --matmul-peak 2048
    python benchmarks/meta_step.py --item-vocab 1000000 --outer-tables sparse
    python benchmarks/meta_step.py --devices 2    # one host device per core, tasks sharded over them
    python benchmarks/meta_step.py --method melu-5 --order first   # a method of jaxrec.methods, as configured

``--method NAME`` times the meta-step that ``jaxrec train --method NAME`` runs (its model, inner loop and outer
optimiser, built by :class:`jaxrec.experiment.protocol.Learner` from the recipe) on the same reference rows and
task batch; ``--order`` is applied over the recipe's, the workload flags (``--tasks``, ``--support``, ...) too.

``--devices N`` (CPU) exposes the host's cores as ``N`` XLA devices (``jax_num_cpu_devices``) and runs the step
on a 1-D ``"tasks"`` mesh (:mod:`jaxrec.scale.sharding`: parameters replicated, the task axis sharded, the
meta-gradient summed across devices by the compiler), exactly as on several accelerators. One XLA CPU device
runs most of this step's small per-task ops on one thread; a device per core runs the two halves of the task
batch side by side. ``peak_bytes`` is then per device.

``--outer-tables sparse`` updates the embedding tables (:func:`jaxrec.models.embedding_tables`) row-sparsely
(:mod:`jaxrec.scale.row_sparse`: ``row_sparse_adam`` / ``row_sparse_sgd`` following ``--outer``, the optax optimiser
for the rest), so the step no longer passes over whole tables; ``dense`` (default) is the plain optax update.

The timed function is the real :class:`jaxrec.MetaTrainer` meta-step (jit, state donated), compiled once with
``lower(...).compile()`` (whose ``memory_analysis`` gives ``peak_bytes``) and then called ``--warmup + --steps``
times; only the timing blocks on each step's result.

FLOPs (``flops``, ``flops_method``): XLA's cost analysis counts a while-loop body once, so the compiled step's
``cost_analysis()`` counts the ``K``-step inner ``lax.scan`` (and its transpose) as one step, understating the
work about ``K`` times (kept as ``flops_scan_body_once``). ``flops`` is instead the cost analysis of the same step
lowered (not compiled) with the inner scan fully unrolled (``InnerLoop(unroll=True)``), a separate trace of
a fresh trainer so the timed executable is the ordinary rolled one. With ``--task-chunk`` the outer task loop is
also a scan, so ``flops`` is counted on the unchunked step (the same arithmetic; ``flops_method`` says so).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxrec  # noqa: E402
from jaxrec import models  # noqa: E402
from jaxrec.experiment import ExperimentConfig  # noqa: E402
from jaxrec.experiment.config import resolve  # noqa: E402
from jaxrec.experiment.protocol import Learner, meta_optimizer  # noqa: E402
from jaxrec.methods import METHODS, recipe  # noqa: E402
from jaxrec.scale.host_memory import keep_freed_host_memory  # noqa: E402
from jaxrec.scale.sharding import make_mesh, shard_batch  # noqa: E402


def build(args, unroll: int | bool = 1):
    """``(trainer, state, batch, n_params)`` of the reference workload for ``args`` (batch sharded with
    ``--devices``)."""
    spec = jaxrec.testing.reference_spec(args.item_vocab)
    if getattr(args, "method", None):
        return build_method(args, spec, unroll)
    model = models.MeLU(spec, embed=args.embed, hidden=tuple(args.hidden), use_ids=("item",), interaction=None)
    params = models.init_params(model, spec, jax.random.PRNGKey(args.seed))
    options = {"local_embeddings": models.embedding_tables(params)} if args.local_embeddings == "on" else {}
    outer = getattr(args, "outer", "adam")
    sparse = {}
    if getattr(args, "outer_tables", "dense") == "sparse":
        row_sparse = jaxrec.row_sparse_adam(1e-3) if outer == "adam" else jaxrec.row_sparse_sgd(1e-3)
        sparse = {"sparse_tables": models.embedding_tables(params), "sparse_optimizer": row_sparse}
    trainer = jaxrec.MetaTrainer(
        loss_fn=models.default_loss(model),
        inner_lr=args.inner_lr,
        inner_steps=args.inner_steps,
        algorithm=args.algorithm,
        order=args.order,
        optimizer=optax.adam(1e-3) if outer == "adam" else optax.sgd(1e-3),
        adapt_filter=models.adapt_filter(args.adapt),
        remat=args.remat,
        task_chunk=args.task_chunk,
        objective_options=options,
        mesh=make_mesh(args.devices) if getattr(args, "devices", 1) > 1 else None,
        inner_unroll=unroll,
        **sparse,
    )
    return workload(args, spec, trainer, params)


def workload(args, spec, trainer, params):
    """``(trainer, state, batch, n_params)``: the reference task batch (sharded over the trainer's mesh)."""
    batch = jaxrec.testing.synthetic_task_batch(
        spec, args.tasks, args.support, args.query, jax.random.PRNGKey(args.seed + 1), padded=False
    )
    if trainer.mesh is not None:
        batch = shard_batch(batch, trainer.mesh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return trainer, trainer.init(params), batch, n_params


def build_method(args, spec, unroll: int | bool = 1):
    """``build`` for ``--method``: the recipe's learner on the reference rows."""
    config = resolve(ExperimentConfig.make(**{**recipe(args.method), "order": args.order}))
    learner = Learner.build(config, spec)
    trainer = jaxrec.MetaTrainer(
        learner.inner.replace(unroll=unroll),
        inner_lr=config.meta.inner_lr,
        algorithm=config.meta.algorithm,
        optimizer=meta_optimizer(config),
        task_chunk=args.task_chunk,
        mesh=make_mesh(args.devices) if getattr(args, "devices", 1) > 1 else None,
    )
    params = models.init_params(learner.model, spec, jax.random.PRNGKey(args.seed))
    return workload(args, spec, trainer, params)


def memory_and_cost(compiled) -> dict:
    out = {}
    try:
        mem = compiled.memory_analysis()
        parts = {
            "temp_bytes": int(mem.temp_size_in_bytes),
            "argument_bytes": int(mem.argument_size_in_bytes),
            "output_bytes": int(mem.output_size_in_bytes),
            "alias_bytes": int(getattr(mem, "alias_size_in_bytes", 0)),
        }
        out.update(parts)
        out["peak_bytes"] = parts["temp_bytes"] + parts["argument_bytes"] + parts["output_bytes"]
    except Exception as err:  # noqa: BLE001 - backend without memory analysis
        out["peak_bytes"] = None
        out["memory_error"] = repr(err)
    try:
        out["flops_scan_body_once"] = _flops(compiled.cost_analysis())
    except Exception as err:  # noqa: BLE001
        out["flops_scan_body_once"] = None
        out["cost_error"] = repr(err)
    return out


def _flops(cost) -> float:
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan")))


def unrolled_flops(args) -> dict:
    """FLOPs of one meta-step counting every inner step: XLA cost analysis of the step lowered with the inner
    ``lax.scan`` fully unrolled (a fresh trainer, so the jit trace cache of the timed step is not shared).

    With ``--task-chunk`` the tasks' loop is a scan whose body the cost analysis would also count once, so the
    FLOPs are those of the same step without chunking: the same arithmetic, all tasks in one vmap. The
    ``recompute`` and ``sqrt`` remat policies are not counted (None): their replayed steps run in loops of traced
    length that cannot be unrolled.
    """
    args = argparse.Namespace(**vars(args))
    method = "hlo_cost_analysis(lowered step, inner scan unrolled K times; unoptimised HLO)"
    if getattr(args, "remat", False) in ("recompute", "sqrt"):
        # these policies replay steps in fori_loops of traced length, which the cost analysis counts once
        return {"flops": None, "flops_method": method, "flops_error": f"not counted for remat={args.remat!r}"}
    if args.task_chunk:
        method += "; counted without task_chunk (same arithmetic)"
        args.task_chunk = None
    trainer, state, batch, _ = build(args, unroll=True)
    try:
        lowered = trainer._step.lower(state, batch)
        return {"flops": _flops(lowered.cost_analysis()), "flops_method": method}
    except Exception as err:  # noqa: BLE001
        return {"flops": None, "flops_method": method, "flops_error": repr(err)}


def matmul_peak(n: int, reps: int = 5) -> float:
    """GFLOP/s of an ``n x n`` float32 ``jnp.dot`` (median of ``reps``), this machine's large-matmul rate."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        dot(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times)) / 1e9


def main(argv=None):
    p = common.parser(__doc__)
    p.add_argument("--local-embeddings", choices=["on", "off"], default="on")
    p.add_argument("--method", choices=sorted(METHODS), help="time this jaxrec.methods recipe's meta-step")
    p.add_argument("--matmul-peak", type=int, default=0, help="also time an N x N jnp.dot (0: skip)")
    p.add_argument("--outer", choices=["adam", "sgd"], default="adam", help="outer optimiser (sgd: diagnostic)")
    p.add_argument(
        "--outer-tables",
        choices=["dense", "sparse"],
        default="dense",
        help="outer update of the embedding tables: dense (optax over the full tables) or sparse (row-sparse, "
        "lazy Adam with --outer adam)",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="host CPU devices (one per core) to shard the task axis over; 1: plain single-device step",
    )
    args = p.parse_args(argv)
    if args.devices > 1:
        # must precede the backend's start: nothing above has touched a device yet
        jax.config.update("jax_num_cpu_devices", args.devices)
    # as the jaxrec command and compare.py run it: glibc keeps freed memory for reuse, so the step's buffer is not
    # page-faulted in again on every step (run alone, a third of a second-order step's time on CPU)
    heap_kept = keep_freed_host_memory()
    trainer, state, batch, n_params = build(args)
    t0 = time.perf_counter()
    compiled = trainer._step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    record = common.base_record(args, "jaxrec")
    record.update(memory_and_cost(compiled))
    record.update(unrolled_flops(args))
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step_ms = common.median_ms(times)
    record.update(
        step_ms=step_ms,
        step_ms_all=[1e3 * t for t in times],
        tasks_per_s=args.tasks / (step_ms / 1e3),
        compile_s=compile_s,
        loss=float(metrics["loss"]),
        params=n_params,
        device=str(jax.devices()[0].device_kind),
        devices=args.devices,
        platform_name=jax.default_backend(),
        heap_kept=bool(heap_kept),
        versions={"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None},
    )
    if record.get("flops"):
        record["gflops_per_s"] = record["flops"] / (step_ms / 1e3) / 1e9
    if args.matmul_peak:
        record["matmul_gflops_per_s"] = matmul_peak(args.matmul_peak)
        if record.get("gflops_per_s"):
            record["fraction_of_matmul_peak"] = record["gflops_per_s"] / record["matmul_gflops_per_s"]
    common.emit(record)


if __name__ == "__main__":
    main()
