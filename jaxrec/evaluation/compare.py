"""Comparison of methods on the same users: summaries with bootstrap intervals and paired differences.

Every method is run over the same batches in the same order (:func:`jaxrec.evaluation.predict.collect`), so the
per-user statistics of two methods are aligned user by user, which the paired intervals of
:func:`jaxrec.evaluation.metrics.paired_differences` need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxrec.data.tasks import TaskSet
from jaxrec.evaluation.metrics import paired_differences, summarize
from jaxrec.evaluation.predict import Predictor, collect, metric_defaults

__all__ = ["compare_stats", "concat_stats", "evaluate_methods"]


def evaluate_methods(
    methods: Mapping[str, tuple[Predictor, Any]],
    tasks: TaskSet,
    *,
    reference: str = "maml",
    ks: Sequence[int] = (1, 3, 10),
    batch_size: int = 64,
    mesh: Any = None,
    resamples: int = 1000,
    seed: int = 0,
    return_stats: bool = False,
) -> dict[str, dict] | tuple[dict[str, dict], dict[str, dict]]:
    """Evaluate several methods on the same tasks and compare them with the reference.

    Every method other than ``reference`` also gets ``"paired"``: ``{metric: {"diff": reference - method,
    "ci95": [lo, hi]}}`` from a paired bootstrap over users (negative MAE/RMSE differences favour the reference).

    Args:
      methods: ``{name: (predict, state)}`` predictors.
      tasks: the tasks; the target, rating range and implicit mode come from its featurizer's spec.
      reference: the method the others are compared with.
      ks: cut-offs of nDCG@k (and HR@k).
      batch_size: tasks per batch.
      mesh: shard each batch's task axis over this mesh.
      resamples: bootstrap resamples over users.
      seed: the seed of the bootstrap.
      return_stats: also return the per-user statistics.

    Returns:
      ``{method: summary}``, and with ``return_stats`` also the per-user statistics ``{method: stats}`` (see
      :func:`compare_stats`).
    """
    target, rating_range, implicit = metric_defaults(tasks, None, None, None)
    stats = {
        name: collect(
            predict,
            state,
            tasks,
            target=target,
            ks=ks,
            rating_range=rating_range,
            implicit=implicit,
            batch_size=batch_size,
            mesh=mesh,
            name=name,
        )
        for name, (predict, state) in methods.items()
    }
    out = compare_stats(stats, reference=reference, resamples=resamples, seed=seed, implicit=implicit)
    return (out, stats) if return_stats else out


def compare_stats(
    stats: Mapping[str, Mapping[str, np.ndarray]],
    *,
    reference: str = "maml",
    resamples: int = 1000,
    seed: int = 0,
    implicit: bool = False,
) -> dict[str, dict]:
    """Summarise per-user statistics of several methods, with paired differences to the reference.

    Statistics of several evaluations concatenated user-wise (:func:`concat_stats`, e.g. several random splits)
    are compared the same way.

    Args:
      stats: ``{method: stats}``, all on the same users in the same order.
      reference: the method the others are compared with (no paired differences when it is absent).
      resamples: bootstrap resamples over users.
      seed: the seed of the bootstrap.
      implicit: implicit-feedback metrics (no MAE / RMSE).

    Returns:
      ``{method: summary}``; each method other than ``reference`` has ``"paired"``, its paired difference to it.
    """
    out = {name: summarize(s, resamples=resamples, seed=seed, implicit=implicit) for name, s in stats.items()}
    if reference in stats:
        for name, s in stats.items():
            if name != reference:
                out[name]["paired"] = paired_differences(
                    stats[reference], s, resamples=resamples, seed=seed, implicit=implicit
                )
    return out


def concat_stats(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join the per-user statistics of several evaluations into one set of users.

    Args:
      parts: per-user statistics, all with the same keys.

    Returns:
      The statistics concatenated along the user axis.

    Raises:
      ValueError: if ``parts`` is empty or its statistics name different metrics.
    """
    if not parts:
        raise ValueError("concat_stats needs at least one set of statistics")
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise ValueError("concat_stats: the statistics name different metrics")
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
