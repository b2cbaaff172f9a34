"""Choosing a configuration on the validation users (``jaxrec choose``).

The baselines' hyper-parameters are chosen per run on the validation users (users held out of every training and
of the test scenarios); this module gives the meta-learner's own configuration the same treatment on a log of
one's own. Every point of a grid of config fields is meta-trained on the same split and scored on the validation
users by the task's selection metric, each point ``trainings`` times (two by default) with the training seeds
``train_seed + 1000 t``, and the best mean is chosen::

    choice = choose(ExperimentConfig.make(**recipe("twotower-als"), data="clicks.csv"),
                    {"als_confidence": [1, 10], "inner_lr": [0.05, 0.005]})
    choice.config          # the base config with the chosen point: what ``jaxrec train --config`` trains

The first training of a point uses the base config's own training seed, so the chosen config trained again
reproduces it: the validation figure a ``jaxrec train`` of the chosen config reaches is the one it was chosen by.
Test users are never scored here.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxrec.core.errors import JaxrecError
from jaxrec.experiment.config import FIELDS, ExperimentConfig
from jaxrec.experiment.run import build_experiment
from jaxrec.experiment.topn import selection_cutoff

__all__ = [
    "Candidate",
    "Choice",
    "FIXED_FIELDS",
    "GridError",
    "TRAINING_SEED_STRIDE",
    "choose",
    "grid_configs",
    "grid_points",
    "selection_metric",
]

logger = logging.getLogger(__name__)

#: training ``t`` of a point uses the seed ``training_seed + TRAINING_SEED_STRIDE * t`` (as the benchmarks'
#: ``--train-seeds`` do), so that training 0 is the base config's own
TRAINING_SEED_STRIDE = 1000

_SPLIT_AND_TASKS = {"shots", "query_cap", "test_frac", "warm_frac", "new_item_frac", "topn_ks", "sampled_negatives"}
#: the fields a grid may not vary: the data, the split and the tasks that are scored (a grid over them would compare
#: figures on different validation users, or score one split's test users as another's validation users), and the
#: seeds, which ``trainings`` draws
FIXED_FIELDS = frozenset(
    {name for name, (group, _) in FIELDS.items() if group in ("data", "protocol")} - {"history", "support_buckets"}
    | _SPLIT_AND_TASKS
    | {"seed", "train_seed", "select_epoch"}  # how a point's training is kept, not what it trains
)


class GridError(JaxrecError, ValueError):
    """A grid that cannot be trained: empty, a field it may not vary, an unknown field or an invalid value (named)."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One point of the grid: its fields, the validation figure of each training and the seconds they took."""

    fields: dict[str, Any]
    scores: tuple[float, ...]
    seconds: float

    @property
    def score(self) -> float:
        """The mean over the trainings: what the choice compares."""
        return math.fsum(self.scores) / len(self.scores)


@dataclasses.dataclass(frozen=True)
class Choice:
    """The grid's points scored on the validation users, and the chosen one.

    Attributes:
      metric: the selection metric (``"recall@20"`` for top-N, ``"mae"`` for ratings).
      higher_is_better: its direction.
      candidates: every point, in grid order.
      best: the index of the chosen point in ``candidates`` (the first of equal scores).
      config: the base config with the chosen point's fields.
      validation_tasks: how many validation tasks (users, or items for item tasks) scored each point: with a few
        dozen, two close points differ by noise, and several ``trainings`` a point are worth their time.
    """

    metric: str
    higher_is_better: bool
    candidates: tuple[Candidate, ...]
    best: int
    config: ExperimentConfig
    validation_tasks: int

    def to_dict(self) -> dict[str, Any]:
        """The record of the choice (JSON-able): the metric, every point's figures and the chosen point."""
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "split_seed": self.config.seed,
            "validation_tasks": self.validation_tasks,
            "candidates": [
                {"fields": c.fields, "validation": list(c.scores), "mean": c.score, "seconds": c.seconds}
                for c in self.candidates
            ],
            "chosen": self.candidates[self.best].fields,
        }


def selection_metric(config: ExperimentConfig) -> tuple[str, bool]:
    """The metric a configuration is chosen by: for top-N (implicit feedback) the Recall@k the run's own choices are
    made by (:func:`~jaxrec.experiment.topn.selection_cutoff`: Recall@20 when 20 is a cut-off; on a catalogue too
    small for it, the experiment's :attr:`~jaxrec.experiment.topn.TopNExperiment.select_metric` is used instead),
    the baselines' own criterion; ``("mae", False)`` for ratings."""
    if config.data.feedback == "implicit":
        return f"recall@{selection_cutoff(config.topn.topn_ks, math.inf)}", True
    return "mae", False


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of a grid's values, the first field varying slowest.

    Args:
      grid: ``{field name: [values]}``, each list non-empty.

    Returns:
      ``[{field: value}]``.

    Raises:
      GridError: an empty grid, a field whose values are not a non-empty list, or a value repeated in one field.
    """
    if not isinstance(grid, Mapping) or not grid:
        raise GridError('the grid is empty: give {field name: [values, ...]}, e.g. {"als_confidence": [1, 10]}')
    for name, values in grid.items():
        if not isinstance(values, list | tuple) or not values:
            raise GridError(f"grid field {name!r}: give a non-empty list of values, got {values!r}")
        seen = [repr(v) for v in values]
        if len(set(seen)) != len(seen):
            raise GridError(f"grid field {name!r}: a value is repeated in {list(values)!r}")
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grid[n] for n in names))]


def grid_configs(
    config: ExperimentConfig, grid: Mapping[str, Sequence[Any]]
) -> tuple[list[dict[str, Any]], list[ExperimentConfig]]:
    """Every point of a grid (:func:`grid_points`) and the base config with its fields, each checked.

    Raises:
      GridError: a bad grid, a field of :data:`FIXED_FIELDS`, or a point naming an unknown field or an invalid
        value (the point and field named).
    """
    points = grid_points(grid)
    fixed = sorted(set(grid) & FIXED_FIELDS)
    if fixed:
        raise GridError(
            f"the grid varies {fixed}: these fix the data, the split or the scored tasks (the points would be scored "
            "on different users) or the seeds (trainings draws them); keep them out of the grid"
        )
    configs = []
    for fields in points:
        try:
            configs.append(config.override(**fields))
        except (TypeError, ValueError) as e:
            raise GridError(f"grid point {fields}: {e}") from None
    return points, configs


def choose(
    config: ExperimentConfig,
    grid: Mapping[str, Sequence[Any]],
    *,
    trainings: int = 2,
    build: Callable[[ExperimentConfig], Any] | None = None,
    on_score: Callable[[dict[str, Any], int, float, float], None] | None = None,
) -> Choice:
    """Meta-train every point of a grid and choose the one best on the validation users.

    Args:
      config: the base config (its split seed fixes the users every point is trained and scored on).
      grid: ``{field name: [values]}`` (:func:`grid_points`); every point is checked before any training.
      trainings: trainings per point (``>= 1``), seeds ``training_seed + 1000 t``; the points compare by the mean.
        One is noisy: on ml-100k's and ml-latest-small's first split (70 and 46 validation users) one training a
        point picks the other confidence than six trainings over three splits did; two pick the same.
      build: ``config -> experiment`` (default :func:`jaxrec.experiment.run.build_experiment`).
      on_score: called after each training with ``(fields, t, validation figure, seconds)`` (progress).

    Returns:
      The :class:`Choice`.

    Raises:
      GridError: a bad grid, an unknown field or an invalid value (named), before any training.
      ValueError: ``trainings < 1``.
    """
    if isinstance(trainings, bool) or not isinstance(trainings, int) or trainings < 1:
        raise ValueError(f"trainings must be an integer >= 1, got {trainings!r}")
    build = build_experiment if build is None else build
    points, configs = grid_configs(config, grid)
    metric, higher = selection_metric(config)
    base_seed = config.training_seed
    candidates, validation_tasks = [], 0
    for fields, point in zip(points, configs, strict=True):
        scores, began = [], time.perf_counter()
        for t in range(trainings):
            started = time.perf_counter()
            run = point if t == 0 else point.override(train_seed=base_seed + TRAINING_SEED_STRIDE * t)
            experiment = build(run)
            metric = getattr(experiment, "select_metric", metric)  # the split's catalogue may cap the cut-off
            state = experiment.train()
            figure = experiment.validate(state.params, baselines=False)["maml"][metric]
            if figure is None:  # no validation user defines it (AUC without a user of both classes)
                raise GridError(f"no validation user defines {metric}: the grid's points cannot be told apart")
            figure = float(figure)
            validation_tasks = len(experiment.val_tasks)
            scores.append(figure)
            logger.info("grid point %s, training %d: validation %s %.4f", fields, t, metric, figure)
            if on_score is not None:
                on_score(fields, t, figure, time.perf_counter() - started)
        candidates.append(Candidate(fields, tuple(scores), time.perf_counter() - began))
    # a point whose figure is not finite (a diverged training) ranks last, never first
    ranked = [(c.score if higher else -c.score) if math.isfinite(c.score) else -math.inf for c in candidates]
    best = ranked.index(max(ranked))
    return Choice(metric, higher, tuple(candidates), best, configs[best], validation_tasks)
