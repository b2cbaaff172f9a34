"""Shared by the CLI and reliability tests: tiny training flags and a small generic ratings file."""

from pathlib import Path

import numpy as np

TINY_FLAGS = [
    "--model",
    "mf",
    "--model-kwargs",
    '{"embed": 4}',
    "--order",
    "first",
    "--inner-steps",
    "1",
    "--batch-size",
    "8",
    "--baselines",
    "global_mean,user_mean",
    "--bootstrap",
    "10",
    "--no-progress",
]


def write_ratings(
    path: Path, users: int = 60, per_user: int = 15, items: int = 40, seed: int = 0, scale: int = 5
) -> Path:
    """A small explicit log on a 1..``scale`` scale (no timestamps, no side features)."""
    rng = np.random.default_rng(seed)
    lines = ["user,item,rating"]
    for u in range(users):
        for i in rng.choice(items, per_user, replace=False):
            lines.append(f"{u + 1},{i + 100},{1 + (u + 2 * i) % scale}")
    path.write_text("\n".join(lines) + "\n")
    return path
