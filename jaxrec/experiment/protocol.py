"""One cold-start experiment end to end: data, split, tasks, model, meta-trainer, honest evaluation.

:class:`ExperimentConfig` is a plain dataclass (JSON round trip with :meth:`~ExperimentConfig.to_dict` /
:meth:`~ExperimentConfig.from_dict`); :class:`Experiment` builds everything it describes::

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
* Every scenario with at least one user is evaluated with :func:`jaxrec.evaluation.predict.evaluate_methods`: the meta
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
from jaxrec.core.batch import TaskBatch
from jaxrec.core.inner import InnerLoop
from jaxrec.core.losses import l2_to_init
from jaxrec.core.metasgd import MetaSGDParams, log_space
from jaxrec.core.newton import newton
from jaxrec.core.trainer import MetaTrainer, MetaTrainState
from jaxrec.data import DataError, Dataset, Featurizer, from_csv, load
from jaxrec.data.augment import drop_item_ids
from jaxrec.data.tasks import SCENARIOS, TaskSet, build_tasks, cold_start_split, item_release_key, newest_items
from jaxrec.evaluation.baselines import fit_bias_model
from jaxrec.evaluation.compare import evaluate_methods
from jaxrec.experiment.methods import evaluate_experiment, experiment_predictors, fit_baselines
from jaxrec.scale.sharding import make_mesh

__all__ = ["ExperimentConfig", "Experiment", "BASELINES", "tune"]

logger = logging.getLogger(__name__)

_NO_CAP = 2**31 - 1  # build_tasks's "melu" split caps at 100 ratings when max_ratings is None
BASELINES = ("finetune", "no_adapt", "global_mean", "user_mean", "item_mean", "bias")
INNER_SOLVERS = ("auto", "sgd", "newton", "mixed")
# what a config record written before a field existed meant by its absence (the field's value at the time), so
# that an older checkpoint resumes and evaluates as it was trained although the default has changed since
RECORD_DEFAULTS = {"item_dropout": 0.0, "groups": 1, "inner_solver": "sgd"}
_MIXED_SOLVE = "head/output"  # what inner_solver="mixed" solves by Newton steps
_HEADLESS = ("mf", "linear", "fm")  # models without decision layers (no ``head`` module)


@dataclasses.dataclass
class ExperimentConfig:
    """Everything that defines a run. The defaults are the tuned configuration of ``benchmarks/quality.py``
    (selected on validation users): MeLU with an additive item bias, meta-training started at the bias model,
    Meta-SGD whose inner step is one Newton step on the output layer (``inner_solver="newton"``,
    ``adapt="head/output"``: the exact ridge fold-in of each user towards the meta-learned output layer, the prior
    variances meta-learned), a quarter of the training rows' item ids dropped (``item_dropout=0.25``).

    Data: ``dataset`` (a :data:`jaxrec.data.DATASETS` name) or ``data`` (path of any user,item,rating[,time]
    file, read by :func:`jaxrec.data.from_csv` with ``columns`` / ``sep``); ``data_dir`` for the MovieLens
    folders. ``implicit``: targets are ``rating >= implicit_threshold`` (BCE, HR@k / AUC).

    Split: ``scheme`` of :func:`~jaxrec.data.tasks.cold_start_split`; ``split`` / ``support`` / ``query`` /
    ``min_ratings`` / ``max_ratings`` of :func:`~jaxrec.data.tasks.build_tasks` for the meta-train and the evaluation
    tasks alike (MeLU: 13..100 ratings, 10 query ratings, the rest support), except that meta-training keeps
    users with up to ``train_max_ratings`` ratings (None: all; the supervised baselines see all their ratings
    too); with ``train_subsample`` a meta-train user with more than ``max_ratings`` ratings becomes a task over a
    random subset of ``min_ratings..max_ratings`` of them (redrawn each epoch with ``resample_tasks``), so that
    meta-training sees the support sizes of the cold-start users it is evaluated on. ``support_buckets``: padded
    support lengths (one bucket = one compiled shape; longer support sets keep the rows nearest the query).

    Model: ``model`` (:data:`jaxrec.models.MODELS`) with ``model_kwargs``; ``history``: rows carry the user's last
    ``history`` ratings (``history_item`` / ``history_rating``, see :func:`~jaxrec.data.tasks.build_tasks`); 0 means
    none,
    except that ``model="gru"`` then gets 10.

    Meta-learning: ``algorithm`` (maml | reptile | metasgd), ``order`` (second | first), ``adapt`` ("head": MeLU's local
    update of the decision layers | "head/output" | "all" | "default" | a regex | "auto"), ``inner_lr``,
    ``inner_steps`` (None: auto), ``inner_l2`` (weight of
    :func:`jaxrec.core.losses.l2_to_init` in the inner loss, 0 = none), ``meta_lr``, ``tune_inner_lr``: start from the
    fine-tuning rate chosen on the validation users over ``finetune_lrs`` (:meth:`Experiment.resolve_inner_lr`;
    ``inner_lr`` is then only the fallback, and the rate used from the bias start); ``rate_lr``: Adam rate of Meta-SGD's
    per-parameter inner rates (None: ``meta_lr``), applied to the rates themselves (``rate_space="linear"``) or to their
    logarithms (``"log"``, :func:`jaxrec.core.objectives.log_space`: relative steps). ``batch_size`` tasks per
    meta-step,
    ``epochs`` over the meta-train tasks. ``resample_tasks``: draw a fresh support/query split of every meta-train user
    each epoch (epoch 0 is the ordinary split), so that the meta-learner does not fit one fixed partition of each user's
    ratings (task augmentation against meta-overfitting). ``pretrain``: where meta-training starts
    (:attr:`Experiment.start`): ``"bias"`` starts at the classical bias model ``mu + b_i`` fitted on the meta-train
    ratings (MeLU with ``item_bias``: the item bias table holds ``b_i``, the head adds only its output bias, which the
    inner loop adapts into the user offset ``b_u``; the network part is then learned by meta-training alone; a model
    without such a table falls back to ``True``); ``True`` starts from the supervised (non-meta) model of the
    ``no_adapt`` baseline (the meta-learner then only has to learn how to adapt; it sees the same ratings the baselines
    see); ``False`` from random values. ``meta_params``: which parameters the outer loop updates (an
    :func:`jaxrec.models.adapt_filter` spec: "all", "head", a regex); the others keep their (pretrained) values.

    Evaluation: ``baselines`` (subset of :data:`BASELINES`), ``ks`` for nDCG@k / HR@k, ``bootstrap`` resamples,
    ``eval_batch_size``; ``val_frac`` of meta-train users held out to tune the fine-tuning learning rate over
    ``finetune_lrs``; ``val_item_frac``: the newest fraction of the meta-train items (by release year, or the year of
    the first rating without one: how ``scheme="melu"`` draws new items) held out of all training and of the
    featurizer's vocabularies, their ratings by the remaining meta-train users forming ``val_item_tasks``: validation
    tasks of the new-item kind (0 = none; for choosing a configuration only, since those items are then unknown in the
    test scenarios too); the non-meta model is trained for ``supervised_epochs`` with Adam(``supervised_lr``) on batches
    of ``supervised_batch`` ratings. ``bias_reg``: ridge strengths of the bias baseline.

    ``item_dropout``: fraction of training rows whose item id becomes the OOV slot (:mod:`jaxrec.data.augment`,
    DropoutNet), in meta-train batches and the supervised model's minibatches alike, so that the meta-learner and
    the fine-tuning baseline both learn to score new items from their content. ``task_item_dropout``: fraction of
    meta-train tasks whose every item id becomes the OOV slot, the shape of a new-item task (meta-training only: the
    supervised model trains on rows, not tasks).

    ``groups``: task grouping (:mod:`jaxrec.contrib.grouping`): ``G`` initialisations of the adapted leaves, each
    user adapting
    from the one with the lowest loss on their support set; the groups start apart (:meth:`Experiment.grouped_start`).

    ``inner_solver``: ``"sgd"`` (gradient steps at rate ``inner_lr``) or ``"newton"`` (:mod:`jaxrec.core.newton`: each
    inner step a Newton step on the MAP objective with the prior ``N(theta, diag(inner_lr))``, one step the exact
    ridge solution for a squared-error output layer; meant for a small adapted set, ``adapt="head/output"``) or
    ``"mixed"`` (the output layer solved by a Newton step at every inner step, the other adapted leaves taking
    gradient steps: ``jaxrec.newton(solve="head/output")``). The
    fine-tuning baseline adapts with the same solver, its prior variance tuned like a learning rate. The defaults
    ``adapt="auto"``, ``inner_solver="auto"``, ``inner_steps=None`` give one Newton step on the output layer for a
    model that has one (MeLU, NeuMF, GRU) and 5 gradient steps on the model's default adapted set otherwise (or
    with ``inner_solver="sgd"``); an explicit ``adapt="head/output"`` gets the Newton step unless a solver is named.
    :class:`Experiment` records the concrete values in its ``config``.

    ``devices``: None (one device) or a device count / "all" for a task-sharded mesh.
    """

    dataset: str = "ml-latest-small"
    data: str | None = None
    data_dir: str | None = None
    columns: Any = None
    sep: str | None = None
    implicit: bool = False
    implicit_threshold: float = 4.0
    scheme: str = "melu"
    split: str = "melu"
    support: int | None = None
    query: int | float | None = 10
    min_ratings: int | None = 13
    max_ratings: int | None = 100
    train_max_ratings: int | None = None
    train_subsample: bool = False
    support_buckets: tuple | None = (96,)
    history: int = 0
    model: str = "melu"
    model_kwargs: dict = dataclasses.field(
        default_factory=lambda: {
            "embed": 16,
            "hidden": [32, 32],
            "use_ids": ["item"],
            "interaction": None,
            "item_bias": True,
        }
    )
    algorithm: str = "metasgd"
    order: str = "second"
    adapt: str = "auto"
    inner_lr: float = 0.1
    inner_steps: int | None = None
    inner_l2: float = 0.0
    tune_inner_lr: bool = True
    meta_lr: float = 3e-4
    rate_lr: float | None = 3e-4
    rate_space: str = "linear"
    pretrain: bool | str = "bias"
    meta_params: str = "all"
    batch_size: int = 32
    epochs: int = 60
    resample_tasks: bool = True
    seed: int = 0
    devices: int | str | None = None
    baselines: tuple = BASELINES
    ks: tuple = (1, 3, 10)
    bootstrap: int = 1000
    eval_batch_size: int = 64
    val_frac: float = 0.1
    finetune_lrs: tuple = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    supervised_epochs: int = 5
    supervised_lr: float = 1e-3
    supervised_batch: int = 256
    bias_reg: tuple = (10.0, 5.0)
    item_dropout: float = 0.25
    groups: int = 1
    inner_solver: str = "auto"
    task_item_dropout: float = 0.0
    val_item_frac: float = 0.0

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them.

        A record written before a field existed is read as it ran: a missing field takes its value of that time
        (:data:`RECORD_DEFAULTS`), not today's default. Before ``inner_solver`` existed, ``adapt="head"`` on a model
        without decision layers (MF, linear, FM) adapted nothing; such a record is read with ``inner_steps=0``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ExperimentConfig field(s) {unknown}; known: {sorted(names)}")
        kwargs = {**{k: v for k, v in RECORD_DEFAULTS.items() if k not in d}, **d}
        if "inner_solver" not in d and kwargs.get("model", cls.model) in _HEADLESS and kwargs.get("adapt") == "head":
            logger.warning(
                "this %s record adapted no parameter (adapt='head'): read with inner_steps=0", kwargs["model"]
            )
            kwargs["inner_steps"] = 0
        for key in ("baselines", "ks", "finetune_lrs", "bias_reg", "support_buckets"):
            if key in kwargs and kwargs[key] is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def _inner_optimizer(solver: str):
    """The ``inner_optimizer`` of a (resolved) ``inner_solver``: None for gradient steps."""
    if solver == "newton":
        return newton()
    if solver == "mixed":
        return newton(solve=_MIXED_SOLVE)
    return None


def _check_config(c: ExperimentConfig) -> None:
    """The checks that need no data, so that a bad value fails before anything is loaded or fitted."""
    for name in ("item_dropout", "task_item_dropout", "val_item_frac"):
        if not 0.0 <= float(getattr(c, name)) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(c, name)}")
    if int(c.groups) < 1:
        raise ValueError(f"groups must be >= 1, got {c.groups}")
    if c.inner_solver not in INNER_SOLVERS:
        raise ValueError(f"inner_solver must be one of {INNER_SOLVERS}, got {c.inner_solver!r}")
    if int(c.groups) > 1 and c.algorithm == "reptile":
        raise ValueError("groups > 1 needs a meta-gradient algorithm (maml or metasgd), not reptile")


def _model_kwargs(kwargs: Mapping[str, Any]) -> dict:
    """JSON lists back to the tuples the (hashable) flax modules want."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


class Experiment:
    """The objects a config describes, built eagerly (data, split, tasks, model, trainer) or lazily (baselines).

    Attributes:
      config, dataset, split (:class:`~jaxrec.ColdStartSplit`), featurizer, spec, train_ratings and train_tasks
      (the meta-train ratings and tasks, validation users and validation items excluded), val_ratings and
      val_tasks (validation users of meta-train), val_item_ratings and val_item_tasks (the other meta-train users'
      ratings of the validation items; None without ``val_item_frac`` or without a user with enough of them),
      scenario_tasks (name -> TaskSet, non-empty scenarios only), model, loss_fn, adapt_filter, trainer
      (:class:`~jaxrec.MetaTrainer`), mesh.
    """

    def __init__(self, config: ExperimentConfig | None = None):
        self.config = config = config or ExperimentConfig()
        _check_config(config)
        self.dataset = self._load_dataset()
        self.split = cold_start_split(self.dataset, config.scheme, config.seed)
        logger.info("%s", self.split.summary())
        threshold = config.implicit_threshold if config.implicit else None
        train = self.split.train
        # validation items are new to the model: out of its vocabularies, as the new-item scenario's are
        is_val_item = np.isin(train["item"].to_numpy(), self._validation_items(train["item"].to_numpy()))
        self.featurizer = Featurizer.fit(self.dataset, train[~is_val_item], implicit_threshold=threshold)
        val_users = self._validation_users(train.loc[~is_val_item, "user"].to_numpy())
        is_val = np.isin(train["user"].to_numpy(), val_users)
        self.train_ratings = train[~is_val & ~is_val_item].reset_index(drop=True)
        self.val_ratings = train[is_val & ~is_val_item].reset_index(drop=True)
        self.val_item_ratings = train[~is_val & is_val_item].reset_index(drop=True)
        self.train_tasks = self._train_tasks(config.seed)
        self.val_tasks = self._tasks(self.val_ratings)
        self.val_item_tasks = None
        if len(self.val_item_ratings):
            tasks = self._tasks(self.val_item_ratings)
            if len(tasks):
                self.val_item_tasks = tasks
            else:
                logger.warning("no meta-train user has enough ratings of the validation items: none scored")
        if config.val_item_frac:
            logger.warning(
                "val_item_frac=%s: the newest meta-train items are held out of training, so this run is for choosing "
                "a configuration on validation, not for test figures (those items are unknown in every scenario)",
                config.val_item_frac,
            )
        self.scenario_tasks: dict[str, TaskSet] = {}
        for name in SCENARIOS:
            frame = self.split.scenarios.get(name)
            if frame is None or len(frame) == 0:
                continue
            tasks = self._tasks(frame)
            if len(tasks):
                self.scenario_tasks[name] = tasks
            else:
                logger.warning("scenario %r has no user with enough ratings for the task split; skipped", name)
        if len(self.train_tasks) == 0:
            raise DataError(f"no meta-train task: {self.train_tasks.summary()}")
        self.spec = self.train_tasks.spec  # the featurizer's spec with this run's ``history``
        self.model = models.create(config.model, self.spec, **_model_kwargs(config.model_kwargs))
        self.config = config = self._resolve_inner_loop(config)
        self.loss_fn = models.default_loss(self.model)
        self.apply_fn = self.model.apply
        self.adapt_filter = models.adapt_filter(config.adapt, self.model)
        self.inner_aux = l2_to_init(config.inner_l2) if config.inner_l2 else None
        self.inner_optimizer = _inner_optimizer(config.inner_solver)
        self.mesh = self._mesh()
        self.inner = InnerLoop(
            self.loss_fn,
            steps=config.inner_steps,
            order=config.order,
            solver=self.inner_optimizer,
            adapt_filter=self.adapt_filter,
            aux=self.inner_aux,
        )
        self.trainer = MetaTrainer(
            self.inner,
            inner_lr=config.inner_lr,
            algorithm=config.algorithm,
            optimizer=self._meta_optimizer(),
            mesh=self.mesh,
        )
        self._baselines = None
        self._inner_lr_resolved = False

    # -- construction helpers --------------------------------------------------------------------------------------

    def _resolve_inner_loop(self, c: ExperimentConfig) -> ExperimentConfig:
        """``c`` with ``adapt="auto"``, ``inner_solver="auto"`` and ``inner_steps=None`` made concrete for this model,
        so that the recorded config (metrics.json, checkpoints) says what ran.

        ``adapt="auto"``: the output layer (``"head/output"``) for a model that has one (MeLU, NeuMF, GRU), unless
        ``inner_solver="sgd"``; otherwise the model's default adapted set (``"default"``; MeLU's: the decision
        layers). ``inner_solver="auto"``: ``"newton"`` when the adapted set is ``"head/output"``, else ``"sgd"``.
        ``inner_steps=None``: 1 Newton step, or 5 gradient steps. An adapted set that selects no parameter of the
        model (the users would silently not adapt), or too many for the Newton step, is an error here, before any
        training."""
        rows = testing.synthetic_rows(self.spec, 2, jax.random.PRNGKey(0))  # host data: no parameters allocated
        shapes = jax.eval_shape(self.model.init, jax.random.PRNGKey(0), rows)
        flat = jax.tree_util.tree_flatten_with_path(shapes)[0]

        def selects(spec):
            predicate = models.adapt_filter(spec, self.model)
            return any(predicate(path, leaf) for path, leaf in flat)

        adapt, solver = c.adapt, c.inner_solver
        if solver == "mixed" and not selects("head/output"):
            raise ValueError(f"inner_solver='mixed' solves the output layer (head/output): model {c.model!r} has none")
        if adapt == "auto":
            if solver in ("auto", "newton") and selects("head/output"):
                adapt = "head/output"
            elif solver == "newton":
                raise ValueError(
                    f"inner_solver='newton' with adapt='auto': model {c.model!r} has no output layer (head/output); "
                    "name a small set of parameters to adapt"
                )
            else:
                adapt = "default"
        steps = c.inner_steps
        if not selects(adapt) and steps != 0:
            raise ValueError(f"adapt={adapt!r} selects no parameter of model {c.model!r}: no user would adapt")
        if solver == "auto":
            solver = "newton" if adapt == "head/output" else "sgd"
        if solver in ("newton", "mixed"):
            predicate = models.adapt_filter(adapt if solver == "newton" else _MIXED_SOLVE, self.model)
            size = sum(math.prod(leaf.shape) for path, leaf in flat if predicate(path, leaf))
            limit = newton().max_params
            if size > limit:
                raise ValueError(
                    f"inner_solver='newton' would adapt {size} parameters of model {c.model!r} (adapt={adapt!r}), "
                    f"more than {limit}: it forms their Hessian per user; adapt fewer, e.g. adapt='head/output'"
                )
        if steps is None:
            steps = 1 if solver == "newton" else 5
        return dataclasses.replace(c, adapt=adapt, inner_solver=solver, inner_steps=int(steps))

    def _load_dataset(self) -> Dataset:
        c = self.config
        if c.data is not None:
            return from_csv(c.data, columns=c.columns, sep=c.sep)
        return load(c.dataset, data_dir=c.data_dir)

    def _validation_users(self, train_users: np.ndarray) -> np.ndarray:
        users = np.unique(train_users)
        if self.config.val_frac <= 0:
            return users[:0]
        rng = np.random.default_rng([self.config.seed, 1])
        n = max(1, int(round(self.config.val_frac * len(users))))
        return np.sort(rng.permutation(users)[:n])

    def _validation_items(self, train_items: np.ndarray) -> np.ndarray:
        """The newest ``val_item_frac`` of the items of ``train_items`` (:func:`~jaxrec.data.tasks.newest_items`)."""
        if self.config.val_item_frac <= 0:
            return train_items[:0]
        items = np.unique(train_items)
        rng = np.random.default_rng([self.config.seed, 2])
        return items[newest_items(item_release_key(self.dataset)[items], self.config.val_item_frac, rng)]

    def _tasks(self, ratings, max_ratings: int | None | str = "config", seed: Any = None, subsample=None) -> TaskSet:
        c = self.config
        return build_tasks(
            ratings,
            self.featurizer,
            c.split,
            support=c.support,
            query=c.query,
            seed=c.seed if seed is None else seed,
            min_ratings=c.min_ratings,
            max_ratings=c.max_ratings if max_ratings == "config" else max_ratings,
            support_buckets=c.support_buckets,
            history=self.history,
            subsample=subsample,
            subsample_seed=c.seed,
        )

    def _train_tasks(self, seed: Any) -> TaskSet:
        c = self.config
        subsample = None
        if c.train_subsample and c.max_ratings is not None:
            subsample = (c.min_ratings or 1, c.max_ratings)
        return self._tasks(
            self.train_ratings, max_ratings=c.train_max_ratings or _NO_CAP, seed=seed, subsample=subsample
        )

    @property
    def history(self) -> int:
        """Items of history per row: ``config.history``, or 10 for ``model="gru"`` when it is 0 (the GRU needs one)."""
        if self.config.history:
            return int(self.config.history)
        return 10 if self.config.model == "gru" else 0

    def _meta_optimizer(self) -> optax.GradientTransformation:
        """Adam(``meta_lr``) on the parameters selected by ``meta_params``, zero updates for the rest; Meta-SGD's
        per-parameter inner rates get Adam(``rate_lr``) (default ``meta_lr``)."""
        params_opt = self._params_optimizer()
        if self.config.algorithm != "metasgd" or self.config.rate_lr is None:
            return params_opt

        def labels(params):
            if isinstance(params, MetaSGDParams):
                return MetaSGDParams(
                    jax.tree.map(lambda _: "params", params.params), jax.tree.map(lambda _: "rates", params.inner_lr)
                )
            return jax.tree.map(lambda _: "params", params)

        if self.config.rate_space not in ("linear", "log"):
            raise ValueError(f"rate_space must be 'linear' or 'log', got {self.config.rate_space!r}")
        rates_opt = optax.adam(self.config.rate_lr)
        if self.config.rate_space == "log":
            rates_opt = log_space(rates_opt)
        return optax.multi_transform({"params": params_opt, "rates": rates_opt}, labels)

    def _params_optimizer(self) -> optax.GradientTransformation:
        adam = optax.adam(self.config.meta_lr)
        if self.config.meta_params == "all":
            return adam
        chosen = models.adapt_filter(self.config.meta_params, self.model)

        def mask(params, keep=True):
            return jax.tree_util.tree_map_with_path(lambda path, leaf: bool(chosen(path, leaf)) == keep, params)

        return optax.chain(optax.masked(adam, mask), optax.masked(optax.set_to_zero(), lambda p: mask(p, False)))

    def _mesh(self):
        devices = self.config.devices
        if devices is None:
            return None
        if devices == "all":
            return make_mesh()
        return make_mesh(int(devices))

    # -- training --------------------------------------------------------------------------------------------------

    def random_params(self, key: jax.Array | None = None) -> Any:
        """Fresh random model variables ``{"params": ...}`` from ``key`` (default: the config seed)."""
        return models.init_params(self.model, self.spec, jax.random.key(self.config.seed) if key is None else key)

    @functools.cached_property
    def start(self) -> str:
        """Where meta-training starts: ``"bias"`` (:meth:`bias_start`; ``pretrain="bias"`` and a model with an item
        bias table and a head, e.g. MeLU with ``item_bias``), ``"supervised"`` (``pretrain=True``, or ``"bias"`` with
        any other model) or ``"random"`` (``pretrain=False``)."""
        pretrain = self.config.pretrain
        if pretrain not in (True, False, "bias"):
            raise ValueError(f"pretrain must be True, False or 'bias', got {pretrain!r}")
        if pretrain == "bias":
            rows = testing.synthetic_rows(self.spec, 2, jax.random.key(0))
            shapes = jax.eval_shape(self.model.init, jax.random.key(0), rows)["params"]
            if _has_bias_start(shapes):
                return "bias"
            return "supervised"
        return "supervised" if pretrain else "random"

    def init_params(self) -> Any:
        """The meta-learner's initialisation (see :attr:`start`): the bias model (:meth:`bias_start`), the supervised
        model of the ``no_adapt`` baseline (trained once, cached with the baselines) or :meth:`random_params`."""
        start = self.start
        if start == "supervised":
            params = self.baselines().supervised_params
        else:
            params = self.random_params()
            params = self.bias_start(params) if start == "bias" else params
        return self.grouped_start(params) if self.config.groups > 1 else params

    def grouped_start(self, params: Any) -> GroupedParams:
        """``config.groups`` initialisations of the adapted leaves of ``params``
        (:func:`jaxrec.contrib.grouping.group_params`),
        set apart so that users split between them from the first step: group ``g`` adds to the head's output bias
        the ``(g + 1/2) / G`` quantile of the user offsets ``b_u`` of the bias model fitted on the meta-train ratings
        (so that, from the bias or the supervised start, whose output bias is near ``mu``, each user is nearest
        the group of their own rating level before adaptation). Every other adapted leaf that ``params`` holds at
        its random initial value (that of :meth:`random_params`) gets fresh random values in groups ``g >= 1``
        (key ``fold_in(key(seed), g)``); a leaf that was set otherwise (trained, or the bias start's ``b_i`` table
        and zero output kernel) is copied to every group. Needs an adapted ``output/bias`` leaf (MeLU's head)."""
        groups = int(self.config.groups)
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
        key = jax.random.key(self.config.seed)
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
        """``params`` started at the classical bias model ``mu + b_i``: the item bias table (``bias_embed_item``,
        e.g. MeLU's ``item_bias``) holds ``b_i``, the head's output bias ``mu`` (both from :meth:`bias_init`) and its
        output kernel 0, so the head adds nothing but its output bias, which then plays the user offset ``b_u``."""
        inner = params["params"]
        if not _has_bias_start(inner):
            raise ValueError(f"bias start: model {self.config.model!r} has no bias_embed_item table and head")
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
        """``(mu, b_i [item vocab])`` of :func:`jaxrec.evaluation.baselines.fit_bias_model` on the meta-train ratings
        (validation
        users and items excluded), with the ``bias_reg`` ridge strengths: fitted once, and the ``bias`` baseline's
        fit too."""
        mu, item_bias, _ = self._bias_fit
        return mu, item_bias

    @functools.cached_property
    def _bias_fit(self) -> tuple[float, np.ndarray, np.ndarray]:
        feat, train = self.featurizer, self.train_ratings
        rows = feat.transform(train)
        item_reg, user_reg = (float(x) for x in self.config.bias_reg)
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
        """A fresh :class:`~jaxrec.MetaTrainState` (Meta-SGD: params wrapped with per-parameter rates)."""
        self.resolve_inner_lr()
        return self.trainer.init(self.init_params())

    def resolve_inner_lr(self) -> float:
        """With ``tune_inner_lr``: set ``config.inner_lr`` (and the trainer's) to the fine-tuning rate chosen on the
        validation users (:func:`jaxrec.evaluation.baselines.tune_finetune_lr`, never a test scenario); Meta-SGD's
        rates start
        there. Not from the bias start (:attr:`start`): that rate was tuned for the supervised model, a different
        one, so ``inner_lr`` is used as it is. Idempotent; returns the inner rate in use."""
        c = self.config
        if c.tune_inner_lr and self.start != "bias" and len(self.val_tasks) and not self._inner_lr_resolved:
            lr = float(self.baselines().finetune_lr)
            if lr > 0:
                self.config = dataclasses.replace(c, inner_lr=lr)
                self.trainer.inner_lr = lr
            self._inner_lr_resolved = True
        return float(self.config.inner_lr)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_tasks.batch_plan(self.config.batch_size, None))

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    def batches(self, start_step: int = 0) -> Iterator[TaskBatch]:
        """The endless, deterministic meta-train stream of the config seed, starting after ``start_step`` steps.

        Epoch ``e`` shuffles with ``default_rng([seed, e])``; batch ``i`` of it is built (negatives sampled) with
        ``default_rng([seed, e, i])``; with ``resample_tasks`` epoch ``e > 0`` splits each user's ratings with seed
        ``[seed, e]``; with ``item_dropout`` a fraction of the batch's item ids become the OOV slot, with
        ``task_item_dropout`` a fraction of its tasks' (:func:`jaxrec.data.augment.drop_item_ids`, rng ``[seed, e, i,
        1]``).
        The stream from ``start_step`` therefore equals the full stream with its first ``start_step`` batches dropped,
        without building them.
        """
        seed, size = self.config.seed, self.config.batch_size
        per_epoch = self.steps_per_epoch
        epoch, offset = divmod(int(start_step), per_epoch)
        while True:
            tasks = self.epoch_tasks(epoch)
            plan = tasks.batch_plan(size, np.random.default_rng([seed, epoch]))
            for i in range(offset, len(plan)):
                batch = tasks.make_batch(plan[i], np.random.default_rng([seed, epoch, i]))
                if self.config.item_dropout or self.config.task_item_dropout:
                    rng = np.random.default_rng([seed, epoch, i, 1])
                    batch = drop_item_ids(batch, self.config.item_dropout, rng, task_rate=self.config.task_item_dropout)
                yield batch
            epoch, offset = epoch + 1, 0

    def epoch_tasks(self, epoch: int) -> TaskSet:
        """The meta-train tasks of ``epoch``: ``train_tasks``, or with ``resample_tasks`` (and ``epoch > 0``) the
        same users split afresh with seed ``[seed, epoch]``. The users, support and query sizes, and so the batch
        shapes, are those of ``train_tasks``: only which ratings are support and which are query changes (and, for
        users subsampled by ``train_subsample``, which of their ratings the task holds). Built afresh for each epoch
        (a :func:`~jaxrec.data.tasks.build_tasks` call over the meta-train ratings)."""
        if not self.config.resample_tasks or epoch == 0:
            return self.train_tasks
        tasks = self._train_tasks([self.config.seed, epoch])
        # task sizes depend only on rating counts (and the subsample sizes, drawn with the config seed)
        base = self.train_tasks
        if not all(np.array_equal(getattr(tasks, a), getattr(base, a)) for a in ("users", "support_pad", "query_pad")):
            raise RuntimeError("resampled meta-train tasks changed their users or shapes")
        return tasks

    def train_step(self, state: MetaTrainState, batch: TaskBatch) -> tuple[MetaTrainState, dict]:
        """One meta-step (``state`` is donated; use the returned one)."""
        self.resolve_inner_lr()  # a resumed run skips init_state
        return self.trainer.step(state, batch)

    def train(self, state: MetaTrainState | None = None, steps: int | None = None) -> MetaTrainState:
        """Run the remaining steps (default: ``total_steps``) from ``state``; resumes at ``state.step``."""
        state = self.init_state() if state is None else state
        start = int(state.step)
        stop = self.total_steps if steps is None else start + int(steps)
        for _, batch in zip(range(start, stop), self.batches(start), strict=False):
            state, _ = self.train_step(state, batch)
        return state

    # -- evaluation ------------------------------------------------------------------------------------------------

    def baselines(self):
        """The fitted baselines (:class:`jaxrec.evaluation.baselines.Baselines`), trained once and cached."""
        if self._baselines is None:
            self._baselines = fit_baselines(self)
        return self._baselines

    def evaluate(self, params: Any, *, method_name: str = "maml", return_stats: bool = False) -> dict | tuple:
        """``{scenario: {method: metrics}}`` for every non-empty scenario (see :func:`jaxrec.evaluation.predict`); with
        ``return_stats`` also ``{scenario: {method: per-user statistics}}`` (to pool several splits)."""
        self.resolve_inner_lr()
        return evaluate_experiment(self, params, method_name=method_name, return_stats=return_stats)

    def validate(
        self, params: Any, *, baselines: bool = True, items: bool = False, return_stats: bool = False
    ) -> dict | tuple:
        """``{method: summary}`` on the validation users (held out of meta-training and of the test scenarios):
        the score to tune a configuration on. The fine-tuning rate was itself chosen on these users, so its
        ``finetune`` figure is optimistic, never pessimistic. ``items``: on the validation items' tasks instead
        (``val_item_frac``; new-item tasks). ``return_stats``: also the per-user statistics (to pool splits)."""
        if items and self.val_item_tasks is None:
            raise ValueError("no validation item tasks: set val_item_frac > 0 (and have users who rated those items)")
        self.resolve_inner_lr()
        methods = experiment_predictors(self, params)
        if not baselines:
            methods = {"maml": methods["maml"]}
        c = self.config
        return evaluate_methods(
            methods,
            self.val_item_tasks if items else self.val_tasks,
            ks=c.ks,
            batch_size=c.eval_batch_size,
            mesh=self.mesh,
            resamples=c.bootstrap,
            seed=c.seed,
            return_stats=return_stats,
        )

    def metrics_document(self, params: Any) -> dict:
        """The metrics.json document: ``{"dataset": ..., "config": {...}, "scenarios": {...}}``."""
        return {
            "dataset": self.dataset.name,
            "config": self.config.to_dict(),
            "scenarios": self.evaluate(params),
        }


def _has_bias_start(params: Mapping[str, Any]) -> bool:
    """Whether ``params`` (a model's ``"params"`` collection) can start at the bias model: an item bias table
    ``bias_embed_item`` and a head with an ``output`` layer."""
    return "bias_embed_item" in params and "output" in params.get("head", {})


def tune(base: ExperimentConfig, variants: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Train ``base`` with each variant's overrides and score it on the validation users only (never a test
    scenario): ``{name: {"overrides", "val_mae", "val": {method: mae}, "seconds"}}``. Variants must not change the
    data, split, validation slices (``val_frac``, ``val_item_frac``) or model (the baselines are fitted once and
    shared)."""
    import time

    shared = None
    out = {}
    for name, overrides in variants.items():
        experiment = Experiment(dataclasses.replace(base, **overrides))
        if shared is not None:
            experiment._baselines = shared
        start = time.perf_counter()
        state = experiment.train()
        scores = experiment.validate(state.params, baselines=shared is None)
        shared = experiment.baselines()
        out[name] = {
            "overrides": dict(overrides),
            "inner_lr": experiment.config.inner_lr,
            "val_mae": scores["maml"]["mae"],
            "val": {m: r["mae"] for m, r in scores.items()},
            "seconds": time.perf_counter() - start,
        }
        logger.info("tune %s: %s", name, out[name])
    return out
