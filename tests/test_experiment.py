"""End to end: a tiny Experiment on the bundled ml-latest-small produces the exact metrics.json shape."""

import json

import numpy as np
import pytest

from jaxrec.core.newton import NewtonStep
from jaxrec.experiment import BASELINES, Experiment, ExperimentConfig

TINY = dict(
    model_kwargs={"embed": 4, "hidden": [8], "use_ids": ["item"], "interaction": None},
    inner_steps=1,
    bootstrap=20,
    supervised_epochs=1,
    finetune_lrs=(0.0, 0.1),
    pretrain=False,
)


def test_config_round_trip():
    config = ExperimentConfig.make(**TINY)
    again = ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_default_config_round_trip():
    config = ExperimentConfig()
    assert ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_bias_start_is_the_bias_model_and_keeps_its_own_inner_rate():
    melu = {**TINY["model_kwargs"], "item_bias": True}
    config = ExperimentConfig.make(
        **{**TINY, "model_kwargs": melu, "pretrain": "bias"}, inner_lr=0.05, baselines=("bias",)
    )
    exp = Experiment(config)
    assert exp.start == "bias"
    params = exp.init_params()
    mu, item_bias = exp.bias_init()
    baselines = exp.baselines()
    assert mu == pytest.approx(baselines.mu) and np.array_equal(item_bias, baselines.item_bias)  # the same fit
    assert np.any(item_bias != 0)
    np.testing.assert_array_equal(np.asarray(params["params"]["bias_embed_item"]["embedding"])[:, 0], item_bias)
    assert not np.any(np.asarray(params["params"]["head"]["output"]["kernel"]))
    rows = exp.featurizer.transform(exp.val_ratings.head(50))
    scores = np.asarray(exp.model.apply(params, rows))
    np.testing.assert_allclose(scores, mu + item_bias[rows["item"]], rtol=1e-5)  # exactly mu + b_i
    # the supervised baselines still start from random parameters
    assert np.any(np.asarray(exp.random_params()["params"]["head"]["output"]["kernel"]))
    # the fine-tuning rate belongs to the supervised model: the bias start keeps inner_lr
    assert exp.resolve_inner_lr() == 0.05 and exp.trainer.inner_lr == 0.05


def test_pretrain_values_and_the_fallback_of_the_bias_start():
    assert Experiment(ExperimentConfig.make(**{**TINY, "pretrain": "bias"})).start == "supervised"  # no item bias table
    assert Experiment(ExperimentConfig.make(**{**TINY, "pretrain": True})).start == "supervised"
    exp = Experiment(ExperimentConfig.make(**TINY))
    assert exp.start == "random"
    with pytest.raises(ValueError, match="bias_embed_item"):
        exp.bias_start(exp.random_params())
    with pytest.raises(ValueError, match="pretrain"):
        Experiment(ExperimentConfig.make(**{**TINY, "pretrain": "maybe"})).init_params()


def test_tiny_experiment_metrics_document():
    exp = Experiment(ExperimentConfig.make(**TINY))
    state = exp.init_state()
    assert exp.steps_per_epoch > 0
    # resume skips exactly: the stream from step 3 is the full stream without its first 3 batches
    full = exp.batches()
    for _ in range(3):
        next(full)
    a, b = next(full), next(exp.batches(start_step=3))
    assert (a.task_id == b.task_id).all()
    state = exp.train(state, steps=2)
    assert int(state.step) == 2
    doc = json.loads(json.dumps(exp.metrics_document(state.params)))
    assert set(doc) == {"dataset", "config", "tuned", "data_report", "features", "tasks", "rating_scale", "scenarios"}
    assert doc["rating_scale"] == [0.5, 5.0]
    assert doc["features"] == {"user": {}, "item": {"year": "categorical (11 values)", "genres": "multi-hot (19 tags)"}}
    assert doc["data_report"]["ratings_kept"] == exp.dataset.n_ratings == 100836
    assert doc["tuned"]["inner_lr"] == exp.inner_lr  # recorded beside the config, not written into it
    # the fine-tuning rate the validation users chose (0: finetune is no_adapt), which metrics.json did not say
    finetune = doc["tuned"]["finetune"]
    assert (
        finetune["inner_lr"] == exp.baselines().finetune_lr
        and finetune["inner_lr"] in exp.config.evaluation.finetune_lrs
    )
    assert set(finetune["validation"]) == {f"{lr:g}" for lr in exp.config.evaluation.finetune_lrs}
    assert doc["dataset"] == "ml-latest-small"
    assert set(doc["scenarios"]) == {"warm", "new_user", "new_item", "new_user_new_item"}
    for methods in doc["scenarios"].values():
        assert set(methods) == {"maml", *BASELINES}
        for name, r in methods.items():
            for key in ("mae", "rmse", "ndcg@1", "ndcg@3", "ndcg@10", "users", "ci95"):
                assert key in r, (name, key)
            assert r["users"] == methods["maml"]["users"] > 0
            if name != "maml":
                assert set(r["paired"]["mae"]) == {"diff", "ci95"}


def test_gru_experiment_end_to_end_sets_history():
    config = ExperimentConfig.make(
        **{**TINY, "model": "gru", "model_kwargs": {"embed": 4, "hidden": [8]}, "pretrain": True},
        baselines=("finetune", "bias"),
    )
    exp = Experiment(config)
    assert exp.history == 10 and exp.spec.history == 10 and exp.train_tasks.history == 10
    state = exp.train(exp.init_state(), steps=1)
    results = exp.evaluate(state.params)
    assert set(results["new_user"]) == {"maml", "finetune", "bias"}
    assert all(r["mae"] == r["mae"] for r in results["new_user"].values())  # finite, not NaN


def test_the_recommender_of_a_rating_history_model_reads_the_rows_its_evaluation_reads():
    """A GRU run's ``Recommender`` (``jaxrec recommend``, ``jaxrec serve``) built no history rows, and failed on
    ``history_item``: each support row reads the ratings before it, a candidate the whole support's last ``L``."""
    from jaxrec.core.inner import adapt
    from jaxrec.core.metasgd import split_meta_params
    from jaxrec.experiment import Recommender

    config = ExperimentConfig.make(**{**TINY, "model": "gru", "model_kwargs": {"embed": 4, "hidden": [8]}})
    exp = Experiment(config)
    state = exp.train(exp.init_state(), steps=1)
    tasks = exp.scenario_tasks["new_user"]
    (support, support_mask), (query, query_mask) = tasks.codes(np.array([0]))
    batch = tasks.make_batch(np.array([0]))
    n, m = int(support_mask.sum()), int(query_mask.sum())
    recommender = Recommender(exp, state.params)
    rows, mask = recommender.supports(support["item"], support["rating"], support_mask)
    for key in ("history_item", "history_rating"):
        np.testing.assert_array_equal(rows[key][0, :n], batch.support[key][0, :n])
        np.testing.assert_array_equal(rows[f"next_{key}"][0, 0], batch.query[key][0, 0])  # a query row's history
    scores = recommender.scores(support["item"][0, :n], support["rating"][0, :n])
    one = {k: v[0] for k, v in batch.support.items()}
    params, rates = split_meta_params(state.params, exp.inner_lr)  # the run's Meta-SGD rates
    phi = adapt(params, one, batch.support_mask[0], exp.inner.replace(order="first"), inner_lr=rates)
    expected = exp.apply_fn(phi, {k: v[0, :m] for k, v in batch.query.items()})
    np.testing.assert_allclose(scores[query["item"][0, :m]], expected, rtol=1e-5, atol=1e-5)


def test_a_new_users_side_features_given_to_the_recommender_give_the_evaluations_predictions():
    """A run trained with user features (demographics, a binned income, a country) scored a new user with them in
    its evaluation, and ``jaxrec recommend`` / ``serve`` without them (the unknown slot): other predictions than
    the ones reported. Given the user's raw values, the recommender's rows and scores are the evaluation's."""
    import pandas as pd

    from jaxrec.core.inner import adapt
    from jaxrec.core.metasgd import split_meta_params
    from jaxrec.data import DataError, from_dataframe
    from jaxrec.experiment import Recommender

    rng = np.random.default_rng(0)
    n_users, n_items = 240, 40
    group = rng.integers(0, 3, n_users)
    users = pd.DataFrame(
        {
            "age": rng.integers(15, 70, n_users),
            "gender": rng.choice(["m", "f"], n_users),
            "income": rng.normal(50, 10, n_users).round(2),
            "country": np.array(["FR", "DE", "US"])[group],
        },
        index=pd.Index(np.arange(n_users), name="user"),
    )
    user, item = rng.integers(0, n_users, 6000), rng.integers(0, n_items, 6000)
    rating = np.clip(1 + (item % 3 == group[user]) * 3 + rng.integers(0, 2, 6000), 1, 5).astype(float)
    dataset = from_dataframe(pd.DataFrame({"user": user, "item": item, "rating": rating}), user_features=users)
    model_kwargs = {**TINY["model_kwargs"], "use_ids": ["item"]}
    exp = Experiment(ExperimentConfig.make(**{**TINY, "model_kwargs": model_kwargs}), dataset=dataset)
    assert {"user_age", "user_income", "user_country"} <= set(exp.spec.categorical)
    state = exp.train(exp.init_state(), steps=1)
    tasks = exp.scenario_tasks["new_user"]
    recommender = Recommender(exp, state.params)
    params, rates = split_meta_params(state.params, exp.inner_lr)
    for t in range(3):
        (support, support_mask), (query, query_mask) = tasks.codes(np.array([t]))
        batch = tasks.make_batch(np.array([t]))
        n, m = int(support_mask.sum()), int(query_mask.sum())
        code = int(tasks.users[t])
        raw = {k: v for k, v in users.loc[dataset.user_ids[code]].items()}
        rows, _ = recommender.support(support["item"][0, :n], support["rating"][0, :n], user_features=raw)
        for key in ("user_age", "user_gender", "user_income", "user_country"):
            np.testing.assert_array_equal(rows[key][:n], batch.support[key][0, :n])
        one = {k: v[0] for k, v in batch.support.items()}
        phi = adapt(params, one, batch.support_mask[0], exp.inner.replace(order="first"), inner_lr=rates)
        expected = exp.apply_fn(phi, {k: v[0, :m] for k, v in batch.query.items()})
        scores = recommender.scores(support["item"][0, :n], support["rating"][0, :n], user_features=raw)
        np.testing.assert_allclose(scores[query["item"][0, :m]], expected, rtol=1e-5, atol=1e-5)
        blind = recommender.scores(support["item"][0, :n], support["rating"][0, :n])
        assert not np.allclose(blind[query["item"][0, :m]], expected, atol=1e-4)  # the features matter
    with pytest.raises(DataError, match="reads age, country, gender, income"):
        recommender.scores(support["item"][0, :n], support["rating"][0, :n], user_features={"salary": 3})


def test_metasgd_rates_get_their_own_learning_rate_and_validate_scores_val_users():
    config = ExperimentConfig.make(
        **{**TINY, "pretrain": True},
        algorithm="metasgd",
        rate_lr=0.05,
        tune_inner_lr=True,
        baselines=("finetune", "bias"),
    )
    exp = Experiment(config)
    state = exp.init_state()
    assert exp.inner_lr == exp.baselines().finetune_lr or exp.baselines().finetune_lr == 0
    start = state.params.inner_lr["params"]["head"]["output"]["bias"].copy()
    state = exp.train(state, steps=2)
    moved = abs(float(state.params.inner_lr["params"]["head"]["output"]["bias"][0] - start[0]))
    assert 0.05 < moved <= 0.1 + 1e-6  # Adam moves each rate by ~rate_lr per step, not meta_lr
    scores = exp.validate(state.params)
    assert set(scores) == {"maml", "finetune", "bias"} and scores["maml"]["users"] == len(exp.val_tasks)


def test_resampled_epochs_split_the_same_users_afresh_with_fixed_shapes():
    exp = Experiment(ExperimentConfig.make(**TINY, resample_tasks=True))
    first, second = exp.epoch_tasks(0), exp.epoch_tasks(1)
    assert first is exp.train_tasks
    np.testing.assert_array_equal(first.users, second.users)
    np.testing.assert_array_equal(first.support_pad, second.support_pad)
    # the same users, other ratings on the query side
    assert not np.array_equal(first.row_item[first.query_start], second.row_item[second.query_start])
    # the stream from the first step of epoch 1 is that of the full stream (resume stays exact)
    per_epoch = exp.steps_per_epoch
    full = exp.batches()
    for _ in range(per_epoch):
        next(full)
    a, b = next(full), next(exp.batches(start_step=per_epoch))
    np.testing.assert_array_equal(np.asarray(a.support["item"]), np.asarray(b.support["item"]))
    fixed = Experiment(ExperimentConfig.make(**TINY, resample_tasks=False))
    assert fixed.epoch_tasks(3) is fixed.train_tasks


def test_pooled_comparison_of_two_evaluations_equals_one_evaluation_of_all_users():
    from jaxrec.evaluation.compare import compare_stats, concat_stats

    exp = Experiment(ExperimentConfig.make(**TINY, baselines=("finetune",)))
    state = exp.train(exp.init_state(), steps=1)
    _, stats = exp.evaluate(state.params, return_stats=True)
    a, b = stats["new_user"], stats["warm"]
    pooled = compare_stats({m: concat_stats([a[m], b[m]]) for m in a}, resamples=50)
    n = {m: np.concatenate([a[m]["n"], b[m]["n"]]) for m in a}
    errors = {m: np.concatenate([a[m]["abs_sum"], b[m]["abs_sum"]]) for m in a}
    for m in a:
        assert pooled[m]["users"] == int((n[m] > 0).sum())
        np.testing.assert_allclose(pooled[m]["mae"], errors[m].sum() / n[m].sum(), rtol=1e-6)
    assert pooled["finetune"]["paired"]["mae"]["diff"] == pytest.approx(
        pooled["maml"]["mae"] - pooled["finetune"]["mae"]
    )


@pytest.mark.parametrize(
    "model, kwargs, expected",
    [
        ("melu", TINY["model_kwargs"], ("head/output", "newton", 1)),
        ("mf", {"embed": 4}, ("default", "sgd", 5)),
    ],
)
def test_auto_inner_loop_is_made_concrete_per_model(model, kwargs, expected):
    """The default inner loop: a Newton step on the output layer where the model has one, else gradient steps."""
    exp = Experiment(ExperimentConfig.make(**{**TINY, "model": model, "model_kwargs": kwargs, "inner_steps": None}))
    assert (exp.config.meta.adapt, exp.config.meta.inner_solver, exp.config.meta.inner_steps) == expected
    assert exp.trainer.inner.steps == expected[2]
    assert isinstance(exp.inner.solver, NewtonStep) == (expected[1] == "newton")  # the solver the step runs


def test_each_protocol_refuses_the_config_of_the_other():
    """``Experiment`` given a top-N config (``feedback="implicit"``) ran the rating protocol on MovieLens (and told a
    log without ratings to "pass --feedback implicit", which it had); ``TopNExperiment`` given a rating config failed
    after training began, on a missing label."""
    from jaxrec.experiment import TopNExperiment
    from jaxrec.methods import recipe

    topn = ExperimentConfig.make(**recipe("twotower-als"), positive_threshold=4.0)
    with pytest.raises(ValueError, match="feedback='implicit'.*TopNExperiment.*build_experiment"):
        Experiment(topn)
    with pytest.raises(ValueError, match="feedback=None; set feedback='implicit'"):
        TopNExperiment(ExperimentConfig.make(epochs=1))


def test_the_library_recommender_warns_when_no_weighting_is_chosen_for_its_parameters(caplog):
    """``TopNRecommender(experiment, params)`` reads the support's weighting a trained model records, or the one
    the experiment chose for these parameters (checked end to end in the in-memory test below); without a choice
    it weighs nothing, and says so where there was a grid to choose from."""
    import logging
    import types

    from jaxrec.experiment.recommend import chosen_recency

    grid = types.SimpleNamespace(topn=types.SimpleNamespace(support_recency=(0.0, 1.0, 2.0)))
    timed = types.SimpleNamespace(has_timestamps=True)
    assert chosen_recency(types.SimpleNamespace(support_recency=3.0)) == 3.0  # a trained model's record
    params, other = object(), object()
    chose = types.SimpleNamespace(recency_for=lambda p: 2.0 if p is params else None, config=grid, dataset=timed)
    assert chosen_recency(chose, params) == 2.0
    with caplog.at_level(logging.WARNING, logger="jaxrec.experiment.recommend"):
        assert chosen_recency(chose, other) == 0.0  # chosen for other parameters: not theirs
    assert "chosen for these parameters yet" in caplog.text
    caplog.clear()
    untimed = types.SimpleNamespace(recency_for=lambda p: None, config=grid, dataset=types.SimpleNamespace())
    assert chosen_recency(untimed, params) == 0.0 and not caplog.text  # no order to weigh, nothing to say


def test_an_adapt_filter_that_selects_nothing_is_an_error():
    # MF has no decision layers: before this check, adapt="head" silently adapted nothing
    with pytest.raises(ValueError, match="selects no parameter of model 'mf'"):
        Experiment(ExperimentConfig.make(**{**TINY, "model": "mf", "model_kwargs": {"embed": 4}, "adapt": "head"}))


def test_auto_rules_and_early_errors_of_the_inner_loop():
    melu = {**TINY, "inner_steps": None}
    # naming the gradient solver keeps MeLU's local update of every decision layer
    sgd = Experiment(ExperimentConfig.make(**melu, inner_solver="sgd")).config
    assert (sgd.meta.adapt, sgd.meta.inner_solver, sgd.meta.inner_steps) == ("default", "sgd", 5)
    # a Newton step over the whole head would form a Hessian of thousands of parameters per user: refused early
    with pytest.raises(ValueError, match="would adapt .* parameters .* more than 1024"):
        wide = {**TINY["model_kwargs"], "hidden": [64, 64]}
        Experiment(ExperimentConfig.make(**{**melu, "model_kwargs": wide}, adapt="head", inner_solver="newton"))
    with pytest.raises(ValueError, match="has no output layer"):
        Experiment(
            ExperimentConfig.make(**{**melu, "model": "mf", "model_kwargs": {"embed": 4}}, inner_solver="newton")
        )


def test_a_record_of_another_format_is_refused_with_one_message():
    flat = {**ExperimentConfig().flat(), "adapt": "head"}  # the flat records of jaxrec 0.1
    with pytest.raises(ValueError, match="jaxrec 0.1 record"):
        ExperimentConfig.from_dict(flat)
    record = ExperimentConfig.make(**TINY).to_dict()
    with pytest.raises(ValueError, match="format"):
        ExperimentConfig.from_dict({**record, "format": "jaxrec.config/1"})
    record["meta"]["rate_space"] = "log"  # an option this version does not have
    with pytest.raises(ValueError, match="unknown meta field"):
        ExperimentConfig.from_dict(record)


def test_validation_items_are_the_newest_meta_train_items_and_new_to_the_model():
    from jaxrec.data.tasks import item_release_key

    exp = Experiment(ExperimentConfig.make(**TINY, val_frac=0.25, val_item_frac=0.2))
    train = exp.split.train
    all_items = np.unique(train["item"])
    held = exp._validation_items(train["item"].to_numpy())
    assert len(held) == round(0.2 * len(all_items))
    kept = np.unique(np.r_[exp.train_ratings["item"], exp.val_ratings["item"]])
    assert not np.isin(held, kept).any() and np.isin(exp.val_item_ratings["item"], held).all()
    assert len(np.union1d(held, kept)) == len(all_items)  # every other item stays
    year = item_release_key(exp.dataset)
    assert np.nanmin(year[held]) >= np.nanmax(year[kept])  # the newest (ties broken at random)
    assert np.all(exp.featurizer.transform(exp.val_item_ratings)["item"] == 0)  # OOV, as new items are
    assert not np.isin(exp.val_item_ratings["user"], exp.val_ratings["user"]).any()
    assert len(exp.val_item_tasks) > 0
    scores = exp.validate(exp.init_state().params, baselines=False, items=True)
    assert scores["maml"]["users"] == len(exp.val_item_tasks) != len(exp.val_tasks)
    # nothing else is lost: every meta-train rating is in one frame, or is a validation user's on a held-out item
    both = np.isin(train["item"], held) & np.isin(train["user"], exp.val_ratings["user"].unique())
    assert len(exp.train_ratings) + len(exp.val_ratings) + len(exp.val_item_ratings) + both.sum() == len(train)
    plain = Experiment(ExperimentConfig.make(**TINY))
    assert plain.val_item_tasks is None
    with pytest.raises(ValueError, match="no validation item tasks"):
        plain.validate(None, items=True)
    with pytest.raises(ValueError, match="val_item_frac"):
        Experiment(ExperimentConfig.make(**TINY, val_item_frac=1.0))


def test_a_dataframe_in_memory_trains_restores_and_is_recorded_by_its_name(tmp_path):
    """A library user's log is a DataFrame more often than a file: the experiments take a Dataset built from it
    (``from_dataframe``), the config records its name and no file, and a checkpoint of it restores only with the
    same data given again (checked against the checkpoint's fingerprint)."""
    import jax
    import pandas as pd
    from cli_support import write_plays

    from jaxrec.data import DataError, from_dataframe
    from jaxrec.experiment import CheckpointError, TopNExperiment, TopNRecommender, TrainingRun, restore_run
    from jaxrec.experiment.run import RunError, resume_config

    frame = pd.read_csv(write_plays(tmp_path / "plays.tsv"), sep="\t")
    data = from_dataframe(frame, item="song", rating=None, timestamp="time", weight="plays", feedback="implicit",
                          name="plays-in-memory")  # fmt: skip
    fields = dict(feedback="implicit", model="twotower", model_kwargs={"embed": 8}, batch_size=16, shots=3,
                  query_cap=20, negatives=8, bootstrap=20, epochs=1, topn_baselines=("popular",),
                  support_recency=(2.0, 4.0), rerank="melu", rerank_candidates=50)  # fmt: skip
    # the config names the bundled ml-latest-small: the dataset given replaces it; the recency grid has no 0, so the
    # recommender weighs the support only if it reads the experiment's choice
    config = ExperimentConfig.make(**fields)
    experiment = TopNExperiment(config, data)
    assert experiment.dataset is data and experiment.data_in_memory
    assert (experiment.config.data.dataset, experiment.config.data.path) == ("plays-in-memory", None)
    run = TrainingRun(experiment, tmp_path / "run")
    state, _ = run.train(run.start(resume=False), 3, progress=False)
    run.close()
    with pytest.raises(RunError, match="given in memory .*'plays-in-memory'.*dataset=.*--data FILE"):
        restore_run(tmp_path / "run")
    # the re-ranker trains on the same data, not on a dataset of that name; the recommender weighs the support as
    # the validation chose for these parameters
    assert experiment.recency_for(state.params) is None
    summaries = experiment.validate(state.params, baselines=False)
    assert {"maml", "rerank"} <= set(summaries)
    chosen = experiment.tuned["support_recency"]["maml"]["strength"]
    assert experiment.recency_for(state.params) == chosen
    assert TopNRecommender(experiment, state.params).recency == chosen
    with pytest.raises(RunError, match="continue it from Python"):  # jaxrec train --resume cannot read it again
        resume_config(tmp_path / "run", {})
    restored, checkpoint = restore_run(tmp_path / "run", dataset=data)
    assert restored.data_in_memory and checkpoint.step == 3
    for a, b in zip(jax.tree.leaves(checkpoint.state.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = from_dataframe(frame.iloc[:-40], item="song", rating=None, timestamp="time", weight="plays",
                           feedback="implicit", name="plays-in-memory")  # fmt: skip
    with pytest.raises(CheckpointError, match="the data no longer matches the checkpoint .*'plays-in-memory'"):
        restore_run(tmp_path / "run", dataset=other)
    as_file, _ = restore_run(  # from the command line: the same data as a file, its columns named
        tmp_path / "run",
        overrides={"data": str(tmp_path / "plays.tsv"), "columns": ("user", "item", "weight", "timestamp")},
    )
    assert as_file.dataset.fingerprint() == data.fingerprint()
    with pytest.raises(TypeError, match="must be a jaxrec.data.Dataset, got DataFrame .*from_dataframe"):
        TopNExperiment(config, frame)
    with pytest.raises(DataError, match="new_item_frac=0.1 holds out new items, but the log has no item features"):
        TopNExperiment(ExperimentConfig.make(**fields, new_item_frac=0.1), data)  # every new item would score alike
    with pytest.raises(ValueError, match="holds interactions already"):
        TopNExperiment(ExperimentConfig.make(**fields, positive_threshold=4.0), data)
    rated = from_dataframe(frame.rename(columns={"plays": "rating"}), item="song", timestamp="time", name="rated")
    liked = TopNExperiment(ExperimentConfig.make(**fields, positive_threshold=2.0), rated)  # converted, as ml-100k is
    assert not liked.dataset.explicit and len(liked.dataset.ratings) < len(rated.ratings)
    assert "rerank" in liked.validate(liked.train(steps=1).params, baselines=False)  # the re-ranker reads it as given
    explicit = Experiment(ExperimentConfig.make(model="mf", model_kwargs={"embed": 4}, epochs=1), rated)
    assert explicit.dataset is rated and explicit.config.data.dataset == "rated"


def test_a_run_finished_from_python_is_served_as_it_was_evaluated(tmp_path):
    """A run trained from Python kept no record of the recency weighting (and hybrid) its evaluation chose: reloaded,
    it ranked a new user's items unweighted, another list with no warning (a trial). ``TrainingRun.finish`` keeps
    them, as ``jaxrec train`` does."""
    import pandas as pd
    from cli_support import write_plays

    from jaxrec.data import from_dataframe
    from jaxrec.experiment import TopNExperiment, TrainingRun
    from jaxrec.experiment.recommend import TopNRecommender, recommender_for
    from jaxrec.experiment.trained import load_trained

    frame = pd.read_csv(write_plays(tmp_path / "plays.tsv"), sep="\t")
    data = from_dataframe(frame, item="song", rating=None, timestamp="time", weight="plays", feedback="implicit")
    fields = dict(feedback="implicit", model="twotower", model_kwargs={"embed": 8}, batch_size=16, shots=3,
                  query_cap=20, negatives=8, epochs=1, topn_baselines=("itemknn",), hybrid="itemknn",
                  support_recency=(0.0, 8.0))  # fmt: skip
    experiment = TopNExperiment(ExperimentConfig.make(**fields), data)
    run = TrainingRun(experiment, tmp_path / "run")
    state = run.train(run.start(resume=False), experiment.total_steps, progress=False)[0]
    kept = run.finish(state)
    run.close()
    chosen = experiment.tuned["support_recency"]["maml"]["strength"]
    trained = load_trained(tmp_path / "run")
    assert trained.support_recency == chosen and trained.hybrid is not None
    assert trained.hybrid.weight == experiment.tuned["maml+itemknn"]["weight"]
    items = np.asarray([3, 17, 5, 9], np.int64)
    weights = np.asarray([1.0, 2.0, 1.0, 3.0], np.float32)
    here = TopNRecommender(experiment, kept.params).top_k(items, weights, 10)[0]  # at the recency it chose
    assert chosen > 0  # else an unweighted reload would rank alike, and this test could not fail
    np.testing.assert_array_equal(
        TopNRecommender(trained, trained.params, hybrid=None).top_k(items, weights, 10)[0], here
    )
    hybrid = TopNRecommender(experiment, kept.params, hybrid=trained.hybrid).top_k(items, weights, 10)[0]
    np.testing.assert_array_equal(recommender_for(trained).top_k(items, weights, 10)[0], hybrid)


def test_a_run_with_side_features_in_memory_is_evaluated_from_python_and_the_message_says_so(tmp_path):
    """The command line's ``--data`` carries interactions only: for a run whose data had side features the message
    used to offer ``--data FILE``, which then failed as changed data; it names the side tables to give with it."""
    import pandas as pd
    from cli_support import write_plays

    from jaxrec.data import from_dataframe
    from jaxrec.experiment import TopNExperiment, TrainingRun, restore_run
    from jaxrec.experiment.run import RunError

    frame = pd.read_csv(write_plays(tmp_path / "plays.tsv"), sep="\t")
    songs = sorted(frame["song"].unique())
    genres = pd.DataFrame({"genres": ["rock" if i % 2 else "jazz" for i in range(len(songs))]}, index=songs)
    data = from_dataframe(frame, item="song", rating=None, timestamp="time", weight="plays", feedback="implicit",
                          item_features=genres, name="songs-with-genres")  # fmt: skip
    fields = dict(feedback="implicit", model="twotower", model_kwargs={"embed": 8}, batch_size=16, shots=3,
                  query_cap=20, negatives=8, epochs=1, topn_baselines=("popular",))  # fmt: skip
    run = TrainingRun(TopNExperiment(ExperimentConfig.make(**fields), data), tmp_path / "run")
    run.train(run.start(resume=False), 1, progress=False)
    run.close()
    # the log and its item table can be given again from the command line (a trial did: the figures matched)
    with pytest.raises(RunError, match=r"restore_run\(path, dataset=...\), or from the command line --data FILE"):
        restore_run(tmp_path / "run")
    with pytest.raises(RunError, match=r"side features \(item_genres\) as --item-features / --user-features FILE"):
        restore_run(tmp_path / "run")
    assert restore_run(tmp_path / "run", dataset=data)[1].step == 1
