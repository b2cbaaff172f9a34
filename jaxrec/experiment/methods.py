"""The methods an experiment compares: the meta-learned model and its baselines, fitted on the experiment's
meta-train ratings and tuned on its validation users, as ``{name: (predict, state)}`` predictors."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxrec.core.inner import InnerLoop
from jaxrec.core.metasgd import split_meta_params
from jaxrec.core.solvers import Amortized, GradientSteps
from jaxrec.evaluation.baselines import (
    bias_predict,
    fit_item_means,
    global_mean,
    item_mean,
    supervised_history,
    train_supervised,
    tune_finetune_lr,
    user_mean,
)
from jaxrec.evaluation.predict import meta_predict

__all__ = ["Baselines", "evaluate_experiment", "experiment_predictors", "fit_baselines"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Baselines:
    """Fitted baseline states of an experiment (meta-train ratings only).

    Attributes:
      mu: the mean meta-train target (``global_mean``, and the fallback of ``user_mean`` and ``item_mean``).
      item_means: the table of item means by item slot (``item_mean``).
      item_bias: the item biases ``b_i`` of the bias model (``bias``), by item slot.
      user_reg: the ridge strength ``lambda_u`` of a test user's ``b_u`` (``bias``).
      user_bias: the user biases ``b_u`` of the bias model by user slot (``bias`` of item tasks, folding in a new
        item's ``b_i`` beside its known users' ``b_u``).
      item_reg: the ridge strength ``lambda_i`` of a new item's ``b_i`` (``bias`` of item tasks).
      supervised_params: the supervised model (``no_adapt``, and the start of ``finetune``).
      finetune_lr: the fine-tuning rate chosen on the validation users.
      finetune_validation: the validation score of every fine-tuning rate tried.
      supervised_loss: the per-epoch mean loss of the supervised training.
    """

    mu: float
    item_means: np.ndarray
    item_bias: np.ndarray
    user_reg: float
    supervised_params: Any
    finetune_lr: float
    finetune_validation: dict
    supervised_loss: np.ndarray
    user_bias: np.ndarray
    item_reg: float


def fit_baselines(experiment: Any) -> Baselines:
    """Fit every baseline of an experiment on its meta-train ratings (validation users and items excluded).

    The fine-tuning rate is tuned on the validation users; without any, it is the meta inner learning rate.

    Args:
      experiment: the :class:`~jaxrec.experiment.protocol.Experiment`.

    Returns:
      The fitted :class:`Baselines`.
    """
    c = experiment.config
    feat = experiment.featurizer
    target = feat.spec.target
    train = experiment.train_ratings
    rows = feat.transform(train)
    values = rows[target].astype(np.float64)
    n_items = feat.spec.categorical["item"]
    user_reg = float(c.evaluation.bias_reg[1])
    mu, item_bias = experiment.bias_init()  # fitted once, shared with the bias start of meta-training
    item_means = fit_item_means(rows["item"], values, n_items, mu)
    history = int(getattr(experiment, "spec", feat.spec).history or 0)
    if history:
        rows.update(supervised_history(train, rows["item"], rows[target], history))
    params, history = train_supervised(
        experiment.random_params(),
        rows,
        loss_fn=experiment.loss_fn,
        epochs=c.evaluation.supervised_epochs,
        learning_rate=c.evaluation.supervised_lr,
        batch_size=c.evaluation.supervised_batch,
        seed=c.seed,
        item_dropout=c.meta.item_dropout,
    )
    if len(experiment.val_tasks):
        lr, validation = tune_finetune_lr(
            params,
            experiment.val_tasks,
            c.evaluation.finetune_lrs,
            finetune_inner(experiment),
            apply_fn=experiment.apply_fn,
            target=target,
            rating_range=feat.spec.rating_range,
            implicit=c.data.implicit,
            batch_size=c.evaluation.eval_batch_size,
        )
    else:
        logger.warning("no validation users: finetune uses the meta inner learning rate %s", c.meta.inner_lr)
        lr, validation = float(c.meta.inner_lr), {}
    user_bias = experiment.user_bias_slots()
    item_reg = float(c.evaluation.bias_reg[0])
    return Baselines(mu, item_means, item_bias, user_reg, params, lr, validation, history, user_bias, item_reg)


#: gradient steps of the finetune baseline of a model that adapts by encoding its support set
ENCODER_FINETUNE_STEPS = 5


def finetune_inner(experiment: Any) -> InnerLoop:
    """The inner loop of the ``finetune`` baseline: the meta method's, on the supervised model.

    A model that adapts by encoding its support set (TaNP, :class:`~jaxrec.core.solvers.Amortized`) is the
    exception: supervised training never reaches its encoders (they are not on the scoring path), so encoding with
    them would be no baseline. Its supervised model is fine-tuned instead by ``ENCODER_FINETUNE_STEPS`` gradient
    steps on the same adapted leaves (the task representation the decoder reads), at the rate tuned on validation
    users.

    Args:
      experiment: the :class:`~jaxrec.experiment.protocol.Experiment`.

    Returns:
      The :class:`~jaxrec.InnerLoop`.
    """
    inner = experiment.inner
    if isinstance(inner.solver, Amortized):
        return inner.replace(solver=GradientSteps(), steps=ENCODER_FINETUNE_STEPS)
    return inner


def _bias_baseline(b: Baselines, target: str, tasks_by: str) -> tuple:
    """The bias model's predictor and state: the task's offset (a user's, or a new item's) folded in from its
    support set beside the fitted offsets of the other side."""
    mu = jnp.asarray(b.mu, jnp.float32)
    predict = functools.partial(bias_predict, target=target, task_side=tasks_by)
    if tasks_by == "item":
        return predict, (mu, jnp.asarray(b.user_bias), jnp.asarray(b.item_reg, jnp.float32))
    return predict, (mu, jnp.asarray(b.item_bias), jnp.asarray(b.user_reg, jnp.float32))


def experiment_predictors(experiment: Any, params: Any, *, method_name: str = "maml") -> dict[str, tuple]:
    """Build the predictors of the meta method and of the configured baselines.

    Args:
      experiment: the :class:`~jaxrec.experiment.protocol.Experiment`.
      params: the meta-learned parameters.
      method_name: the name of the meta method.

    Returns:
      ``{name: (predict, state)}``, the meta method first.

    Raises:
      ValueError: if a configured baseline is unknown.
    """
    c = experiment.config
    target = experiment.spec.target
    meta = functools.partial(meta_predict, inner=experiment.inner, apply_fn=experiment.apply_fn)
    methods: dict[str, tuple] = {method_name: (meta, split_meta_params(params, experiment.inner_lr))}
    if not c.evaluation.baselines:
        return methods
    b = experiment.baselines()
    no_adapt = functools.partial(
        meta_predict, inner=InnerLoop(experiment.loss_fn, steps=0), apply_fn=experiment.apply_fn
    )
    finetune = functools.partial(meta_predict, inner=finetune_inner(experiment), apply_fn=experiment.apply_fn)
    available = {
        "finetune": (finetune, (b.supervised_params, jnp.asarray(b.finetune_lr, jnp.float32))),
        "no_adapt": (no_adapt, (b.supervised_params, jnp.zeros((), jnp.float32))),
        "global_mean": (global_mean, jnp.asarray(b.mu, jnp.float32)),
        "user_mean": (functools.partial(user_mean, target=target), jnp.asarray(b.mu, jnp.float32)),
        "item_mean": (item_mean, jnp.asarray(b.item_means)),
        "bias": _bias_baseline(b, target, c.protocol.tasks_by),
    }
    unknown = [name for name in c.evaluation.baselines if name not in available]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(available)}")
    methods.update({name: available[name] for name in c.evaluation.baselines})
    return methods


def evaluate_experiment(
    experiment: Any, params: Any, *, method_name: str = "maml", return_stats: bool = False
) -> dict[str, dict] | tuple[dict[str, dict], dict[str, dict]]:
    """Evaluate the meta method and its baselines on every non-empty scenario of an experiment.

    Args:
      experiment: the :class:`~jaxrec.experiment.protocol.Experiment`.
      params: the meta-learned parameters.
      method_name: the name of the meta method, the reference of the paired differences.
      return_stats: also return the per-user statistics.

    Returns:
      ``{scenario: {method: summary}}``, and with ``return_stats`` also ``{scenario: {method: per-user
      statistics}}``.
    """
    methods = experiment_predictors(experiment, params, method_name=method_name)
    results, all_stats = {}, {}
    for scenario, tasks in experiment.scenario_tasks.items():
        results[scenario], all_stats[scenario] = experiment.compare(
            methods, tasks, reference=method_name, return_stats=True
        )
        logger.info(
            "%s: %s",
            scenario,
            ", ".join(f"{m} mae={_figure(r.get('mae'))}" for m, r in results[scenario].items()),
        )
    return (results, all_stats) if return_stats else results


def _figure(value: float | None) -> str:
    """A summary's figure for the log: a diverged method's is None (``null`` in metrics.json)."""
    return "n/a" if value is None else f"{value:.4f}"
