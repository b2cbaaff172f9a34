"""End to end: a tiny Experiment on the bundled ml-latest-small produces the exact metrics.json shape."""

import json

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
    config = ExperimentConfig(**TINY)
    again = ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_tiny_experiment_metrics_document():
    exp = Experiment(ExperimentConfig(**TINY))
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
    assert set(doc) == {"dataset", "config", "scenarios"}
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
    config = ExperimentConfig(
        **{**TINY, "model": "gru", "model_kwargs": {"embed": 4, "hidden": [8]}, "pretrain": True},
        baselines=("finetune", "bias"),
    )
    exp = Experiment(config)
    assert exp.history == 10 and exp.spec.history == 10 and exp.train_tasks.history == 10
    state = exp.train(exp.init_state(), steps=1)
    results = exp.evaluate(state.params)
    assert set(results["new_user"]) == {"maml", "finetune", "bias"}
    assert all(r["mae"] == r["mae"] for r in results["new_user"].values())  # finite, not NaN


def test_metasgd_rates_get_their_own_learning_rate_and_validate_scores_val_users():
    config = ExperimentConfig(
        **{**TINY, "pretrain": True},
        algorithm="metasgd",
        rate_lr=0.05,
        tune_inner_lr=True,
        baselines=("finetune", "bias"),
    )
    exp = Experiment(config)
    state = exp.init_state()
    assert exp.config.inner_lr == exp.baselines().finetune_lr or exp.baselines().finetune_lr == 0
    start = state.params.inner_lr["params"]["head"]["output"]["bias"].copy()
    state = exp.train(state, steps=2)
    moved = abs(float(state.params.inner_lr["params"]["head"]["output"]["bias"][0] - start[0]))
    assert 0.05 < moved <= 0.1 + 1e-6  # Adam moves each rate by ~rate_lr per step, not meta_lr
    scores = exp.validate(state.params)
    assert set(scores) == {"maml", "finetune", "bias"} and scores["maml"]["users"] == len(exp.val_tasks)
