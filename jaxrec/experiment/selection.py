"""How long to meta-train: the state kept is chosen on the validation users.

A recipe's number of epochs is chosen on the logs it was tuned on; on another log meta-training can make new users
worse off (a synthetic click log of 93,000 items: new users' Recall@20 0.1221 at the ALS start, 0.1120 after 900
meta-steps, while the training loss fell). The candidates are the state training starts from and the state at each
epoch's end (and at the last step, when a run stops between epochs), each scored on the validation users by the
meta method's figure (Recall@20 for top-N); a rule picks one of them:

- ``"last"``: the last state, whatever the validation users say.
- ``"best"``: the candidate of the best validation figure, as early stopping on a validation metric keeps. On the
  few validation users of a small log that choice follows the noise: on MovieLens's (43-70 a split), half of them
  choosing the epoch and the other half scoring it, it lost 0.004 Recall@20 to the last epoch on both sets.
- ``"clear_best"``: the best candidate only when the validation users support its lead over the last one: with
  ``d_u`` user ``u``'s figure of the best minus the last's, ``w_u`` the user's weight in the metric and ``n`` the
  users who weigh, the difference ``D = sum_u w_u d_u / sum_u w_u`` has the standard error
  ``se = sqrt(n / (n - 1) sum_u w_u^2 (d_u - D)^2) / sum_u w_u``, and the best is kept when ``D - z se > 0``, with
  ``z`` the normal quantile of ``1 - alpha / (2 m)``: the lower end of the normal interval of ``D`` whose
  Bonferroni correction over the ``m`` candidates before the last makes the ``m`` intervals hold together with
  probability ``1 - alpha = 0.95`` (the best is the largest of ``m`` noisy comparisons). Otherwise the last.

The choice is recorded as ``tuned["epoch"]`` (:meth:`EpochSelector.record`): every candidate's step and figure,
the chosen step, and the best candidate's difference with the last and its lower bound. A run stopped between
epochs (``--steps``, a signal) keeps its last state until it is resumed: the choice is made at the candidates.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["FAMILY_ALPHA", "RULES", "EpochSelector", "kept_step", "paired_lower_bound"]

RULES = ("last", "best", "clear_best")
FAMILY_ALPHA = 0.05  # the family-wise error of "clear_best"'s comparisons with the last candidate


def kept_step(chosen: int | None, scored: Iterable[int], stopped_at: int) -> int:
    """The step a run stopped at ``stopped_at`` keeps: the ``chosen`` candidate when it stopped at one of the
    ``scored`` candidates (an epoch's end), else ``stopped_at`` itself (a run stopped between epochs, by ``--steps``
    or a signal, keeps its last state until it is resumed: the choice is made at the candidates)."""
    if chosen is None or stopped_at not in set(scored):
        return stopped_at
    return int(chosen)


def paired_lower_bound(
    best: np.ndarray, last: np.ndarray, weights: np.ndarray, comparisons: int, alpha: float = FAMILY_ALPHA
) -> tuple[float, float]:
    """The weighted mean difference of two methods' per-user figures and the lower end of its two-sided normal
    interval over users at the Bonferroni-corrected level ``1 - alpha / comparisons``.

    Args:
      best: ``[U]`` per-user figures of one candidate.
      last: ``[U]`` the same users' figures of the other.
      weights: ``[U]`` each user's weight in the metric (0: a user who does not count).
      comparisons: the number of comparisons the interval is one of (>= 1).
      alpha: the family-wise error.

    Returns:
      ``(difference, lower bound)``; ``(nan, nan)`` when no user weighs, a NaN bound when one user does.
    """
    w = np.asarray(weights, np.float64)
    total = w.sum()
    if total <= 0:
        return math.nan, math.nan
    d = np.asarray(best, np.float64) - np.asarray(last, np.float64)
    d = np.where(w > 0, d, 0.0)  # a user who does not count may hold a NaN figure
    mean = float((w * d).sum() / total)
    n = int((w > 0).sum())
    if n < 2:
        return mean, math.nan
    se = float(np.sqrt(n / (n - 1) * (w**2 * (d - mean) ** 2).sum()) / total)
    z = statistics.NormalDist().inv_cdf(1.0 - alpha / (2.0 * max(int(comparisons), 1)))
    return mean, mean - z * se


@dataclasses.dataclass
class _Figures:
    """One candidate's per-user figures of the metric and the users' weights in it."""

    values: np.ndarray
    weights: np.ndarray

    @property
    def mean(self) -> float:
        total = self.weights.sum()
        counted = np.where(self.weights > 0, self.values, 0.0)  # a user who does not count may hold a NaN figure
        return float((self.weights * counted).sum() / total) if total > 0 else math.nan


class EpochSelector:
    """Chooses, among the candidates seen so far, the state a run keeps (see the module's rules).

    Call :meth:`observe` with each candidate's per-user validation statistics, in order of steps; after each call
    :attr:`chosen` is the step a run stopped there would keep. The best candidate's statistics are kept to compare
    it with the next ones; after a resume (:meth:`from_record`) they are asked for again from ``figures_at``.

    Args:
      rule: one of :data:`RULES`.
      metric: the metric chosen by (higher is better), e.g. ``"recall@20"``.
      figures_at: ``step -> per-user statistics`` of a candidate seen before a resume (restored and scored again),
        or None.

    Attributes:
      scores: ``{step: validation figure}`` of every candidate, in order.
      chosen: the step kept, or None before any candidate.
    """

    def __init__(self, rule: str, metric: str, figures_at: Callable[[int], Mapping[str, Any]] | None = None):
        if rule not in RULES:
            raise ValueError(f"select_epoch must be one of {RULES}, got {rule!r}")
        self.rule, self.metric, self.figures_at = rule, metric, figures_at
        self.scores: dict[int, float] = {}
        self.chosen: int | None = None
        self.difference: float | None = None
        self.lower: float | None = None
        self._best: tuple[int, _Figures] | None = None  # the best candidate so far and its figures

    def _figures(self, stats: Mapping[str, Any]) -> _Figures:
        values = np.asarray(stats[self.metric], np.float64)
        weights = np.asarray(stats.get(f"{self.metric}/w", np.ones_like(values)), np.float64)
        return _Figures(values, weights)

    @property
    def best_step(self) -> int | None:
        """The candidate of the best validation figure so far (the earliest of equal ones)."""
        if not self.scores:
            return None
        finite = {s: v for s, v in self.scores.items() if math.isfinite(v)}
        return max(finite, key=lambda s: (finite[s], -s)) if finite else None

    def kept_step(self, stopped_at: int) -> int:
        """The step a run stopped at ``stopped_at`` keeps (:func:`kept_step`)."""
        return kept_step(self.chosen, self.scores, stopped_at)

    @property
    def needed_steps(self) -> set[int]:
        """The steps whose states must be kept: the chosen one and the best so far (a later choice may be it)."""
        return {s for s in (self.chosen, self.best_step) if s is not None}

    def load_best(self) -> None:
        """Score the best candidate again from ``figures_at`` if its figures are gone (a resumed run), so that it is
        scored before the next candidate is."""
        best = self.best_step
        if best is not None and (self._best is None or self._best[0] != best):
            self._best_figures(best)

    def observe(self, step: int, stats: Mapping[str, Any]) -> int:
        """Add the candidate at ``step`` (after every earlier one) and choose again, it being the last.

        Args:
          step: the candidate's step.
          stats: its per-user validation statistics (``{metric: [U], metric + "/w": [U], ...}``).

        Returns:
          The step chosen.
        """
        figures = self._figures(stats)
        earlier_best = self.best_step
        self.scores[int(step)] = figures.mean
        self.difference = self.lower = None
        if self.rule == "last" or earlier_best is None:
            self.chosen = int(step)
        elif self.rule == "best":
            self.chosen = self.best_step
        else:
            self.chosen = int(step)
            if not math.isfinite(figures.mean):  # a diverged state is never kept over a scored one
                self.chosen = earlier_best
            elif self.scores[earlier_best] > figures.mean:
                best_figures = self._best_figures(earlier_best)
                self.difference, self.lower = paired_lower_bound(
                    best_figures.values, figures.values, best_figures.weights, comparisons=len(self.scores) - 1
                )
                if self.lower > 0:
                    self.chosen = earlier_best
        if self.best_step == int(step):
            self._best = (int(step), figures)
        return self.chosen

    def _best_figures(self, step: int) -> _Figures:
        if self._best is not None and self._best[0] == step:
            return self._best[1]
        if self.figures_at is None:
            raise RuntimeError(f"the figures of step {step} are gone and no figures_at was given to score it again")
        self._best = (step, self._figures(self.figures_at(step)))
        return self._best[1]

    def record(self) -> dict:
        """The choice as a JSON record (``tuned["epoch"]``)."""
        return {
            "rule": self.rule,
            "metric": self.metric,
            "chosen_step": self.chosen,
            "scores": [[step, score] for step, score in self.scores.items()],
            "best_step": self.best_step,
            "best_minus_last": self.difference,
            "lower_bound": self.lower,
        }

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], figures_at: Callable[[int], Mapping[str, Any]] | None = None
    ) -> EpochSelector:
        """The selector of a :meth:`record` (a resumed run), the best candidate's figures asked of ``figures_at``
        when next needed."""
        selector = cls(record["rule"], record["metric"], figures_at)
        selector.scores = {int(step): float(score) for step, score in record["scores"]}
        selector.chosen = record["chosen_step"]
        selector.difference, selector.lower = record.get("best_minus_last"), record.get("lower_bound")
        return selector
