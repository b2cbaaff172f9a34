"""A run folder stands alone: ``jaxrec recommend`` and ``jaxrec serve`` need nothing but the folder (from any
directory, after the training data is gone), checks its catalogue, and no path written in a record is ever opened."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from cli_support import TINY_FLAGS, write_ratings
from serve_support import Server

from jaxrec import cli
from jaxrec.experiment.checkpoint import CheckpointError
from jaxrec.experiment.trained import ITEMS_FILE, load_trained


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_folder")
    data = write_ratings(root / "ratings.csv", scale=5)
    out = root / "run"
    assert cli.main(["train", "--data", str(data), *TINY_FLAGS, "--epochs", "1", "--no-eval", "--out", str(out)]) == 0
    ratings = root / "me.csv"
    ratings.write_text("item,rating\n100,5\n107,1\n")
    return {"data": data, "out": out, "ratings": ratings}


def recommend(out, ratings, cwd):
    done = subprocess.run(
        [sys.executable, "-m", "jaxrec", "recommend", "--checkpoint", str(out), "--ratings", str(ratings), "-k", "5"],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    return done.returncode, done.stdout, done.stderr


def test_recommend_needs_only_the_run_folder(trained_run, tmp_path):
    before = recommend(trained_run["out"], trained_run["ratings"], cwd=tmp_path)
    assert before[0] == 0, before[2]
    # the folder moved elsewhere, the data gone, another working directory
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(trained_run["out"], moved)
    hidden = tmp_path / "hidden.csv"
    shutil.copy(trained_run["data"], hidden)
    trained_run["data"].unlink()
    try:
        after = recommend(moved, trained_run["ratings"], cwd="/")
        server = Server(moved, "--batch-sizes", "1", "--support-sizes", "8")  # the service too
        try:
            served = server.post("/recommend", {"ratings": [{"item": 100, "rating": 5}, {"item": 107, "rating": 1}]})
        finally:
            server.stop()
    finally:
        shutil.copy(hidden, trained_run["data"])
    assert after[0] == 0, after[2]
    assert after[1] == before[1] and "top 5 of 40 items" in after[1]
    assert served[0] == 200 and len(served[1]["recommendations"]) == 10, served
    listed = [line.split("(item ")[1].split(",")[0] for line in after[1].splitlines() if "(item " in line]
    assert [str(r["item"]) for r in served[1]["recommendations"][:5]] == listed, (listed, served[1])


def test_the_trained_model_restores_without_data_and_scores_like_the_experiment(trained_run):
    from jaxrec.experiment import Recommender, restore_run

    trained = load_trained(trained_run["out"])
    experiment, checkpoint = restore_run(trained_run["out"], overrides={"data": str(trained_run["data"])})
    codes, ratings = np.array([0, 7], np.int32), np.array([5.0, 1.0], np.float32)
    alone = Recommender(trained, trained.params).scores(codes, ratings)
    with_data = Recommender(experiment, checkpoint.state.params).scores(codes, ratings)
    np.testing.assert_array_equal(alone, with_data)
    assert trained.inner_lr == experiment.inner_lr and list(trained.item_ids) == list(experiment.dataset.item_ids)


def test_a_changed_catalogue_is_refused(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run["out"], copy)
    (copy / ITEMS_FILE).write_bytes((copy / ITEMS_FILE).read_bytes()[:-3])
    with pytest.raises(CheckpointError, match="has changed since training"):
        load_trained(copy)
    (copy / ITEMS_FILE).unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        load_trained(copy)


def test_no_path_of_a_record_is_opened(trained_run, tmp_path, capsys):
    # evaluation reads the training data again: it must be named on the command line, never taken from the record
    assert cli.main(["evaluate", "--checkpoint", str(trained_run["out"])]) == 1
    err = capsys.readouterr().err
    assert "pass --data FILE" in err and err.count("jaxrec: error:") == 1
    assert cli.main(["evaluate", "--checkpoint", str(trained_run["out"]), "--data", str(trained_run["data"])]) == 0


def test_resume_needs_the_data_named_and_accepts_it_moved(trained_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained_run["out"], out)
    assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-eval", "--no-progress"]) == 1
    assert "pass --data FILE" in capsys.readouterr().err
    moved = shutil.copy(trained_run["data"], tmp_path / "moved.csv")  # the same ratings elsewhere
    flags = ["--epochs", "2", "--no-eval", "--no-progress"]
    assert cli.main(["train", "--out", str(out), "--resume", "--data", str(moved), *flags]) == 0


def test_a_restored_run_uses_its_recorded_rate_without_refitting(trained_run, monkeypatch):
    from jaxrec.experiment import Experiment, restore_run
    from jaxrec.experiment.checkpoint import read_metadata

    recorded = read_metadata(trained_run["out"])["tuned"]["inner_lr"]
    # nothing may be fitted to restore a run: the template is the model's structure, the rate the recorded one
    monkeypatch.setattr(Experiment, "baselines", lambda self: pytest.fail("baselines fitted to restore a run"))
    experiment, checkpoint = restore_run(trained_run["out"], overrides={"data": str(trained_run["data"])})
    assert experiment.inner_lr == recorded and experiment.trainer.inner_lr == recorded
    assert checkpoint.step >= 1


def test_the_library_recommender_refuses_ratings_it_cannot_use(trained_run):
    """A NaN rating made every score NaN and ranked the user's own items first, "predicted" at the scale's floor; a
    rating off the scale was taken as it came."""
    from jaxrec.experiment.recommend import Recommender

    trained = load_trained(trained_run["out"])
    recommender = Recommender(trained, trained.params)
    low, high = trained.featurizer.spec.rating_range
    with pytest.raises(ValueError, match=r"ratings\[1\] \(item 1\) is nan, not a finite number"):
        recommender.top_k([0, 1, 2], [5.0, np.nan, 1.0], 5)
    with pytest.raises(ValueError, match=r"ratings\[0\] \(item 0\) is 50.0, outside the rating scale"):
        recommender.top_k([0, 1], [50.0, high], 5)
    best, predicted = recommender.top_k([0, 1], [low, high], 5)
    assert not set(best.tolist()) & {0, 1} and np.all((predicted >= low) & (predicted <= high))
