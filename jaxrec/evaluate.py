"""Meta-test evaluation: adapt on each test user's support set, score the query set, aggregate over users.

A *predictor* is a pure function ``predict(state, batch) -> scores [T, Q]`` of a pytree ``state`` (parameters,
tables, learning rates) and a :class:`~jaxrec.TaskBatch`. The meta-learned model is one (``adapt`` on the support
set, ``vmap`` over tasks, then ``apply_fn`` on the query rows, :func:`meta_predict`); the baselines of
:mod:`jaxrec.baselines` are others. :func:`collect` runs any predictor over every task of a
:class:`~jaxrec.TaskSet` with one jit-compiled function per batch shape -- ``predict`` followed by the per-user
statistics of :mod:`jaxrec.metrics` -- and no Python loop per user or row; padding tasks (``task_id`` -1) are
dropped on the host.

Since every method is run over the same batches in the same order, the per-user statistics of two methods are
aligned user by user, which is what the paired intervals of :func:`jaxrec.metrics.paired_differences` need.

Aggregation (:mod:`jaxrec.metrics`): MAE and RMSE are pooled over all query ratings of all users (MeLU, Lee et al.
KDD 2019); nDCG@k, HR@k and AUC are means over users; 95% intervals are percentile bootstraps resampling users.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.adapt import adapt, zero_padding
from jaxrec.batch import TaskBatch, validate_batch
from jaxrec.grouping import select_group
from jaxrec.maml import MetaSGDParams
from jaxrec.metrics import paired_differences, summarize, user_statistics
from jaxrec.sharding import shard_batch
from jaxrec.tasks import TaskSet

__all__ = [
    "meta_predict",
    "collect",
    "meta_evaluate",
    "evaluate_methods",
    "evaluate_experiment",
    "compare_stats",
    "concat_stats",
    "TRACES",
]

logger = logging.getLogger(__name__)

#: how many times each predictor's evaluation step was traced (= compiled): once per batch shape
TRACES: collections.Counter = collections.Counter()

Predictor = Callable[[Any, TaskBatch], jax.Array]


def meta_predict(
    state: Any,
    batch: TaskBatch,
    *,
    apply_fn: Callable,
    loss_fn: Callable,
    inner_steps: int,
    adapt_filter: Any = None,
    inner_aux: Callable | None = None,
    inner_optimizer: Any = None,
) -> jax.Array:
    """Query scores ``[T, Q]`` after adapting ``state = (params, inner_lr)`` to each task's support set.

    ``phi_t = adapt(params, support_t)`` (the inner loop of :func:`jaxrec.adapt`, ``inner_steps`` steps of
    ``inner_lr``; a per-parameter pytree rate for Meta-SGD) and ``scores_t = apply_fn(phi_t, query_t)``. A task
    without support rows is scored with ``params`` unadapted. ``inner_steps=0`` is the model without adaptation.
    :class:`~jaxrec.grouping.GroupedParams` adapt from the group each task's support rows choose (the middle group
    for a task without support rows).
    """
    params, inner_lr = state

    def one_task(support, support_mask, query, query_mask):
        theta, rates = select_group(params, inner_lr, support, support_mask, loss_fn)
        phi = adapt(
            theta,
            support,
            support_mask,
            loss_fn=loss_fn,
            inner_lr=rates,
            inner_steps=inner_steps,
            order="first",  # no meta-gradient is taken here; the forward values are the same
            inner_optimizer=inner_optimizer,
            adapt_filter=adapt_filter,
            inner_aux=inner_aux,
        )
        return apply_fn(phi, zero_padding(query, query_mask))

    return jax.vmap(one_task)(batch.support, batch.support_mask, batch.query, batch.query_mask)


_STEPS: dict = {}


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
        return _STEPS[key]

    def step(state, batch):
        TRACES[name] += 1  # trace time only
        scores = predict(state, batch)
        stats = user_statistics(
            scores, batch.query[target], batch.query_mask, ks=ks, rating_range=rating_range, implicit=implicit
        )
        return stats

    _STEPS[key] = jax.jit(step)
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
    """Per-user statistics ``{key: [U]}`` of ``predict`` over every real task (``"user"``: the task ids).

    ``predict`` must be hashable and stable (a module-level function or a ``functools.partial`` of one) for the
    compiled step to be reused across calls. With ``mesh`` each batch is padded and sharded over its ``"tasks"``
    axis (:func:`jaxrec.shard_batch`).
    """
    name = name or getattr(predict, "__name__", None) or getattr(getattr(predict, "func", None), "__name__", "predict")
    rr = None if rating_range is None else (float(rating_range[0]), float(rating_range[1]))
    step = _compiled(predict, name, target, tuple(int(k) for k in ks), rr, bool(implicit))
    pieces: list[dict] = []
    for batch in _batches(tasks, batch_size):
        validate_batch(batch)
        task_id = np.asarray(batch.task_id) if batch.task_id is not None else None
        if mesh is not None:
            batch = shard_batch(batch, mesh)
        stats = jax.device_get(step(state, batch))
        if task_id is None:
            task_id = np.where(np.asarray(batch.query_mask).any(axis=1), np.arange(batch.num_tasks), -1)
        else:
            task_id = np.concatenate([task_id, np.full(len(stats["n"]) - len(task_id), -1, task_id.dtype)])
        keep = task_id >= 0
        stats = {k: np.asarray(v)[keep] for k, v in stats.items()}
        stats["user"] = task_id[keep]
        pieces.append(stats)
    if not pieces:
        return {"n": np.zeros(0), "abs_sum": np.zeros(0), "sq_sum": np.zeros(0), "user": np.zeros(0, np.int64)}
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


def _split_meta_params(params: Any, inner_lr: Any) -> tuple[Any, Any]:
    if isinstance(params, MetaSGDParams):
        return params.params, params.inner_lr
    return params, jnp.asarray(inner_lr, jnp.float32)


def meta_evaluate(
    params: Any,
    tasks: TaskSet | Iterable[TaskBatch],
    *,
    apply_fn: Callable,
    loss_fn: Callable,
    inner_lr: Any,
    inner_steps: int,
    adapt_filter: Any = None,
    inner_aux: Callable | None = None,
    inner_optimizer: Any = None,
    target: str | None = None,
    ks: Sequence[int] = (1, 3, 10),
    rating_range: Sequence[float] | None = None,
    implicit: bool | None = None,
    batch_size: int = 64,
    mesh: Any = None,
    resamples: int = 1000,
    seed: int = 0,
    return_stats: bool = False,
) -> dict | tuple[dict, dict]:
    """Adapt on every test user's support set and score its query set (vmap over tasks, jit once per shape).

    Args:
      params: meta-learned parameters (a :class:`~jaxrec.MetaSGDParams` brings its own per-parameter rates).
      tasks: a :class:`~jaxrec.TaskSet` (every task once, in fixed-size batches) or an iterable of TaskBatches.
      apply_fn: ``apply_fn(params, rows) -> scores [rows]`` (``model.apply``).
      loss_fn, inner_lr, inner_steps, adapt_filter, inner_aux, inner_optimizer: the inner loop, as in training.
      target, rating_range, implicit: default from ``tasks.featurizer.spec`` for a TaskSet (``"rating"`` with
        clipping to the rating range; ``"label"`` with HR@k / AUC in implicit mode).
      ks: cut-offs of nDCG@k (and HR@k).
      mesh: shard each batch's task axis over this mesh.
      resamples, seed: bootstrap resamples over users for ``ci95``.
      return_stats: also return the per-user statistics (for paired comparisons).

    Returns:
      ``{"mae", "rmse", "ndcg@k"..., ["auc", "hr@k"...], "users", "ratings", "ci95": {metric: [lo, hi]}}``
      (MAE/RMSE pooled over query ratings), and the per-user statistics when ``return_stats``.
    """
    target, rating_range, implicit = _defaults(tasks, target, rating_range, implicit)
    predict = functools.partial(
        meta_predict,
        apply_fn=apply_fn,
        loss_fn=loss_fn,
        inner_steps=int(inner_steps),
        adapt_filter=adapt_filter,
        inner_aux=inner_aux,
        inner_optimizer=inner_optimizer,
    )
    stats = collect(
        predict,
        _split_meta_params(params, inner_lr),
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


def _defaults(tasks, target, rating_range, implicit):
    spec = tasks.featurizer.spec if isinstance(tasks, TaskSet) else None
    if target is None:
        target = spec.target if spec is not None else "rating"
    if implicit is None:
        implicit = target == "label"
    if rating_range is None and spec is not None and not implicit:
        rating_range = spec.rating_range
    return target, rating_range, implicit


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
    """``{method: summary}`` for ``methods = {name: (predict, state)}`` on the same tasks.

    Every method other than ``reference`` also gets ``"paired"``: ``{metric: {"diff": reference - method,
    "ci95": [lo, hi]}}`` from a paired bootstrap over users (negative MAE/RMSE differences favour the reference).
    With ``return_stats`` the per-user statistics ``{method: stats}`` come too (see :func:`compare_stats`).
    """
    target, rating_range, implicit = _defaults(tasks, None, None, None)
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
    """Summaries of per-user statistics ``{method: stats}`` (all on the same users, in the same order), each
    method other than ``reference`` with its paired difference to it. Statistics of several evaluations
    concatenated user-wise (:func:`concat_stats`, e.g. several random splits) are compared the same way."""
    out = {name: summarize(s, resamples=resamples, seed=seed, implicit=implicit) for name, s in stats.items()}
    if reference in stats:
        for name, s in stats.items():
            if name != reference:
                out[name]["paired"] = paired_differences(
                    stats[reference], s, resamples=resamples, seed=seed, implicit=implicit
                )
    return out


def concat_stats(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-user statistics of several evaluations as one set of users (concatenated along the user axis)."""
    if not parts:
        raise ValueError("concat_stats needs at least one set of statistics")
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise ValueError("concat_stats: the statistics name different metrics")
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def evaluate_experiment(
    experiment: Any, params: Any, *, method_name: str = "maml", return_stats: bool = False
) -> dict[str, dict] | tuple[dict[str, dict], dict[str, dict]]:
    """Every non-empty scenario of a :class:`jaxrec.experiment.Experiment`: the meta method and its baselines
    (with ``return_stats``, also ``{scenario: {method: per-user statistics}}``)."""
    from jaxrec.baselines import experiment_predictors

    config = experiment.config
    methods = experiment_predictors(experiment, params, method_name=method_name)
    results, all_stats = {}, {}
    for scenario, tasks in experiment.scenario_tasks.items():
        results[scenario], all_stats[scenario] = evaluate_methods(
            methods,
            tasks,
            reference=method_name,
            ks=config.ks,
            batch_size=config.eval_batch_size,
            mesh=experiment.mesh,
            resamples=config.bootstrap,
            seed=config.seed,
            return_stats=True,
        )
        logger.info(
            "%s: %s",
            scenario,
            ", ".join(f"{m} mae={r.get('mae', float('nan')):.4f}" for m, r in results[scenario].items()),
        )
    return (results, all_stats) if return_stats else results
