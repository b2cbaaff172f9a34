"""Hybrid top-N ranking (jaxrec.evaluation.hybrid): the standardised sum by hand, its invariances, and the
experiment's hybrids tuned on the validation users."""

import numpy as np
import pytest

from jaxrec.evaluation.hybrid import hybrid_scores, hybrid_topk, standardize
from jaxrec.evaluation.topn import dense_topk


def numpy_hybrid(first, second, weight, exclude):
    """The hybrid's scores written row by row in float64: z-scores over the items a user may be recommended."""
    out = np.full(first.shape, -np.inf)
    for u in range(first.shape[0]):
        eligible = np.ones(first.shape[1], bool)
        eligible[exclude[u][exclude[u] >= 0]] = False
        total = np.zeros(first.shape[1])
        for scores, w in ((first[u], 1.0), (second[u], weight)):
            kept = scores[eligible].astype(np.float64)
            std = kept.std()
            total[eligible] += w * ((kept - kept.mean()) / std if std > 0 else 0.0)
        out[u, eligible] = total[eligible]
    return out


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    first = rng.normal(size=(4, 30)).astype(np.float32)
    second = rng.gamma(2.0, size=(4, 30)).astype(np.float32)
    exclude = np.array([[0, 5, 7], [1, -1, -1], [-1, -1, -1], [29, 28, 3]], np.int32)
    return first, second, exclude


def test_hybrid_scores_equal_the_standardised_sum_by_hand(scores):
    first, second, exclude = scores
    got = np.asarray(hybrid_scores(first, second, 2.0, exclude))
    want = numpy_hybrid(first, second, 2.0, exclude)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-5, atol=1e-5)


def test_a_constant_row_counts_as_no_preference_not_nan():
    eligible = np.ones((2, 5), bool)
    z = np.asarray(standardize(np.array([[3.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0]], np.float32), eligible))
    assert np.all(z[0] == 0.0) and np.isfinite(z).all()
    np.testing.assert_allclose(z[1], (np.arange(5) - 2.0) / np.sqrt(2.0), rtol=1e-6)


def test_the_lists_do_not_depend_on_either_methods_scale_or_offset(scores):
    first, second, exclude = scores
    base = np.asarray(hybrid_topk(first, second, 1.5, exclude, k=10))
    moved = np.asarray(hybrid_topk(7.0 * first - 3.0, 0.01 * second + 100.0, 1.5, exclude, k=10))
    assert np.array_equal(base, moved)


def test_weight_zero_ranks_as_the_first_method_and_a_huge_weight_as_the_second(scores):
    first, second, exclude = scores
    alone = np.asarray(dense_topk(first, exclude, 10))
    assert np.array_equal(np.asarray(hybrid_topk(first, second, 0.0, exclude, k=10)), alone)
    other = np.asarray(dense_topk(second, exclude, 10))
    assert np.array_equal(np.asarray(hybrid_topk(first, second, 1e6, exclude, k=10)), other)
    assert not np.array_equal(alone, other)  # the two methods disagree: the check above can fail


def test_an_excluded_or_unscorable_item_is_never_recommended(scores):
    first, second, exclude = scores
    second = second.copy()
    second[:, 10] = -np.inf  # e.g. an item the second method cannot score
    top = np.asarray(hybrid_topk(first, second, 1.0, exclude, k=26))
    for u in range(len(top)):
        assert not np.isin(top[u], exclude[u][exclude[u] >= 0]).any()
        assert 10 not in top[u]


def test_experiment_hybrids_are_tuned_on_validation_users_and_scored_on_every_scenario():
    """``hybrid="itemknn"``: the meta method and every other fitted baseline get a hybrid with item-kNN, each with
    its weight chosen on the validation users: the chosen weight's validation Recall@20 is the grid's best, and the
    test lists are those of a hybrid built by hand from the two methods at that weight."""
    from jaxrec.evaluation.topn import evaluate_rankers
    from jaxrec.experiment import ExperimentConfig
    from jaxrec.experiment.topn import HYBRID_WEIGHTS, TopNExperiment

    config = ExperimentConfig.make(
        feedback="implicit",
        positive_threshold=4.0,
        model="twotower",
        model_kwargs={"embed": 8},
        epochs=1,
        topn_baselines=("popular", "itemknn", "ease"),
        hybrid="itemknn",
    )
    exp = TopNExperiment(config)
    state = exp.train()
    rankers = exp.rankers(state.params)
    assert {"maml+itemknn", "popular+itemknn", "ease+itemknn"} <= set(rankers)
    assert "itemknn+itemknn" not in rankers
    tuned = exp.tuned["maml+itemknn"]
    assert tuned["weight"] in HYBRID_WEIGHTS
    grid = exp._validate({f"{w:g}": exp._hybrid(rankers["maml"], rankers["itemknn"], w) for w in HYBRID_WEIGHTS})
    assert tuned["validation_recall@20"] == max(grid.values())
    by_hand = exp._hybrid(rankers["maml"], rankers["itemknn"], tuned["weight"])
    _, _, lists = evaluate_rankers(
        {"hybrid": rankers["maml+itemknn"], "by_hand": by_hand, "maml": rankers["maml"]},
        exp.scenario_tasks["new_user"],
        exp.catalogue,
        ks=(20,),
        resamples=0,
        reference="",
        keep_lists=True,
    )
    assert np.array_equal(lists["hybrid"], lists["by_hand"])
    assert not np.array_equal(lists["hybrid"][:, :20], lists["maml"][:, :20])
    summaries, _ = exp.evaluate(state.params)
    assert "maml+itemknn" in summaries["new_user"] and "ease+itemknn" in summaries["warm"]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"feedback": "implicit", "hybrid": "bogus"}, "hybrid"),
        ({"feedback": "implicit", "hybrid": "itemknn", "topn_baselines": ("popular",)}, "topn_baselines"),
        ({"hybrid": "itemknn"}, "needs --feedback implicit"),
    ],
)
def test_a_hybrid_that_cannot_run_is_refused_by_name(fields, message):
    from jaxrec.experiment import ExperimentConfig

    with pytest.raises(ValueError, match=message):
        ExperimentConfig.make(**fields)
