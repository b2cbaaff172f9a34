"""Metric functions on hand-computed examples, padding invariance, compile counts, bootstrap intervals."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.core.batch import TaskBatch
from jaxrec.core.features import FeatureSpec
from jaxrec.core.losses import mse_loss
from jaxrec.evaluation import metrics
from jaxrec.evaluation.predict import TRACES, collect, meta_evaluate


def test_ndcg_hand_computed():
    # gains 2^r - 1 = [1, 3, 0]; predicted order item0, item1, item2
    value, weight = metrics.ndcg_at_k(jnp.array([3.0, 2.0, 1.0]), jnp.array([1.0, 2.0, 0.0]), jnp.ones(3, bool), 3)
    dcg = 1.0 + 3.0 / math.log2(3)
    idcg = 3.0 + 1.0 / math.log2(3)
    assert float(weight) == 1.0
    assert float(value) == pytest.approx(dcg / idcg, rel=1e-6)
    top1, _ = metrics.ndcg_at_k(jnp.array([3.0, 2.0, 1.0]), jnp.array([1.0, 2.0, 0.0]), jnp.ones(3, bool), 1)
    assert float(top1) == pytest.approx(1.0 / 3.0, rel=1e-6)


@pytest.mark.parametrize(
    ("ratings", "scale", "gains"),
    [
        ([1.0, 2.0, 5.0], (1.0, 5.0), [1.0, 3.0, 31.0]),  # MovieLens: 2^r - 1, as MeLU's nDCG
        ([0.5, 4.5], (0.5, 5.0), [2**0.5 - 1, 2**4.5 - 1]),
        ([-2.0, 0.0, 2.0], (-2.0, 2.0), [0.0, 3.0, 15.0]),  # moved up to 0: no negative gain
        ([0.0, 50.0, 300.0], (0.0, 1000.0), [0.0, 50.0, 300.0]),  # a long scale: linear (2^300 is inf in float32)
    ],
)
def test_ndcg_gains_on_any_rating_scale(ratings, scale, gains):
    np.testing.assert_allclose(metrics.relevance_gains(jnp.array(ratings), scale), gains, rtol=1e-6)
    ascending, real = jnp.arange(len(ratings), dtype=jnp.float32), jnp.ones(len(ratings), bool)
    best, weight = metrics.ndcg_at_k(ascending, jnp.array(ratings), real, 3, scale)  # the ratings are ascending
    worst, _ = metrics.ndcg_at_k(-ascending, jnp.array(ratings), real, 3, scale)
    assert float(weight) == 1.0 and 0.0 <= float(worst) < float(best) == pytest.approx(1.0)


def test_ndcg_ties_average_the_shared_positions():
    # both items tied: each gets the mean discount of positions 0 and 1; at k=1 that is (1 + 0) / 2
    value, _ = metrics.ndcg_at_k(jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0]), jnp.ones(2, bool), 1)
    assert float(value) == pytest.approx(0.5)
    value, _ = metrics.ndcg_at_k(jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0]), jnp.ones(2, bool), 2)
    assert float(value) == pytest.approx(0.5 * (1.0 + 1.0 / math.log2(3)))


def test_ndcg_padding_rows_change_nothing_and_zero_gain_users_weigh_nothing():
    base, _ = metrics.ndcg_at_k(jnp.array([0.2, 0.9, 0.5]), jnp.array([4.0, 1.0, 3.0]), jnp.ones(3, bool), 3)
    padded, _ = metrics.ndcg_at_k(
        jnp.array([0.2, 0.9, 0.5, 99.0, -99.0]),
        jnp.array([4.0, 1.0, 3.0, 5.0, 5.0]),
        jnp.array([True, True, True, False, False]),
        3,
    )
    assert float(padded) == pytest.approx(float(base), rel=1e-6)
    _, weight = metrics.ndcg_at_k(jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0]), jnp.ones(2, bool), 3)
    assert float(weight) == 0.0


def test_mae_rmse_with_masks_and_clipping():
    out = metrics.rating_errors(
        jnp.array([6.0, 2.0, 0.0, 100.0]), jnp.array([5.0, 3.0, 1.0, 1.0]), jnp.array([1, 1, 1, 0], bool), (1.0, 5.0)
    )
    # clipped predictions 5, 2, 1 (the padded row is ignored): errors 0, 1, 0
    assert float(out["abs_sum"]) == pytest.approx(1.0)
    assert float(out["sq_sum"]) == pytest.approx(1.0)
    assert float(out["n"]) == 3.0
    # pooling: MAE = (1 + 4) / (3 + 1), RMSE = sqrt((1 + 16) / 4)
    stats = {"abs_sum": np.array([1.0, 4.0]), "sq_sum": np.array([1.0, 16.0]), "n": np.array([3.0, 1.0])}
    agg = metrics.aggregate(stats)
    assert agg["mae"] == pytest.approx(5.0 / 4.0)
    assert agg["rmse"] == pytest.approx(math.sqrt(17.0 / 4.0))


def test_auc_and_hit_rate():
    scores, labels = jnp.array([0.9, 0.1, 0.5, 7.0]), jnp.array([1.0, 0.0, 1.0, 0.0])
    mask = jnp.array([True, True, True, False])
    value, weight = metrics.auc(scores, labels, mask)
    assert float(value) == 1.0 and float(weight) == 1.0
    value, _ = metrics.auc(jnp.array([0.5, 0.5, 0.1]), jnp.array([1.0, 0.0, 0.0]), jnp.ones(3, bool))
    assert float(value) == pytest.approx(0.75)  # one tie (1/2) and one correct pair
    _, weight = metrics.auc(jnp.array([0.5, 0.1]), jnp.array([1.0, 1.0]), jnp.ones(2, bool))
    assert float(weight) == 0.0
    scores, labels = jnp.array([0.9, 0.8, 0.1]), jnp.array([0.0, 0.0, 1.0])
    assert float(metrics.hit_rate_at_k(scores, labels, jnp.ones(3, bool), 2)[0]) == 0.0
    assert float(metrics.hit_rate_at_k(scores, labels, jnp.ones(3, bool), 3)[0]) == 1.0
    # the padded row would outrank the positive if it counted
    hr = metrics.hit_rate_at_k(jnp.array([0.5, 0.9, 9.0]), jnp.array([1.0, 0.0, 0.0]), jnp.array([1, 1, 0], bool), 2)
    assert float(hr[0]) == 1.0


def _hit_rate_over_every_order(scores, labels, mask, k):
    """HR@k averaged over every order of the tied rows: the definition, by enumeration."""
    rows = [i for i in range(len(scores)) if mask[i]]
    hits = []
    for order in itertools.permutations(rows):
        ranked = sorted(order, key=lambda i: -scores[i])  # stable: ties keep this permutation's order
        hits.append(any(labels[i] > 0.5 for i in ranked[:k]))
    return float(np.mean(hits))


def test_hit_rate_with_ties_is_the_expected_hit_over_a_random_tie_break():
    """Ties used to rank every tied row at the group's mean position: ten tied rows, all positive, had HR@1 = 0 (a
    constant predictor scored HR 0 beside a normal nDCG)."""
    every = jnp.ones(10, bool)
    assert float(metrics.hit_rate_at_k(jnp.zeros(10), jnp.ones(10), every, 1)[0]) == 1.0
    # one positive among ten tied rows: k / 10
    one = jnp.zeros(10).at[3].set(1.0)
    for k in (1, 3, 10):
        assert float(metrics.hit_rate_at_k(jnp.zeros(10), one, every, k)[0]) == pytest.approx(k / 10, abs=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(2, 8))
        scores = rng.integers(0, 3, n).astype(np.float32)  # few distinct values: many ties
        labels = (rng.random(n) < 0.3).astype(np.float32)
        mask = rng.random(n) < 0.85
        k = int(rng.integers(1, n + 1))
        value, weight = metrics.hit_rate_at_k(jnp.asarray(scores), jnp.asarray(labels), jnp.asarray(mask), k)
        assert float(weight) == float((labels[mask] > 0.5).any())
        expected = _hit_rate_over_every_order(scores, labels, mask, k) if mask.any() else 0.0
        assert float(value) == pytest.approx(expected, abs=1e-5), (scores, labels, mask, k)


def _spec():
    return FeatureSpec(categorical={"user": 5, "item": 20}, rating_range=(1.0, 5.0))


def _batch(tasks, support, query, seed, pad_tasks=0):
    rng = np.random.default_rng(seed)
    s_mask = np.arange(support)[None] < rng.integers(1, support + 1, (tasks, 1))
    q_mask = np.arange(query)[None] < rng.integers(1, query + 1, (tasks, 1))
    side = lambda n: {  # noqa: E731
        "user": np.zeros((tasks, n), np.int32),
        "item": rng.integers(1, 20, (tasks, n)).astype(np.int32),
        "rating": rng.integers(1, 6, (tasks, n)).astype(np.float32),
    }
    batch = TaskBatch(side(support), side(query), s_mask, q_mask, np.arange(tasks, dtype=np.int32))
    if pad_tasks:
        from jaxrec.scale.sharding import pad_tasks as pad

        batch = pad(batch, tasks + pad_tasks)
    return batch


def _linear_model():
    def apply_fn(params, rows):
        return params["bias"] + params["item"][rows["item"]]

    params = {"bias": jnp.array(3.0), "item": jnp.linspace(-1.0, 1.0, 20)}
    return apply_fn, params


def test_a_non_finite_score_is_no_ranking():
    """A NaN compares false with everything, so a diverged model's NaN scores all tied at the top once made nDCG 1,
    AUC 1/2 and HR 1: its rankings are NaN now (null in a summary), as its errors are; a padding row's NaN is
    nothing."""
    scores = jnp.array([[0.9, 0.1, 0.5, 0.3], [jnp.nan, 0.1, 0.5, 0.3], [0.9, 0.1, 0.5, jnp.nan]])
    labels = jnp.array([[1.0, 0.0, 1.0, 0.0]] * 3)
    mask = jnp.array([[True] * 4, [True] * 4, [True, True, True, False]])
    stats = metrics.user_statistics(scores, labels, mask, ks=(1, 3), implicit=True)
    for key in ("ndcg@1", "ndcg@3", "auc", "hr@1", "hr@3"):
        values = np.asarray(stats[key])
        assert np.isfinite(values[0]) and np.isnan(values[1]), key
        assert np.isfinite(values[2]), key  # the NaN is in a padding row
    summary = metrics.summarize({k: np.asarray(v)[1:2] for k, v in stats.items()}, resamples=0, implicit=True)
    assert summary["ndcg@3"] is None and summary["auc"] is None


def test_padding_tasks_and_rows_never_change_metrics():
    apply_fn, params = _linear_model()
    kwargs = dict(apply_fn=apply_fn, loss_fn=mse_loss(apply_fn), inner_lr=0.1, inner_steps=2, resamples=0)
    plain = meta_evaluate(params, [_batch(4, 6, 5, 0)], rating_range=(1.0, 5.0), **kwargs)
    padded = meta_evaluate(params, [_batch(4, 6, 5, 0, pad_tasks=3)], rating_range=(1.0, 5.0), **kwargs)
    for key in ("mae", "rmse", "ndcg@1", "ndcg@3", "ndcg@10", "users", "ratings"):
        assert padded[key] == pytest.approx(plain[key], rel=1e-6)
    # garbage in padded rows changes nothing either
    batch = _batch(4, 6, 5, 0)
    dirty = TaskBatch(
        {k: np.where(batch.support_mask, v, 7).astype(v.dtype) for k, v in batch.support.items()},
        {k: np.where(batch.query_mask, v, 9).astype(v.dtype) for k, v in batch.query.items()},
        batch.support_mask,
        batch.query_mask,
        batch.task_id,
    )
    again = meta_evaluate(params, [dirty], rating_range=(1.0, 5.0), **kwargs)
    assert again["mae"] == pytest.approx(plain["mae"], rel=1e-6)
    assert again["ndcg@3"] == pytest.approx(plain["ndcg@3"], rel=1e-6)


def test_meta_evaluate_compiles_once_per_shape():
    apply_fn, params = _linear_model()
    before = TRACES["meta"]
    batches = [_batch(4, 6, 5, s) for s in range(3)] + [_batch(4, 8, 5, s) for s in range(2)]
    summary, stats = meta_evaluate(
        params,
        batches,
        apply_fn=apply_fn,
        loss_fn=mse_loss(apply_fn),
        inner_lr=0.1,
        inner_steps=2,
        resamples=0,
        return_stats=True,
    )
    assert TRACES["meta"] - before == 2
    assert summary["users"] == 20 and len(stats["n"]) == 20


def test_unnamed_tasks_of_several_batches_are_each_their_own_unit_of_the_bootstrap():
    """Batches without ``task_id``: their tasks were numbered 0.. in every batch, and the bootstrap would draw the
    tasks of one slot of every batch together; they carry no user code, so each is drawn alone."""
    apply_fn, params = _linear_model()
    batches = [_batch(4, 6, 5, s) for s in range(5)]
    unnamed = [TaskBatch(b.support, b.query, b.support_mask, b.query_mask) for b in batches]
    kwargs = dict(apply_fn=apply_fn, loss_fn=mse_loss(apply_fn), inner_lr=0.1, inner_steps=2, resamples=200)
    summary, stats = meta_evaluate(params, unnamed, return_stats=True, **kwargs)
    assert "user" not in stats and len(stats["n"]) == 20
    rows = metrics.summarize({k: v for k, v in stats.items()}, resamples=200)
    assert summary["ci95"]["mae"] == pytest.approx(rows["ci95"]["mae"], rel=1e-12)
    # named, every batch's tasks 0..3 are four users with five rows each: drawn together, a wider interval
    named = meta_evaluate(params, batches, **kwargs)
    assert named["mae"] == pytest.approx(summary["mae"], rel=1e-6)
    wide, narrow = named["ci95"]["mae"], summary["ci95"]["mae"]
    assert wide[1] - wide[0] > narrow[1] - narrow[0]


def test_adaptation_with_zero_steps_is_the_unadapted_model():
    apply_fn, params = _linear_model()
    batch = _batch(4, 6, 5, 1)
    direct = collect(lambda state, b: apply_fn(state, b.query), params, [batch], name="direct")
    kwargs = dict(apply_fn=apply_fn, loss_fn=mse_loss(apply_fn), resamples=0, return_stats=True)
    _, zero_steps = meta_evaluate(params, [batch], inner_lr=0.1, inner_steps=0, **kwargs)
    _, zero_lr = meta_evaluate(params, [batch], inner_lr=0.0, inner_steps=3, **kwargs)
    for key in ("abs_sum", "sq_sum", "ndcg@3"):
        np.testing.assert_allclose(zero_steps[key], direct[key], rtol=1e-6)
        np.testing.assert_allclose(zero_lr[key], direct[key], rtol=1e-6)


def test_meta_evaluate_checks_the_rate_as_adapt_does():
    """The rate reached ``adapt`` traced, where it is not checked: a NaN rate scored every user None, a negative one
    adapted by gradient ascent, and an optax solver's absent rate crashed on ``jnp.asarray(None)``."""
    apply_fn, params = _linear_model()
    batch = _batch(4, 6, 5, 1)
    kwargs = dict(apply_fn=apply_fn, loss_fn=mse_loss(apply_fn), inner_steps=2, resamples=0)
    for bad in (float("nan"), -0.1, float("inf")):
        with pytest.raises(ValueError, match="inner_lr must be a finite positive number"):
            meta_evaluate(params, [batch], inner_lr=bad, **kwargs)
    with pytest.raises(ValueError, match="inner_lr must be finite"):
        meta_evaluate(params, [batch], inner_lr=jnp.array(jnp.nan), **kwargs)
    with pytest.raises(ValueError, match="inner_lr is needed by the inner solver"):
        meta_evaluate(params, [batch], **kwargs)
    untargeted = [TaskBatch(batch.support, {"item": batch.query["item"]}, batch.support_mask, batch.query_mask)]
    with pytest.raises(ValueError, match="no target 'rating' \\(their keys: item\\): pass target="):
        meta_evaluate(params, untargeted, inner_lr=0.1, **kwargs)
    # an optax solver takes no rate: evaluated without one, as adapt adapts without one
    sgd = dict(kwargs, inner_optimizer=optax.sgd(0.1))
    _, stats = meta_evaluate(params, [batch], return_stats=True, **sgd)
    _, by_rate = meta_evaluate(params, [batch], inner_lr=0.1, return_stats=True, **kwargs)
    np.testing.assert_allclose(stats["abs_sum"], by_rate["abs_sum"], rtol=1e-5)


def test_bootstrap_interval_contains_point_and_shrinks_with_users():
    rng = np.random.default_rng(0)

    def stats(users):
        n = np.full(users, 10.0)
        return {"abs_sum": rng.gamma(2.0, 4.0, users), "sq_sum": rng.gamma(2.0, 8.0, users), "n": n}

    widths = []
    for users in (20, 2000):
        s = metrics.summarize(stats(users), resamples=500)
        lo, hi = s["ci95"]["mae"]
        assert lo <= s["mae"] <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 4


def _user_stats(users, seed):
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 4.0, users)
    return {"abs_sum": base, "sq_sum": base * 2, "n": np.full(users, 10.0), "user": np.arange(users) + 7}


def test_a_user_pooled_twice_is_one_unit_of_the_bootstrap():
    # the same users evaluated in two pooled splits carry no more information than once: drawn as users, the
    # intervals are those of one evaluation, to the digit; drawn as rows, they would be narrower by about sqrt(2)
    a, b = _user_stats(300, 0), _user_stats(300, 1)
    b["abs_sum"] = a["abs_sum"] * (1.0 + np.random.default_rng(2).normal(0.01, 0.05, 300))
    twice = {k: np.concatenate([v, v]) for k, v in a.items()}, {k: np.concatenate([v, v]) for k, v in b.items()}
    once_paired = metrics.paired_differences(a, b, resamples=400)["mae"]
    twice_paired = metrics.paired_differences(*twice, resamples=400)["mae"]
    assert twice_paired["diff"] == pytest.approx(once_paired["diff"])
    assert twice_paired["ci95"] == pytest.approx(once_paired["ci95"], rel=1e-12)
    once, pooled = metrics.summarize(a, resamples=400)["ci95"], metrics.summarize(twice[0], resamples=400)["ci95"]
    assert pooled["mae"] == pytest.approx(once["mae"], rel=1e-12)
    rows = {k: v for k, v in twice[0].items() if k != "user"}, {k: v for k, v in twice[1].items() if k != "user"}
    as_rows = metrics.paired_differences(*rows, resamples=400)["mae"]["ci95"]
    assert as_rows[1] - as_rows[0] < 0.8 * (once_paired["ci95"][1] - once_paired["ci95"][0])


def test_users_each_once_draw_as_rows_do():
    stats = _user_stats(50, 3)
    rows = {k: v for k, v in stats.items() if k != "user"}
    np.testing.assert_array_equal(
        metrics.bootstrap_weights(50, 20, 5, groups=stats["user"]), metrics.bootstrap_weights(50, 20, 5)
    )
    assert metrics.summarize(stats, resamples=100) == metrics.summarize(rows, resamples=100)
    weights = metrics.bootstrap_weights(4, 300, 0, groups=np.array([9, 3, 9, 3]))
    np.testing.assert_array_equal(weights[:, 0], weights[:, 2])  # a user's rows weigh alike
    np.testing.assert_array_equal(weights[:, 1], weights[:, 3])
    assert set(np.unique(weights[:, 0])) == {0.0, 1.0, 2.0}  # two units drawn: a user zero, one or two times
    with pytest.raises(ValueError, match="same users"):
        metrics.paired_differences(stats, dict(stats, user=stats["user"][::-1]), resamples=10)


def test_paired_interval_is_tighter_than_unpaired_for_correlated_methods():
    rng = np.random.default_rng(1)
    users = 100
    base = rng.gamma(2.0, 4.0, users)
    a = {"abs_sum": base, "sq_sum": base * 2, "n": np.full(users, 10.0)}
    b = {"abs_sum": base * 1.03, "sq_sum": base * 2, "n": np.full(users, 10.0)}
    paired = metrics.paired_differences(a, b, resamples=500)["mae"]
    assert paired["diff"] < 0 and paired["ci95"][1] < 0  # a consistent 3% gain is detected
    sa, sb = metrics.summarize(a, resamples=500), metrics.summarize(b, resamples=500)
    assert sa["ci95"]["mae"][1] > sb["ci95"]["mae"][0]  # while the unpaired intervals overlap
