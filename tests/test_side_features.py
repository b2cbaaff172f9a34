"""A log's own side features: tables read from files (``--item-features``, ``--user-features``), joined by raw id and
encoded whatever their columns (the featurizer used to read MovieLens's column names only and ignore the rest)."""

import json

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


def test_codes_stay_codes_decimals_are_binned_lists_are_tags_and_odd_names_are_kept_apart(tmp_path):
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
    spec = jd.Featurizer.fit(jd.with_side_features(plays, items=read, source="songs.csv")).spec
    assert spec.categorical["item_zip"] == 21 and spec.categorical["item_category"] == 36  # codes, not bins
    assert "item_name" not in spec.categorical  # every value differs: an id or free text, not a feature
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
    flags = ["--data", str(plays), "--columns", "user,item,weight,timestamp", *TOPN_FLAGS]
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
    with pytest.raises(RunError, match="read its item features from .*songs.tsv.*pass --item-features FILE"):
        restore_run(out, overrides={"data": str(plays), "columns": ("user", "item", "weight", "timestamp")})
    experiment, _ = restore_run(
        out,
        overrides={"data": str(plays), "columns": ("user", "item", "weight", "timestamp"), "item_features": str(songs)},
    )
    assert "item_genre" in experiment.spec.categorical and "item_tags" in experiment.spec.multi_hot
    changed = tmp_path / "changed.tsv"
    changed.write_text(songs.read_text().replace("\teven\t", "\tfolk\t", 1))  # a third genre: other shapes
    resume = ["train", *flags, "--item-features", str(changed), "--out", str(out), "--resume", "--epochs", "2"]
    patch = pytest.MonkeyPatch()
    patch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    try:
        assert cli.main(resume) == 1 and "no longer matches" in lines[-1], lines[-3:]
        assert "songs.tsv (item features); the features that differ: item_genre)" in lines[-1], lines[-1]
    finally:
        patch.undo()
    again = tmp_path / "again.json"
    evaluate = ["evaluate", "--checkpoint", str(out), "--data", str(plays), "--columns", "user,item,weight,timestamp"]
    assert cli.main([*evaluate, "--item-features", str(songs), "--output", str(again), "--no-progress"]) == 0
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
