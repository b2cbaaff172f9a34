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
