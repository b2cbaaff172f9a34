"""Choosing a configuration on the validation users (``jaxrec.experiment.choose``, ``jaxrec choose``): every grid
point trained on one split and scored on its validation users, the best kept, and the chosen config trained again
reproducing the figure it was chosen by."""

import json
import math
import types

import pytest
from cli_support import write_plays

from jaxrec import cli
from jaxrec.experiment import ExperimentConfig
from jaxrec.experiment.choose import GridError, choose, grid_points, selection_metric
from jaxrec.experiment.topn import TopNExperiment
from jaxrec.methods import GRIDS, grid, recipe

#: a small two-tower fold-in on the test's play log (seconds a training)
SMALL = {"model_kwargs": {"embed": 8}, "shots": 3, "epochs": 1, "bootstrap": 20}


def plays_config(tmp_path, **fields):
    data = write_plays(tmp_path / "plays.tsv")
    return ExperimentConfig.make(
        **{**recipe("twotower-als"), **SMALL, **fields}, data=str(data), columns="user,item,weight,timestamp"
    )


def test_grid_points_are_every_combination_first_field_slowest():
    points = grid_points({"a": [1, 2], "b": ["x", "y", "z"]})
    assert points == [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]


@pytest.mark.parametrize(
    "bad, words",
    [({}, "empty"), ({"a": []}, "non-empty list"), ({"a": 3}, "non-empty list"), ({"a": [1, 1]}, "repeated")],
)
def test_grid_points_refuse_a_bad_grid(bad, words):
    with pytest.raises(GridError, match=words):
        grid_points(bad)


def test_a_bad_point_is_refused_by_name_before_any_training(tmp_path):
    def never(config):
        raise AssertionError("trained before the grid was checked")

    config = plays_config(tmp_path)
    with pytest.raises(GridError, match=r"grid point \{'epochs': 1, 'als_confidence': -1\}: als_confidence"):
        choose(config, {"epochs": [1], "als_confidence": [10, -1]}, build=never)
    with pytest.raises(GridError, match="unknown config field"):
        choose(config, {"no_such_field": [1, 2]}, build=never)
    for fixed in (
        {"seed": [0, 1]},
        {"select_epoch": ["last", "best"]},
        {"shots": [5, 10]},
        {"positive_threshold": [None, 4.0]},
        {"train_seed": [1, 2]},
    ):
        with pytest.raises(GridError, match="keep them out of the grid"):
            choose(config, {"inner_lr": [0.05], **fixed}, build=never)
    with pytest.raises(ValueError, match="trainings"):
        choose(config, {"epochs": [1]}, trainings=0, build=never)


def test_the_selection_metric_follows_the_task():
    assert selection_metric(ExperimentConfig.make(feedback="implicit")) == ("recall@20", True)
    assert selection_metric(ExperimentConfig.make()) == ("mae", False)
    # a run without the cut-off 20 chooses by its largest (it was refused: "topn_ks must hold 20")
    assert selection_metric(ExperimentConfig.make(feedback="implicit", topn_ks=(5, 10))) == ("recall@10", True)


def test_a_choice_is_made_by_the_metric_the_experiment_chooses_by():
    """On a catalogue too small for the cut-off 20 every point's Recall@20 is 1: the choice follows the experiment's
    own metric (Recall@10 there), as its other choices do."""

    class Small:
        select_metric = "recall@10"
        val_tasks = (0, 1)

        def __init__(self, config):
            self.config = config

        def train(self):
            return types.SimpleNamespace(params=self.config.meta.inner_lr)

        def validate(self, params, baselines):
            return {"maml": {"recall@10": params, "recall@20": 1.0}}

    choice = choose(ExperimentConfig.make(feedback="implicit"), {"inner_lr": [0.1, 0.3]}, trainings=1, build=Small)
    assert choice.metric == "recall@10" and choice.best == 1


def test_the_best_validation_point_is_chosen_and_trains_again_to_the_same_figure(tmp_path):
    # the trained states compared: kept by their epoch on the validation users, the weak fold-in's run would be its
    # start (tests/test_epoch_selection.py), which is near the other point's
    config = plays_config(tmp_path, select_epoch="last")
    seen = []
    choice = choose(config, {"inner_lr": [0.05, 0.0005]}, trainings=1, on_score=lambda *a: seen.append(a))
    scores = [c.score for c in choice.candidates]
    assert choice.metric == "recall@20" and choice.higher_is_better
    assert [s[:2] for s in seen] == [({"inner_lr": 0.05}, 0), ({"inner_lr": 0.0005}, 0)]
    # a ridge of 1000 leaves the fold-in near its prior: the two-taste log's validation users tell the points apart
    assert scores[0] > scores[1] + 0.1
    assert choice.best == 0 and choice.config == config.override(inner_lr=0.05)
    experiment = TopNExperiment(choice.config)
    again = experiment.validate(experiment.train().params, baselines=False)["maml"]["recall@20"]
    assert again == choice.candidates[0].scores[0]
    assert choice.validation_tasks == len(experiment.val_tasks) > 0
    record = choice.to_dict()
    assert record["chosen"] == {"inner_lr": 0.05} and record["candidates"][1]["mean"] == scores[1]


def test_several_trainings_draw_their_own_seeds_and_compare_by_the_mean(tmp_path):
    config = plays_config(tmp_path)
    seeds = []

    def build(run):
        seeds.append(run.training_seed)
        return TopNExperiment(run)

    choice = choose(config, {"als_confidence": [10.0]}, trainings=2, build=build)
    assert seeds == [config.training_seed, config.training_seed + 1000]
    (candidate,) = choice.candidates
    assert len(candidate.scores) == 2 and candidate.scores[0] != candidate.scores[1]
    assert candidate.score == pytest.approx(sum(candidate.scores) / 2)


class _Fixed:
    """An experiment whose validation figure is given: the choice's direction and its handling of a diverged
    point, apart from any training."""

    val_tasks = range(7)

    def __init__(self, figure):
        self.figure = figure

    def train(self):
        return type("State", (), {"params": None})()

    def validate(self, params, baselines):
        return {"maml": {"mae": self.figure}}


def test_ratings_choose_the_lowest_error_and_never_a_diverged_point():
    figures = {0.1: 0.80, 0.2: math.nan, 0.3: 0.75, 0.4: 0.90}
    choice = choose(
        ExperimentConfig.make(), {"inner_lr": list(figures)}, build=lambda c: _Fixed(figures[c.meta.inner_lr])
    )
    assert (choice.metric, choice.higher_is_better) == ("mae", False)
    assert choice.candidates[choice.best].fields == {"inner_lr": 0.3} and choice.validation_tasks == 7
    worst = {0.1: math.nan, 0.2: 2.0}
    choice = choose(
        ExperimentConfig.make(), {"inner_lr": list(worst)}, trainings=1, build=lambda c: _Fixed(worst[c.meta.inner_lr])
    )
    assert choice.candidates[choice.best].fields == {"inner_lr": 0.2}


def test_the_recipe_grid_is_a_copy_of_valid_fields():
    own = grid("twotower-als")
    own["als_confidence"].append(99.0)
    assert 99.0 not in GRIDS["twotower-als"]["als_confidence"]
    assert grid("melu-1") is None
    for point in grid_points(grid("twotower-als")):
        ExperimentConfig.make(**recipe("twotower-als")).override(**point)
    with pytest.raises(ValueError, match="unknown method"):
        grid("nope")


def choose_argv(tmp_path, *extra):
    data = write_plays(tmp_path / "plays.tsv")
    argv = ["choose", "--data", str(data), "--columns", "user,item,weight,timestamp", "--method", "twotower-als"]
    argv += ["--model-kwargs", '{"embed": 8}', "--shots", "3", "--epochs", "1", "--out", str(tmp_path / "choice")]
    return [*argv, *extra]


def test_the_command_writes_a_config_that_jaxrec_train_reads(tmp_path, capsys):
    # a user table whose age no encoder reads: its warning is said once, not once for every point's training
    users = sorted({line.split("\t")[0] for line in write_plays(tmp_path / "plays.tsv").read_text().splitlines()[1:]})
    table = tmp_path / "users.csv"
    table.write_text("\n".join(["user,age", *(f"{u},{['18-24', '25-34'][i % 2]}" for i, u in enumerate(users))]))
    argv = choose_argv(tmp_path, "--grid", '{"inner_lr": [0.05, 0.0005]}', "--trainings", "1")
    assert cli.main([*argv, "--user-features", str(table)]) == 0
    printed, err = capsys.readouterr()
    assert err.count("side column 'age' is read as MovieLens's age") == 1, err
    assert "note: 1 warning(s) about the data said once (1 repeat(s) for later grid points and trainings" in err
    assert "inner_lr=0.05  training 0: validation recall@20" in printed and "<- chosen" in printed
    assert "validation tasks, recall@20 (higher is better)" in printed and "one training a point" in printed
    record = json.loads((tmp_path / "choice" / "choice.json").read_text())
    assert record["chosen"] == {"inner_lr": 0.05} and len(record["candidates"]) == 2
    config = ExperimentConfig.load(tmp_path / "choice" / "config.json")
    assert config.meta.inner_lr == 0.05 and config.data.feedback == "implicit" and config.model.name == "twotower"
    # the folder is not silently overwritten
    assert cli.main(argv) == 1
    assert "already holds config.json, choice.json" in capsys.readouterr().err
    out = tmp_path / "run"
    argv = ["train", "--config", str(tmp_path / "choice" / "config.json"), "--topn-baselines", "popular"]
    assert cli.main([*argv, "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["meta"]["inner_lr"] == 0.05


def test_the_command_names_the_metric_a_small_catalogue_chooses_by(tmp_path, capsys):
    """60 items less a support of 3: the cut-off 60 ranks every item, so the run chooses by Recall@10; the progress
    lines named the cut-off of the config alone (Recall@60)."""
    argv = choose_argv(tmp_path, "--grid", '{"inner_lr": [0.05]}', "--trainings", "1", "--topn-ks", "10,60")
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "training 0: validation recall@10" in printed and "recall@10 (higher is better)" in printed
    assert "recall@60" not in printed


@pytest.mark.parametrize(
    "grid_flag, words",
    [
        ('{"inner_lr": [0.05', "--grid: not JSON"),
        ("[1, 2]", "--grid: give a JSON object"),
        ("no/such/file.json", "neither JSON nor a readable file"),
        ('{"no_such_field": [1]}', "unknown config field"),
    ],
)
def test_a_bad_grid_is_one_clear_error(tmp_path, capsys, grid_flag, words):
    assert cli.main(choose_argv(tmp_path, "--grid", grid_flag)) == 1
    assert words in capsys.readouterr().err
    assert not (tmp_path / "choice").exists()


def test_without_a_grid_a_method_without_its_own_is_refused(tmp_path, capsys):
    argv = ["choose", "--dataset", "ml-latest-small", "--out", str(tmp_path / "c")]
    assert cli.main(argv) == 1
    assert "--grid is needed" in capsys.readouterr().err


def test_ratings_on_the_bundled_set_choose_by_validation_mae():
    config = ExperimentConfig.make(epochs=1, bootstrap=20)
    choice = choose(config, {"inner_lr": [0.1, 1e-4]}, trainings=1)
    scores = [c.score for c in choice.candidates]
    assert choice.metric == "mae" and all(0.3 < s < 1.5 for s in scores) and scores[0] != scores[1]
    assert choice.best == scores.index(min(scores))


def test_a_data_error_names_the_file_not_the_grid(tmp_path, capsys):
    empty = tmp_path / "empty.tsv"
    empty.write_text("user\tsong\tplays\ttime\n")
    argv = ["choose", "--data", str(empty), "--columns", "user,item,weight,timestamp", "--method", "twotower-als"]
    assert cli.main([*argv, "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "empty.tsv" in err and "--grid" not in err and "Traceback" not in err
