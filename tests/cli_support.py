"""Shared by the CLI and reliability tests: tiny training flags, a small generic ratings file and a play log."""

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


TOPN_FLAGS = [
    "--feedback",
    "implicit",
    "--model",
    "twotower",
    "--model-kwargs",
    '{"embed": 8}',
    "--batch-size",
    "16",
    "--shots",
    "3",
    "--query-cap",
    "20",
    "--negatives",
    "8",
    "--bootstrap",
    "20",
    "--no-progress",
]


def write_plays(path, users=120, items=60, per_user=14, seed=0):
    """A play log ``user<TAB>song<TAB>plays<TAB>time`` with string ids: users of two tastes play songs of their
    taste; every user's first play of a song is listed once more (merged duplicates)."""
    rng = np.random.default_rng(seed)
    lines = ["user\tsong\tplays\ttime"]
    for u in range(users):
        taste = u % 2
        pool = np.arange(taste, items, 2)
        chosen = rng.choice(pool, per_user, replace=False)
        for t, i in enumerate(chosen):
            lines.append(f"u-{u:03d}\tsong-{i:02d}\t{1 + (u + i) % 5}\t{1000 * u + t}")
        lines.append(f"u-{u:03d}\tsong-{chosen[0]:02d}\t2\t{1000 * u + 99}")
    path.write_text("\n".join(lines) + "\n")
    return path


def plays_config(folder, users=120, **fields):
    """A top-N config of a play log written in ``folder`` (:func:`write_plays`), read as weighted interactions by a
    two-tower model; ``fields``: the rest of the config."""
    from jaxrec.experiment import ExperimentConfig

    return ExperimentConfig.make(
        data=str(write_plays(Path(folder) / "plays.tsv", users=users)),
        columns=("user", "item", "weight", "timestamp"),
        feedback="implicit",
        model="twotower",
        **fields,
    )
