"""Implicit-feedback logs (plays, clicks, check-ins): the ``weight`` role, ``feedback=`` and ``positive_threshold``;
duplicates merged with summed weights, every dropped or merged row counted, count-like rating columns refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxrec.data as jd


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


def test_positive_threshold_drops_and_counts(tmp_path):
    path = _write(tmp_path / "rated.csv", "user,item,rating\n1,10,5\n1,11,2\n2,10,4\n2,12,3.5\n3,11,1\n")
    ds = jd.from_csv(path, feedback="implicit", positive_threshold=4.0)
    assert not ds.explicit and (ds.ratings["rating"] == 1.0).all() and not ds.has_weights
    assert ds.report["below_threshold_dropped"] == 3 and ds.report["interactions"] == 2
    assert _by_raw(ds)[["user", "item"]].values.tolist() == [[1, 10], [2, 10]]
    # without a threshold every rated row is an interaction
    every = jd.from_csv(path, feedback="implicit")
    assert every.report["below_threshold_dropped"] == 0 and every.n_ratings == 5
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
