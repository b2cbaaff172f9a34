"""Implicit-feedback logs (plays, clicks, check-ins): the ``weight`` role, ``feedback=`` and ``positive_threshold``;
duplicates merged with summed weights, every dropped or merged row counted, count-like rating columns refused."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxrec.data as jd
from jaxrec import cli


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _by_raw(ds: jd.Dataset) -> pd.DataFrame:
    """The ratings keyed by raw ids, sorted, for comparisons independent of the codes."""
    r = ds.ratings.assign(user=ds.user_ids[ds.ratings["user"]], item=ds.item_ids[ds.ratings["item"]])
    return r.sort_values(["user", "item"]).reset_index(drop=True)


def test_checkin_log_with_string_ids(tmp_path):
    path = _write(
        tmp_path / "checkins.tsv",
        "user\titem\tcount\nalice\tcafe\t3\nbob\tcafe\t1\nalice\tgym\t12\ncarol\tpark\t2\nbob\tpark\t7\n",
    )
    ds = jd.from_csv(path, columns=["user", "item", "weight"], feedback="implicit")
    assert not ds.explicit and ds.has_weights and not ds.has_timestamps
    assert ds.user_ids.tolist() == ["alice", "bob", "carol"] and ds.item_ids.tolist() == ["cafe", "gym", "park"]
    r = _by_raw(ds)
    assert r[["user", "item"]].values.tolist() == [
        ["alice", "cafe"],
        ["alice", "gym"],
        ["bob", "cafe"],
        ["bob", "park"],
        ["carol", "park"],
    ]
    assert r["weight"].tolist() == [3.0, 12.0, 1.0, 7.0, 2.0] and r["weight"].dtype == np.float32
    assert (r["rating"] == 1.0).all() and r["rating"].dtype == np.float32
    assert ds.report["interactions"] == 5 and ds.report["duplicates_merged"] == 0
    assert ds.user_code(["bob", "nobody"]).tolist() == [1, -1]
    text = ds.summary()
    assert "5 interactions" in text and "weights in [1, 12]" in text and "ratings in" not in text


def test_duplicates_are_merged_with_summed_weights_and_earliest_time(tmp_path):
    path = _write(
        tmp_path / "plays.csv",
        "user,item,plays,ts\nu1,song,2,50\nu2,song,1,40\nu1,song,5,10\nu1,other,1,70\nu1,song,1,30\n",
    )
    ds = jd.from_csv(path, columns=["user", "item", "weight", "timestamp"], feedback="implicit")
    assert ds.report["duplicates_merged"] == 2 and ds.report["interactions"] == 3
    assert ds.report["ratings_read"] == ds.report["interactions"] + ds.report["duplicates_merged"]
    r = _by_raw(ds)
    assert r[["user", "item"]].values.tolist() == [["u1", "other"], ["u1", "song"], ["u2", "song"]]
    assert r["weight"].tolist() == [1.0, 8.0, 1.0]
    assert r["timestamp"].tolist() == [70, 10, 40]  # the first interaction of (u1, song)
    assert "duplicates_merged=2" in ds.summary()
    # without a weight column each row weighs 1: the merged weight counts the rows
    unweighted = jd.from_csv(path, columns=["user", "item", "_", "timestamp"], feedback="implicit")
    assert _by_raw(unweighted)["weight"].tolist() == [1.0, 3.0, 1.0]
    # ... which makes a weighted log of one without weights, and the run says so (a weight column's sums do not)
    assert unweighted.has_weights and unweighted.report["repeats_as_weights"]
    assert not ds.report["repeats_as_weights"]
    # a rating column read without a threshold: each rated row an interaction, which a run records for new users
    rated = jd.from_csv(path, columns=["user", "item", "rating", "timestamp"], feedback="implicit")
    assert rated.report["ratings_as_interactions"] and not ds.report["ratings_as_interactions"]
    kept = jd.from_csv(path, ["user", "item", "rating", "timestamp"], feedback="implicit", positive_threshold=2)
    assert not kept.report["ratings_as_interactions"]
    (note,) = cli._log_notes(unweighted.report)
    assert "2 duplicate (user, item) row(s) merged away" in note and "its number of rows is its weight" in note
    assert "number of rows" not in cli._log_notes(ds.report)[0]


def test_merge_matches_a_pandas_groupby():
    rng = np.random.default_rng(0)
    n = 2000
    log = pd.DataFrame(
        {
            "user": rng.integers(0, 30, n),
            "item": rng.integers(0, 20, n),
            "w": rng.integers(1, 9, n).astype(float),
            "t": rng.integers(0, 10_000, n),
        }
    )
    ds = jd.from_dataframe(log, rating=None, timestamp="t", weight="w", feedback="implicit")
    expected = log.groupby(["user", "item"], as_index=False).agg(w=("w", "sum"), t=("t", "min"))
    got = _by_raw(ds)
    np.testing.assert_array_equal(got["user"], expected["user"])
    np.testing.assert_array_equal(got["item"], expected["item"])
    np.testing.assert_allclose(got["weight"], expected["w"])
    np.testing.assert_array_equal(got["timestamp"], expected["t"])
    assert ds.report["duplicates_merged"] == n - len(expected)


def test_ids_of_numbers_and_text_in_one_column_are_refused_not_split():
    """A frame's id column of 7 and "7" (two sources concatenated) made two items of one, a user's interactions with
    it counted twice, in silence; numbers alone (7 and 7.0) are one id."""
    frame = pd.DataFrame({"user": ["a", "a", "b", "b"], "item": [7, "7", "007", 8]}).astype({"item": object})
    with pytest.raises(
        jd.DataError, match=r"column 'item' mixes numbers and text as item ids \(7 row 0 and '7' row 1\)"
    ):
        jd.from_dataframe(frame, rating=None, feedback="implicit")
    with pytest.raises(jd.DataError, match="mixes numbers and text"):  # a categorical column as well
        jd.from_dataframe(frame.astype({"item": "category"}), rating=None, feedback="implicit")
    numbers = pd.DataFrame({"user": ["a", "a", "b"], "item": [7, 8, 7.0]}).astype({"item": object})
    assert jd.from_dataframe(numbers, rating=None, feedback="implicit").n_items == 2


def test_ratings_read_as_interactions_without_a_threshold_are_said(tmp_path, caplog):
    """Every rating an interaction is what --feedback implicit on rated data means; a rating of 1 read as a like
    is said, with the option that keeps the high ones."""
    path = tmp_path / "rated.csv"
    path.write_text("user,item,rating\nu1,a,1\nu1,b,5\nu2,a,4\n")
    with caplog.at_level("WARNING", logger="jaxrec.data.dataset"):
        ds = jd.from_csv(path, feedback="implicit")
    assert len(ds.ratings) == 3
    said = [r.getMessage() for r in caplog.records if "whatever the rating" in r.getMessage()]
    assert len(said) == 1 and "rated.csv" in said[0] and "1 to 5" in said[0] and "positive_threshold" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="jaxrec.data.dataset"):
        jd.from_csv(path, feedback="implicit", positive_threshold=4.0)
        (tmp_path / "plays.csv").write_text("user,item\nu1,a\nu2,b\n")
        jd.from_csv(tmp_path / "plays.csv", feedback="implicit")
    assert not [r for r in caplog.records if "whatever the rating" in r.getMessage()]


def test_positive_threshold_drops_and_counts(tmp_path):
    path = _write(tmp_path / "rated.csv", "user,item,rating\n1,10,5\n1,11,2\n2,10,4\n2,12,3.5\n3,11,1\n")
    ds = jd.from_csv(path, feedback="implicit", positive_threshold=4.0)
    assert not ds.explicit and (ds.ratings["rating"] == 1.0).all() and not ds.has_weights
    assert ds.report["below_threshold_dropped"] == 3 and ds.report["interactions"] == 2
    assert _by_raw(ds)[["user", "item"]].values.tolist() == [[1, 10], [2, 10]]
    # the ids the threshold emptied are counted: user 3, items 11 and 12 had no rating >= 4
    assert ds.report["users_dropped"] == 1 and ds.report["items_dropped"] == 2
    # without a threshold every rated row is an interaction
    every = jd.from_csv(path, feedback="implicit")
    assert every.report["below_threshold_dropped"] == 0 and every.n_ratings == 5
    assert every.report["users_dropped"] == every.report["items_dropped"] == 0
    with pytest.raises(jd.DataError, match=r"rated.csv: no interactions left.*below positive_threshold=9"):
        jd.from_csv(path, feedback="implicit", positive_threshold=9)
    with pytest.raises(jd.DataError, match="positive_threshold=4.0.*needs feedback='implicit'"):
        jd.from_csv(path, positive_threshold=4.0)


def test_count_like_rating_column_is_refused_unless_told(tmp_path):
    rows = "".join(f"{u},{i},{(u * 7 + i) % 40}\n" for u in range(3) for i in range(5))  # lines 2..16
    path = _write(tmp_path / "counts.csv", "user,item,rating\n" + rows + "3,1,323\n3,2,500\n")
    message = (
        r"counts.csv: column 'rating' line 17 holds 323: this looks like a count, not a rating.*"
        r"feedback='implicit' \(CLI: --feedback implicit\).*'weight'.*feedback='explicit'"
    )
    with pytest.raises(jd.DataError, match=message):
        jd.from_csv(path)
    ds = jd.from_csv(path, feedback="explicit")
    assert ds.explicit and ds.rating_range == (0.0, 500.0) and "weight" not in ds.ratings.columns
    # a frame names the row; fractional values or a 0..100 scale are ratings
    frame = pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [3, 101]})
    with pytest.raises(jd.DataError, match="column 'rating' row 1 holds 101"):
        jd.from_dataframe(frame)
    assert jd.from_dataframe(frame.assign(rating=[3.5, 101])).explicit
    assert jd.from_dataframe(frame.assign(rating=[0, 100])).rating_range == (0.0, 100.0)
    # the float32 range is checked first
    with pytest.raises(jd.DataError, match="beyond the float32 range"):
        jd.from_dataframe(frame.assign(rating=[3.0, 1e39]))


def test_explicit_needs_a_rating_column_and_feedback_is_checked(tmp_path):
    path = _write(tmp_path / "pairs.csv", "user,item\n1,2\n")
    with pytest.raises(jd.DataError, match=r"pairs.csv: feedback='explicit' needs a rating column"):
        jd.from_csv(path, feedback="explicit")
    with pytest.raises(ValueError, match=r"pairs.csv: feedback='Implicit' is not one of \[None, 'explicit', 'im"):
        jd.from_csv(path, feedback="Implicit")
    with pytest.raises(jd.DataError, match="no rating column is named"):
        jd.from_csv(path, feedback="implicit", positive_threshold=1)


@pytest.mark.parametrize(
    "value, what",
    [("0", "holds 0: weights must be > 0"), ("-2", "holds -2: weights must be > 0"), ("lots", "not a finite number")],
)
def test_bad_weights_name_the_line(tmp_path, value, what):
    path = _write(tmp_path / "w.csv", f"user,item,weight\n1,1,3\n1,2,1\n2,1,{value}\n")
    with pytest.raises(jd.DataError, match=rf"w.csv: column 'weight' line 4 (is )?{what}"):
        jd.from_csv(path, feedback="implicit")


def test_header_guessing_of_a_count_column(tmp_path):
    path = _write(tmp_path / "log.csv", "userId,itemId,count\n7,a,4\n7,b,1\n8,a,2\n7,a,6\n")
    ds = jd.from_csv(path)  # the weight role guessed: an implicit log, its duplicates merged
    assert not ds.explicit and ds.has_weights and ds.report["duplicates_merged"] == 1
    assert _by_raw(ds)["weight"].tolist() == [10.0, 1.0, 2.0]
    assert jd.from_csv(path, feedback="implicit").ratings.equals(ds.ratings)
    for name in ("plays", "playcount", "clicks", "counts", "Weight"):
        renamed = _write(tmp_path / f"{name}.csv", f"user,item,{name}\n1,2,3\n")
        assert jd.from_csv(renamed).ratings["weight"].tolist() == [3.0]


def test_log_without_rating_keeps_todays_behaviour_with_a_weight_column():
    log = pd.DataFrame({"user": [1, 1, 2], "item": [5, 5, 5]})
    ds = jd.from_dataframe(log, rating=None)
    assert not ds.explicit and ds.report["duplicates_removed"] == 1 and "duplicates_merged" not in ds.report
    assert ds.ratings["weight"].tolist() == [1.0, 1.0] and not ds.has_weights


def test_an_implicit_frame_without_a_rating_column_needs_no_rating_none():
    """``from_dataframe(df, feedback="implicit", weight=...)`` on a click log refused it for want of the default
    ``rating`` column; the frame has none, so it has no rating column. A rated frame still needs its column named."""
    log = pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "x", "y"], "plays": [2, 3, 1]})
    ds = jd.from_dataframe(log, weight="plays", feedback="implicit")
    assert not ds.explicit and ds.ratings["weight"].tolist() == [5.0, 1.0] and ds.report["duplicates_merged"] == 1
    with pytest.raises(jd.DataError, match="missing column"):
        jd.from_dataframe(log, weight="plays", feedback="explicit")
    with pytest.raises(jd.DataError, match="missing column"):
        jd.from_dataframe(log, rating="stars", feedback="implicit")
    with pytest.raises(jd.DataError, match=r"missing column\(s\) rating='rating'"):  # a threshold needs ratings
        jd.from_dataframe(log, weight="plays", feedback="implicit", positive_threshold=4)


def test_a_header_of_no_common_names_is_its_own_error_type(tmp_path):
    """A caller that knows the layout (``recommend --users`` with the run's ``--columns``) retries on this type,
    not on the message's text; naming the columns reads the file."""
    path = _write(tmp_path / "visits.csv", "visitor,venue\nv1,x\nv2,y\n")
    with pytest.raises(jd.UnnamedColumnsError, match="no user column among the header"):
        jd.from_csv(path, feedback="implicit")
    assert issubclass(jd.UnnamedColumnsError, jd.DataError)
    assert jd.from_csv(path, columns={"user": "visitor", "item": "venue"}, feedback="implicit").n_ratings == 2
    with pytest.raises(jd.DataError) as other:  # a header that names its columns but holds a bad value: not this type
        jd.from_csv(_write(tmp_path / "bad.csv", "user,item,weight\nu,x,-1\n"), feedback="implicit")
    assert not isinstance(other.value, jd.UnnamedColumnsError)


def test_heavy_user_is_kept_whole(tmp_path):
    lines = [f"heavy,item{i},{i % 5 + 1}\n" for i in range(500)] + ["light,item1,1\n", "light,item2,2\n"]
    path = _write(tmp_path / "heavy.csv", "user,item,clicks\n" + "".join(lines))
    ds = jd.from_csv(path, feedback="implicit", min_user_ratings=2)
    per_user = np.bincount(ds.ratings["user"], minlength=ds.n_users)
    assert ds.user_ids.tolist() == ["heavy", "light"] and per_user.tolist() == [500, 2]
    assert ds.report["users_below_min_dropped"] == 0 and ds.report["interactions"] == 502


def test_bundled_movielens_as_implicit():
    ds = jd.load()
    assert ds.explicit and "weight" not in ds.ratings.columns
    imp = jd.from_dataframe(
        ds.ratings, rating="rating", timestamp="timestamp", feedback="implicit", positive_threshold=4.0
    )
    rep = imp.report
    assert rep["interactions"] + rep["below_threshold_dropped"] == rep["ratings_read"] == ds.n_ratings
    assert rep["interactions"] == int((ds.ratings["rating"] >= 4.0).sum()) == imp.n_ratings
    assert rep["duplicates_merged"] == 0 and not imp.explicit and not imp.has_weights
    assert imp.ratings["timestamp"].dtype == np.int64 and (imp.ratings["weight"] == 1.0).all()
    assert "interactions" in imp.summary()


# ---- what a new user's logs hold: quotes, zero-padded and "NA" ids, no header, ISO dates ------------------------


def test_a_quote_in_a_tab_separated_log_is_text(tmp_path):
    """A tab-separated file has no quoting: an item '"Heroes (single)' used to open a quoted field that swallowed
    the lines after it into one multi-line id."""
    lines = [f"u{u}\tsong{u}\t{u + 1}\n" for u in range(6)]
    lines[1] = 'u1\t"Heroes (single)\t5\n'
    lines[4] = 'u4\t"Weird Al" Yankovic\t2\n'
    ds = jd.from_csv(_write(tmp_path / "plays.tsv", "".join(lines)), columns=["user", "item", "weight"])
    assert ds.n_ratings == 6 and '"Heroes (single)' in ds.item_ids.tolist()
    assert '"Weird Al" Yankovic' in ds.item_ids.tolist() and not any("\n" in i for i in ds.item_ids)
    assert _by_raw(ds)["weight"].tolist() == [1.0, 5.0, 3.0, 4.0, 2.0, 6.0]


def test_ids_keep_their_text(tmp_path):
    """'00001' and '1' are two users (zip codes, zero-padded hashes), 'NA', 'None', 'null' and 'nan' are items: ids
    used to be parsed as numbers (merging users) or as missing values (refused)."""
    path = _write(tmp_path / "log.csv", "00001,NA,3\n1,None,1\n1,null,2\n007,nan,4\n1,x,1\n")
    ds = jd.from_csv(path, columns=["user", "item", "weight"], feedback="implicit")
    assert ds.user_ids.tolist() == ["00001", "007", "1"] and ds.n_ratings == 5
    assert ds.item_ids.tolist() == ["NA", "None", "nan", "null", "x"]
    assert ds.user_code(["1", "00001", "01"]).tolist() == [2, 0, -1]


def test_plain_integer_ids_stay_integers_in_numeric_order(tmp_path):
    """A column of integers written as integers (MovieLens ids) reads as it always did: int ids, coded in numeric
    order, so splits over the codes do not change."""
    path = _write(tmp_path / "log.csv", "10,2,4\n9,100,3\n-1,2,5\n")
    ds = jd.from_csv(path, columns=["user", "item", "rating"])
    assert ds.user_ids.tolist() == [-1, 9, 10] and ds.item_ids.tolist() == [2, 100]
    assert ds.user_ids.dtype == np.int64


@pytest.mark.parametrize(
    "columns, header, row",
    [
        (["user", "item"], "user,item", "u1,i1"),
        (["user", "item"], "visitor,venue", "u1,i1"),
        (["user", "item", "timestamp", "_"], "user,item,time,category", "u1,i1,1700000000,Food"),
        (["user", "item", "timestamp", "_"], "who,what,when,category", "u1,i1,2024-01-08T17:00:07Z,Food"),
    ],
)
@pytest.mark.parametrize("with_header", [True, False])
def test_header_is_told_from_the_roles_not_the_last_field(tmp_path, columns, header, row, with_header):
    """The first line used to be a header whenever its last field was not a number: a headerless check-in log
    ending in a category, or any user,item log, lost its first line."""
    rows = [row.replace("u1", f"u{k}").replace("i1", f"i{k % 3}") for k in range(1, 5)]
    text = (header + "\n" if with_header else "") + "\n".join(rows) + "\n"
    ds = jd.from_csv(_write(tmp_path / "log.csv", text), columns=columns, feedback="implicit")
    assert ds.report["header_line_read"] is with_header and ds.n_ratings == 4
    assert ds.user_ids.tolist() == ["u1", "u2", "u3", "u4"]
    assert "header_line_read=" in ds.summary()


def test_a_headerless_play_count_read_as_a_rating_is_named(tmp_path, caplog, monkeypatch):
    """user,item,count without a header: the counts land in the rating role, which an implicit log ignores; that
    used to happen in silence (has_weights False)."""
    monkeypatch.setattr(logging.getLogger("jaxrec"), "propagate", True)  # the CLI may have turned it off
    path = _write(tmp_path / "plays.tsv", "u1\ta\t13\nu1\tb\t2\nu2\ta\t7\n")
    with caplog.at_level(logging.WARNING, logger="jaxrec.data.text"):
        ds = jd.from_csv(path, feedback="implicit")
    assert not ds.has_weights
    assert "read as a rating" in caplog.text and "--columns user,item,weight" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxrec.data.text"):
        weighted = jd.from_csv(path, columns=["user", "item", "weight"], feedback="implicit")
    assert weighted.has_weights and "read as a rating" not in caplog.text


def test_iso_8601_timestamps_are_read_as_seconds(tmp_path):
    """Text timestamps (check-in exports) used to be refused as 'not a finite number'."""
    path = _write(
        tmp_path / "checkins.csv",
        "user,item,timestamp\nu1,v1,2024-01-08T17:00:07Z\nu1,v2,2024-01-08\nu2,v1,2024-01-08T18:00:07+01:00\n",
    )
    ds = jd.from_csv(path, feedback="implicit")
    r = _by_raw(ds)
    assert r["timestamp"].tolist() == [1704733207, 1704672000, 1704733207] and r["timestamp"].dtype == np.int64


def test_a_list_of_item_ids_with_commas_is_read_whole_lines(tmp_path):
    """A new user's items, one per line: 'Earth, Wind & Fire' used to split on its comma and fail to parse."""
    from jaxrec.experiment.recommend import read_user_ratings
    from jaxrec.experiment.run import RunError

    ids = np.array(["Artist 026", "Earth, Wind & Fire", "Sigur Rós"], dtype=object)
    mine = _write(tmp_path / "mine.txt", 'Sigur Rós\nEarth, Wind & Fire\n\n"Artist 026"\n')
    codes, values, notes, _ = read_user_ratings(mine, ids, None, implicit=True)
    assert ids[codes].tolist() == ["Sigur Rós", "Earth, Wind & Fire", "Artist 026"] and (values == 1).all()
    assert notes == []
    with pytest.raises(RunError, match=r"empty.txt: the file holds no item ids"):
        read_user_ratings(_write(tmp_path / "empty.txt", ""), ids, None, implicit=True)


@pytest.mark.parametrize(("typed", "meant"), [("\\t", "\t"), ("tab", "\t"), ("TAB", "\t"), (";", ";"), ("::", "::")])
def test_sep_as_typed_in_a_shell_reads_a_tab(typed, meant):
    """``--sep '\\t'`` reaches the program as a backslash and a t (no shell turns it into a tab): read as a tab,
    like ``--sep tab``; any other separator is taken as given."""
    import argparse

    from jaxrec.experiment.config import flag_values

    assert flag_values(argparse.Namespace(sep=typed)) == {"sep": meant}


def test_columns_as_the_command_lines_comma_separated_string(tmp_path):
    path = _write(tmp_path / "plays.csv", "u1,song a,3,100\nu2,song b,1,200\nu1,song b,2,300\n")
    as_string = jd.from_csv(path, columns="user, item,weight,_", feedback="implicit")
    as_list = jd.from_csv(path, columns=["user", "item", "weight", "_"], feedback="implicit")
    pd.testing.assert_frame_equal(_by_raw(as_string), _by_raw(as_list))
    assert as_string.has_weights and not as_string.has_timestamps and as_string.report["interactions"] == 3
    with pytest.raises(jd.DataError, match=r"the columns given name 2 column\(s\)"):
        jd.from_csv(path, columns="user,item", feedback="implicit")


def test_spaces_around_an_id_are_the_writers_not_another_item(tmp_path, caplog):
    """``u1, i2`` made `` i2`` an item beside ``i2``: a 40-item log with a space after every other comma read as 80
    items, in silence. The spaces go, counted, with a warning naming the first line."""
    path = _write(tmp_path / "spaced.csv", "user,item,rating\nu1,i1,4\nu1, i2,3\nu2,i2,5\nu2 ,i1,2\n")
    with caplog.at_level("WARNING"):
        ds = jd.from_csv(path)
    assert ds.item_ids.tolist() == ["i1", "i2"] and ds.user_ids.tolist() == ["u1", "u2"]
    assert ds.report["ids_stripped"] == 2 and "first line 3" in caplog.text
    plain = jd.from_csv(_write(tmp_path / "plain.csv", "user,item,rating\nu1,i1,4\nu1,i2,3\nu2,i2,5\nu2,i1,2\n"))
    assert ds.fingerprint() == plain.fingerprint() and "ids_stripped" not in plain.report
    with pytest.raises(jd.DataError, match="missing item id"):  # spaces alone are no id
        jd.from_csv(_write(tmp_path / "blank.csv", "user,item,rating\nu1,i1,4\nu1,  ,3\n"))


def test_epoch_seconds_beside_milliseconds_are_warned_about(tmp_path, caplog):
    """Two exports joined, one in seconds and one in milliseconds, were read in silence: every millisecond time
    came centuries after every second one, and a split by time put every user in the warm scenario."""
    rows = "".join(f"u{u},i{i},{1_600_000_000 + 60 * i}{'000' if i % 2 else ''}\n" for u in range(3) for i in range(4))
    with caplog.at_level("WARNING"):
        jd.from_csv(_write(tmp_path / "mixed.csv", "user,item,timestamp\n" + rows), feedback="implicit")
    assert "mixes epoch seconds (6 value(s), first line 2) with milliseconds or finer (6 value(s), first line 3)" in (
        caplog.text
    )
    caplog.clear()
    with caplog.at_level("WARNING"):  # one unit, or small ordinal times, say nothing
        jd.from_csv(_write(tmp_path / "ms.csv", "user,item,timestamp\nu1,i1,1600000000000\nu1,i2,1600000060000\n"))
        jd.from_csv(_write(tmp_path / "ord.csv", "user,item,timestamp\nu1,i1,1\nu1,i2,1600000060000\n"))
    assert "mixes epoch seconds" not in caplog.text


def test_a_thresholded_models_file_lists_interactions_and_keeps_low_ratings_as_seen(tmp_path):
    """For a top-N run of rated data (a positive threshold): a file of item ids is interactions (each used to be
    read as a rating of 1 and refused as below the threshold), ``item,rating`` rows below it are left out of the
    support and returned as seen (they used to come back in the list), other scripts' digits are not ids, and a
    value beyond float32 is refused with its line."""
    from jaxrec.experiment.recommend import read_user_ratings
    from jaxrec.experiment.run import RunError

    ids = np.array([1, 2, 318, 2571])
    listed = read_user_ratings(
        _write(tmp_path / "ids.txt", "2571\n318\n"), ids, None, implicit=True, positive_threshold=4
    )
    assert listed.codes.tolist() == [3, 2] and listed.seen.tolist() == [] and listed.notes == []
    rated = _write(tmp_path / "rated.csv", "item,rating\n2571,5\n318,2\n1,4\n٢,5\n999,1\n")
    read = read_user_ratings(rated, ids, None, implicit=True, positive_threshold=4)
    assert read.codes.tolist() == [3, 0] and read.seen.tolist() == [2]
    assert any("1 rating(s) below the positive threshold 4" in n for n in read.notes)  # 999 is not one of them
    assert any("2 interaction(s) with unknown item id(s): ٢, 999" in n for n in read.notes), read.notes
    with pytest.raises(RunError, match=r"huge.csv: line 3: '1e39' is beyond float32"):
        read_user_ratings(_write(tmp_path / "huge.csv", "item,weight\n1,2\n2,1e39\n"), ids, None, implicit=True)


def test_top_k_breaks_ties_as_the_compiled_top_k_does():
    """``recommend`` (the library's ``top_k``) broke tied scores by ``argpartition``'s order, so its list differed
    from the service's and the evaluation's (``lax.top_k``: the lower index first); now they are the same lists."""
    import jax

    from jaxrec.experiment.recommend import _best

    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.integers(0, 4, 200).astype(np.float32)  # many ties at every score
        mine = rng.choice(200, 5, replace=False)
        seen = rng.choice(200, 3, replace=False)
        k = int(rng.integers(1, 40))
        best, top = _best(scores.copy(), mine, k, exclude=seen)
        masked = scores.copy()
        masked[np.concatenate([mine, seen])] = -np.inf
        expected_scores, expected = jax.lax.top_k(masked, k)
        assert best.tolist() == np.asarray(expected).tolist()
        np.testing.assert_array_equal(top, np.asarray(expected_scores))
    with pytest.raises(ValueError, match=r"exclude holds codes outside 0 to 199: \[-1\]"):
        _best(np.zeros(200, np.float32), [0], 5, exclude=[-1])  # it would have hidden the last item
