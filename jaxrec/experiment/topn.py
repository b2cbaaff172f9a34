"""A top-N experiment from implicit feedback, end to end: interactions, user split, K-shot tasks with sampled
negatives, a meta-learned ranker, retrieval baselines tuned on validation users, full-catalogue evaluation.

:class:`TopNExperiment` is what :class:`~jaxrec.experiment.run.TrainingRun` and the ``jaxrec train`` command run
when ``feedback="implicit"``; it has the interface of :class:`~jaxrec.experiment.protocol.Experiment` (state,
batches, checkpoint record, metrics document), so checkpoints, resume and signals work the same way.

Protocol:

* users are split into meta-train, validation (``val_frac``) and new users (``test_frac``)
  (:func:`~jaxrec.data.topn.topn_split`); the featurizer and every baseline see the meta-train users only;
* a new user's task is their first ``shots`` interactions (support) and their next ``query_cap`` (query);
* every method recommends from the whole catalogue, the support items excluded
  (:mod:`jaxrec.evaluation.topn`);
* every choice is made on the validation users (never on the new users), by Recall@20 or the run's selection
  cut-off: each baseline's hyper-parameters, the fine-tuning rate, the support's recency weighting per method,
  the hybrids' weights and the meta-training state kept (``select_epoch``); the choices about new items on the
  validation new items.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from tqdm.auto import tqdm

from jaxrec import models
from jaxrec.core.batch import TaskBatch, zero_padding
from jaxrec.core.inner import InnerLoop
from jaxrec.core.metasgd import split_meta_params
from jaxrec.core.trainer import MetaTrainState, run_steps
from jaxrec.data import DataError, Dataset, from_dataframe, load, read_log
from jaxrec.data.augment import id_dropout
from jaxrec.data.stream import StepBatches, stream
from jaxrec.data.topn import (
    NegativeSampler,
    TopNTaskSet,
    implicit_featurizer,
    topn_split,
    topn_tasks,
    warm_frame,
)
from jaxrec.evaluation import retrieval_baselines as rb
from jaxrec.evaluation.hybrid import hybrid_scores, hybrid_topk
from jaxrec.evaluation.topn import (
    Catalogue,
    _dense_rank,
    candidate_topk,
    dot_ranker,
    evaluate_rankers,
    fold_in_weights,
    is_user_side,
    model_ranker,
    model_scorer,
    recency_weights,
    rerank_ranker,
    user_orders,
)
from jaxrec.experiment.config import HYBRID_PARTNERS, ExperimentConfig, resolve, with_dataset, with_feature_tables
from jaxrec.experiment.protocol import CATALOGUE_LOSSES, Learner, config_mesh, trained_catalogue
from jaxrec.experiment.reranker_record import reranker_config
from jaxrec.experiment.selection import EpochSelector
from jaxrec.models.common import categorical_fields, multi_hot_fields

__all__ = [
    "TopNExperiment",
    "implicit_dataset",
    "BASELINE_GRIDS",
    "BASELINE_REFINEMENTS",
    "HYBRID_WEIGHTS",
    "NEW_ITEM_ONLY",
]

logger = logging.getLogger(__name__)

#: the hyper-parameters tried on the validation users for each baseline
#: (widened each time half the splits of ml-100k and ml-latest-small chose an edge of a grid: EASE l2 2000, 200
#: neighbours and ALS l2 100 / alpha 10 at first; then 500 neighbours, shrink 10 and ALS alpha 1); item-kNN's TF-IDF
#: weighting of the users is the one a practitioner's item-kNN (the ``implicit`` library's) applies
BASELINE_GRIDS: dict[str, list[dict]] = {
    "popular": [{}],
    "itemknn": [
        {"neighbours": n, "shrink": s, "weighting": w}
        for w in ("none", "tfidf")
        for n in (20, 50, 100, 200, 500, 1000, 2000)
        for s in (0.0, 10.0, 50.0, 200.0)
    ],
    "ease": [{"l2": l2} for l2 in (10.0, 50.0, 200.0, 500.0, 2000.0, 5000.0, 20000.0)],
    "mf": [
        {"factors": 64, "l2": l2, "alpha": a}
        for l2 in (1.0, 10.0, 100.0, 1000.0)
        for a in (0.1, 0.3, 1.0, 3.0, 10.0, 40.0)
    ],
    "content": [{"idf": True}, {"idf": False}],
}
#: tried on top of a baseline's choice from :data:`BASELINE_GRIDS`, one at a time, kept when validation rises (a
#: second stage rather than a product with the grid: ALS's exponent of the popularity weighting of missing pairs,
#: :func:`~jaxrec.evaluation.retrieval_baselines.missing_weights`, would triple its 24 fits)
BASELINE_REFINEMENTS: dict[str, list[dict]] = {"mf": [{"missing_exponent": b} for b in (-0.25, -0.5, -1.0)]}
#: the scenario of the new-item users whose lists hold the new items only (:meth:`TopNExperiment.evaluate`)
NEW_ITEM_ONLY = "new_item_only"
FINETUNE_RATES = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
#: the weights of a hybrid's second method tried on the validation users (:mod:`jaxrec.evaluation.hybrid`)
HYBRID_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: the cut-off validation choices are made at, when the run reports it and it leaves items out of a list
_SELECT_AT = 20
#: the memory the kept tie orders of the dense rankers may take (:meth:`TopNExperiment._tie_order`)
_TIE_ORDER_BYTES = 256 * 2**20


def implicit_dataset(config: ExperimentConfig, dataset: Dataset | None = None) -> Dataset:
    """Read the interactions a config names, as implicit feedback.

    A file (``--data``) is read with ``feedback="implicit"``; a known (rated) dataset becomes one interaction per
    rating (``>= positive_threshold`` when set), its side tables kept. A ``dataset`` given in memory is used in place
    of the data the config names: as it is when it holds interactions, converted as a known dataset is when rated.

    Args:
      config: the config.
      dataset: a :class:`~jaxrec.data.Dataset` in memory, or None.

    Returns:
      The implicit :class:`~jaxrec.data.Dataset`.

    Raises:
      ValueError: if ``dataset`` holds interactions already and the config sets ``positive_threshold`` (which reads
        ratings).
    """
    data = config.data
    if dataset is not None and not dataset.explicit:
        if data.positive_threshold is not None:
            raise ValueError(
                f"positive_threshold={data.positive_threshold:g} reads ratings, and the dataset {dataset.name!r} holds "
                "interactions already (read with feedback='implicit'): leave it unset, or give the rated dataset"
            )
        return dataset
    if dataset is None and data.path is not None:
        return read_log(
            data.path,
            data.columns,
            sep=data.sep,
            feedback="implicit",
            positive_threshold=data.positive_threshold,
            encoding=data.encoding,
        )
    rated = dataset if dataset is not None else load(data.dataset, data_dir=data.data_dir)
    if rated.report.get("duplicates_removed"):
        logger.warning(
            "%s: read as ratings, the log kept the latest of %d duplicate (user, item) row(s); as interactions they "
            "would add up to each pair's weight: read it with feedback='implicit' (jaxrec.data.read_log) to keep them",
            rated.name,
            rated.report["duplicates_removed"],
        )
    frame = rated.ratings.assign(user=rated.user_ids[rated.ratings["user"]], item=rated.item_ids[rated.ratings["item"]])
    return from_dataframe(
        frame,
        rating="rating",
        timestamp="timestamp" if rated.has_timestamps else None,
        user_features=rated.users.set_index("raw_id"),
        item_features=rated.items.set_index("raw_id"),
        feedback="implicit",
        positive_threshold=data.positive_threshold,
        name=rated.name,
        source=rated.source,
    )


def _support_pairs(tasks: TopNTaskSet) -> pd.DataFrame:
    """The (user, item) pairs of the tasks' support rows: what an evaluation user's negatives must avoid (their
    query items are the future, unknown when they are adapted)."""
    support, _ = tasks.item_codes(np.arange(len(tasks)))
    users = np.repeat(tasks.users, support.shape[1])
    items = support.reshape(-1)
    return pd.DataFrame({"user": users[items >= 0], "item": items[items >= 0]})


#: a baseline's tuning is warned of, with its projected time, where its first fit says that the grid takes this long
SLOW_TUNING_SECONDS = 600.0


def _warn_of_long_tuning(name: str, first: float, fits: int) -> None:
    """Warn that tuning the baseline ``name`` will take long where its first fit (and validation) took ``first``
    seconds of its ``fits``: on a large catalogue the grids of item-kNN and ALS run for an hour or more, and a bar
    that moves once every few minutes does not say so."""
    projected = first * fits
    if fits < 2 or projected < SLOW_TUNING_SECONDS:
        return
    logger.warning(
        "baseline %s: its first fit and validation took %.0f s (compiles included), so its tuning's %d fits take up "
        "to about %.0f min (leave %s out of topn_baselines, --topn-baselines, to skip it)",
        name,
        first,
        fits,
        projected / 60,
        name,
    )


class TopNExperiment:
    """Everything a ``feedback="implicit"`` config describes (see the module docstring).

    Args:
      config: the config; ``"auto"`` settings are resolved first.
      dataset: a :class:`~jaxrec.data.Dataset` in memory (:func:`~jaxrec.data.from_dataframe`) to use in place of
        the data the config names (:func:`implicit_dataset`); the config then records its name.

    Attributes:
      config: the resolved config.
      dataset: the implicit :class:`~jaxrec.data.Dataset`.
      data_in_memory: the dataset was given in memory (a checkpoint records it: restoring needs it again).
      split: the :class:`~jaxrec.data.topn.TopNSplit`.
      featurizer: fitted on the meta-train users' interactions.
      spec: the feature spec of the rows.
      train_tasks: meta-train tasks (epoch 0).
      val_tasks: validation users' tasks.
      scenario_tasks: ``{"new_user": ..., "warm": ...}``: new users' first ``shots`` interactions and their next
        ones; warm users' ``shots`` latest training interactions and their held-out latest ones (every method
        sees the same support; no list holds the user's other training items, which no query holds).
        With ``new_item_frac``, ``"new_item"``: the meta-train users' latest training interactions as support and
        their interactions with the new items as query, ranked over the whole catalogue; and
        ``"new_item_only"``: the same tasks, each list drawn from the new items only.
      catalogue: the :class:`~jaxrec.evaluation.topn.Catalogue` of every item.
      model, inner, trainer: the model, its inner loop (the ranking loss) and the meta-trainer.
      progress: show progress bars (tqdm, on stderr) over the ALS start's sweeps, each baseline's tuning fits,
        the recency tuning's validation passes and each scenario's evaluation; off unless set (the command line
        sets it: on a large catalogue the tuning can take longer than the training).

    Raises:
      DataError: if the data cannot be read or yields no meta-train or evaluation task.
    """

    progress: bool = False

    def __init__(self, config: ExperimentConfig, dataset: Dataset | None = None):
        if config.data.feedback != "implicit":
            raise ValueError(
                f"TopNExperiment is the top-N protocol of implicit feedback: the config has feedback="
                f"{config.data.feedback!r}; set feedback='implicit' (jaxrec.experiment.build_experiment(config) picks "
                "the protocol a config asks for)"
            )
        self.config = config = resolve(config if dataset is None else with_dataset(config, dataset))
        if config.topn.rerank:  # a model that cannot re-rank is refused now, not after meta-training the retriever
            try:
                reranker_config(config)
            except ValueError as e:
                able = [name for name in sorted(models.MODELS) if _can_rerank(config, name)]
                raise ValueError(
                    f"rerank={config.topn.rerank!r}: this model cannot be meta-trained on top-N tasks to re-rank them "
                    f"({e}); models that can: {', '.join(able)}"
                ) from None
        top = config.topn
        self.dataset = with_feature_tables(implicit_dataset(config, dataset), config.data)
        self._given_dataset = dataset  # as given (rated or not): what an experiment of this config reads again
        logger.info("%s", self.dataset.summary())
        self.split = topn_split(
            self.dataset,
            test_frac=top.test_frac,
            val_frac=config.protocol.val_frac,
            warm_frac=top.warm_frac,
            new_item_frac=top.new_item_frac,
            val_new_item_frac=config.protocol.val_item_frac,
            seed=config.seed,
        )
        logger.info("%s", self.split.summary())
        n_items = self.dataset.n_items
        if n_items < 2:
            raise DataError(f"{self.dataset.source}: a catalogue of {n_items} item(s); top-N needs at least two")
        # the held-out items (new and validation new items): every user's interactions with them outside the
        # meta-train users were dropped from the split, so a list that holds one would count it a miss, whatever
        # the user did; they are ranked only where the queries hold them (the new-item scenarios)
        held = np.union1d(self.split.new_items, self.split.validation_new_items).astype(np.int32)
        self._never_ranked: np.ndarray | None = held if len(held) else None
        # the items a new user's list can hold: the catalogue less the held-out items and the user's support
        rankable = n_items - len(held) - top.shots
        self.select_at = selection_cutoff(top.topn_ks, rankable)
        if 0 < rankable <= max(top.topn_ks):  # (none rankable: refused below, with the reason)
            logger.warning(
                "%s: the cut-offs %s reach every item a new user can be recommended (%d items, %d of them held out as "
                "new, less a support of %d): at such a cut-off every list holds every query item, so recall and HR "
                "are 1 for every method; choices are made by %s (pass smaller --topn-ks)",
                self.dataset.source,
                ", ".join(str(k) for k in top.topn_ks if k >= rankable),
                n_items,
                len(held),
                top.shots,
                self.select_metric,
            )
        self.featurizer = implicit_featurizer(self.dataset, self.split.train)
        self.spec = dataclasses.replace(self.featurizer.spec, history=config.history())
        if top.new_item_frac > 0 and not self.featurizer.item_features()[0].any():  # keys, or keys of no value
            raise DataError(
                f"{self.dataset.source}: new_item_frac={top.new_item_frac:g} holds out new items, but the log has no "
                "item features: a new item has no interaction, so its features are all a model can score it from, "
                "and every new item would score alike. Give item features (--item-features FILE; from Python "
                "from_dataframe(..., item_features=...)) or leave new_item_frac at 0"
            )
        sampler = NegativeSampler.fit(self.split.train, n_items, count=top.negatives, kind=top.sampler)
        self.train_sampler = sampler
        self.train_tasks = self._train_tasks(config.training_seed)
        if len(self.train_tasks) == 0:
            raise DataError(f"no meta-train task: {self.train_tasks.summary()}; a task needs two interactions")
        self.val_tasks = self._eval_tasks(self.split.validation)
        if len(self.val_tasks) == 0:  # every choice is made on them: refused before any training, not after it
            users = self.split.validation["user"].nunique()
            raise DataError(
                f"{self.dataset.source}: none of the {users} validation user(s) has more than {top.shots} "
                "interactions (a support of --shots and a query to score); lower --shots or raise --val-frac"
            )
        self.scenario_tasks = {}
        for name, frame in self.split.scenarios.items():
            tasks = self._scenario_tasks(name, frame)
            if len(tasks):
                self.scenario_tasks[name] = tasks
            else:
                logger.warning("scenario %r has no user with more than %d interactions; skipped", name, top.shots)
        self.val_new_item_tasks = None
        if self.split.validation_new_item is not None:
            tasks = self._scenario_tasks("validation new_item", self.split.validation_new_item)
            if len(tasks):
                self.val_new_item_tasks = tasks
            else:
                logger.warning("no meta-train user with the validation new items and %d training ones", top.shots)
        # an evaluation user's negatives avoid the training interactions and their own support items only
        evaluated = [self.val_tasks, *self.scenario_tasks.values(), self.val_new_item_tasks]
        avoid = [_support_pairs(t) for t in evaluated if t is not None and len(t)]
        eval_sampler = NegativeSampler.fit(
            self.split.train, n_items, count=top.negatives, kind=top.sampler, avoid=avoid
        )
        self.val_tasks = dataclasses.replace(self.val_tasks, sampler=eval_sampler)
        self.scenario_tasks = {k: dataclasses.replace(t, sampler=eval_sampler) for k, t in self.scenario_tasks.items()}
        if self.val_new_item_tasks is not None:
            self.val_new_item_tasks = dataclasses.replace(self.val_new_item_tasks, sampler=eval_sampler)
        if "new_item" in self.scenario_tasks:  # the same users, ranking the new items only
            self.scenario_tasks[NEW_ITEM_ONLY] = self.scenario_tasks["new_item"]
        counts = np.bincount(self.split.train["item"].to_numpy(), minlength=n_items)
        self.item_counts = counts
        popularity = counts / max(self.split.stats["train_users"], 1)
        self.catalogue = Catalogue.build(self.featurizer, popularity, chunk=top.catalogue_chunk)
        self.mesh = config_mesh(config)
        learner = Learner.build(config, self.spec, mesh=self.mesh, catalogue=trained_catalogue(self.featurizer))
        self.model, self.inner, self.trainer = learner.model, learner.inner, learner.trainer
        self.loss_fn, self.apply_fn, self.adapt_filter = self.inner.loss_fn, self.model.apply, self.inner.adapt_filter
        self._tuned: dict[str, Any] = {"inner_lr": float(config.meta.inner_lr)}
        self._baselines: dict | None = None
        self._baseline_cache: dict[str, Method | None] = {}  # each baseline tuned once, when first asked for
        self._baseline_hybrids: dict | None = None
        self._meta_hybrid: tuple[Any, Method] | None = None  # (the parameters it was tuned for, the hybrid)
        self._meta_method: tuple[Any, Method] | None = None  # (the parameters, the meta method at its recency)
        # whether the support rows being ranked are in time order (a new user's first interactions), which the
        # recency weighting reads: a warm or new-item task's support is a user's latest interactions, unordered
        self._support_in_time = True
        # while scoring a scenario of meta-train users (warm, new items): each user's items outside its queries (a
        # user-item pair is one interaction), ``(indptr, items, width)`` of :meth:`_known_items`; None elsewhere
        self._known: tuple[np.ndarray, np.ndarray, int] | None = None
        if top.rerank and top.rerank_candidates >= n_items:
            logger.warning(
                "rerank_candidates=%d is the whole catalogue (%d items) or more: the re-ranker scores every item, "
                "there is no retrieval stage",
                top.rerank_candidates,
                n_items,
            )
        self._tie_orders: collections.OrderedDict[bytes, jax.Array] = collections.OrderedDict()

    # -- tasks -----------------------------------------------------------------------------------------------------

    def _scenario_tasks(self, name: str, frame: pd.DataFrame) -> TopNTaskSet:
        """A scenario's tasks; for held-out interactions of meta-train users (``warm``, the new items), each user's
        latest ``shots`` training interactions are the support and the held-out ones the query."""
        shots = self.config.topn.shots
        if name == "new_user":
            return self._eval_tasks(frame)
        held_users = frame["user"].nunique()
        frame = warm_frame(self.split.train, frame, shots, self.config.seed)
        short = held_users - frame["user"].nunique()
        if short:
            logger.info("%s: %d user(s) with fewer than %d training interactions left out", name, short, shots)
        tasks = self._eval_tasks(frame)
        tasks.stats["users_dropped"] = int(tasks.stats.get("users_dropped", 0) + short)
        return tasks

    def _train_tasks(self, seed: Any) -> TopNTaskSet:
        top = self.config.topn
        tasks = topn_tasks(
            self.split.train,
            self.featurizer,
            self.train_sampler,
            shots=top.shots,
            query=top.train_query,
            seed=seed,
            train=True,
            size_seed=self.config.seed,
            history=self.config.history(),
            order=top.train_order if self.dataset.has_timestamps else "random",
        )
        # a loss over the whole catalogue reads no sampled negatives: training draws none where no loss does. The
        # non-meta model (finetune, no_adapt) trains the inner loss on the query rows too, so they are read where
        # the inner loss reads them
        inner = top.ranking_loss not in CATALOGUE_LOSSES
        read = (inner, inner or (top.query_loss or top.ranking_loss) not in CATALOGUE_LOSSES)
        return dataclasses.replace(tasks, negatives_read=read)

    def _eval_tasks(self, frame: pd.DataFrame) -> TopNTaskSet:
        top = self.config.topn
        return topn_tasks(
            frame,
            self.featurizer,
            self.train_sampler,
            shots=top.shots,
            query=top.query_cap,
            seed=self.config.seed,
            history=self.config.history(),
        )

    def epoch_tasks(self, epoch: int) -> TopNTaskSet:
        """The meta-train tasks of an epoch: epoch 0's, or with ``resample_tasks`` the users' interactions drawn
        afresh (seed ``[seed, epoch]``), the same users and shapes."""
        if not self.config.meta.resample_tasks or epoch == 0:
            return self.train_tasks
        return self._train_tasks([self.config.training_seed, epoch])

    @property
    def steps_per_epoch(self) -> int:
        """Meta-steps per epoch."""
        return len(self.train_tasks.batch_plan(self.config.meta.batch_size, None))

    @property
    def total_steps(self) -> int:
        """Meta-steps of the whole run."""
        return self.steps_per_epoch * self.config.meta.epochs

    def batches(self, start_step: int = 0) -> Iterator[TaskBatch]:
        """The endless, deterministic meta-train stream from ``start_step`` (:mod:`jaxrec.data.stream`).

        With a new-item scenario (``new_item_frac > 0``), ``item_dropout`` / ``task_item_dropout`` of the positive
        rows' (or of whole tasks') item ids become the unknown slot (DropoutNet,
        :func:`jaxrec.data.augment.drop_item_ids`), so that the item tower learns to score an item from its features
        alone: how a new item reaches the top-N. The sampled negatives' ids are dropped at the same rates (and the
        exact ALS loss counts the catalogue's id-less vectors, :func:`~jaxrec.experiment.protocol.exact_als_loss`),
        so that an unknown id is no sign of a positive. Without one, no id is dropped (every item is known).
        """
        meta = self.config.meta
        new_items = self.config.topn.new_item_frac > 0
        transform = id_dropout(meta.item_dropout, meta.task_item_dropout, negatives=True) if new_items else None
        batch_at = StepBatches(self.epoch_tasks, meta.batch_size, self.config.training_seed, transform=transform)
        return stream(batch_at, start=start_step, device=None)

    # -- state -----------------------------------------------------------------------------------------------------

    def random_params(self, key: jax.Array | None = None) -> Any:
        """Fresh random model variables (key ``key(config.training_seed)`` by default)."""
        key = jax.random.key(self.config.training_seed) if key is None else key
        return models.init_params(self.model, self.spec, key)

    def popularity_start(self, params: Any) -> Any:
        """``params`` with the item bias table at the centred log popularity of the training items.

        ``log p_i`` is the logit of the best user-independent softmax model, so meta-training starts at the
        popularity ranking (the ``popular`` baseline) and spends its steps on what is personal.
        """
        inner = params["params"]
        if "bias_embed_item" not in inner:
            return params
        slots = self.featurizer.item_index[:-1]
        table = np.zeros(self.spec.categorical["item"], np.float64)
        np.add.at(table, slots, self.item_counts)
        logp = np.log(table + 1.0)
        logp -= logp[1:].mean() if len(logp) > 1 else 0.0
        inner = dict(inner, bias_embed_item={"embedding": jnp.asarray(logp, jnp.float32)[:, None]})
        return dict(params, params=inner)

    def als_start(self, params: Any) -> Any:
        """``params`` with a two-tower model's item vectors (and history embeddings) at the item factors of implicit
        ALS fitted on the meta-train users (:func:`~jaxrec.evaluation.retrieval_baselines.fit_mf`). With the exact
        ALS loss its strengths are the fold-in's own (ridge ``1 / (2 inner_lr)``, confidence ``als_confidence``), so
        that before any meta-step the meta-learner is the ``mf`` baseline with them (with the exact logistic loss
        the same factors, and the global offset at the log-odds of an interaction, as every score is a logit); with
        another loss, the ``mf`` baseline's chosen strengths when it was tuned (else ridge 10, confidence 10).

        The item tower then starts as the ALS item factors (``item_out`` the identity on the id embedding, zero on
        the features), the user-feature embeddings at zero, and a pooled user tower as the mean factor of the
        support items, so that meta-training
        starts where the factorisation of the co-occurrences is, and learns the prior and the loss's ranking on
        top. With a new-item scenario the feature tables start at the ridge regression of the factors on the
        features (:meth:`_feature_start`), so that a new item starts where its features place it. A model without an
        id embedding feeding ``item_out`` directly is returned unchanged.
        """
        inner = params["params"]
        if "embed_item" not in inner or "item_out" not in inner or any(k.startswith("item_hidden") for k in inner):
            logger.warning("item_start='als' needs a two-tower model with an item id and no hidden layers: ignored")
            return params
        embed = inner["user_vector"].shape[0]
        chosen = dict(self._tuned.get("mf", {}).get("chosen", {"l2": 10.0, "alpha": 10.0}))
        if self.config.topn.ranking_loss in CATALOGUE_LOSSES:  # the fold-in's own strengths: the start is that mf
            chosen = {"l2": 1.0 / (2.0 * self.inner_lr), "alpha": self.config.topn.als_confidence}
        chosen["factors"] = embed
        matrix = self.train_matrix()
        sweeps = chosen.get("iterations", rb.MF_ITERATIONS)
        logger.info("the item start: implicit ALS on %d users x %d items, %s", *matrix.shape, chosen)
        # minutes on a large catalogue (one f x f solve per user and item, each sweep): a bar, not a silence
        with tqdm(total=sweeps, desc="ALS start", unit="sweep", disable=not self.progress) as bar:
            fitted = rb.fit_mf(matrix, seed=self.config.training_seed, on_sweep=bar.update, **chosen)
        slots = self.featurizer.item_index[:-1]
        table = np.zeros((self.spec.categorical["item"], embed), np.float32)
        table[slots[slots > 0]] = fitted.item_factors[slots > 0]
        kernel = np.zeros(inner["item_out"]["kernel"].shape, np.float32)
        kernel[:embed, :embed] = np.eye(embed)  # the id embedding comes first in the item tower's input
        inner = (
            dict(inner, embed_history_item={"embedding": jnp.asarray(table)})
            if "embed_history_item" in inner
            else inner
        )
        if self.config.topn.new_item_frac > 0:  # new items are scored from their features: start those at ALS's too
            inner = self._feature_start(inner, table, kernel)
        else:
            inner = dict(inner, embed_item={"embedding": jnp.asarray(table)}, item_out={"kernel": jnp.asarray(kernel)})
        for key in [k for k in inner if k.startswith("embed_user")]:  # the prior starts at ALS's, zero
            inner[key] = jax.tree.map(jnp.zeros_like, inner[key])
        if self.config.topn.ranking_loss == "logistic_exact":  # logits: start at the log-odds of an interaction
            matrix = self.train_matrix()
            density = matrix.nnz / float(np.prod(matrix.shape))
            inner = dict(inner, global_bias=jnp.asarray(np.log(density / (1.0 - density)), jnp.float32))
        return dict(params, params=inner)

    def _feature_start(self, inner: dict, factors: np.ndarray, kernel: np.ndarray, l2: float = 1.0) -> dict:
        """The item tower's parameters at the ridge regression of ALS's item factors on the item features (the
        attribute-to-factor mapping of Gantner et al., ICDM 2010), so that a new item starts at the factor its
        features predict, and a known item at its own factor exactly.

        With ``item_out`` the sum of its inputs (an identity block per part), an item's vector is
        ``e_i + f_i W``: ``f_i`` its one-hot feature slots and multi-hot fields, ``W = (F^T F + l2 I)^-1 F^T Y``
        fitted on the trained items' factors ``Y``, split into the feature tables; the id embedding ``e_i`` is the
        residual ``y_i - f_i W`` (0 for the unknown slot, which every new item reads).
        """
        embed = factors.shape[1]
        keys = categorical_fields(self.spec, self.model.use_ids, sides=("item",))
        multi_hot = multi_hot_fields(self.spec, sides=("item",))
        parts = keys[1:] + list(multi_hot)
        if not parts or keys[0] != "item":  # no features, or (never, today) the id not first in the tower's input
            return dict(inner, embed_item={"embedding": jnp.asarray(factors)}, item_out={"kernel": jnp.asarray(kernel)})
        codes = np.flatnonzero(self.featurizer.item_index[:-1] > 0)
        rows = self.featurizer.item_rows(codes)
        blocks = []
        for key in parts:
            if key in multi_hot:
                blocks.append(np.asarray(rows[key], np.float64))
            else:
                blocks.append((rows[key][:, None] == np.arange(self.spec.categorical[key])[None, :]).astype(np.float64))
        F = np.concatenate(blocks, axis=1)
        slots = rows["item"]
        Y = factors[slots].astype(np.float64)
        W = np.linalg.solve(F.T @ F + l2 * np.eye(F.shape[1]), F.T @ Y)
        table = np.zeros_like(factors)
        table[slots] = Y - F @ W
        inner = dict(inner, embed_item={"embedding": jnp.asarray(table, jnp.float32)})
        kernel = kernel.copy()  # the caller's id block stays; each feature part gets an identity block of its own
        start = 0
        for j, (key, block) in enumerate(zip(parts, blocks, strict=True), start=1):
            weights = jnp.asarray(W[start : start + block.shape[1]], jnp.float32)
            start += block.shape[1]
            name = f"dense_{key}" if key in multi_hot else f"embed_{key}"
            inner[name] = {"kernel": weights} if key in multi_hot else {"embedding": weights}
            kernel[j * embed : (j + 1) * embed, :] = np.eye(embed)
        inner["item_out"] = {"kernel": jnp.asarray(kernel)}
        return inner

    def init_params(self) -> Any:
        """The meta-learner's start: random, with the popularity start of :meth:`popularity_start` unless
        ``pretrain=False``, and with ``item_start="als"`` the ALS item factors of :meth:`als_start`."""
        params = self.random_params()
        if self.config.topn.item_start == "als":
            params = self.als_start(params)
        return params if self.config.meta.pretrain is False else self.popularity_start(params)

    def init_state(self) -> MetaTrainState:
        """A fresh training state."""
        return self.trainer.init(self.init_params())

    def template_state(self) -> MetaTrainState:
        """A state of this run's structure (what a checkpoint restores into)."""
        return Learner(self.model, self.inner, self.trainer).template_state(self.config, self.spec)

    def resolve_inner_lr(self) -> float:
        """The inner rate in use (``config.meta.inner_lr``; no tuning in top-N mode)."""
        return float(self._tuned["inner_lr"])

    @property
    def inner_lr(self) -> float:
        """The inner rate of this run."""
        return self.resolve_inner_lr()

    def use_tuned(self, tuned: Mapping[str, Any] | None) -> None:
        """Take the values a run recorded (its checkpoint's ``"tuned"``)."""
        if tuned and tuned.get("inner_lr") is not None:
            self._tuned["inner_lr"] = float(tuned["inner_lr"])
            self.trainer.inner_lr = self._tuned["inner_lr"]
        if tuned and tuned.get("epoch") is not None:  # the state a restored run keeps was chosen so
            self._tuned["epoch"] = dict(tuned["epoch"])

    @property
    def tuned(self) -> dict:
        """What was chosen on validation users, recorded beside the config."""
        return dict(self._tuned)

    def train_step(self, state: MetaTrainState, batch: TaskBatch) -> tuple[MetaTrainState, dict]:
        """One meta-step."""
        return self.trainer.step(state, batch)

    def train(
        self, state: MetaTrainState | None = None, steps: int | None = None, *, select: bool | None = None
    ) -> MetaTrainState:
        """Meta-train from ``state`` (default :meth:`init_state`) for ``steps`` (default: the rest of the run).

        Args:
          state: the state to train from.
          steps: how many meta-steps.
          select: return the state :attr:`~jaxrec.experiment.config.TopNConfig.select_epoch` keeps among the
            start, each epoch's end and the last step, scored on the validation users, and record the choice in
            :attr:`tuned` (``"epoch"``), as ``jaxrec train`` does; False: the last state (to train on from it).
            Default: select when training a whole run (neither ``state`` nor ``steps`` given).

        Returns:
          The state kept.
        """
        whole_run = state is None and steps is None
        state = self.init_state() if state is None else state
        start = int(state.step)
        stop = self.total_steps if steps is None else start + int(steps)
        selector = self.epoch_selector()
        selecting = (whole_run if select is None else select) and selector.rule != "last"
        kept: dict[int, MetaTrainState] = {}

        def candidate(step: int, state: MetaTrainState) -> None:
            selector.observe(step, self.validation_stats(state.params))
            if selector.best_step == step and step != stop:  # the next step donates this state's buffers
                kept[step] = jax.tree.map(jnp.copy, state)
            for old in set(kept) - selector.needed_steps:
                del kept[old]

        if selecting:
            candidate(start, state)
        per_epoch, step = self.steps_per_epoch, start
        loop = run_steps(self.trainer, state, self.batches(start), stop_step=stop)
        for state, _, _ in loop:  # noqa: B007 - the last state is a candidate
            step += 1
            if selecting and (step % per_epoch == 0 or step == stop):
                candidate(step, state)
        if not selecting:
            return state
        self.note_epoch_choice(selector)
        if selector.chosen != step:
            logger.info("kept step %d of %d: validation %s", selector.chosen, step, selector.scores)
        return state if selector.chosen == step else kept[selector.chosen]

    @property
    def select_metric(self) -> str:
        """The metric every validation choice of the run is made by: Recall@``select_at``
        (:func:`selection_cutoff`)."""
        return f"recall@{self.select_at}"

    def epoch_selector(self, figures_at: Callable[[int], Mapping[str, Any]] | None = None) -> EpochSelector:
        """A selector of the state to keep by this run's rule (``select_epoch``) and metric (:attr:`select_metric`:
        Recall@20 where it leaves items out of a list)."""
        return EpochSelector(self.config.topn.select_epoch, self.select_metric, figures_at)

    def note_epoch_choice(self, selector: EpochSelector) -> None:
        """Record a selector's choice in :attr:`tuned` (``"epoch"``)."""
        self._tuned["epoch"] = selector.record()

    def validation_stats(self, params: Any) -> dict[str, np.ndarray]:
        """The meta method's per-user statistics on the validation users (at its chosen recency weighting)."""
        evaluation = self._evaluate_on({"maml": self.meta_method(params)}, self.val_tasks, in_time=True, resamples=0)
        return evaluation.stats["maml"]

    # -- methods ---------------------------------------------------------------------------------------------------

    def _kmax(self) -> int:
        return max(self.config.topn.topn_ks)

    def _dot(self, params: Any, inner: InnerLoop) -> bool:
        """Whether this model ranks by one matrix product: a two-tower model whose adapted leaves are all on the
        user side."""
        return isinstance(self.model, models.TwoTower) and is_user_side(inner, params)

    def _meta_ranker(self, params: Any) -> Method:
        """The meta method of ``params`` (a Meta-SGD state's included): adapted by the run's inner loop."""
        meta_params, inner_lr = split_meta_params(params, self.inner_lr)
        return self._model_ranker(meta_params, inner_lr, self.inner)

    @property
    def data_in_memory(self) -> bool:
        """Whether the dataset was given in memory (a checkpoint records it: restoring needs it again)."""
        return self._given_dataset is not None

    def recency_for(self, params: Any) -> float | None:
        """The support's recency strength chosen on the validation users for ``params`` (by :meth:`meta_method`,
        which ``validate`` and ``evaluate`` call), 0 without a grid to choose from, or None when not chosen for
        them yet."""
        if self._meta_method is None or self._meta_method[0] is not params:
            return None
        choice = self._tuned.get("support_recency", {}).get("maml")
        return 0.0 if choice is None else float(choice["strength"])

    def meta_method(self, params: Any) -> Method:
        """The meta method of ``params`` at the support's recency weighting chosen on the validation users
        (``support_recency``; once per ``params`` object), what ``"maml"`` ranks by."""
        if self._meta_method is None or self._meta_method[0] is not params:
            self._meta_method = (params, self._tuned_recency("maml", self._meta_ranker(params)))
        return self._meta_method[1]

    def _model_ranker(self, params: Any, inner_lr: Any, inner: InnerLoop, recency: float = 0.0) -> Method:
        """A model's method, adapted by ``inner`` on each user's support, its weights times
        :func:`~jaxrec.evaluation.topn.recency_weights` of strength ``recency``."""
        rank = _cached_ranker(self.model, inner, self._kmax(), self._dot(params, inner))
        score = _cached_scorer(self.model, inner)
        rows, codes = self._catalogue_device

        def recent(batch):
            if not recency or not self._support_in_time:
                return batch
            weights = recency_weights(np.asarray(batch.support_mask), recency, self.config.topn.shots)
            return batch.replace(support={**batch.support, "weight": np.asarray(batch.support["weight"]) * weights})

        return Method(
            lambda batch, exclude: rank(
                (params, inner_lr), recent(batch), self._unrankable(exclude, batch), rows, codes
            ),
            lambda batch, exclude, items: score((params, inner_lr), recent(batch), items, rows, codes),
            weighted=lambda strength: self._model_ranker(params, inner_lr, inner, strength),
        )

    @functools.cached_property
    def _catalogue_device(self):
        return self.catalogue.device()

    def train_matrix(self):
        """The meta-train users' interactions ``[users, n_items]`` (their weights where the log has them): what every
        interaction baseline is fitted on (built once; the fits copy it)."""
        return self._train_matrix

    @functools.cached_property
    def _train_matrix(self):
        train = self.split.train
        weights = train["weight"].to_numpy() if "weight" in train else np.ones(len(train), np.float32)
        users, _ = pd.factorize(train["user"])
        return rb.interaction_matrix(
            users, train["item"].to_numpy(), weights, int(users.max()) + 1, self.dataset.n_items
        )

    def _baseline_ranker(self, fitted: Any, recency: float = 0.0) -> Method:
        """A fitted baseline's method, folded in from each user's support items at the weights the meta-learner
        adapts on (the interactions' weights in a weighted log, else 1), times their order's weights of strength
        ``recency`` (:func:`~jaxrec.evaluation.topn.fold_in_weights`)."""
        k = self._kmax()
        n_items = self.dataset.n_items
        weighted = self.dataset.has_weights

        def dense_scores(batch, exclude):
            exclude = np.asarray(exclude)
            own = np.asarray(batch.support["weight"]) if weighted else None
            if own is not None and own.shape != exclude.shape:
                raise ValueError(f"support weights {own.shape} do not match the support items {exclude.shape}")
            in_time = recency and self._support_in_time
            weights = fold_in_weights(exclude >= 0, own, recency if in_time else 0.0, self.config.topn.shots)
            return fitted.scores(rb.support_matrix(exclude, n_items, weights))

        def score(batch, exclude, items):
            items = np.asarray(items)
            picked = np.take_along_axis(dense_scores(batch, exclude), np.maximum(items, 0), axis=1)
            return jnp.asarray(np.where(items >= 0, picked, -np.inf), jnp.float32)

        def rank(batch, exclude):
            scores = self._without_unranked(jnp.asarray(dense_scores(batch, exclude)), self._unranked(batch))
            return _dense_rank(scores, exclude, k, self._tie_order(batch))

        return Method(rank, score, weighted=lambda strength: self._baseline_ranker(fitted, strength))

    def _unrankable(self, exclude: Any, batch: Any) -> Any:
        """A model ranker's ``exclude [U, E]`` with the items not ranked now appended (the held-out items, and in a
        scenario of meta-train users each one's known items: :meth:`_unranked`). A model reads ``exclude`` as
        exclusions alone; a baseline's is its support, so its scores are masked instead."""
        held, seen = self._unranked(batch)
        if held is None and seen is None:
            return exclude
        exclude = jnp.asarray(exclude)
        parts = [exclude]
        if held is not None:
            parts.append(jnp.broadcast_to(jnp.asarray(held, exclude.dtype), (exclude.shape[0], held.size)))
        if seen is not None:
            parts.append(jnp.asarray(seen, exclude.dtype))
        return jnp.concatenate(parts, axis=1)

    @staticmethod
    def _without_unranked(scores: jax.Array, unranked: tuple[np.ndarray | None, np.ndarray | None]) -> jax.Array:
        """Dense scores ``[U, V]`` at -inf on the items not ranked now (``unranked``: :meth:`_unranked`'s)."""
        held, seen = unranked
        scores = jnp.asarray(scores)
        if held is not None:
            scores = scores.at[:, jnp.asarray(held)].set(-jnp.inf)
        if seen is not None:
            users = jnp.arange(scores.shape[0])[:, None]
            index = jnp.where(seen >= 0, seen, scores.shape[1])  # padding: out of range, dropped by the scatter
            scores = scores.at[users, index].set(-jnp.inf, mode="drop")
        return scores

    def _unranked(self, batch: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        """What no list holds now: ``(held-out items [H] or None, each user's known items [U, W] or None)``, the
        second only while a scenario of meta-train users is scored (``-1`` padding; ``W`` the scenario's, one shape
        for every batch of it)."""
        if self._known is None:
            return self._never_ranked, None
        indptr, items, width = self._known
        users = np.asarray(batch.task_id)
        real = (users >= 0) & (users < len(indptr) - 1)
        start = np.where(real, indptr[np.where(real, users, 0)], 0)
        counts = np.where(real, indptr[np.where(real, users, 0) + 1] - start, 0)
        seen = np.full((len(users), width), -1, np.int32)
        rows = np.repeat(np.arange(len(users)), counts)
        position = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        seen[rows, position] = items[np.repeat(start, counts) + position]
        return self._never_ranked, seen

    def _avoided(self, batch: Any) -> np.ndarray | None:
        """``[U, W]`` the items no list holds now (:meth:`_unranked`), which the sampled protocol never draws as a
        user's negatives either (a held-out item may be one of the user's dropped interactions), or None."""
        held, seen = self._unranked(batch)
        users = len(np.asarray(batch.task_id))
        parts = [] if held is None else [np.broadcast_to(held, (users, held.size))]
        parts += [] if seen is None else [seen]
        return np.concatenate(parts, axis=1).astype(np.int32) if parts else None

    def _known_items(self, scenario: str, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """A scenario of meta-train users' known items, none of which its queries hold: their training items, and
        for the new-item scenario (whose queries are the new items) their held-out warm interactions too. ``(indptr
        [n_users + 1], items, width)``, CSR by user code; ``width`` the largest count among ``users``, to a power of
        two, so that the compiled model rankers see one shape of exclusions per scenario."""
        parts = [self.split.train]
        if scenario != "warm" and "warm" in self.split.scenarios:
            parts.append(self.split.scenarios["warm"])
        frame = pd.concat([p[["user", "item"]] for p in parts], ignore_index=True)
        codes, items = frame["user"].to_numpy(), frame["item"].to_numpy()
        order = np.lexsort((items, codes))
        indptr = np.searchsorted(codes[order], np.arange(self.dataset.n_users + 1))
        users = np.asarray(users)
        users = users[(users >= 0) & (users < self.dataset.n_users)]
        most = int((indptr[users + 1] - indptr[users]).max(initial=0))
        return indptr, items[order].astype(np.int32), 1 << (max(most, 1) - 1).bit_length()

    def _tuned_recency(self, name: str, method: Method) -> Method:
        """``method`` at the strength of ``support_recency`` best on the validation users (the first best, in the
        grid's order), recorded in :attr:`tuned` ``["support_recency"]``; ``method`` itself without a grid, without
        timestamps (a support in random order has no newest) or for a method that ignores the support."""
        grid = self.config.topn.support_recency
        if not grid or method.weighted is None or not self.dataset.has_timestamps:
            return method
        candidates = {strength: method.weighted(strength) for strength in grid}
        scores = self._validate({f"{strength:g}": m for strength, m in candidates.items()}, f"recency {name}")
        chosen = max(grid, key=lambda strength: scores[f"{strength:g}"])
        self._tuned.setdefault("support_recency", {})[name] = {
            "strength": chosen,
            "validation_" + self.select_metric: scores[f"{chosen:g}"],
        }
        return candidates[chosen]

    def _tie_order(self, batch: Any) -> jax.Array:
        """Each user's random order of the catalogue, in which a dense ranker's tied scores fall
        (:func:`~jaxrec.evaluation.topn.user_orders`; seeded by the run's seed and the user).

        Drawing it is a sort of ``[U, V]``, costlier than a baseline's ranking, and every baseline, grid point and
        hybrid weight asks again for the same batches: the orders are kept, least recently used first out, within
        :data:`_TIE_ORDER_BYTES`."""
        users = np.asarray(batch.task_id)
        key = users.tobytes()
        if key in self._tie_orders:
            self._tie_orders.move_to_end(key)
            return self._tie_orders[key]
        every = jnp.arange(self.dataset.n_items, dtype=jnp.int32)
        order = user_orders(jax.random.key(self.config.seed), users, every)
        self._tie_orders[key] = order
        while sum(o.nbytes for o in self._tie_orders.values()) > _TIE_ORDER_BYTES and len(self._tie_orders) > 1:
            self._tie_orders.popitem(last=False)
        return order

    def _validate(self, rankers: Mapping[str, Any], progress: str | None = None) -> dict[str, float]:
        """The validation users' selection figure of each ranker; ``progress``: a bar's label, shown where the
        experiment shows progress (a pass of several rankers takes minutes on a large catalogue)."""
        c = self.config
        summaries = evaluate_rankers(
            rankers,
            self.val_tasks,
            self.catalogue,
            ks=(self.select_at,),
            batch_size=c.evaluation.eval_batch_size,
            reference="",
            resamples=0,
            seed=c.seed,
            progress=progress if self.progress else None,
        ).summaries
        select = self.select_metric
        return {name: float("nan") if s[select] is None else float(s[select]) for name, s in summaries.items()}

    def _baseline_fitters(self, names: Sequence[str]) -> dict[str, Callable[..., Any]]:
        """``{name: fit(**hyper)}`` of the named baselines that this data can fit: the interaction baselines on the
        meta-train matrix, ``content`` on the items' side features (left out, and logged, when there are none)."""
        fitters: dict[str, Callable[..., Any]] = {}
        for name in set(names) & set(rb.RETRIEVAL_BASELINES):
            fitters[name] = functools.partial(rb.fit_baseline, name, self.train_matrix())
        if "content" in names:
            features, _ = self.featurizer.item_features()
            if features.shape[1] and features.any():
                fitters["content"] = functools.partial(rb.fit_baseline, "content", None, features)
            else:
                logger.info("baseline content left out: the items have no side features")
        return fitters

    def baselines(self) -> dict[str, Any]:
        """Fit and tune the configured baselines on the meta-train users, choosing on the validation users.

        Returns:
          ``{name: ranker}``; the choices and their validation Recall@20 are in :attr:`tuned`.
        """
        if self._baselines is not None:
            return self._baselines
        names = self.config.topn.topn_baselines
        for name in names:  # a baseline this data cannot fit is named before any other's tuning, not after
            self._cannot_fit(name)
        out: dict[str, Any] = {}
        for name in names:
            if name in BASELINE_GRIDS and (ranker := self._tuned_baseline(name)) is not None:
                out[name] = ranker
        if "finetune" in names or "no_adapt" in names:
            params = self.supervised_params
            no_adapt = self.inner.replace(steps=0)
            if "no_adapt" in names:
                out["no_adapt"] = self._model_ranker(params, 0.0, no_adapt)  # it reads no support
            if "finetune" in names:
                candidates = {f"{lr:g}": self._model_ranker(params, lr, self.inner) for lr in FINETUNE_RATES}
                scores = self._validate(candidates)
                chosen = max(scores, key=scores.get)
                self._tuned["finetune"] = {
                    "inner_lr": float(chosen),
                    "validation_" + self.select_metric: scores[chosen],
                }
                out["finetune"] = self._tuned_recency("finetune", candidates[chosen])
        self._baselines = out
        return out

    def _tuned_baseline(self, name: str) -> Method | None:
        """One interaction or content baseline, its hyper-parameters chosen from :data:`BASELINE_GRIDS` on the
        validation users, then each of its :data:`BASELINE_REFINEMENTS` tried on top of that choice (once: kept);
        None when this data cannot fit it."""
        if name in self._baseline_cache:
            return self._baseline_cache[name]
        if self._cannot_fit(name):
            return None
        fitters = self._baseline_fitters([name])
        best = None
        began = time.perf_counter()
        grid = BASELINE_GRIDS[name] if name in fitters else []
        # refinements refine a choice: a grid of one point chooses nothing (its fit is not validated)
        refinements = BASELINE_REFINEMENTS.get(name, ()) if len(grid) > 1 else ()
        fits = len(grid) + len(refinements)
        slow = rb.slow_to_fit(name, self.train_matrix()) if fits else None
        if slow is not None:
            logger.warning(
                "baseline %s: %s; its tuning fits it %d times (leave %s out of topn_baselines to skip it)",
                name,
                slow,
                fits,
                name,
            )
        with tqdm(total=fits, desc=f"tune {name}", unit="fit", disable=not (self.progress and fits)) as bar:
            for done, hyper in enumerate(grid, 1):
                best = self._try_baseline(name, fitters[name], hyper, best, choose=len(grid) > 1)
                bar.update()
                if done == 1 and slow is None:  # a disabled bar counts nothing
                    bar.clear()  # the warning on a line of its own, then the bar again
                    _warn_of_long_tuning(name, time.perf_counter() - began, fits)
                    bar.refresh()
            if best is not None and best[0] is not None:
                chosen = best[1]
                for extra in refinements:
                    best = self._try_baseline(name, fitters[name], {**chosen, **extra}, best, choose=True)
                    bar.update()
        if best is not None:
            self._tuned[name] = {"chosen": best[1], "validation_" + self.select_metric: best[0]}
            logger.info("baseline %s: %s (%.1f s)", name, best[1], time.perf_counter() - began)
        ranker = None if best is None else best[2]
        if ranker is not None and name != "popular":  # the popular ranking reads no support
            ranker = self._tuned_recency(name, ranker)
        self._baseline_cache[name] = ranker
        return ranker

    def _cannot_fit(self, name: str) -> bool:
        """Whether the baseline ``name`` cannot be fitted on this data at any point of its grid
        (:func:`~jaxrec.evaluation.retrieval_baselines.unfittable`); the first time, warned of once and recorded in
        :attr:`tuned` (``{"not_fitted": why}``), and the baseline left out."""
        if name not in rb.RETRIEVAL_BASELINES:
            return False
        if "not_fitted" in self._tuned.get(name, {}):
            return True
        try:
            why = rb.unfittable(name, self.train_matrix())
        except ValueError:  # a matrix no baseline takes: each fit says why, as before
            return False
        if why is not None:
            logger.warning("baseline %s left out: %s", name, why)
            self._tuned[name] = {"not_fitted": why}
            self._baseline_cache[name] = None
        return why is not None

    def _try_baseline(self, name: str, fit: Callable, hyper: dict, best: tuple | None, choose: bool) -> tuple | None:
        """``(validation Recall@20, hyper, ranker)`` of ``fit(**hyper)`` when it beats ``best`` (or is the first),
        else ``best``; ``choose=False`` (a grid of one) skips the validation pass."""
        try:
            fitted = fit(**hyper)
        except ValueError as e:  # e.g. EASE over a catalogue too large for its dense inverse
            logger.warning("baseline %s%s not fitted: %s", name, hyper, e)
            return best
        ranker = self._baseline_ranker(fitted)
        score = self._validate({name: ranker})[name] if choose else None
        if best is None or (score is not None and score > best[0]):
            return (score, hyper, ranker)
        return best

    @functools.cached_property
    def supervised_params(self) -> Any:
        """The non-meta model: the same model and ranking loss trained by Adam on every meta-train task's rows (its
        support and query together), as many steps as meta-training takes."""
        c = self.config
        loss_fn = self.loss_fn
        optimizer = optax.adam(c.evaluation.supervised_lr)

        @jax.jit
        def step(params, opt_state, batch):
            def loss(p):
                def one(support, s_mask, query, q_mask):
                    s = loss_fn(p, zero_padding(support, s_mask), s_mask)
                    q = loss_fn(p, zero_padding(query, q_mask), q_mask)
                    return s + q

                per_task = jax.vmap(one)(batch.support, batch.support_mask, batch.query, batch.query_mask)
                real = jnp.any(batch.query_mask, axis=1)
                return jnp.sum(jnp.where(real, per_task, 0.0)) / jnp.maximum(jnp.sum(real), 1)

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        params = self.init_params()
        opt_state = optimizer.init(params)
        batches = self.batches(0)
        for _ in range(self.total_steps):
            params, opt_state, _ = step(params, opt_state, next(batches))
        return params

    # -- evaluation ------------------------------------------------------------------------------------------------

    def rankers(self, params: Any, *, baselines: bool = True) -> dict[str, Any]:
        """The meta method (``"maml"``), the re-ranked one (``"rerank"``, with ``rerank``), the baselines and, with
        ``hybrid``, the hybrids (``"maml+<partner>"``, ``"<baseline>+<partner>"``), each ``rank(batch, exclude) ->
        items [U, K]``. Without ``baselines``: the methods of ``params`` alone (the meta method, its re-ranked lists
        and its hybrid, whose partner is then the only baseline fitted)."""
        out = {"maml": self.meta_method(params)}
        if self.config.topn.rerank:
            out["rerank"] = self._rerank_method(*split_meta_params(params, self.inner_lr))
        if baselines:
            out.update(self.baselines())
            if self.config.topn.hybrid is not None:
                out.update(self._hybrids(out, params))
        elif (meta := self.meta_hybrid(params)) is not None:
            out[f"maml+{self.config.topn.hybrid}"] = meta
        return out

    def _hybrids(self, rankers: Mapping[str, Method], params: Any) -> dict[str, Method]:
        """``"maml+<partner>"`` and ``"<baseline>+<partner>"`` for every other interaction or content baseline, each
        with the partner's weight chosen on the validation users (the baselines' hybrids once, the meta method's
        once per ``params`` object); none when the partner was not fitted (e.g. ``content`` without item
        features)."""
        partner = self.config.topn.hybrid
        meta = self.meta_hybrid(params)
        if meta is None:
            return {}
        if self._baseline_hybrids is None:
            firsts = [n for n in rankers if n in HYBRID_PARTNERS and n != partner]
            self._baseline_hybrids = {
                f"{n}+{partner}": self._tuned_hybrid(f"{n}+{partner}", rankers[n], rankers[partner]) for n in firsts
            }
        return {f"maml+{partner}": meta, **self._baseline_hybrids}

    def meta_hybrid(self, params: Any) -> Method | None:
        """The meta method's hybrid with the ``hybrid`` partner, ``"maml+<partner>"``: the partner tuned (alone, when
        no evaluation has tuned every baseline) and the weight chosen on the validation users, once per ``params``
        object; None without ``hybrid`` or when the partner could not be fitted (logged)."""
        partner = self.config.topn.hybrid
        if partner is None:
            return None
        second = self._tuned_baseline(partner)
        if second is None:
            logger.info("hybrid with %s left out: the baseline was not fitted", partner)
            return None
        if self._meta_hybrid is None or self._meta_hybrid[0] is not params:
            first = self.meta_method(params)
            self._meta_hybrid = (params, self._tuned_hybrid(f"maml+{partner}", first, second))
        return self._meta_hybrid[1]

    def _tuned_hybrid(self, name: str, first: Method, second: Method) -> Method:
        """The hybrid of two methods with the weight of :data:`HYBRID_WEIGHTS` best on the validation users."""
        both = _scores_of_every_item(first, second, self.dataset.n_items)
        candidates = {f"{w:g}": self._hybrid(both, w) for w in HYBRID_WEIGHTS}
        scores = self._validate(candidates)
        chosen = max(scores, key=scores.get)
        self._tuned[name] = {"weight": float(chosen), "validation_" + self.select_metric: scores[chosen]}
        return candidates[chosen]

    def _hybrid(self, both: Callable, weight: float) -> Method:
        """``z(first) + weight z(second)`` over every catalogue item (:mod:`jaxrec.evaluation.hybrid`), ``both(batch,
        exclude)`` giving the two methods' scores of every item (:func:`_scores_of_every_item`)."""
        k = self._kmax()

        def rank(batch, exclude):
            exclude = jnp.asarray(exclude)
            unranked = self._unranked(batch)
            if all(part is None for part in unranked):  # the fused program, as always where nothing is held out
                return hybrid_topk(*both(batch, exclude), weight, exclude, k, self._tie_order(batch))
            scores = self._without_unranked(hybrid_scores(*both(batch, exclude), weight, exclude), unranked)
            return _dense_rank(scores, exclude, k, self._tie_order(batch))

        def score(batch, exclude, items):
            full = hybrid_scores(*both(batch, exclude), weight, jnp.asarray(exclude))
            items = jnp.asarray(items)
            picked = jnp.take_along_axis(full, jnp.maximum(items, 0), axis=1)
            return jnp.where(items >= 0, picked, -jnp.inf)

        return Method(rank, score)

    @property
    def reranker_config(self) -> ExperimentConfig:
        """The config the re-ranking model of ``rerank`` is meta-trained with
        (:func:`~jaxrec.experiment.reranker_record.reranker_config`)."""
        return reranker_config(self.config)

    @functools.cached_property
    def rerank_model(self) -> tuple[Any, Any, InnerLoop]:
        """The re-ranking model of ``rerank``, meta-trained on this experiment's tasks (the same split, seed and
        schedule): ``(model, (params, inner_lr), inner)``. Trained when first asked for, as the baselines are, so
        that evaluating a restored run rebuilds the same model."""
        other = TopNExperiment(self.reranker_config, self._given_dataset)
        state = other.train()
        logger.info("re-ranker %s meta-trained (%d steps)", self.config.topn.rerank, int(state.step))
        return other.model, split_meta_params(state.params, other.inner_lr), other.inner

    def use_rerank_model(self, model: Any, state: Any, inner: InnerLoop) -> None:
        """Evaluate ``rerank`` with a re-ranker already meta-trained (a run folder's,
        :func:`~jaxrec.experiment.reranker_record.read_reranker`) rather than meta-training one
        (:attr:`rerank_model`)."""
        self.__dict__["rerank_model"] = (model, state, inner)

    def rerank_choice(self, params: Any) -> dict[str, Any]:
        """Whether a run folder lists re-ranked (:mod:`~jaxrec.experiment.reranker_record`): ``rerank`` against the
        list the run would serve without it (its hybrid ``maml+<partner>`` where it has one, else ``maml``), by
        nDCG at the run's cut-off ``select_at`` on the same validation users. nDCG, not :attr:`select_metric`: a
        re-ranker orders the recall stage's top items, which Recall within them cannot see (with as many candidates
        as the cut-off, the re-ranked Recall is the recall stage's own). The other list's figure is at the weight
        and recency chosen on these users, so optimistic; ``rerank`` has nothing chosen on them.

        Returns:
          ``{"metric": ..., "rerank": figure, "<other>": figure, "lists": "rerank" or "<other>", "users": the
          validation users}``; ``rerank`` lists only where its figure is strictly the higher.
        """
        rankers = self.rankers(params, baselines=False)
        other = next((name for name in rankers if name.startswith("maml+")), "maml")
        chosen = {name: rankers[name] for name in ("rerank", other)}
        summaries = self._evaluate_on(chosen, self.val_tasks, in_time=True, resamples=0).summaries
        metric = f"ndcg@{self.select_at}"
        figures = {name: float(summaries[name][metric]) for name in chosen}
        lists = "rerank" if figures["rerank"] > figures[other] else other
        return {"metric": metric, **figures, "lists": lists, "users": len(self.val_tasks)}

    def _rerank_method(self, params: Any, inner_lr: Any) -> Method:
        model, rerank_state, inner = self.rerank_model
        candidates = int(self.config.topn.rerank_candidates)
        retrieve = _cached_ranker(self.model, self.inner, candidates, self._dot(params, self.inner))
        rank = _cached_rerank(retrieve, model, inner, self._kmax())
        score = _cached_scorer(model, inner)
        rows, codes = self._catalogue_device
        return Method(
            lambda batch, exclude: rank(
                (params, inner_lr), rerank_state, batch, self._unrankable(exclude, batch), rows, codes
            ),
            lambda batch, exclude, items: score(rerank_state, batch, items, rows, codes),
        )

    def _among_new_items(self, method: Method, new_items: np.ndarray) -> Method:
        """``method`` ranking the new items only: each is scored for each user (``method.score``) and the top
        ``k`` kept. The question a service's slot for fresh items asks: which of today's releases will this user
        want? A new item has no interaction, so it is never one of a user's support items to exclude.

        Each user's candidates are in a random order of their own (seeded by the run's seed and the user), the same
        for every method: ``top_k`` keeps the first of tied scores, and every interaction baseline scores every new
        item 0, so its ties must fall at random, per user, not by item code (which follows the catalogue's own
        order: on MovieLens close to popularity, a leak) nor in one order shared by every user (one lucky draw)."""
        new_items = jnp.asarray(new_items, jnp.int32)
        key = jax.random.key(self.config.seed)
        k = self._kmax()

        def rank(batch, exclude):
            items = user_orders(key, batch.task_id, new_items)
            return candidate_topk(method.score(batch, exclude, items), items, k)

        return Method(rank, method.score)

    def validate(
        self, params: Any, *, baselines: bool = True, return_stats: bool = False, new_items: bool = False
    ) -> Any:
        """Evaluate on the validation users (held out of every training): the score to choose a configuration on.

        The baselines' hyper-parameters, the fine-tuning rate and the hybrids' weights are themselves chosen on these
        users, so their figures here are optimistic, never pessimistic.

        With ``new_items``, on the validation new items instead (``val_item_frac``): the meta-train users'
        interactions with them, each user's list drawn from the validation new items only, as ``new_item_only``
        ranks the new items. The choices about new items (the item-id dropout) are made on it: the validation users
        have no new item.

        Args:
          params: the meta-learned parameters.
          baselines: also evaluate the baselines (else the methods of ``params`` alone: ``"maml"``, and its
            re-ranked lists and hybrid where configured; :meth:`rankers`).
          return_stats: also return the per-user statistics ``{method: stats}`` (to pool several splits).
          new_items: on the validation new items.

        Returns:
          ``{method: summary}``, and with ``return_stats`` also the per-user statistics.

        Raises:
          ValueError: ``new_items`` without validation new items (``val_item_frac`` and ``new_item_frac``).
        """
        rankers = self.rankers(params, baselines=baselines)
        tasks, coverage_of = self.val_tasks, None
        if new_items:
            if self.val_new_item_tasks is None:
                raise ValueError(
                    "no validation new items: set new_item_frac and val_item_frac > 0 (and have meta-train users who "
                    "interacted with those items)"
                )
            items = self.split.validation_new_items
            rankers = {k: self._among_new_items(m, items) for k, m in rankers.items()}
            tasks, coverage_of = self.val_new_item_tasks, len(items)
        summaries, stats, *_ = self._evaluate_on(
            rankers, tasks, in_time=not new_items, held_out=new_items, coverage_of=coverage_of
        )
        return (summaries, stats) if return_stats else summaries

    def _evaluate_on(
        self,
        rankers: Mapping[str, Any],
        tasks: TopNTaskSet,
        *,
        in_time: bool,
        held_out: bool = False,
        scenario: str | None = None,
        **options: Any,
    ):
        """:func:`~jaxrec.evaluation.topn.evaluate_rankers` of ``rankers`` on ``tasks`` with the run's cut-offs,
        batch size, bootstrap and seed; ``in_time``: the tasks' supports are in time order (a new user's first
        interactions), which the recency weighting reads (a warm or new-item task's are a user's latest, unordered);
        ``held_out``: the tasks' queries hold the new items, which are then ranked (elsewhere they are not: the split
        dropped every other user's interactions with them; the validation new items never are); ``scenario``: a
        scenario of meta-train users (``"warm"``, ``"new_item"``), whose known items no list then holds
        (:meth:`_known_items`: none can be in their queries).
        """
        c = self.config
        previous, self._support_in_time = self._support_in_time, in_time
        never, known = self._never_ranked, self._known
        if held_out:
            rest = self.split.validation_new_items.astype(np.int32)
            self._never_ranked = rest if len(rest) else None
        if scenario is not None:
            self._known = self._known_items(scenario, tasks.users)
        options = {"resamples": c.evaluation.bootstrap, "avoid": self._avoided, **options}
        try:
            return evaluate_rankers(
                rankers,
                tasks,
                self.catalogue,
                ks=c.topn.topn_ks,
                batch_size=c.evaluation.eval_batch_size,
                seed=c.seed,
                **options,
            )
        finally:
            self._support_in_time, self._never_ranked, self._known = previous, never, known

    def evaluate(self, params: Any, *, keep_lists: bool = False, baselines: bool = True) -> tuple[dict, dict]:
        """Evaluate every method on every scenario over the whole catalogue.

        Args:
          params: the meta-learned parameters (a Meta-SGD state's ``params`` included).
          keep_lists: also return the top lists and per-user statistics.
          baselines: also the baselines and their hybrids (else the methods of ``params`` alone: :meth:`rankers`).

        Returns:
          ``({scenario: {method: summary}}, {scenario: (stats, lists, sampled)})``; with ``sampled_negatives`` the
          summaries also hold the sampled protocol's ``sampled_hr@k`` (biased: never the figure to choose on) and,
          with ``keep_lists``, ``sampled`` its rows (:class:`~jaxrec.evaluation.topn.SampledRows`; else None).
        """
        rankers = self.rankers(params, baselines=baselines)
        out, detail = {}, {}
        for name in self.scenario_tasks:
            summaries, stats, lists, sampled_rows = self._evaluate_scenario(rankers, name, keep_lists=keep_lists)
            out[name] = summaries
            detail[name] = (stats, lists, sampled_rows)
        return out, detail

    def _evaluate_scenario(self, rankers: Mapping[str, Method], name: str, **options: Any):
        """:meth:`_evaluate_on` of ``rankers`` on scenario ``name``: in ``"new_item_only"`` among the new items
        alone (and without the sampled protocol), elsewhere over the catalogue and, with ``sampled_negatives``, by
        the sampled protocol too."""
        only_new = name == NEW_ITEM_ONLY
        sampled = 0 if only_new else self.config.topn.sampled_negatives
        return self._evaluate_on(
            {k: self._among_new_items(m, self.split.new_items) for k, m in rankers.items()} if only_new else rankers,
            self.scenario_tasks[name],
            in_time=name == "new_user",
            held_out=name in ("new_item", NEW_ITEM_ONLY),
            scenario=None if name == "new_user" else name,
            coverage_of=len(self.split.new_items) if only_new else None,
            scorers={k: m.score for k, m in rankers.items()} if sampled else None,
            progress=f"evaluate {name}" if self.progress else None,
            negatives=max(sampled, 1),
            **options,
        )

    def compare(
        self,
        params: Any,
        methods: Mapping[str, Any],
        *,
        scenario: str = "validation",
        baselines: bool = True,
        return_stats: bool = False,
    ) -> dict | tuple[dict, dict]:
        """Score methods of one's own beside this run's, on the same users under the protocol every built-in method
        is scored by: the same support sets, the same items never listed (each user's support; in a scenario of
        meta-train users their other training items; held-out new items outside the new-item scenarios), the same
        cut-offs, bootstrap and paired intervals (each method paired with ``"maml"``).

        A method of one's own is a fold-in scorer, as every interaction baseline is
        (:mod:`jaxrec.evaluation.retrieval_baselines`): an object with ``scores(support) -> [U, V]``, where
        ``support`` holds the users' support items as a SciPy CSR matrix ``[U, V]`` of item codes (each entry the
        interaction's weight, 1 in an unweighted log) and the result is a score for every item of the catalogue (a
        dense array). Fit it on :meth:`train_matrix`, the meta-train users' interactions; item codes are
        ``dataset.items``' positions. The harness lists each user's top items of those scores that the scenario
        ranks, as it does a baseline's. As the baselines' are, a scorer's support is weighted by its order at the
        ``support_recency`` strength best on the validation users (recorded in :attr:`tuned`
        ``["support_recency"][name]``). With ``sampled_negatives`` the test scenarios also get the sampled
        protocol's ``sampled_hr@k``, as in :meth:`evaluate`.

        Args:
          params: the meta-learned parameters (``"maml"``'s).
          methods: ``{name: scorer}``; no name of this run's own methods.
          scenario: ``"validation"``, or a key of :attr:`scenario_tasks`. The built-in methods' hyper-parameters
            were chosen on the validation users, so their figures there are optimistic: choose one's own method's
            there too, and report on a test scenario (``"new_user"``: report, never choose).
          baselines: also this run's baselines (else its meta method alone).
          return_stats: also return the per-user statistics.

        Returns:
          ``{method: summary}`` (summaries as in metrics.json, ``"paired"`` against ``"maml"``), and with
          ``return_stats`` the per-user statistics.

        Raises:
          ValueError: an unknown scenario, or a name this run's methods already use.
          TypeError: a method that is not a scorer.
        """
        known = ("validation", *self.scenario_tasks)
        if scenario not in known:
            raise ValueError(f"unknown scenario {scenario!r}: choose one of {', '.join(known)}")
        rankers = dict(self.rankers(params, baselines=baselines))
        for name, method in methods.items():
            if name in rankers:
                raise ValueError(f"method name {name!r} is one of this run's own methods: name yours otherwise")
            # a ranker of one's own would be handed its support as `exclude` and have to leave out by itself what
            # the scenario never lists; a scorer's lists are made here, as a baseline's are
            if not callable(getattr(method, "scores", None)):
                raise TypeError(
                    f"method {name!r} must have scores(support [U, V] CSR) -> [U, V] scores of every item; got "
                    f"{type(method).__name__}"
                )
            rankers[name] = self._tuned_recency(name, self._baseline_ranker(method))
        if scenario == "validation":
            summaries, stats, *_ = self._evaluate_on(rankers, self.val_tasks, in_time=True)
        else:
            summaries, stats, *_ = self._evaluate_scenario(rankers, scenario)
        return (summaries, stats) if return_stats else summaries

    def metrics_document(self, params: Any, *, keep_lists: bool = False) -> dict:
        """The metrics.json document: ``{"dataset", "task": "topn", "config", "tuned", "split", "data_report",
        "features", "tasks", "scenarios"}`` (``features``: what the model reads of the side tables,
        :attr:`~jaxrec.data.Featurizer.features_read`), and with ``sampled_negatives`` a ``"sampled_protocol"``
        entry that says what the ``sampled_hr@k`` figures are.

        Args:
          params: the meta-learned parameters.
          keep_lists: also keep the per-user statistics and top lists in :attr:`last_detail` (what
            :func:`~jaxrec.experiment.predictions.write_topn_predictions` writes).
        """
        scenarios, detail = self.evaluate(params, keep_lists=keep_lists)
        self.last_detail = detail if keep_lists else None
        return {
            "dataset": self.dataset.name,
            "task": "topn",
            "config": self.config.to_dict(),
            "tuned": self.tuned,
            "split": self.split.stats,
            "data_report": {k: v for k, v in self.dataset.report.items()},
            "features": self.featurizer.features_read,
            "tasks": {
                "train": self.train_tasks.stats,
                "validation": self.val_tasks.stats,
                **({"validation_new_item": self.val_new_item_tasks.stats} if self.val_new_item_tasks else {}),
                **{name: tasks.stats for name, tasks in self.scenario_tasks.items()},
            },
            "scenarios": scenarios,
            **({"sampled_protocol": self._sampled_protocol()} if self.config.topn.sampled_negatives else {}),
        }

    def _sampled_protocol(self) -> dict:
        """What the ``sampled_hr@k`` figures of metrics.json are, beside them."""
        return {
            "metrics": "sampled_hr@k",
            "negatives": int(self.config.topn.sampled_negatives),
            "biased": True,
            "note": "each query positive ranked against this many distinct items drawn uniformly from those outside "
            "the user's known interactions (the task's support and query, a meta-train user's training items; the "
            "held-out new items outside the new-item scenarios): a biased estimate of the full ranking's figures, "
            "which can reorder methods (Krichene and Rendle, KDD 2020); for comparison with papers that report it, "
            "never to choose on. The re-ranking method's figure ('rerank') ranks by the re-ranker's scores alone, "
            "not the pipeline. --save-predictions writes each positive's negatives and every method's scores of "
            "them (<scenario>.sampled.csv.gz).",
        }


def selection_cutoff(ks: Sequence[int], rankable: int) -> int:
    """The cut-off ``k`` of the Recall@k that validation choices are made by: 20 when it is one of ``ks`` and below
    ``rankable`` (the items a new user can be recommended: at or past it every list holds every query item, and
    recall is 1 for every method), else the largest of ``ks`` below ``rankable``, else the smallest of ``ks``."""
    below = sorted(k for k in ks if k < rankable)
    if _SELECT_AT in below:
        return _SELECT_AT
    return below[-1] if below else min(ks)


@dataclasses.dataclass(frozen=True)
class Method:
    """A method as the evaluation calls it: ``rank(batch, exclude) -> items [U, K]`` (what calling it does) and
    ``score(batch, exclude, items [U, M]) -> scores [U, M]`` (the sampled protocol's)."""

    rank: Callable
    score: Callable
    weighted: Callable[[float], Method] | None = None  # the same method, its support weighted by recency

    def __call__(self, batch: Any, exclude: Any) -> Any:
        return self.rank(batch, exclude)


def _scores_of_every_item(first: Method, second: Method, n_items: int) -> Callable:
    """``both(batch, exclude) -> (first's, second's)`` scores of every item ``[U, V]``, the last batch's kept: the
    hybrids of one pair at every weight rank the same batch in turn (:func:`evaluate_rankers` passes each of them
    the same ``batch`` and ``exclude`` objects), and need the two methods' scores once."""
    last: list = []  # [(batch, exclude, scores)]: the objects held, so that `is` cannot match a recycled id

    def both(batch, exclude):
        if last and last[0][0] is batch and last[0][1] is exclude:
            return last[0][2]
        users = np.shape(exclude)[0]
        every = jnp.broadcast_to(jnp.arange(n_items, dtype=jnp.int32), (users, n_items))
        scores = first.score(batch, exclude, every), second.score(batch, exclude, every)
        last[:] = [(batch, exclude, scores)]
        return scores

    return both


@functools.lru_cache(maxsize=16)
def _cached_rerank(retrieve: Any, model: Any, inner: InnerLoop, k: int):
    return rerank_ranker(retrieve, model.apply, inner, k)


def _can_rerank(config: ExperimentConfig, name: str) -> bool:
    """Whether model ``name`` can re-rank the top-N lists of ``config``'s run (its re-ranking config resolves)."""
    try:
        reranker_config(config.override(rerank=name))
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=16)
def _cached_scorer(model: Any, inner: InnerLoop):
    return model_scorer(model.apply, inner)


@functools.lru_cache(maxsize=16)
def _cached_ranker(model: Any, inner: InnerLoop, k: int, dot: bool):
    return dot_ranker(model, inner, k) if dot else model_ranker(model.apply, inner, k)
