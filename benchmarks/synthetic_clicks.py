"""Write a synthetic click log unlike MovieLens: many items, string ids, counts and timestamps.

    python benchmarks/synthetic_clicks.py --out clicks.csv
    jaxrec train --data clicks.csv --columns user,item,weight,timestamp --feedback implicit \
        --config benchmarks/configs/topn/twotower_als_exact_c1.json --positive-threshold none

The log of the research log's session 22 (a check that such a log runs through ``jaxrec train``, not a benchmark):
``--users`` users and ``--items`` items, each in one of ``--clusters`` taste clusters; item popularity long-tailed,
``p_i`` proportional to ``rank^-0.7`` (ranks shuffled over the items); a user's interaction count geometric with
mean about 40 (at least 4); each user draws their items without replacement with probability proportional to
``p_i``, times ``--affinity`` for items of their own cluster; a count 1-4 and a timestamp per interaction, rows
shuffled. Seeded: the same arguments write the same file.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def synthetic_clicks(
    users: int = 4000, items: int = 30000, clusters: int = 20, affinity: float = 8.0, seed: int = 1
) -> pd.DataFrame:
    """The log as a frame with columns ``visitor, product, clicks, when`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(0, clusters, users)
    item_cluster = rng.integers(0, clusters, items)
    popularity = 1 / np.arange(1, items + 1) ** 0.7
    popularity = popularity[rng.permutation(items)]
    popularity /= popularity.sum()
    counts = np.minimum(rng.geometric(1 / 40, users) + 3, 2000)
    rows = []
    for u in range(users):
        p = popularity * np.where(item_cluster == user_cluster[u], affinity, 1.0)
        chosen = rng.choice(items, size=counts[u], replace=False, p=p / p.sum())
        times = np.sort(rng.integers(1_600_000_000, 1_700_000_000, len(chosen)))
        rows += [(f"user-{u:05d}", f"sku_{i}", int(rng.integers(1, 5)), t) for i, t in zip(chosen, times, strict=True)]
    frame = pd.DataFrame(rows, columns=["visitor", "product", "clicks", "when"])
    return frame.sample(frac=1, random_state=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="clicks.csv", help="the CSV to write (default clicks.csv)")
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--items", type=int, default=30000)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--affinity", type=float, default=8.0, help="how much likelier an item of the user's cluster")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    frame = synthetic_clicks(args.users, args.items, args.clusters, args.affinity, args.seed)
    frame.to_csv(args.out, index=False)
    print(
        f"wrote {args.out}: {len(frame)} rows, {frame['visitor'].nunique()} users, {frame['product'].nunique()} items"
    )


if __name__ == "__main__":
    main()
