"""Meta-step throughput across devices (task axis sharded with ``NamedSharding``) and across batch sizes.

    python benchmarks/scaling.py                          # 1, 2, 4 forced CPU devices, one subprocess each
    python benchmarks/scaling.py --sweep                  # tasks/s at T = 32..4096 on this machine's devices (GPU)
    python benchmarks/scaling.py --devices 1 2 4 --tasks 32 --steps 5

The workload is the reference MeLU (``embed=32, hidden=(64, 64), use_ids=("item",)``, 32 support / 16 query rows,
5 inner steps, second order, every parameter adapted) on synthetic data, timed through the real
:class:`jaxrec.MetaTrainer` step with a ``"tasks"`` mesh. Forced CPU devices share the same cores, so on a CPU the
device scaling shows the *shape* of the sharded run (it compiles, it partitions, its per-step cost), not a speed-up.
Prints one JSON object and merges it into ``benchmarks/results/scaling.json`` (``--output``) under the mode's key.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "scaling.json"
SWEEP = [32, 64, 128, 256, 512, 1024, 2048, 4096]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4], help="forced CPU device counts")
    p.add_argument("--tasks", type=int, default=32, help="tasks per batch for the device scaling")
    p.add_argument("--sweep", type=int, nargs="*", default=None, help="task counts to sweep (bare flag: 32..4096)")
    p.add_argument("--support", type=int, default=32)
    p.add_argument("--query", type=int, default=16)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--order", choices=["first", "second"], default="second")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build(args, tasks: int, mesh):
    """``(trainer, state, batch)`` of the reference workload with ``tasks`` tasks on ``mesh``."""
    import jax
    import optax

    import jaxrec
    from jaxrec import models

    spec = jaxrec.testing.reference_spec()
    model = models.MeLU(spec, embed=32, hidden=(64, 64), use_ids=("item",), interaction=None)
    params = models.init_params(model, spec, jax.random.PRNGKey(0))
    trainer = jaxrec.MetaTrainer(
        loss_fn=models.default_loss(model),
        inner_lr=0.01,
        inner_steps=args.inner_steps,
        order=args.order,
        optimizer=optax.adam(1e-3),
        adapt_filter=models.adapt_filter("all"),
        mesh=mesh,
    )
    batch = jaxrec.testing.synthetic_task_batch(
        spec, tasks, args.support, args.query, jax.random.PRNGKey(1), padded=False
    )
    return trainer, trainer.init(params), batch


def time_steps(args, tasks: int, mesh) -> dict:
    """Compile, warm up, then time ``args.steps`` meta-steps (each blocked on); median seconds and tasks/s."""
    import jax

    trainer, state, batch = build(args, tasks, mesh)
    start = time.perf_counter()
    state, _ = trainer.step(state, batch)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        state, _ = trainer.step(state, batch)
    jax.block_until_ready(state)
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, _ = trainer.step(state, batch)
        jax.block_until_ready(state)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "tasks": tasks,
        "devices": 1 if mesh is None else int(mesh.size),
        "step_ms": round(1e3 * median, 3),
        "step_ms_min": round(1e3 * min(seconds), 3),
        "tasks_per_s": round(tasks / median, 1),
        "first_step_s": round(compile_s, 2),
        "compilations": trainer.traces,
    }


def worker(args) -> None:
    """Inside a subprocess with ``args.devices[0]`` forced CPU devices: one timing record as JSON."""
    import jaxrec

    devices = args.devices[0]
    print(json.dumps(time_steps(args, args.tasks, jaxrec.make_mesh(devices))), flush=True)


def device_scaling(args) -> list[dict]:
    """One subprocess per device count (the count is fixed when a JAX process starts)."""
    records = []
    for devices in args.devices:
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
        command = [sys.executable, __file__, "--worker", "--devices", str(devices), "--tasks", str(args.tasks)]
        command += ["--support", str(args.support), "--query", str(args.query), "--order", args.order]
        command += ["--inner-steps", str(args.inner_steps), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{devices}-device worker failed:\n{done.stderr[-4000:]}")
        records.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = records[0]["tasks_per_s"]
    for record in records:
        record["relative_throughput"] = round(record["tasks_per_s"] / base, 3)
    return records


def task_sweep(args) -> list[dict]:
    """Tasks/s at each task count on every local device (sharded when there are several)."""
    from jaxrec.scale.sharding import default_mesh

    mesh = default_mesh()
    return [time_steps(args, tasks, mesh) for tasks in (args.sweep or SWEEP)]


def environment() -> dict:
    import jax

    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "local_devices": jax.local_device_count(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
    }


def save(output: Path, key: str, record: dict) -> None:
    """Merge ``record`` into the JSON file under ``key`` (other modes' results are kept)."""
    data = json.loads(output.read_text()) if output.exists() else {}
    data[key] = record
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        worker(args)
        return
    workload = {k: getattr(args, k) for k in ("support", "query", "inner_steps", "order", "steps", "warmup")}
    workload["model"] = "MeLU(reference_spec(), embed=32, hidden=(64, 64), use_ids=('item',)), adapt all"
    if args.sweep is not None:
        key = "task_sweep"
        record = {"workload": workload, "environment": environment(), "results": task_sweep(args)}
    else:
        key = "cpu_device_scaling"
        # the parent only spawns workers: its own JAX backend would see one device
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        record = {"workload": {**workload, "tasks": args.tasks}, "environment": environment()}
        del record["environment"]["local_devices"]  # the parent's; each result names its device count
        record["results"] = device_scaling(args)
        record["environment"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
        record["note"] = "forced CPU devices share the same cores: the scaling shape, not a speed-up"
    record["command"] = "python benchmarks/scaling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(json.dumps({key: record}, indent=2, sort_keys=True))
    save(args.output, key, record)


if __name__ == "__main__":
    main()
