"""RecBole's atomic files (``.inter``, ``.item``, ``.user``), whose headers type each name (``user_id:token``), read
as they are: the logs and feature tables RecBole's users already have."""

import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

import jaxrec.data as jd
from jaxrec.data import featurizer, movielens
from jaxrec.data.tasks import domain_items, item_release_key
from jaxrec.data.text import atomic_header
from jaxrec.experiment.config import DataConfig, with_feature_tables

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def bundled_ratings() -> pd.DataFrame:
    with gzip.open(Path(jd.__file__).parent / "_bundled" / "ml-latest-small" / "ratings.csv.gz", "rt") as f:
        return pd.read_csv(f)


def write_inter(path, ratings: pd.DataFrame):
    """``ratings`` (userId, movieId, rating, timestamp) as RecBole writes MovieLens: tab-separated, typed header."""
    with open(path, "w") as f:
        f.write(INTER_HEADER + "\n")
        ratings[["userId", "movieId", "rating", "timestamp"]].to_csv(f, sep="\t", header=False, index=False)
    return path


def test_the_bundled_ratings_as_an_inter_file_are_the_same_dataset(tmp_path):
    inter = write_inter(tmp_path / "ml-latest-small.inter", bundled_ratings())
    atomic = jd.read_log(inter)
    plain = jd.load("ml-latest-small")
    assert atomic.name == "ml-latest-small"
    for column in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(atomic.ratings[column].to_numpy(), plain.ratings[column].to_numpy())
    np.testing.assert_array_equal(atomic.users["raw_id"].to_numpy(), plain.users["raw_id"].to_numpy())
    np.testing.assert_array_equal(atomic.items["raw_id"].to_numpy(), plain.items["raw_id"].to_numpy())
    assert atomic.report["ratings_kept"] == 100_836
    implicit = jd.read_log(inter, feedback="implicit", positive_threshold=4)
    assert implicit.report["ratings_kept"] == int((plain.ratings["rating"] >= 4).sum())


def test_a_recbole_dataset_folder_is_answered_with_its_log(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    inter = write_inter(folder / "ml-latest-small.inter", bundled_ratings().head(50))
    (folder / "ml-latest-small.item").write_text("item_id:token\tgenre:token_seq\n1\tA\n")
    with pytest.raises(
        jd.DataError, match=rf"a folder without Parquet files .*; its RecBole log is a file: give {inter}"
    ):
        jd.read_log(folder)


def test_columns_are_named_by_their_names_or_as_the_header_writes_them(tmp_path):
    ratings = bundled_ratings().head(500)
    inter = write_inter(tmp_path / "x.inter", ratings)
    by_name = jd.from_csv(inter, columns="user=user_id,item=item_id,timestamp=timestamp", feedback="implicit")
    as_written = jd.from_csv(inter, columns={"user": "user_id:token", "item": "item_id:token", "timestamp": 3})
    assert by_name.report["ratings_kept"] == as_written.report["ratings_kept"] == 500
    np.testing.assert_array_equal(by_name.ratings["item"], as_written.ratings["item"])
    with pytest.raises(jd.DataError, match=r"missing column 'movie' \(for 'item'\).*\['user_id', 'item_id'"):
        jd.from_csv(inter, columns="user=user_id,item=movie")


def test_an_atomic_header_is_every_label_typed():
    assert atomic_header(["user_id:token", "genre:token_seq", "price:float", "v:float_seq"]) == {
        "user_id": "token",
        "genre": "token_seq",
        "price": "float",
        "v": "float_seq",
    }
    assert atomic_header(["user_id:token", "item"]) is None
    assert atomic_header(["user_id:text", "item_id:token"]) is None  # not one of RecBole's types
    assert atomic_header(["a:token", "a:float"]) is None  # a name twice


def write_item_table(path, items: pd.DataFrame):
    """MovieLens items as RecBole writes them: the title and the genres as space-separated tokens."""
    lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for row in items.itertuples():
        lines.append(f"{row.raw_id}\t{row.title}\t{row.year}\t{row.genres.replace('|', ' ')}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.skipif(not (SHARED_DATA / "ml-100k").exists(), reason="ml-100k is not in ../shared/data")
def test_ml100k_as_recbole_files_reads_its_titles_and_genres(tmp_path):
    plain = movielens.load("ml-100k", data_dir=SHARED_DATA)
    items = plain.items.copy()
    table = jd.read_side_table(write_item_table(tmp_path / "ml-100k.item", items), "item")
    assert list(table.columns) == ["title", "year", "genres"]  # RecBole's names of MovieLens's columns
    by_id = table.loc[items["raw_id"].astype(str)]
    assert (by_id["title"].to_numpy() == items["title"].str.strip().to_numpy()).all()  # the name, kept whole
    assert (by_id["genres"].fillna("").to_numpy() == items["genres"].to_numpy()).all()  # tokens as "|"-joined tags
    assert by_id["year"].dropna().map(type).eq(str).all()  # a token is a code, never a quantity
    raw = plain.ratings.assign(
        userId=plain.users["raw_id"].to_numpy()[plain.ratings["user"]],
        movieId=items["raw_id"].to_numpy()[plain.ratings["item"]],
    )
    log = jd.read_log(write_inter(tmp_path / "ml-100k.inter", raw))
    np.testing.assert_array_equal(log.ratings[["user", "item"]], plain.ratings[["user", "item"]])
    data = jd.with_side_features(log, items=table, source="ml-100k.item")
    atomic, loader = featurizer.Featurizer.fit(data), featurizer.Featurizer.fit(plain)
    assert (
        atomic.features_read["item"]
        == loader.features_read["item"]
        == {
            "year": "categorical (8 values)",  # by decade, as the loader's
            "genres": "multi-hot (18 tags)",
        }
    )
    np.testing.assert_array_equal(atomic.item_multi_hot["item_genres"], loader.item_multi_hot["item_genres"])
    np.testing.assert_array_equal(atomic.item_tables["item_year"], loader.item_tables["item_year"])
    # the new-item split orders items by the release year, and a cross-domain split finds the genres
    np.testing.assert_array_equal(item_release_key(data), item_release_key(plain))
    np.testing.assert_array_equal(domain_items(data, ("Drama",))[1], domain_items(plain, ("Drama",))[1])


def test_a_float_column_of_whole_numbers_is_a_quantity_binned_as_decimals_are(tmp_path):
    rows = [f"i{k}\t{13 * k + 1}\t{k % 2}\t{k % 3}" for k in range(60)]
    path = tmp_path / "shop.item"
    path.write_text("item_id:token\tsales_rank:float\tis_open:float\tshelf:token\n" + "\n".join(rows) + "\n")
    table = jd.read_side_table(path, "item")
    log = pd.DataFrame({"user": [f"u{k % 7}" for k in range(60)], "item": [f"i{k}" for k in range(60)]})
    data = jd.from_dataframe(log, rating=None, feedback="implicit", item_features=table)
    assert featurizer.Featurizer.fit(data).features_read["item"] == {
        "sales_rank": "binned (10 bins)",  # 60 distinct whole numbers: a quantity by its type, not 60 codes
        "is_open": "categorical (2 values)",  # few values: each its own, as for decimals
        "shelf": "categorical (3 values)",
    }


def test_a_header_typed_in_part_is_refused_naming_what_is_not_typed(tmp_path):
    log = tmp_path / "part.inter"
    log.write_text("user_id:token\titem_id\trating:float\n1\t2\t3\n")
    with pytest.raises(jd.DataError, match=r"part.inter: line 1 types some columns .* but not \['item_id'\]"):
        jd.read_log(log)
    table = tmp_path / "part.item"
    table.write_text("item_id:token\tyear:int\tgenre:token_seq\n1\t1999\tA B\n")
    with pytest.raises(jd.DataError, match=r"part.item: line 1 types .* not \['year:int'\] \(the types are token,"):
        jd.read_side_table(table, "item")


def test_a_typed_name_twice_is_named_and_a_log_of_typed_values_keeps_its_first_row(tmp_path):
    twice = tmp_path / "twice.inter"
    twice.write_text("user_id:token\titem_id:token\trating:float\trating:float\n1\t2\t3\t4\n")
    with pytest.raises(jd.DataError, match=r"twice.inter: line 1 names \['rating'\] more than once"):
        jd.read_log(twice)
    (tmp_path / "twice.item").write_text("item_id:token\tgenre:token_seq\tgenre:token_seq\n1\tA\tB\n")
    with pytest.raises(jd.DataError, match=r"line 1 names \['genre'\] more than once"):
        jd.read_side_table(tmp_path / "twice.item", "item")
    trailing = tmp_path / "trailing.item"
    trailing.write_text("item_id:token\tgenre:token_seq\t\n1\tA\t\n")
    with pytest.raises(jd.DataError, match=r"but not \['an unnamed column \(a separator at the end of the line\?\)'\]"):
        jd.read_side_table(trailing, "item")
    data = tmp_path / "pairs.csv"  # no header: every line's fields happen to look typed
    data.write_text("a:token,b:token\nc:token,d:token\ne:token,f:token\n")
    assert jd.from_csv(data, columns=["user", "item"]).report["ratings_kept"] == 3


def test_the_items_name_is_taken_from_a_name_column_not_any_column_ending_in_name(tmp_path):
    path = tmp_path / "shop.item"
    path.write_text(
        "item_id:token\tbrand_name:token\titem_name:token_seq\tgenre:token_seq\n"
        "1\tacme\tThe Red Kettle\tA B\n2\tacme\tA Blue Cup\tB\n"
    )
    table = jd.read_side_table(path, "item")
    assert list(table.columns) == ["brand_name", "title", "genres"]
    assert table.loc["1", "title"] == "The Red Kettle" and table.loc["1", "brand_name"] == "acme"


def test_a_role_not_guessed_is_asked_for_with_the_roles_that_were(tmp_path):
    path = tmp_path / "yelp.inter"
    path.write_text("review_id:token\tuser_id:token\tbusiness_id:token\tstars:float\tdate:float\nr1\tu1\tb1\t4\t100\n")
    with pytest.raises(jd.DataError) as refused:
        jd.read_log(path)
    assert "no item column among the header ['review_id', 'user_id', 'business_id', 'stars', 'date']" in str(
        refused.value
    )
    assert "--columns user=user_id,item=<name>,timestamp=date,...; a rating, time or weight column is read only" in str(
        refused.value
    )
    named = jd.read_log(path, columns="user=user_id,item=business_id,rating=stars,timestamp=date")
    assert named.report["ratings_kept"] == 1 and named.items["raw_id"].tolist() == ["b1"]


def test_columns_beyond_the_roles_are_named_with_the_columns_that_fit_them(tmp_path):
    path = tmp_path / "gowalla.inter"
    path.write_text(
        "user_id:token\titem_id:token\ttimestamp:float\tlatitude:float\tlongitude:float\n1\t2\t100\t30.2\t-97.7\n"
    )
    with pytest.raises(jd.DataError, match=r"extra column\(s\) \['latitude', 'longitude'\]; .*--columns "
                       r"user=user_id,item=item_id,timestamp=timestamp: the others are then not read"):  # fmt: skip
        jd.read_log(path, feedback="implicit")
    named = jd.read_log(path, "user=user_id,item=item_id,timestamp=timestamp", feedback="implicit")
    assert named.report["ratings_kept"] == 1


def test_float_columns_are_numbers_and_float_sequences_are_left_out(tmp_path, caplog):
    path = tmp_path / "shop.item"
    path.write_text(
        "item_id:token\tprice:float\tbrand:token\tvector:float_seq\n"
        "a\t10\t0042\t0.1 0.2\nb\t\t0042\t0.3 0.4\nc\t2.5\t7\t0.5 0.6\n"
    )
    with caplog.at_level(logging.WARNING):
        table = jd.read_side_table(path, "item")
    assert list(table.columns) == ["price", "brand"]
    assert (
        pd.api.types.is_float_dtype(table["price"])
        and pd.isna(table.loc["b", "price"])
        and table.loc["a", "price"] == 10
    )
    assert table.loc["a", "brand"] == "0042"  # a token keeps its zeros
    assert "'vector' holds sequences of numbers (float_seq): not used as a feature" in caplog.text
    path.write_text("item_id:token\tprice:float\na\t10\nb\tcheap\n")
    with pytest.raises(jd.DataError, match=r"shop.item: line 3: column 'price' \(float\) holds 'cheap', not a number"):
        jd.read_side_table(path, "item")


def test_a_column_of_many_words_keeps_its_commonest_tags_and_counts_the_rest(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(featurizer, "MAX_TAGS", 3)
    values = pd.Series(["w1|w2", "w1|w3", "w1|w2|w4", "w5", "w2|w6", "w6|w3"])
    with caplog.at_level(logging.WARNING):
        table, vocab = featurizer._multi_hot(values, np.array([0, 1, 2, 3, 4]), "item_address")
    assert vocab == ["w1", "w2", "w3"]  # on 3, 3 and 1 training rows; w3 before w4 and w5 by name; w6 on 1 row
    np.testing.assert_array_equal(table, [[1, 1, 0], [1, 0, 1], [1, 1, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert "column 'address' has 6 distinct tags on training items: the 3 on the most items are features, 3" in (
        caplog.text
    )


def test_feature_tables_beside_an_inter_log_are_named_when_not_read(tmp_path, caplog):
    inter = write_inter(tmp_path / "x.inter", bundled_ratings().head(300))
    (tmp_path / "x.item").write_text("item_id:token\tclass:token_seq\n1\tA B\n")
    dataset = jd.read_log(inter)
    with caplog.at_level(logging.WARNING):
        with_feature_tables(dataset, DataConfig(path=str(inter)))
    assert f"{tmp_path / 'x.item'} lies beside the log and is not read" in caplog.text
    assert "--item-features" in caplog.text and "x.user" not in caplog.text
    caplog.clear()
    zipped = tmp_path / "x.inter.gz"
    zipped.write_bytes(gzip.compress(inter.read_bytes()))
    with caplog.at_level(logging.WARNING):
        with_feature_tables(jd.read_log(zipped), DataConfig(path=str(zipped)))
    assert f"{tmp_path / 'x.item'} lies beside the log and is not read" in caplog.text
    caplog.clear()
    dotted = tmp_path / "x.interactions.inter"  # a name holding ".inter" before its suffix: its own tables
    dotted.write_bytes(inter.read_bytes())
    (tmp_path / "x.interactions.item").write_text("item_id:token\tclass:token_seq\n1\tA B\n")
    with caplog.at_level(logging.WARNING):
        with_feature_tables(jd.read_log(dotted), DataConfig(path=str(dotted)))
    assert f"{tmp_path / 'x.interactions.item'} lies beside the log and is not read" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        joined = with_feature_tables(dataset, DataConfig(path=str(inter), item_features=str(tmp_path / "x.item")))
    assert "lies beside" not in caplog.text
    assert joined.items.loc[joined.items["raw_id"] == 1, "genres"].item() == "A|B"
