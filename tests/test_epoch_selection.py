"""The state meta-training keeps, chosen on the validation users (``select_epoch``)."""

import json
import math
import shutil
import statistics

import jax
import numpy as np
import pytest
from cli_support import write_plays

from jaxrec import cli
from jaxrec.experiment import ExperimentConfig, load_trained
from jaxrec.experiment.checkpoint import CheckpointStore
from jaxrec.experiment.selection import EpochSelector, paired_lower_bound
from jaxrec.experiment.topn import TopNExperiment
from jaxrec.methods import recipe

SMALL = {"model_kwargs": {"embed": 8}, "shots": 3, "bootstrap": 20}
#: a ridge of 1000 in the fold-in: meta-training from the ALS start wrecks the two-taste log's new users
WEAK_FOLD_IN = {"inner_lr": 0.0005}


def plays_config(tmp_path, **fields):
    data = write_plays(tmp_path / "plays.tsv")
    return ExperimentConfig.make(
        **{**recipe("twotower-als"), **SMALL, **fields}, data=str(data), columns="user,item,weight,timestamp"
    )


def stats_of(values, weights=None):
    values = np.asarray(values, np.float64)
    return {"recall@20": values, "recall@20/w": np.ones_like(values) if weights is None else np.asarray(weights)}


def test_the_lower_bound_is_the_weighted_difference_less_a_bonferroni_normal_quantile_of_its_standard_error():
    rng = np.random.default_rng(0)
    a, b, w = rng.random(50), rng.random(50), rng.integers(0, 3, 50).astype(float)
    d = a - b
    mean = np.sum(w * d) / np.sum(w)
    n = np.sum(w > 0)  # users of weight 0 do not count
    se = math.sqrt(n / (n - 1) * np.sum(w**2 * (d - mean) ** 2)) / np.sum(w)
    for comparisons in (1, 4, 20):
        z = statistics.NormalDist().inv_cdf(1 - 0.05 / (2 * comparisons))
        difference, lower = paired_lower_bound(a, b, w, comparisons)
        assert difference == pytest.approx(mean, rel=1e-12) and lower == pytest.approx(mean - z * se, rel=1e-12)
    assert paired_lower_bound(a, b, w, 20)[1] < paired_lower_bound(a, b, w, 1)[1]  # more candidates, wider
    assert all(math.isnan(x) for x in paired_lower_bound(a, b, np.zeros(50), 1))


def test_without_a_lead_the_bound_clears_zero_at_the_rate_its_level_allows_and_a_real_lead_almost_always():
    rng = np.random.default_rng(3)
    users, trials = 60, 4000
    weights = rng.integers(1, 4, users).astype(float)
    # two candidates of equal quality, their per-user figures skewed as recall's are: the bound's lower end, one
    # side of a 95% two-sided interval, clears 0 in about 2.5% of the draws (1.25% at m = 2)
    for comparisons, rate in ((1, 0.025), (2, 0.0125)):
        cleared = np.mean(
            [
                paired_lower_bound(rng.exponential(1, users), rng.exponential(1, users), weights, comparisons)[1] > 0
                for _ in range(trials)
            ]
        )
        assert rate / 2 < cleared < rate * 1.6, (comparisons, cleared)
    # a lead of about five standard errors clears the bound of 20 comparisons (z = 3.02) nearly always
    lead = np.mean(
        [paired_lower_bound(rng.normal(1.0, 1, users), rng.normal(0, 1, users), weights, 20)[1] > 0 for _ in range(400)]
    )
    assert lead > 0.9


def test_each_rule_keeps_its_candidate():
    rng = np.random.default_rng(1)
    base = rng.random(400)
    noise = {step: base + rng.normal(0, 0.05, 400) for step in (0, 10, 20)}
    clear = base + 0.2  # a lead every user shows
    for rule, expected in (("last", 30), ("best", 10), ("clear_best", 10)):
        selector = EpochSelector(rule, "recall@20")
        for step in (0, 10, 20):
            selector.observe(step, stats_of(noise[step] if step != 10 else clear))
        assert selector.observe(30, stats_of(base)) == expected, rule
    # a lead within the noise of 400 users: "best" takes it, "clear_best" keeps the last
    small = {step: base + rng.normal(0, 0.3, 400) for step in (0, 10)}
    choices = {}
    for rule in ("best", "clear_best"):
        selector = EpochSelector(rule, "recall@20")
        selector.observe(0, stats_of(small[0] + 0.01))
        choices[rule] = selector.observe(10, stats_of(small[10]))
        assert selector.scores[0] > selector.scores[10]
    assert choices == {"best": 0, "clear_best": 10}
    assert selector.lower < 0 < selector.difference
    # a diverged last state is never kept over a scored one
    selector = EpochSelector("clear_best", "recall@20")
    selector.observe(0, stats_of(base))
    assert selector.observe(10, stats_of(np.full(400, np.nan))) == 0


def test_a_resumed_selector_asks_for_the_best_candidates_figures_again():
    rng = np.random.default_rng(2)
    figures = {0: rng.random(300) + 0.3, 10: rng.random(300)}
    selector = EpochSelector("clear_best", "recall@20")
    for step, values in figures.items():
        selector.observe(step, stats_of(values))
    asked = []

    def figures_at(step):
        asked.append(step)
        return stats_of(figures[step])

    resumed = EpochSelector.from_record(json.loads(json.dumps(selector.record())), figures_at)
    assert resumed.chosen == selector.chosen == 0 and resumed.scores == selector.scores
    assert resumed.observe(20, stats_of(rng.random(300))) == 0
    assert asked == [0]
    with pytest.raises(ValueError, match="select_epoch must be one of"):
        EpochSelector("first", "recall@20")


def test_meta_training_that_wrecks_the_validation_users_is_not_kept(tmp_path):
    config = plays_config(tmp_path, epochs=2, **WEAK_FOLD_IN)
    figures = {}
    for rule in ("last", "clear_best", "best"):
        experiment = TopNExperiment(config.override(select_epoch=rule))
        state = experiment.train()
        figures[rule] = (int(state.step), experiment.validate(state.params, baselines=False)["maml"]["recall@20"])
        record = experiment.tuned.get("epoch")
        if rule != "last":
            (start, start_score), *_ = record["scores"]
            assert start == 0 and record["chosen_step"] == 0 and figures[rule] == (0, start_score)
    steps = figures["last"][0]
    assert steps == 2 * experiment.steps_per_epoch
    # the two-taste log's new users: the start ranks them well, the wrecked last state does not
    assert figures["clear_best"][1] > figures["last"][1] + 0.2
    # training on in memory from a state: the last state, whatever the rule
    experiment = TopNExperiment(config)
    start = experiment.init_state()
    assert int(experiment.train(start, steps=3).step) == 3 and "epoch" not in experiment.tuned


def test_a_middle_epochs_state_is_kept_unharmed_by_the_steps_after_it(tmp_path, monkeypatch):
    config = plays_config(tmp_path, epochs=3)
    experiment = TopNExperiment(config)
    per_epoch = experiment.steps_per_epoch
    users = len(experiment.val_tasks)
    figures = iter([0.3, 0.9, 0.3, 0.3])  # the start, then each epoch's end: the first epoch's is clearly best
    monkeypatch.setattr(experiment, "validation_stats", lambda params: stats_of(np.full(users, next(figures))))
    kept = experiment.train()
    assert int(kept.step) == per_epoch and experiment.tuned["epoch"]["chosen_step"] == per_epoch
    again = TopNExperiment(config).train(steps=per_epoch)  # the same steps, nothing trained after them
    for a, b in zip(jax.tree.leaves(kept.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_jaxrec_train_keeps_serves_and_resumes_the_chosen_state(tmp_path, capsys):
    data = write_plays(tmp_path / "plays.tsv")
    argv = [
        "train",
        "--data",
        str(data),
        "--columns",
        "user,item,weight,timestamp",
        "--method",
        "twotower-als",
        "--model-kwargs",
        '{"embed": 8}',
        "--shots",
        "3",
        "--inner-lr",
        "0.0005",
        "--epochs",
        "3",
        "--keep",
        "1",
        "--topn-baselines",
        "popular",
        "--bootstrap",
        "20",
        "--no-progress",
    ]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli.main([*argv, "--out", str(whole)]) == 0
    said = capsys.readouterr().out
    assert "kept step 0 (epoch 0), chosen on the validation users" in said
    metrics = json.loads((whole / "metrics.json").read_text())
    record = metrics["tuned"]["epoch"]
    assert record["chosen_step"] == 0 and len(record["scores"]) == 4 and record["lower_bound"] > 0
    assert metrics["scenarios"]["new_user"]["maml"]["recall@20"] > 0.6  # the start's, not the wrecked state's
    with CheckpointStore(whole / "checkpoints", create=False) as store:
        last = store.latest_step()
        assert store.steps() == [0, last]  # --keep 1, and the chosen state
        assert store.served_step() == 0
    assert load_trained(whole).step == 0 and load_trained(whole, step=last).step == last
    epochs = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [e["validation_recall@20"] for e in epochs] == [s for _, s in record["scores"][1:]]
    # the evaluation of the folder is the run's, its choice as the run's end recorded it
    evaluate = ["evaluate", "--checkpoint", str(whole), "--data", str(data), "--output", str(tmp_path / "again.json")]
    assert cli.main(evaluate) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["scenarios"] == metrics["scenarios"] and again["tuned"]["epoch"] == record
    # stopped after one step of the second epoch and resumed: the same run, the start scored again from its file
    per_epoch = last // 3
    assert cli.main([*argv, "--out", str(parts), "--steps", str(per_epoch + 1), "--no-eval"]) == 0
    assert "kept step" not in capsys.readouterr().out  # stopped between epochs: its last state, until resumed
    with CheckpointStore(parts / "checkpoints", create=False) as store:
        assert store.served_step() == per_epoch + 1 and 0 in store.steps()
    # the state chosen so far lost: said at the resume, not after training the epoch that needs it
    broken = tmp_path / "broken"
    shutil.copytree(parts, broken)
    shutil.rmtree(broken / "checkpoints" / "0")
    logged = (broken / "metrics.jsonl").read_text()
    assert cli.main([*argv[:1], "--data", str(data), "--out", str(broken), "--resume", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "chosen so far on its validation users, or the best scored, is gone (step 0)" in err
    assert (broken / "metrics.jsonl").read_text() == logged  # nothing trained
    assert cli.main([*argv[:1], "--data", str(data), "--out", str(parts), "--resume", "--no-progress"]) == 0
    resumed = json.loads((parts / "metrics.json").read_text())
    assert resumed["tuned"] == metrics["tuned"] and resumed["scenarios"] == metrics["scenarios"]
    assert (parts / "metrics.jsonl").read_text() != "" and [s for s, _ in record["scores"]] == [
        0,
        *range(per_epoch, last + 1, per_epoch),
    ]
