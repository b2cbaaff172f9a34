"""Per-user ranking and rating metrics on padded query sets, and their aggregation with bootstrap intervals.

Every function of the first part maps one user's query set -- ``scores [Q]`` (predictions), ``targets [Q]``
(true ratings or 0/1 labels), ``mask [Q]`` (false = padding) -- to per-user statistics; ``jax.vmap`` them over
users. Padded rows never change a value: they are excluded from every sum, comparison and ranking.

Definitions (``n`` real rows, ``r_i`` targets, ``s_i`` scores):

* **MAE / RMSE** are *pooled over ratings* (MeLU, Lee et al. KDD 2019, averages over all query ratings of all
  test users): ``MAE = sum_u sum_i |r_i - clip(s_i)| / sum_u n_u`` and ``RMSE = sqrt(sum_u sum_i (r_i -
  clip(s_i))^2 / sum_u n_u``; predictions are clipped to the rating range first. The per-user statistics are
  therefore the *sums* ``abs_sum``, ``sq_sum`` and the count ``n``; the bootstrap resamples users and recomputes
  the ratio.
* **nDCG@k** (Jarvelin & Kekalainen 2002; as in MeLU, gain ``2^r - 1``): ``DCG@k = sum_i g_i d(pos_i)`` with
  ``d(p) = 1 / log2(p + 2)`` for 0-based positions ``p < k`` and 0 beyond; ``IDCG@k`` is the DCG of the ideal
  order (by true rating). Items ranked by predicted score among the user's own query items; **ties** in the
  predicted score get the average discount of the positions they share (McSherry & Najork 2008), so a constant
  predictor gets the expected nDCG of a random order and no tie-break favours anyone. Users with ``IDCG = 0``
  (no positive gain) have no nDCG and carry zero weight. Aggregate: mean over users.
* **AUC** (implicit feedback): the fraction of (positive, negative) pairs of the user's query rows ordered
  correctly, ties counting 1/2; users without both a positive and a negative carry zero weight. Mean over users.
* **HR@k** (implicit feedback): 1 when at least one positive query row is among the top ``k``, else 0; ties in the
  score are broken in a uniformly random order and HR@k is the expected hit over that order (a constant predictor
  gets the chance of a random list). Users without a positive carry zero weight. Mean over users.

The second part aggregates per-user statistics (numpy, host side): point estimates, percentile bootstrap 95%
intervals over users (Efron & Tibshirani 1993) and *paired* intervals of the difference between two methods
evaluated on the same users (each resample draws users once and evaluates both methods on them, so the
between-user variance cancels). The unit drawn is the user: where the statistics record each row's ``"user"`` and
a user has several rows (several random splits pooled, a user a new user in more than one), the user's rows are
drawn together, a cluster bootstrap, since they are one draw from the users and not several.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "dcg_discounts",
    "tie_averaged_discount",
    "ndcg_at_k",
    "relevance_gains",
    "auc",
    "hit_rate_at_k",
    "rating_errors",
    "user_statistics",
    "aggregate",
    "bootstrap_weights",
    "summarize",
    "paired_differences",
    "RATIO_METRICS",
]

#: metrics aggregated as ratios of per-user sums (pooled over ratings); the others are means over users
RATIO_METRICS = {"mae": ("abs_sum", "n"), "rmse": ("sq_sum", "n")}


def dcg_discounts(length: int, k: int) -> jax.Array:
    """The DCG discounts of the positions of a ranking.

    Args:
      length: the number of positions.
      k: the cut-off.

    Returns:
      ``[length]``: ``d(p) = 1 / log2(p + 2)`` for ``p < k``, else 0, for ``p = 0 .. length - 1``.
    """
    p = jnp.arange(length)
    return jnp.where(p < k, 1.0 / jnp.log2(p + 2.0), 0.0)


def tie_averaged_discount(scores: jax.Array, mask: jax.Array, k: int) -> jax.Array:
    """Per row, the mean of ``d(p)`` over the positions ``p`` its tie group occupies in the descending order.

    Row ``i`` with ``a_i`` real rows scored strictly higher and ``t_i`` real rows tied with it (itself included)
    occupies positions ``a_i .. a_i + t_i - 1``; its discount is ``(C[a_i + t_i] - C[a_i]) / t_i`` with ``C`` the
    cumulative discounts. O(Q^2) comparisons, fine for query sets of tens of rows.

    Args:
      scores: ``[Q]`` predicted scores.
      mask: ``[Q]``, false for padding rows.
      k: the cut-off of :func:`dcg_discounts`.

    Returns:
      ``[Q]`` discounts; padding rows get 0.
    """
    length = scores.shape[-1]
    real = mask.astype(bool)
    higher = jnp.sum(real[None, :] & (scores[None, :] > scores[:, None]), axis=1)
    tied = jnp.sum(real[None, :] & (scores[None, :] == scores[:, None]), axis=1)
    cumulative = jnp.concatenate([jnp.zeros(1), jnp.cumsum(dcg_discounts(length, k))])
    tied_safe = jnp.maximum(tied, 1)
    discount = (cumulative[higher + tied_safe] - cumulative[higher]) / tied_safe
    return jnp.where(real, discount, 0.0)


#: the longest rating scale (from its zero) whose nDCG gain is exponential, ``2^r - 1``: MovieLens's 0.5-5 and 1-5
#: and any 1-10 scale; on a longer one (0-100) ``2^r`` would let the top rating alone decide, and overflow float32
#: beyond 127, so the gain is the grade itself (Jarvelin and Kekalainen's linear graded relevance)
EXPONENTIAL_GAIN_MAX = 10.0


def relevance_gains(targets: jax.Array, rating_range: Sequence[float] | None = None) -> jax.Array:
    """nDCG's gain of each rating: ``2^g - 1`` of the grade ``g = r - min(low, 0)`` (the scale moved up when it
    reaches below 0, so that no gain is negative), or ``g`` itself when ``high - min(low, 0)`` exceeds
    :data:`EXPONENTIAL_GAIN_MAX`. Without a range, ``2^r - 1`` (0/1 labels: gains 0 and 1)."""
    targets = targets.astype(jnp.float32)
    if rating_range is None:
        return jnp.exp2(targets) - 1.0
    zero = min(float(rating_range[0]), 0.0)
    grade = targets - zero
    return jnp.exp2(grade) - 1.0 if float(rating_range[1]) - zero <= EXPONENTIAL_GAIN_MAX else grade


def ndcg_at_k(
    scores: jax.Array, targets: jax.Array, mask: jax.Array, k: int, rating_range: Sequence[float] | None = None
) -> tuple[jax.Array, jax.Array]:
    """nDCG@k of one user's query set, with the gains of :func:`relevance_gains` (``2^r - 1`` on MovieLens's
    scales) and a tie-averaged ranking.

    Args:
      scores: ``[Q]`` predicted scores.
      targets: ``[Q]`` true ratings.
      mask: ``[Q]``, false for padding rows.
      k: the cut-off.
      rating_range: the scale ``(low, high)``, which sets the gains (see :func:`relevance_gains`).

    Returns:
      ``(nDCG@k, weight)``; the weight is 0 (and nDCG 0) when ``IDCG = 0``, else 1.
    """
    real = mask.astype(bool)
    gains = jnp.where(real, relevance_gains(targets, rating_range), 0.0)
    dcg = jnp.sum(gains * tie_averaged_discount(scores, real, k))
    ideal_gains = -jnp.sort(-jnp.where(real, gains, -jnp.inf))  # descending, padding last
    ideal_gains = jnp.where(jnp.isfinite(ideal_gains), ideal_gains, 0.0)
    idcg = jnp.sum(ideal_gains * dcg_discounts(scores.shape[-1], k))
    valid = idcg > 0
    # DCG <= IDCG exactly; with tied scores the two sums add the same gains in another order, which can round to a
    # ratio a few ulps above 1: nDCG is a fraction of the ideal, so it is clipped to it
    ndcg = jnp.minimum(dcg / jnp.where(valid, idcg, 1.0), 1.0)
    return jnp.where(valid, ndcg, 0.0), valid.astype(jnp.float32)


def auc(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """AUC of one user's query set: the fraction of correctly ordered (positive, negative) pairs, ties 1/2.

    Args:
      scores: ``[Q]`` predicted scores.
      labels: ``[Q]`` 0/1 labels (positive above 0.5).
      mask: ``[Q]``, false for padding rows.

    Returns:
      ``(AUC, weight)``; the weight is 0 (and AUC 0) without both a positive and a negative, else 1.
    """
    real = mask.astype(bool)
    positive = real & (labels > 0.5)
    negative = real & (labels <= 0.5)
    pairs = positive[:, None] & negative[None, :]
    correct = (scores[:, None] > scores[None, :]) + 0.5 * (scores[:, None] == scores[None, :])
    n_pairs = jnp.sum(pairs)
    valid = n_pairs > 0
    value = jnp.sum(jnp.where(pairs, correct, 0.0)) / jnp.maximum(n_pairs, 1)
    return jnp.where(valid, value, 0.0), valid.astype(jnp.float32)


def hit_rate_at_k(scores: jax.Array, labels: jax.Array, mask: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """HR@k of one user's query set: the probability that a positive is among the top ``k`` when ties are broken
    in a uniformly random order (as nDCG's tie-averaged discount is its expectation over that order).

    With ``s*`` the ``k``-th highest score, the rows scored above it are in the top ``k``; of the ``t`` rows tied
    at ``s*``, ``p`` of them positive, a random ``m = k - (rows above)`` make it, and all of them miss every
    positive with probability ``C(t - p, m) / C(t, m)``. Without ties this is 1 when a positive ranks below ``k``.

    Args:
      scores: ``[Q]`` predicted scores.
      labels: ``[Q]`` 0/1 labels (positive above 0.5).
      mask: ``[Q]``, false for padding rows.
      k: the cut-off.

    Returns:
      ``(HR@k, weight)``; the weight is 0 without a positive, else 1.
    """
    real = mask.astype(bool)
    positive = real & (labels > 0.5)
    same = real[None, :] & (scores[None, :] == scores[:, None])
    higher = jnp.sum(real[None, :] & (scores[None, :] > scores[:, None]), axis=1)
    tied = jnp.sum(same, axis=1)  # itself included
    sure = jnp.any(positive & (higher + tied <= k))  # a positive whose whole tie group is in the top k
    straddle = real & (higher < k) & (higher + tied > k)  # the tie group across the cut-off
    t = tied.astype(jnp.float32)
    p = jnp.sum(same & positive[None, :], axis=1).astype(jnp.float32)
    m = (k - higher).astype(jnp.float32)
    j = jnp.arange(scores.shape[0], dtype=jnp.float32)[None, :]  # m <= t <= Q draws, one factor each
    draws = (t[:, None] - p[:, None] - j) / jnp.maximum(t[:, None] - j, 1.0)
    miss = jnp.prod(jnp.where(j < m[:, None], jnp.maximum(draws, 0.0), 1.0), axis=1)
    miss = jnp.min(jnp.where(straddle, miss, 1.0))  # one group straddles the cut-off, or none
    return jnp.where(sure, 1.0, 1.0 - miss).astype(jnp.float32), jnp.any(positive).astype(jnp.float32)


def rating_errors(
    scores: jax.Array, targets: jax.Array, mask: jax.Array, rating_range: Sequence[float] | None
) -> dict[str, jax.Array]:
    """The rating-error sums of one user's query set, for MAE and RMSE pooled over ratings.

    Args:
      scores: ``[Q]`` predictions.
      targets: ``[Q]`` true ratings.
      mask: ``[Q]``, false for padding rows.
      rating_range: ``(low, high)`` the predictions are clipped to, or None for no clipping.

    Returns:
      ``abs_sum`` and ``sq_sum`` of the errors, and ``n``, the number of real rows.
    """
    real = mask.astype(bool)
    prediction = scores if rating_range is None else jnp.clip(scores, rating_range[0], rating_range[1])
    error = jnp.where(real, prediction - targets, 0.0)
    return {
        "abs_sum": jnp.sum(jnp.abs(error)),
        "sq_sum": jnp.sum(jnp.square(error)),
        "n": jnp.sum(real).astype(jnp.float32),
    }


def user_statistics(
    scores: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    ks: Sequence[int] = (1, 3, 10),
    rating_range: Sequence[float] | None = None,
    implicit: bool = False,
) -> dict[str, jax.Array]:
    """All per-user statistics of a batch ``[T, Q]`` (vmapped over users).

    Explicit: ``abs_sum, sq_sum, n, ndcg@k, ndcg@k/w``. Implicit: also ``auc``, ``hr@k`` and their weights, with
    ``ndcg@k`` on the 0/1 labels (gain 1). Keys ending in ``/w`` are the per-user weights of the mean metrics.

    Args:
      scores: ``[T, Q]`` predicted scores.
      targets: ``[T, Q]`` true ratings or 0/1 labels.
      mask: ``[T, Q]``, false for padding rows.
      ks: the cut-offs of nDCG@k (and HR@k).
      rating_range: the range predictions are clipped to for the rating errors (not used in implicit mode).
      implicit: also compute AUC and HR@k.

    Returns:
      ``{key: [T]}``; a padding task has ``n = 0`` and zero weights.
    """

    def one_user(s, t, m):
        # a NaN compares false with everything, which ranks it first: a diverged model's rankings are no rankings
        # (NaN, as its errors are; the summary then reports null), not a perfect nDCG
        finite = jnp.all(jnp.isfinite(s) | ~m.astype(bool))

        def ranking(name, value_and_weight):
            value, weight = value_and_weight
            out[name], out[f"{name}/w"] = jnp.where(finite, value, jnp.nan), weight

        out = dict(rating_errors(s, t, m, None if implicit else rating_range))
        for k in ks:
            ranking(f"ndcg@{k}", ndcg_at_k(s, t, m, k, None if implicit else rating_range))
        if implicit:
            ranking("auc", auc(s, t, m))
            for k in ks:
                ranking(f"hr@{k}", hit_rate_at_k(s, t, m, k))
        return out

    return jax.vmap(one_user)(scores, targets, mask)


# ----------------------------------------------------------------------------------------------------------------
# aggregation (host side)


def _metric_names(stats: Mapping[str, np.ndarray], implicit: bool) -> list[str]:
    names = [] if implicit else ["mae", "rmse"]
    return names + [key for key in stats if "/" not in key and key not in ("abs_sum", "sq_sum", "n", "user")]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, NaN where nothing is counted (no user defines the metric)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def aggregate(stats: Mapping[str, np.ndarray], weights: np.ndarray | None = None, implicit: bool = False) -> dict:
    """Aggregate per-user statistics into metrics.

    ``mae``/``rmse`` pool ratings (ratio of sums over users); every other metric is the weighted mean over users.
    A metric no user defines (AUC where no user has both a positive and a negative) is NaN, not 0.

    Args:
      stats: per-user statistics ``{key: [U]}``.
      weights: optional ``[B, U]`` user weights (bootstrap counts).
      implicit: implicit-feedback statistics (no MAE / RMSE).

    Returns:
      ``{metric: float}`` point metrics; with ``weights``, ``{metric: [B]}``, one value per weight row.
    """
    w = np.ones((1, len(stats["n"]))) if weights is None else np.asarray(weights, np.float64)
    out = {}
    for name in _metric_names(stats, implicit):
        if name in RATIO_METRICS:
            num, den = RATIO_METRICS[name]
            value = _ratio(w @ np.asarray(stats[num], np.float64), w @ np.asarray(stats[den], np.float64))
            out[name] = np.sqrt(value) if name == "rmse" else value
        else:
            user_w = np.asarray(stats[f"{name}/w"], np.float64)
            out[name] = _ratio(w @ (np.asarray(stats[name], np.float64) * user_w), w @ user_w)
    if weights is None:
        return {k: float(v[0]) for k, v in out.items()}
    return out


def bootstrap_weights(n_users: int, resamples: int, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """Draw the user weights of a bootstrap.

    With ``groups``, the units drawn are the groups, not the rows: a user evaluated in several pooled splits (the
    same user's rows, one per split) is drawn once with all their rows, as those rows are not independent draws
    from the population of users (a cluster bootstrap; Davison & Hinkley 1997, section 3.8). Rows that are all
    distinct groups get the same draws as without ``groups``; otherwise groups are numbered by first appearance.

    Args:
      n_users: the number of rows (users, or (split, user) pairs).
      resamples: the number of resamples.
      seed: the seed of the draws.
      groups: ``[n_users]`` the unit of each row (e.g. the user code); None: every row its own unit.

    Returns:
      ``[resamples, n_users]`` weights: each resample draws as many units as there are, with replacement, and
      each row weighs as many times as its unit was drawn.

    Raises:
      ValueError: if ``groups`` does not have one entry per row.
    """
    rng = np.random.default_rng(seed)

    def draw(units: int) -> np.ndarray:
        return rng.multinomial(units, np.full(units, 1.0 / units), size=resamples).astype(np.float64)

    if n_users == 0:
        return np.zeros((resamples, 0))
    if groups is None:
        return draw(n_users)
    if np.shape(groups) != (n_users,):
        raise ValueError(f"bootstrap_weights: groups has shape {np.shape(groups)}, not one entry per row ({n_users})")
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    if len(first) == n_users:  # every row its own unit: the rows' draws, to the bit
        return draw(n_users)
    number = np.empty(len(first), np.int64)
    number[np.argsort(first, kind="stable")] = np.arange(len(first))  # groups numbered by first appearance
    return draw(len(first))[:, number[inverse.reshape(-1)]]


def _units(stats: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The unit of each row of per-user statistics: its ``"user"`` code when recorded (pooled splits repeat a
    user), else None (every row its own unit)."""
    return np.asarray(stats["user"]) if "user" in stats else None


def _interval(samples: np.ndarray) -> list[float]:
    """The percentile interval over the resamples that define the metric (a resample may draw no user who does)."""
    defined = samples[np.isfinite(samples)]
    if not len(defined):
        return [float("nan"), float("nan")]
    return [float(np.percentile(defined, 2.5)), float(np.percentile(defined, 97.5))]


def summarize(stats: Mapping[str, np.ndarray], *, resamples: int = 1000, seed: int = 0, implicit: bool = False) -> dict:
    """Summarise the per-user statistics of one method.

    Args:
      stats: per-user statistics ``{key: [U]}``; ``"user"``, when present, names each row's user (the unit the
        bootstrap draws: :func:`bootstrap_weights`).
      resamples: bootstrap resamples over users (0: no interval).
      seed: the seed of the bootstrap.
      implicit: implicit-feedback statistics (no MAE / RMSE).

    Returns:
      The point metrics, ``users`` (with at least one query row), ``ratings`` and, with resamples and users,
      ``ci95``: ``{metric: [lo, hi]}``, percentile bootstrap intervals over users. A metric no user defines is
      None (JSON null) and has no interval.
    """
    n_users = int(np.sum(np.asarray(stats["n"]) > 0))
    point = aggregate(stats, implicit=implicit)
    out: dict = {name: value if np.isfinite(value) else None for name, value in point.items()}
    out["users"] = n_users
    out["ratings"] = int(np.sum(stats["n"]))
    if resamples and n_users:
        weights = bootstrap_weights(len(stats["n"]), resamples, seed, groups=_units(stats))
        samples = aggregate(stats, weights, implicit=implicit)
        out["ci95"] = {name: _interval(values) for name, values in samples.items() if out[name] is not None}
    return out


def paired_differences(
    stats_a: Mapping[str, np.ndarray],
    stats_b: Mapping[str, np.ndarray],
    *,
    resamples: int = 1000,
    seed: int = 0,
    implicit: bool = False,
) -> dict:
    """Compute ``metric(a) - metric(b)`` on the same users, with a paired bootstrap 95% interval.

    An interval that excludes 0 is a difference the test users support. For MAE/RMSE a negative difference means
    ``a`` is better.

    Args:
      stats_a: per-user statistics of method ``a``.
      stats_b: per-user statistics of method ``b``, listing the same users in the same order.
      resamples: bootstrap resamples over users (0: NaN intervals).
      seed: the seed of the bootstrap.
      implicit: implicit-feedback statistics (no MAE / RMSE).

    Returns:
      ``{metric: {"diff": d, "ci95": [lo, hi]}}``, for the metrics both methods define.

    Raises:
      ValueError: if the two statistic sets are not on the same users and query rows.
    """
    if len(stats_a["n"]) != len(stats_b["n"]) or not np.array_equal(stats_a["n"], stats_b["n"]):
        raise ValueError("paired_differences needs the two methods evaluated on the same users and query rows")
    point_a, point_b = aggregate(stats_a, implicit=implicit), aggregate(stats_b, implicit=implicit)
    point_a = {name: value for name, value in point_a.items() if np.isfinite(value) and np.isfinite(point_b[name])}
    if not resamples or not len(stats_a["n"]):
        return {name: {"diff": point_a[name] - point_b[name], "ci95": [float("nan"), float("nan")]} for name in point_a}
    units_a, units_b = _units(stats_a), _units(stats_b)
    if units_a is not None and units_b is not None and not np.array_equal(units_a, units_b):
        raise ValueError("paired_differences needs the two methods evaluated on the same users in the same order")
    weights = bootstrap_weights(len(stats_a["n"]), resamples, seed, groups=units_a if units_a is not None else units_b)
    samples_a = aggregate(stats_a, weights, implicit=implicit)
    samples_b = aggregate(stats_b, weights, implicit=implicit)
    return {
        name: {"diff": point_a[name] - point_b[name], "ci95": _interval(samples_a[name] - samples_b[name])}
        for name in point_a
    }
