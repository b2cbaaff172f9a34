"""Data-pipeline benchmark: prints one JSON line (and writes it with --out).

1. ml-100k (from --data-dir, $JAXREC_DATA or ../shared/data beside the checkout): load, cold-start split, fit the
   Featurizer, featurise every rating, build MeLU tasks and materialise one epoch of padded batches.
2. A synthetic log of --synthetic-ratings ratings (default 20M; Zipf-like user activity and item popularity, with
   duplicates and side features) through the same pipeline; peak RSS from resource.getrusage.

    python benchmarks/data_pipeline.py --out benchmarks/results/data_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

import jaxrec.data as jd
from jaxrec.data.tasks import build_tasks, cold_start_split


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


def movielens_100k(data_dir: Path, batch_size: int) -> dict:
    t0 = time.perf_counter()
    ds = jd.load("ml-100k", data_dir, download=False)
    t_load = time.perf_counter()
    split = cold_start_split(ds, "melu", seed=0)
    feat = jd.Featurizer.fit(ds, split.train)
    rows = feat.transform(ds.ratings)
    t_feat = time.perf_counter()
    tasks = build_tasks(split.train, feat, "melu", seed=0)
    all_tasks = build_tasks(ds.ratings, feat, "random", seed=0)
    t_tasks = time.perf_counter()
    n_batches = sum(1 for _ in all_tasks.batches(batch_size, seed=0, epochs=1))
    t_end = time.perf_counter()
    return {
        "ratings": ds.n_ratings,
        "rows_featurised": len(rows["user"]),
        "load_s": round(t_load - t0, 3),
        "split_and_featurise_s": round(t_feat - t_load, 3),
        "build_tasks_s": round(t_tasks - t_feat, 3),
        "one_epoch_batches_s": round(t_end - t_tasks, 3),
        "total_s": round(t_end - t0, 3),
        "melu_tasks": len(tasks),
        "random_tasks": len(all_tasks),
        "batches": n_batches,
        "padding_melu": round(tasks.padding_stats(batch_size)["padding_waste"], 3),
        "padding_random": round(all_tasks.padding_stats(batch_size)["padding_waste"], 3),
    }


def synthetic_log(n_ratings: int, n_users: int, n_items: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    user_weight = rng.pareto(1.5, n_users) + 1.0
    item_weight = rng.pareto(1.2, n_items) + 1.0
    users = rng.choice(n_users, n_ratings, p=user_weight / user_weight.sum()).astype(np.int32)
    items = rng.choice(n_items, n_ratings, p=item_weight / item_weight.sum()).astype(np.int32)
    log = pd.DataFrame(
        {
            "user": users,
            "item": items,
            "rating": (rng.integers(1, 11, n_ratings) / 2).astype(np.float32),
            # each user is active from its own start time, so late starters are new users under a time split
            "timestamp": rng.integers(789_000_000, 1_400_000_000, n_users)[users] + rng.integers(0, 10**8, n_ratings),
        }
    )
    genres = np.array(["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "War"])
    item_table = pd.DataFrame(
        {
            "genres": ["|".join(genres[rng.random(len(genres)) < 0.2]) for _ in range(n_items)],
            "year": rng.integers(1920, 2016, n_items),
        }
    )
    return log, item_table


def synthetic(n_ratings: int, batch_size: int, n_batches: int) -> dict:
    n_users, n_items = max(n_ratings // 150, 10), max(n_ratings // 400, 10)
    log, item_table = synthetic_log(n_ratings, n_users, n_items)
    t0 = time.perf_counter()
    ds = jd.from_dataframe(log, timestamp="timestamp", item_features=item_table, name="synthetic")
    del log
    t_load = time.perf_counter()
    split = cold_start_split(ds, "time", seed=0)
    feat = jd.Featurizer.fit(ds, split.train)
    t_feat = time.perf_counter()
    tasks = build_tasks(split.train, feat, "random", seed=0)
    t_tasks = time.perf_counter()
    stream = tasks.batches(batch_size, seed=0)
    made = [next(stream).num_tasks for _ in range(n_batches)]
    t_end = time.perf_counter()
    return {
        "ratings": n_ratings,
        "ratings_kept": ds.n_ratings,
        "duplicates_removed": ds.report["duplicates_removed"],
        "users": ds.n_users,
        "items": ds.n_items,
        "from_dataframe_s": round(t_load - t0, 2),
        "split_and_fit_s": round(t_feat - t_load, 2),
        "build_tasks_s": round(t_tasks - t_feat, 2),
        "tasks": len(tasks),
        f"first_{len(made)}_batches_s": round(t_end - t_tasks, 2),
        "total_s": round(t_end - t0, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = os.environ.get("JAXREC_DATA") or str(here.parent / "shared" / "data")
    parser.add_argument("--data-dir", default=default_dir)
    parser.add_argument("--synthetic-ratings", type=int, default=20_000_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = {
        "benchmark": "data_pipeline",
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, python {platform.python_version()}",
    }
    try:
        result["ml_100k"] = movielens_100k(Path(args.data_dir), args.batch_size)
    except jd.DataError as e:
        result["ml_100k"] = {"skipped": str(e)[:200]}
    result["synthetic"] = synthetic(args.synthetic_ratings, args.batch_size, n_batches=200)
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
