"""One cold-start experiment end to end: data, split, tasks, model, meta-trainer, honest evaluation.

:class:`Experiment` builds everything an :class:`~jaxrec.experiment.config.ExperimentConfig` describes::

    exp = Experiment(ExperimentConfig())            # ml-latest-small, MeLU, Meta-SGD + a Newton step on the output
    state = exp.init_state()
    for batch in itertools.islice(exp.batches(), exp.total_steps):
        state, metrics = exp.train_step(state, batch)
    document = exp.metrics_document(state.params)   # {"dataset", "config", "scenarios"}: metrics.json

Protocol (after MeLU, Lee et al. KDD 2019):

* ``jaxrec.data.tasks.cold_start_split`` splits the ratings into meta-train ratings and the scenarios ``warm``,
  ``new_user``, ``new_item``, ``new_user_new_item`` (new items by release year, else first-rating time; a file
  without years or timestamps has no new items, so only the user scenarios exist).
* The :class:`~jaxrec.data.Featurizer` is fitted on the meta-train ratings only.
* A validation slice of meta-train users (``val_frac``) is held out of every kind of training; it is where the
  fine-tuning baseline's learning rate is chosen, never on a test scenario.
* Every scenario with at least one user is evaluated with :func:`jaxrec.evaluation.compare.evaluate_methods`: the meta
  method (key ``"maml"``, whatever ``algorithm`` is) and the baselines of :mod:`jaxrec.evaluation.baselines` on the same
  tasks, with bootstrap and paired intervals over users.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec import models, testing
from jaxrec.contrib.grouping import GroupedParams, group_params
from jaxrec.core.anchoring import decay_to_start
from jaxrec.core.batch import TaskBatch
from jaxrec.core.inner import InnerLoop
from jaxrec.core.metasgd import MetaSGDParams
from jaxrec.core.newton import newton
from jaxrec.core.params import adapt_filter, adapt_mask
from jaxrec.core.ranking import catalogue_als_loss, catalogue_logistic_loss, ranking_loss
from jaxrec.core.solvers import Amortized
from jaxrec.core.trainer import MetaTrainer, MetaTrainState, run_steps
from jaxrec.data import DataError, Dataset, Featurizer, load, read_log
from jaxrec.data.augment import id_dropout, unknown_fraction
from jaxrec.data.stream import StepBatches, stream
from jaxrec.data.tasks import SCENARIOS, TaskSet, build_tasks, cold_start_split, item_release_key, newest_items
from jaxrec.evaluation.baselines import fit_bias_model
from jaxrec.evaluation.compare import evaluate_methods
from jaxrec.experiment.config import MIXED_SOLVE, ExperimentConfig, resolve, with_dataset, with_feature_tables
from jaxrec.experiment.methods import evaluate_experiment, experiment_predictors, fit_baselines
from jaxrec.scale.sharding import make_mesh

__all__ = [
    "Experiment",
    "Learner",
    "exact_als_gram",
    "exact_als_loss",
    "exact_als_loss_of_gram",
    "exact_logistic_loss",
    "meta_optimizer",
    "topn_loss",
    "trained_catalogue",
]

logger = logging.getLogger(__name__)

_NO_CAP = 2**31 - 1  # meta-training keeps every user, whatever their number of ratings


def _inner_solver(name: str, model: Any = None):
    """The solver of a resolved ``inner_solver``: None for gradient steps, the Newton step, or the support
    encoder of ``model`` (TaNP, LWA, NLBA)."""
    if name == "encode":
        return Amortized(models.support_encoder(model))
    if name == "newton":
        return newton()
    if name == "mixed":
        return newton(solve=MIXED_SOLVE)
    return None


def meta_optimizer(config: ExperimentConfig) -> optax.GradientTransformation:
    """The outer optimiser of a config: Adam(``meta_lr``) on the meta-parameters; Meta-SGD's per-parameter inner
    rates get Adam(``rate_lr``) (default ``meta_lr``); with ``anchor`` every step also pulls back to the start
    (:func:`~jaxrec.core.anchoring.decay_to_start`); the leaves that ``frozen`` names get no update.

    Args:
      config: the (resolved) experiment config.

    Returns:
      The optax transformation.

    Raises:
      ValueError: at ``init``, if ``frozen`` names no parameter (a misspelt path would otherwise freeze nothing).
    """
    meta = config.meta
    params_opt = optax.adam(meta.meta_lr)
    if meta.algorithm == "metasgd" and meta.rate_lr is not None:

        def labels(params):
            if isinstance(params, MetaSGDParams):
                return MetaSGDParams(
                    jax.tree.map(lambda _: "params", params.params), jax.tree.map(lambda _: "rates", params.inner_lr)
                )
            return jax.tree.map(lambda _: "params", params)

        params_opt = optax.multi_transform({"params": params_opt, "rates": optax.adam(meta.rate_lr)}, labels)
    if meta.anchor:
        params_opt = optax.chain(params_opt, decay_to_start(meta.meta_lr * meta.anchor))
    if meta.frozen is None:
        return params_opt
    pattern = adapt_filter(meta.frozen)

    def frozen(params):
        try:
            return adapt_mask(params, pattern)
        except ValueError:  # it selects no leaf
            raise ValueError(f"frozen={meta.frozen!r} names no parameter") from None

    # Adam's moments of a frozen leaf are kept but never applied: the zeroed update is what reaches the params
    return optax.chain(params_opt, optax.masked(optax.set_to_zero(), frozen))


def config_mesh(config: ExperimentConfig):
    """The device mesh of a config's ``devices``: None (one device), ``"all"`` or a count of devices.

    Args:
      config: the config.

    Returns:
      A ``jax.sharding.Mesh`` whose axis ``"tasks"`` shards the task axis, or None.
    """
    devices = config.devices
    if devices is None:
        return None
    if devices == "all":
        return make_mesh()
    try:
        return make_mesh(int(devices))
    except ValueError as e:
        if jax.default_backend() != "cpu":
            raise
        # a CPU host shows its cores as devices only when split before JAX starts: the command's --devices does it
        raise ValueError(
            f"the config asks for {devices} devices and this CPU host shows {jax.device_count()}: split its cores "
            f"first (the command's --devices {devices}; in Python, jaxrec.use_every_core({devices}) before any JAX "
            "computation)"
        ) from e


@dataclasses.dataclass(frozen=True)
class Learner:
    """What a config makes of a feature spec, data aside: the model, its inner loop and the meta-trainer.

    Attributes:
      model: the Flax model.
      inner: the :class:`~jaxrec.InnerLoop` (the model's default loss, or with ``feedback="implicit"`` the
        configured ranking loss; the adapted set, the solver).
      trainer: the :class:`~jaxrec.MetaTrainer` (algorithm, outer optimiser, mesh).
    """

    model: Any
    inner: InnerLoop
    trainer: MetaTrainer

    @classmethod
    def build(cls, config: ExperimentConfig, spec: Any, mesh: Any = None, catalogue: Any = None) -> Learner:
        """The learner of a resolved config for ``spec`` (the featurizer's spec with the run's history).

        Args:
          config: the resolved config (:func:`~jaxrec.experiment.config.resolve`).
          spec: the feature spec.
          mesh: the device mesh of the trainer, or None.
          catalogue: the item rows of every catalogue item (``featurizer.item_rows``), which the loss
            ``ranking_loss="als_exact"`` reads (its Gram matrix); None otherwise.

        Returns:
          The :class:`Learner`.

        Raises:
          DataError: if the model cannot read rows of ``spec`` (e.g. MAMO without item side features or ids).
          ValueError: if ``ranking_loss="als_exact"`` is asked of a model that is not a two-tower model, or
            without the catalogue.
        """
        model = models.create(config.model.name, spec, **config.model.constructor_kwargs())
        try:  # traced, not allocated: a model that cannot read these rows says so before any training
            jax.eval_shape(model.init, jax.random.key(0), testing.synthetic_rows(spec, 2, jax.random.key(0)))
        except ValueError as e:
            fields = ", ".join(sorted([*spec.categorical, *spec.multi_hot]))
            raise DataError(
                f"model {config.model.name!r} cannot read this data's rows (fields: {fields}): {e}"
            ) from None
        query_loss_fn = None
        if config.data.feedback == "implicit":  # top-N: positives ranked against their sampled negatives
            unknown = topn_unknown_ids(config)
            confidence = config.topn.als_confidence
            loss_fn = topn_loss(config.topn.ranking_loss, model, catalogue, unknown, confidence)
            if config.topn.query_loss not in (None, config.topn.ranking_loss):
                query_loss_fn = topn_loss(config.topn.query_loss, model, catalogue, unknown, confidence)
        else:
            loss_fn = models.default_loss(model)
        if callable(getattr(type(model), "query_loss", None)):  # TaNP: the neural-process bound of the query set
            query_loss_fn = model.query_loss(query_loss_fn or loss_fn)
        inner = InnerLoop(
            loss_fn,
            steps=config.meta.inner_steps,
            order=config.meta.order,
            solver=_inner_solver(config.meta.inner_solver, model),
            adapt_filter=models.adapt_filter(config.meta.adapt, model),
            query_loss_fn=query_loss_fn,
        )
        # MAMO: memories written after each step from the batch's adapted users
        writes = callable(getattr(type(model), "memory_write", None))
        trainer = MetaTrainer(
            inner,
            inner_lr=config.meta.inner_lr,
            algorithm=config.meta.algorithm,
            optimizer=meta_optimizer(config),
            mesh=mesh,
            after_step=model.memory_write(inner) if writes else None,
        )
        return cls(model, inner, trainer)

    def template_state(self, config: ExperimentConfig, spec: Any) -> MetaTrainState:
        """A training state of the right structure, shapes and dtypes (random values): what a checkpoint of this
        config restores into without the data (grouped initialisations as :func:`group_params` stacks them)."""
        params = models.init_params(self.model, spec, jax.random.key(0))
        if config.meta.groups > 1:
            params = group_params(params, int(config.meta.groups), self.inner.adapt_filter)
        return self.trainer.init(params)


def trained_catalogue(featurizer: Featurizer) -> dict[str, np.ndarray]:
    """The item rows of the items the featurizer has an id for (those of the training interactions): the catalogue
    the exact ALS loss is fitted against (an item without a training interaction is unknown when it trains)."""
    return featurizer.item_rows(np.flatnonzero(featurizer.item_index[:-1] > 0))


def topn_unknown_ids(config: Any) -> float:
    """The fraction of a top-N run's training rows whose item id is dropped: the item dropout rates with a new-item
    scenario (``new_item_frac > 0``), else 0 (every item is known; no id is dropped)."""
    if config.topn.new_item_frac <= 0:
        return 0.0
    return unknown_fraction(config.meta.item_dropout, config.meta.task_item_dropout)


def topn_loss(kind: str, model: Any, catalogue: Any = None, unknown: float = 0.0, confidence: float = 10.0) -> Any:
    """The top-N loss ``kind`` of a model: :func:`~jaxrec.core.ranking.ranking_loss`, or a loss over every item of
    ``catalogue`` (:data:`CATALOGUE_LOSSES`: ``"als_exact"`` :func:`exact_als_loss`, ``"logistic_exact"``
    :func:`exact_logistic_loss`; ``unknown``: its fraction of id-less item vectors); ``confidence``: an
    interaction's extra confidence in the ALS and logistic losses."""
    if kind in CATALOGUE_LOSSES:
        return CATALOGUE_LOSSES[kind](model, catalogue, unknown=unknown, confidence=confidence)
    return ranking_loss(model.apply, kind, confidence=confidence)


def exact_als_loss(model: Any, catalogue: Any, unknown: float = 0.0, confidence: float = 10.0) -> Any:
    """The implicit-ALS loss of a two-tower model with its catalogue term exact
    (:func:`~jaxrec.core.ranking.catalogue_als_loss`): ``G`` is the Gram matrix of the item tower over every item
    of ``catalogue``.

    Trained with item-id dropout (a new-item scenario), a fraction ``u`` of the positives reach the model without
    their id; the catalogue term, which stands for every item as a negative, then counts each item without its id
    at the same rate: ``G = (1 - u) sum_i q_i q_i^T + u sum_i q0_i q0_i^T``, ``q0_i`` the item's vector from its
    features alone (:func:`jaxrec.data.augment.unknown_fraction`). Without it an id-less item is only ever a
    positive, and every new item is recommended to everyone.

    Args:
      model: a :class:`~jaxrec.models.TwoTower`.
      catalogue: the item rows of every catalogue item, ``{key: [V, ...]}``.
      unknown: ``u``, in ``[0, 1]``.
      confidence: the extra confidence ``c`` of an interaction (:func:`~jaxrec.core.ranking.catalogue_als_loss`).

    Returns:
      ``loss_fn(params, rows, mask)``.

    Raises:
      ValueError: if the model has no separate towers, the catalogue is missing or ``u`` is not in ``[0, 1]``.
    """
    return exact_als_loss_of_gram(model, exact_als_gram(model, catalogue, unknown), confidence=confidence)


def exact_als_loss_of_gram(model: Any, gram_fn: Any, confidence: float = 10.0) -> Any:
    """:func:`exact_als_loss` with its catalogue term's Gram matrix from ``gram_fn(params)``: the run's
    (:func:`exact_als_gram`), or one formed once for a trained model's fixed item side (a recommender)."""

    def user_fn(params, rows):
        return model.apply(params, rows, method=model.user_vectors)

    # a pooled history differs from row to row (a support row's own item left out); nothing else of the user tower
    shared = not getattr(model, "pool_history", False)
    return catalogue_als_loss(model.apply, user_fn, gram_fn, confidence=confidence, shared_user=shared)


def exact_als_gram(model: Any, catalogue: Any, unknown: float = 0.0) -> Any:
    """``gram_fn(params) -> [d + 1, d + 1]``, the Gram matrix of :func:`exact_als_loss`'s catalogue term: it depends
    on the item tower alone, so a trained model forms it once for every new user (a recommender, the service).

    Args:
      model: a :class:`~jaxrec.models.TwoTower`.
      catalogue: the item rows of every catalogue item, ``{key: [V, ...]}``.
      unknown: the fraction of id-less item vectors (see :func:`exact_als_loss`).

    Raises:
      ValueError: as :func:`exact_als_loss`.
    """
    _, item_vectors = _catalogue_towers(model, catalogue, unknown, "als_exact")

    def gram_fn(params):
        return sum(w * (v.T @ v) for w, v in item_vectors(params))

    return gram_fn


def exact_logistic_loss(model: Any, catalogue: Any, unknown: float = 0.0, confidence: float = 10.0) -> Any:
    """The log-loss counterpart of :func:`exact_als_loss` (:func:`~jaxrec.core.ranking.catalogue_logistic_loss`):
    every item of ``catalogue`` a label-0 example, each interaction a label-1 one of confidence ``1 + c w``; the
    Newton inner step is then iteratively reweighted least squares. Under item-id dropout each item counts with its
    id at weight ``1 - u`` and without it at ``u``, as the Gram matrix of :func:`exact_als_loss` does.

    Args:
      model: a :class:`~jaxrec.models.TwoTower`.
      catalogue: the item rows of every catalogue item, ``{key: [V, ...]}``.
      unknown: ``u``, in ``[0, 1]``.
      confidence: the extra confidence ``c`` of an interaction.

    Returns:
      ``loss_fn(params, rows, mask)``.

    Raises:
      ValueError: if the model has no separate towers, the catalogue is missing or ``u`` is not in ``[0, 1]``.
    """
    user_fn, item_vectors = _catalogue_towers(model, catalogue, unknown, "logistic_exact")

    def logits_fn(params, user):
        parts = item_vectors(params)
        scores = jnp.concatenate([v @ user for _, v in parts])
        weights = jnp.concatenate([jnp.full(v.shape[:1], w, v.dtype) for w, v in parts])
        return scores, weights

    return catalogue_logistic_loss(model.apply, user_fn, logits_fn, confidence=confidence)


def _catalogue_towers(model: Any, catalogue: Any, unknown: float, kind: str) -> tuple[Any, Any]:
    """``(user_fn, item_vectors)`` of a two-tower model for a loss over its whole catalogue: each row's user vector,
    and ``item_vectors(params) -> [(weight, [V, d])]``, the catalogue's item vectors (weight ``1 - u``) and, under
    id dropout, their id-less vectors (weight ``u``)."""
    if not isinstance(model, models.TwoTower):
        raise ValueError(
            f"ranking_loss={kind!r} needs a two-tower model (--model twotower), not {type(model).__name__}: its "
            "catalogue term is formed from every item's vector"
        )
    if catalogue is None:
        raise ValueError(f"ranking_loss={kind!r} needs the catalogue's item rows to form its catalogue term")
    items = {k: jnp.asarray(v) for k, v in catalogue.items()}
    unknown = float(unknown)
    if not 0.0 <= unknown <= 1.0:
        raise ValueError(f"the fraction of unknown item ids must be in [0, 1], got {unknown}")
    id_less = dict(items, item=jnp.zeros_like(items["item"]))  # slot 0: the unknown id

    def user_fn(params, rows):
        return model.apply(params, rows, method=model.user_vectors)

    def item_vectors(params):
        vectors = model.apply(params, items, method=model.item_vectors)
        if not unknown:
            return [(1.0, vectors)]
        features_only = model.apply(params, id_less, method=model.item_vectors)
        return [(1.0 - unknown, vectors), (unknown, features_only)]

    return user_fn, item_vectors


# the top-N losses formed over the whole catalogue, for a two-tower model
CATALOGUE_LOSSES = {"als_exact": exact_als_loss, "logistic_exact": exact_logistic_loss}


def _check_both_labels(ratings: np.ndarray, threshold: float) -> None:
    """Refuse binary targets (``--implicit``) of one class: a threshold outside the log's scale (MovieLens's 4 on a
    0/1 log) labels every rating alike, and the run would train and report AUC, HR and nDCG of nothing."""
    positive = int(np.sum(ratings >= threshold))
    if positive == 0 or positive == len(ratings):
        which = "no rating reaches" if positive == 0 else "every rating reaches"
        raise DataError(
            f"--implicit-threshold {threshold:g}: {which} it among the {len(ratings)} meta-train ratings, in "
            f"[{float(ratings.min()):g}, {float(ratings.max()):g}]: every label would be {int(positive > 0)}; "
            "pick a threshold inside the log's scale (a rating >= it is a positive)"
        )


class Experiment:
    """The objects a config describes, built eagerly (data, split, tasks, model, trainer) or lazily (baselines).

    Args:
      config: the experiment's config (default: :class:`~jaxrec.experiment.config.ExperimentConfig`); its
        ``"auto"`` settings are resolved (:func:`~jaxrec.experiment.config.resolve`) before anything is built.
      dataset: a rated :class:`~jaxrec.data.Dataset` in memory (:func:`~jaxrec.data.from_dataframe`) to use in
        place of the data the config names; the config then records its name.

    Attributes:
      config: the resolved config, which says what ran.
      dataset: the :class:`~jaxrec.data.Dataset`.
      data_in_memory: the dataset was given in memory (a checkpoint records it: restoring needs it again).
      split: the :class:`~jaxrec.ColdStartSplit`.
      featurizer: the :class:`~jaxrec.data.Featurizer`, fitted on the meta-train ratings without the validation
        items.
      spec: the featurizer's spec with this run's ``history``.
      train_ratings: the meta-train ratings, validation users and validation items excluded.
      train_tasks: the meta-train tasks of ``train_ratings`` (every user, whatever their number of ratings).
      val_ratings: the ratings of the validation users of meta-train.
      val_tasks: the tasks of the validation users.
      val_item_ratings: the other meta-train users' ratings of the validation items.
      val_item_tasks: their tasks; None without ``val_item_frac`` or without a user with enough of them.
      scenario_tasks: name -> TaskSet, non-empty scenarios only.
      model: the Flax model.
      loss_fn: its default loss.
      apply_fn: ``model.apply``.
      adapt_filter: the predicate of the adapted parameters.
      inner: the :class:`~jaxrec.InnerLoop`.
      trainer: the :class:`~jaxrec.MetaTrainer`.
      mesh: the device mesh, or None on one device.

    Raises:
      ValueError: if the config cannot be resolved.
      DataError: if the data cannot be read or there is no meta-train task.
    """

    def __init__(self, config: ExperimentConfig | None = None, dataset: Dataset | None = None):
        if config is not None and config.data.feedback == "implicit":  # it would predict ratings all the same
            raise ValueError(
                "this config asks for top-N recommendation (feedback='implicit'), which Experiment (the rating "
                "protocol) does not run: use jaxrec.experiment.TopNExperiment(config), or "
                "jaxrec.experiment.build_experiment(config), which picks the protocol as the command does"
            )
        # "auto" made concrete before anything is built, so that the recorded config says what ran
        config = config or ExperimentConfig()
        self.config = config = resolve(config if dataset is None else with_dataset(config, dataset))
        self.dataset = with_feature_tables(self._load_dataset() if dataset is None else dataset, config.data)
        self.data_in_memory = dataset is not None
        if not self.dataset.explicit and dataset is not None:
            raise DataError(
                f"the dataset {dataset.name!r} holds interactions, not ratings: top-N recommendation from them is "
                "TopNExperiment(config with feedback='implicit', dataset); to predict ratings, build the dataset "
                "with its rating column (from_dataframe(df, ..., rating=COLUMN))"
            )
        if not self.dataset.explicit:
            # every interaction would read as a rating of 1: a constant target, MAE 0 and meaningless rankings
            raise DataError(
                f"{self.dataset.source}: the log has no rating column, and without --feedback implicit training "
                "predicts ratings: pass --feedback implicit for top-N recommendation from the interactions (clicks, "
                "plays, check-ins; a count column as weight, e.g. --columns user,item,weight), or name the rating "
                "column in --columns (e.g. user,item,rating)"
            )
        pro = config.protocol
        self.split = cold_start_split(
            self.dataset,
            pro.scheme,
            config.seed,
            target_genres=pro.target_genres,
            source_genres=pro.source_genres,
            train_domain=pro.train_domain,
        )
        logger.info("%s", self.split.summary())
        threshold = config.data.implicit_threshold if config.data.implicit else None
        train = self.split.train
        if threshold is not None:
            _check_both_labels(train["rating"].to_numpy(), threshold)
        # validation items are new to the model: out of its vocabularies, as the new-item scenario's are
        is_val_item = np.isin(train["item"].to_numpy(), self._validation_items(train["item"].to_numpy()))
        if pro.tasks_by == "item":
            # item tasks are validated on held-out items (a random val_frac of them) rated by meta-train users:
            # the new-item scenario's kind of task, whose users' ids the model has trained
            is_val_item |= np.isin(train["item"].to_numpy(), self._validation_users(train["item"].to_numpy()))
        self.featurizer = Featurizer.fit(
            self.dataset, train[~is_val_item], implicit_threshold=threshold, rating_range=config.data.rating_scale
        )
        val_users = self._validation_users(train.loc[~is_val_item, "user"].to_numpy())
        if pro.tasks_by == "item":
            val_users = val_users[:0]
        is_val = np.isin(train["user"].to_numpy(), val_users)
        self.train_ratings = train[~is_val & ~is_val_item].reset_index(drop=True)
        self.val_ratings = train[is_val & ~is_val_item].reset_index(drop=True)
        self.val_item_ratings = train[~is_val & is_val_item].reset_index(drop=True)
        self.train_tasks = self._train_tasks(config.training_seed)
        self.val_tasks = self._tasks(self.val_item_ratings if pro.tasks_by == "item" else self.val_ratings)
        self.val_item_tasks = None
        if len(self.val_item_ratings):
            tasks = self._tasks(self.val_item_ratings)
            if len(tasks):
                self.val_item_tasks = tasks
            else:
                logger.warning("no meta-train user has enough ratings of the validation items: none scored")
        if config.protocol.val_item_frac:
            logger.warning(
                "val_item_frac=%s: the newest meta-train items are held out of training, so this run is for choosing "
                "a configuration on validation, not for test figures (those items are unknown in every scenario)",
                config.protocol.val_item_frac,
            )
        self.scenario_tasks: dict[str, TaskSet] = {}
        for name in SCENARIOS:
            frame = self.split.scenarios.get(name)
            if frame is None or len(frame) == 0:
                continue
            if pro.tasks_by == "item" and name != "new_item":
                # an item task adapts from the users who rated the item: they must be known (existing) users,
                # and only the new-item scenario's items are cold
                continue
            tasks = self._tasks(frame)
            if len(tasks):
                self.scenario_tasks[name] = tasks
            else:
                logger.warning("scenario %r has no user with enough ratings for the task split; skipped", name)
        if len(self.train_tasks) == 0:
            pro = config.protocol
            raise DataError(
                f"no meta-train task: {self.train_tasks.summary()}; a {pro.tasks_by} is a task with at least "
                f"min_ratings={pro.min_ratings} ratings, query={pro.query} of them in the query set (flags "
                "--min-ratings and --query): lower them for a log with few ratings per user"
            )
        self.spec = self.train_tasks.spec  # the featurizer's spec with this run's ``history``
        self.mesh = config_mesh(config)
        learner = Learner.build(config, self.spec, mesh=self.mesh)
        self.model, self.inner, self.trainer = learner.model, learner.inner, learner.trainer
        self.loss_fn, self.apply_fn, self.adapt_filter = self.inner.loss_fn, self.model.apply, self.inner.adapt_filter
        self._baselines = None
        self._tuned_inner_lr: float | None = None

    # -- construction helpers --------------------------------------------------------------------------------------

    def _load_dataset(self) -> Dataset:
        data = self.config.data
        if data.path is not None:
            return read_log(data.path, data.columns, sep=data.sep, feedback=data.feedback, encoding=data.encoding)
        return load(data.dataset, data_dir=data.data_dir)

    def _validation_users(self, train_users: np.ndarray) -> np.ndarray:
        """A seeded random ``val_frac`` of the codes in ``train_users`` (users; items, for item tasks)."""
        users = np.unique(train_users)
        if self.config.protocol.val_frac <= 0:
            return users[:0]
        rng = np.random.default_rng([self.config.seed, 1])
        n = max(1, int(round(self.config.protocol.val_frac * len(users))))
        return np.sort(rng.permutation(users)[:n])

    def _validation_items(self, train_items: np.ndarray) -> np.ndarray:
        """The newest ``val_item_frac`` of the items of ``train_items`` (:func:`~jaxrec.data.tasks.newest_items`)."""
        if self.config.protocol.val_item_frac <= 0:
            return train_items[:0]
        items = np.unique(train_items)
        rng = np.random.default_rng([self.config.seed, 2])
        return items[newest_items(item_release_key(self.dataset)[items], self.config.protocol.val_item_frac, rng)]

    def _tasks(self, ratings, max_ratings: int | None | str = "config", seed: Any = None) -> TaskSet:
        c = self.config
        return build_tasks(
            ratings,
            self.featurizer,
            c.protocol.split,
            support=c.protocol.support,
            query=c.protocol.query,
            seed=c.seed if seed is None else seed,
            min_ratings=c.protocol.min_ratings,
            max_ratings=c.protocol.max_ratings if max_ratings == "config" else max_ratings,
            support_buckets=c.protocol.support_buckets,
            history=self.history,
            by=c.protocol.tasks_by,
        )

    def _train_tasks(self, seed: Any) -> TaskSet:
        return self._tasks(self.train_ratings, max_ratings=_NO_CAP, seed=seed)

    @property
    def history(self) -> int:
        """Items of history per row (:meth:`~jaxrec.experiment.config.ExperimentConfig.history`)."""
        return self.config.history()

    # -- training --------------------------------------------------------------------------------------------------

    def random_params(self, key: jax.Array | None = None) -> Any:
        """Initialise fresh random model variables.

        Args:
          key: the PRNG key (default: ``key(config.training_seed)``).

        Returns:
          The variables ``{"params": ...}``.
        """
        key = jax.random.key(self.config.training_seed) if key is None else key
        return models.init_params(self.model, self.spec, key)

    @functools.cached_property
    def start(self) -> str:
        """Where meta-training starts: ``"bias"``, ``"supervised"`` or ``"random"``.

        ``"bias"`` (:meth:`bias_start`) with ``pretrain="bias"`` and a model with an item bias table and a head, e.g.
        MeLU with ``item_bias``; ``"supervised"`` with ``pretrain=True``, or ``"bias"`` with any other model;
        ``"random"`` with ``pretrain=False``.
        """
        pretrain = self.config.meta.pretrain
        if pretrain == "bias":
            rows = testing.synthetic_rows(self.spec, 2, jax.random.key(0))
            shapes = jax.eval_shape(self.model.init, jax.random.key(0), rows)["params"]
            if _has_bias_start(shapes):
                return "bias"
            return "supervised"
        return "supervised" if pretrain else "random"

    def init_params(self) -> Any:
        """Build the meta-learner's initialisation (see :attr:`start`).

        Returns:
          The bias model (:meth:`bias_start`), the supervised model of the ``no_adapt`` baseline (trained once,
          cached with the baselines) or :meth:`random_params`; with ``groups > 1``, its :meth:`grouped_start`.
        """
        start = self.start
        if start == "supervised":
            params = self.baselines().supervised_params
        else:
            params = self.random_params()
            params = self.bias_start(params) if start == "bias" else params
        return self.grouped_start(params) if self.config.meta.groups > 1 else params

    def grouped_start(self, params: Any) -> GroupedParams:
        """Build ``config.meta.groups`` initialisations of the adapted leaves of ``params``.

        The groups (:func:`jaxrec.contrib.grouping.group_params`) are set apart so that users split between them
        from the first step: group ``g`` adds to the head's output bias the ``(g + 1/2) / G`` quantile of the user
        offsets ``b_u`` of the bias model fitted on the meta-train ratings (so that, from the bias or the
        supervised start, whose output bias is near ``mu``, each user is nearest the group of their own rating
        level before adaptation). Every other adapted leaf that ``params`` holds at its random initial value (that
        of :meth:`random_params`) gets fresh random values in groups ``g >= 1`` (``fold_in(key(training_seed), g)``); a
        leaf that is set otherwise (trained, or the bias start's ``b_i`` table and zero output kernel) is copied to
        every group.

        Args:
          params: the single initialisation.

        Returns:
          The :class:`~jaxrec.contrib.grouping.GroupedParams`.

        Raises:
          ValueError: if there is not exactly one adapted ``output/bias`` leaf (MeLU's head has one).
        """
        groups = int(self.config.meta.groups)
        grouped = group_params(params, groups, self.adapt_filter)
        paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        output_bias = [i for i, p in enumerate(paths) if p.endswith("['output']['bias']") and grouped.grouped[i]]
        if len(output_bias) != 1:
            raise ValueError(
                f"groups={groups} needs exactly one adapted output/bias leaf; adapted: "
                f"{[p for p, g in zip(paths, grouped.grouped, strict=True) if g]}"
            )
        _, _, user_bias = self._bias_fit
        trained_users = np.unique(self.train_ratings["user"].to_numpy())
        offsets = np.quantile(user_bias[trained_users], (np.arange(groups) + 0.5) / groups)
        leaves = jax.tree.leaves(grouped.params)
        initial = jax.tree.leaves(self.random_params())
        key = jax.random.key(self.config.training_seed)
        fresh = {g: jax.tree.leaves(self.random_params(jax.random.fold_in(key, g))) for g in range(1, groups)}
        out = []
        for i, (leaf, is_grouped) in enumerate(zip(leaves, grouped.grouped, strict=True)):
            if not is_grouped:
                out.append(leaf)
            elif i == output_bias[0]:
                out.append(leaf + jnp.asarray(offsets, leaf.dtype).reshape((groups,) + (1,) * (leaf.ndim - 1)))
            elif not np.array_equal(np.asarray(leaf[0]), np.asarray(initial[i])):
                out.append(leaf)  # set by training or by the bias start: the same in every group
            else:
                out.append(jnp.stack([leaf[0]] + [fresh[g][i] for g in range(1, groups)]))
        return grouped.replace(params=jax.tree.unflatten(jax.tree.structure(grouped.params), out))

    def bias_start(self, params: Any) -> Any:
        """Start ``params`` at the classical bias model ``mu + b_i``.

        The item bias table (``bias_embed_item``, e.g. MeLU's ``item_bias``) holds ``b_i``, the head's output bias
        ``mu`` (both from :meth:`bias_init`) and its output kernel 0, so the head adds nothing but its output bias,
        which then plays the user offset ``b_u``.

        Args:
          params: the model variables ``{"params": ...}``.

        Returns:
          The variables with the item bias table and the head's output layer replaced.

        Raises:
          ValueError: if the model has no ``bias_embed_item`` table and head.
        """
        inner = params["params"]
        if not _has_bias_start(inner):
            raise ValueError(f"bias start: model {self.config.model.name!r} has no bias_embed_item table and head")
        mu, item_bias = self.bias_init()
        output = inner["head"]["output"]
        output = dict(output, kernel=jnp.zeros_like(output["kernel"]), bias=jnp.full((1,), mu, jnp.float32))
        inner = dict(
            inner,
            bias_embed_item={"embedding": jnp.asarray(item_bias, jnp.float32)[:, None]},
            head=dict(inner["head"], output=output),
        )
        return dict(params, params=inner)

    def bias_init(self) -> tuple[float, np.ndarray]:
        """The bias model of the meta-train ratings, fitted once.

        :func:`jaxrec.evaluation.baselines.fit_bias_model` on the meta-train ratings (validation users and items
        excluded), with the ``bias_reg`` ridge strengths; the ``bias`` baseline uses the same fit.

        Returns:
          ``(mu, b_i [item vocab])``.
        """
        mu, item_bias, _ = self._bias_fit
        return mu, item_bias

    def user_bias_slots(self) -> np.ndarray:
        """The bias model's user offsets ``b_u`` by ``"user"`` vocabulary slot (0 for the OOV slot and for users
        without a meta-train rating).

        Returns:
          float32 ``[user vocab]``.
        """
        _, _, user_bias = self._bias_fit
        table = np.zeros(self.featurizer.spec.categorical["user"], np.float32)
        trained = np.unique(self.train_ratings["user"].to_numpy())
        table[self.featurizer.user_index[trained]] = user_bias[trained]
        table[0] = 0.0
        return table

    @functools.cached_property
    def _bias_fit(self) -> tuple[float, np.ndarray, np.ndarray]:
        feat, train = self.featurizer, self.train_ratings
        rows = feat.transform(train)
        item_reg, user_reg = (float(x) for x in self.config.evaluation.bias_reg)
        return fit_bias_model(
            train["user"].to_numpy(),
            rows["item"],
            rows[feat.spec.target].astype(np.float64),
            feat.n_users,
            feat.spec.categorical["item"],
            item_reg=item_reg,
            user_reg=user_reg,
        )

    def init_state(self) -> MetaTrainState:
        """Build a fresh training state, resolving the inner rate first (:meth:`resolve_inner_lr`).

        Returns:
          A :class:`~jaxrec.MetaTrainState` of :meth:`init_params` (Meta-SGD: params wrapped with per-parameter
          rates).
        """
        self.resolve_inner_lr()
        return self.trainer.init(self.init_params())

    def resolve_inner_lr(self) -> float:
        """Settle the inner rate in use (:attr:`inner_lr`), tuning it on first use.

        With ``tune_inner_lr``, the rate is the fine-tuning rate chosen on the validation users
        (:func:`jaxrec.evaluation.baselines.tune_finetune_lr`, never a test scenario), where Meta-SGD's rates then
        start. Not from the bias start (:attr:`start`): that rate is tuned for the supervised model, a different
        one, so ``inner_lr`` is used as it is. The config is not changed: the tuned value is recorded beside it
        (:attr:`tuned`).

        Returns:
          The inner rate, also set on the trainer.
        """
        if self._tuned_inner_lr is None:
            meta = self.config.meta
            lr = float(meta.inner_lr)
            if meta.tune_inner_lr and self.start != "bias" and len(self.val_tasks):
                tuned = float(self.baselines().finetune_lr)
                lr = tuned if tuned > 0 else lr
            self._tuned_inner_lr = lr
            self.trainer.inner_lr = lr
        return self._tuned_inner_lr

    def use_tuned(self, tuned: Mapping[str, Any] | None) -> None:
        """Take the values a run recorded as tuned (``{"inner_lr": ...}``, e.g. from its checkpoint) instead of tuning
        them again: a resumed or restored run uses exactly what it trained with."""
        if tuned and tuned.get("inner_lr") is not None:
            self._tuned_inner_lr = float(tuned["inner_lr"])
            self.trainer.inner_lr = self._tuned_inner_lr

    def template_state(self) -> MetaTrainState:
        """A training state of this run's structure (random values, nothing fitted): what a checkpoint restores
        into."""
        return Learner(self.model, self.inner, self.trainer).template_state(self.config, self.spec)

    @property
    def inner_lr(self) -> float:
        """The inner rate of this run: ``config.meta.inner_lr``, or the rate tuned on validation users."""
        return self.resolve_inner_lr()

    @property
    def tuned(self) -> dict:
        """The values chosen on validation users, recorded beside the config: ``{"inner_lr": ...}``, and once the
        baselines are fitted, ``"finetune"``: the fine-tuning rate chosen and each rate's validation figure (a rate
        of 0 is ``no_adapt``'s model unadapted)."""
        out: dict = {"inner_lr": self.inner_lr}
        if self._baselines is not None:
            fitted = self._baselines
            validation = {  # a diverged rate's figure is not finite: null in JSON
                f"{lr:g}": float(value) if math.isfinite(value) else None
                for lr, value in dict(fitted.finetune_validation).items()
            }
            out["finetune"] = {"inner_lr": float(fitted.finetune_lr), "validation": validation}
        return out

    @property
    def steps_per_epoch(self) -> int:
        """Meta-steps per epoch: the batches of one epoch of ``train_tasks``."""
        return len(self.train_tasks.batch_plan(self.config.meta.batch_size, None))

    @property
    def total_steps(self) -> int:
        """Meta-steps of the whole run: ``steps_per_epoch * epochs``."""
        return self.steps_per_epoch * self.config.meta.epochs

    def batches(self, start_step: int = 0) -> Iterator[TaskBatch]:
        """Stream the meta-train batches, endless and deterministic, of the config seed.

        The stream is that of :mod:`jaxrec.data.stream`: epoch ``e`` is over :meth:`epoch_tasks`, and with
        ``item_dropout`` a fraction of each batch's item ids become the OOV slot, with ``task_item_dropout`` a
        fraction of its tasks' (:func:`jaxrec.data.augment.drop_item_ids`). The stream from ``start_step`` equals
        the full stream with its first ``start_step`` batches dropped, without building them.

        Args:
          start_step: the first step streamed.

        Returns:
          An endless iterator of host (numpy) batches, prefetched.
        """
        meta = self.config.meta
        transform = id_dropout(meta.item_dropout, meta.task_item_dropout)
        batch_at = StepBatches(self.epoch_tasks, meta.batch_size, self.config.training_seed, transform=transform)
        return stream(batch_at, start=start_step, device=None)

    def epoch_tasks(self, epoch: int) -> TaskSet:
        """Build the meta-train tasks of an epoch.

        The users, support and query sizes, and so the batch shapes, are those of ``train_tasks``: only which
        ratings are support and which are query changes. Built afresh for each epoch (a
        :func:`~jaxrec.data.tasks.build_tasks` call over the meta-train ratings).

        Args:
          epoch: the epoch.

        Returns:
          ``train_tasks``, or with ``resample_tasks`` (and ``epoch > 0``) the same users split afresh with seed
          ``[seed, epoch]``.

        Raises:
          RuntimeError: if the resampled tasks change their users or shapes (a broken invariant, not bad input).
        """
        if not self.config.meta.resample_tasks or epoch == 0:
            return self.train_tasks
        tasks = self._train_tasks([self.config.training_seed, epoch])
        # task sizes depend only on rating counts (and the subsample sizes, drawn with the config seed)
        base = self.train_tasks
        if not all(np.array_equal(getattr(tasks, a), getattr(base, a)) for a in ("users", "support_pad", "query_pad")):
            raise RuntimeError("resampled meta-train tasks changed their users or shapes")
        return tasks

    def train_step(self, state: MetaTrainState, batch: TaskBatch) -> tuple[MetaTrainState, dict]:
        """Take one meta-step.

        Args:
          state: the training state; it is donated, so use the returned one.
          batch: the batch of tasks.

        Returns:
          ``(state, metrics)`` of the trainer's step.
        """
        self.resolve_inner_lr()  # a resumed run skips init_state
        return self.trainer.step(state, batch)

    def train(self, state: MetaTrainState | None = None, steps: int | None = None) -> MetaTrainState:
        """Meta-train from ``state``, resuming at ``state.step``.

        Args:
          state: the starting state (default: :meth:`init_state`).
          steps: how many steps to take (default: the rest up to ``total_steps``).

        Returns:
          The final state.
        """
        state = self.init_state() if state is None else state
        self.resolve_inner_lr()
        start = int(state.step)
        stop = self.total_steps if steps is None else start + int(steps)
        loop = run_steps(self.trainer, state, self.batches(start), stop_step=stop)
        for state, _, _ in loop:  # noqa: B007 - the last state is the result
            pass
        return state

    # -- evaluation ------------------------------------------------------------------------------------------------

    def baselines(self):
        """Fit the baselines once and cache them.

        Returns:
          The fitted :class:`~jaxrec.experiment.methods.Baselines`.
        """
        if self._baselines is None:
            self._baselines = fit_baselines(self)
        return self._baselines

    def evaluate(self, params: Any, *, method_name: str = "maml", return_stats: bool = False) -> dict | tuple:
        """Evaluate the meta method and the baselines on every non-empty scenario.

        See :mod:`jaxrec.evaluation.predict` for the protocol of the evaluation.

        Args:
          params: the meta-learned parameters.
          method_name: the name of the meta method.
          return_stats: also return the per-user statistics (to pool several splits).

        Returns:
          ``{scenario: {method: metrics}}``, and with ``return_stats`` also ``{scenario: {method: per-user
          statistics}}``.
        """
        self.resolve_inner_lr()
        return evaluate_experiment(self, params, method_name=method_name, return_stats=return_stats)

    def validate(
        self, params: Any, *, baselines: bool = True, items: bool = False, return_stats: bool = False
    ) -> dict | tuple:
        """Evaluate on the validation users: the score to tune a configuration on.

        The validation users are held out of meta-training and of the test scenarios. The fine-tuning rate is
        itself chosen on these users, so its ``finetune`` figure is optimistic, never pessimistic.

        Args:
          params: the meta-learned parameters.
          baselines: also evaluate the configured baselines (else only ``"maml"``).
          items: evaluate on the validation items' tasks instead (``val_item_frac``; new-item tasks).
          return_stats: also return the per-user statistics (to pool splits).

        Returns:
          ``{method: summary}``, and with ``return_stats`` also ``{method: per-user statistics}``.

        Raises:
          ValueError: if ``items`` is set and there are no validation item tasks.
        """
        if items and self.val_item_tasks is None:
            raise ValueError("no validation item tasks: set val_item_frac > 0 (and have users who rated those items)")
        self.resolve_inner_lr()
        methods = experiment_predictors(self, params)
        if not baselines:
            methods = {"maml": methods["maml"]}
        return self.compare(methods, self.val_item_tasks if items else self.val_tasks, return_stats=return_stats)

    def compare(
        self, methods: Mapping[str, tuple], tasks: TaskSet, *, reference: str = "maml", return_stats: bool = False
    ) -> dict | tuple:
        """Score methods on the same tasks with this run's evaluation settings (:func:`evaluate_methods`).

        Args:
          methods: ``{name: (predict, state)}``.
          tasks: the tasks.
          reference: the method the others are paired with.
          return_stats: also return the per-user statistics.

        Returns:
          ``{method: summary}`` (and ``{method: per-user statistics}`` with ``return_stats``).
        """
        c = self.config
        return evaluate_methods(
            methods,
            tasks,
            reference=reference,
            ks=c.evaluation.ks,
            batch_size=c.evaluation.eval_batch_size,
            mesh=self.mesh,
            resamples=c.evaluation.bootstrap,
            seed=c.seed,
            return_stats=return_stats,
        )

    def metrics_document(self, params: Any) -> dict:
        """Evaluate every scenario into the metrics.json document.

        Args:
          params: the meta-learned parameters.

        Returns:
          ``{"dataset": ..., "config": {...}, "tuned": {...}, "data_report": {...}, "features": {...}, "tasks":
          {...}, "scenarios": {...}}``; the data report counts what reading the log dropped or merged
          (:attr:`~jaxrec.data.Dataset.report`), ``features`` what the model reads of the side tables
          (:attr:`~jaxrec.data.Featurizer.features_read`), ``tasks`` each task set's build (its tasks and
          ``users_dropped``: the users with too few or too many ratings to be a task); ``rating_scale`` is the
          ``[low, high]`` MAE and RMSE clip a prediction to (None with binary targets).
        """
        scale = self.featurizer.spec.rating_range
        scenarios = self.evaluate(params)  # first: the baselines' choices on validation users are then in tuned
        return {
            "dataset": self.dataset.name,
            "config": self.config.to_dict(),
            "tuned": self.tuned,
            "data_report": dict(self.dataset.report),
            "features": self.featurizer.features_read,
            "tasks": {
                "train": self.train_tasks.stats,
                "validation": self.val_tasks.stats,
                **({"validation_item": self.val_item_tasks.stats} if self.val_item_tasks is not None else {}),
                **{name: tasks.stats for name, tasks in self.scenario_tasks.items()},
            },
            "rating_scale": None if scale is None else [float(scale[0]), float(scale[1])],
            "scenarios": scenarios,
        }


def _has_bias_start(params: Mapping[str, Any]) -> bool:
    """Whether ``params`` (a model's ``"params"`` collection) can start at the bias model: an item bias table
    ``bias_embed_item`` and a head with an ``output`` layer."""
    return "bias_embed_item" in params and "output" in params.get("head", {})
