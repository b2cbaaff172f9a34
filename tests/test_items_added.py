"""Items added to a trained run's catalogue (``--new-items``, :meth:`TrainedModel.with_items`): each is ranked from its
side features alone, as an item held out of training was in the new-item scenario, without training again."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from cli_support import TOPN_FLAGS, write_plays
from serve_support import BUCKET_FLAGS, Server
from test_side_features import write_songs

import jaxrec.data as jd
from jaxrec import cli
from jaxrec.experiment.recommend import TopNRecommender
from jaxrec.experiment.trained import load_trained

NEW = range(50, 60)  # the songs the log never plays: added after training


def _log_without_new_songs(folder):
    plays = write_plays(folder / "plays.tsv")
    kept = [line for line in plays.read_text().splitlines() if not any(f"song-{i}" in line for i in NEW)]
    plays.write_text("\n".join(kept) + "\n")
    return plays


def _tables(folder):
    """``(old, new)``: the songs' features split into those the run trains with and a table of the new ones, whose
    columns come in another order, with titles (the log has none: not shown), a column the model never read, and a
    genre no song had."""
    header, *rows = write_songs(folder / "songs.csv").read_text().splitlines()
    old = [r for r in rows if int(r.split(",")[0][5:]) not in NEW and not r.startswith("song-99")]
    (folder / "old.csv").write_text("\n".join([header, *old]) + "\n")
    new = ["song,length,tags,genre,title,mood"]
    for r in rows:
        song, genre, tags, length = r.split(",")
        if int(song[5:]) in NEW:
            new.append(f"{song},{length},{tags},{genre},Song {song[5:]},calm")
    new.append("song-03,100.5,t0,odd,again,calm")  # in the catalogue already: left as trained
    new.append("song-70,150.5,t9|t0,folk,Folk song,calm")  # a genre and a tag no training song had
    new.append("song-71,,,,,calm")  # no feature value at all
    (folder / "new.csv").write_text("\n".join(new) + "\n")
    return folder / "old.csv", folder / "new.csv"


def test_an_item_added_after_training_gets_the_rows_of_an_item_held_out_of_it(tmp_path):
    """Added later, a song is encoded as the same song held out of training was (its id unknown, its genre and tags
    in the training vocabularies); the binned length by the bin that holds it. The trained codes do not move."""
    plays = jd.from_csv(write_plays(tmp_path / "plays.tsv"), "user,item,weight,timestamp", feedback="implicit")
    songs = jd.read_side_table(write_songs(tmp_path / "songs.csv"), "item")
    whole = jd.with_side_features(plays, items=songs, source="songs.csv")
    held = np.isin(whole.item_ids, [f"song-{i}" for i in NEW])
    held_out = jd.Featurizer.fit(whole, whole.ratings[~held[whole.ratings["item"].to_numpy()]])

    log = jd.from_csv(_log_without_new_songs(tmp_path), "user,item,weight,timestamp", feedback="implicit")
    trained = jd.Featurizer.fit(jd.with_side_features(log, items=songs, source="songs.csv"))
    grown, report = trained.with_items(songs.loc[[f"song-{i}" for i in NEW]], "new.csv")
    assert report == {
        "added": len(NEW),
        "rows": list(range(len(NEW))),
        "already_in_catalogue": 0,
        "unknown_values": {},
        "missing_values": {},
        "without_features": 0,
        "features_not_given": [],
        "columns_not_read": [],
    }
    assert grown.n_items == trained.n_items + len(NEW) and grown.item_raw_ids[: trained.n_items] == trained.item_raw_ids
    added = np.arange(trained.n_items, grown.n_items)
    rows, expected = grown.item_rows(added), held_out.item_rows(np.flatnonzero(held))
    assert rows["item"].tolist() == [0] * len(NEW)
    for key in ("item", "item_genre", "item_tags"):
        np.testing.assert_array_equal(rows[key], expected[key], err_msg=key)
    assert grown.vocabularies == trained.vocabularies and grown.spec == trained.spec
    lengths = songs.loc[[f"song-{i}" for i in NEW], "length"].to_numpy()
    for slot, length in zip(rows["item_length"], lengths, strict=True):
        low, high = (float(x) for x in grown.vocabularies["item_length"][slot - 1].strip("[)").split(", "))
        assert low <= length < high
    np.testing.assert_array_equal(
        grown.item_rows(np.arange(trained.n_items))["item_genre"], trained.item_tables["item_genre"][:-1]
    )
    # the padding entry (code -1) is still the last, all zero
    assert grown.item_rows(np.array([-1]))["item_tags"].sum() == 0 and grown.item_rows(np.array([-1]))["item"] == 0


def test_items_that_cannot_be_added_are_refused_naming_the_table(tmp_path):
    log = jd.from_csv(_log_without_new_songs(tmp_path), "user,item,weight,timestamp", feedback="implicit")
    songs = jd.read_side_table(write_songs(tmp_path / "songs.csv"), "item")
    bare = jd.Featurizer.fit(log)
    with pytest.raises(jd.DataError, match="new.csv: the model was trained without item features.*--item-features"):
        bare.with_items(songs, "new.csv")
    featurizer = jd.Featurizer.fit(jd.with_side_features(log, items=songs, source="songs.csv"))
    with pytest.raises(jd.DataError, match="new.csv: every one of its 2 items is in the catalogue already"):
        featurizer.with_items(songs.loc[["song-00", "song-01"]], "new.csv")
    numbered = jd.from_dataframe(log.ratings.assign(item=log.ratings["item"] + 1), feedback="implicit")
    table = songs.iloc[:3].set_axis(["7", "x9", "8"])
    with pytest.raises(jd.DataError, match="new.csv: item 'x9' is not an integer id, as the catalogue's are"):
        jd.Featurizer.fit(jd.with_side_features(numbered, items=songs.iloc[:3].set_axis(["1", "2", "3"]))).with_items(
            table, "new.csv"
        )
    twice = songs.iloc[:2].set_axis(["7", "007"])
    with pytest.raises(jd.DataError, match="new.csv: item 7 is given twice"):
        jd.Featurizer.fit(jd.with_side_features(numbered, items=songs.iloc[:3].set_axis(["1", "2", "3"]))).with_items(
            twice, "new.csv"
        )


def test_new_items_from_the_command_line_are_ranked_from_their_features_and_served(tmp_path):
    """``recommend`` and ``serve`` with ``--new-items``: the new songs are in the catalogue, a user's interactions
    with them are read, each is scored from its features as the library scores it, and a new song of the user's
    genre ranks above one of the other genre (the log's users play their taste's genre only)."""
    old, new = _tables(tmp_path)
    flags = ["--data", str(_log_without_new_songs(tmp_path)), "--columns", "user,item,weight,timestamp", *TOPN_FLAGS]
    out = tmp_path / "run"
    flags += ["--item-features", str(old), "--epochs", "2", "--no-eval", "--no-progress"]
    assert cli.main(["train", *flags, "--out", str(out)]) == 0
    lines = []
    patch = pytest.MonkeyPatch()
    patch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    listened = tmp_path / "odd.txt"
    listened.write_text("song-01\nsong-03\nsong-51\n")  # odd songs, one of them new
    try:
        recommend = ["recommend", "--checkpoint", str(out), "--ratings", str(listened), "-k", "100"]
        assert cli.main([*recommend, "--new-items", str(new)]) == 0, lines
    finally:
        patch.undo()
    note = next(line for line in lines if line.startswith("note: --new-items"))
    assert "12 item(s) added" in note and "1 already in the catalogue" in note, note
    missing = note.split("no value, read as unknown: ")[1].split(";")[0]
    assert (
        sorted(missing.split(", ")) == ["genre 1", "length 1", "tags 1"] and "1 item(s) with no feature value" in note
    )
    assert "genre 1, tags 1" in note and "mood" in note.split("not read: ")[1], note
    assert "no item id was dropped in training" in note and "--new-item-frac and --item-dropout" in note
    assert "top 59 of 62 items for a new user with 3 interaction(s)" in lines[note and lines.index(note) + 1]
    listed = [line.split("(item ")[1].split(",")[0] for line in lines if "(item " in line]
    assert "song-51" not in listed and "song-53" in listed and "song-70" in listed
    grown, report = load_trained(out).with_items(jd.read_side_table(new, "item"), "new.csv")
    assert report["features_in_params"] and "no parameters for the item features" not in note
    # a model with no parameter named for an item feature (MF's tables: the id's alone) is said to read none
    params = grown.params.params  # Meta-SGD's: the rates beside them
    ids_only = {"params": {k: v for k, v in params["params"].items() if "item_" not in k}}
    _, said = dataclasses.replace(load_trained(out), params=ids_only).with_items(jd.read_side_table(new, "item"))
    assert not said["features_in_params"]
    recommender = TopNRecommender(grown, grown.params)
    codes = np.array([list(grown.item_ids).index(s) for s in ("song-01", "song-03", "song-51")])
    scores = recommender.scores(codes, np.ones(3, np.float32))
    best, top = recommender.top_k(codes, np.ones(3, np.float32), 100)
    assert [str(grown.item_ids[c]) for c in best] == listed
    position = {song: listed.index(song) for song in listed}
    odd_new = [position[f"song-{i}"] for i in NEW if i % 2 and i != 51]
    even_new = [position[f"song-{i}"] for i in NEW if i % 2 == 0]
    assert np.mean(odd_new) < np.mean(even_new), (odd_new, even_new)

    server = Server(out, *BUCKET_FLAGS, "--new-items", str(new))
    try:
        status, health = server.get("/health")
        assert status == 200 and health["items"] == 62 and health["items_added"] == 12, health
        candidates = [f"song-{i}" for i in NEW] + ["song-70"]
        status, answer = server.post(
            "/predict", {"interactions": ["song-01", "song-03", "song-51"], "candidates": candidates}
        )
        assert status == 200, answer
        served = {row["item"]: row["score"] for row in answer["scores"]}
        for song in candidates:
            assert served[song] == pytest.approx(float(scores[list(grown.item_ids).index(song)]), rel=1e-4, abs=1e-4)
    finally:
        server.stop()
    assert top.shape == (59,)


def _featurized(items: pd.DataFrame, users=30):
    """A featurizer fitted on a log where every user plays every item of ``items`` (indexed by raw id)."""
    log = pd.DataFrame(
        [(f"u{u}", item, 1.0) for u in range(users) for item in items.index], columns=["user", "item", "rating"]
    )
    data = jd.from_dataframe(log, feedback="implicit")
    return jd.Featurizer.fit(jd.with_side_features(data, items=items, source="items.csv"))


def test_a_value_on_a_bins_edge_falls_in_the_bin_a_training_items_did():
    """Bins are cut at quantiles of the training values, and with 41 items every cut is a value; the labels round
    the cuts to 6 digits, so a value read back through its label could fall one bin lower (it did for 9 of 41
    items): an added item with a training item's values gets that item's rows, its id aside."""
    ids = [f"i{i:02d}" for i in range(41)]
    tempo = 100.9876543 + np.arange(41) * 1.0000001
    items = pd.DataFrame({"tempo": tempo, "genre": ["a", "b"] * 20 + ["a"]}, index=pd.Index(ids, name="raw_id"))
    featurizer = _featurized(items)
    assert "item_tempo" in featurizer.bin_edges
    assert jd.Featurizer.from_dict(featurizer.to_dict()).bin_edges == featurizer.bin_edges
    copies = items.set_axis([f"copy-{i}" for i in ids])
    grown, report = featurizer.with_items(copies, "copies.csv")
    assert report["added"] == 41 and report["unknown_values"] == {}
    trained, added = featurizer.item_rows(np.arange(41)), grown.item_rows(np.arange(41, 82))
    for key in ("item_tempo", "item_genre"):
        np.testing.assert_array_equal(added[key], trained[key], err_msg=key)


def test_what_a_table_of_new_items_leaves_out_is_counted_and_named():
    items = pd.DataFrame(
        {"Genre (main)": ["rock", "pop"] * 20, "tags": ["live|remix", "studio"] * 20, "mood": ["calm"] * 40},
        index=pd.Index([f"s{i}" for i in range(40)], name="raw_id"),
    )
    featurizer = _featurized(items)
    new = pd.DataFrame(
        {
            "tags": [["live", "remix"], "live|odd|rare", None, "  ", "studio"],  # a Parquet list; unknown tags
            "mood": ["calm", "calm", None, "", "sad"],
            "extra": [1, 2, 3, 4, 5],
        },
        index=pd.Index([" n1 ", "n2", "n3", "n4", "s0"], name="raw_id"),  # ids are read without their spaces
    )
    grown, report = featurizer.with_items(new, "new.csv")
    assert report == {
        "added": 4,
        "rows": [0, 1, 2, 3],  # s0, the fifth, is the catalogue's
        "already_in_catalogue": 1,
        "unknown_values": {"tags": 1},  # items: n2's two unknown tags count once; s0's mood is not read (not added)
        "missing_values": {"tags": 2, "mood": 2},
        "without_features": 2,  # n3 and n4: every value blank
        "features_not_given": ["Genre (main)"],  # the column's name, not its feature key
        "columns_not_read": ["extra"],
    }
    assert grown.item_raw_ids[-4:] == ["n1", "n2", "n3", "n4"]
    rows = grown.item_rows(np.arange(40, 44))
    vocab = grown.vocabularies["item_tags"]
    assert rows["item_tags"][0].tolist() == [float(t in ("live", "remix")) for t in vocab]
    assert rows["item_tags"][1].tolist() == [float(t == "live") for t in vocab]
    assert rows["item_tags"][2:].sum() == 0 and rows["item_mood"].tolist() == [1, 1, 0, 0]
    for table, message in (
        (new.iloc[:0], "new.csv: the table has no items"),
        (new.set_axis(["a", None, "b", "c", "d"]), "new.csv: row 2 has no item id"),
    ):
        with pytest.raises(jd.DataError, match=message):
            featurizer.with_items(table, "new.csv")
