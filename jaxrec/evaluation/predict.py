"""Meta-test evaluation: adapt on each test user's support set, score the query set, aggregate over users.

A *predictor* is a pure function ``predict(state, batch) -> scores [T, Q]`` of a pytree ``state`` (parameters,
tables, learning rates) and a :class:`~jaxrec.TaskBatch`. The meta-learned model is one (``adapt`` on the support
set, ``vmap`` over tasks, then ``apply_fn`` on the query rows, :func:`meta_predict`); the baselines of
:mod:`jaxrec.evaluation.baselines` are others. :func:`collect` runs any predictor over every task of a
:class:`~jaxrec.TaskSet` with one jit-compiled function per batch shape -- ``predict`` followed by the per-user
statistics of :mod:`jaxrec.evaluation.metrics` -- and no Python loop per user or row; padding tasks (``task_id`` -1)
are dropped on the host.

Since every method is run over the same batches in the same order, the per-user statistics of two methods are
aligned user by user, which is what the paired intervals of :func:`jaxrec.evaluation.metrics.paired_differences`
need.

Aggregation (:mod:`jaxrec.evaluation.metrics`): MAE and RMSE are pooled over all query ratings of all users (MeLU,
Lee et al. KDD 2019); nDCG@k, HR@k and AUC are means over users; 95% intervals are percentile bootstraps resampling
users.
"""

from __future__ import annotations

import collections
import functools
import logging
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.core.batch import TaskBatch, validate_batch, zero_padding
from jaxrec.core.inner import InnerLoop, adapt, as_inner_loop, check_inner_lr
from jaxrec.core.metasgd import MetaSGDParams, split_meta_params
from jaxrec.core.params import task_initialisation
from jaxrec.data.tasks import TaskSet
from jaxrec.evaluation.metrics import summarize, user_statistics
from jaxrec.scale.sharding import shard_batch

__all__ = [
    "meta_predict",
    "collect",
    "meta_evaluate",
    "metric_defaults",
    "TRACES",
]

logger = logging.getLogger(__name__)

#: how many times each predictor's evaluation step was traced (= compiled): once per batch shape
TRACES: collections.Counter = collections.Counter()

Predictor = Callable[[Any, TaskBatch], jax.Array]


def meta_predict(
    state: Any,
    batch: TaskBatch,
    inner: InnerLoop | None = None,
    *,
    apply_fn: Callable,
    **options: Any,
) -> jax.Array:
    """Score each task's query set after adapting the parameters to its support set.

    ``phi_t = adapt(params, support_t)`` (:func:`jaxrec.adapt`) and ``scores_t = apply_fn(phi_t, query_t)``. A task
    without support rows is scored with ``params`` unadapted; ``steps=0`` is the model without adaptation. No
    meta-gradient is taken, so the loop runs in first order without remat (the same values).
    :class:`~jaxrec.contrib.grouping.GroupedParams` adapt from the group each task's support rows choose (the middle
    group for a task without support rows).

    Args:
      state: ``(params, inner_lr)``; ``inner_lr`` is a scalar or, for Meta-SGD, a per-parameter pytree.
      batch: the tasks.
      inner: the :class:`~jaxrec.InnerLoop` of the adaptation.
      apply_fn: ``apply_fn(params, rows) -> scores [rows]``.
      **options: the fields of the inner loop as keywords, instead of ``inner``.

    Returns:
      ``[T, Q]`` query scores.
    """
    params, inner_lr = state
    inner = as_inner_loop(inner, **options).replace(order="first", remat=False)

    def one_task(support, support_mask, query, query_mask):
        theta, rates = task_initialisation(params, inner_lr, support, support_mask, inner.loss_fn)
        phi = adapt(theta, support, support_mask, inner, inner_lr=rates)
        return apply_fn(phi, zero_padding(query, query_mask))

    return jax.vmap(one_task)(batch.support, batch.support_mask, batch.query, batch.query_mask)


# compiled evaluation steps, the most recently used kept: a long session that evaluates many configurations does
# not hold every compiled program (and the arrays its partials close over) for ever
_STEPS: collections.OrderedDict = collections.OrderedDict()
_MAX_STEPS = 32


def _predictor_key(predict: Predictor) -> Any:
    """A partial of the same function with the same arguments maps to the same compiled step."""
    if isinstance(predict, functools.partial):
        try:
            key = (predict.func, predict.args, tuple(sorted(predict.keywords.items())))
            hash(key)
            return key
        except TypeError:
            return predict
    return predict


def _compiled(predict: Predictor, name: str, target: str, ks: tuple, rating_range: tuple | None, implicit: bool):
    """The jit-compiled ``(state, batch) -> per-user statistics`` of one predictor, cached per predictor and
    options (not per ``name``: methods sharing a predictor, e.g. ``maml`` and ``finetune``, share compilations;
    ``TRACES`` counts under the name of the first caller)."""
    key = (_predictor_key(predict), target, ks, rating_range, implicit)
    if key in _STEPS:
        _STEPS.move_to_end(key)
        return _STEPS[key]

    def step(state, batch):
        TRACES[name] += 1  # trace time only
        scores = predict(state, batch)
        stats = user_statistics(
            scores, batch.query[target], batch.query_mask, ks=ks, rating_range=rating_range, implicit=implicit
        )
        return stats

    _STEPS[key] = jax.jit(step)
    while len(_STEPS) > _MAX_STEPS:
        _STEPS.popitem(last=False)
    return _STEPS[key]


def _batches(tasks: TaskSet | Iterable[TaskBatch], batch_size: int) -> Iterable[TaskBatch]:
    if isinstance(tasks, TaskSet):
        return tasks.batches(batch_size, shuffle=False, epochs=1)
    return tasks


def collect(
    predict: Predictor,
    state: Any,
    tasks: TaskSet | Iterable[TaskBatch],
    *,
    target: str = "rating",
    ks: Sequence[int] = (1, 3, 10),
    rating_range: Sequence[float] | None = None,
    implicit: bool = False,
    batch_size: int = 64,
    mesh: Any = None,
    name: str | None = None,
) -> dict[str, np.ndarray]:
    """Run a predictor over every task and collect the per-user statistics.

    ``predict`` must be hashable and stable (a module-level function or a ``functools.partial`` of one) for the
    compiled step to be reused across calls.

    Args:
      predict: the predictor ``predict(state, batch) -> scores [T, Q]``.
      state: its state.
      tasks: a :class:`~jaxrec.TaskSet` (every task once, in fixed-size batches) or an iterable of TaskBatches.
      target: the row key of the targets.
      ks: cut-offs of nDCG@k (and HR@k).
      rating_range: the range predictions are clipped to for MAE / RMSE.
      implicit: implicit-feedback metrics (AUC, HR@k).
      batch_size: tasks per batch of a TaskSet.
      mesh: pad and shard each batch over its ``"tasks"`` axis (:func:`jaxrec.shard_batch`).
      name: the name :data:`TRACES` counts under (default: the predictor's name).

    Returns:
      Per-user statistics ``{key: [U]}`` over every real task, ``"user"`` holding the task ids when every batch
      names its tasks (``task_id``, the user code): rows of one user, several evaluations pooled, are then one unit
      of the bootstrap (:func:`~jaxrec.evaluation.metrics.bootstrap_weights`); without, every row is its own.
    """
    name = name or getattr(predict, "__name__", None) or getattr(getattr(predict, "func", None), "__name__", "predict")
    rr = None if rating_range is None else (float(rating_range[0]), float(rating_range[1]))
    step = _compiled(predict, name, target, tuple(int(k) for k in ks), rr, bool(implicit))
    pieces: list[dict] = []
    for batch in _batches(tasks, batch_size):
        validate_batch(batch)
        if target not in batch.query:  # else a bare KeyError from inside the compiled step
            raise ValueError(
                f"the query rows have no target {target!r} (their keys: {', '.join(sorted(batch.query))}): pass "
                "target= the key of the values to predict"
            )
        task_id = np.asarray(batch.task_id) if batch.task_id is not None else None
        if mesh is not None:
            batch = shard_batch(batch, mesh)
        stats = jax.device_get(step(state, batch))
        if task_id is None:  # unnamed tasks: no "user" (a made-up number would tie tasks of other batches)
            keep = np.asarray(batch.query_mask).any(axis=1)
        else:
            task_id = np.concatenate([task_id, np.full(len(stats["n"]) - len(task_id), -1, task_id.dtype)])
            keep = task_id >= 0
        stats = {k: np.asarray(v)[keep] for k, v in stats.items()}
        if task_id is not None:
            stats["user"] = task_id[keep]
        pieces.append(stats)
    if not pieces:
        return {"n": np.zeros(0), "abs_sum": np.zeros(0), "sq_sum": np.zeros(0), "user": np.zeros(0, np.int64)}
    keys = [k for k in pieces[0] if all(k in p for p in pieces)]  # "user" only when every batch names its tasks
    return {k: np.concatenate([p[k] for p in pieces]) for k in keys}


def meta_evaluate(
    params: Any,
    tasks: TaskSet | Iterable[TaskBatch],
    inner: InnerLoop | None = None,
    *,
    apply_fn: Callable,
    inner_lr: Any = None,
    target: str | None = None,
    ks: Sequence[int] = (1, 3, 10),
    rating_range: Sequence[float] | None = None,
    implicit: bool | None = None,
    batch_size: int = 64,
    mesh: Any = None,
    resamples: int = 1000,
    seed: int = 0,
    return_stats: bool = False,
    **options: Any,
) -> dict | tuple[dict, dict]:
    """Adapt on every test user's support set and score its query set (vmap over tasks, jit once per shape).

    Args:
      params: meta-learned parameters (a :class:`~jaxrec.MetaSGDParams` brings its own per-parameter rates).
      tasks: a :class:`~jaxrec.TaskSet` (every task once, in fixed-size batches) or an iterable of TaskBatches.
      apply_fn: ``apply_fn(params, rows) -> scores [rows]`` (``model.apply``).
      inner: the :class:`~jaxrec.InnerLoop` of training, or its fields as keywords (``loss_fn=...``, ...).
      inner_lr: the inner rate (ignored for :class:`~jaxrec.MetaSGDParams`): finite and positive, or 0 for the
        model without adaptation; None for an optax inner solver, which carries its own.
      target: the row key of the targets (default from ``tasks.featurizer.spec`` for a TaskSet, else
        ``"rating"``).
      ks: cut-offs of nDCG@k (and HR@k).
      rating_range: the range predictions are clipped to (default from the spec: ``"rating"`` targets are clipped
        to the rating range).
      implicit: implicit-feedback metrics, HR@k / AUC (default: whether the target is ``"label"``).
      batch_size: tasks per batch of a TaskSet.
      mesh: shard each batch's task axis over this mesh.
      resamples: bootstrap resamples over users for ``ci95``.
      seed: the seed of the bootstrap.
      return_stats: also return the per-user statistics (for paired comparisons).
      **options: the fields of the inner loop as keywords, instead of ``inner``.

    Returns:
      ``{"mae", "rmse", "ndcg@k"..., ["auc", "hr@k"...], "users", "ratings", "ci95": {metric: [lo, hi]}}``
      (MAE/RMSE pooled over query ratings), and the per-user statistics when ``return_stats``.
    """
    target, rating_range, implicit = metric_defaults(tasks, target, rating_range, implicit)
    if isinstance(inner_lr, numbers.Real) and not isinstance(inner_lr, bool) and inner_lr == 0:
        inner_lr = jnp.float32(0.0)  # no adaptation: the unadapted model, a sweep's first point (adapt takes it so)
    if not isinstance(params, MetaSGDParams):
        check_inner_lr(inner_lr)  # here, while it is concrete: inside the compiled step it is traced
    predict = functools.partial(meta_predict, inner=as_inner_loop(inner, **options), apply_fn=apply_fn)
    stats = collect(
        predict,
        split_meta_params(params, inner_lr),
        tasks,
        target=target,
        ks=ks,
        rating_range=rating_range,
        implicit=implicit,
        batch_size=batch_size,
        mesh=mesh,
        name="meta",
    )
    summary = summarize(stats, resamples=resamples, seed=seed, implicit=implicit)
    return (summary, stats) if return_stats else summary


def metric_defaults(tasks, target, rating_range, implicit):
    """Fill in the metric settings left as None from the tasks' spec.

    Args:
      tasks: a :class:`~jaxrec.TaskSet` (whose featurizer's spec gives the defaults) or an iterable of batches.
      target: the row key of the targets, or None for the spec's target (``"rating"`` without a spec).
      rating_range: the clipping range, or None for the spec's rating range (none in implicit mode).
      implicit: implicit-feedback metrics, or None for whether ``target`` is ``"label"``.

    Returns:
      ``(target, rating_range, implicit)``.
    """
    spec = tasks.featurizer.spec if isinstance(tasks, TaskSet) else None
    if target is None:
        target = spec.target if spec is not None else "rating"
    if implicit is None:
        implicit = target == "label"
    if rating_range is None and spec is not None and not implicit:
        rating_range = spec.rating_range
    return target, rating_range, implicit
