"""Hybrid top-N ranking (jaxrec.evaluation.hybrid): the standardised sum by hand, its invariances, and the
experiment's hybrids tuned on the validation users."""

import numpy as np
import pytest

from jaxrec.evaluation.hybrid import hybrid_scores, hybrid_topk, standardize
from jaxrec.evaluation.topn import dense_topk


def numpy_hybrid(first, second, weight, exclude):
    """The hybrid's scores written row by row in float64: z-scores over the items a user may be recommended (not
    excluded, and scored by both methods)."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    out = np.full(first.shape, -np.inf)
    for u in range(first.shape[0]):
        eligible = np.isfinite(first[u]) & np.isfinite(second[u])
        eligible[exclude[u][exclude[u] >= 0]] = False
        total = np.zeros(first.shape[1])
        for scores, w in ((first[u], 1.0), (second[u], weight)):
            kept = scores[eligible]
            std = kept.std()
            total[eligible] += w * ((kept - kept.mean()) / std if std > 0 else 0.0)
        out[u, eligible] = total[eligible]
    return out


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    first = rng.normal(size=(4, 30)).astype(np.float32)
    second = rng.gamma(2.0, size=(4, 30)).astype(np.float32)
    second[1, 12] = -np.inf  # an item the second method cannot score, for one user
    exclude = np.array([[0, 5, 7], [1, -1, -1], [-1, -1, -1], [29, 28, 3]], np.int32)
    return first, second, exclude


def test_hybrid_scores_equal_the_standardised_sum_by_hand(scores):
    first, second, exclude = scores
    got = np.asarray(hybrid_scores(first, second, 2.0, exclude))
    want = numpy_hybrid(first, second, 2.0, exclude)
    assert np.array_equal(np.isinf(got), np.isinf(want)) and np.isinf(got[1, 12])
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-5, atol=1e-5)


def test_a_row_of_equal_scores_counts_as_no_preference():
    """Equal scores give z = 0 exactly, not NaN, and not the rounding error of a float32 mean (a row of 3001 x 0.1
    has a mean that is not 0.1, which a plain z-score would blow up to +-1)."""
    rows = np.stack([np.full(3001, 3.0), np.full(3001, 0.1), np.full(3001, 0.3), np.linspace(1.0, 5.0, 3001)])
    z = np.asarray(standardize(rows.astype(np.float32), np.ones(rows.shape, bool)))
    assert np.all(z[:3] == 0.0) and np.isfinite(z).all()
    want = (rows[3] - rows[3].mean()) / rows[3].std()
    np.testing.assert_allclose(z[3], want, rtol=1e-4, atol=1e-4)


def test_the_lists_do_not_depend_on_either_methods_scale_or_offset(scores):
    first, second, exclude = scores
    base = np.asarray(hybrid_topk(first, second, 1.5, exclude, k=10))
    moved = np.asarray(hybrid_topk(7.0 * first - 3.0, 0.01 * second + 100.0, 1.5, exclude, k=10))
    assert np.array_equal(base, moved)


def test_weight_zero_ranks_as_the_first_method_and_a_huge_weight_as_the_second(scores):
    first, second, exclude = scores
    second = np.where(np.isfinite(second), second, 0.0)
    alone = np.asarray(dense_topk(first, exclude, 10))
    assert np.array_equal(np.asarray(hybrid_topk(first, second, 0.0, exclude, k=10)), alone)
    other = np.asarray(dense_topk(second, exclude, 10))
    assert np.array_equal(np.asarray(hybrid_topk(first, second, 1e6, exclude, k=10)), other)
    assert not np.array_equal(alone, other)  # the two methods disagree: the check above can fail


def test_an_excluded_or_unscorable_item_is_never_recommended_and_the_rest_fill_the_list(scores):
    first, second, exclude = scores
    top = np.asarray(hybrid_topk(first, second, 1.0, exclude, k=30))
    for u in range(len(top)):
        banned = set(exclude[u][exclude[u] >= 0]) | ({12} if u == 1 else set())
        eligible = 30 - len(banned)
        assert not banned & set(top[u][top[u] >= 0])
        assert sorted(top[u][:eligible]) == sorted(set(range(30)) - banned)  # every eligible item, once
        assert np.all(top[u][eligible:] == -1)


def test_experiment_hybrids_are_tuned_on_validation_users_and_rank_by_their_scores(monkeypatch):
    """``hybrid="itemknn"``: the meta method and every other fitted baseline get a hybrid with item-kNN, each with
    its weight chosen on the validation users (the grid's best). The meta method's hybrid scores a batch as the
    float64 standardised sum of the two methods' scores written here, and ranks by those scores. (Item-kNN's own
    grid is cut to two points: the hybrid's weight is what is tested here.)"""
    from jaxrec.experiment import ExperimentConfig, topn
    from jaxrec.experiment.topn import HYBRID_WEIGHTS, TopNExperiment, _scores_of_every_item

    monkeypatch.setitem(
        topn.BASELINE_GRIDS, "itemknn", [{"neighbours": 50, "shrink": 0.0}, {"neighbours": 200, "shrink": 10.0}]
    )

    config = ExperimentConfig.make(
        feedback="implicit",
        positive_threshold=4.0,
        model="twotower",
        model_kwargs={"embed": 8},
        epochs=1,
        topn_baselines=("popular", "itemknn"),
        hybrid="itemknn",
    )
    exp = TopNExperiment(config)
    state = exp.train()
    rankers = exp.rankers(state.params)
    assert {"maml+itemknn", "popular+itemknn"} <= set(rankers) and "itemknn+itemknn" not in rankers
    tuned = exp.tuned["maml+itemknn"]
    assert tuned["weight"] in HYBRID_WEIGHTS and exp.tuned["popular+itemknn"]["weight"] in HYBRID_WEIGHTS
    both = _scores_of_every_item(rankers["maml"], rankers["itemknn"], exp.dataset.n_items)
    grid = exp._validate({f"{w:g}": exp._hybrid(both, w) for w in HYBRID_WEIGHTS})
    assert tuned["validation_recall@20"] == max(grid.values())
    assert exp.rankers(state.params)["maml+itemknn"] is rankers["maml+itemknn"]  # tuned once per parameters

    tasks = exp.scenario_tasks["new_user"]
    index = tasks.batch_plan(64, None)[0]
    batch = tasks.make_batch(index, np.random.default_rng(0))
    support, _ = tasks.item_codes(index)
    exclude = support.astype(np.int32)
    every = np.broadcast_to(np.arange(exp.dataset.n_items, dtype=np.int32), (len(index), exp.dataset.n_items))
    want = numpy_hybrid(
        rankers["maml"].score(batch, exclude, every),
        rankers["itemknn"].score(batch, exclude, every),
        tuned["weight"],
        exclude,
    )
    hybrid = rankers["maml+itemknn"]
    got = np.asarray(hybrid.score(batch, exclude, every))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-4, atol=1e-4)
    picked = np.asarray(hybrid.score(batch, exclude, np.where(every % 3 == 0, every, -1)))
    assert np.all(np.isneginf(picked[:, every[0] % 3 != 0]))  # -1: no item
    top = np.asarray(hybrid.rank(batch, exclude))[:, :20]
    np.testing.assert_array_equal(top, np.argsort(-want, axis=1, kind="stable")[:, :20])
    assert not np.array_equal(top, np.asarray(rankers["maml"].rank(batch, exclude))[:, :20])  # the partner counts
    summaries, _ = exp.evaluate(state.params)
    assert "maml+itemknn" in summaries["new_user"] and "popular+itemknn" in summaries["warm"]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"hybrid": "bogus"}, "^hybrid must be one of popular, itemknn"),
        ({"hybrid": "itemknn", "topn_baselines": ("popular",)}, "^hybrid 'itemknn' is not among the baselines run"),
    ],
)
def test_a_hybrid_that_cannot_run_is_refused_by_name(fields, message):
    from jaxrec.experiment import ExperimentConfig

    with pytest.raises(ValueError, match=message):
        ExperimentConfig.make(feedback="implicit", **fields)


def test_a_hybrid_with_a_baseline_that_could_not_be_fitted_is_left_out_and_logged(tmp_path, caplog):
    """``hybrid="content"`` on a log whose items have no side features: content is not fitted, so neither is any
    ``+content`` hybrid; the run goes on with the other methods, and says why."""
    import logging

    from cli_support import plays_config

    from jaxrec.experiment.topn import TopNExperiment

    config = plays_config(
        tmp_path,
        model_kwargs={"embed": 8},
        shots=3,
        epochs=1,
        topn_baselines=("popular", "content"),
        hybrid="content",
    )
    exp = TopNExperiment(config)
    with caplog.at_level(logging.INFO, logger="jaxrec.experiment.topn"):
        rankers = exp.rankers(exp.init_params())
    assert set(rankers) == {"maml", "popular"}
    assert "hybrid with content left out" in caplog.text and "content left out" in caplog.text
