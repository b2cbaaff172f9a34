"""The configuration of an experiment: frozen, grouped, checked, resolved once, and read from files or flags.

An :class:`ExperimentConfig` holds six groups and two run-wide fields::

    ExperimentConfig(data=DataConfig(...), protocol=ProtocolConfig(...), model=ModelConfig(...),
                     meta=MetaConfig(...), evaluation=EvalConfig(...), topn=TopNConfig(...), seed=0, devices=None)

Every field name is unique across the groups, so a field can be set by its name alone:
``ExperimentConfig.make(epochs=2, model="mf")`` or ``config.override(inner_lr=0.03)`` (the ``jaxrec`` command's
flags are these names, ``--inner-lr``, derived from the fields by :func:`add_flags`). The values are checked when a
config is made, so a bad value fails before any data is read.

``"auto"`` settings of the inner loop (``adapt``, ``inner_solver``, ``inner_steps=None``) are made concrete by
:func:`resolve`, a pure function of the config, before anything is built; the experiment records the resolved
config. Values tuned on validation users (the fine-tuning rate) are recorded beside it, never written into it.

A record (:meth:`ExperimentConfig.to_dict`) carries :data:`RECORD_FORMAT`; a record of another format (the flat
records of jaxrec 0.1) is refused with one message rather than read through compatibility tables.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax

from jaxrec import models, testing
from jaxrec.core.inner import ORDERS
from jaxrec.core.newton import newton
from jaxrec.core.objectives import ALGORITHMS, no_inner_step
from jaxrec.data import Dataset, join_side_files
from jaxrec.data.tasks import SCHEMES, TASK_SIDES
from jaxrec.experiment.selection import RULES as SELECT_RULES

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "EVALUATION_FIELDS",
    "INNER_SOLVERS",
    "MIXED_SOLVE",
    "RECORD_FORMAT",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "MetaConfig",
    "ModelConfig",
    "ProtocolConfig",
    "TOPN_BASELINES",
    "TopNConfig",
    "add_flags",
    "as_flags",
    "flag_values",
    "resolve",
]

RECORD_FORMAT = "jaxrec.config/2"
BASELINES = ("finetune", "no_adapt", "global_mean", "user_mean", "item_mean", "bias")
TOPN_BASELINES = ("popular", "itemknn", "ease", "mf", "content", "finetune", "no_adapt")
#: the top-N baselines that score every item from the support set alone: a hybrid's second method
HYBRID_PARTNERS = ("popular", "itemknn", "ease", "mf", "content")
#: the top-N training losses (:mod:`jaxrec.core.ranking`)
TOPN_LOSSES = ("softmax", "bpr", "bce", "als", "als_exact", "logistic_exact")
INNER_SOLVERS = ("auto", "sgd", "newton", "mixed", "encode")
MIXED_SOLVE = "head/output"  # what inner_solver="mixed" solves by Newton steps
PRETRAIN = ("bias", True, False)


# ----------------------------------------------------------------------------------------------------------------
# command-line parsing of a field's value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("expects an integer") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("expects a number") from None


def _separator(text: str) -> str:
    """A separator as typed on a command line: ``\\t`` (a shell passes the two characters) or ``tab`` is a tab."""
    return "\t" if text.strip().lower() in ("\\t", "tab") else text


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"expects JSON ({e.msg})") from None


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: None if text.strip().lower() == "none" else parse(text)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expects true or false")


def _list_of(parse: Callable[[str], Any]) -> Callable[[str], tuple]:
    def read(text: str) -> tuple:
        if text.strip().lower() == "none":
            return ()
        return tuple(parse(part.strip()) for part in text.split(",") if part.strip())

    return read


def _pretrain(text: str) -> bool | str:
    return "bias" if text.strip().lower() == "bias" else _bool(text)


def _devices(text: str) -> int | str:
    if text.strip().lower() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise ValueError("expects a number or 'all'") from None


def _field(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] = str,
    flag: str | None = None,
    choices: tuple | None = None,
) -> Any:
    """A config field with its help text and how the command line spells (``flag``) and parses it (``parse``
    raises ``ValueError("expects ...")``; ``choices``: the only values argparse accepts)."""
    metadata = {"help": help, "parse": parse, "flag": flag, "choices": choices}
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=lambda: json.loads(json.dumps(default)), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{name} {message}")


def _fraction(value: Any, name: str) -> None:
    _check(isinstance(value, int | float) and 0.0 <= float(value) < 1.0, name, f"must be in [0, 1), got {value!r}")


def _positive_int(value: Any, name: str, minimum: int = 1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    wanted = "positive" if minimum == 1 else f">= {minimum}"
    _check(ok, name, f"must be {wanted} (an integer), got {value!r}")


def _positive_number(value: Any, name: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    _check(ok, name, f"must be a finite positive number, got {value!r}")


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# ----------------------------------------------------------------------------------------------------------------
# the groups


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which interaction log, and how to read it.

    Attributes:
      dataset: a known dataset (:data:`jaxrec.data.DATASETS`); ignored when ``path`` is given.
      path: (flag ``--data``) the path of any ``user,item,rating[,timestamp]`` log, read by
        :func:`jaxrec.data.read_log`: separated text or JSON lines (``.gz`` allowed), or Parquet (a file or a
        folder of files).
      data_dir: the folder holding the MovieLens folders.
      columns: the roles of the file's columns in order (``_`` skips one), or ``role=column`` pairs naming the
        columns to read (``user=customer_id,item=sku``).
      sep: the field separator of ``data`` (default: sniffed).
      encoding: the text encoding of ``data`` and of the feature tables.
      implicit: targets are ``rating >= implicit_threshold`` (BCE loss, HR@k / AUC) on the rated items: the
        binary-label form of the rating protocol.
      implicit_threshold: the rating from which an interaction counts as positive.
      feedback: ``"implicit"``: every row is an interaction (a click, a play, a check-in; a ``weight`` column is
        its confidence) and the run is top-N recommendation over the whole catalogue (:class:`TopNConfig`);
        ``"explicit"``: ratings; None: ratings, refusing a rating column that looks like counts.
      positive_threshold: with ``feedback="implicit"`` on rated data, only ratings ``>=`` this are interactions.
      rating_scale: ``(low, high)`` of the rating scale, where the meta-train ratings' least and greatest (the
        default) are not its ends (a 0.5-10 scale on which nobody gave 0.5): what predictions are clipped to and
        what a new user's ratings are checked against.
      item_features: a table of item features joined to the log by item id (:func:`jaxrec.data.read_side_table`:
        a header, the id column named ``item`` or first; tags ``"|"``-joined): what scores a new item.
      user_features: the same for users (demographics, a sign-up channel).

    Raises:
      ValueError: if neither ``dataset`` nor ``path`` is given, or ``rating_scale`` is not two increasing numbers.
    """

    dataset: str | None = _field("ml-latest-small", "a known dataset (see `jaxrec datasets`)")
    path: str | None = _field(
        None,
        "path of any user,item,rating[,timestamp] log: text or JSON lines (.gz allowed), or Parquet (file or folder)",
        flag="data",
    )
    data_dir: str | None = _field(None, "folder holding the MovieLens folders (default $JAXREC_DATA)")
    columns: tuple | None = _field(
        None,
        "roles of the file's columns in order, e.g. user,item,rating,timestamp ('_' skips), or role=column pairs,"
        " e.g. user=customer_id,item=sku",
        parse=_list_of(str),
    )
    sep: str | None = _field(
        None,
        "field separator of --data (default: sniffed among '::' , tab | ;); '\\t' or tab for a tab",
        parse=_separator,
    )
    encoding: str = _field("utf-8", "text encoding of --data and the feature tables (e.g. latin-1)")
    implicit: bool = _field(False, "binary targets: rating >= --implicit-threshold", parse=_bool)
    implicit_threshold: float = _field(4.0, "the rating from which an interaction is positive", parse=_float)
    feedback: str | None = _field(
        None,
        "implicit: every row is an interaction (top-N over the catalogue); explicit: ratings",
        choices=("explicit", "implicit"),
    )
    positive_threshold: float | None = _field(
        None, "--feedback implicit on rated data: ratings >= this are interactions", parse=_none_or(_float)
    )
    rating_scale: tuple | None = _field(
        None,
        "the rating scale low,high, e.g. 0.5,10 (default: the meta-train ratings' least and greatest)",
        parse=_none_or(_list_of(_float)),
    )

    item_features: str | None = _field(
        None, "a table of item features (id column first or named item; tags |-joined): text with a header or Parquet"
    )
    user_features: str | None = _field(None, "a table of user features (id column first or named user)")

    def __post_init__(self):
        object.__setattr__(self, "columns", _tuple(self.columns))
        object.__setattr__(self, "rating_scale", _tuple(self.rating_scale))
        if self.rating_scale is not None:
            scale = self.rating_scale
            numbers = len(scale) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in scale)
            _check(
                numbers and math.isfinite(scale[0]) and math.isfinite(scale[1]) and scale[0] < scale[1],
                "rating_scale",
                f"must be two finite numbers low < high (e.g. 0.5,10), got {scale!r}",
            )
            object.__setattr__(self, "rating_scale", (float(scale[0]), float(scale[1])))
        _check(
            self.feedback in (None, "explicit", "implicit"),
            "feedback",
            f"must be explicit or implicit, got {self.feedback!r}",
        )
        if self.positive_threshold is not None:
            _check(self.feedback == "implicit", "positive_threshold", "needs --feedback implicit")
        _check(self.dataset is not None or self.path is not None, "dataset", "or data (a path) must be given")


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """How ratings become cold-start scenarios and tasks (after MeLU, Lee et al. KDD 2019).

    Attributes:
      scheme: the split of :func:`~jaxrec.data.cold_start_split` into meta-train ratings and the scenarios
        ``warm``, ``new_user``, ``new_item``, ``new_user_new_item`` (``"melu"``, ``"time"``), or ``cross_domain``
        (``"cross-domain"``).
      target_genres: ``"cross-domain"``: the target domain's item genres.
      source_genres: ``"cross-domain"``: the source domain's item genres (empty: every item of no target genre).
      train_domain: ``"cross-domain"``: ``"source"`` (transfer) or ``"target"`` (the target domain alone).
      tasks_by: ``"user"`` (a task per user: user cold start) or ``"item"`` (a task per item, adapted from some of
        the users who rated it: item cold start, evaluated on the ``new_item`` scenario only; validation is then a
        random ``val_frac`` of the meta-train items, held out of training, not users).
      split: how :func:`~jaxrec.data.build_tasks` divides a user's ratings into support and query.
      support: support ratings per task (None: the rest after the query).
      query: query ratings per task (a count, or a fraction of the user's ratings).
      min_ratings: users with fewer ratings are not evaluation tasks.
      max_ratings: users with more ratings are not evaluation tasks (meta-training keeps every user).
      support_buckets: the padded support lengths: one compiled shape each.
      history: each row carries the user's last ``history`` ratings (0: none; the GRU model then gets 10).
      val_frac: the fraction of meta-train users held out as validation users, where every choice is made.
      val_item_frac: the newest fraction of meta-train items held out of training and of the vocabularies, their
        ratings forming validation tasks of the new-item kind (0: none). In top-N (with ``new_item_frac``): that
        fraction of the items, drawn at random with the new items from the newest, the meta-train users'
        interactions with them the validation new items (``TopNExperiment.validate(new_items=True)``), where the
        choices about new items are made.

    Raises:
      ValueError: if a count is not a positive integer (``history``: not >= 0) or a fraction is not in ``[0, 1)``;
        the message starts with the field's name.
    """

    scheme: str = _field(
        "melu",
        "cold-start split: melu (new users / items at random and by release), time (by a time cutoff) or "
        "cross-domain (train on --source-genres items, adapt new users on a few --target-genres ratings)",
        choices=SCHEMES,
    )
    target_genres: tuple = _field((), "cross-domain: the target domain's genres (comma-separated)", parse=_list_of(str))
    source_genres: tuple = _field(
        (), "cross-domain: the source domain's genres (default: every item of no target genre)", parse=_list_of(str)
    )
    train_domain: str = _field(
        "source",
        "cross-domain: train on the source domain (transfer) or on the target domain alone (the in-domain reference)",
        choices=("source", "target"),
    )
    tasks_by: str = _field(
        "user",
        "a task per user (user cold start) or per item (item cold start: each new item adapts on a few of its "
        "ratings by existing users; scenario new_item only)",
        choices=TASK_SIDES,
    )
    split: str = _field("melu", "support/query split of a user's ratings")
    support: int | None = _field(None, "support ratings per user task (default: the rest)", parse=_none_or(_int))
    query: int | float | None = _field(
        10, "query ratings per user task (a count, or a fraction in (0, 1))", parse=_none_or(_float)
    )
    min_ratings: int | None = _field(13, "users with fewer ratings are not tasks", parse=_none_or(_int))
    max_ratings: int | None = _field(100, "users with more ratings are not evaluation tasks", parse=_none_or(_int))
    support_buckets: tuple | None = _field(
        (96,), "padded support lengths (shape buckets), or none", parse=_none_or(_list_of(_int))
    )
    history: int = _field(0, "history items per row (0: none; gru: 10)", parse=_int)
    val_frac: float = _field(0.1, "fraction of meta-train users held out for validation", parse=_float)
    val_item_frac: float = _field(0.0, "newest fraction of meta-train items held out for validation", parse=_float)

    def __post_init__(self):
        object.__setattr__(self, "support_buckets", _tuple(self.support_buckets))
        for name in ("target_genres", "source_genres"):
            value = getattr(self, name)
            value = value.split(",") if isinstance(value, str) else (value or ())
            object.__setattr__(self, name, tuple(str(g).strip() for g in value if str(g).strip()))
        _check(self.scheme in SCHEMES, "scheme", f"must be one of {SCHEMES}, got {self.scheme!r}")
        if self.scheme == "cross-domain":
            _check(bool(self.target_genres), "target_genres", "is needed by scheme='cross-domain'")
            _check(self.train_domain in ("source", "target"), "train_domain", f"must be source or target, got "
                   f"{self.train_domain!r}")  # fmt: skip
        else:  # nothing is ignored in silence
            for name in ("target_genres", "source_genres"):
                _check(not getattr(self, name), name, "needs scheme='cross-domain'")
            _check(self.train_domain == "source", "train_domain", "needs scheme='cross-domain'")
        _check(self.tasks_by in TASK_SIDES, "tasks_by", f"must be one of {TASK_SIDES}, got {self.tasks_by!r}")
        if self.tasks_by == "item":
            _check(self.scheme != "cross-domain", "tasks_by", "'item' needs a scheme with a new-item scenario "
                   "(melu or time), not cross-domain")  # fmt: skip
            _check(self.history == 0, "tasks_by", "'item' has no user history: set history 0")
        if isinstance(self.query, float) and self.query.is_integer() and self.query >= 1:
            object.__setattr__(self, "query", int(self.query))
        q = self.query
        ok = (
            q is None
            or (isinstance(q, int) and not isinstance(q, bool) and q >= 1)
            or (isinstance(q, float) and 0.0 < q < 1.0)
        )
        _check(ok, "query", f"must be a count >= 1 or a fraction in (0, 1), got {q!r}")
        buckets = self.support_buckets
        if buckets is not None:
            good = len(buckets) > 0 and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in buckets)
            _check(good, "support_buckets", f"must be positive lengths (or None), got {buckets!r}")
        for name in ("min_ratings", "max_ratings", "support"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), name)
        _positive_int(self.history, "history", minimum=0)
        _fraction(self.val_frac, "val_frac")
        _fraction(self.val_item_frac, "val_item_frac")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model.

    Attributes:
      name: a registered model (:data:`jaxrec.models.MODELS`).
      kwargs: keyword arguments of its constructor (JSON values; lists become tuples).

    Raises:
      ValueError: if ``name`` is not registered or ``kwargs`` is not a dict.
    """

    name: str = _field(
        "melu",
        "melu | mf | linear | fm | neumf | gru | twotower | tanp | lwa | nlba | mwuf | metaemb | mamo",
        flag="model",
    )
    kwargs: dict = _field(
        {"embed": 16, "hidden": [32, 32], "use_ids": ["item"], "interaction": None, "item_bias": True},
        "JSON keyword arguments of the model, e.g. '{\"embed\": 8}'",
        parse=_json,
        flag="model_kwargs",
    )

    def __post_init__(self):
        _check(
            self.name in models.MODELS,
            "model",
            f"must be one of {sorted(models.MODELS)} or a model registered with jaxrec.models.register (on the "
            f"command line: --import MODULE, a module that registers it), got {self.name!r}",
        )
        _check(isinstance(self.kwargs, dict), "model_kwargs", f"must be a JSON object, got {self.kwargs!r}")

    def constructor_kwargs(self) -> dict:
        """The keyword arguments of the model's constructor.

        Returns:
          ``kwargs`` with JSON lists as the tuples the (hashable) Flax modules want.
        """
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.kwargs.items()}


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Meta-learning: the algorithm, its inner loop, the outer optimiser, the schedule and the augmentations.

    The defaults are the configuration selected on validation users (``benchmarks/quality.py``): Meta-SGD whose
    inner step is one Newton step on the output layer (the exact ridge fold-in of each user towards the
    meta-learned output layer, with meta-learned prior variances), meta-training started at the bias model, a
    quarter of the item ids dropped.

    Attributes:
      algorithm: ``"maml"``, ``"reptile"`` or ``"metasgd"``.
      order: ``"second"`` (exact) or ``"first"``.
      adapt: which parameters adapt per user: ``"head"`` (MeLU's local update of the decision layers),
        ``"head/output"``, ``"all"``, ``"default"`` (the model's), a regex, or ``"auto"`` (:func:`resolve`).
      inner_solver: ``"sgd"`` (gradient steps at ``inner_lr``), ``"newton"`` (:mod:`jaxrec.core.newton`: the MAP
        step under the prior ``N(theta, diag(inner_lr))``), ``"mixed"`` (the output layer solved by Newton steps,
        the other adapted leaves by gradient steps), ``"encode"`` (no inner gradient: a model with an
        ``encode_support`` method, TaNP, encodes the support set, :class:`~jaxrec.core.solvers.Amortized`) or
        ``"auto"``.
      inner_lr: the inner rate (a prior variance for Newton steps); Meta-SGD's starting rates.
      inner_steps: inner steps per task (None: 1 Newton step or 5 gradient steps).
      tune_inner_lr: start from the fine-tuning rate chosen on validation users (not from the bias start).
      meta_lr: Adam's rate for the meta-parameters.
      rate_lr: Adam's rate for Meta-SGD's per-parameter inner rates (None: ``meta_lr``).
      anchor: L2-SP's ``lambda`` (:mod:`jaxrec.core.anchoring`): each outer step also pulls every meta-parameter
        back towards its start by ``meta_lr * anchor * (theta - theta_0)``; 0: none.
      frozen: a regex searched in each parameter's ``/``-joined path (e.g. ``"embed_item"``): the leaves it finds
        keep their starting values in meta-training (their inner adaptation, if any, still happens); None: none.
      pretrain: where meta-training starts: ``"bias"`` (the bias model ``mu + b_i`` fitted on the meta-train
        ratings, for a model with an item-bias table; else ``True``), ``True`` (the supervised model of the
        ``no_adapt`` baseline) or ``False`` (random).
      batch_size: tasks (users) per meta-step.
      epochs: passes over the meta-train tasks.
      resample_tasks: split every meta-train user's ratings afresh each epoch (task augmentation).
      item_dropout: fraction of training rows whose item id becomes the OOV slot (DropoutNet).
      task_item_dropout: fraction of meta-train tasks whose every item id becomes the OOV slot (1: every task, so
        that item tasks train the cold path of a model such as MetaEmb's).
      groups: task grouping (:mod:`jaxrec.contrib.grouping`, experimental): initialisations to choose from.
      train_seed: the seed of meta-training alone (the random initialisation, the batch order, the meta-train
        tasks' draws, the ALS start); None: the run's ``seed``. The split, the evaluation and the baselines keep
        ``seed``, so that several values train several models on the same users: the spread of one training run.

    Raises:
      ValueError: if a value is not valid for its field (not one of its choices, not positive, not in ``[0, 1)``,
        an empty ``adapt``; the message starts with the field's name), or ``groups > 1`` comes with
        ``algorithm="reptile"``.
    """

    algorithm: str = _field("metasgd", "the meta-learning algorithm", choices=ALGORITHMS)
    order: str = _field("second", "second (exact) or first order", choices=ORDERS)
    adapt: str = _field(
        "auto",
        "which parameters adapt per user: head | head/output | all | default | a regex (default auto: the output "
        "layer by a Newton step where the model has one, else the model's default set by 5 gradient steps)",
    )
    inner_solver: str = _field(
        "auto",
        "inner steps: sgd (gradient steps at --inner-lr), newton (MAP under a Gaussian prior at the initialisation "
        "with variance --inner-lr; for a small adapted set), mixed (the output layer by Newton steps, the rest by "
        "gradient steps), encode (the model encodes the support set: tanp, lwa, nlba, mwuf) or auto",
        choices=INNER_SOLVERS,
    )
    inner_lr: float = _field(0.1, "inner learning rate (the prior variance of the Newton step)", parse=_float)
    inner_steps: int | None = _field(None, "inner steps per user (default: auto)", parse=_none_or(_int))
    tune_inner_lr: bool = _field(True, "start from the fine-tuning rate chosen on validation users", parse=_bool)
    meta_lr: float = _field(3e-4, "outer Adam learning rate", parse=_float)
    rate_lr: float | None = _field(3e-4, "Adam learning rate of Meta-SGD's rates", parse=_none_or(_float))
    anchor: float = _field(
        0.0, "pull of the meta-parameters back to their start each step (L2-SP, decoupled; 0: none)", parse=_float
    )
    frozen: str | None = _field(
        None,
        "a regex of parameter paths that meta-training leaves at their start (e.g. embed_item: the item id "
        "embeddings of an ALS start)",
        parse=_none_or(str),
    )
    pretrain: bool | str = _field("bias", "where meta-training starts: bias | true | false", parse=_pretrain)
    batch_size: int = _field(32, "users (tasks) per meta-step", parse=_int)
    epochs: int = _field(60, "passes over the meta-train users", parse=_int)
    resample_tasks: bool = _field(True, "split each user's ratings afresh every epoch", parse=_bool)
    item_dropout: float = _field(
        0.25, "fraction of training rows whose item id is hidden (DropoutNet), so that new items are scored from "
        "their features", parse=_float)  # fmt: skip
    task_item_dropout: float = _field(0.0, "fraction of meta-train tasks whose item ids are hidden", parse=_float)
    groups: int = _field(
        1,
        "task grouping (experimental): this many initialisations, each new user adapting from the one that fits "
        "their ratings best",
        parse=_int,
    )
    train_seed: int | None = _field(
        None,
        "the seed of meta-training alone (initialisation, batch order, task draws); the split and the evaluation "
        "keep --seed (default: --seed)",
        parse=_none_or(_int),
    )

    def __post_init__(self):
        _check(self.algorithm in ALGORITHMS, "algorithm", f"must be one of {ALGORITHMS}, got {self.algorithm!r}")
        _check(self.order in ORDERS, "order", f"must be one of {ORDERS}, got {self.order!r}")
        _check(
            self.inner_solver in INNER_SOLVERS,
            "inner_solver",
            f"must be one of {INNER_SOLVERS}, got {self.inner_solver!r}",
        )
        _check(isinstance(self.adapt, str) and self.adapt != "", "adapt", f"must be a name or a regex: {self.adapt!r}")
        _positive_number(self.inner_lr, "inner_lr")
        if self.inner_steps is not None:
            _positive_int(self.inner_steps, "inner_steps", minimum=0)
            if self.inner_steps == 0 and self.algorithm in ("reptile", "metasgd"):
                raise ValueError(no_inner_step(self.algorithm))  # here, before a run folder is made
        _positive_number(self.meta_lr, "meta_lr")
        if self.rate_lr is not None:
            _positive_number(self.rate_lr, "rate_lr")
        _check(
            isinstance(self.anchor, int | float) and math.isfinite(self.anchor) and self.anchor >= 0,
            "anchor",
            f"must be a finite number >= 0, got {self.anchor!r}",
        )
        if self.frozen is not None:
            _check(isinstance(self.frozen, str) and self.frozen != "", "frozen", f"must be a regex: {self.frozen!r}")
            try:
                re.compile(self.frozen)
            except re.error as e:
                raise ValueError(f"frozen: not a regex ({e}): {self.frozen!r}") from None
        _check(self.pretrain in PRETRAIN, "pretrain", f"must be 'bias', true or false, got {self.pretrain!r}")
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.epochs, "epochs")
        _fraction(self.item_dropout, "item_dropout")
        ok = isinstance(self.task_item_dropout, int | float) and 0.0 <= float(self.task_item_dropout) <= 1.0
        _check(ok, "task_item_dropout", f"must be in [0, 1], got {self.task_item_dropout!r}")
        _check(isinstance(self.groups, int) and self.groups >= 1, "groups", f"must be >= 1, got {self.groups!r}")
        if self.groups > 1 and self.algorithm == "reptile":
            raise ValueError("groups > 1 needs a meta-gradient algorithm (maml or metasgd), not reptile")
        if self.train_seed is not None:
            _positive_int(self.train_seed, "train_seed", minimum=0)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation: the baselines, how they are fitted and tuned, and the metrics' settings.

    Attributes:
      baselines: the baselines run beside the meta-learner (a subset of :data:`BASELINES`).
      ks: the cut-offs of nDCG@k (and HR@k).
      bootstrap: bootstrap resamples over users for the 95% intervals.
      eval_batch_size: tasks per evaluation batch.
      finetune_lrs: the grid of fine-tuning rates (prior variances) tried on the validation users.
      supervised_epochs: the epochs of the non-meta model's Adam training on rows.
      supervised_lr: the Adam learning rate of the non-meta model.
      supervised_batch: the rows per batch of the non-meta model.
      bias_reg: ridge strengths ``(lambda_i, lambda_u)`` of the bias baseline.

    Raises:
      ValueError: if a baseline is unknown, a cut-off or count is not a positive integer (``supervised_epochs``:
        not >= 0), or ``bias_reg`` is not two numbers (the message starts with the field's name).
    """

    baselines: tuple = _field(BASELINES, "comma-separated baselines, or none", parse=_list_of(str))
    ks: tuple = _field((1, 3, 10), "cut-offs of nDCG@k and HR@k", parse=_list_of(_int))
    bootstrap: int = _field(1000, "bootstrap resamples for the 95% intervals", parse=_int)
    eval_batch_size: int = _field(64, "tasks per evaluation batch", parse=_int)
    finetune_lrs: tuple = _field(
        (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0), "fine-tuning rates tried on validation users", parse=_list_of(_float)
    )
    supervised_epochs: int = _field(5, "epochs of the non-meta model", parse=_int)
    supervised_lr: float = _field(1e-3, "Adam learning rate of the non-meta model", parse=_float)
    supervised_batch: int = _field(256, "rows per batch of the non-meta model", parse=_int)
    bias_reg: tuple = _field((10.0, 5.0), "ridge strengths of the bias baseline (items, users)", parse=_list_of(_float))

    def __post_init__(self):
        for name in ("baselines", "ks", "finetune_lrs", "bias_reg"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        unknown = [b for b in self.baselines if b not in BASELINES]
        topn = " (top-N baselines go to --topn-baselines)" if unknown and set(unknown) <= set(TOPN_BASELINES) else ""
        _check(not unknown, "baselines", f"has unknown name(s) {unknown}; choose from {list(BASELINES)}{topn}")
        _check(all(isinstance(k, int) and k >= 1 for k in self.ks), "ks", f"must be integers >= 1, got {self.ks}")
        _positive_int(self.bootstrap, "bootstrap")
        _positive_int(self.eval_batch_size, "eval_batch_size")
        _positive_int(self.supervised_epochs, "supervised_epochs", minimum=0)
        _positive_int(self.supervised_batch, "supervised_batch")
        _check(len(self.bias_reg) == 2, "bias_reg", f"must be two numbers (items, users), got {self.bias_reg}")


@dataclasses.dataclass(frozen=True)
class TopNConfig:
    """Top-N recommendation from implicit feedback (``feedback="implicit"``): tasks, negatives, loss, evaluation.

    Attributes:
      shots: support interactions of a task (``K``): a new user's first ``K`` interactions.
      query_cap: the most query interactions of an evaluation task (the user's next ones).
      train_query: the most query interactions of a meta-train task.
      negatives: sampled negatives per positive row.
      item_start: ``"random"``, or ``"als"``: a two-tower model's item vectors (and pooled history embeddings)
        start at the item factors of implicit ALS on the meta-train users.
      train_order: meta-train tasks: ``"random"`` subsets of a user's interactions, or ``"time"`` windows of
        consecutive ones (the support followed by its future, as in evaluation; needs timestamps).
      sampler: ``"uniform"`` over the training items or ``"popularity"``.
      ranking_loss: ``"softmax"`` (sampled softmax, logQ-corrected), ``"bpr"``, ``"bce"``, ``"als"`` (the
        implicit-ALS objective, its catalogue term estimated from the negatives: a Newton step is the ALS fold-in)
        ``"als_exact"`` (the same with the catalogue term exact, from the Gram matrix of every item vector; a
        two-tower model) or ``"logistic_exact"`` (the log-loss over every item, each interaction a label-1 example
        of confidence ``1 + c w``; Newton inner steps are IRLS, several of them iterate to the MAP user vector).
      query_loss: the loss of the query after adaptation in meta-training (the outer loss), one of the same; None
        for ``ranking_loss``. E.g. ``ranking_loss="als_exact", query_loss="softmax"``: adapt by the exact ALS
        fold-in, meta-train for the ranking of the query.
      als_confidence: the extra confidence ``c`` of an interaction in the ``"als"``, ``"als_exact"`` and
        ``"logistic_exact"`` losses
        (target 1 with confidence ``1 + c w``, every other item target 0 with confidence 1; Hu, Koren & Volinsky,
        ICDM 2008). With ``item_start="als"`` the item factors are fitted with the same ``c`` and the ridge
        strength ``1 / (2 inner_lr)`` of the fold-in, so that before any meta-step the meta-learner is the ``mf``
        baseline with those strengths.
      test_frac: the fraction of users who are new (test) users.
      warm_frac: the fraction of meta-train users whose latest interactions form the warm scenario.
      new_item_frac: the fraction of the items first interacted with last that are held out of all training as
        new items; the meta-train users' interactions with them form the ``new_item`` scenario (0: none). An
        item's first interaction is its first in the whole log (any user's: its release, as far as the log shows).
      topn_ks: the cut-offs of Recall, nDCG, HR and MRR.
      topn_baselines: the baselines run beside the meta-learner.
      catalogue_chunk: items scored per chunk of the streamed catalogue (memory ``O(users x chunk)``).
      rerank: a model name (e.g. ``"melu"``): also evaluate ``"rerank"``, the meta-learner's top
        ``rerank_candidates`` items re-ranked by this model, meta-trained on the same tasks with the same
        algorithm (``ranking_loss="als_exact"`` becomes ``"bpr"`` for it) and adapted to the same support set
        (meta-learning for the recall stage and for re-ranking); the run folder keeps it, and ``recommend`` and
        ``serve`` list re-ranked where the validation users prefer it
        (:mod:`~jaxrec.experiment.reranker_record`); None: no re-ranking.
      rerank_candidates: items the re-ranker scores per user (``R``).
      hybrid: a baseline's name (e.g. ``"itemknn"``): also evaluate ``"maml+<name>"``, the meta-learner's scores and
        the baseline's, each standardised per user, added with the baseline's weight chosen on the validation users
        (:mod:`jaxrec.evaluation.hybrid`), and ``"<other>+<name>"`` for every other interaction or content baseline,
        tuned alike (the baselines get the same second model); None: no hybrid.
      support_recency: the strengths ``tau`` of the support's recency weighting to choose from, per method, on the
        validation users (empty: off). A new user's support is their first ``shots`` interactions in time; with
        ``tau`` an interaction ``a`` places before the user's newest weighs ``exp(-tau a / (shots - 1))``, scaled
        so that a support of ``shots`` items has mean 1 (:func:`~jaxrec.evaluation.topn.recency_weights` with
        ``span = shots``), in the method's fold-in: the interactions nearest the future count most, and a request
        of more or fewer items weighs each by its age alone. Every method but ``popular`` gets its
        own choice (``0`` included: no weighting), recorded in ``tuned["support_recency"]`` and applied by
        ``recommend`` and ``serve`` to a request's items in the order sent. Logs without timestamps are not
        weighted (their support order is random), nor the warm and new-item tasks (a user's latest interactions,
        unordered), nor ``rerank``'s retrieval (the meta-learner unweighted).
      select_epoch: which state meta-training keeps (and a run folder serves), among the start and each epoch's end
        scored on the validation users (:mod:`jaxrec.experiment.selection`): ``"last"``, ``"best"`` or
        ``"clear_best"``, the best only when the validation users support its lead over the last at the family-wise
        5% level (else the last). The choice is recorded in ``tuned["epoch"]``.
      sampled_negatives: with N > 0 the test scenarios are also scored by the sampled protocol, each query positive
        against N uniformly drawn items the user did not interact with (``sampled_hr@k``). **Biased** (Krichene
        and Rendle, KDD 2020): it can order methods unlike the full ranking; offered to compare with papers.

    Raises:
      ValueError: if a value is not valid for its field (the message starts with the field's name).
    """

    shots: int = _field(10, "support interactions per top-N task (a new user's first K)", parse=_int)
    query_cap: int = _field(100, "the most query interactions of a top-N evaluation task", parse=_int)
    train_query: int = _field(20, "the most query interactions of a top-N meta-train task", parse=_int)
    negatives: int = _field(20, "sampled negatives per positive", parse=_int)
    item_start: str = _field(
        "random", "two-tower item vectors start random or at implicit ALS's item factors", choices=("random", "als")
    )
    train_order: str = _field(
        "random",
        "meta-train tasks: random subsets, or time windows (a support, then its future)",
        choices=("random", "time"),
    )
    sampler: str = _field("uniform", "negative sampler", choices=("uniform", "popularity"))
    ranking_loss: str = _field("softmax", "top-N training loss", choices=TOPN_LOSSES)
    query_loss: str | None = _field(
        None, "top-N loss of the query in meta-training (default: the ranking loss)", choices=TOPN_LOSSES
    )
    als_confidence: float = _field(
        10.0, "extra confidence of an interaction in the ALS losses (alpha of implicit ALS)", parse=_float
    )
    test_frac: float = _field(0.2, "fraction of users who are new (test) users", parse=_float)
    warm_frac: float = _field(0.1, "fraction of meta-train users held out as warm users", parse=_float)
    new_item_frac: float = _field(
        0.0, "fraction of the items held out as new items, untrained on (the new_item scenario)", parse=_float
    )
    topn_ks: tuple = _field((10, 20, 50), "cut-offs of the top-N metrics", parse=_list_of(_int))
    topn_baselines: tuple = _field(TOPN_BASELINES, "comma-separated top-N baselines, or none", parse=_list_of(str))
    catalogue_chunk: int = _field(4096, "items scored per chunk of the catalogue", parse=_int)
    rerank: str | None = _field(
        None,
        "also evaluate 'rerank': the meta-learner's top --rerank-candidates re-ranked by this model (e.g. melu), "
        "meta-trained alike; recommend and serve list them where the validation users' nDCG prefers them",
        parse=_none_or(str),
    )
    rerank_candidates: int = _field(200, "items the re-ranking model scores per user", parse=_int)
    hybrid: str | None = _field(
        None,
        "also evaluate 'maml+NAME' (and every other interaction or content baseline +NAME): the scores standardised "
        "per user and added, the weight of the baseline NAME (e.g. itemknn) chosen on validation users",
        parse=_none_or(str),
    )
    support_recency: tuple = _field(
        (),
        "recency weights of a new user's support to choose from per method on validation users, e.g. 0,1,2,3,4: an "
        "interaction a places before the newest weighs exp(-tau a / (shots - 1)), scaled to mean 1 over shots items; "
        "none: off",
        parse=_list_of(_float),
    )
    select_epoch: str = _field(
        "clear_best",
        "the state kept and evaluated: the last, the best on validation users, or the best only when the validation "
        "users support its lead over the last (clear_best: a paired interval at the family-wise 5% level)",
        choices=SELECT_RULES,
    )
    sampled_negatives: int = _field(
        0,
        "also score each test positive against this many sampled negatives (the sampled protocol: biased, for "
        "comparison with papers only; Krichene and Rendle, KDD 2020); 0: off",
        parse=_int,
    )

    def __post_init__(self):
        for name in ("topn_ks", "topn_baselines", "support_recency"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        _check(
            isinstance(self.support_recency, tuple)
            and all(
                isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t >= 0
                for t in self.support_recency
            ),
            "support_recency",
            f"must be a list of numbers >= 0 (e.g. 0,1,2,3,4), got {self.support_recency!r}",
        )
        object.__setattr__(self, "support_recency", tuple(float(t) for t in self.support_recency))
        for name in ("shots", "query_cap", "train_query", "negatives", "catalogue_chunk", "rerank_candidates"):
            _positive_int(getattr(self, name), name)
        if self.rerank is not None and self.topn_ks:
            _check(
                self.rerank_candidates >= max(self.topn_ks),
                "rerank_candidates",
                f"must be >= the largest cut-off of topn_ks ({max(self.topn_ks)}), got {self.rerank_candidates}",
            )
        _positive_int(self.sampled_negatives, "sampled_negatives", minimum=0)
        _check(
            isinstance(self.als_confidence, (int, float)) and self.als_confidence >= 0,
            "als_confidence",
            f"must be a number >= 0, got {self.als_confidence!r}",
        )
        if self.hybrid is not None:
            _check(
                self.hybrid in HYBRID_PARTNERS,
                "hybrid",
                f"must be one of {', '.join(HYBRID_PARTNERS)}, got {self.hybrid!r}",
            )
            _check(
                self.hybrid in self.topn_baselines,
                "hybrid",
                f"{self.hybrid!r} is not among the baselines run (topn_baselines: "
                f"{', '.join(self.topn_baselines) or 'none'}): add it to --topn-baselines",
            )
        _check(
            self.select_epoch in SELECT_RULES,
            "select_epoch",
            f"must be one of {', '.join(SELECT_RULES)}, got {self.select_epoch!r}",
        )
        _check(
            self.sampler in ("uniform", "popularity"), "sampler", f"must be uniform or popularity, got {self.sampler!r}"
        )
        for name in ("ranking_loss", "query_loss"):
            value = getattr(self, name)
            _check(
                value in TOPN_LOSSES or (name == "query_loss" and value is None),
                name,
                f"must be one of {', '.join(TOPN_LOSSES)}, got {value!r}",
            )
        _fraction(self.test_frac, "test_frac")
        _fraction(self.warm_frac, "warm_frac")
        _fraction(self.new_item_frac, "new_item_frac")
        ks = self.topn_ks
        _check(len(ks) > 0 and all(isinstance(k, int) and k >= 1 for k in ks), "topn_ks", f"must be >= 1, got {ks}")
        unknown = [b for b in self.topn_baselines if b not in TOPN_BASELINES]
        _check(not unknown, "topn_baselines", f"has unknown name(s) {unknown}; choose from {list(TOPN_BASELINES)}")


GROUPS = {"data": DataConfig, "protocol": ProtocolConfig, "model": ModelConfig, "meta": MetaConfig,
          "evaluation": EvalConfig, "topn": TopNConfig}  # fmt: skip
TOP_LEVEL = ("seed", "devices")


def _group_fields() -> dict[str, tuple[str, str]]:
    """``{flat name: (group, field)}``; a field's flat name is its ``flag`` metadata or its own name."""
    out = {}
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            name = f.metadata.get("flag") or f.name
            if name in out or name in TOP_LEVEL:
                raise AssertionError(f"config field name {name!r} is not unique")
            out[name] = (group, f.name)
    return out


FIELDS = _group_fields()


#: the rating protocol's task shapes, which a top-N run (``feedback="implicit"``) never reads: its tasks are shaped
#: by the top-N options, each named here as what to set instead
RATING_TASK_SHAPES = {
    "split": "top-N supports are a user's first --shots interactions",
    "support": "--shots",
    "query": "--query-cap, --train-query",
    "min_ratings": "a top-N user needs --shots interactions and a query; every other user is kept",
    "max_ratings": "a long history is subsampled to --train-query, never dropped",
    "support_buckets": "top-N supports are --shots long",
    "history": "a top-N row's history is its support, --shots",
}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run (see the module docstring).

    Attributes:
      data: :class:`DataConfig`.
      protocol: :class:`ProtocolConfig`.
      model: :class:`ModelConfig`.
      meta: :class:`MetaConfig`.
      evaluation: :class:`EvalConfig`.
      topn: :class:`TopNConfig` (used with ``feedback="implicit"``).
      seed: the seed of every random choice (splits, batches, initialisation, bootstrap).
      devices: None (one device), a device count or ``"all"``: the task axis sharded over a mesh.

    Raises:
      ValueError: if a group is not of its class, ``seed`` is not an integer >= 0, or ``devices`` is not a positive
        integer or ``"all"``.
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    protocol: ProtocolConfig = dataclasses.field(default_factory=ProtocolConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    meta: MetaConfig = dataclasses.field(default_factory=MetaConfig)
    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    topn: TopNConfig = dataclasses.field(default_factory=TopNConfig)
    seed: int = _field(0, "the seed of every random choice", parse=_int)
    devices: int | str | None = _field(
        None,
        "compute on N devices, which train, evaluate and serve shard over (or 'all' local devices; on a CPU-only "
        "host, N splits its cores into N devices); default one device",
        parse=_devices,
    )

    def __post_init__(self):
        for group, cls in GROUPS.items():
            _check(isinstance(getattr(self, group), cls), group, f"must be a {cls.__name__}")
        _positive_int(self.seed, "seed", minimum=0)
        if self.devices is not None and self.devices != "all":
            _positive_int(self.devices, "devices")
        if self.data.feedback != "implicit":  # top-N evaluation options would otherwise be ignored in silence
            _check(self.topn.rerank is None, "rerank", "needs --feedback implicit (it re-ranks top-N lists)")
            _check(not self.topn.sampled_negatives, "sampled_negatives", "needs --feedback implicit (top-N only)")
            _check(self.topn.hybrid is None, "hybrid", "needs --feedback implicit (it ranks top-N lists)")
            top, default = self.topn, TopNConfig()
            changed = [
                f.name for f in dataclasses.fields(TopNConfig) if getattr(top, f.name) != getattr(default, f.name)
            ]
            _check(not changed, ", ".join(changed), "needs --feedback implicit (a top-N option: a rating run reads "
                   "the rating protocol's --query, --min-ratings, --ks, --baselines)")  # fmt: skip
        else:  # rating options would be ignored in silence; the rating protocol's schemes too
            _check(self.protocol.scheme == "melu", "scheme", f"{self.protocol.scheme!r} is a rating-protocol split: "
                   "top-N (--feedback implicit) splits users by time, and has no other scheme yet")  # fmt: skip
            _check(self.protocol.tasks_by == "user", "tasks_by", "'item' is for rated data: top-N (--feedback "
                   "implicit) ranks the catalogue for users, and item tasks have no top-N protocol yet")  # fmt: skip
            rating_options = {
                "baselines": (self.evaluation.baselines != EvalConfig().baselines, "top-N baselines: --topn-baselines"),
                "ks": (self.evaluation.ks != EvalConfig().ks, "top-N cut-offs: --topn-ks"),
                "implicit": (self.data.implicit, "rated data as interactions: --positive-threshold R"),
                "rating_scale": (self.data.rating_scale is not None, "top-N ranks, it predicts no rating"),
            }
            rated = ProtocolConfig()
            for name, instead in RATING_TASK_SHAPES.items():
                rating_options[name] = (getattr(self.protocol, name) != getattr(rated, name), instead)
            for name, (given, instead) in rating_options.items():
                _check(not given, name, f"is a rating option, ignored by --feedback implicit ({instead})")

    @classmethod
    def make(cls, **fields: Any) -> ExperimentConfig:
        """Make the default config with some fields changed.

        Args:
          **fields: new values, each named by its field name (``epochs=2``).

        Returns:
          The config.

        Raises:
          ValueError: if a name is not a config field or a value is not valid.
        """
        return cls().override(**fields)

    def override(self, **fields: Any) -> ExperimentConfig:
        """Copy the config with some fields changed.

        Args:
          **fields: new values, each named by its field name, unique across the groups (``data`` is the path of a
            log file).

        Returns:
          The changed copy.

        Raises:
          ValueError: if a name is not a config field or a value is not valid.
        """
        if "model" in fields and fields["model"] != self.model.name and "model_kwargs" not in fields:
            fields = {**fields, "model_kwargs": {}}  # the kwargs of one model family mean nothing to another
        unknown = sorted(set(fields) - set(FIELDS) - set(TOP_LEVEL))
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; known: {sorted(FIELDS) + list(TOP_LEVEL)}")
        changes: dict[str, Any] = {k: v for k, v in fields.items() if k in TOP_LEVEL}
        by_group: dict[str, dict] = {}
        for name, value in fields.items():
            if name in FIELDS:
                group, field = FIELDS[name]
                by_group.setdefault(group, {})[field] = value
        for group, values in by_group.items():
            changes[group] = dataclasses.replace(getattr(self, group), **values)
        return dataclasses.replace(self, **changes)

    @property
    def training_seed(self) -> int:
        """The seed meta-training draws from: ``meta.train_seed``, or ``seed`` when it is None."""
        return self.seed if self.meta.train_seed is None else int(self.meta.train_seed)

    def history(self) -> int:
        """Items of history per row: ``protocol.history``, or 10 for ``model="gru"`` when it is 0 (the GRU reads a
        history); in top-N mode (``feedback="implicit"``) the support set, ``topn.shots``."""
        if self.data.feedback == "implicit":
            return int(self.topn.shots)
        if self.protocol.history:
            return int(self.protocol.history)
        return 10 if self.model.name == "gru" else 0

    def flat(self) -> dict[str, Any]:
        """List every field by its name.

        Returns:
          ``{field name: value}`` over every group (the names :meth:`override` and the flags use).
        """
        out = {name: getattr(getattr(self, group), field) for name, (group, field) in FIELDS.items()}
        out.update({name: getattr(self, name) for name in TOP_LEVEL})
        return out

    def to_dict(self) -> dict:
        """Record the config as JSON-able data (the inverse of :meth:`from_dict`).

        Returns:
          ``{"format", <group>: {field: value}, "seed", "devices"}`` (tuples as lists).
        """
        record: dict[str, Any] = {"format": RECORD_FORMAT}
        for group in GROUPS:
            record[group] = json.loads(json.dumps(dataclasses.asdict(getattr(self, group))))
        record.update({name: getattr(self, name) for name in TOP_LEVEL})
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ExperimentConfig:
        """Read a config record written by :meth:`to_dict`.

        Args:
          record: the record.

        Returns:
          The config.

        Raises:
          ValueError: if the record is of another format (a jaxrec 0.1 record included) or has unknown sections or
            fields, or a value is not valid.
        """
        if not isinstance(record, Mapping) or record.get("format") != RECORD_FORMAT:
            found = record.get("format") if isinstance(record, Mapping) else type(record).__name__
            if isinstance(record, Mapping) and found is None and "inner_lr" in record:
                raise ValueError("this is a jaxrec 0.1 record (a flat config), which this version does not read")
            raise ValueError(f"not a jaxrec config record of format {RECORD_FORMAT!r} (format {found!r})")
        unknown = sorted(set(record) - {"format", *GROUPS, *TOP_LEVEL})
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown}")
        groups = {}
        for group, klass in GROUPS.items():
            values = dict(record.get(group, {}))
            names = {f.name for f in dataclasses.fields(klass)}
            extra = sorted(set(values) - names)
            if extra:
                raise ValueError(f"unknown {group} field(s) {extra}; known: {sorted(names)}")
            groups[group] = klass(**values)
        # a record describes a run: the options its kind of run never read (a rating run's top-N group, a top-N run's
        # rating options) are today's defaults, which the config requires, whatever an earlier version wrote there
        if groups["data"].feedback == "implicit":
            groups["data"] = dataclasses.replace(groups["data"], implicit=False, rating_scale=None)
            rated = ProtocolConfig()
            shapes = {name: getattr(rated, name) for name in RATING_TASK_SHAPES}
            groups["protocol"] = dataclasses.replace(groups["protocol"], **shapes)
            rating = EvalConfig()
            groups["evaluation"] = dataclasses.replace(groups["evaluation"], baselines=rating.baselines, ks=rating.ks)
        else:
            groups["topn"] = TopNConfig()
        return cls(**groups, **{name: record[name] for name in TOP_LEVEL if name in record})

    @classmethod
    def load(cls, path: str | Path, **fields: Any) -> ExperimentConfig:
        """Read a config file.

        Args:
          path: a JSON file: an object of field names (``{"epochs": 2, "model": "mf"}``) applied to the defaults,
            or a whole record (:meth:`to_dict`).
          **fields: field values applied on top.

        Returns:
          The config.

        Raises:
          ValueError: if the file cannot be read, is not a JSON object, or names an unknown field or an invalid
            value; the message starts with the path.
        """
        path = Path(path)
        try:
            content = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the config file: {e}") from e
        if not isinstance(content, dict):
            raise ValueError(f"{path}: a config file holds a JSON object of field names")
        try:
            base = cls.from_dict(content) if "format" in content else cls.make(**content)
            return base.override(**fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e


# ----------------------------------------------------------------------------------------------------------------
# "auto" made concrete


def _resolution_spec(config: ExperimentConfig):
    """A feature spec with MovieLens-like side features, for the parameter structure of the configured model:
    which layers it has does not depend on vocabulary sizes."""
    return dataclasses.replace(testing.reference_spec(item_vocab=8), history=config.history())


def with_feature_tables(dataset: Dataset, data: DataConfig) -> Dataset:
    """``dataset`` with the feature tables ``data`` names (``--item-features``, ``--user-features``) joined
    (:func:`~jaxrec.data.join_side_files`); ``dataset`` itself when it names none. A RecBole log (``x.inter``)
    whose feature tables lie beside it (``x.item``, ``x.user``) and are not named is warned of: RecBole reads them
    by their names, jaxrec only when asked."""
    log = Path(data.path) if data.path is not None else None
    if log is not None and log.name.endswith((".inter", ".inter.gz")):
        for role in ("item", "user"):
            beside = log.with_name(log.name.removesuffix(".gz").removesuffix(".inter") + f".{role}")
            if getattr(data, f"{role}_features") is None and beside.is_file():
                logger.warning(
                    "%s lies beside the log and is not read: name it as %s_features= (--%s-features %s) to use its "
                    "features",
                    beside,
                    role,
                    role,
                    beside,
                )
    return join_side_files(
        dataset, user_features=data.user_features, item_features=data.item_features, encoding=data.encoding
    )


def with_dataset(config: ExperimentConfig, dataset: Any) -> ExperimentConfig:
    """``config`` recording a :class:`~jaxrec.data.Dataset` given in memory (e.g. by
    :func:`~jaxrec.data.from_dataframe`) in place of the data it names: ``dataset`` its name, no path or folder, so
    that what is written beside a run says which data it read, never a file or a dataset it did not read."""
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"dataset must be a jaxrec.data.Dataset, got {type(dataset).__name__} (from_dataframe(df, user=..., "
            "item=..., rating=...) builds one from a DataFrame)"
        )
    name = dataset.name or "dataframe"
    data = dataclasses.replace(config.data, dataset=name, path=None, data_dir=None, columns=None, sep=None)
    return dataclasses.replace(config, data=data)


def resolve(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with ``adapt="auto"``, ``inner_solver="auto"`` and ``inner_steps=None`` made concrete.

    ``adapt="auto"``: the output layer (``"head/output"``) for a model that has one (MeLU, NeuMF, GRU), unless
    ``inner_solver="sgd"``; otherwise the model's default adapted set (``"default"``; MeLU's: the decision layers).
    ``inner_solver="auto"``: ``"newton"`` when the adapted set is ``"head/output"`` or the default set of a model
    whose user side is linear and small (``linear_user_side``: the two-tower's user vector), else ``"sgd"``.
    ``inner_steps=None``: 1 Newton step, or 5 gradient steps. A model that encodes its support set (TaNP) gets
    ``inner_solver="encode"``, its own adapted set and one step (one encoding). A pure function of the config: the
    model's parameter structure is traced (``jax.eval_shape``), not allocated.

    Args:
      config: the config.

    Returns:
      The config with ``adapt``, ``inner_solver`` and ``inner_steps`` concrete.

    Raises:
      ValueError: before any data is read, if the adapted set selects no parameter of the model (the users would
        silently not adapt) or too many for the Newton step, or the Newton or mixed solver needs an output layer
        the model does not have.
    """
    meta, name = config.meta, config.model.name
    spec = _resolution_spec(config)
    model = models.create(name, spec, **config.model.constructor_kwargs())
    rows = testing.synthetic_rows(spec, 2, jax.random.PRNGKey(0))
    flat = jax.tree_util.tree_flatten_with_path(jax.eval_shape(model.init, jax.random.PRNGKey(0), rows))[0]

    def selects(adapt_spec: str) -> bool:
        predicate = models.adapt_filter(adapt_spec, model)
        return any(predicate(path, leaf) for path, leaf in flat)

    adapt, solver, steps = meta.adapt, meta.inner_solver, meta.inner_steps
    encodes = callable(getattr(type(model), "encode_support", None))
    if solver == "encode" and not encodes:
        raise ValueError(
            f"inner_solver='encode' needs a model that encodes a support set (tanp, lwa, nlba, mwuf); {name!r} does not"
        )
    side = getattr(type(model), "task_side", None)
    if side is not None and config.protocol.tasks_by != side:
        raise ValueError(
            f"model {name!r} adapts to {side} tasks (an item described by the users who rated it): set "
            f"tasks_by={side!r} (--tasks-by {side}; --method {name} sets it), got tasks_by="
            f"{config.protocol.tasks_by!r}"
        )
    if callable(getattr(type(model), "memory_write", None)):
        # MAMO: memories written after each MAML step from plain params; never moved by the outer optimiser
        checks = (
            ("algorithm", meta.algorithm, meta.algorithm == "maml"),
            ("feedback", config.data.feedback, config.data.feedback != "implicit"),
            ("groups", meta.groups, meta.groups == 1),
        )
        got = ", ".join(f"{field}={value!r}" for field, value, fits in checks if not fits)
        if got:
            raise ValueError(
                f"model {name!r} writes its memories after each MAML step from rated support and query sets: it "
                f"needs algorithm='maml', rated feedback and one group (--method {name} sets them), got {got}"
            )
        pattern = type(model).frozen_pattern
        if meta.frozen is None or pattern not in meta.frozen:
            config = config.override(frozen=pattern if meta.frozen is None else f"{meta.frozen}|{pattern}")
            meta = config.meta
    if encodes:  # a neural process adapts by encoding its support set into its own context leaves, nothing else
        if config.data.feedback == "implicit":
            raise ValueError(
                f"model {name!r} encodes (features, rating) pairs of rated support rows; top-N from implicit "
                "feedback (--feedback implicit) is not supported for it yet: use rated data"
            )
        if solver not in ("auto", "encode") or adapt not in ("auto", "default"):
            raise ValueError(
                f"model {name!r} adapts by encoding the support set: inner_solver must be auto or encode and adapt "
                f"auto or default, got inner_solver={solver!r}, adapt={adapt!r}"
            )
        # Reptile's step (theta - phi) is zero on every weight an encoding leaves fixed, and Meta-SGD's rates
        # scale gradient steps there are none of: only MAML's query gradient trains an encoder
        if meta.algorithm != "maml" or steps not in (None, 1):
            raise ValueError(
                f"model {name!r} adapts by one encoding of the support set, meta-trained through the query loss: "
                f"it needs algorithm='maml' (--method {name} sets it) and inner_steps 1, got "
                f"algorithm={meta.algorithm!r}, inner_steps={steps!r}"
            )
        # the inner rate is a step size, and an encoding takes no step: tuning it on validation users is moot
        return config.override(adapt="default", inner_solver="encode", inner_steps=1, tune_inner_lr=False)
    if solver == "mixed" and not selects(MIXED_SOLVE):
        raise ValueError(f"inner_solver='mixed' solves the output layer (head/output): model {name!r} has none")
    if adapt == "auto":
        if solver in ("auto", "newton") and selects("head/output"):
            adapt = "head/output"
        elif solver == "newton":
            raise ValueError(
                f"inner_solver='newton' with adapt='auto': model {name!r} has no output layer (head/output); "
                "name a small set of parameters to adapt"
            )
        else:
            adapt = "default"
    if not selects(adapt) and steps != 0:
        raise ValueError(f"adapt={adapt!r} selects no parameter of model {name!r}: no user would adapt")
    if solver == "auto":
        # a model whose default adapted set is a small linear user side (the two-tower's user vector) is solved
        linear_side = adapt == "default" and getattr(type(model), "linear_user_side", False)
        solver = "newton" if adapt == "head/output" or linear_side else "sgd"
    if solver in ("newton", "mixed"):
        predicate = models.adapt_filter(adapt if solver == "newton" else MIXED_SOLVE, model)
        size = sum(math.prod(leaf.shape) for path, leaf in flat if predicate(path, leaf))
        limit = newton().max_params
        if size > limit:
            raise ValueError(
                f"inner_solver='newton' would adapt {size} parameters of model {name!r} (adapt={adapt!r}), more "
                f"than {limit}: it forms their Hessian per user; adapt fewer, e.g. adapt='head/output'"
            )
    if steps is None:
        steps = 1 if solver == "newton" else 5
    return config.override(adapt=adapt, inner_solver=solver, inner_steps=int(steps))


# ----------------------------------------------------------------------------------------------------------------
# command-line flags derived from the fields


def _entries() -> list[tuple[str, str, dataclasses.Field]]:
    """``(flag name, group or "run", field)`` of every config field."""
    defaults = ExperimentConfig()
    out = []
    for name, (group, field) in FIELDS.items():
        out.append((name, group, next(f for f in dataclasses.fields(getattr(defaults, group)) if f.name == field)))
    for name in TOP_LEVEL:
        out.append((name, "run", next(f for f in dataclasses.fields(ExperimentConfig) if f.name == name)))
    return out


def add_flags(parser: Any, names: tuple[str, ...] | None = None) -> None:
    """Add one ``--<field-name>`` flag per config field to an ``argparse`` parser.

    The flags come in one argument group per config group, with the field's help and default. The values stay
    strings until :func:`flag_values` parses them, so that a bad one is reported naming its flag.

    Args:
      parser: the ``argparse`` parser.
      names: only these fields' flags (default: every field's).
    """
    defaults = ExperimentConfig()
    sections: dict[str, Any] = {}
    for name, group, f in _entries():
        if names is not None and name not in names:
            continue
        if group not in sections:
            title = "run" if group == "run" else f"{group} (ExperimentConfig.{group})"
            sections[group] = parser.add_argument_group(title)
        owner = defaults if group == "run" else getattr(defaults, group)
        default = getattr(owner, f.name)
        shown = json.dumps(default) if isinstance(default, dict) else default
        sections[group].add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            choices=f.metadata.get("choices"),
            metavar=None if f.metadata.get("choices") else name.upper(),
            help=f"{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%"),
        )


def flag_values(args: Any) -> dict[str, Any]:
    """Parse the config flags given on the command line.

    Args:
      args: the ``argparse`` namespace of a parser with :func:`add_flags`.

    Returns:
      ``{field name: value}`` of the flags that were given.

    Raises:
      ValueError: if a value does not parse; the message names the flag (``--devices expects a number or 'all',
        got 'many'``).
    """
    out = {}
    for name, _, f in _entries():
        text = getattr(args, name, None)
        if text is None:
            continue
        try:
            out[name] = f.metadata["parse"](text)
        except ValueError as e:
            raise ValueError(f"--{name.replace('_', '-')} {e}, got {text!r}") from None
    return out


def as_flags(message: str) -> str:
    """Put a config error in the command line's words.

    Args:
      message: the error message.

    Returns:
      The message, its leading field name (if any) replaced by the field's flag.
    """
    first, _, rest = message.partition(" ")
    if first in FIELDS or first in TOP_LEVEL:
        return f"--{first.replace('_', '-')} {rest}"
    return message


#: The config fields ``jaxrec evaluate`` may give a restored run (where its data is, how it is evaluated): none of
#: them changes what was trained, so a restored run evaluates the models its folder keeps.
EVALUATION_FIELDS = frozenset(
    {"data", "dataset", "data_dir", "columns", "sep", "item_features", "user_features"}
    | {"baselines", "bootstrap", "eval_batch_size", "sampled_negatives", "hybrid", "topn_baselines", "devices"}
)
