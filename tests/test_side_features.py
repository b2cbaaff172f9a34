"""A log's own side features: tables read from files (``--item-features``, ``--user-features``), joined by raw id and
encoded whatever their columns (the featurizer used to read MovieLens's column names only and ignore the rest)."""

import json
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from cli_support import TOPN_FLAGS, write_plays

import jaxrec.data as jd
from jaxrec import cli
from jaxrec.experiment.run import RunError, restore_run


def write_songs(path, items=60, sep=","):
    """Features of ``write_plays``'s songs: the genre is the taste that plays them (the song's parity), tags
    ``|``-joined, a length in decimals of 60 distinct values (binned), and a row for a song no one played."""
    lines = [sep.join(["song", "genre", "tags", "length"])]
    for i in range(items):
        lines.append(
            sep.join([f"song-{i:02d}", "even" if i % 2 == 0 else "odd", f"g{i % 2}|t{i % 3}", f"{100 + 7 * i}.5"])
        )
    lines.append(sep.join(["song-99", "odd", "t0", "301.5"]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_tables_columns_become_features_tags_multi_hot_numbers_binned(tmp_path):
    plays = jd.from_csv(write_plays(tmp_path / "plays.tsv"), "user,item,weight,timestamp", feedback="implicit")
    songs = jd.read_side_table(write_songs(tmp_path / "songs.csv"), "item")
    assert songs["length"].dtype == np.float64 and songs.index[0] == "song-00"
    data = jd.with_side_features(plays, items=songs, source="songs.csv")
    assert data.report["item_features"] == {
        "columns": ["genre", "tags", "length"],
        "with_features": 60,
        "without_features": 0,
        "rows_not_in_log": 1,
    }
    featurizer = jd.Featurizer.fit(data)
    spec = featurizer.spec
    assert spec.categorical["item_genre"] == 3  # even, odd and the unknown slot
    assert spec.multi_hot == {"item_tags": 5}  # g0 g1 t0 t1 t2
    assert 2 < spec.categorical["item_length"] <= jd.featurizer.NUMERIC_BINS + 1  # bins, not 60 values
    rows = featurizer.item_rows(np.array([0, 1]))
    assert rows["item_genre"].tolist() == [1, 2] and rows["item_tags"].sum(axis=1).tolist() == [2.0, 2.0]
    # MovieLens's tables are encoded as before: its own columns only, the title not a feature
    movielens = jd.Featurizer.fit(jd.load()).spec
    assert set(movielens.categorical) == {"user", "item", "item_year"} and set(movielens.multi_hot) == {"item_genres"}


def test_movielens_100k_demographics_keep_their_own_encoders():
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "ml-100k").is_dir():
        pytest.skip(f"ml-100k is not in {SHARED_DATA} (its license forbids bundling it)")
    featurizer = jd.Featurizer.fit(jd.load("ml-100k", data_dir=str(SHARED_DATA)))
    user_keys = {"user_gender", "user_age", "user_occupation", "user_zip"}
    assert set(featurizer.spec.categorical) == {"user", "item", "item_year", *user_keys}
    assert featurizer.vocabularies["user_zip"][:3] == ["0", "1", "2"]  # the first character of the zip, as text


def test_codes_stay_codes_decimals_are_binned_lists_are_tags_and_odd_names_are_kept_apart(tmp_path, caplog):
    """Integers in a side table are codes (a zip's leading zero kept, 40 category ids not binned together), decimals
    quantities; a Parquet list column is tags; names in other scripts or with spaces stay distinct features."""
    rows = 40
    table = pd.DataFrame(
        {
            "item": [f"song-{i:02d}" for i in range(rows)],
            "zip": [f"0{i % 20:04d}" for i in range(rows)],
            "category": [str(i % 35) for i in range(rows)],
            "name": [f"Song number {i}" for i in range(rows)],
            "price": [1.25 * i for i in range(rows)],
            "类别": ["a" if i % 2 else "b" for i in range(rows)],
            "体裁": ["c" if i % 3 else "d" for i in range(rows)],
            "a b": ["x"] * rows,
            "empty": [None] * rows,
        }
    )
    table.to_csv(tmp_path / "songs.csv", index=False)
    read = jd.read_side_table(tmp_path / "songs.csv", "item")
    assert (
        read["zip"].iloc[1] == "00001"
        and not pd.api.types.is_numeric_dtype(read["category"])
        and read["price"].dtype == np.float64
    )
    log = write_plays(tmp_path / "plays.tsv", items=rows)
    plays = jd.from_csv(log, "user,item,weight,timestamp", feedback="implicit")
    with caplog.at_level(logging.WARNING, logger="jaxrec.data.featurizer"):
        spec = jd.Featurizer.fit(jd.with_side_features(plays, items=read, source="songs.csv")).spec
    assert spec.categorical["item_zip"] == 21 and spec.categorical["item_category"] == 36  # codes, not bins
    assert "item_name" not in spec.categorical  # every value differs: an id or free text, not a feature
    # ... and the warning says where a display name goes (this table has no 'title' column)
    said = [r.getMessage() for r in caplog.records if "'name': every value differs" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("a column named 'title' is shown as each item's name"), said
    assert not any("empty" in key for key in [*spec.categorical, *spec.multi_hot])  # no value: not a feature
    assert spec.categorical["item_price"] <= jd.featurizer.NUMERIC_BINS + 1
    odd = sorted(k for k in spec.categorical if k.startswith(("item_feature_", "item_a_b_")))
    assert len(odd) == 3, spec.categorical  # 类别, 体裁 and "a b", each its own key
    songs = [f"song-{i:02d}" for i in range(rows)]
    pd.DataFrame({"item": songs, "tags": [["rock", f"t{i % 3}"] for i in range(rows)]}).to_parquet(
        tmp_path / "t.parquet"
    )
    parquet = jd.read_side_table(tmp_path / "t.parquet", "item")
    assert parquet["tags"].iloc[4] == "rock|t1"
    assert jd.Featurizer.fit(jd.with_side_features(plays, items=parquet, source="p")).spec.multi_hot["item_tags"] == 4
    (tmp_path / "twice.csv").write_text("item,genre, genre\nsong-01,a,b\n")
    with pytest.raises(jd.DataError, match="two columns are named 'genre'"):
        jd.read_side_table(tmp_path / "twice.csv", "item")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "song,genre\nsong-01,odd\nsong-01,even\n",
            r"t.csv: line 3: item 'song-01' is given twice \(id column 'song'\)",
        ),
        ("song,genre\n,odd\n", r"t.csv: line 2: no item id"),
        ("song\nsong-01\n", "at least one feature column"),
        ("item,genre,genre\ns1,a,b\n", "two columns are named 'genre'"),  # read_csv would call one 'genre.1'
        ("", r"^--item-features \S+t.csv: the file is empty$"),  # the file named once
        ("item,genre\n", r"t.csv: no rows \(only a header\)"),
    ],
)
def test_a_bad_table_is_refused_naming_the_file_and_line(tmp_path, text, message):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(jd.DataError, match=message):
        jd.read_side_table(tmp_path / "t.csv", "item")


def test_a_log_and_a_table_in_utf16_are_split_by_their_separator_read_in_that_encoding(tmp_path):
    """The separator was sniffed from the bytes read as utf-8 whatever the encoding given: a UTF-16 log or table
    could not be told apart ("cannot tell the separator") though it reads with sep given."""
    log, table = tmp_path / "log.csv", tmp_path / "items.csv"
    log.write_bytes("user,item,rating\nu1,x,1\nu2,y,2\nu2,x,3\n".encode("utf-16"))
    table.write_bytes("item,genre\nx,Stra\u00dfe\ny,b\n".encode("utf-16"))
    data = jd.from_csv(log, encoding="utf-16", min_user_ratings=1)
    assert data.n_ratings == 3
    assert jd.read_side_table(table, "item", encoding="utf-16").loc["x", "genre"] == "Stra\u00dfe"


def test_a_table_in_another_encoding_is_named_with_its_line_and_read_with_it(tmp_path):
    table = tmp_path / "books.csv"
    table.write_bytes("isbn,title,publisher\n0001,A,Penguin\n0002,B,Stra\u00dfe Verlag\n".encode("latin-1"))
    with pytest.raises(jd.DataError, match=r"^--item-features \S+books.csv: line 3 is not utf-8 text .*--encoding"):
        jd.read_side_table(table, "item")
    assert jd.read_side_table(table, "item", encoding="latin-1").loc["0002", "publisher"] == "Stra\u00dfe Verlag"


def test_a_side_table_is_refused_with_its_line_or_when_it_matches_nothing(tmp_path):
    plays = jd.from_csv(write_plays(tmp_path / "plays.tsv"), "user,item,weight,timestamp", feedback="implicit")
    (tmp_path / "other.csv").write_text("song,genre\nsong-1,odd\nsong-2,even\n")
    with pytest.raises(
        jd.DataError,
        match="none of the 2 ids of the item side table \\('song-1', 'song-2'\\) is one of the log's items",
    ):
        jd.with_side_features(plays, items=jd.read_side_table(tmp_path / "other.csv", "item"), source="other.csv")
    (tmp_path / "clash.csv").write_text("song,raw_id\nsong-01,x\n")
    with pytest.raises(jd.DataError, match="column 'raw_id' is already in"):
        jd.with_side_features(plays, items=jd.read_side_table(tmp_path / "clash.csv", "item"), source="clash.csv")
    # a log of integer ids matches the table's as numbers: "007" is item 7, and "7" beside it is 7 twice
    numbers = jd.from_csv(_write(tmp_path / "n.csv", "user,item\n1,7\n1,8\n2,7\n"), "user,item", feedback="implicit")
    padded = jd.with_side_features(numbers, items=pd.DataFrame({"kind": ["a", "b"]}, index=["007", "x"]), source="t")
    assert padded.items["kind"].iloc[0] == "a" and pd.isna(padded.items["kind"].iloc[1])
    assert padded.report["item_features"] == {
        "columns": ["kind"],
        "with_features": 1,
        "without_features": 1,
        "rows_not_in_log": 1,
    }
    with pytest.raises(jd.DataError, match="item 7 is given twice"):
        jd.with_side_features(numbers, items=pd.DataFrame({"kind": ["a", "b"]}, index=["007", "7"]), source="t")
    # ids a float wrote match; several that are no integer (another id column) match nothing, and say so
    floats = jd.with_side_features(numbers, items=pd.DataFrame({"kind": ["a", "b"]}, index=["7.0", "8.0"]), source="t")
    assert floats.items["kind"].tolist() == ["a", "b"]
    with pytest.raises(jd.DataError, match="none of the 3 ids of the item side table"):
        jd.with_side_features(numbers, items=pd.DataFrame({"k": [1, 2, 3]}, index=["tt1", "tt2", "tt3"]), source="t")


def _write(path, text):
    path.write_text(text)
    return path


def test_item_features_from_the_command_line_reach_new_items_and_are_named_again_to_evaluate(tmp_path):
    """``--item-features`` on a log of one's own: new items (never played in training) are scored from their
    features, so the feature baseline ranks them where the popularity of no plays cannot; evaluating the run
    names the table again, and gives the same figures."""
    plays, songs, out = (
        write_plays(tmp_path / "plays.tsv"),
        write_songs(tmp_path / "songs.tsv", sep="\t"),
        tmp_path / "run",
    )
    # the users' taste (what the log's users play) as a feature: a new top-N user's tower reads it too
    tastes = _write(tmp_path / "tastes.csv", "user,taste\n" + "".join(f"u-{u:03d},t{u % 2}\n" for u in range(120)))
    flags = ["--data", str(plays), "--columns", "user,item,weight,timestamp", *TOPN_FLAGS]
    flags += ["--user-features", str(tastes)]
    flags += ["--topn-baselines", "popular,content", "--new-item-frac", "0.2", "--epochs", "1"]
    lines = []
    patch = pytest.MonkeyPatch()
    patch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    try:
        assert cli.main(["train", *flags, "--item-features", str(songs), "--out", str(out)]) == 0, lines
        missing = ["train", *flags, "--item-features", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")]
        assert cli.main(missing) == 1 and any("--item-features" in x and "nope.csv: file not found" in x for x in lines)
    finally:
        patch.undo()
    metrics = json.loads((out / "metrics.json").read_text())["scenarios"]["new_item_only"]
    assert metrics["content"]["recall@10"] > metrics["popular"]["recall@10"] + 0.2, metrics
    # a new user's taste reaches the top-N recommender's rows as it reached the evaluation's tasks
    from jaxrec.experiment.recommend import TopNRecommender
    from jaxrec.experiment.trained import load_trained

    trained = load_trained(out)
    recommender = TopNRecommender(trained, trained.params, hybrid=None)
    codes = np.array([list(trained.item_ids).index(f"song-{i:02d}") for i in (1, 3, 5)])
    odd, _ = recommender.support(codes, np.ones(3, np.float32), user_features={"taste": "t1"})
    slot = trained.featurizer.vocabularies["user_taste"].index("t1") + 1
    assert odd["user_taste"].tolist() == [slot] * len(odd["user_taste"]) and odd["user"].max() == 0
    told = recommender.model_scores(codes, np.ones(3, np.float32), user_features={"taste": "t1"})
    assert not np.allclose(told, recommender.model_scores(codes, np.ones(3, np.float32)), atol=1e-5)
    with pytest.raises(RunError, match="this run read --item-features .*songs.tsv.*pass --item-features FILE"):
        restore_run(
            out,
            overrides={
                "data": str(plays),
                "columns": ("user", "item", "weight", "timestamp"),
                "user_features": str(tastes),
            },
        )
    # every file the run read is named at once, not one per failed attempt (a trial met them one by one)
    with pytest.raises(RunError, match="pass --data FILE --item-features FILE --user-features FILE") as named:
        restore_run(out)
    assert "overrides={'data': FILE, 'item_features': FILE, 'user_features': FILE}" in str(named.value)
    experiment, _ = restore_run(
        out,
        overrides={
            "data": str(plays),
            "columns": ("user", "item", "weight", "timestamp"),
            "item_features": str(songs),
            "user_features": str(tastes),
        },
    )
    assert "item_genre" in experiment.spec.categorical and "item_tags" in experiment.spec.multi_hot
    changed = tmp_path / "changed.tsv"
    changed.write_text(songs.read_text().replace("\teven\t", "\tfolk\t", 1))  # a third genre: other shapes
    resume = ["train", *flags, "--item-features", str(changed), "--out", str(out), "--resume", "--epochs", "2"]
    patch = pytest.MonkeyPatch()
    patch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    try:
        assert cli.main(resume) == 1 and "no longer matches" in lines[-1], lines[-3:]
        assert "songs.tsv (item features), " in lines[-1] and "tastes.csv (user features); " in lines[-1]
        assert "the features that differ: item_genre)" in lines[-1], lines[-1]
    finally:
        patch.undo()
    again = tmp_path / "again.json"
    evaluate = ["evaluate", "--checkpoint", str(out), "--data", str(plays), "--columns", "user,item,weight,timestamp"]
    evaluate += ["--item-features", str(songs), "--user-features", str(tastes)]
    assert cli.main([*evaluate, "--output", str(again), "--no-progress"]) == 0
    assert json.loads(again.read_text())["scenarios"]["new_item_only"] == metrics


def test_odd_tables_read_as_meant(tmp_path):
    """What a trial of odd tables found: a table read as text joined nothing of an integer log through
    ``from_dataframe``; "NA" and "NULL" were values (a price column became categories); tags kept the spaces around
    ``|``; a repeated column name was renamed; an empty file's message named the file twice; a Parquet integer
    column with a gap became binned floats."""
    numbers = pd.DataFrame({"user": [1, 1, 2, 2], "item": [7, 8, 7, 9]})
    (tmp_path / "items.csv").write_text("item,kind\n007,a\n8.0,b\nx,c\n")
    table = jd.read_side_table(tmp_path / "items.csv", "item")
    data = jd.from_dataframe(numbers, rating=None, feedback="implicit", item_features=table)
    assert data.items["kind"].tolist()[:2] == ["a", "b"] and data.report["item_features_without"] == 1
    with pytest.raises(jd.DataError, match="none of the 1 ids of the item side table"):
        jd.from_dataframe(numbers, rating=None, feedback="implicit", item_features=table.iloc[2:])
    rows = [f"s{i},{'NA' if i % 10 == 0 else 0.5 + i},rock | pop{i % 2}" for i in range(40)]
    (tmp_path / "prices.csv").write_text("item,price,tags\n" + "\n".join(rows) + "\n")
    prices = jd.read_side_table(tmp_path / "prices.csv", "item")
    assert prices["price"].dtype == np.float64 and prices["price"].isna().sum() == 4
    log = pd.DataFrame({"user": [f"u{i % 5}" for i in range(40)], "item": [f"s{i}" for i in range(40)]})
    spec = jd.Featurizer.fit(jd.from_dataframe(log, rating=None, feedback="implicit", item_features=prices)).spec
    assert spec.categorical["item_price"] <= jd.featurizer.NUMERIC_BINS + 1 and spec.multi_hot["item_tags"] == 3
    pd.DataFrame({"item": ["s1", "s2", "s3"], "code": pd.array([4, None, 40], dtype="Int64")}).to_parquet(
        tmp_path / "codes.parquet"
    )
    codes = jd.read_side_table(tmp_path / "codes.parquet", "item")["code"]
    assert codes.iloc[0] == "4" and pd.isna(codes.iloc[1]) and codes.iloc[2] == "40"  # codes, not floats


def test_new_items_need_feature_values_not_only_columns(tmp_path):
    """A table whose only column is empty gives the items feature keys but no values: new items would still score
    alike, so the run is refused as a log without features is."""
    from jaxrec.experiment import ExperimentConfig, TopNExperiment

    frame = pd.read_csv(write_plays(tmp_path / "plays.tsv"), sep="\t")
    empty = pd.DataFrame({"mood": [None] * 60}, index=[f"song-{i:02d}" for i in range(60)])
    data = jd.from_dataframe(frame, item="song", rating=None, timestamp="time", weight="plays", feedback="implicit",
                             item_features=empty)  # fmt: skip
    config = ExperimentConfig.make(feedback="implicit", model="twotower", shots=3, new_item_frac=0.2)
    with pytest.raises(jd.DataError, match="no item features"):
        TopNExperiment(config, data)


def test_a_new_users_features_reach_recommend_and_serve_as_they_reached_the_evaluation(tmp_path):
    """A run trained with ``--user-features`` scored its new users with their features; ``jaxrec recommend`` and
    the service scored every new user as featureless, without a word. Now ``--features`` (one user),
    ``--user-features TABLE`` (``--users``) and a request's ``features`` give the library's
    ``top_k(..., user_features=...)``, and what is read as unknown is said."""
    from jaxrec.experiment.recommend import Recommender
    from jaxrec.experiment.trained import load_trained

    rng = np.random.default_rng(3)
    lines = ["user,item,rating"]
    for u in range(1, 121):
        for i in rng.choice(30, 16, replace=False):
            lines.append(f"{u},{i + 100},{1 + 4 * ((u + i) % 2)}")  # the parity of user and item is the taste
    log = _write(tmp_path / "log.csv", "\n".join(lines) + "\n")
    table = ["user,age,country,income"] + [
        f"{u},{15 + u % 50},{['FR', 'DE'][u % 2]},{20 + 0.37 * u:.2f}" for u in range(1, 120)
    ]
    users = _write(tmp_path / "users.csv", "\n".join(table) + "\n")
    out = tmp_path / "run"
    flags = ["--data", str(log), "--columns", "user,item,rating", "--user-features", str(users), "--epochs", "1"]
    flags += ["--model-kwargs", '{"embed": 4, "hidden": [8], "use_ids": ["item"], "interaction": null}']
    said = []
    patch = pytest.MonkeyPatch()
    patch.setattr(cli, "_echo", lambda *parts, err=False: said.append(" ".join(map(str, parts))))
    try:
        assert cli.main(["train", *flags, "--no-eval", "--no-progress", "--out", str(out)]) == 0
    finally:
        patch.undo()
    note = "note: --user-features: 119 user(s) of the log with a row, 1 without (their features unknown); 0 row(s)"
    assert any(line.startswith(note) for line in said), said
    read = "read as features: age categorical (7 values), country categorical (2 values), income binned (10 bins)"
    assert any(line.startswith(note) and line.endswith(read) for line in said), said  # what the model reads, and how
    trained = load_trained(out)
    assert set(trained.featurizer.user_feature_keys) == {"user_age", "user_country", "user_income"}
    recommender = Recommender(trained, trained.params)
    ids = list(trained.item_ids)
    codes, ratings = np.array([ids.index(100), ids.index(103)]), np.array([5.0, 1.0], np.float32)
    mine = _write(tmp_path / "mine.csv", "item,rating\n100,5\n103,1\n")
    said = []
    patch = pytest.MonkeyPatch()
    patch.setattr(cli, "_echo", lambda *parts, err=False: said.append(" ".join(map(str, parts))))
    try:
        run = ["recommend", "--checkpoint", str(out), "--ratings", str(mine), "-k", "5"]
        assert cli.main([*run, "--features", "age=30,country=FR"]) == 0
        listed = [line.split("(item ")[1].split(",")[0] for line in said if "(item " in line]
        best, _ = recommender.top_k(codes, ratings, 5, user_features={"age": "30", "country": "FR"})
        assert listed == [str(ids[c]) for c in best]
        assert "note: features not given, read as unknown: income" in said
        # the notes of no features, and of a blank value (not given), as the command says them
        assert "none given (--features, --user-features)" in cli._feature_notes(trained, None)[0]
        blank = cli._feature_notes(trained, cli._feature_pairs("age=30,country= "))
        assert blank == ["features not given, read as unknown: country, income"], blank
        said.clear()
        assert cli.main([*run, "--features", "salary=3"]) == 1 and "reads age, country, income" in said[-1]
        # a file of users and their table: 901 and 902 have a row, 903 none
        log_rows = "user,item,rating\n901,100,5\n901,103,1\n902,101,5\n902,104,4\n903,100,5\n"
        new_users = _write(tmp_path / "new.csv", log_rows)
        # ids joined by value as training joins an integer log's (0901 is user 901); a column it does not read
        their = _write(tmp_path / "their.csv", "user,age,country,email,income\n0901,30,FR,a@b,\n902,64,DE,c@d,30\n")
        lists_out = tmp_path / "lists.csv"
        batch = ["recommend", "--checkpoint", str(out), "--users", str(new_users), "-k", "5", "--out", str(lists_out)]
        said.clear()
        assert cli.main([*batch, "--user-features", str(their)]) == 0, said
        assert any("--user-features: 2 user(s) with a row, 1 without" in x for x in said), said
        assert any("1 with a feature left blank or not in the table" in x for x in said), said  # 901's income
        assert any("column(s) the model does not read: email" in x for x in said), said
        twice = _write(tmp_path / "twice.csv", "user,age\n901,30\n0901,31\n")
        said.clear()
        assert cli.main([*batch, "--user-features", str(twice)]) == 1
        assert f"--user-features {twice}: ids '901' and '0901' are the same user" in said[-1], said
    finally:
        patch.undo()
    lists = pd.read_csv(lists_out, dtype={"user": str, "item": str})
    for user, items, values, features in [
        ("901", [100, 103], [5.0, 1.0], {"age": "30", "country": "FR"}),
        ("902", [101, 104], [5.0, 4.0], {"age": "64", "country": "DE", "income": 30}),
        ("903", [100], [5.0], None),
    ]:
        mine_codes = np.array([ids.index(i) for i in items])
        best, scores = recommender.top_k(mine_codes, np.array(values, np.float32), 5, user_features=features)
        got = lists[lists["user"] == user]
        assert got["item"].tolist() == [str(ids[c]) for c in best], user
        np.testing.assert_allclose(got["score"].to_numpy(), scores, rtol=1e-5, atol=1e-5)
    blind = recommender.scores(codes, ratings)
    assert not np.allclose(recommender.scores(codes, ratings, {"age": "30", "country": "FR"}), blind, atol=1e-4)
    # the service: a request's features, and one the model does not read
    pytest.importorskip("fastapi", reason="the serve extra (pip install 'jaxrec[serve]') is not installed")
    from serve_support import BUCKET_FLAGS, Server

    told = {"age": 30, "country": "FR"}
    withdrawn = recommender.top_k(codes, ratings, 1, user_features=told)[0]  # never listed: serve --exclude
    gone = _write(tmp_path / "withdrawn.txt", f"{ids[withdrawn[0]]}\n")
    server = Server(out, *BUCKET_FLAGS, "--exclude", str(gone))
    try:
        health = server.get("/health")[1]
        assert health["user_features"] == ["age", "country", "income"] and health["excluded_items"] == 1
        sent = [{"item": 100, "rating": 5}, {"item": 103, "rating": 1}]
        features = {"age": 30, "country": "FR", "income": None}
        status, answer = server.post("/recommend", {"ratings": sent, "k": 5, "features": features})
        assert status == 200, answer
        answer_told = answer
        best, scores = recommender.top_k(codes, ratings, 5, exclude=withdrawn, user_features=told)
        assert [r["item"] for r in answer["recommendations"]] == [ids[c] for c in best]
        np.testing.assert_allclose([r["score"] for r in answer["recommendations"]], scores, rtol=1e-5, atol=1e-5)
        assert answer["input"]["features"] == 2 and answer["input"]["unknown_feature_values"] == []
        assert answer["input"]["features_not_given"] == ["income"]
        status, answer = server.post("/recommend", {"ratings": sent, "features": {"country": "JP"}})
        assert status == 200 and answer["input"]["unknown_feature_values"] == ["country"], answer
        spaced = server.post("/recommend", {"ratings": sent, "k": 5, "features": {"age": 30, "country": " FR "}})[1]
        assert spaced["recommendations"] == answer_told["recommendations"], spaced
        status, blank = server.post("/recommend", {"ratings": sent, "features": {"country": ""}})
        assert status == 200 and blank["input"]["features_not_given"] == ["age", "country", "income"], blank
        status, answer = server.post("/recommend", {"ratings": sent, "features": {"salary": 3}})
        assert status == 422 and answer["error"].startswith("features: user features ['salary']"), answer
    finally:
        server.stop()


def test_a_new_users_raw_values_are_encoded_as_the_training_users_were(tmp_path):
    """Every user's row of the side table, as read from the file, encodes to the slots training gave that user: a
    decimal column of few values (``2.0``), a binned one, a zip, an age, text; a JSON-typed value (``2``) is the
    same category; a zip sent as a number is refused (its zeros are lost); a value no encoder reads, or too large
    for any, is unknown, never an error; a column training left out (all values differ) is ignored on request."""
    rng = np.random.default_rng(0)
    n = 80
    table = ["user,score,email,zip,income,country,age,blank"]
    for u in range(n):
        table.append(
            f"{u},{[1.5, 2.0, 2.5][u % 3]},{u}@mail.org,{u % 10}2138,{30 + 0.731 * u:.3f},{['FR', 'DE'][u % 2]},"
            f"{15 + (7 * u) % 50},"
        )
    side = jd.read_side_table(_write(tmp_path / "users.csv", "\n".join(table) + "\n"), "user")
    ratings = pd.DataFrame({"user": np.repeat(np.arange(n), 5), "item": rng.integers(0, 20, 5 * n), "rating": 4.0})
    ds = jd.with_side_features(jd.from_dataframe(ratings), users=side)
    featurizer = jd.Featurizer.fit(ds, ds.ratings[ds.ratings["user"] < 60])
    keys = set(featurizer.user_feature_keys)
    # email: every value differs; blank: no value
    assert keys == {"user_score", "user_zip", "user_income", "user_country", "user_age"}
    assert featurizer.vocabularies["user_score"] == ["1.5", "2.0", "2.5"]
    for u in range(n):
        row = side.loc[str(u)].to_dict()
        slots, unknown = featurizer.encode_user_features(row, ignore_others=True)
        assert slots == {k: int(featurizer.user_tables[k][u]) for k in keys}, (u, row)
        assert sorted(unknown) == sorted(k.split("_", 1)[1] for k in keys if slots[k] == 0), (u, row)
    again = jd.Featurizer.from_dict(json.loads(json.dumps(featurizer.to_dict())))
    two = again.encode_user_features({"score": 2})[0]["user_score"]
    assert two == again.encode_user_features({"score": "2.0"})[0]["user_score"] == 2
    with pytest.raises(jd.DataError, match="send a zip code as text"):
        again.encode_user_features({"zip": 2138})
    # empty text is not given (a blank zip crashed on pandas' NA); text is read without its spaces, as a table's
    assert again.encode_user_features({"zip": " ", "country": ""}) == ({k: 0 for k in keys}, [])
    assert again.encode_user_features({"country": " DE "})[0] == again.encode_user_features({"country": "DE"})[0]
    slots, unknown = again.encode_user_features({"age": 10**400, "income": 10**400, "country": "JP"})
    assert unknown == ["age", "income", "country"] and set(slots.values()) == {0}
    with pytest.raises(jd.DataError, match=r"\['email'\] are not the model's: it reads age, country, income, score"):
        again.encode_user_features({"email": "a@b"})


def test_a_column_named_as_movielens_whose_values_it_cannot_read_is_not_asked_for(tmp_path, caplog):
    """A user table's ``age`` of buckets (``25-34``) is read by MovieLens's age encoder, which reads none of them:
    the warning said "not a feature", yet ``recommend`` and the service listed ``age`` among the features the model
    reads, then called every age sent (the table's own) unknown. Its table of the unknown slot alone stays in the
    model (a run's featurizer is compared with its record), but no new user is asked for it or told of it."""
    n = 40
    table = ["user,age,country"] + [f"{u},{['18-24', '25-34'][u % 2]},{['FR', 'DE'][u % 3 % 2]}" for u in range(n)]
    side = jd.read_side_table(_write(tmp_path / "users.csv", "\n".join(table) + "\n"), "user")
    ratings = pd.DataFrame({"user": np.repeat(np.arange(n), 3), "item": np.arange(3 * n) % 7, "rating": 4.0})
    with caplog.at_level("WARNING", logger="jaxrec"):
        featurizer = jd.Featurizer.fit(jd.with_side_features(jd.from_dataframe(ratings), users=side))
    assert "side column 'age' is read as MovieLens's age, and none of its values (e.g. '18-24')" in caplog.text
    assert set(featurizer.user_feature_keys) == {"user_age", "user_country"} and not featurizer.vocabularies["user_age"]
    assert featurizer.user_features_read == ["country"]
    slots, unknown = featurizer.encode_user_features({"country": "FR", "age": "25-34"})
    assert slots["user_age"] == 0 and slots["user_country"] > 0 and not unknown
    assert featurizer.user_features_not_given({}) == ["country"]
    with pytest.raises(jd.DataError, match="it reads country "):
        featurizer.encode_user_features({"income": 3})


def test_a_top_n_run_with_a_feature_of_the_unknown_slot_alone_trains_evaluates_and_recommends(tmp_path):
    """The unreadable ``age`` above keeps a table of one row: the top-N evaluation reads each user's row under
    ``vmap``, where Flax's one-row lookup failed for a scalar id (an unexpected error at the first validation)."""
    from jaxrec.models.common import Embed

    table = Embed(1, 3, embedding_init=nn.initializers.normal(1.0))
    params = table.init(jax.random.key(0), jnp.zeros((2,), jnp.int32))
    row = params["params"]["embedding"][0]
    np.testing.assert_array_equal(table.apply(params, jnp.int32(0)), row)
    np.testing.assert_array_equal(jax.vmap(lambda i: table.apply(params, i))(jnp.zeros(4, jnp.int32)), [row] * 4)

    plays = write_plays(tmp_path / "plays.tsv")
    users = sorted({line.split("\t")[0] for line in plays.read_text().splitlines()[1:]})
    rows = [f"{u},{['18-24', '25-34'][i % 2]},{['FR', 'DE'][i % 3 % 2]}" for i, u in enumerate(users)]
    table_file = tmp_path / "users.csv"
    table_file.write_text("\n".join(["user,age,country", *rows]) + "\n")
    out, mine = tmp_path / "run", tmp_path / "mine.txt"
    mine.write_text("song-01\nsong-03\n")
    said = []
    patch = pytest.MonkeyPatch()
    patch.setattr(cli, "_echo", lambda *parts, err=False: said.append(" ".join(map(str, parts))))
    try:
        flags = ["--data", str(plays), "--columns", "user,item,weight,timestamp", *TOPN_FLAGS, "--epochs", "1"]
        flags += ["--user-features", str(table_file), "--topn-baselines", "popular", "--hybrid", "none"]
        assert cli.main(["train", *flags, "--out", str(out)]) == 0, said[-3:]
        metrics = json.loads((out / "metrics.json").read_text())["scenarios"]["new_user"]["maml"]
        assert metrics["users"] > 0 and metrics["recall@20"] > 0
        said.clear()
        recommend = ["recommend", "--checkpoint", str(out), "--ratings", str(mine), "-k", "3"]
        assert cli.main([*recommend, "--features", "country=FR"]) == 0, said
        assert len([line for line in said if "(item " in line]) == 3
    finally:
        patch.undo()
