"""The cross-domain scenario (``scheme="cross-domain"``): train on a source domain of items, adapt new users on a
few ratings of a disjoint target domain; the in-domain reference trains on the target domain and is scored on
exactly the same users and rows."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

import jaxrec.data as jd
from jaxrec import cli
from jaxrec.data.tasks import cold_start_split, domain_items
from jaxrec.experiment import ExperimentConfig, load_trained


@pytest.fixture(scope="module")
def ds():
    return jd.load()


def genres_of(ds, items):
    return ds.items["genres"].to_numpy()[np.asarray(items)]


def test_the_source_split_trains_on_source_items_and_scores_new_users_on_target_items(ds):
    split = cold_start_split(ds, "cross-domain", seed=0, target_genres=("Drama",), source_genres=("Action", "Comedy"))
    assert set(split.scenarios) == {"cross_domain"}
    train, scored = split.train, split.scenarios["cross_domain"]
    assert all("Drama" not in g.split("|") for g in genres_of(ds, train["item"].unique()))
    assert all({"Action", "Comedy"} & set(g.split("|")) for g in genres_of(ds, train["item"].unique()))
    assert all("Drama" in g.split("|") for g in genres_of(ds, scored["item"].unique()))
    assert not set(train["user"]) & set(scored["user"])  # the scored users are new: no rating of theirs in train
    assert set(scored["user"]) <= set(split.new_users)
    # every rating is in a frame or counted as unused
    stats = split.stats
    unused = (
        stats["ratings_in_neither_domain"]
        + stats["new_users_source_ratings_unused"]
        + stats["existing_users_other_domain_ratings_unused"]
    )
    assert len(train) + len(scored) + unused == len(ds.ratings)
    assert stats["items_in_neither_domain"] > 0  # e.g. items of Horror only


def test_the_target_reference_scores_the_same_frame(ds):
    kwargs = dict(seed=3, target_genres=("Comedy",))
    source = cold_start_split(ds, "cross-domain", train_domain="source", **kwargs)
    target = cold_start_split(ds, "cross-domain", train_domain="target", **kwargs)
    pd.testing.assert_frame_equal(source.scenarios["cross_domain"], target.scenarios["cross_domain"])
    np.testing.assert_array_equal(source.new_users, target.new_users)
    assert all("Comedy" in g.split("|") for g in genres_of(ds, target.train["item"].unique()))
    assert all("Comedy" not in g.split("|") for g in genres_of(ds, source.train["item"].unique()))  # default source


def test_bad_domains_are_clear_errors(ds):
    with pytest.raises(jd.DataError, match=r"Dramma.*Drama"):  # the message lists the known genres
        domain_items(ds, ("Dramma",))
    with pytest.raises(jd.DataError, match="both"):
        domain_items(ds, ("Drama",), ("Drama", "Action"))
    with pytest.raises(jd.DataError, match="needs target genres"):
        domain_items(ds, ())
    log = pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "y", "x"], "rating": [4.0, 3.0, 5.0]})
    with pytest.raises(jd.DataError, match="genres"):
        domain_items(jd.from_dataframe(log, name="no-genres"), ("Drama",))
    with pytest.raises(ValueError, match="train_domain"):
        cold_start_split(ds, "cross-domain", target_genres=("Drama",), train_domain="both")


def test_config_needs_target_genres_and_ignores_nothing():
    with pytest.raises(ValueError, match="target_genres"):
        ExperimentConfig.make(scheme="cross-domain")
    with pytest.raises(ValueError, match="target_genres"):
        ExperimentConfig.make(target_genres=["Drama"])  # without scheme='cross-domain' it would be ignored
    with pytest.raises(ValueError, match="train_domain"):
        ExperimentConfig.make(train_domain="target")
    with pytest.raises(ValueError, match="scheme"):
        ExperimentConfig.make(scheme="cross-domain", target_genres=["Drama"], feedback="implicit")
    config = ExperimentConfig.make(scheme="cross-domain", target_genres="Drama, Romance")
    assert config.protocol.target_genres == ("Drama", "Romance")


def test_train_cross_domain_from_the_command_line(tmp_path, monkeypatch):
    lines = []
    monkeypatch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    out = tmp_path / "run"
    argv = ["train", "--scheme", "cross-domain", "--target-genres", "Drama"]
    argv += ["--epochs", "1", "--steps", "2", "--baselines", "bias", "--out", str(out)]
    assert cli.main(argv) == 0, lines
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["scenarios"]) == {"cross_domain"}
    assert metrics["scenarios"]["cross_domain"]["maml"]["users"] > 20
    assert np.isfinite(metrics["scenarios"]["cross_domain"]["bias"]["mae"])
    # a new user of the run is recommended target-domain items only: the split scored none other
    ds = jd.load()
    drama = ds.items["genres"].str.split("|").map(lambda g: "Drama" in g).to_numpy()
    ratings = tmp_path / "mine.csv"
    ratings.write_text("".join(f"{i},4\n" for i in ds.items["raw_id"].to_numpy()[drama][:5]))
    lines.clear()
    assert cli.main(["recommend", "--checkpoint", str(out), "--ratings", str(ratings), "-k", "300"]) == 0, lines
    listed = [line.split("(item ")[1].split(",")[0] for line in lines if "(item " in line]
    assert len(listed) == 300
    genres = ds.items.set_index(ds.items["raw_id"].astype(str))["genres"]
    assert all("Drama" in genres[raw].split("|") for raw in listed), listed
    assert any(f"only its {drama.sum()} target-domain items" in line for line in lines), lines
    trained = load_trained(out)
    np.testing.assert_array_equal(trained.outside_domain(), np.flatnonzero(~drama))
    # a run folder whose catalogue keeps no genres cannot tell the domains apart: None, and the command says so
    assert dataclasses.replace(trained, items=trained.items.drop(columns="genres")).outside_domain() is None
