"""Load benchmark of ``jaxrec serve`` on loopback: latency and throughput at 1, 8 and 64 concurrent clients, beside
the floor, the bare compiled adapt-and-rank call on the same batch sizes.

    python benchmarks/serve.py                                # trains a 1-epoch default model of ml-latest-small
    python benchmarks/serve.py --checkpoint runs/jaxrec --devices default all

Each client is a thread with one keep-alive connection, sending new users of ``--ratings`` random ratings each
(``POST /recommend``, k = 10) back to back; a level stops after ``--requests`` requests or ``--seconds``. The
service runs as its own process (``jaxrec serve``, default buckets), once per ``--devices`` setting; the clients
share the machine's cores with it, so the figures are a lower bound of what the service does alone. JSON goes to
stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import jaxrec  # noqa: E402

jaxrec.use_every_core()  # before JAX starts: the floor is measured on one device and on one per core

from serve_support import Server  # noqa: E402

from jaxrec.experiment.trained import load_trained  # noqa: E402
from jaxrec.serve import Catalogue, ServingModel  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a run folder (default: train a 1-epoch default model of ml-latest-small)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--requests", type=int, default=3000, help="requests per level, at most")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per level, at most")
    p.add_argument("--ratings", type=int, default=5, help="ratings per new user")
    p.add_argument(
        "--devices", nargs="+", default=["default", "all"], help="the services: 'default' (no flag), 'all', counts"
    )
    p.add_argument("--rounds", type=int, default=30, help="timed calls per batch size for the floor")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/serve.json"))
    return p.parse_args()


def train_default(folder: Path) -> Path:
    out = folder / "run"
    command = [
        sys.executable,
        "-m",
        "jaxrec",
        "train",
        "--epochs",
        "1",
        "--no-eval",
        "--no-progress",
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out


def users(catalogue: Catalogue, count: int, ratings: int, seed: int) -> list[list[dict]]:
    """``count`` new users, each with ``ratings`` ratings of distinct random items on the model's scale."""
    rng = np.random.default_rng(seed)
    low, high = catalogue.rating_range or (1.0, 5.0)
    out = []
    for _ in range(count):
        items = rng.choice(len(catalogue), ratings, replace=False)
        values = np.round(rng.uniform(low, high, ratings) * 2) / 2
        out.append([{"item": catalogue.ids[c], "rating": float(v)} for c, v in zip(items, values, strict=True)])
    return out


def floor(model: ServingModel, catalogue: Catalogue, sizes, ratings: int, rounds: int) -> list[dict]:
    """The bare compiled call: median time of ``model.rank`` on a batch of each size (inputs built outside)."""
    out = []
    for size in sizes:
        batch = [
            catalogue.user_input(catalogue.support([(r["item"], r["rating"]) for r in u], None, 10**6), 10)
            for u in users(catalogue, size, ratings, seed=size)
        ]
        model.rank(batch)  # warm
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            model.rank(batch)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        out.append({"batch": size, "median_ms": median * 1e3, "users_per_s": size / median})
    return out


def load(server: Server, sent: list[list[dict]], clients: int, requests: int, seconds: float) -> dict:
    """``clients`` threads sending the users back to back; latency percentiles and throughput."""
    latencies: list[float] = []
    failures = []
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.perf_counter() + seconds

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            while time.perf_counter() < stop_at:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                body = json.dumps({"ratings": sent[n % len(sent)], "k": 10}).encode()
                started = time.perf_counter()
                connection.request("POST", "/recommend", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                elapsed = time.perf_counter() - started
                with lock:
                    (latencies if response.status == 200 else failures).append(elapsed)
        finally:
            connection.close()

    before = server.get("/health")[1]
    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    after = server.get("/health")[1]
    batches = after["batches"] - before["batches"]
    ms = np.asarray(latencies) * 1e3
    return {
        "clients": clients,
        "requests": len(latencies),
        "failed": len(failures),
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_batch": (after["requests"] - before["requests"]) / max(batches, 1),
        "compiled_shapes_after": after["compiled_shapes"],
    }


def main() -> int:
    args = parse()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else train_default(Path(tmp))
        trained = load_trained(checkpoint)
        catalogue = Catalogue(trained)
        bare, compile_s = [], {}
        for devices in (None, 1):  # every device (one per core), then one
            model = ServingModel(trained, devices=devices)
            compile_s[model.mesh.size if model.mesh is not None else 1] = model.warm_up()
            for row in floor(model, catalogue, sorted({1, 8, 64}), args.ratings, args.rounds):
                bare.append({"devices": 1 if model.mesh is None else int(model.mesh.size), **row})
        sent = users(catalogue, 512, args.ratings, seed=0)
        services = []
        for devices in args.devices:
            flags = [] if devices == "default" else ["--devices", devices]
            server = Server(checkpoint, *flags, timeout=600)
            try:
                health = server.get("/health")[1]
                levels = [load(server, sent, c, args.requests, args.seconds) for c in args.concurrency]
            finally:
                server.stop()
            services.append({"devices_flag": devices, "devices": health["devices"], "levels": levels})
    record = {
        "benchmark": "serve",
        "model": trained.config.model.name,
        "algorithm": trained.config.meta.algorithm,
        "items": model.n_items,
        "ratings_per_user": args.ratings,
        "buckets": {"batch": list(model.batch_sizes), "support": list(model.support_sizes)},
        "compile_s": compile_s,
        "floor": bare,
        "services": services,
        "host": {"cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "jax": jax.__version__,
    }
    text = json.dumps(record, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
