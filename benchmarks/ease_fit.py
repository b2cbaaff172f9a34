"""EASE's fit on large catalogues: float32 against float64, against the floor of a matrix product; one JSON document.

    python benchmarks/ease_fit.py                         # 4,000, 8,000 and 16,000 items, 3 rounds
    python benchmarks/ease_fit.py --items 24000 --rounds 1 --out benchmarks/results/ease_fit.json

For each catalogue size ``n``, on one synthetic log (``--users`` users, ``--per-user`` interactions each, items
drawn with Zipf-like popularity so that every item is seen), side by side in one run:

* **float64** and **float32**: :func:`jaxrec.evaluation.retrieval_baselines.fit_ease` at ``--l2`` with that
  ``dtype`` (the Gram matrix, the Cholesky factor on one BLAS thread, the inverse, the weights): ``n^3`` flops of
  LAPACK plus the Gram product. ``"auto"``, the default, is what :func:`~jaxrec.evaluation.retrieval_baselines.
  ease_precision` chooses for the log (recorded), and the two weight matrices' largest difference and the overlap
  of the top-20 lists they give 500 users are recorded too (float32's accuracy, measured, not assumed).
* **floor**: one ``n x n`` by ``n x n`` matrix product in numpy (``2 n^3`` flops, every BLAS thread) in each
  precision: EASE's LAPACK work is half that many flops, so ``ratio_to_floor`` near 0.5 is as fast as the
  machine's matrix product allows; the serial Cholesky factor (one thread) keeps it above that on several cores.

Medians and every round (wall seconds) are in the JSON, with the dense matrix's bytes in each precision.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import scipy.sparse as sp
import threadpoolctl

from jaxrec.evaluation import retrieval_baselines as rb


def synthetic_log(users: int, items: int, per_user: int, seed: int) -> sp.csr_matrix:
    """A binary ``[users, items]`` log: each user's items drawn without repeats with probability ~ 1 / rank^0.8,
    and item ``u % items`` added so that every item has an interaction."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    weights /= weights.sum()
    rows, cols = [], []
    for u in range(users):
        chosen = np.unique(np.append(rng.choice(items, per_user, replace=False, p=weights), u % items))
        rows.append(np.full(chosen.size, u))
        cols.append(chosen)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(users, items))


def timed(fn, rounds: int) -> tuple[list[float], object]:
    seconds, out = [], None
    for _ in range(rounds):
        began = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - began)
    return seconds, out


def top_lists(model: rb.EASEModel, S: sp.csr_matrix, k: int = 20) -> np.ndarray:
    scores = model.scores(S)
    scores[S.nonzero()] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, nargs="+", default=[4000, 8000, 16000])
    p.add_argument("--users", type=int, default=6000)
    p.add_argument("--per-user", type=int, default=40)
    p.add_argument("--l2", type=float, default=500.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    blas = [pool for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
    document = {
        "benchmark": "ease_fit",
        "config": vars(args),
        "platform": platform.platform(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "blas": [{k: pool.get(k) for k in ("internal_api", "version", "num_threads")} for pool in blas],
        "sizes": [],
    }
    for n in args.items:
        X = synthetic_log(args.users, n, args.per_user, args.seed)
        row = {"items": n, "interactions": int(X.nnz), "auto": str(rb.ease_precision(X, args.l2))}
        models = {}
        for name, dtype in (("float64", np.float64), ("float32", np.float32)):
            seconds, models[name] = timed(lambda X=X, dtype=dtype: rb.fit_ease(X, l2=args.l2, dtype=dtype), args.rounds)
            A = np.random.default_rng(args.seed).standard_normal((n, n)).astype(dtype)
            floor, _ = timed(lambda A=A: A @ A, args.rounds)
            del A
            row[name] = {
                "seconds": seconds,
                "median_s": statistics.median(seconds),
                "floor_seconds": floor,
                "floor_median_s": statistics.median(floor),
                "ratio_to_floor": statistics.median(seconds) / statistics.median(floor),
                "dense_bytes": n * n * np.dtype(dtype).itemsize,
            }
        row["float32_speedup"] = row["float64"]["median_s"] / row["float32"]["median_s"]
        row["max_abs_weight_difference"] = float(np.abs(models["float64"].weights - models["float32"].weights).max())
        S = X[: min(500, X.shape[0])]
        lists = [top_lists(models[name], S) for name in ("float64", "float32")]
        row["top20_overlap"] = float(np.mean([np.intersect1d(a, b).size / a.size for a, b in zip(*lists, strict=True)]))
        document["sizes"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    text = json.dumps(document, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return document


if __name__ == "__main__":
    main()
